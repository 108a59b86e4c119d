//! kiln's pure model: what a workflow file says, what its expressions mean, how a matrix
//! expands and in which order a job graph may run.
//!
//! Everything here is synchronous and free of I/O: the workflow parser takes `&str`, the
//! expression evaluator takes its contexts as values, and the one thing that needs the file
//! system (`hashFiles`) goes through the [`expr::FileHasher`] trait that the caller provides.
//! That keeps the rules testable on their own and shared unchanged by `kiln run`, the server
//! and remote workers.
//!
//! Layout:
//! - [`cron`] — `on.schedule` patterns: when a cron entry fires next, in its time zone.
//! - [`ids`] — typed ids and the run/job/step status state machines.
//! - [`expr`] — the `${{ }}` expression language (parse, evaluate, interpolate).
//! - [`workflow`] — workflow files: the model, the parser, diagnostics with file/line/column.
//! - [`matrix`] — `strategy.matrix` expansion with GitHub's include/exclude rules.
//! - [`plan`] — the job graph: validation, expansion for a dry run, ready-set and priorities.
//! - [`watch`] — `on.watch` entries: intervals, version constraints, which versions are new.

pub mod cron;
pub mod expr;
pub mod ids;
pub mod matrix;
pub mod packages;
pub mod plan;
pub mod triggers;
pub mod watch;
pub mod workflow;
