//! kiln-exec: runs one job's steps, the way GitHub's runner does, and reports as it goes.
//!
//! The caller (the `kiln run` command, the server's local pool, a remote worker) prepares a
//! workspace and a scratch directory, computes the contexts and the default environment, and
//! calls [`run_job`]. Steps run in order as processes; their output comes back as masked
//! [`ExecEvent::Log`] chunks, their results as [`ExecEvent::StepFinished`], and the job's
//! result as a [`JobOutcome`]. Nothing here knows about databases, HTTP or scheduling.
//!
//! Layout:
//! - [`job`](run_job) — the step loop: contexts, `if:`, env layering, composite actions.
//! - `process` — spawning a step in its own process group, streaming its output, killing the
//!   group on timeout or cancel with bounded waits.
//! - `shell` — GitHub's `shell:` keywords and custom `{0}` templates.
//! - [`command`](run_command) — one command outside a job (a package build's phases), run
//!   and ended as a step's process is.
//! - `envfile` — `$GITHUB_OUTPUT`, `$GITHUB_ENV`, `$GITHUB_PATH` parsing.
//! - [`logs`](Masker) — secret masking, `::add-mask::`, whole-line log chunks.
//! - [`hash`](WorkspaceHasher) — `hashFiles()` over the workspace.
//! - [`package`] — one package build's phases (`fetch`, distfile checks, `build`) and its
//!   folders, for `kiln build`, the server and remote workers alike.
//! - [`sandbox`] — bubblewrap confinement for package builds (and later steps): detection at
//!   start-up, and the `bwrap … --` prefix that confines a command.
//!
//! Not here: checking out sources (the caller copies the project into the workspace first),
//! storing logs.

pub mod artifacts;
mod command;
mod envfile;
mod hash;
mod job;
mod logs;
pub mod package;
mod place;
mod process;
pub mod relay;
pub mod sandbox;
mod shell;

use std::path::PathBuf;

use indexmap::IndexMap;
use kiln_core::ids::JobStatus;
use kiln_core::workflow::{Defaults, Job};
use serde_json::{Map, Value};

pub use artifacts::{ArtifactHost, HostFuture};
pub use command::{CommandEnd, CommandError, CommandSpec, run_command};
pub use envfile::{EnvFileError, parse_env_file, parse_path_file};
pub use hash::WorkspaceHasher;
pub use job::{is_step_file, run_job, run_job_with_limits};
pub use logs::{MAX_CHUNK, Masker, mask};
pub use place::{Place, place_job, runner_arch, runner_context};
pub use process::Limits;
pub use sandbox::{
    Confinement, Network, ParseSandboxModeError, Sandbox, SandboxError, SandboxMode, WrappedCommand,
};
pub use shell::{ShellCommand, ShellError};

/// Everything needed to run one job.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// The job as written (steps, env, defaults, outputs, timeout, continue-on-error).
    pub job: Job,
    /// Workflow-level `env:` (templates).
    pub workflow_env: IndexMap<String, String>,
    pub workflow_defaults: Defaults,
    /// `github`, `inputs`, `vars`, `secrets`, `matrix`, `needs`, `strategy`, `runner`, `job`;
    /// the executor adds and updates `env` and `steps` as it goes.
    pub contexts: Map<String, Value>,
    /// A fresh copy of the project, prepared by the caller; `GITHUB_WORKSPACE`.
    pub workspace: PathBuf,
    /// The job's scratch directory (`RUNNER_TEMP`): scripts and environment files go here.
    pub temp_dir: PathBuf,
    /// `CI`, `GITHUB_SHA`, `GITHUB_REF`, `GITHUB_RUN_ID`, `RUNNER_OS`, … computed by the caller.
    pub base_env: Vec<(String, String)>,
    /// Pass kiln's own environment (`PATH`, `HOME`, …) to steps, minus every `KILN_*`
    /// variable. When false, steps get `base_env` and their own variables only (plus `HOME`
    /// and a default `PATH` where those are not given).
    pub inherit_env: bool,
    /// Secret values to mask as `***` in every log line.
    pub masks: Vec<String>,
    /// Where the job's artifacts go and the run's come from; `None`: artifact steps fail,
    /// saying artifacts are not kept here.
    pub artifacts: Option<std::sync::Arc<dyn ArtifactHost>>,
}

/// What [`run_job`] reports while it runs, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecEvent {
    /// A step begins (not sent for skipped steps). `name` is the rendered display name.
    StepStarted { index: u32, name: String },
    /// Output of a step: stdout and stderr merged in arrival order, masked, in whole lines
    /// where possible (a partial line is sent when the step ends or it exceeds
    /// [`MAX_CHUNK`]). kiln's own messages about the step (errors, notices) come this way too.
    Log { index: u32, data: Vec<u8> },
    /// A step ended (or was skipped): index, name, status, outputs, times.
    StepFinished { step: kiln_proto::Step },
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq)]
pub struct JobOutcome {
    /// `Success`, `Failure`, `Cancelled` or `TimedOut`.
    pub status: JobStatus,
    /// The job's `outputs:` rendered against the final `steps` context (also when it failed).
    pub outputs: Map<String, Value>,
    /// The job's `continue-on-error`, evaluated.
    pub continue_on_error: bool,
    /// Why the job failed when it is not just a step's exit code: a bad expression (naming the
    /// step), a missing local action, a malformed environment file, …
    pub error: Option<String>,
}
