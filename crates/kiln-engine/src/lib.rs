//! kiln's engine: turns a workflow and a trigger into a recorded run, and schedules its jobs
//! on local slots, each execution under a lease, every transition committed before it is
//! acted on.
//!
//! Layout:
//! - [`project`] — reading a project folder: its workflows, its file tree, its revision.
//! - [`contexts`] — the run-level expression contexts and checks on user-supplied values.
//! - [`dispatch`] — the dispatcher: one task that owns the truth about active runs, commits
//!   transitions in groups, and hands jobs to executors (which report over a channel).
//! - [`engine`] — the server's engine: a long-lived dispatcher, recovered from the store at
//!   start-up, and the handle that triggers, cancels and shuts down.
//! - [`schedule`] — the schedule runner: syncs `on.schedule` entries into the store, claims
//!   due fires and starts their runs.
//! - [`watch`] — the watch poller: syncs `on.watch` entries into the store, polls due
//!   sources (registries, URLs, commands) and starts one run per new version.
//! - [`packages`] — the package-tree builder of `kiln build`: plan (validate, key, look up
//!   the cache), then build on N slots in critical-path order, every build recorded.
//! - [`egress`] — the one policy every outbound connection kiln makes passes first.
//! - [`source`] — git project sources: bare mirrors fetched with the git CLI, revisions,
//!   workflow files at a commit, checkouts into job workspaces.
//!
//! Not here: SQL (`kiln-store`), running a step's processes (`kiln-exec`), printing
//! (`kiln-cli`). The server (a later issue) reuses the dispatcher unchanged.

pub mod artifacts;
pub mod contexts;
pub mod dispatch;
pub mod egress;
pub mod engine;
pub mod packages;
pub mod project;
pub mod schedule;
pub mod source;
pub mod watch;

use std::path::PathBuf;

use kiln_core::workflow::Diagnostics;

pub use dispatch::{LocalRun, Progress, RunOutcome, run_local};
pub use engine::{
    Engine, EngineConfig, EventTarget, PackagePart, PartAnswer, Prepared, Recovery, TriggerRequest,
};

/// Why the engine could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The workflows (or what they were given) are invalid: nothing ran.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The request itself is unusable (unknown workflow, bad input value, …): nothing ran.
    #[error("{0}")]
    Usage(String),
    /// The store failed; what had been committed stays consistent.
    #[error("failed to use the store: {0}")]
    Store(#[from] kiln_store::StoreError),
    /// A git source could not be read (git failed, timed out, …).
    #[error("{0}")]
    Source(Box<crate::source::SourceError>),
    /// A file-system call failed.
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<packages::BuildError> for EngineError {
    /// A `packages:` job's tree that cannot be planned: the user's fault (invalid tree, unknown
    /// origins, …) or kiln's (the store, the work area).
    fn from(e: packages::BuildError) -> Self {
        use packages::BuildError as B;
        match e {
            B::Store(e) => Self::Store(e),
            B::Io {
                action,
                path,
                source,
            } => Self::Io {
                action,
                path,
                source,
            },
            user => Self::Usage(user.to_string()),
        }
    }
}

impl EngineError {
    /// Whether the error is the user's input (exit 2) rather than kiln's (exit 3).
    pub fn is_user_error(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::Usage(_))
    }
}
