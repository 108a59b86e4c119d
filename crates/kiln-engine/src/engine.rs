//! The engine as a server runs it: one long-lived dispatcher driving every run it is given,
//! recovered from the store at start-up, and a cheap handle ([`Engine`]) to talk to it.
//!
//! Start-up follows DESIGN.md "Leases": the leases this server's previous local pool held
//! (same owner id, kept in the data dir) are taken back at once — their jobs go back to the
//! queue with `attempts` + 1, or fail when their attempts are spent — and every run that was
//! queued or running is driven on from its stored jobs. Other owners' leases are never
//! touched here.
//!
//! A run's files come from its project: a local folder as it is now, or a git project's
//! mirror (kept under `<data dir>/repos/<project id>.git`) checked out at the run's commit.
//!
//! Not here: HTTP (kiln-server), the scheduling itself (`dispatch`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId, RunStatus};
use kiln_core::plan;
use kiln_core::workflow::{Diagnostics, Workflow};
use kiln_proto::{Project, Run};
use kiln_store::ArtifactStore;
use kiln_store::{LeaseScope, Op, Store};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::EngineError;
use crate::contexts::{Trigger, resolve_inputs};
use crate::dispatch::{self, Command, DispatchConfig, NewSpec, RunOutcome, RunSpec};
use crate::packages::WorkflowPackages;
use crate::project::{Snapshot, load_project, snapshot};
use crate::source::GitRepo;

/// How often a remote worker's waiting claim looks at the shared queue again: other
/// replicas' offers wake nobody here.
const OFFER_POLL: Duration = Duration::from_millis(250);

/// How the server's engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Jobs running at once on the local pool.
    pub slots: usize,
    /// The data dir: job folders go under `work/`, git checkouts under `checkouts/`, the
    /// engine's owner id in `engine-id`.
    pub data_dir: PathBuf,
    /// Executions a job may have before an expired lease fails it.
    pub max_attempts: i64,
    /// What confines `packages:` jobs' builds (detected once by the caller).
    pub sandbox: crate::packages::Sandbox,
    /// How their sandboxed `fetch` phases reach the network (`None`: the host's network).
    pub fetch_egress: Option<crate::packages::FetchEgress>,
    /// How long a lease lasts unless renewed ([`crate::dispatch::LEASE_TTL`] by default): how
    /// soon the job of a vanished remote worker goes back to the queue.
    pub lease_ttl: Duration,
    /// Where jobs' artifacts are kept (`--artifacts`); `None`: `<data dir>/artifacts`.
    pub artifacts: Option<kiln_store::ArtifactStore>,
}

/// What starts runs: a project, which of its workflows, and the event.
#[derive(Clone, Debug, Default)]
pub struct TriggerRequest {
    pub project: ProjectId,
    /// A workflow's file name, stem, path or `name:`; `None`: every workflow the event
    /// triggers.
    pub workflow: Option<String>,
    /// `workflow_dispatch`, `push`, …
    pub event: String,
    /// A branch, tag or commit (git projects; default: the default branch).
    pub git_ref: Option<String>,
    /// `github.event`; made up from the trigger when absent (and `payload_text` too).
    pub payload: Option<Value>,
    /// `payload`'s own JSON text, when the caller has it: spares serialising a payload of
    /// kilobytes again. Must hold the same JSON as `payload`. Alone, it is the payload
    /// (a GitHub webhook's body), parsed only when a job's fields read `github`.
    pub payload_text: Option<kiln_store::PayloadText>,
    pub inputs: IndexMap<String, String>,
}

/// What an event names beyond a [`TriggerRequest`] (webhooks: [`Engine::trigger_at`]).
#[derive(Clone, Debug, Default)]
pub struct EventTarget {
    /// The commit to run (git projects, with `TriggerRequest::git_ref` naming the ref it is
    /// on): a webhook runs the commit its event names, not whatever the ref points at by
    /// now. Ignored for a folder project, which runs from the folder as it is.
    pub sha: Option<String>,
    /// Exactly these workflows (by file, as `Workflow::file`), whatever `workflow` and
    /// `event` would select: the webhook receiver has already matched their `on:` filters.
    pub workflows: Option<Vec<String>>,
    /// `github` context fields laid over those made from the trigger (a webhook's `actor`,
    /// `head_ref`, `base_ref`, `ref`, …).
    pub github: Map<String, Value>,
}

/// A project's workflows read at one commit (or from its folder as it is), ready to start
/// runs from: [`Engine::prepare_at`] makes it, [`Engine::trigger_prepared`] uses it.
pub struct Prepared {
    project: Project,
    source: Source,
    local: crate::project::LocalProject,
    /// Per workflow (as in `local`), the one copy its runs share: a burst of webhook runs
    /// holds one parsed workflow, not one each.
    shared: Vec<std::sync::OnceLock<Arc<Workflow>>>,
}

impl Prepared {
    /// The shared copy of `wf`, one of [`Prepared::workflows`].
    fn shared(&self, wf: &Workflow) -> Arc<Workflow> {
        let index = self
            .local
            .workflows
            .iter()
            .position(|w| std::ptr::eq(w, wf));
        match index.and_then(|i| self.shared.get(i)) {
            Some(cell) => cell.get_or_init(|| Arc::new(wf.clone())).clone(),
            None => Arc::new(wf.clone()),
        }
    }

    /// The workflows, as parsed.
    pub fn workflows(&self) -> &[Workflow] {
        &self.local.workflows
    }

    /// The commit they were read at (a folder project's: see `project::snapshot`).
    pub fn sha(&self) -> &str {
        &self.source.sha
    }
}

/// A handle on the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: EngineConfig,
    owner: String,
    /// Where jobs' artifacts are kept.
    artifacts: ArtifactStore,
    commands: mpsc::UnboundedSender<Command>,
    /// Told when jobs become ready, for remote workers waiting for one.
    ready: Arc<tokio::sync::Notify>,
    task: Mutex<Option<tokio::task::JoinHandle<Result<RunOutcome, EngineError>>>>,
}

/// What the start-up recovery did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Leases of this server's previous pool taken back.
    pub expired_leases: usize,
    /// Runs driven on.
    pub resumed: Vec<RunId>,
    /// Runs that could not be driven on (their workflow is gone or broken): ended as failed.
    pub failed: Vec<RunId>,
}

impl Engine {
    /// Takes back this server's previous leases, starts the dispatcher and drives on every
    /// unfinished run.
    pub async fn start(
        store: Store,
        config: EngineConfig,
    ) -> Result<(Engine, Recovery), EngineError> {
        let owner = engine_owner(&config.data_dir)?;
        let expired = store.expire_leases(Timestamp::now(), Some(&owner)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let artifacts = match config.artifacts.clone() {
            Some(a) => a,
            None => ArtifactStore::open(None, &config.data_dir)?,
        };
        let dispatch_config = DispatchConfig {
            slots: config.slots,
            work_dir: config.data_dir.join("work"),
            owner: owner.clone(),
            max_attempts: config.max_attempts.max(1),
            lease_ttl: config.lease_ttl,
            artifacts: artifacts.clone(),
            // Replicas share PostgreSQL: remote workers claim from its queue through any.
            offer: store.is_shared(),
        };
        let ready = Arc::new(tokio::sync::Notify::new());
        let task = dispatch::spawn_long_lived(store.clone(), &dispatch_config, rx, ready.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                config,
                owner,
                artifacts,
                commands: tx,
                ready,
                task: Mutex::new(Some(task)),
            }),
        };
        let mut recovery = Recovery {
            expired_leases: expired.len(),
            ..Recovery::default()
        };
        engine.recover(&mut recovery).await?;
        Ok((engine, recovery))
    }

    /// Every `every`, takes back leases that expired — whoever held them: a `kiln run` that
    /// was killed, a worker that vanished — and drives their runs on here (DESIGN.md
    /// "Leases": recovery happens only through lease expiry). Runs this engine drives
    /// already are left as they are. Stops when the engine shuts down.
    pub fn adopt_expired_every(&self, every: Duration) {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if engine.inner.commands.is_closed() {
                    break;
                }
                if let Err(e) = engine.adopt_expired().await {
                    tracing::warn!(error = %e, "cannot take back expired leases");
                }
            }
        });
    }

    async fn adopt_expired(&self) -> Result<(), EngineError> {
        let store = &self.inner.store;
        let me = self.inner.owner.as_str();
        // Workers silent for longer than a lease are announced offline (once, whichever
        // replica notices first).
        store
            .mark_offline_workers(Timestamp::now() - self.inner.config.lease_ttl)
            .await?;
        // Leases of runs driven here, or that nobody drives any more: another replica's runs
        // are that replica's to handle.
        let expired = store
            .expire_leases_of(Timestamp::now(), LeaseScope::ExpiredDrivenBy(me))
            .await?;
        if !expired.is_empty() {
            // Remote workers' jobs of runs driven here go back to this dispatcher's queue.
            self.ask(|reply| Command::Expired {
                expired: expired.clone(),
                reply,
            })
            .await?;
        }
        // Runs whose driver stopped renewing (a replica died, a `kiln run` was killed) are
        // taken over and driven on here.
        let driving = self.ask(|reply| Command::Driving { reply }).await?;
        let now = Timestamp::now();
        let claimed = store
            .claim_runs(me, now + self.inner.config.lease_ttl, now)
            .await?;
        for id in claimed.into_iter().filter(|id| !driving.contains(id)) {
            let Some(run) = store.get_run(id).await? else {
                continue;
            };
            if run.status.is_terminal() {
                continue;
            }
            tracing::info!(run = %id, "driving on a run nobody drives any more");
            if let Err(e) = self.resume(run.clone()).await {
                tracing::warn!(run = %id, error = %e, "cannot drive an adopted run on");
                self.fail_run(&run).await?;
            }
        }
        Ok(())
    }

    /// Where jobs' artifacts are kept (the API serves them from here).
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.inner.artifacts
    }

    /// How long a lease lasts unless renewed.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.config.lease_ttl
    }

    /// The lease owner id of this engine's local pool (stable across restarts of one data
    /// dir).
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Whether the engine has shut down (background tasks such as the schedule runner stop
    /// then).
    pub fn is_stopped(&self) -> bool {
        self.inner.commands.is_closed()
    }

    /// Creates the runs `req` asks for (one per selected workflow) and queues them. Invalid
    /// workflows, unknown workflows and bad inputs are refused before anything is stored.
    pub async fn trigger(&self, req: TriggerRequest) -> Result<Vec<Run>, EngineError> {
        self.trigger_at(req, EventTarget::default()).await
    }

    /// [`Engine::trigger`] at the commit, of the workflows and with the `github` fields
    /// `target` names.
    pub async fn trigger_at(
        &self,
        req: TriggerRequest,
        target: EventTarget,
    ) -> Result<Vec<Run>, EngineError> {
        let prepared = self
            .prepare_at(req.project, req.git_ref.as_deref(), target.sha.as_deref())
            .await?;
        let mut answers = self
            .trigger_prepared(&prepared, vec![(req, target)])
            .await?;
        answers.pop().expect("one answer for one request")
    }

    /// The workflows of `project` at `sha` on `git_ref` (git projects; default: the default
    /// branch's head), or in its folder as it is, for a caller that decides which of them an
    /// event starts (the webhook receiver); pass them to [`Engine::trigger`] as
    /// `TriggerRequest::workflows`. Also the commit they were read at.
    pub async fn workflows_at(
        &self,
        project: ProjectId,
        git_ref: Option<&str>,
        sha: Option<&str>,
    ) -> Result<(Vec<Workflow>, String), EngineError> {
        let prepared = self.prepare_at(project, git_ref, sha).await?;
        Ok((prepared.local.workflows, prepared.source.sha))
    }

    /// Reads `project`'s workflows at `sha` on `git_ref` (as [`Engine::workflows_at`]) once,
    /// for any number of runs to start from them with [`Engine::trigger_prepared`]: a burst of
    /// webhook deliveries for one commit checks out and parses the workflows once.
    pub async fn prepare_at(
        &self,
        project: ProjectId,
        git_ref: Option<&str>,
        sha: Option<&str>,
    ) -> Result<Prepared, EngineError> {
        let project = self
            .inner
            .store
            .get_project(project)
            .await?
            .ok_or_else(|| EngineError::Usage(format!("no project {project}")))?;
        let source = self.materialise(&project, git_ref, sha).await?;
        let local = load_project(&source.root)?;
        let shared = local
            .workflows
            .iter()
            .map(|_| std::sync::OnceLock::new())
            .collect();
        Ok(Prepared {
            project,
            source,
            local,
            shared,
        })
    }

    /// Starts the runs each request asks for, from workflows read once by
    /// [`Engine::prepare_at`] (each request's `git_ref` and `target.sha` are those it was
    /// prepared at), and creates all of them in one store transaction. One answer per
    /// request, in order; `Err` only when nothing could be asked of the engine.
    pub async fn trigger_prepared(
        &self,
        prepared: &Prepared,
        requests: Vec<(TriggerRequest, EventTarget)>,
    ) -> Result<Vec<Result<Vec<Run>, EngineError>>, EngineError> {
        let mut answers: Vec<Result<Vec<Run>, EngineError>> = Vec::with_capacity(requests.len());
        // For each request, how many of the specs below are its runs.
        let mut counts = Vec::with_capacity(requests.len());
        let mut specs = Vec::new();
        for (req, target) in requests {
            match self.run_specs(prepared, req, target) {
                Ok(mine) => {
                    counts.push(Some(mine.len()));
                    specs.extend(mine);
                    answers.push(Ok(Vec::new()));
                }
                Err(e) => {
                    counts.push(None);
                    answers.push(Err(e));
                }
            }
        }
        // Package trees are planned per workflow (once, shared by the runs of one request set).
        let mut planned: HashMap<String, WorkflowPackages> = HashMap::new();
        let mut unplannable: HashMap<String, String> = HashMap::new();
        for (spec, _) in &specs {
            let wf = &spec.workflow;
            if !wf.jobs.values().any(|j| j.packages.is_some())
                || planned.contains_key(&wf.file)
                || unplannable.contains_key(&wf.file)
            {
                continue;
            }
            match crate::packages::plan_workflow(
                &self.inner.store,
                wf,
                &spec.snapshot.root,
                &self.inner.config.data_dir,
                &self.inner.config.sandbox,
                self.inner.config.fetch_egress.as_ref(),
            )
            .await
            {
                Ok(p) => {
                    planned.insert(wf.file.clone(), p);
                }
                Err(e) => {
                    unplannable.insert(wf.file.clone(), EngineError::from(e).to_string());
                }
            }
        }
        for (spec, _) in &mut specs {
            if let Some(p) = planned.get(&spec.workflow.file) {
                spec.packages = p.clone();
            }
        }
        if !unplannable.is_empty() {
            // A request whose workflow's tree cannot be planned gets that error; the others go on.
            let mut kept = Vec::with_capacity(specs.len());
            let mut index = 0;
            for (answer, count) in answers.iter_mut().zip(counts.iter_mut()) {
                let Some(n) = *count else { continue };
                let mine: Vec<NewSpec> = specs[index..index + n].to_vec();
                index += n;
                if let Some(msg) = mine
                    .iter()
                    .find_map(|(s, _)| unplannable.get(&s.workflow.file))
                {
                    *answer = Err(EngineError::Usage(msg.clone()));
                    *count = None;
                } else {
                    kept.extend(mine);
                }
            }
            specs = kept;
        }
        let mut created = if specs.is_empty() {
            Vec::new()
        } else {
            self.ask(|reply| Command::Submit { specs, reply }).await?
        }
        .into_iter();
        for (answer, count) in answers.iter_mut().zip(counts) {
            let Some(count) = count else { continue };
            let mut runs = Vec::with_capacity(count);
            let mut failed = None;
            for created in created.by_ref().take(count) {
                match created {
                    Ok(run) => runs.push(run),
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            *answer = match failed {
                Some(e) => Err(e),
                None => Ok(runs),
            };
        }
        Ok(answers)
    }

    /// The runs (spec and inputs) one request asks for, checked before anything is stored.
    fn run_specs(
        &self,
        prepared: &Prepared,
        req: TriggerRequest,
        target: EventTarget,
    ) -> Result<Vec<NewSpec>, EngineError> {
        let Prepared {
            project,
            source,
            local,
            ..
        } = prepared;
        let selected = match &target.workflows {
            Some(files) => local
                .workflows
                .iter()
                .filter(|wf| files.contains(&wf.file))
                .collect(),
            None => local.select(req.workflow.as_deref(), &req.event)?,
        };
        if selected.is_empty() {
            return Err(EngineError::Usage(format!(
                "no workflow of project {} runs on `{}`",
                project.name, req.event
            )));
        }
        let mut problems = Vec::new();
        let mut prepared_wfs = Vec::new();
        for wf in selected {
            problems.extend(plan::check_runnable(wf));
            let inputs = resolve_inputs(wf, &req.inputs).map_err(EngineError::Usage)?;
            prepared_wfs.push((prepared.shared(wf), inputs));
        }
        if !problems.is_empty() {
            return Err(EngineError::Invalid(Diagnostics(problems)));
        }
        let trigger = Trigger {
            event: req.event,
            payload: req.payload,
            payload_text: req.payload_text,
            inputs: req.inputs,
            git_ref: source.git_ref.clone(),
            sha: source.sha.clone(),
            repository: repository_name(project),
        };
        // The trigger (with the event's whole payload) is copied for every workflow but the
        // last, which takes it.
        let mut trigger = Some(trigger);
        let mut github = Some(target.github);
        let last = prepared_wfs.len() - 1;
        Ok(prepared_wfs
            .into_iter()
            .enumerate()
            .map(|(i, (wf, inputs))| {
                let (trigger, github) = if i == last {
                    (trigger.take(), github.take())
                } else {
                    (trigger.clone(), github.clone())
                };
                let spec = RunSpec {
                    project: project.id,
                    workflow: wf,
                    trigger: trigger.expect("taken by the last workflow only"),
                    secrets: Arc::new(IndexMap::new()),
                    snapshot: source.snapshot.clone(),
                    github: github.expect("taken by the last workflow only"),
                    packages: Arc::default(),
                };
                (spec, inputs)
            })
            .collect())
    }

    /// Cancels a run's jobs (running ones are stopped and recorded as cancelled). Whether
    /// this engine was driving the run.
    pub async fn cancel(&self, run: RunId) -> Result<bool, EngineError> {
        self.ask(|reply| Command::Cancel { run, reply }).await
    }

    /// Re-runs a failed or cancelled run's failed jobs (and the jobs they held back) as the
    /// run's next attempt; its successful jobs keep their outputs. `Ok(Err(status))`: the run
    /// is `status` and cannot be retried (still active, or it succeeded).
    pub async fn retry(&self, run: RunId) -> Result<Result<Run, RunStatus>, EngineError> {
        let store = &self.inner.store;
        let driver = kiln_store::Driver {
            owner: self.inner.owner.clone(),
            until: Timestamp::now() + self.inner.config.lease_ttl,
        };
        if let Err(status) = store
            .retry_run(run, Timestamp::now(), Some(&driver))
            .await?
        {
            return Ok(Err(status));
        }
        let stored = store
            .get_run(run)
            .await?
            .ok_or_else(|| EngineError::Usage(format!("no run {run}")))?;
        if let Err(e) = self.resume(stored.clone()).await {
            self.fail_run(&stored).await?;
            return Err(e);
        }
        let now = store.get_run(run).await?.unwrap_or(stored);
        Ok(Ok(now))
    }

    /// Stops: nothing new starts, leased jobs that did not start go back to the queue,
    /// running jobs get `grace` to finish and are then cancelled and recorded. Returns when
    /// everything is committed.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Shutdown { grace, reply }).is_ok() {
            let _ = answer.await;
        }
        if let Some(task) = self.inner.task.lock().await.take() {
            match task.await {
                Ok(result) => {
                    result?;
                }
                Err(e) => tracing::error!(error = %e, "the dispatcher task failed"),
            }
        }
        // The runs it drove are another replica's to take over now, not after its claim on
        // them runs out. (A restart of this server takes them back the same way.)
        if let Err(e) = self.inner.store.release_runs(&self.inner.owner).await {
            tracing::warn!(error = %e, "cannot hand the runs this engine drove over");
        }
        Ok(())
    }

    /// Leases to the remote worker `owner` up to `max` ready jobs whose every label it has,
    /// waiting up to `wait` for one when none is ready — or until `stop` (the server is
    /// shutting down, and a waiting request must not hold it up).
    ///
    /// On PostgreSQL the jobs come from the shared queue (`FOR UPDATE SKIP LOCKED`), offered
    /// by whichever replica drives their run: the jobs of runs driven here come described,
    /// the others as hand-offs naming the replica to ask for the details (and to report to).
    /// On SQLite, from this dispatcher's ready queue, highest priority first.
    pub async fn claim_remote(
        &self,
        owner: &str,
        labels: &[String],
        max: usize,
        wait: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<kiln_proto::workers::Claimed, EngineError> {
        let deadline = tokio::time::Instant::now() + wait;
        let offered = self.inner.store.is_shared();
        loop {
            // Listening before asking: a job made ready meanwhile still wakes us.
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut gave_back = false;
            let claimed = if offered {
                let (claimed, given) = self.claim_offered(owner, labels, max).await?;
                gave_back = given;
                claimed
            } else {
                let jobs = self
                    .ask(|reply| Command::Claim {
                        owner: owner.to_owned(),
                        labels: labels.to_vec(),
                        max,
                        reply,
                    })
                    .await??;
                kiln_proto::workers::Claimed {
                    jobs,
                    handoffs: Vec::new(),
                }
            };
            let none = claimed.jobs.is_empty() && claimed.handoffs.is_empty();
            if !none || tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
                return Ok(claimed);
            }
            // Other replicas' offers wake nobody here: look again now and then. Jobs just
            // given back (their driver cannot have them now) wake every claim again as they
            // are queued: wait the poll out rather than take them straight back.
            let poll = tokio::time::Instant::now() + OFFER_POLL;
            tokio::select! {
                () = &mut notified, if !gave_back => {}
                () = tokio::time::sleep_until(deadline.min(poll)), if offered => {}
                () = tokio::time::sleep_until(deadline), if !offered => {}
                () = stop.cancelled() => {}
            }
        }
    }

    /// Wakes the remote workers' claims waiting here to look at the shared queue again (a
    /// job was offered, perhaps by another replica).
    pub fn wake_claims(&self) {
        self.inner.ready.notify_waiters();
    }

    /// One claim from the shared queue (see [`Engine::claim_remote`]).
    async fn claim_offered(
        &self,
        owner: &str,
        labels: &[String],
        max: usize,
    ) -> Result<(kiln_proto::workers::Claimed, bool), EngineError> {
        let store = &self.inner.store;
        let claimed = store
            .claim_jobs(&kiln_store::Claim {
                owner: owner.to_owned(),
                labels: Some(labels.to_vec()),
                limit: u32::try_from(max).unwrap_or(u32::MAX),
                ttl_ms: i64::try_from(self.inner.config.lease_ttl.as_millis()).unwrap_or(i64::MAX),
                at: Timestamp::now(),
                offered_only: true,
            })
            .await?;
        let mut out = kiln_proto::workers::Claimed::default();
        let mut gave_back = false;
        let mut claimed = claimed.into_iter();
        while let Some(c) = claimed.next() {
            let (job, token) = (c.job.id, c.token);
            match self.hand_out(owner, &c, &mut out).await {
                Ok(kept) => gave_back |= !kept,
                Err(e) => {
                    // The worker hears of none of these: give them back rather than let
                    // their leases run out (each would cost an attempt).
                    for rest in
                        std::iter::once((job, token)).chain(claimed.map(|c| (c.job.id, c.token)))
                    {
                        if let Err(e) = self.give_back(rest.0, rest.1).await {
                            tracing::warn!(job = %rest.0, error = %e, "cannot give a claimed job back");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok((out, gave_back))
    }

    /// One job claimed from the shared queue for `owner`, into `out`: described when this
    /// engine drives its run, else as a hand-off to its driver. `false`: given back (or
    /// ended) instead.
    async fn hand_out(
        &self,
        owner: &str,
        c: &kiln_store::Claimed,
        out: &mut kiln_proto::workers::Claimed,
    ) -> Result<bool, EngineError> {
        let (job, token) = (c.job.id, c.token);
        let server = match c.driver.as_deref() {
            Some(me) if me == self.inner.owner => {
                match self.adopt(owner, job, token).await? {
                    dispatch::Adoption::Assigned(assigned) => {
                        out.jobs.push(*assigned);
                        return Ok(true);
                    }
                    // (Not known here yet: a run this engine is taking over.)
                    dispatch::Adoption::Refused | dispatch::Adoption::NotDriven => {
                        self.give_back(job, token).await?;
                    }
                    dispatch::Adoption::Ended => self.end_cancelled(job, token).await?,
                }
                return Ok(false);
            }
            Some(driver) => self.inner.store.replica_url(driver).await?,
            None => None,
        };
        match server {
            Some(server) => {
                out.handoffs.push(kiln_proto::workers::Handoff {
                    job,
                    token,
                    attempt: c.job.attempts,
                    server,
                });
                Ok(true)
            }
            // A driver that never said where it answers: nobody could report to it.
            None => {
                self.give_back(job, token).await?;
                Ok(false)
            }
        }
    }

    /// Ends a job taken from the shared queue after its run was cancelled here.
    async fn end_cancelled(&self, job: JobId, token: i64) -> Result<(), EngineError> {
        self.inner
            .store
            .commit(vec![Op::CompleteJob {
                job,
                token,
                status: JobStatus::Cancelled,
                outputs: Map::new(),
                at: Timestamp::now(),
            }])
            .await?;
        Ok(())
    }

    /// Hands a lease taken from the shared queue back (it does not count as an attempt).
    async fn give_back(&self, job: JobId, token: i64) -> Result<(), EngineError> {
        self.inner
            .store
            .commit(vec![Op::ReleaseLease { job, token }])
            .await?;
        Ok(())
    }

    /// The remote worker `owner` gives back `job`, which it leased (`token`) from the shared
    /// queue and cannot run (it could not reach the replica driving it): queued again at
    /// once, the grant not counted as an attempt. `false`: it does not hold that lease, or
    /// the job has started.
    pub async fn release_remote(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
    ) -> Result<bool, EngineError> {
        let lease = self.inner.store.lease_of(job).await?;
        let held = lease.is_some_and(|l| {
            l.owner.as_deref() == Some(owner) && l.token == token && l.status == JobStatus::Leased
        });
        if !held {
            return Ok(false);
        }
        let done = self
            .inner
            .store
            .commit(vec![Op::ReleaseLease { job, token }])
            .await?;
        Ok(matches!(done.first(), Some(kiln_store::OpResult::Done)))
    }

    async fn adopt(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
    ) -> Result<dispatch::Adoption, EngineError> {
        self.ask(|reply| Command::Adopt {
            owner: owner.to_owned(),
            job,
            token,
            reply,
        })
        .await
    }

    /// The details of `job`, which the remote worker `owner` leased (`token`) from the shared
    /// queue through another replica, and which this engine drives; from now on the worker
    /// reports to this engine. `None`: the worker does not hold that lease, this engine does
    /// not drive the job's run, or it will not have the job run (the lease is then given
    /// back).
    pub async fn adopt_remote(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
    ) -> Result<Option<kiln_proto::workers::AssignedJob>, EngineError> {
        let lease = self.inner.store.lease_of(job).await?;
        let held = lease.is_some_and(|l| {
            l.owner.as_deref() == Some(owner)
                && l.token == token
                && matches!(l.status, JobStatus::Leased | JobStatus::Running)
        });
        if !held {
            return Ok(None);
        }
        Ok(match self.adopt(owner, job, token).await? {
            dispatch::Adoption::Assigned(assigned) => Some(*assigned),
            dispatch::Adoption::Refused => {
                self.give_back(job, token).await?;
                None
            }
            dispatch::Adoption::Ended => {
                self.end_cancelled(job, token).await?;
                None
            }
            dispatch::Adoption::NotDriven => None,
        })
    }

    /// Takes a remote worker's report on a job it holds; answers once it is committed.
    /// `Ok(Err(_))`: refused (the worker no longer holds the lease, or the report is wrong).
    pub async fn report_remote(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
        events: Vec<kiln_proto::workers::ReportEvent>,
    ) -> Result<Result<(), dispatch::ReportRefusal>, EngineError> {
        self.ask(|reply| Command::Report {
            owner: owner.to_owned(),
            job,
            token,
            events,
            reply,
        })
        .await?
    }

    /// A remote worker's heartbeat over the jobs it holds: renews their leases; answers the
    /// jobs to cancel and the jobs it no longer holds.
    pub async fn heartbeat_remote(
        &self,
        owner: &str,
        jobs: Vec<kiln_proto::workers::HeldJob>,
    ) -> Result<(Vec<JobId>, Vec<JobId>), EngineError> {
        self.ask(|reply| Command::Heartbeat {
            owner: owner.to_owned(),
            jobs,
            reply,
        })
        .await
    }

    /// The run of a job the remote worker `owner` holds under lease `token`; `None` when it
    /// does not hold it.
    pub async fn job_holder(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
    ) -> Result<Option<RunId>, EngineError> {
        self.ask(|reply| Command::Holds {
            owner: owner.to_owned(),
            job,
            token,
            reply,
        })
        .await
    }

    /// The project files of a job the remote worker `owner` holds (lease `token`), as a tar
    /// archive; `None` when it does not hold it.
    pub async fn job_source(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let Some(snapshot) = self
            .ask(|reply| Command::Source {
                owner: owner.to_owned(),
                job,
                token,
                reply,
            })
            .await?
        else {
            return Ok(None);
        };
        let root = snapshot.root.clone();
        let tar = tokio::task::spawn_blocking(move || snapshot.to_tar())
            .await
            .map_err(|e| EngineError::Usage(format!("failed to pack the project: {e}")))?
            .map_err(|source| EngineError::Io {
                action: "pack the project's files for a worker",
                path: root,
                source,
            })?;
        Ok(Some(tar))
    }

    /// Keeps a part of the package job `job` that the remote worker `owner` (lease `token`)
    /// uploaded into the file `file`: its packed output (unpacked with every check of a
    /// restore, then packed again as kiln packs outputs) or its build log. The caller checks
    /// the lease before receiving the file ([`Engine::job_holder`]); the dispatcher checks it
    /// again as it keeps the part.
    pub async fn package_part(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
        part: PackagePart,
        file: &Path,
    ) -> Result<PartAnswer, EngineError> {
        let store = &self.inner.store;
        let io = |action: &'static str| {
            let path = file.to_owned();
            move |source| EngineError::Io {
                action,
                path,
                source,
            }
        };
        let parts = match part {
            PackagePart::Output => {
                let dir = self
                    .inner
                    .config
                    .data_dir
                    .join("uploads")
                    .join(format!("output-{}", uuid::Uuid::now_v7()));
                let (archive, into) = (file.to_owned(), dir.clone());
                let unpacked = tokio::task::spawn_blocking(move || {
                    let mut f = std::fs::File::open(&archive)
                        .map_err(|e| format!("{}: {e}", archive.display()))?;
                    kiln_store::packages::unpack_output(&mut f, &into).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| EngineError::Usage(format!("failed to unpack an output: {e}")))?;
                let kept = match unpacked {
                    Ok(()) => store.store_package_output(&dir).await.map_err(|e| {
                        EngineError::Usage(format!("failed to keep a package output: {e}"))
                    }),
                    Err(e) => {
                        let _ = tokio::fs::remove_dir_all(&dir).await;
                        return Ok(PartAnswer::Invalid(e));
                    }
                };
                let _ = tokio::fs::remove_dir_all(&dir).await;
                dispatch::PackageParts {
                    token,
                    output: Some(kept?),
                    log: None,
                }
            }
            PackagePart::Log => {
                let size = tokio::fs::metadata(file)
                    .await
                    .map_err(io("read an uploaded log"))?
                    .len();
                if size > kiln_exec::package::MAX_LOG as u64 + 4096 {
                    return Ok(PartAnswer::Invalid(format!(
                        "a build's log is {size} bytes: more than a build keeps (64 MiB)"
                    )));
                }
                let bytes = tokio::fs::read(file)
                    .await
                    .map_err(io("read an uploaded log"))?;
                let tail = kiln_store::packages::log_tail(
                    &bytes,
                    crate::packages::TAIL_LINES,
                    crate::packages::TAIL_BYTES,
                );
                let blob = store.blobs().put_content(bytes).await?;
                dispatch::PackageParts {
                    token,
                    output: None,
                    log: Some((blob, tail)),
                }
            }
        };
        let blob = parts
            .output
            .as_ref()
            .or(parts.log.as_ref().map(|(blob, _)| blob));
        let kept = blob.map(|b| kiln_proto::workers::PackagePartKept {
            digest: b.digest.clone(),
            size: b.size,
        });
        let held = self
            .ask(|reply| Command::PackagePart {
                owner: owner.to_owned(),
                job,
                token,
                part: parts,
                reply,
            })
            .await?;
        Ok(match kept {
            Some(kept) if held => PartAnswer::Kept(kept),
            _ => PartAnswer::Lost,
        })
    }

    /// The packed output `digest` of a dependency of the package job `job`, which the remote
    /// worker `owner` holds (lease `token`), opened for streaming, with its size (the worker
    /// checks it against the digest). `Ok(Err(false))`: it does not hold the job;
    /// `Ok(Err(true))`: no dependency of the job has that output.
    pub async fn package_dep(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
        digest: &str,
    ) -> Result<Result<(tokio::fs::File, u64), bool>, EngineError> {
        let allowed = self
            .ask(|reply| Command::PackageDep {
                owner: owner.to_owned(),
                job,
                token,
                digest: digest.to_owned(),
                reply,
            })
            .await?;
        match allowed {
            None => Ok(Err(false)),
            Some(false) => Ok(Err(true)),
            Some(true) => Ok(Ok(self.inner.store.blobs().open_content(digest).await?)),
        }
    }

    /// Sends the dispatcher the command `make` builds around a reply channel; its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply))?;
        answer.await.map_err(|_| stopped())
    }

    fn send(&self, cmd: Command) -> Result<(), EngineError> {
        self.inner.commands.send(cmd).map_err(|_| stopped())
    }

    /// Drives on every run left queued or running.
    async fn recover(&self, recovery: &mut Recovery) -> Result<(), EngineError> {
        let store = &self.inner.store;
        // The runs this data dir's previous server drove, and the runs nobody drives: the
        // claim leaves runs another live replica drives, and runs with a job under a lease
        // (a remote worker may yet report; taken over once it expired and was taken back).
        let now = Timestamp::now();
        let ids = store
            .claim_runs(&self.inner.owner, now + self.inner.config.lease_ttl, now)
            .await?;
        // Oldest first (ids are time-ordered), so that their jobs keep their place.
        for id in ids {
            let Some(run) = store.get_run(id).await? else {
                continue;
            };
            match self.resume(run.clone()).await {
                Ok(()) => recovery.resumed.push(id),
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "cannot drive a recovered run on");
                    self.fail_run(&run).await?;
                    recovery.failed.push(id);
                }
            }
        }
        Ok(())
    }

    async fn resume(&self, run: Run) -> Result<(), EngineError> {
        let store = &self.inner.store;
        let project = store
            .get_project(run.project)
            .await?
            .ok_or_else(|| EngineError::Usage(format!("no project {}", run.project)))?;
        let source = self
            .materialise(&project, Some(&run.git_ref), Some(&run.sha))
            .await?;
        let local = load_project(&source.root)?;
        let wf: Workflow = local
            .workflows
            .iter()
            .find(|w| w.file == run.workflow)
            .cloned()
            .ok_or_else(|| {
                EngineError::Usage(format!(
                    "workflow {} is no longer in project {}",
                    run.workflow, project.name
                ))
            })?;
        let inputs: IndexMap<String, String> = run
            .inputs
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        let wf_arc = Arc::new(wf);
        // The event payload and `github` fields the run was started with.
        let context = store.run_context(run.id).await?.unwrap_or_default();
        let spec = RunSpec {
            project: project.id,
            trigger: Trigger {
                event: run.event.clone(),
                payload: context.payload.as_ref().map(|p| p.parse()),
                payload_text: context.payload,
                inputs,
                git_ref: run.git_ref.clone(),
                sha: run.sha.clone(),
                repository: repository_name(&project),
            },
            secrets: Arc::new(IndexMap::new()),
            packages: crate::packages::plan_workflow(
                store,
                &wf_arc,
                &source.snapshot.root,
                &self.inner.config.data_dir,
                &self.inner.config.sandbox,
                self.inner.config.fetch_egress.as_ref(),
            )
            .await?,
            workflow: wf_arc,
            snapshot: source.snapshot,
            github: context.github,
        };
        self.ask(|reply| Command::Resume {
            run: Box::new(run),
            spec: Box::new(spec),
            reply,
        })
        .await?
    }

    /// Ends a run that cannot be driven on: its unfinished jobs cancelled, the run failed.
    async fn fail_run(&self, run: &Run) -> Result<(), EngineError> {
        let at = Timestamp::now();
        let mut ops: Vec<Op> = run
            .jobs
            .iter()
            .filter(|j| {
                matches!(
                    j.status,
                    JobStatus::Pending | JobStatus::Queued | JobStatus::Waiting
                )
            })
            .map(|j| Op::SetJobStatus {
                job: j.id,
                status: JobStatus::Cancelled,
                at,
            })
            .collect();
        ops.push(Op::SetRunStatus {
            run: run.id,
            status: RunStatus::Failure,
            at,
        });
        self.inner.store.commit(ops).await?;
        Ok(())
    }

    /// The project's files at `git_ref` (or `sha`): a local folder as it is, or a checkout of
    /// a git project's mirror.
    async fn materialise(
        &self,
        project: &Project,
        git_ref: Option<&str>,
        sha: Option<&str>,
    ) -> Result<Source, EngineError> {
        let path = Path::new(&project.source);
        if path.is_absolute() {
            let root = path.to_path_buf();
            let exclude = vec![self.inner.config.data_dir.clone()];
            let (snap, revision) = tokio::task::spawn_blocking({
                let root = root.clone();
                move || snapshot(&root, &exclude)
            })
            .await
            .map_err(|e| EngineError::Usage(format!("failed to read the project: {e}")))??;
            return Ok(Source {
                root,
                snapshot: Arc::new(snap),
                git_ref: revision.git_ref,
                sha: revision.sha,
            });
        }
        let mirror = self
            .inner
            .config
            .data_dir
            .join("repos")
            .join(format!("{}.git", project.id));
        let repo = GitRepo::open(&mirror).await.map_err(|e| {
            EngineError::Usage(format!(
                "project {} has not been fetched yet: {e}",
                project.name
            ))
        })?;
        let (sha, git_ref) = match (sha, git_ref) {
            (Some(sha), Some(r)) => (sha.to_owned(), r.to_owned()),
            (_, Some(r)) => (resolve(&repo, r).await?, full_ref(r)),
            (_, None) => {
                let branch = repo
                    .default_branch()
                    .await
                    .map_err(source_error)?
                    .ok_or_else(|| {
                        EngineError::Usage(format!("project {} has no commits", project.name))
                    })?;
                (resolve(&repo, &branch).await?, full_ref(&branch))
            }
        };
        let root = self.inner.config.data_dir.join("checkouts").join(&sha);
        if !root.join(".git").exists() {
            let tmp = self
                .inner
                .config
                .data_dir
                .join("checkouts")
                .join(format!(".{sha}-{}", uuid::Uuid::now_v7()));
            repo.checkout(&sha, &tmp).await.map_err(source_error)?;
            if let Err(e) = std::fs::rename(&tmp, &root) {
                // Another trigger checked the same commit out meanwhile: use theirs.
                let _ = std::fs::remove_dir_all(&tmp);
                if !root.join(".git").exists() {
                    return Err(EngineError::Io {
                        action: "move a checkout to",
                        path: root,
                        source: e,
                    });
                }
            }
        }
        let (snap, _) = tokio::task::spawn_blocking({
            let root = root.clone();
            move || snapshot(&root, &[])
        })
        .await
        .map_err(|e| EngineError::Usage(format!("failed to read the checkout: {e}")))??;
        Ok(Source {
            root,
            snapshot: Arc::new(snap),
            git_ref,
            sha,
        })
    }
}

/// A run's files and revision.
struct Source {
    root: PathBuf,
    snapshot: Arc<Snapshot>,
    git_ref: String,
    sha: String,
}

async fn resolve(repo: &GitRepo, rev: &str) -> Result<String, EngineError> {
    repo.resolve(rev).await.map_err(source_error)
}

fn source_error(e: crate::source::SourceError) -> EngineError {
    if e.is_user_error() {
        EngineError::Usage(e.to_string())
    } else {
        EngineError::Source(Box::new(e))
    }
}

/// `main` → `refs/heads/main`; a full ref or a commit stays as it is.
fn full_ref(r: &str) -> String {
    if r.starts_with("refs/") || (r.len() >= 7 && r.chars().all(|c| c.is_ascii_hexdigit())) {
        r.to_owned()
    } else {
        format!("refs/heads/{r}")
    }
}

fn repository_name(project: &Project) -> String {
    format!("kiln/{}", project.name)
}

fn stopped() -> EngineError {
    EngineError::Usage("the engine has stopped".to_owned())
}

/// This data dir's engine id (created on first start): the owner of its local pool's
/// leases, the same after a restart so that they can be taken back at once.
fn engine_owner(data_dir: &Path) -> Result<String, EngineError> {
    let file = data_dir.join("engine-id");
    match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => Ok(format!("kiln-serve:{}", id.trim())),
        _ => {
            let id = uuid::Uuid::now_v7().to_string();
            std::fs::create_dir_all(data_dir)
                .and_then(|()| std::fs::write(&file, &id))
                .map_err(|source| EngineError::Io {
                    action: "write the engine id to",
                    path: file.clone(),
                    source,
                })?;
            Ok(format!("kiln-serve:{id}"))
        }
    }
}

/// Which part of a package build a remote worker uploads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackagePart {
    /// `$KILN_OUT`, as a tar archive.
    Output,
    /// The build's log.
    Log,
}

/// What became of a package part a worker uploaded.
#[derive(Debug)]
pub enum PartAnswer {
    Kept(kiln_proto::workers::PackagePartKept),
    /// The worker does not hold the job.
    Lost,
    /// An output archive that cannot be unpacked safely (why).
    Invalid(String),
}

#[cfg(test)]
mod tests;
