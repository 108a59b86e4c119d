//! Remote workers and the protocol they speak with a server (`/api/v1/workers…`, `kiln
//! worker`): register, long-poll for jobs whose `runs-on` labels they have, report each job's
//! progress under its lease's fencing token, and heartbeat to keep their leases.
//!
//! A worker and a server agree on [`PROTOCOL`]: a server refuses a worker speaking another one
//! with `409 PROTOCOL_MISMATCH`, naming both. Not here: running a job (`kiln-exec`), choosing
//! which job a worker gets (`kiln-engine`).

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, RunId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Step;

/// The worker protocol this build speaks.
pub const PROTOCOL: u32 = 3;

kiln_core::typed_id!(
    /// A registered worker.
    WorkerId
);

/// What a worker is doing, as `GET /api/v1/workers` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Heard from lately, running nothing.
    Idle,
    /// Heard from lately, running jobs.
    Busy,
    /// Paused by a person: it gets no new jobs (running ones finish).
    Paused,
    /// Not heard from for longer than a lease lasts.
    Offline,
}

/// `POST /api/v1/workers`: a worker introduces itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterWorker {
    /// A name for people (the host name by default).
    pub name: String,
    /// The labels it runs jobs for: a job runs here only when the worker has every label of
    /// its `runs-on`.
    pub labels: Vec<String>,
    /// How many jobs it runs at once.
    pub slots: u32,
    /// The protocol it speaks ([`PROTOCOL`]).
    pub protocol: u32,
    /// Its kiln version, for people.
    pub version: String,
}

/// A registered worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: WorkerId,
    pub name: String,
    pub labels: Vec<String>,
    pub slots: u32,
    pub status: WorkerStatus,
    pub version: String,
    pub protocol: u32,
    /// The jobs it holds leases of now.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub jobs: Vec<JobId>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub registered_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_heartbeat_at: Timestamp,
}

/// `POST /api/v1/workers/{id}/claim`: up to `free` jobs, waiting up to `wait_ms` for one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimRequest {
    pub free: u32,
    #[serde(default)]
    pub wait_ms: u64,
}

/// A job handed to a worker, with all it needs to run it besides the source (fetched from
/// `GET /api/v1/workers/{id}/jobs/{job}/source`, a tar of the project at the run's commit).
/// The worker parses `workflow` from that source and runs `key`'s steps; it fills in what
/// depends on where it runs (`github.workspace`, the `runner` context, `GITHUB_WORKSPACE`,
/// `RUNNER_TEMP`, `GITHUB_EVENT_PATH` holding `event`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignedJob {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub job: JobId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub run: RunId,
    /// The lease's fencing token: every report carries it.
    pub token: i64,
    /// Which execution of the job this is (1 at first; + 1 after a lease expired).
    pub attempt: i64,
    pub name: String,
    /// The job's key under `jobs:`.
    pub key: String,
    /// The workflow file, relative to the source's root.
    pub workflow: String,
    /// `github`, `inputs`, `vars`, `secrets`, `matrix`, `needs`, `strategy`, `job`.
    pub contexts: Map<String, Value>,
    /// The default environment (`CI`, `GITHUB_SHA`, `GITHUB_RUN_ID`, …).
    pub env: Vec<(String, String)>,
    /// Values to mask in every log line.
    pub masks: Vec<String>,
    /// The event payload (`github.event`).
    pub event: Value,
    /// A `packages:` job's package: the worker builds it instead of running steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageAssignment>,
}

/// One package of a `packages:` job to build (DESIGN.md "Package trees"), as `kiln build`
/// would: a scratch copy of its folder, `fetch`, the distfile checks, then `build` without
/// the network, under the sandbox mode given. Its output goes back packed
/// (`PUT /api/v1/worker/{id}/jobs/{job}/package/output`), its log too (`…/package/log`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageAssignment {
    pub origin: String,
    pub version: String,
    /// The build's key (hex): what its output is kept under.
    pub key: String,
    /// The tree's folder in the job's source, relative (the build sees it read-only).
    pub tree: String,
    pub fetch: Option<String>,
    pub build: String,
    pub distfiles: Vec<PackageDistfile>,
    /// `$KILN_DEPS`: every package of the closure, each with the digest of its output (fetch
    /// it from `GET /api/v1/worker/{id}/jobs/{job}/package/deps/{digest}`).
    pub deps: Vec<PackageDep>,
    /// The toolchain's variables (after the fixed ones; one named `PATH` replaces it).
    pub env: Vec<(String, String)>,
    /// The server's machine facts that the key holds (`os`, `arch`, `sh`): a worker whose
    /// own differ must not build the package, or its output would be kept under a key that
    /// does not describe it.
    pub machine: Vec<(String, String)>,
    /// `auto`, `require` or `off`, as the server builds packages.
    pub sandbox: String,
}

/// A distfile the `fetch` phase must leave, with its SHA-256 (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageDistfile {
    pub name: String,
    pub sha256: String,
}

/// A package of a build's `$KILN_DEPS` closure: laid out at `$KILN_DEPS/<origin>/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageDep {
    pub origin: String,
    /// The SHA-256 (hex) of its packed output.
    pub output: String,
}

/// What `PUT /api/v1/worker/{id}/jobs/{job}/package/{part}` kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackagePartKept {
    /// The SHA-256 (hex) of the kept bytes (an output is packed again, deterministically).
    pub digest: String,
    pub size: u64,
}

/// The answer to a claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claimed {
    /// Jobs of runs the answering server drives, described.
    pub jobs: Vec<AssignedJob>,
    /// Jobs leased to the worker from the shared queue whose runs another replica drives:
    /// the worker asks that replica for each one's details
    /// (`POST /api/v1/worker/{id}/jobs/{job}/assignment`) and reports to it.
    #[serde(default)]
    pub handoffs: Vec<Handoff>,
}

/// A job leased to a worker through one replica and driven by another (see [`Claimed`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Handoff {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub job: JobId,
    /// The lease's fencing token.
    pub token: i64,
    /// Which execution of the job this is.
    pub attempt: i64,
    /// The base URL of the replica that drives the job's run.
    pub server: String,
}

/// `POST /api/v1/worker/{id}/jobs/{job}/assignment`: the details of a job handed off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignmentRequest {
    /// The lease's fencing token, as the hand-off gave it.
    pub token: i64,
}

/// One thing that happened in a job on a worker, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportEvent {
    /// The steps begin (the workspace is ready).
    Started,
    /// Output of step `step` (masked by the worker), as text. Bytes that are not UTF-8 come
    /// in `bytes` as well (base64, exactly as the step wrote them), `data` then holding them
    /// with U+FFFD for what is not text (a server that does not know `bytes` uses it).
    Log {
        step: u32,
        data: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<String>,
    },
    /// A step ended (or was skipped).
    Step { step: Step },
    /// The job ended.
    Done {
        status: JobStatus,
        #[serde(default)]
        outputs: Map<String, Value>,
        #[serde(default)]
        error: Option<String>,
        /// The job's `continue-on-error`, evaluated: its failure does not fail the run.
        #[serde(default)]
        continue_on_error: bool,
    },
}

/// `POST /api/v1/workers/{id}/jobs/{job}/report`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    pub token: i64,
    pub events: Vec<ReportEvent>,
}

/// A job a worker holds, as its heartbeat lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeldJob {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub job: JobId,
    pub token: i64,
}

/// `POST /api/v1/workers/{id}/heartbeat`: the jobs it runs; their leases are renewed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    pub jobs: Vec<HeldJob>,
}

/// What the server answers a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatReply {
    /// Jobs to stop: their run was cancelled (report them `cancelled`).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub cancel: Vec<JobId>,
    /// Jobs whose lease this worker no longer holds (it expired and the job went back to the
    /// queue, or the server does not know it): stop them and report nothing more.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub lost: Vec<JobId>,
    /// Paused: claim nothing until resumed.
    pub paused: bool,
    /// The replicas' URLs now (see [`Registered::replicas`]).
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// The lease owner of the jobs a worker runs (`worker:<id>`).
pub fn lease_owner(id: WorkerId) -> String {
    format!("worker:{id}")
}

/// The answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: WorkerId,
    pub protocol: u32,
    /// How often to heartbeat while holding jobs.
    pub heartbeat_ms: u64,
    /// How long a lease lasts without a heartbeat.
    pub lease_ms: u64,
    /// The URLs of the servers sharing this one's database (replicas), this one included:
    /// a worker asks each of them for jobs. Empty from a server that does not say.
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// The list `GET /api/v1/workers` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}
