//! One command run to its end outside a job — a package build's `fetch` or `build` phase —
//! with the same spawning, process-group killing and bounded draining as a job's steps
//! (`process`), its output streamed to the caller as it comes.
//!
//! Why a public door onto `process` rather than a second runner in the engine: what makes
//! ending a process safe (TERM then KILL to the whole group, a drain that a grandchild holding
//! the pipe cannot stretch, reaping) is subtle, and one copy of it is enough.
//! Not here: what runs (the caller wraps it with [`crate::Sandbox::wrap`] first), storing the
//! output, statuses.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::logs::LogSink;
use crate::process::{self, Ended, Limits, ProcessSpec};
use crate::{ExecEvent, Masker};

/// What to run: program, arguments, the whole environment (nothing is inherited) and the
/// working directory.
#[derive(Clone, Debug)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(OsString, OsString)>,
    pub dir: PathBuf,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandEnd {
    Exited(ExitStatus),
    /// Its deadline passed; its process group was ended.
    TimedOut,
    /// The cancel token fired; its process group was ended.
    Cancelled,
}

/// A command that could not be started, with what was being started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(String);

/// Runs `spec` as the leader of a new process group, stdout and stderr merged in arrival
/// order and sent as [`ExecEvent::Log`] chunks (index 0) on `output`, until it exits, the
/// `deadline` passes or `cancel` fires (then its whole group is ended: SIGTERM, `limits.grace`,
/// SIGKILL). Processes it left running with their output redirected away are killed when it
/// ends: a build phase owns everything it started.
///
/// Spawn from a thread that outlives the command (a tokio worker thread, not
/// `spawn_blocking`): a sandboxed command dies with the thread that started it.
pub async fn run_command(
    spec: &CommandSpec,
    deadline: Instant,
    cancel: &CancellationToken,
    limits: Limits,
    output: &mpsc::Sender<ExecEvent>,
) -> Result<CommandEnd, CommandError> {
    run_gated(spec, None, deadline, cancel, limits, output).await
}

/// [`run_command`], started behind `gate` when there is one (`process::Gate`).
pub(crate) async fn run_gated(
    spec: &CommandSpec,
    gate: Option<process::Gate<'_>>,
    deadline: Instant,
    cancel: &CancellationToken,
    limits: Limits,
    output: &mpsc::Sender<ExecEvent>,
) -> Result<CommandEnd, CommandError> {
    let mut masker = Masker::new(&[]);
    let mut sink = LogSink::new(0, output, &mut masker);
    let result = process::run(
        ProcessSpec {
            program: &spec.program,
            args: spec.args.clone(),
            env: spec.env.clone(),
            dir: &spec.dir,
            gate,
        },
        deadline,
        Some(cancel),
        limits,
        &mut sink,
    )
    .await;
    sink.flush().await;
    let result = result.map_err(|e| CommandError(e.to_string()))?;
    if let Some(group) = result.leftover_group {
        process::kill_leftovers(&[group]);
    }
    Ok(match result.ended {
        Ended::Exited(status) => CommandEnd::Exited(status),
        Ended::TimedOut => CommandEnd::TimedOut,
        Ended::Cancelled => CommandEnd::Cancelled,
    })
}
