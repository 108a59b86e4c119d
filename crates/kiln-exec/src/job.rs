//! The step loop of one job: evaluates each step's `if:`, renders its templates, layers its
//! environment (workflow → job → `$GITHUB_ENV` → step), runs it (a script, the built-in
//! checkout, or a local composite action), reads its environment files and keeps the `steps`
//! and `env` contexts current — GitHub's runner semantics, reported as [`ExecEvent`]s.
//!
//! Composite actions run through the same loop in a nested [`Frame`] with their own `inputs`
//! and `steps` contexts; their logs go to the calling step.
//! Not here: process handling (`process`), parsing of files (`envfile`, kiln-core).

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use indexmap::IndexMap;
use kiln_core::expr::{self, JobState, Scope};
use kiln_core::ids::{JobStatus, StepStatus};
use kiln_core::workflow::{Defaults, Step, StepAction, UsesKind};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::artifacts::{self, ArtifactHost};
use crate::envfile::{parse_env_file, parse_path_file};
use crate::hash::WorkspaceHasher;
use crate::logs::{LogSink, Masker};
use crate::process::{self, Ended, Limits, ProcessSpec};
use crate::{ExecEvent, JobOutcome, JobSpec, shell};

/// GitHub's default `timeout-minutes` for a job.
const DEFAULT_JOB_TIMEOUT_MINUTES: f64 = 360.0;
/// How long a step may run once the job was cancelled or timed out (`if: always()` clean-up
/// steps), like GitHub's `cancel-timeout-minutes`.
const AFTER_CANCEL_LIMIT: Duration = Duration::from_secs(5 * 60);
/// Composite actions calling composite actions: deep enough for real use, shallow enough to
/// stop an action that calls itself.
const MAX_ACTION_DEPTH: usize = 10;
/// `PATH` for steps when kiln's own environment is not passed and nothing else sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs one job to its end with the default [`Limits`]. Never panics on bad input: every
/// problem ends up in the returned [`JobOutcome`] (and the step's log).
pub async fn run_job(
    spec: JobSpec,
    events: mpsc::Sender<ExecEvent>,
    cancel: CancellationToken,
) -> JobOutcome {
    run_job_with_limits(spec, events, cancel, Limits::default()).await
}

/// [`run_job`] with explicit grace and drain limits (tests use short ones).
pub async fn run_job_with_limits(
    spec: JobSpec,
    events: mpsc::Sender<ExecEvent>,
    cancel: CancellationToken,
    limits: Limits,
) -> JobOutcome {
    let JobSpec {
        job,
        workflow_env,
        workflow_defaults,
        contexts,
        workspace,
        temp_dir,
        base_env,
        inherit_env,
        masks,
        artifacts,
    } = spec;

    let mut runner = Runner {
        hasher: WorkspaceHasher::new(&workspace),
        static_env: static_env(inherit_env, &base_env),
        workspace,
        temp_dir,
        events: &events,
        cancel: &cancel,
        limits,
        masker: Masker::new(&masks),
        env_from_files: IndexMap::new(),
        path_additions: Vec::new(),
        counter: 0,
        leftover_groups: Vec::new(),
        job_deadline: Instant::now(),
        job_timed_out: false,
        saw_cancel: false,
        error: None,
        meta_file: PathBuf::new(),
        artifacts,
    };
    let mut frame = Frame {
        contexts,
        below_files: IndexMap::new(),
        above_files: IndexMap::new(),
        defaults: Some(merge_defaults(&job.defaults, &workflow_defaults)),
        failed: false,
        timed_out: false,
        depth: 0,
    };
    frame
        .contexts
        .insert("steps".into(), Value::Object(Map::new()));

    let mut outcome = JobOutcome {
        status: JobStatus::Success,
        outputs: Map::new(),
        continue_on_error: false,
        error: None,
    };

    // Job-level values, evaluated once with what the caller gave (matrix, secrets, …).
    if let Err(e) = runner.prepare_job(&mut frame, &job, &workflow_env, &mut outcome) {
        outcome.status = JobStatus::Failure;
        outcome.error = Some(runner.masker.mask_str(&e));
        return outcome;
    }
    if let Err(e) = std::fs::create_dir_all(&runner.temp_dir) {
        outcome.status = JobStatus::Failure;
        outcome.error = Some(format!(
            "cannot create the job's temp directory {}: {e}",
            runner.temp_dir.display()
        ));
        return outcome;
    }

    // The file steps write artifact metadata to, empty at the start like GitHub's own files.
    runner.meta_file = runner.temp_dir.join("artifact-metadata.jsonl");
    if let Err(e) = std::fs::write(&runner.meta_file, b"") {
        outcome.status = JobStatus::Failure;
        outcome.error = Some(format!("cannot create {}: {e}", runner.meta_file.display()));
        return outcome;
    }
    runner.static_env.push((
        crate::artifacts::METADATA_ENV.into(),
        runner.meta_file.clone().into_os_string(),
    ));

    let deadline = runner.job_deadline;
    for (i, step) in job.steps.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        runner
            .run_step(&mut frame, step, index, Some(index), deadline)
            .await;
    }
    // `artifacts:` are kept once every step succeeded, reported as one more step.
    if !job.artifacts.is_empty()
        && !frame.failed
        && !frame.timed_out
        && runner.error.is_none()
        && !runner.saw_cancel
        && !runner.job_timed_out
    {
        let index = u32::try_from(job.steps.len()).unwrap_or(u32::MAX);
        runner
            .upload_job_artifacts(&mut frame, &job.artifacts, index)
            .await;
    }

    // Outputs are rendered even for a failed job, as GitHub does.
    for (name, template) in &job.outputs {
        let scope = runner.scope(&frame);
        match expr::render_str(template, &scope) {
            Ok(v) => {
                outcome.outputs.insert(name.clone(), Value::String(v));
            }
            Err(e) => runner.record_error(format!("job output `{name}`: {e}")),
        }
    }

    process::kill_leftovers(&runner.leftover_groups);

    outcome.status = if runner.job_timed_out || frame.timed_out {
        JobStatus::TimedOut
    } else if runner.saw_cancel {
        JobStatus::Cancelled
    } else if frame.failed || runner.error.is_some() {
        JobStatus::Failure
    } else {
        JobStatus::Success
    };
    outcome.error = runner.error.take();
    outcome
}

/// Kiln's environment (minus `KILN_*`) when inherited, then the caller's `base_env`. Later
/// entries win when a `Command` receives them, so nothing is deduplicated here.
fn static_env(inherit: bool, base_env: &[(String, String)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    if inherit {
        env.extend(
            std::env::vars_os().filter(|(k, _)| !k.as_encoded_bytes().starts_with(b"KILN_")),
        );
    } else {
        if let Some(home) = std::env::var_os("HOME") {
            env.push(("HOME".into(), home));
        }
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env.extend(base_env.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

fn merge_defaults(job: &Defaults, workflow: &Defaults) -> Defaults {
    Defaults {
        shell: job.shell.clone().or_else(|| workflow.shell.clone()),
        working_directory: job
            .working_directory
            .clone()
            .or_else(|| workflow.working_directory.clone()),
    }
}

/// The job-wide mutable state and the things every step needs.
struct Runner<'a> {
    workspace: PathBuf,
    temp_dir: PathBuf,
    hasher: WorkspaceHasher,
    static_env: Vec<(OsString, OsString)>,
    events: &'a mpsc::Sender<ExecEvent>,
    cancel: &'a CancellationToken,
    limits: Limits,
    masker: Masker,
    /// Set through `$GITHUB_ENV` by earlier steps.
    env_from_files: IndexMap<String, String>,
    /// Added through `$GITHUB_PATH`, newest first (each addition is prepended).
    path_additions: Vec<String>,
    /// Numbers script and environment files (unique across composite actions).
    counter: u32,
    /// Process groups whose members outlived their step (see `process::kill_leftovers`).
    leftover_groups: Vec<i32>,
    job_deadline: Instant,
    job_timed_out: bool,
    saw_cancel: bool,
    /// The first error that is not a step's exit code.
    error: Option<String>,
    /// `$KILN_ARTIFACT_METADATA`.
    meta_file: PathBuf,
    /// Where artifacts go; `None`: nowhere (uploads and downloads fail, saying so).
    artifacts: Option<std::sync::Arc<dyn ArtifactHost>>,
}

/// One level of step execution: the job itself, or a composite action inside a step.
struct Frame {
    /// This level's contexts; `env` and `steps` are kept current.
    contexts: Map<String, Value>,
    /// Env that `$GITHUB_ENV` overrides: workflow and job `env:`.
    below_files: IndexMap<String, String>,
    /// Env that overrides `$GITHUB_ENV`: the calling steps' `env:` in a composite action.
    above_files: IndexMap<String, String>,
    /// `defaults.run` (job over workflow); `None` inside composite actions, where GitHub does
    /// not apply them.
    defaults: Option<Defaults>,
    /// A step failed (without continue-on-error): `failure()` is true, `success()` false.
    failed: bool,
    /// A step timed out (without continue-on-error).
    timed_out: bool,
    depth: usize,
}

/// What became of one step, before continue-on-error.
struct StepEnd {
    status: StepStatus,
    outputs: Map<String, Value>,
}

impl StepEnd {
    fn failure() -> Self {
        Self {
            status: StepStatus::Failure,
            outputs: Map::new(),
        }
    }
}

type BoxFuture<'f, T> = Pin<Box<dyn Future<Output = T> + Send + 'f>>;

fn env_object(map: &IndexMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Minutes (a number, a numeric string, or an expression yielding one) as a duration.
fn minutes(value: &Value, scope: &Scope<'_>, what: &str) -> Result<Duration, String> {
    let v = match value {
        Value::String(_) => expr::eval_value(value, scope).map_err(|e| format!("{what}: {e}"))?,
        other => other.clone(),
    };
    let m = match &v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match m {
        Some(m) if m.is_finite() && m > 0.0 => Ok(Duration::from_secs_f64(m * 60.0)),
        _ => Err(format!(
            "{what}: `{}` is not a positive number of minutes",
            expr::to_display_string(&v)
        )),
    }
}

/// `continue-on-error`: a bool, or an expression whose value is judged truthy.
fn truthy(value: &Value, scope: &Scope<'_>, what: &str) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(_) => expr::eval_value(value, scope)
            .map(|v| match &v {
                // `continue-on-error: "false"` written as a string still means false.
                Value::String(s) if s == "false" => false,
                other => expr::is_truthy(other),
            })
            .map_err(|e| format!("{what}: {e}")),
        other => Ok(expr::is_truthy(other)),
    }
}

impl<'a> Runner<'a> {
    fn scope<'s>(&'s self, frame: &'s Frame) -> Scope<'s> {
        Scope {
            contexts: &frame.contexts,
            state: JobState {
                failed: frame.failed,
                cancelled: self.cancel.is_cancelled() || self.job_timed_out,
            },
            hasher: Some(&self.hasher),
        }
    }

    fn record_error(&mut self, message: String) {
        let message = self.masker.mask_str(&message);
        tracing::debug!(error = %message, "job error");
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    /// Evaluates the job's env, timeout and continue-on-error.
    fn prepare_job(
        &mut self,
        frame: &mut Frame,
        job: &kiln_core::workflow::Job,
        workflow_env: &IndexMap<String, String>,
        outcome: &mut JobOutcome,
    ) -> Result<(), String> {
        frame
            .contexts
            .insert("env".into(), Value::Object(Map::new()));
        // Each level sees the levels before it in `env`.
        for (level, vars) in [("workflow", workflow_env), ("job", &job.env)] {
            for (k, template) in vars {
                let v = expr::render_str(template, &self.scope(frame))
                    .map_err(|e| format!("{level} env `{k}`: {e}"))?;
                frame.below_files.insert(k.clone(), v);
            }
            frame
                .contexts
                .insert("env".into(), env_object(&frame.below_files));
        }
        let scope = self.scope(frame);
        if let Some(coe) = &job.continue_on_error {
            outcome.continue_on_error = truthy(coe, &scope, "job continue-on-error")?;
        }
        let timeout = match &job.timeout_minutes {
            Some(v) => minutes(v, &scope, "job timeout-minutes")?,
            None => Duration::from_secs_f64(DEFAULT_JOB_TIMEOUT_MINUTES * 60.0),
        };
        self.job_deadline = Instant::now() + timeout;
        Ok(())
    }

    fn current_env(&self, frame: &Frame) -> IndexMap<String, String> {
        let mut env = frame.below_files.clone();
        env.extend(
            self.env_from_files
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env.extend(
            frame
                .above_files
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env
    }

    async fn send(&self, ev: ExecEvent) {
        // Nobody listening is not a reason to stop the job.
        let _ = self.events.send(ev).await;
    }

    /// Runs one step of `frame` and updates the frame. `report` is the index under which
    /// started/finished events are sent (top-level steps only); `log_index` is where its log
    /// goes (a composite's inner steps log into the calling step).
    fn run_step<'s>(
        &'s mut self,
        frame: &'s mut Frame,
        step: &'s Step,
        position: u32,
        report: Option<u32>,
        outer_deadline: Instant,
    ) -> BoxFuture<'s, ()>
    where
        'a: 's,
    {
        Box::pin(async move {
            self.run_step_inner(frame, step, position, report, outer_deadline)
                .await;
        })
    }

    async fn run_step_inner(
        &mut self,
        frame: &mut Frame,
        step: &Step,
        position: u32,
        report: Option<u32>,
        outer_deadline: Instant,
    ) {
        // A job deadline that passed between steps ends the job like a cancel does.
        if !self.job_timed_out && Instant::now() >= self.job_deadline {
            self.job_timed_out = true;
        }
        // The env context for this step: job levels, $GITHUB_ENV, calling steps, then the
        // step's own `env:`, which may read the levels below it.
        let mut env = self.current_env(frame);
        frame.contexts.insert("env".into(), env_object(&env));

        let raw_name = step.display_name();
        // A name that cannot be rendered is shown as written; names reach logs and the UI, so
        // they are masked like output.
        let name = match expr::render_str(&raw_name, &self.scope(frame)) {
            Ok(n) => self.masker.mask_str(&n),
            Err(_) => raw_name.clone(),
        };
        let started_at = jiff::Timestamp::now();
        let mut problem: Option<String> = None;

        let mut step_env: IndexMap<String, String> = IndexMap::new();
        for (k, template) in &step.env {
            match expr::render_str(template, &self.scope(frame)) {
                Ok(v) => {
                    step_env.insert(k.clone(), v);
                }
                Err(e) => {
                    problem = Some(format!("step `{name}`: env `{k}`: {e}"));
                    break;
                }
            }
        }
        env.extend(step_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        frame.contexts.insert("env".into(), env_object(&env));

        // `if:`; after a cancel or job timeout, the token no longer ends the steps that run.
        let cancelled_before = self.cancel.is_cancelled() || self.job_timed_out;
        if problem.is_none() {
            let condition = step.condition.as_deref().unwrap_or("success()");
            let verdict = expr::eval_condition(condition, &self.scope(frame));
            match verdict {
                Ok(true) => {}
                Ok(false) => {
                    if cancelled_before {
                        self.saw_cancel |= self.cancel.is_cancelled();
                    }
                    self.finish(
                        frame,
                        step,
                        report,
                        &name,
                        StepStatus::Skipped,
                        "skipped",
                        "skipped",
                        Map::new(),
                        None,
                    )
                    .await;
                    return;
                }
                Err(e) => problem = Some(format!("step `{name}`: if: {e}")),
            }
        }

        if let Some(index) = report {
            self.send(ExecEvent::StepStarted {
                index,
                name: name.clone(),
            })
            .await;
        }
        let log_index = report.unwrap_or(position);

        let mut continue_on_error = false;
        let mut deadline = outer_deadline;
        if problem.is_none() {
            let scope = self.scope(frame);
            let evaluated = (|| -> Result<(bool, Option<Duration>), String> {
                let coe = match &step.continue_on_error {
                    Some(v) => truthy(v, &scope, "continue-on-error")?,
                    None => false,
                };
                let timeout = match &step.timeout_minutes {
                    Some(v) => Some(minutes(v, &scope, "timeout-minutes")?),
                    None => None,
                };
                Ok((coe, timeout))
            })();
            match evaluated {
                Ok((coe, timeout)) => {
                    continue_on_error = coe;
                    let now = Instant::now();
                    if cancelled_before {
                        deadline = now
                            + timeout
                                .unwrap_or(AFTER_CANCEL_LIMIT)
                                .min(AFTER_CANCEL_LIMIT);
                    } else if let Some(t) = timeout {
                        deadline = deadline.min(now + t);
                    }
                }
                Err(e) => problem = Some(format!("step `{name}`: {e}")),
            }
        }

        let end = match problem {
            Some(message) => {
                self.step_error(log_index, message).await;
                StepEnd::failure()
            }
            None => {
                let cancel = (!cancelled_before).then_some(self.cancel);
                let end = self
                    .execute(
                        frame, step, &name, &step_env, position, log_index, deadline, cancel,
                    )
                    .await;
                if end.status == StepStatus::TimedOut && Instant::now() >= self.job_deadline {
                    self.job_timed_out = true;
                }
                end
            }
        };

        // Outcome and conclusion as the `steps` context reports them.
        let (outcome, failed_for_job) = match end.status {
            StepStatus::Success => ("success", false),
            StepStatus::Skipped => ("skipped", false),
            StepStatus::Cancelled => {
                self.saw_cancel = true;
                ("cancelled", false)
            }
            StepStatus::Failure | StepStatus::TimedOut | StepStatus::Running => ("failure", true),
        };
        let conclusion = if failed_for_job && continue_on_error {
            "success"
        } else {
            outcome
        };
        if failed_for_job && !continue_on_error {
            frame.failed = true;
            if end.status == StepStatus::TimedOut {
                frame.timed_out = true;
            }
        }
        self.finish(
            frame,
            step,
            report,
            &name,
            end.status,
            outcome,
            conclusion,
            end.outputs,
            Some(started_at),
        )
        .await;
    }

    /// Records a step's result in the `steps` context and reports it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per kind of end; a struct would only rename them"
    )]
    async fn finish(
        &mut self,
        frame: &mut Frame,
        step: &Step,
        report: Option<u32>,
        name: &str,
        status: StepStatus,
        outcome: &str,
        conclusion: &str,
        outputs: Map<String, Value>,
        started_at: Option<jiff::Timestamp>,
    ) {
        if let Some(id) = &step.id {
            let mut entry = Map::new();
            entry.insert("outputs".into(), Value::Object(outputs.clone()));
            entry.insert("outcome".into(), Value::String(outcome.into()));
            entry.insert("conclusion".into(), Value::String(conclusion.into()));
            if let Some(Value::Object(steps)) = frame.contexts.get_mut("steps") {
                steps.insert(id.clone(), Value::Object(entry));
            }
        }
        if let Some(index) = report {
            self.send(ExecEvent::StepFinished {
                step: kiln_proto::Step {
                    index,
                    name: name.to_owned(),
                    status,
                    outputs,
                    started_at,
                    finished_at: Some(jiff::Timestamp::now()),
                },
            })
            .await;
        }
    }

    /// Logs a kiln-side error into the step's log and remembers it for the job's outcome.
    async fn step_error(&mut self, log_index: u32, message: String) {
        let message = self.masker.mask_str(&message);
        let mut sink = LogSink::new(log_index, self.events, &mut self.masker);
        sink.line(&format!("Error: {message}")).await;
        self.record_error(message);
    }

    /// Runs the step's action.
    #[expect(
        clippy::too_many_arguments,
        reason = "the step's evaluated pieces, passed once"
    )]
    async fn execute(
        &mut self,
        frame: &mut Frame,
        step: &Step,
        name: &str,
        step_env: &IndexMap<String, String>,
        position: u32,
        log_index: u32,
        deadline: Instant,
        cancel: Option<&CancellationToken>,
    ) -> StepEnd {
        match &step.action {
            StepAction::Run(script) => {
                self.run_script(
                    frame, step, name, script, position, log_index, deadline, cancel,
                )
                .await
            }
            StepAction::Uses { uses, with } => match StepAction::uses_kind(uses) {
                UsesKind::Checkout => {
                    let mut sink = LogSink::new(log_index, self.events, &mut self.masker);
                    sink.line(&format!(
                        "{uses}: the workspace already holds the project's files; nothing to check out"
                    ))
                    .await;
                    StepEnd {
                        status: StepStatus::Success,
                        outputs: Map::new(),
                    }
                }
                UsesKind::UploadArtifact => self.upload_step(frame, name, with, log_index).await,
                UsesKind::DownloadArtifact => {
                    self.download_step(frame, name, with, log_index).await
                }
                UsesKind::Local(path) => {
                    self.run_composite(
                        frame, name, path, with, step_env, log_index, deadline, cancel,
                    )
                    .await
                }
                UsesKind::Docker(_) | UsesKind::Remote(_) => {
                    self.step_error(
                        log_index,
                        format!(
                            "step `{name}`: action `{uses}` cannot run here: kiln runs `run:` steps, `actions/checkout`, `actions/upload-artifact`, `actions/download-artifact` and local composite actions (`uses: ./path`); replace it with a `run:` step"
                        ),
                    )
                    .await;
                    StepEnd::failure()
                }
            },
        }
    }

    /// A `run:` step: render, write the script, run it, read the environment files.
    #[expect(
        clippy::too_many_arguments,
        reason = "the step's evaluated pieces, passed once"
    )]
    async fn run_script(
        &mut self,
        frame: &mut Frame,
        step: &Step,
        name: &str,
        script: &str,
        position: u32,
        log_index: u32,
        deadline: Instant,
        cancel: Option<&CancellationToken>,
    ) -> StepEnd {
        let prepared = self.prepare_script(frame, step, name);
        let (shell, dir, env_ctx) = match prepared {
            Ok(p) => p,
            Err(message) => {
                self.step_error(log_index, message).await;
                return StepEnd::failure();
            }
        };

        self.counter += 1;
        let n = self.counter;
        let file = |suffix: &str| self.temp_dir.join(format!("step{n}{suffix}"));
        let script_path = file(shell.extension);
        let output_path = file("_output");
        let env_path = file("_env");
        let path_path = file("_path");
        let summary_path = file("_summary");
        let rendered = expr::render_str(script, &self.scope(frame));
        let rendered = match rendered {
            Ok(s) => s,
            Err(e) => {
                self.step_error(log_index, format!("step `{name}`: run: {e}"))
                    .await;
                return StepEnd::failure();
            }
        };
        // The environment files exist (empty) before the step starts, as on GitHub: tools
        // such as `@actions/core` refuse to append to a missing one. The engine reuses a
        // slot's temp folder from job to job, so these usually truncate an existing file
        // rather than allocate an inode. Small files on local disk are written with plain
        // blocking calls, cheaper than a trip through tokio's blocking pool.
        for path in [&output_path, &env_path, &path_path, &summary_path] {
            if let Err(e) = empty_file(path) {
                self.step_error(
                    log_index,
                    format!("step `{name}`: cannot create {}: {e}", path.display()),
                )
                .await;
                return StepEnd::failure();
            }
        }
        if let Err(e) = overwrite(&script_path, rendered.as_bytes()) {
            self.step_error(
                log_index,
                format!(
                    "step `{name}`: cannot write the script {}: {e}",
                    script_path.display()
                ),
            )
            .await;
            return StepEnd::failure();
        }

        let action_name = match &step.id {
            Some(id) => id.clone(),
            None => format!("__run_{position}"),
        };
        let mut env: Vec<(OsString, OsString)> =
            Vec::with_capacity(self.static_env.len() + env_ctx.len() + 10);
        env.extend(self.static_env.iter().cloned());
        env.extend(env_ctx.iter().map(|(k, v)| (k.into(), v.into())));
        let path_of = |p: &Path| p.as_os_str().to_owned();
        env.extend([
            ("GITHUB_WORKSPACE".into(), path_of(&self.workspace)),
            ("RUNNER_TEMP".into(), path_of(&self.temp_dir)),
            ("GITHUB_ACTION".into(), action_name.into()),
            ("GITHUB_OUTPUT".into(), path_of(&output_path)),
            ("KILN_OUTPUT".into(), path_of(&output_path)),
            ("GITHUB_ENV".into(), path_of(&env_path)),
            ("GITHUB_PATH".into(), path_of(&path_path)),
            ("GITHUB_STEP_SUMMARY".into(), path_of(&summary_path)),
        ]);
        if !self.path_additions.is_empty() {
            // The PATH the step would otherwise get: the last one set wins.
            let base = env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mut path = OsString::new();
            for dir in &self.path_additions {
                path.push(dir);
                path.push(":");
            }
            path.push(base);
            env.push(("PATH".into(), path));
        }

        let script_str = script_path.to_string_lossy().into_owned();
        let spec = ProcessSpec {
            program: &shell.program,
            args: shell.args_for(&script_str),
            env,
            dir: &dir,
            gate: None,
        };
        let limits = self.limits;
        let mut sink = LogSink::new(log_index, self.events, &mut self.masker);
        let result = process::run(spec, deadline, cancel, limits, &mut sink).await;
        sink.flush().await;
        let mut end = StepEnd::failure();
        let mut kiln_error: Option<String> = None;
        match result {
            Err(e) => {
                kiln_error = Some(format!("step `{name}`: {e}"));
            }
            Ok(r) => {
                if let Some(g) = r.leftover_group {
                    self.leftover_groups.push(g);
                }
                end.status = match r.ended {
                    Ended::Exited(st) if st.success() => StepStatus::Success,
                    Ended::Exited(st) => {
                        use std::os::unix::process::ExitStatusExt;
                        let msg = match (st.code(), st.signal()) {
                            (Some(code), _) => format!("Process completed with exit code {code}."),
                            (None, Some(sig)) => format!("Process was terminated by signal {sig}."),
                            _ => "Process failed.".to_owned(),
                        };
                        sink.line(&format!("Error: {msg}")).await;
                        StepStatus::Failure
                    }
                    Ended::TimedOut => {
                        sink.line("Error: The step has timed out; its processes were stopped.")
                            .await;
                        StepStatus::TimedOut
                    }
                    Ended::Cancelled => {
                        sink.line("Error: The step was cancelled; its processes were stopped.")
                            .await;
                        StepStatus::Cancelled
                    }
                };
            }
        }
        drop(sink);
        if let Some(message) = kiln_error {
            self.step_error(log_index, message).await;
            return StepEnd::failure();
        }

        // Environment files count even when the step failed, as on GitHub.
        match self.read_env_files(&output_path, &env_path, &path_path) {
            Ok(outputs) => end.outputs = outputs,
            Err(message) => {
                self.step_error(log_index, format!("step `{name}`: {message}"))
                    .await;
                if end.status == StepStatus::Success {
                    end.status = StepStatus::Failure;
                }
            }
        }
        end
    }

    /// Shell, working directory and env context for a `run:` step, all rendered.
    fn prepare_script(
        &self,
        frame: &Frame,
        step: &Step,
        name: &str,
    ) -> Result<(shell::ShellCommand, PathBuf, IndexMap<String, String>), String> {
        let scope = self.scope(frame);
        let defaults = frame.defaults.as_ref();
        let shell_template = step
            .shell
            .as_deref()
            .or_else(|| defaults.and_then(|d| d.shell.as_deref()));
        let shell_value = match shell_template {
            Some(t) => Some(
                expr::render_str(t, &scope).map_err(|e| format!("step `{name}`: shell: {e}"))?,
            ),
            None => None,
        };
        let shell =
            shell::resolve(shell_value.as_deref()).map_err(|e| format!("step `{name}`: {e}"))?;
        let wd_template = step
            .working_directory
            .as_deref()
            .or_else(|| defaults.and_then(|d| d.working_directory.as_deref()));
        let dir = match wd_template {
            Some(t) => {
                let wd = expr::render_str(t, &scope)
                    .map_err(|e| format!("step `{name}`: working-directory: {e}"))?;
                self.workspace.join(wd)
            }
            None => self.workspace.clone(),
        };
        let env_ctx = match frame.contexts.get("env") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), expr::to_display_string(v)))
                .collect(),
            _ => IndexMap::new(),
        };
        Ok((shell, dir, env_ctx))
    }

    /// Reads the step's `$GITHUB_OUTPUT`, `$GITHUB_ENV` and `$GITHUB_PATH`; applies env and
    /// path to later steps and returns the outputs.
    fn read_env_files(
        &mut self,
        output: &Path,
        env: &Path,
        path: &Path,
    ) -> Result<Map<String, Value>, String> {
        let read = |p: &Path| -> Result<String, String> {
            match std::fs::read(p) {
                Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                // A step may delete its file; that is the same as writing nothing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(format!("cannot read {}: {e}", p.display())),
            }
        };
        let env_text = read(env)?;
        for (k, v) in parse_env_file(&env_text).map_err(|e| format!("GITHUB_ENV: {e}"))? {
            self.env_from_files.insert(k, v);
        }
        let path_text = read(path)?;
        for dir in parse_path_file(&path_text) {
            self.path_additions.insert(0, dir);
        }
        let out_text = read(output)?;
        let outputs = parse_env_file(&out_text)
            .map_err(|e| format!("GITHUB_OUTPUT: {e}"))?
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        Ok(outputs)
    }

    /// `uses: ./path`: a composite action from the workspace.
    #[expect(
        clippy::too_many_arguments,
        reason = "the step's evaluated pieces, passed once"
    )]
    async fn run_composite(
        &mut self,
        frame: &mut Frame,
        name: &str,
        path: &str,
        with: &IndexMap<String, String>,
        step_env: &IndexMap<String, String>,
        log_index: u32,
        deadline: Instant,
        cancel: Option<&CancellationToken>,
    ) -> StepEnd {
        match self.load_action(frame, name, path, with) {
            Err(message) => {
                self.step_error(log_index, message).await;
                StepEnd::failure()
            }
            Ok((action, inputs)) => {
                let mut contexts = frame.contexts.clone();
                contexts.insert("inputs".into(), Value::Object(inputs));
                contexts.insert("steps".into(), Value::Object(Map::new()));
                let mut above = frame.above_files.clone();
                above.extend(step_env.iter().map(|(k, v)| (k.clone(), v.clone())));
                let mut inner = Frame {
                    contexts,
                    below_files: frame.below_files.clone(),
                    above_files: above,
                    defaults: None,
                    failed: false,
                    timed_out: false,
                    depth: frame.depth + 1,
                };
                for step in &action.steps {
                    self.run_step(&mut inner, step, log_index, None, deadline)
                        .await;
                }
                let mut outputs = Map::new();
                for (k, template) in &action.outputs {
                    let rendered = expr::render_str(template, &self.scope(&inner));
                    match rendered {
                        Ok(v) => {
                            outputs.insert(k.clone(), Value::String(v));
                        }
                        Err(e) => {
                            self.step_error(
                                log_index,
                                format!("step `{name}`: output `{k}` of action `./{path}`: {e}"),
                            )
                            .await;
                            inner.failed = true;
                        }
                    }
                }
                let status = if inner.timed_out {
                    StepStatus::TimedOut
                } else if inner.failed {
                    StepStatus::Failure
                } else if self.cancel.is_cancelled() && cancel.is_some() {
                    StepStatus::Cancelled
                } else {
                    StepStatus::Success
                };
                StepEnd { status, outputs }
            }
        }
    }

    /// Reads and parses `./path/action.yml` and computes its `inputs` context.
    fn load_action(
        &self,
        frame: &Frame,
        name: &str,
        path: &str,
        with: &IndexMap<String, String>,
    ) -> Result<(kiln_core::workflow::Action, Map<String, Value>), String> {
        if frame.depth >= MAX_ACTION_DEPTH {
            return Err(format!(
                "step `{name}`: action `./{path}`: composite actions nested more than {MAX_ACTION_DEPTH} deep"
            ));
        }
        let dir = self.workspace.join(path);
        let mut found = None;
        for file in ["action.yml", "action.yaml"] {
            match std::fs::read_to_string(dir.join(file)) {
                Ok(text) => {
                    found = Some((file, text));
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "step `{name}`: cannot read {}: {e}",
                        dir.join(file).display()
                    ));
                }
            }
        }
        let Some((file, text)) = found else {
            return Err(format!(
                "step `{name}`: local action `./{path}` not found: no action.yml or action.yaml in {}",
                dir.display()
            ));
        };
        let display = format!("{}/{file}", path.trim_end_matches('/'));
        let action = kiln_core::workflow::parse_action(&display, &text)
            .map_err(|d| format!("step `{name}`: action `./{path}` is invalid: {d}"))?;

        let scope = self.scope(frame);
        let mut inputs = Map::new();
        for (k, template) in with {
            let v = expr::render_str(template, &scope)
                .map_err(|e| format!("step `{name}`: with `{k}`: {e}"))?;
            inputs.insert(k.clone(), Value::String(v));
        }
        for (k, default) in &action.inputs {
            if inputs.contains_key(k) {
                continue;
            }
            let v = match default {
                Some(t) => expr::render_str(t, &scope).map_err(|e| {
                    format!("step `{name}`: default of input `{k}` of action `./{path}`: {e}")
                })?,
                None => String::new(),
            };
            inputs.insert(k.clone(), Value::String(v));
        }
        Ok((action, inputs))
    }
}

/// Makes `path` an existing, empty file. A file left empty by the last job of a reused temp
/// folder is kept as it is: truncating it still costs a journal transaction.
fn empty_file(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if file.metadata()?.len() > 0 {
        file.set_len(0)?;
    }
    Ok(())
}

/// Writes `content` over the file at `path` in place, then cuts what is left of the old
/// content. Unlike truncating to zero and writing again, rewriting a small file's block
/// costs no allocation, no discard, and no forced write-back when it is closed (ext4 flushes
/// a file truncated to zero and rewritten, on close, to protect replace-by-truncate).
fn overwrite(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let old = file.metadata()?.len();
    file.write_all(content)?;
    if old > content.len() as u64 {
        file.set_len(content.len() as u64)?;
    }
    Ok(())
}

/// Whether `name` is a file kiln-exec makes in a job's temp folder (`step3.sh`,
/// `step3_output`, …): a reused temp folder may keep these for the next job of the same
/// run, which empties or overwrites each before its step uses it.
pub fn is_step_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("step") else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let tail = &rest[digits..];
    matches!(tail, "_output" | "_env" | "_path" | "_summary")
        || (tail.starts_with('.') && tail.len() > 1 && !tail[1..].contains(['/', '.']))
}

/// A built-in action's `with:` names only inputs it takes.
fn known_inputs(
    step: &str,
    action: &str,
    with: &IndexMap<String, String>,
    known: &[&str],
) -> Result<(), String> {
    match with.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(format!("step `{step}`: {action} takes no input `{key}`")),
        None => Ok(()),
    }
}

/// Artifacts: `jobs.<id>.artifacts`, `actions/upload-artifact`, `actions/download-artifact`.
impl Runner<'_> {
    /// Renders a `with:` against the frame.
    fn render_with(
        &self,
        frame: &Frame,
        name: &str,
        with: &IndexMap<String, String>,
    ) -> Result<IndexMap<String, String>, String> {
        let scope = self.scope(frame);
        with.iter()
            .map(|(k, v)| {
                expr::render_str(v, &scope)
                    .map(|r| (k.clone(), r))
                    .map_err(|e| format!("step `{name}`: with.{k}: {e}"))
            })
            .collect()
    }

    /// How a built-in action's step ends: its outputs, or its error in the step's log.
    async fn builtin_end(
        &mut self,
        result: Result<Map<String, Value>, String>,
        log_index: u32,
    ) -> StepEnd {
        match result {
            Ok(outputs) => StepEnd {
                status: StepStatus::Success,
                outputs,
            },
            Err(message) => {
                self.step_error(log_index, message).await;
                StepEnd::failure()
            }
        }
    }

    fn host(&self) -> Result<std::sync::Arc<dyn ArtifactHost>, String> {
        self.artifacts
            .clone()
            .ok_or_else(|| "artifacts are not kept where this job runs".to_owned())
    }

    /// Finds, packs and uploads one artifact; a line for the log, or `None` when nothing
    /// matched and `if_no_files` let that pass. The artifact's id and digest as outputs.
    async fn keep_artifact(
        &mut self,
        spec: &kiln_core::workflow::ArtifactSpec,
        meta: kiln_proto::ArtifactMeta,
        log_index: u32,
    ) -> Result<Map<String, Value>, String> {
        use kiln_core::workflow::IfNoFiles;
        let host = self.host()?;
        let name = spec.name.as_str();
        let packed = artifacts::pack(&self.hasher, name, &spec.paths, &self.temp_dir)?;
        let Some(packed) = packed else {
            let message = format!(
                "artifact `{name}`: no files match {}",
                spec.paths
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return match spec.if_no_files_found {
                IfNoFiles::Error => Err(message),
                IfNoFiles::Warn => {
                    let mut sink = LogSink::new(log_index, self.events, &mut self.masker);
                    sink.line(&format!("Warning: {message}; nothing was uploaded"))
                        .await;
                    Ok(Map::new())
                }
                IfNoFiles::Ignore => Ok(Map::new()),
            };
        };
        let mut meta = meta;
        if let Some(from_file) = artifacts::read_metadata_file(&self.meta_file)?.remove(name) {
            meta.merge(from_file);
        }
        artifacts::check_meta(name, &meta)?;
        let upload = kiln_proto::artifacts::ArtifactUpload {
            name: name.to_owned(),
            file_name: packed.file_name.clone(),
            format: packed.format,
            sha256: String::new(),
            size: 0,
            metadata: meta,
        };
        let id = host
            .upload(&packed.blob, &upload)
            .await
            .map_err(|e| format!("artifact `{name}`: {e}"))?;
        if packed.format == kiln_proto::ArtifactFormat::Tar {
            let _ = std::fs::remove_file(&packed.blob);
        }
        let mut sink = LogSink::new(log_index, self.events, &mut self.masker);
        sink.line(&format!(
            "Kept artifact `{name}` ({} file{}, as {}): {id}",
            packed.files,
            if packed.files == 1 { "" } else { "s" },
            packed.file_name
        ))
        .await;
        let mut outputs = Map::new();
        outputs.insert("artifact-id".into(), Value::String(id));
        Ok(outputs)
    }

    /// The job's `artifacts:`, as a step of its own after the last one.
    async fn upload_job_artifacts(
        &mut self,
        frame: &mut Frame,
        specs: &[kiln_core::workflow::ArtifactSpec],
        index: u32,
    ) {
        let name = "Upload artifacts";
        let started = jiff::Timestamp::now();
        self.send(ExecEvent::StepStarted {
            index,
            name: name.to_owned(),
        })
        .await;
        let mut status = StepStatus::Success;
        for spec in specs {
            let rendered = (|| {
                let scope = self.scope(frame);
                let mut render = |t: &str| expr::render_str(t, &scope).map_err(|e| e.to_string());
                let name = render(&spec.name).map_err(|e| format!("artifact name: {e}"))?;
                let paths = spec
                    .paths
                    .iter()
                    .map(|p| render(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("artifact `{name}`: path: {e}"))?;
                let meta = artifacts::render_meta(&name, &spec.metadata, &mut render)?;
                Ok::<_, String>((
                    kiln_core::workflow::ArtifactSpec {
                        name,
                        paths,
                        ..spec.clone()
                    },
                    meta,
                ))
            })();
            let result = match rendered {
                Ok((spec, meta)) => self.keep_artifact(&spec, meta, index).await,
                Err(e) => Err(e),
            };
            if let Err(message) = result {
                self.step_error(index, message).await;
                status = StepStatus::Failure;
                frame.failed = true;
                break;
            }
        }
        self.send(ExecEvent::StepFinished {
            step: kiln_proto::Step {
                index,
                name: name.to_owned(),
                status,
                outputs: Map::new(),
                started_at: Some(started),
                finished_at: Some(jiff::Timestamp::now()),
            },
        })
        .await;
    }

    /// `actions/upload-artifact`: `name` (default `artifact`), `path`, `if-no-files-found`
    /// (default `warn`); `retention-days`, `compression-level` and `overwrite` are accepted
    /// and have no effect (kiln keeps artifacts until retention prunes the run, stores them
    /// uncompressed, and a job's re-upload under its own name replaces it).
    async fn upload_step(
        &mut self,
        frame: &mut Frame,
        name: &str,
        with: &IndexMap<String, String>,
        log_index: u32,
    ) -> StepEnd {
        let result = async {
            let with = self.render_with(frame, name, with)?;
            known_inputs(
                name,
                "upload-artifact",
                &with,
                &[
                    "name",
                    "path",
                    "if-no-files-found",
                    "retention-days",
                    "compression-level",
                    "overwrite",
                    "include-hidden-files",
                ],
            )?;
            let paths: Vec<String> = with
                .get("path")
                .map(|p| {
                    p.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if paths.is_empty() {
                return Err(format!(
                    "step `{name}`: upload-artifact needs `with.path` (the files to keep)"
                ));
            }
            let if_no_files_found = match with.get("if-no-files-found").map(String::as_str) {
                None | Some("") => kiln_core::workflow::IfNoFiles::Warn,
                Some(v) => kiln_core::workflow::IfNoFiles::parse(v).ok_or_else(|| {
                    format!(
                        "step `{name}`: with.if-no-files-found is `error`, `warn` or `ignore`, not `{v}`"
                    )
                })?,
            };
            let spec = kiln_core::workflow::ArtifactSpec {
                name: with
                    .get("name")
                    .filter(|n| !n.trim().is_empty())
                    .cloned()
                    .unwrap_or_else(|| "artifact".to_owned()),
                paths,
                metadata: Map::new(),
                if_no_files_found,
                pos: kiln_core::workflow::Pos::default(),
            };
            self.keep_artifact(&spec, kiln_proto::ArtifactMeta::default(), log_index)
                .await
        }
        .await;
        self.builtin_end(result, log_index).await
    }

    /// `actions/download-artifact`: `name` (one artifact into `path`), or every artifact of
    /// the run (filtered by the glob `pattern`) each into `path/<name>/`, or all into `path`
    /// with `merge-multiple: true`. `path` defaults to the workspace. Output: `download-path`.
    async fn download_step(
        &mut self,
        frame: &mut Frame,
        name: &str,
        with: &IndexMap<String, String>,
        log_index: u32,
    ) -> StepEnd {
        let result = async {
            let with = self.render_with(frame, name, with)?;
            known_inputs(
                name,
                "download-artifact",
                &with,
                &[
                    "name",
                    "path",
                    "pattern",
                    "merge-multiple",
                    "run-id",
                    "github-token",
                    "repository",
                    "artifact-ids",
                ],
            )?;
            if with.get("run-id").is_some_and(|v| !v.is_empty()) {
                return Err(format!(
                    "step `{name}`: download-artifact reads only this run's artifacts here (`run-id` is not supported)"
                ));
            }
            let host = self.host()?;
            let dest = match with.get("path").map(|p| p.trim()).filter(|p| !p.is_empty()) {
                Some(p) => {
                    let p = Path::new(p);
                    if p.is_absolute() {
                        p.to_path_buf()
                    } else {
                        self.workspace.join(p)
                    }
                }
                None => self.workspace.clone(),
            };
            let all = host.list().await.map_err(|e| format!("step `{name}`: {e}"))?;
            let wanted = with.get("name").filter(|n| !n.is_empty());
            let merge = with.get("merge-multiple").is_some_and(|v| v == "true");
            let mut chosen = Vec::new();
            for a in all {
                let keep = match (wanted, with.get("pattern").filter(|p| !p.is_empty())) {
                    (Some(n), _) => a.name == *n,
                    (None, Some(pattern)) => artifacts::name_matches(pattern, &a.name)?,
                    (None, None) => true,
                };
                if keep {
                    chosen.push(a);
                }
            }
            if let Some(n) = wanted
                && chosen.is_empty()
            {
                return Err(format!(
                    "step `{name}`: this run has no artifact named `{n}` (yet: the job that keeps it must be in this job's `needs`)"
                ));
            }
            let mut lines = Vec::new();
            for a in &chosen {
                let into = if wanted.is_some() || merge {
                    dest.clone()
                } else {
                    dest.join(&a.name)
                };
                self.counter += 1;
                let fetched = self.temp_dir.join(format!("download{}", self.counter));
                host.fetch(a, &fetched)
                    .await
                    .map_err(|e| format!("step `{name}`: artifact `{}`: {e}", a.name))?;
                let placed = artifacts::place(a, &fetched, &into);
                let _ = std::fs::remove_file(&fetched);
                placed.map_err(|e| format!("step `{name}`: {e}"))?;
                lines.push(format!(
                    "Downloaded artifact `{}` ({} bytes) into {}",
                    a.name,
                    a.size,
                    into.display()
                ));
            }
            if chosen.is_empty() {
                lines.push("This run has no artifacts to download yet".to_owned());
            }
            let mut sink = LogSink::new(log_index, self.events, &mut self.masker);
            for line in lines {
                sink.line(&line).await;
            }
            let mut outputs = Map::new();
            outputs.insert(
                "download-path".into(),
                Value::String(dest.to_string_lossy().into_owned()),
            );
            Ok(outputs)
        }
        .await;
        self.builtin_end(result, log_index).await
    }
}

#[cfg(test)]
mod temp_file_tests {
    use super::*;

    #[test]
    fn step_files_are_recognised() {
        for name in [
            "step1.sh",
            "step12_output",
            "step3_env",
            "step4_path",
            "step5_summary",
            "step2.py",
        ] {
            assert!(is_step_file(name), "{name}");
        }
        for name in [
            "step",
            "stepx.sh",
            "step1",
            "step1_other",
            "mine",
            "step1.",
            "step1.a.b",
            "xstep1.sh",
        ] {
            assert!(!is_step_file(name), "{name}");
        }
    }

    #[test]
    fn overwrite_cuts_a_longer_old_content_and_empty_file_empties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step1.sh");
        overwrite(&path, b"a long first script\n").unwrap();
        overwrite(&path, b"short\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"short\n");
        overwrite(&path, b"a longer script again\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a longer script again\n");
        let out = dir.path().join("step1_output");
        std::fs::write(&out, "x=1\n").unwrap();
        empty_file(&out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"");
        let fresh = dir.path().join("step2_env");
        empty_file(&fresh).unwrap();
        assert!(fresh.is_file());
    }
}
