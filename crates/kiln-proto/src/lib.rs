//! kiln's wire types: the JSON shapes that scripts, the web UI and remote workers rely on
//! (DESIGN.md "HTTP API"), and the documented exit codes of the `kiln` binary.
//!
//! These are contracts: a field is added, never renamed or removed. The store returns these
//! types so that `kiln run --format json`, `kiln runs` and the API print the same thing.
//! Not here: how they are stored or computed.
//!
//! Layout: runs, jobs, steps and events here; [`api`] the HTTP envelope and the server's own
//! answers; [`auth`] tokens and roles.
//! [`projects`]: projects as the API shows them, and the requests that change them.
//! [`hooks`]: webhook providers, the hook route's answer and recorded deliveries.
//! [`schedules`]: `on.schedule` entries as the API shows them.
//! [`watches`]: `on.watch` entries and their poll state as the API shows them.
//! [`notifications`]: outbound notification receivers and their deliveries.
//! [`packages`]: package builds, an origin's history and dependencies, package figures.

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod hooks;
pub mod notifications;
pub mod packages;
pub mod projects;
pub mod schedules;
pub mod watches;
pub mod workers;

pub use api::{Envelope, ErrorBody, Meta, ServerStatus};
pub use artifacts::{ArtifactFormat, ArtifactId, ArtifactMeta, ArtifactView, Dependency};
pub use auth::{
    CreatedToken, NewToken, Role, TokenId, TokenInfo, TokenList, UnknownRole, check_token_name,
};
pub use hooks::{
    Ban, BanList, DeliveryList, DeliveryStatus, DeliveryView, HookAnswer, HookProvider, HookRotate,
    HookSecret, check_hook_secret,
};
pub use notifications::{
    AttemptView, NewReceiver, NotificationId, NotificationList, NotificationStatus,
    NotificationView, ReceiverId, ReceiverList, ReceiverView,
};
pub use packages::{
    BlobRef, PackageBuildStatus, PackageBuildView, PackageCounts, PackageDeps, PackageHistory,
    PackageList, PackageSessionView, PackageStatsView, PackageStatus, PackageView,
};
pub use projects::{
    FetchStatus, NewProject, ProjectKind, ProjectList, ProjectUpdate, ProjectView,
    check_project_name, default_project_name,
};
pub use schedules::{ScheduleId, ScheduleList, ScheduleState, ScheduleView};
pub use watches::{WatchCheck, WatchId, WatchList, WatchState, WatchVersion, WatchView};
pub use workers::{WorkerId, WorkerStatus, WorkerView};

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId, RunStatus, StepStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Exit codes of the `kiln` binary (DESIGN.md "Command line").
pub mod exit {
    /// Everything asked for succeeded.
    pub const OK: i32 = 0;
    /// A run, job or package failed.
    pub const FAILED: i32 = 1;
    /// The input was invalid and nothing ran.
    pub const INVALID: i32 = 2;
    /// kiln itself could not work (store unreachable, data dir not writable, …).
    pub const INTERNAL: i32 = 3;
    /// Cancelled by Ctrl-C.
    pub const CANCELLED: i32 = 130;
}

/// A project: a source of workflows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    /// A local path or a git URL.
    pub source: String,
    /// The id in the project's webhook URL (`/hooks/{hook_id}`).
    pub hook_id: String,
    pub created_at: Timestamp,
}

/// One run of one workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub project: ProjectId,
    /// The workflow's file as the project names it (`.kiln/workflows/ci.yml`).
    pub workflow: String,
    /// The workflow's display name.
    pub workflow_name: String,
    pub run_number: i64,
    pub run_attempt: i64,
    pub status: RunStatus,
    pub event: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    pub inputs: Map<String, Value>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Filled by reads that ask for jobs; empty in listings.
    pub jobs: Vec<Job>,
}

/// One job of a run (a matrix instance is one job).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub run: RunId,
    /// The job's key in the workflow.
    pub key: String,
    /// Display name, e.g. `test (ubuntu, 1.75)`.
    pub name: String,
    /// The matrix instance's values; `{}` without a matrix.
    pub matrix: Map<String, Value>,
    pub status: JobStatus,
    /// Executions so far.
    pub attempts: i64,
    pub max_attempts: i64,
    /// Keys of the jobs this one needs.
    pub needs: Vec<String>,
    /// Its `runs-on` labels: a worker must have every one of them to run it.
    #[serde(default)]
    pub labels: Vec<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub outputs: Map<String, Value>,
    /// Filled by reads of one run or job.
    pub steps: Vec<Step>,
}

/// One step of a job's execution (the latest attempt's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub index: u32,
    pub name: String,
    pub status: StepStatus,
    pub outputs: Map<String, Value>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// One event of the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic in the order readers may see events.
    pub id: i64,
    pub at: Timestamp,
    /// `run.queued`, `job.completed`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub project: Option<ProjectId>,
    pub run: Option<RunId>,
    pub job: Option<JobId>,
    pub data: Value,
}
