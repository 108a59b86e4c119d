//! The store's request and answer types: what the engine asks to record ([`NewRun`], [`Op`])
//! and what it is told back ([`OpResult`], [`Refusal`], …). Plain data; no I/O here. The
//! records the store reads back are `kiln_proto`'s `Run`, `Job`, `Step`, `Event`.

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId, RunStatus};
use kiln_proto::Step;
use serde_json::{Map, Value};

/// A run to create, with the jobs known when it is planned.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    pub id: RunId,
    pub project: ProjectId,
    /// The workflow's file as the project names it; run numbers count per (project, file).
    pub workflow: String,
    pub workflow_name: String,
    pub event: String,
    pub git_ref: String,
    pub sha: String,
    pub inputs: Map<String, Value>,
    pub status: RunStatus,
    pub jobs: Vec<NewJob>,
    pub at: Timestamp,
}

/// A job to create (one matrix instance is one job).
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub key: String,
    pub name: String,
    pub matrix: Map<String, Value>,
    pub needs: Vec<String>,
    pub status: JobStatus,
    /// How many executions the job may have before an expired lease fails it.
    pub max_attempts: i64,
}

/// One transition for [`Store::commit`](crate::Store::commit). Ops carrying a `token` are
/// refused unless it is the job's current lease token and the job is leased or running.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Add jobs to an existing, unfinished run (e.g. a matrix expanded from outputs).
    AddJobs {
        run: RunId,
        jobs: Vec<NewJob>,
        at: Timestamp,
    },
    /// Sets `started_at` on the first `running`, `finished_at` on a terminal status. A
    /// finished run is refused; setting the status it already has does nothing.
    SetRunStatus {
        run: RunId,
        status: RunStatus,
        at: Timestamp,
    },
    /// A transition outside a lease: from `pending`, `queued` or `waiting` to any status but
    /// `leased`/`running`. Setting the status the job already has does nothing.
    SetJobStatus {
        job: JobId,
        status: JobStatus,
        at: Timestamp,
    },
    /// `queued → leased`: the token becomes the previous one + 1, attempts + 1, the log of
    /// the new attempt starts empty. Answers [`OpResult::Lease`].
    GrantLease {
        job: JobId,
        owner: String,
        ttl_ms: i64,
        at: Timestamp,
    },
    /// `leased → running`.
    StartJob {
        job: JobId,
        token: i64,
        at: Timestamp,
    },
    /// Moves the lease's expiry to `at + ttl_ms`.
    RenewLease {
        job: JobId,
        token: i64,
        ttl_ms: i64,
        at: Timestamp,
    },
    /// `leased → queued` for a lease whose job never started (its holder is shutting
    /// down): the lease is released and the grant does not count as an attempt.
    ReleaseLease { job: JobId, token: i64 },
    /// Records a step of the current attempt (upsert by index).
    StepResult { job: JobId, token: i64, step: Step },
    /// Appends to the current attempt's log; `offset` must be its current length.
    LogChunk {
        job: JobId,
        token: i64,
        step: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// Ends the execution with a terminal status and releases the lease.
    CompleteJob {
        job: JobId,
        token: i64,
        status: JobStatus,
        outputs: Map<String, Value>,
        at: Timestamp,
    },
}

/// What became of one [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Done,
    /// The token of a lease just granted.
    Lease {
        token: i64,
    },
    /// The op changed nothing; the rest of its batch was unaffected.
    Refused {
        reason: Refusal,
    },
}

/// Why an [`Op`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The op's token is not the job's current lease token.
    StaleToken {
        job: JobId,
        given: i64,
        current: i64,
    },
    /// The job is not in a state the op applies to (e.g. completing a finished job).
    WrongState { job: JobId, status: JobStatus },
    /// A log chunk's offset is not the log's current length.
    BadOffset {
        job: JobId,
        expected: u64,
        given: u64,
    },
    /// The job or run does not exist.
    NotFound,
    /// The run has already finished.
    RunWrongState { run: RunId, status: RunStatus },
    /// The op asked for a status it cannot set: `leased`/`running` through `SetJobStatus`
    /// (those need a lease), or a non-terminal status through `CompleteJob`.
    BadTransition { job: JobId, to: JobStatus },
}

/// A lease [`Store::expire_leases`](crate::Store::expire_leases) took back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredLease {
    pub job: JobId,
    pub run: RunId,
    /// `true`: back to `queued`; `false`: its attempts were spent and it is now `failure`.
    pub requeued: bool,
}

/// Which runs [`Store::list_runs`](crate::Store::list_runs) returns, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFilter {
    pub project: Option<ProjectId>,
    pub status: Option<RunStatus>,
    /// Matches the workflow's file or its display name.
    pub workflow: Option<String>,
    /// Cursor: only runs older than this one (the last id of the previous page).
    pub before: Option<RunId>,
    /// At most this many runs; 0 means no limit.
    pub limit: u32,
}

/// A slice of a job's log (of its latest attempt).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSlice {
    pub data: Vec<u8>,
    /// Where the next read continues.
    pub next_offset: u64,
    /// The log's length so far.
    pub total: u64,
}
