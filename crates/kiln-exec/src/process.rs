//! Running one step's process: spawn it as the leader of a new process group with stdout and
//! stderr on one pipe (so output keeps its arrival order), stream that pipe into the step's
//! log, and end it on timeout or cancel by killing the whole group — SIGTERM, a grace, SIGKILL.
//!
//! The pipe is never waited on without bound: a grandchild that keeps it open (`sleep 300 &`)
//! must not hang the job. After the main process exits the pipe is drained for
//! [`Limits::drain`]; whoever still holds it then is killed with the group, and after the kill
//! the drain is bounded again.
//!
//! We use tokio's `process_group(0)` and nix's `killpg` rather than process-wrap's
//! `ProcessGroup` wrapper: its `wait` reaps the whole group in a blocking thread, which never
//! returns while a background member lives when kiln is a subreaper (PID 1 in a container).
//! Not here: which command to run (see `shell`), env files, step statuses.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::logs::LogSink;

/// How long kiln waits at each stage of ending a process.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// After the main process exits, how long others may keep the log pipe open.
    pub drain: Duration,
    /// After SIGKILL, how long to wait for the pipe to close (a member that left the group
    /// may still hold it) and for the main process to be reaped.
    pub after_kill: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3),
            drain: Duration::from_secs(2),
            after_kill: Duration::from_secs(2),
        }
    }
}

/// What to run.
pub(crate) struct ProcessSpec<'a> {
    pub program: &'a str,
    pub args: Vec<String>,
    pub env: Vec<(OsString, OsString)>,
    pub dir: &'a Path,
    /// Started behind a gate: see [`Gate`].
    pub gate: Option<Gate<'a>>,
}

/// A process started before its turn: it gets the read end of a pipe as its standard input
/// (instead of `/dev/null`) and is expected to make itself ready (a sandbox set up, a shell
/// started), then wait until it can read a line from it ([`Gate::SHELL`]). When `open` resolves, a line
/// is written and the process goes on, at once if it was ready by then. Meanwhile its
/// deadline and cancellation apply as to any process; one that ends before its turn is never
/// let in.
pub(crate) struct Gate<'a> {
    /// Resolves when the process may go on (`true`), or must not run at all (`false`: it is
    /// ended as cancelled, its gate never opened).
    pub open: std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>,
}

impl Gate<'_> {
    /// Put before a `sh -c` script, on its first line (the script's line numbers stay as
    /// they are): waits for the turn, then gives the shell `/dev/null` as standard input, so
    /// the script itself runs as it would have ungated. A gate closed unopened (the process
    /// is being ended) makes `read` fail and the shell exit.
    pub(crate) const SHELL: &'static str = "read -r _ || exit 125; exec 0</dev/null; ";
}

/// How a process ended.
#[derive(Debug)]
pub(crate) enum Ended {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

/// Failure to start a process, with what was being started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("cannot create the log pipe: {0}")]
    Pipe(#[source] std::io::Error),
    #[error("working directory {} does not exist", .0.display())]
    NoDir(PathBuf),
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A process group that still may have members: killed with SIGKILL when dropped unless
/// disarmed, so that a job future dropped mid-step (its task aborted) leaves nothing behind.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Sends `sig` to the group; a group that no longer exists is not an error.
fn signal_group(pgid: Pid, sig: Signal) {
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw(), signal = %sig, error = %e, "cannot signal process group")
        }
    }
}

type ProgramCache = std::collections::HashMap<(OsString, String), PathBuf>;
static PROGRAMS: std::sync::Mutex<Option<ProgramCache>> = std::sync::Mutex::new(None);

/// Finds `program` on the `PATH` the step will get, so that the standard library can start
/// it with `posix_spawn`: given a bare name and a `PATH` of the child's own, it falls back to
/// fork+exec, which costs several times more per step. Hits are cached (the same few shells
/// on the same few `PATH`s); anything unusual is left to the standard library's own search.
fn resolve_program(program: &str, env: &[(OsString, OsString)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;

    if program.contains('/') {
        return PathBuf::from(program);
    }
    let Some(path) = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v) else {
        return PathBuf::from(program);
    };
    let key = (path.clone(), program.to_owned());
    if let Ok(cache) = PROGRAMS.lock()
        && let Some(hit) = cache.as_ref().and_then(|c| c.get(&key))
    {
        return hit.clone();
    }
    let mut found = None;
    for dir in std::env::split_paths(path) {
        if !dir.is_absolute() {
            // Relative entries depend on the working directory: let exec search.
            return PathBuf::from(program);
        }
        let candidate = dir.join(program);
        if std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            found = Some(candidate);
            break;
        }
    }
    let Some(found) = found else {
        return PathBuf::from(program);
    };
    if let Ok(mut cache) = PROGRAMS.lock() {
        let cache = cache.get_or_insert_with(ProgramCache::new);
        // Many distinct PATHs (GITHUB_PATH in every job) must not grow this without bound.
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(key, found.clone());
    }
    found
}

/// The result of [`run`]: how it ended, and the group id if members were left alive (a
/// background process with its output redirected away from the log pipe), for the job's
/// end-of-job cleanup.
pub(crate) struct RunResult {
    pub ended: Ended,
    pub leftover_group: Option<i32>,
}

/// Runs one process to its end, streaming its output into `sink`.
///
/// `cancel` is `None` for steps that run after the job was cancelled (`if: always()`): the
/// token has already fired and must not end them.
pub(crate) async fn run(
    spec: ProcessSpec<'_>,
    deadline: Instant,
    cancel: Option<&CancellationToken>,
    limits: Limits,
    sink: &mut LogSink<'_>,
) -> Result<RunResult, SpawnError> {
    let program = resolve_program(spec.program, &spec.env);
    let (reader, writer) = std::io::pipe().map_err(SpawnError::Pipe)?;
    let writer2 = writer.try_clone().map_err(SpawnError::Pipe)?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.dir)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    // The gate's write end stays here; its read end is the child's standard input (both ends
    // are close-on-exec: no other process spawned meanwhile inherits them). Standard input,
    // not a descriptor of its own: mapping one needs code run in the child after `fork`, and
    // without such code the standard library spawns with `posix_spawn` (a `vfork`), which
    // neither copies kiln's page tables nor holds up the thread that spawns.
    let (mut gate_open, mut gate_write) = match spec.gate {
        Some(gate) => {
            let (read, write) = std::io::pipe().map_err(SpawnError::Pipe)?;
            cmd.stdin(Stdio::from(read));
            (Some(gate.open), Some(write))
        }
        None => (None, None),
    };
    let spawned = cmd.spawn();
    // The command holds our copies of the pipe's write end: drop them now, or the pipe would
    // never report end-of-file.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // A cached program may have been removed since: look again next time.
            if let Ok(mut cache) = PROGRAMS.lock() {
                *cache = None;
            }
            // Only on failure is it worth a stat to tell a missing directory from a
            // missing program (both are ENOENT).
            if e.kind() == std::io::ErrorKind::NotFound && !spec.dir.is_dir() {
                return Err(SpawnError::NoDir(spec.dir.to_path_buf()));
            }
            return Err(SpawnError::Spawn {
                program: spec.program.to_owned(),
                source: e,
            });
        }
    };
    let pgid = Pid::from_raw(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(0),
    );
    let mut guard = GroupGuard {
        pgid,
        armed: pgid.as_raw() > 0,
    };
    let mut rx = match pipe::Receiver::from_owned_fd(reader.into()) {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the step's output pipe");
            None
        }
    };

    let mut buf = vec![0u8; crate::logs::MAX_CHUNK];
    let mut status: Option<ExitStatus> = None;
    let mut drain_until: Option<Instant> = None;
    let mut stop: Option<Ended> = None;
    loop {
        if status.is_some() && rx.is_none() {
            break;
        }
        let never = Instant::now() + Duration::from_secs(86_400 * 365);
        tokio::select! {
            r = read_some(&mut rx, &mut buf) => match r {
                Some(n) => sink.push(&buf[..n]).await,
                None => rx = None,
            },
            st = child.wait(), if status.is_none() => match st {
                Ok(st) => {
                    status = Some(st);
                    drain_until = Some(Instant::now() + limits.drain);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for the step's process");
                    stop = Some(Ended::Cancelled);
                    break;
                }
            },
            () = sleep_until(deadline), if status.is_none() => {
                stop = Some(Ended::TimedOut);
                break;
            }
            () = wait_cancel(cancel), if status.is_none() => {
                stop = Some(Ended::Cancelled);
                break;
            }
            opened = open_gate(&mut gate_open), if gate_open.is_some() && status.is_none() => {
                // The turn and a cancel or the deadline may come together: never let the
                // command in then.
                if !opened || cancel.is_some_and(CancellationToken::is_cancelled) {
                    stop = Some(Ended::Cancelled);
                    break;
                }
                if Instant::now() >= deadline {
                    stop = Some(Ended::TimedOut);
                    break;
                }
                gate_open = None;
                if let Some(mut write) = gate_write.take() {
                    use std::io::Write as _;
                    // One line into an empty pipe: never blocks.
                    if let Err(e) = write.write_all(b"\n") {
                        tracing::warn!(error = %e, "cannot open a process's start gate");
                    }
                }
            }
            () = sleep_until(drain_until.unwrap_or(never)), if drain_until.is_some() => {
                // The main process is gone but someone still holds the log pipe.
                break;
            }
        }
    }

    if stop.is_none() && rx.is_none() {
        // Normal end: exit and end-of-file. Members that closed the pipe (a daemon with its
        // output redirected) may live on into later steps, as on GitHub; the job kills them.
        guard.armed = false;
        let leftover = killpg(pgid, None).is_ok().then_some(pgid.as_raw());
        let status = status.unwrap_or_default();
        return Ok(RunResult {
            ended: Ended::Exited(status),
            leftover_group: leftover,
        });
    }

    // Timeout, cancel, or a pipe held past the drain: end the whole group. Before its gate
    // opened nothing of the script has run: there is nothing to let finish, no grace then.
    let limits = if gate_open.is_some() {
        Limits {
            grace: Duration::ZERO,
            ..limits
        }
    } else {
        limits
    };
    terminate(
        pgid,
        &mut child,
        &mut status,
        &mut rx,
        &mut buf,
        limits,
        sink,
    )
    .await;
    guard.armed = false;
    let ended = match stop {
        Some(e) => e,
        None => Ended::Exited(status.unwrap_or_default()),
    };
    Ok(RunResult {
        ended,
        leftover_group: None,
    })
}

/// SIGTERM to the group, then SIGKILL after the grace (sooner if the group is gone), while
/// still reading output so a chatty process is never blocked on a full pipe; every wait
/// bounded.
async fn terminate(
    pgid: Pid,
    child: &mut tokio::process::Child,
    status: &mut Option<ExitStatus>,
    rx: &mut Option<pipe::Receiver>,
    buf: &mut [u8],
    limits: Limits,
    sink: &mut LogSink<'_>,
) {
    signal_group(pgid, Signal::SIGTERM);
    drain_until(
        Instant::now() + limits.grace,
        true,
        pgid,
        child,
        status,
        rx,
        buf,
        sink,
    )
    .await;
    signal_group(pgid, Signal::SIGKILL);
    drain_until(
        Instant::now() + limits.after_kill,
        false,
        pgid,
        child,
        status,
        rx,
        buf,
        sink,
    )
    .await;
    if rx.is_some() {
        tracing::warn!(
            pgid = pgid.as_raw(),
            "a process outside the step's group still holds its output; not waiting for it"
        );
    }
}

/// Forward output and reap the main process until both are done or `deadline` passes. With
/// `stop_when_group_gone`, also stop as soon as the main process has exited and its group is
/// empty (no reason to wait out a grace period).
#[expect(
    clippy::too_many_arguments,
    reason = "the borrowed pieces of one running step"
)]
async fn drain_until(
    deadline: Instant,
    stop_when_group_gone: bool,
    pgid: Pid,
    child: &mut tokio::process::Child,
    status: &mut Option<ExitStatus>,
    rx: &mut Option<pipe::Receiver>,
    buf: &mut [u8],
    sink: &mut LogSink<'_>,
) {
    while status.is_none() || rx.is_some() {
        tokio::select! {
            r = read_some(rx, buf) => match r {
                Some(n) => sink.push(&buf[..n]).await,
                None => *rx = None,
            },
            st = child.wait(), if status.is_none() => {
                *status = Some(st.unwrap_or_default());
            }
            () = sleep_until(deadline) => return,
        }
        if stop_when_group_gone && status.is_some() && killpg(pgid, None).is_err() {
            return;
        }
    }
}

/// One read from the pipe: `Some(n)` with data, `None` at end-of-file or error (or when
/// there is no pipe, in which case it never completes).
async fn read_some(rx: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> Option<usize> {
    match rx {
        Some(r) => match r.read(buf).await {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the step's output");
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// Until the gate opens; never when there is none.
async fn open_gate(
    gate: &mut Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>>,
) -> bool {
    match gate {
        Some(open) => open.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn wait_cancel(cancel: Option<&CancellationToken>) {
    match cancel {
        Some(c) => c.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Kills process groups that steps left running (with their output redirected) when the job
/// ends, as GitHub's runner kills a job's orphans.
///
/// A group id is the pid of its leader, which we have reaped: the kernel does not reuse that
/// pid while the group has members, but may once it is empty. So a group is only killed when
/// no process with that pid exists (`/proc/<pid>` absent, i.e. the id is not a new process's)
/// and the group still has members.
pub(crate) fn kill_leftovers(groups: &[i32]) {
    for &g in groups {
        if Path::new(&format!("/proc/{g}")).exists() {
            continue;
        }
        let pgid = Pid::from_raw(g);
        if killpg(pgid, None).is_ok() {
            tracing::debug!(pgid = g, "killing processes a step left running");
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}
