//! kiln-server's integration tests: the real server on `127.0.0.1:0`, driven over HTTP, on
//! SQLite and on PostgreSQL (`postgres://postgres@127.0.0.1:5432/test`, or
//! `KILN_TEST_DATABASE_URL`; each test in a fresh schema it drops at the end).

mod artifacts;
mod auth;
mod bans;
mod envelope;
mod harness;
mod hooks;
mod live;
mod notify;
mod ops;
mod packages;
mod projects;
mod runs_write;
mod schedules;
mod system;
mod tokens;
mod watches;
mod workers;
