//! Watches (`on.watch`) as the store keeps them: what a sync of a project's workflow files
//! says, the poll state of each watch, and the versions each one recorded.
//!
//! Two rules make a version start at most one run, whatever restarts and replicas do:
//! - a poller claims a due watch by moving its `next_poll_at` on from the value it read
//!   ([`crate::Store::claim_watch`]), so one poller at a time polls a watch;
//! - a poll's new versions are inserted (unique per watch) in the transaction that records
//!   the poll, *before* any run starts ([`crate::Store::record_poll`]); only versions that
//!   insert go on to start a run, and a version is never started again once recorded — one
//!   left `claimed` by a crash between recording and starting stays so (at most once).
//!
//! Deciding which versions are new, talking to sources and starting runs is the engine's
//! (`kiln_engine::watch`).

use jiff::Timestamp;
use kiln_core::ids::ProjectId;
use kiln_proto::WatchId;
use uuid::Uuid;

/// One `on.watch` entry of a workflow file, as a sync reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchDef {
    /// The workflow file (`.kiln/workflows/zlib.yml`).
    pub workflow: String,
    pub name: String,
    /// The source spec as JSON (`kiln_core::watch::WatchSource` serialised).
    pub source: String,
    pub constraint: Option<String>,
    pub filter: Option<String>,
    pub known_versions: Option<String>,
    pub interval_secs: u64,
}

/// What a watch sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchSyncReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

/// A watch as a poller needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRow {
    pub id: WatchId,
    pub project: ProjectId,
    pub workflow: String,
    pub name: String,
    pub def: WatchDef,
    /// Whether a poll ever succeeded.
    pub polled: bool,
    pub next_poll_at: Timestamp,
    pub etag: Option<String>,
    pub failures: u32,
}

/// A version a poll found new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewVersion {
    pub version: String,
    pub source_uri: Option<String>,
    /// Start a run (`claimed`) or only record it (`seen`).
    pub trigger: bool,
}

/// A successful poll, recorded in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollRecord {
    /// The answer's ETag (kept as it was when the answer was `304`).
    pub etag: Option<String>,
    pub versions: Vec<NewVersion>,
    pub next_poll_at: Timestamp,
    pub now: Timestamp,
}

/// A version [`crate::Store::record_poll`] inserted to start a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedVersion {
    pub id: Uuid,
    pub version: String,
    pub source_uri: Option<String>,
}

/// One recorded version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenVersion {
    pub version: String,
    pub source_uri: Option<String>,
    pub found_at: Timestamp,
    /// `seen`, `claimed`, `started` or `failed`.
    pub outcome: String,
    pub run: Option<kiln_core::ids::RunId>,
    pub error: Option<String>,
}
