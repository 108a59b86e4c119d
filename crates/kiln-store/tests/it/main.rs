//! kiln-store's integration tests: one behavioural suite run against both backends, plus the
//! checks that only make sense for one of them (PostgreSQL's outbox horizon, migration
//! parity, SQLite throughput).
//!
//! PostgreSQL is expected at `postgres://postgres@127.0.0.1:5432/test` (trust auth; the
//! `root` role is tried when `postgres` is refused). `KILN_TEST_DATABASE_URL` overrides that
//! base URL. Each test works in a fresh schema `t_<random>` that it drops at the end.

mod artifacts;
mod bans;
mod batch;
mod harness;
mod hooks;
mod intake;
mod notifications;
mod ops;
mod outbox;
mod packages;
mod parity;
mod projects;
mod queue;
mod schedules;
mod secrets;
mod suite;
mod throughput;
mod tokens;
mod wal;
mod watches;
