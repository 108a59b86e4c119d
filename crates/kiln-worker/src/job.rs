//! One job on this worker: its folder, its source, its steps, and its reports.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_core::ids::{JobStatus, RunId};
use kiln_core::workflow::{Workflow, parse_workflow};
use kiln_exec::{ExecEvent, JobOutcome, JobSpec, Place};
use kiln_proto::workers::{AssignedJob, JobReport, ReportEvent, WorkerId};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Answer, Api};

/// How often buffered progress (log lines, step results) is sent.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// What every job of this worker shares.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) api: Api,
    pub(crate) worker: WorkerId,
    pub(crate) name: String,
    pub(crate) work_dir: PathBuf,
    /// How long a lease lasts: reports are retried this long at most.
    pub(crate) lease: Duration,
    /// The sources and workflows of the last few runs: every job of a run has the same, so
    /// the next job of a run neither fetches nor parses them again.
    pub(crate) runs: Arc<Mutex<RunCache>>,
    /// The sandboxes package builds run in, detected when first needed.
    pub(crate) sandboxes: crate::package::Sandboxes,
    /// The dependency outputs package builds fetched.
    pub(crate) outputs: Arc<crate::outputs::OutputCache>,
}

/// How many runs' sources are kept.
const CACHED_RUNS: usize = 4;

/// A run's source (the tar the server sent) and its workflows parsed so far, by file.
type RunEntry = (RunId, Arc<Vec<u8>>, Vec<(String, Arc<Workflow>)>);

/// The sources and workflows of the last [`CACHED_RUNS`] runs.
#[derive(Default)]
pub(crate) struct RunCache {
    entries: VecDeque<RunEntry>,
}

impl RunCache {
    fn source(&self, run: RunId) -> Option<Arc<Vec<u8>>> {
        self.entries
            .iter()
            .find(|e| e.0 == run)
            .map(|e| e.1.clone())
    }

    fn keep_source(&mut self, run: RunId, tar: Arc<Vec<u8>>) {
        if self.entries.iter().any(|e| e.0 == run) {
            return;
        }
        if self.entries.len() == CACHED_RUNS {
            self.entries.pop_front();
        }
        self.entries.push_back((run, tar, Vec::new()));
    }

    fn workflow(&self, run: RunId, file: &str) -> Option<Arc<Workflow>> {
        let e = self.entries.iter().find(|e| e.0 == run)?;
        e.2.iter().find(|(f, _)| f == file).map(|(_, w)| w.clone())
    }

    fn keep_workflow(&mut self, run: RunId, file: &str, wf: Arc<Workflow>) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == run)
            && !e.2.iter().any(|(f, _)| f == file)
        {
            e.2.push((file.to_owned(), wf));
        }
    }
}

/// Runs `a` to its end and reports it, unless the lease is `lost` first.
pub(crate) async fn run(
    ctx: &Context,
    a: AssignedJob,
    cancel: CancellationToken,
    lost: CancellationToken,
) {
    let dir = ctx.work_dir.join(a.job.to_string());
    let (tx, rx) = mpsc::unbounded_channel::<ReportEvent>();
    let reporter = tokio::spawn(report(
        ctx.clone(),
        a.clone(),
        rx,
        cancel.clone(),
        lost.clone(),
    ));
    let outcome = if let Some(pkg) = &a.package {
        crate::package::build(ctx, &a, pkg, &dir, &tx, &cancel).await
    } else {
        steps(ctx, &a, &dir, &tx, &cancel).await
    };
    tracing::info!(job = %a.job, status = %outcome.status, "job ended");
    let _ = tx.send(ReportEvent::Done {
        status: outcome.status,
        outputs: outcome.outputs,
        error: outcome.error,
        continue_on_error: outcome.continue_on_error,
    });
    drop(tx);
    let _ = reporter.await;
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
}

/// A log chunk of step `step` as a report: text, with the exact bytes as well where they
/// are not UTF-8.
pub(crate) fn log_event(step: u32, data: Vec<u8>) -> ReportEvent {
    match String::from_utf8(data) {
        Ok(text) => ReportEvent::Log {
            step,
            data: text,
            bytes: None,
        },
        Err(e) => {
            use base64::Engine as _;
            let raw = e.into_bytes();
            ReportEvent::Log {
                step,
                data: String::from_utf8_lossy(&raw).into_owned(),
                bytes: Some(base64::engine::general_purpose::STANDARD.encode(&raw)),
            }
        }
    }
}

/// Runs the steps of `a` in `dir`, reporting as they go.
async fn steps(
    ctx: &Context,
    a: &AssignedJob,
    dir: &Path,
    tx: &mpsc::UnboundedSender<ReportEvent>,
    cancel: &CancellationToken,
) -> JobOutcome {
    match prepare(ctx, a, dir).await {
        Ok(spec) => {
            let _ = tx.send(ReportEvent::Started);
            let (etx, mut erx) = mpsc::channel::<ExecEvent>(256);
            let forward = {
                let tx = tx.clone();
                async move {
                    while let Some(ev) = erx.recv().await {
                        let event = match ev {
                            ExecEvent::StepStarted { .. } => continue,
                            ExecEvent::Log { index, data } => log_event(index, data),
                            ExecEvent::StepFinished { step } => ReportEvent::Step { step },
                        };
                        let _ = tx.send(event);
                    }
                }
            };
            let (outcome, ()) =
                tokio::join!(kiln_exec::run_job(spec, etx, cancel.clone()), forward);
            outcome
        }
        Err(error) => JobOutcome {
            status: if cancel.is_cancelled() {
                JobStatus::Cancelled
            } else {
                JobStatus::Failure
            },
            outputs: Map::new(),
            continue_on_error: false,
            error: Some(error),
        },
    }
}

/// The job's folder with its source unpacked, and what the executor needs.
async fn prepare(ctx: &Context, a: &AssignedJob, dir: &Path) -> Result<JobSpec, String> {
    let workspace = dir.join("workspace");
    let temp = dir.join("temp");
    for d in [&workspace, &temp] {
        std::fs::create_dir_all(d)
            .map_err(|e| format!("failed to make the job's folder {}: {e}", d.display()))?;
    }
    unpack_source(ctx, a, &workspace).await?;
    let cached = ctx
        .runs
        .lock()
        .ok()
        .and_then(|c| c.workflow(a.run, &a.workflow));
    let wf = match cached {
        Some(wf) => wf,
        None => {
            let wf_path = workspace.join(&a.workflow);
            let text = std::fs::read_to_string(&wf_path)
                .map_err(|e| format!("failed to read the workflow {}: {e}", a.workflow))?;
            let wf = parse_workflow(&a.workflow, &text)
                .map_err(|d| format!("the workflow is invalid:\n{d}"))?;
            let wf = Arc::new(wf);
            if let Ok(mut c) = ctx.runs.lock() {
                c.keep_workflow(a.run, &a.workflow, wf.clone());
            }
            wf
        }
    };
    let def = wf
        .jobs
        .get(&a.key)
        .cloned()
        .ok_or_else(|| format!("the workflow {} has no job `{}`", a.workflow, a.key))?;
    let event_path = dir.join("event.json");
    std::fs::write(
        &event_path,
        serde_json::to_vec(&a.event).unwrap_or_default(),
    )
    .map_err(|e| format!("failed to write the event file: {e}"))?;
    let mut contexts = a.contexts.clone();
    let mut env = a.env.clone();
    let (ws, tmp, ev) = (
        workspace.to_string_lossy().into_owned(),
        temp.to_string_lossy().into_owned(),
        event_path.to_string_lossy().into_owned(),
    );
    kiln_exec::place_job(
        &mut contexts,
        &mut env,
        Place {
            workspace: &ws,
            temp: &tmp,
            event_path: &ev,
            runner_name: &ctx.name,
        },
    );
    Ok(JobSpec {
        job: def,
        workflow_env: wf.env.clone(),
        workflow_defaults: wf.defaults.clone(),
        contexts,
        workspace,
        temp_dir: temp,
        base_env: env,
        inherit_env: true,
        masks: a.masks.clone(),
        artifacts: Some(Arc::new(crate::artifacts::HttpHost {
            api: ctx.api.clone(),
            worker: ctx.worker,
            job: a.job,
            token: a.token,
        })),
    })
}

/// The job's source (the run's, fetched once per run) unpacked into `workspace`.
pub(crate) async fn unpack_source(
    ctx: &Context,
    a: &AssignedJob,
    workspace: &Path,
) -> Result<(), String> {
    let cached = ctx.runs.lock().ok().and_then(|c| c.source(a.run));
    let tar = match cached {
        Some(tar) => tar,
        None => {
            let tar = ctx
                .api
                .get_bytes(
                    &format!(
                        "/api/v1/worker/{}/jobs/{}/source?token={}",
                        ctx.worker, a.job, a.token
                    ),
                    Duration::from_secs(300),
                )
                .await
                .map_err(|e| format!("failed to fetch the job's source: {}", describe(&e)))?;
            let tar = Arc::new(tar);
            if let Ok(mut c) = ctx.runs.lock() {
                c.keep_source(a.run, tar.clone());
            }
            tar
        }
    };
    let into = workspace.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(&tar[..]);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        // `unpack` writes nothing outside `into` (entries with `..` or absolute paths are
        // refused).
        archive.unpack(&into)
    })
    .await
    .map_err(|e| format!("failed to unpack the job's source: {e}"))?
    .map_err(|e| format!("failed to unpack the job's source: {e}"))?;
    Ok(())
}

pub(crate) fn describe(a: &Answer) -> String {
    match a {
        Answer::Refused { code, message, .. } => format!("{code}: {message}"),
        Answer::Failed(m) => m.clone(),
    }
}

/// Sends what the job reports, in order, every [`REPORT_EVERY`] and at its end; stops when
/// the server says the lease is lost.
async fn report(
    ctx: Context,
    a: AssignedJob,
    mut rx: mpsc::UnboundedReceiver<ReportEvent>,
    cancel: CancellationToken,
    lost: CancellationToken,
) {
    let path = format!("/api/v1/worker/{}/jobs/{}/report", ctx.worker, a.job);
    let mut pending: Vec<ReportEvent> = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        if open {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        let done = matches!(ev, ReportEvent::Done { .. });
                        pending.push(ev);
                        if !done {
                            continue;
                        }
                    }
                    None => open = false,
                },
                () = tokio::time::sleep(REPORT_EVERY) => {}
            }
        }
        while let Ok(ev) = rx.try_recv() {
            pending.push(ev);
        }
        if pending.is_empty() {
            continue;
        }
        if lost.is_cancelled() {
            return;
        }
        let batch = JobReport {
            token: a.token,
            events: std::mem::take(&mut pending),
        };
        if !send(&ctx, &path, &batch, &cancel, &lost).await {
            return;
        }
    }
}

/// Posts one report, retrying network failures with backoff for as long as the lease could
/// still be held. `false`: stop reporting (the lease is lost, or the server cannot be reached).
async fn send(
    ctx: &Context,
    path: &str,
    batch: &JobReport,
    cancel: &CancellationToken,
    lost: &CancellationToken,
) -> bool {
    let began = Instant::now();
    let mut wait = Duration::from_millis(250);
    loop {
        match ctx
            .api
            .post::<Value>(path, batch, Duration::from_secs(30))
            .await
        {
            Ok(_) => return true,
            Err(Answer::Refused {
                status: 409,
                message,
                ..
            }) => {
                tracing::warn!(%message, "lease lost: stopping the job");
                lost.cancel();
                cancel.cancel();
                return false;
            }
            Err(Answer::Refused { code, message, .. }) => {
                // Not something a retry fixes: say so, and carry on with what follows.
                tracing::error!(%code, %message, "the server refused a report");
                return true;
            }
            Err(Answer::Failed(m)) => {
                if began.elapsed() > ctx.lease {
                    tracing::error!(error = %m, "cannot report for longer than a lease: giving the job up");
                    lost.cancel();
                    cancel.cancel();
                    return false;
                }
                tracing::warn!(error = %m, retry_in = ?wait, "cannot report");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
