//! The dispatcher: one task that owns the truth about the runs it drives.
//!
//! It `select!`s over executor reports, a lease-renewal tick and cancellation. Each turn it
//! drains every report already waiting, turns them into store operations plus in-memory
//! decisions (which jobs become ready, which are skipped, which get a slot), commits all of
//! them in ONE transaction (group commit), and only then acts: spawns executors for the
//! leases it was granted and tells the observer what happened. So every transition is durable
//! before anyone acts on it, and a busy graph costs one transaction per turn, not per job.
//!
//! Executors own one job each: they prepare its workspace, call `kiln_exec::run_job`, and
//! forward what it reports. They never touch the store.
//!
//! Leases run ahead of the slots: with N slots the dispatcher holds up to N × (1 +
//! LOOKAHEAD) leases, and an executor whose lease is committed prepares its workspace at
//! once, then waits for one of N run permits. When a job ends its permit passes straight to a
//! prepared executor, so neither the next lease's transaction nor the workspace refresh sits
//! between two jobs of a slot — and while enough prepared jobs wait, decisions may wait a few
//! milliseconds to share a transaction. A job waiting for a permit is `leased`; it becomes
//! `running` when it starts.
//!
//! Not here: parsing (kiln-core), SQL (kiln-store), printing (kiln-cli).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use jiff::Timestamp;
use kiln_core::expr::{self, JobState as ExprState, Scope};
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId, RunStatus};
use kiln_core::packages::{Outcome as PackageOutcome, PackageId, Schedule as PackageSchedule};
use kiln_core::plan::{self, JobInstance, PlannedJob};
use kiln_core::workflow::{Diagnostics, Workflow};
use kiln_exec::{ExecEvent, JobOutcome, JobSpec};
use kiln_proto::Run;
use kiln_store::{NewJob, NewRun, Op, OpResult, Refusal, Store};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::contexts::{Trigger, github_context, resolve_inputs};
use crate::packages::{PackageSet, WorkflowPackages};
use crate::project::{Snapshot, Written};

/// How long a local lease lasts without a heartbeat.
mod remote;

pub(crate) use remote::Adoption;
pub use remote::ReportRefusal;

/// How long a lease lasts unless renewed, by default (the local pool renews every
/// [`RENEW_EVERY`] or a quarter of it, a remote worker at each heartbeat).
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How long progress records (log bytes, step results) may wait for a decision to share a
/// transaction with.
const PROGRESS_DELAY: Duration = Duration::from_millis(50);
/// How long decisions may wait for company while enough prepared jobs are waiting for a
/// slot that no slot can run dry meanwhile: fewer, larger transactions on a busy graph.
const DECISION_DELAY: Duration = Duration::from_millis(5);
/// Leases held beyond the slots, per slot: jobs prepared and waiting to start.
const LOOKAHEAD: usize = 4;
/// Only jobs of projects with at most this many files are prepared ahead: every prepared job
/// holds a copy of its project, and a big project's jobs last long enough not to need it.
const LOOKAHEAD_MAX_FILES: usize = 2_000;
/// New leases are granted once no more than this many prepared jobs per slot are left: in
/// batches, so that one transaction grants several, while enough remain to cover the
/// transaction and the workspace refresh of the next batch.
const REFILL_BELOW: usize = 2;
/// How often running jobs' leases are renewed.
const RENEW_EVERY: Duration = Duration::from_secs(15);
/// How often a server's dispatcher looks for cancellations of its runs asked elsewhere.
const CANCEL_LOOK_EVERY: Duration = Duration::from_secs(1);

/// One run to create: a workflow of a project, what triggered it, and where its files come
/// from.
#[derive(Clone)]
pub struct RunSpec {
    pub project: ProjectId,
    pub workflow: Arc<Workflow>,
    pub trigger: Trigger,
    /// `secrets` context; every value is masked in logs.
    pub secrets: Arc<IndexMap<String, String>>,
    /// The files every job's workspace starts from.
    pub snapshot: Arc<Snapshot>,
    /// `github` context fields laid over those made from `trigger` (a webhook's actor,
    /// head and base refs, …); empty for `kiln run` and API triggers.
    pub github: Map<String, Value>,
    /// The workflow's `packages:` jobs, planned from `snapshot`'s files
    /// ([`crate::packages::plan_workflow`]); empty when it has none.
    pub packages: WorkflowPackages,
}

/// How a dispatcher runs jobs: the same for every run it drives.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// Jobs running at once.
    pub slots: usize,
    /// Where job workspaces are made (a few reused folders per slot).
    pub work_dir: PathBuf,
    /// The lease owner id of this process.
    pub owner: String,
    /// Executions a job may have before an expired lease fails it.
    pub max_attempts: i64,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// Where jobs' artifacts are kept.
    pub artifacts: kiln_store::ArtifactStore,
    /// Offer ready jobs to remote workers claiming from the shared queue through any
    /// replica (a server on PostgreSQL); otherwise remote workers are served from memory.
    pub offer: bool,
}

/// What `kiln run` asks the engine to do.
pub struct LocalRun {
    pub project: ProjectId,
    /// The workflows to run, one run each.
    pub workflows: Vec<Workflow>,
    pub trigger: Trigger,
    /// `secrets` context; every value is masked in logs.
    pub secrets: IndexMap<String, String>,
    pub snapshot: Arc<Snapshot>,
    /// Local slots (`--jobs`).
    pub slots: usize,
    /// Where job workspaces are made (one folder per job, removed when it ends).
    pub work_dir: PathBuf,
    /// The lease owner id of this process.
    pub owner: String,
    /// Executions a job may have before an expired lease fails it.
    pub max_attempts: i64,
    /// kiln's data folder: package trees build in a work area under it, and builds never see
    /// the rest of it.
    pub data_dir: PathBuf,
    /// What confines `packages:` jobs' builds (detected once by the caller).
    pub sandbox: crate::packages::Sandbox,
    /// How their sandboxed `fetch` phases reach the network (`None`: the host's network).
    pub fetch_egress: Option<crate::packages::FetchEgress>,
    /// Where jobs' artifacts are kept; `None`: `<data dir>/artifacts`.
    pub artifacts: Option<kiln_store::ArtifactStore>,
}

/// What happened, for whoever shows progress. Sent only after it was committed.
#[derive(Clone, Debug)]
pub enum Progress {
    RunCreated {
        run: Box<Run>,
    },
    JobStarted {
        run: RunId,
        job: JobId,
        name: String,
    },
    JobFinished {
        run: RunId,
        job: JobId,
        name: String,
        status: JobStatus,
        elapsed: Duration,
        error: Option<String>,
    },
    JobSkipped {
        run: RunId,
        job: JobId,
        name: String,
    },
    RunFinished {
        run: RunId,
        status: RunStatus,
    },
}

/// How the runs ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub runs: Vec<RunId>,
    /// Whether Ctrl-C (the cancel token) ended the runs.
    pub cancelled: bool,
}

/// Validate everything up front (the `kiln run` contract: invalid input runs nothing), create
/// one run per workflow, and drive them to the end.
pub async fn run_local(
    store: Store,
    req: LocalRun,
    progress: mpsc::UnboundedSender<Progress>,
    cancel: CancellationToken,
) -> Result<RunOutcome, EngineError> {
    // Checks that need no store: remote actions, inputs, statically known matrices.
    let mut problems = Vec::new();
    let mut prepared = Vec::new();
    for wf in &req.workflows {
        problems.extend(plan::check_runnable(wf));
        let inputs = match resolve_inputs(wf, &req.trigger.inputs) {
            Ok(i) => i,
            Err(msg) => return Err(EngineError::Usage(msg)),
        };
        prepared.push((wf.clone(), inputs));
    }
    if !problems.is_empty() {
        return Err(EngineError::Invalid(Diagnostics(problems)));
    }

    let artifacts = match req.artifacts.clone() {
        Some(a) => a,
        None => kiln_store::ArtifactStore::open(None, &req.data_dir).map_err(EngineError::Store)?,
    };
    let config = DispatchConfig {
        slots: req.slots,
        work_dir: req.work_dir.clone(),
        owner: req.owner.clone(),
        max_attempts: req.max_attempts,
        lease_ttl: LEASE_TTL,
        artifacts,
        offer: false,
    };
    // Package trees are planned (validated, keyed, looked up) before any run is created.
    let mut planned = Vec::with_capacity(prepared.len());
    for (wf, inputs) in prepared {
        let packages = crate::packages::plan_workflow(
            &store,
            &wf,
            &req.snapshot.root,
            &req.data_dir,
            &req.sandbox,
            req.fetch_egress.as_ref(),
        )
        .await
        .map_err(EngineError::from)?;
        planned.push((wf, inputs, packages));
    }
    let mut d = Dispatcher::new(store, &config, progress);
    let secrets = Arc::new(req.secrets);
    let specs = planned
        .into_iter()
        .map(|(wf, inputs, packages)| {
            let spec = RunSpec {
                project: req.project,
                workflow: Arc::new(wf),
                trigger: req.trigger.clone(),
                secrets: secrets.clone(),
                snapshot: req.snapshot.clone(),
                github: Map::new(),
                packages,
            };
            (spec, inputs)
        })
        .collect();
    for created in d.create_runs(specs).await {
        created?;
    }
    d.drive(cancel).await
}

/// A run to create: its spec and its resolved inputs.
pub(crate) type NewSpec = (RunSpec, Map<String, Value>);

/// A request to a long-lived dispatcher (see [`crate::engine`]).
pub(crate) enum Command {
    /// Create runs (their inputs already resolved) in one store transaction and drive them;
    /// answers with each run as recorded, in order.
    Submit {
        specs: Vec<NewSpec>,
        reply: oneshot::Sender<Vec<Result<Run, EngineError>>>,
    },
    /// Drive a run recorded earlier (by this server before a restart): its jobs as stored,
    /// leases already taken back.
    Resume {
        run: Box<Run>,
        spec: Box<RunSpec>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Cancel a run's jobs; answers whether this dispatcher was driving it.
    Cancel {
        run: RunId,
        reply: oneshot::Sender<bool>,
    },
    /// A remote worker (`owner`, with `labels`) asks for up to `max` jobs.
    Claim {
        owner: String,
        labels: Vec<String>,
        max: usize,
        reply: oneshot::Sender<Result<Vec<kiln_proto::workers::AssignedJob>, EngineError>>,
    },
    /// A remote worker reports on a job it holds; answered once what it reported is
    /// committed.
    Report {
        owner: String,
        job: JobId,
        token: i64,
        events: Vec<kiln_proto::workers::ReportEvent>,
        reply: oneshot::Sender<Result<Result<(), remote::ReportRefusal>, EngineError>>,
    },
    /// A remote worker's heartbeat: answers (jobs to cancel, jobs it lost).
    Heartbeat {
        owner: String,
        jobs: Vec<kiln_proto::workers::HeldJob>,
        reply: oneshot::Sender<(Vec<JobId>, Vec<JobId>)>,
    },
    /// The project files of a job a remote worker holds (`None`: it does not hold it).
    Source {
        owner: String,
        job: JobId,
        token: i64,
        reply: oneshot::Sender<Option<Arc<Snapshot>>>,
    },
    /// The remote worker `owner` leased `job` (`token`) from the shared queue: record it
    /// as that worker's and describe it.
    Adopt {
        owner: String,
        job: JobId,
        token: i64,
        reply: oneshot::Sender<remote::Adoption>,
    },
    /// The unfinished runs this dispatcher drives.
    Driving {
        reply: oneshot::Sender<std::collections::HashSet<RunId>>,
    },
    /// A part of a package job's build that the remote worker holding it uploaded (`false`:
    /// it does not hold it).
    PackagePart {
        owner: String,
        job: JobId,
        token: i64,
        part: PackageParts,
        reply: oneshot::Sender<bool>,
    },
    /// Whether the remote worker holding a package job may fetch the output `digest` (one of
    /// its `$KILN_DEPS`); `None`: it does not hold the job.
    PackageDep {
        owner: String,
        job: JobId,
        token: i64,
        digest: String,
        reply: oneshot::Sender<Option<bool>>,
    },
    /// The run of a job a remote worker holds (`None`: it does not hold it).
    Holds {
        owner: String,
        job: JobId,
        token: i64,
        reply: oneshot::Sender<Option<RunId>>,
    },
    /// Leases the store took back because they expired.
    Expired {
        expired: Vec<kiln_store::ExpiredLease>,
        reply: oneshot::Sender<()>,
    },
    /// Stop: start nothing new, give leased jobs that have not started back to the queue,
    /// let running jobs finish until `grace` has passed, then cancel them. Answers when
    /// everything is recorded.
    Shutdown {
        grace: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// Starts a dispatcher that drives the runs it is given through `commands` until told to
/// shut down (or until every handle is gone).
pub(crate) fn spawn_long_lived(
    store: Store,
    config: &DispatchConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    ready_signal: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<Result<RunOutcome, EngineError>> {
    // Nobody shows progress: the outbox carries every transition to the API's clients.
    let (progress, _) = mpsc::unbounded_channel();
    let mut d = Dispatcher::new(store, config, progress);
    d.commands = Some(commands);
    d.ready_signal = Some(ready_signal);
    tokio::spawn(d.drive(CancellationToken::new()))
}

/// Ordering of the ready queue: highest remaining critical path first, then creation order.
#[derive(PartialEq, Eq)]
struct Ready {
    priority: u32,
    seq: u64,
    job: JobId,
}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct RunState {
    id: RunId,
    wf: Arc<Workflow>,
    spec: RunSpec,
    number: i64,
    attempt: i64,
    /// `github` (but its `event`), `inputs`, `vars`, `secrets`, `runner` — shared by every
    /// job of the run; [`RunState::contexts`] adds the event.
    base: Shared,
    /// `github.event`.
    event: Payload,
    keys: IndexMap<String, KeyState>,
    status: RunStatus,
    cancelled: bool,
    /// `GITHUB_EVENT_PATH`: the payload, written once for all the run's jobs when the first
    /// of them starts here (a run waiting for remote workers, or in a burst of webhook
    /// deliveries, costs no file).
    event_path: PathBuf,
    event_written: bool,
    /// Key → the keys that need it, so that a job's end re-examines only its dependents.
    dependents: HashMap<String, Vec<String>>,
    /// Keys to re-examine for readiness at the next turn.
    candidates: Vec<String>,
    /// Jobs not yet ended, and keys not yet decided: the run ends when both reach zero.
    open: usize,
    undecided: usize,
    /// When this engine's claim on the run was last written (made with the run, taken over,
    /// or renewed): it lasts the lease TTL from then (see [`Dispatcher::renew_runs`]).
    /// `None`: a renewal failed, and the next period renews it.
    claimed_at: Option<tokio::time::Instant>,
}

struct KeyState {
    /// Job instances, once the key's matrix is known.
    instances: Option<Vec<JobId>>,
    /// Whether its instances were decided (queued or skipped).
    decided: bool,
    priority: u32,
    fail_fast: bool,
    max_parallel: Option<usize>,
    /// Instances waiting for a max-parallel slot of this key.
    held: Vec<JobId>,
    /// Whether a job this key needs, directly or not, failed (set when it is decided, from
    /// its needs' own flags, so that no decision walks the whole graph).
    ancestor_failed: bool,
    /// A `packages:` key's instances, wired by the packages' dependencies.
    pkg: Option<PkgState>,
}

/// A `packages:` key once decided to run: which package each instance builds, and the
/// package-level ready queue that releases an instance when what it waits for succeeded.
struct PkgState {
    set: Arc<PackageSet>,
    schedule: PackageSchedule,
    job_of: HashMap<PackageId, JobId>,
    pkg_of: HashMap<JobId, PackageId>,
    /// Instances queued or running now (bounded by the key's `slots`).
    in_flight: usize,
}

struct JobRec {
    run: RunId,
    key: String,
    name: String,
    matrix: Map<String, Value>,
    index: usize,
    total: usize,
    status: JobStatus,
    token: Option<i64>,
    outputs: Map<String, Value>,
    continue_on_error: bool,
    cancel: CancellationToken,
    log_offset: u64,
    started: Option<Instant>,
    seq: u64,
    /// Leased but given back at shutdown before it started: it returns to the queue.
    released: bool,
    /// Executions so far, as the store counts them (each grant adds one; a lease given back
    /// before its job started does not count).
    attempts: i64,
    /// Its `runs-on` labels: a remote worker must have them all.
    labels: Vec<String>,
    /// The lease owner (`worker:<id>`) of the remote worker running it, if one is.
    remote: Option<String>,
    /// What the remote worker building it (a package job) has uploaded so far.
    parts: Option<Box<PackageParts>>,
    /// A remote worker reported its end, which is being recorded (a package job's history
    /// row) before the job ends.
    ending: bool,
}

/// A package job's output and log as a remote worker uploaded them, for its history row.
#[derive(Default)]
pub(crate) struct PackageParts {
    /// The lease they were uploaded under (a later holder's build starts with none).
    pub(crate) token: i64,
    pub(crate) output: Option<kiln_store::ContentBlob>,
    /// The log, and its tail.
    pub(crate) log: Option<(kiln_store::ContentBlob, String)>,
}

/// What [`Dispatcher::job_inputs`] gives: a job's definition, contexts and environment,
/// before any folder is named.
struct JobInputs {
    def: kiln_core::workflow::Job,
    contexts: Map<String, Value>,
    env: Vec<(String, String)>,
    masks: Vec<String>,
}

/// Whether the store's `lease` is held by another than `me` (a remote worker), or the job is
/// queued again.
fn another_holds_or_queued(lease: &kiln_store::Lease, me: &str) -> bool {
    match lease.status {
        JobStatus::Queued => true,
        JobStatus::Leased | JobStatus::Running => lease.owner.as_deref().is_some_and(|o| o != me),
        _ => false,
    }
}

enum Msg {
    /// The executor got a run permit and is starting the job's steps.
    Started(JobId),
    Exec(JobId, ExecEvent),
    Done(JobId, Box<JobOutcome>, Slot),
    /// A remote worker's package job ended under the lease `token`, its history row
    /// recorded.
    RemoteDone(JobId, i64, Box<JobOutcome>),
    /// A task recording a remote worker's package build is over (after its `RemoteDone`, or
    /// without one if it failed): a draining dispatcher waits for every such task.
    Recorded,
    /// Runs driven here whose cancellation was asked of another replica (or of the API while
    /// nobody drove them): see [`Dispatcher::ask_for_cancellations`].
    CancelRequested(Vec<RunId>),
    /// Runs whose claim could not be renewed: renewed again at the next turn.
    RenewFailed(Vec<RunId>),
    /// Leases remote workers held (job, the token this dispatcher knew) that the store has
    /// otherwise now ([`Dispatcher::check_remote_leases`]).
    LeasesMoved(Vec<(JobId, Option<i64>, kiln_store::Lease)>),
}

/// A place where jobs run, one per local slot: its folder (`workspace/` and `temp/`) is
/// reused from job to job and refreshed to a fresh copy of the project before each.
struct Slot {
    dir: PathBuf,
    written: Written,
    /// The run whose job used the folder last.
    last_run: Option<RunId>,
}

struct Dispatcher {
    store: Store,
    progress: mpsc::UnboundedSender<Progress>,
    runs: IndexMap<RunId, RunState>,
    jobs: HashMap<JobId, JobRec>,
    ready: BinaryHeap<Ready>,
    /// Jobs leased or running now (at most `slots * (1 + LOOKAHEAD)`: see the module doc).
    busy: usize,
    /// Remote package builds whose history rows are being recorded (`Msg::Recorded`).
    recording: usize,
    /// Jobs running now (holding a permit).
    running: usize,
    slots: usize,
    /// One permit per slot: held by an executor while its job runs.
    permits: Arc<tokio::sync::Semaphore>,
    seq: u64,
    ops: Vec<Op>,
    /// What to tell the observer once `ops` are committed.
    after: Vec<Progress>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Slots not running a job now.
    free: Vec<Slot>,
    /// Requests from the engine's handle (none for `kiln run`).
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    /// Shutting down: when the grace period for running jobs ends.
    draining: Option<tokio::time::Instant>,
    grace_over: bool,
    work_dir: PathBuf,
    owner: String,
    max_attempts: i64,
    cancelled: bool,
    /// Package sets of runs that ended, to close ([`PackageSet::close`]) at the next flush.
    closing: Vec<Arc<PackageSet>>,
    /// Runs whose event payload is still parsed ([`Dispatcher::compact_payloads`]).
    compact: Vec<RunId>,
    /// Runs that may have something to decide or may have ended since the last turn
    /// ([`Dispatcher::advance_all`]): a new run, a job that ended, a cancel. A turn looks at
    /// these only, so its cost follows what happened, not how many runs are in memory.
    touched: Vec<RunId>,
    /// Told when the ready queue grew, for remote workers waiting for a job.
    ready_signal: Option<Arc<tokio::sync::Notify>>,
    /// The ready queue's length when last looked at.
    ready_seen: usize,
    lease_ttl: Duration,
    /// Where jobs' artifacts are kept.
    artifacts: kiln_store::ArtifactStore,
    /// A look for cancellations asked elsewhere is under way.
    asking: Arc<AtomicBool>,
    /// See [`DispatchConfig::offer`].
    offer: bool,
    /// Jobs made ready since the last flush, to offer with it.
    offers: Vec<JobId>,
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl Dispatcher {
    fn new(
        store: Store,
        config: &DispatchConfig,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> Self {
        let req = config;
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            store,
            progress,
            runs: IndexMap::new(),
            jobs: HashMap::new(),
            ready: BinaryHeap::new(),
            busy: 0,
            recording: 0,
            running: 0,
            // 0 on a server whose jobs all run on remote workers.
            slots: req.slots,
            permits: Arc::new(tokio::sync::Semaphore::new(req.slots)),
            seq: 0,
            ops: Vec::new(),
            after: Vec::new(),
            tx,
            rx,
            // A folder per lease: a slot's running job and the one prepared to follow it.
            free: (0..req.slots * (1 + LOOKAHEAD))
                .rev()
                .map(|k| Slot {
                    dir: req.work_dir.join(format!("slot-{k}")),
                    written: Written::new(),
                    last_run: None,
                })
                .collect(),
            commands: None,
            draining: None,
            grace_over: false,
            work_dir: req.work_dir.clone(),
            owner: req.owner.clone(),
            max_attempts: req.max_attempts.max(1),
            cancelled: false,
            closing: Vec::new(),
            compact: Vec::new(),
            touched: Vec::new(),
            ready_signal: None,
            ready_seen: 0,
            lease_ttl: req.lease_ttl.max(Duration::from_millis(100)),
            artifacts: req.artifacts.clone(),
            asking: Arc::default(),
            offer: req.offer,
            offers: Vec::new(),
        }
    }

    /// Plans a new run (nothing stored yet): the run to record, and what driving it needs.
    fn prepare_run(
        &mut self,
        mut spec: RunSpec,
        inputs: Map<String, Value>,
    ) -> Result<(NewRun, NewRunState), EngineError> {
        let run_id = RunId::new();
        let wf = spec.workflow.clone();
        // run_number is the store's to assign; plan with a placeholder and fix the context
        // once the run is recorded. The payload is moved into `github.event`, not copied: a
        // webhook's is kilobytes of JSON, and copying it was most of planning's work.
        let payload = spec.trigger.payload.take();
        let payload_text = spec.trigger.payload_text.take();
        let stored_payload = payload.is_some() || payload_text.is_some();
        // A GitHub webhook's payload comes as its text alone: parsed only when planning
        // could read it (most workflows' jobs do not decide on the event).
        let payload = payload.or_else(|| {
            payload_text
                .as_ref()
                .filter(|_| wf.jobs.values().any(job_reads_github))
                .map(kiln_store::PayloadText::parse)
        });
        let parsed = payload.is_some();
        let mut base = self.base_contexts(&spec, run_id, 0, 1, &inputs);
        if let Some(payload) = payload
            && let Some(Value::Object(github)) = base.get_mut("github")
        {
            github.insert("event".into(), payload);
        }

        let planned = plan::dry_run(&wf, &base).map_err(EngineError::Invalid)?;
        // Out of the contexts again: the store records it with the run, and the run's state
        // keeps it apart (`RunState::event`). Serialised once, here, before the store's write
        // transaction: the store writes this text as it is, and the run keeps it once its
        // first jobs are decided.
        let event = take_event(&mut base);
        // A webhook's body is that text already.
        let text = match payload_text {
            Some(text) => text,
            None => kiln_store::PayloadText::of(&event),
        };
        // Not parsed: the text is the event (`take_event` gave the placeholder).
        let event = (parsed || !stored_payload).then_some(event);
        let priorities = plan::critical_path(&wf.jobs);

        let mut keys: IndexMap<String, KeyState> = wf
            .jobs
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    KeyState {
                        instances: None,
                        decided: false,
                        priority: priorities.get(k).copied().unwrap_or(0),
                        fail_fast: true,
                        max_parallel: None,
                        held: Vec::new(),
                        ancestor_failed: false,
                        pkg: None,
                    },
                )
            })
            .collect();

        let mut new_jobs = Vec::new();
        let mut recs = Vec::new();
        let mut by_key: IndexMap<String, Vec<PlannedJob>> = IndexMap::new();
        for p in planned {
            by_key.entry(p.id.clone()).or_default().push(p);
        }
        for (key, entries) in by_key {
            if entries.iter().any(|p| p.matrix.is_none()) {
                continue; // its matrix needs other jobs' outputs: expanded when they end
            }
            if spec.packages.contains_key(&key) {
                continue; // one instance per package to build: made when it is decided
            }
            let total = entries.len();
            let status = if wf.jobs.get(&key).is_some_and(born_queued) {
                JobStatus::Queued
            } else {
                JobStatus::Pending
            };
            let mut ids = Vec::new();
            for (index, p) in entries.into_iter().enumerate() {
                let id = JobId::new();
                let matrix = p.matrix.unwrap_or_default();
                new_jobs.push(NewJob {
                    id,
                    key: key.clone(),
                    name: p.name.clone(),
                    matrix: matrix.clone(),
                    needs: p.needs.clone(),
                    status,
                    max_attempts: self.max_attempts,
                    labels: p.labels.clone(),
                });
                self.seq += 1;
                let mut rec =
                    JobRec::new(run_id, key.clone(), p.name, matrix, index, total, self.seq);
                rec.labels = p.labels;
                rec.status = status;
                recs.push((id, rec));
                ids.push(id);
            }
            if let Some(ks) = keys.get_mut(&key) {
                ks.instances = Some(ids);
            }
        }

        let new = NewRun {
            id: run_id,
            project: spec.project,
            workflow: wf.file.clone(),
            workflow_name: wf.display_name().to_owned(),
            event: spec.trigger.event.clone(),
            git_ref: spec.trigger.git_ref.clone(),
            sha: spec.trigger.sha.clone(),
            inputs,
            status: RunStatus::Queued,
            jobs: new_jobs,
            at: now(),
            driver: Some(kiln_store::Driver {
                owner: self.owner.clone(),
                until: now() + self.lease_ttl,
            }),
            // Moved, not copied: the contexts made above hold what the run needs from them,
            // and the store keeps them for whoever drives the run on.
            context: kiln_store::RunContext {
                payload: stored_payload.then(|| text.clone()),
                github: std::mem::take(&mut spec.github),
            },
        };
        Ok((
            new,
            NewRunState {
                spec,
                keys,
                recs,
                base,
                event,
                text,
            },
        ))
    }

    /// Creates runs in one store transaction and starts driving them; one answer per spec,
    /// in order. When the transaction fails, each run is tried alone, so each answer says
    /// what went wrong with that run.
    async fn create_runs(&mut self, specs: Vec<NewSpec>) -> Vec<Result<Run, EngineError>> {
        let mut answers: Vec<Option<Result<Run, EngineError>>> = Vec::with_capacity(specs.len());
        let mut planned = Vec::new();
        for (index, (spec, inputs)) in specs.into_iter().enumerate() {
            match self.prepare_run(spec, inputs) {
                Ok((new, state)) => {
                    answers.push(None);
                    planned.push((index, new, state));
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let news: Vec<NewRun> = planned.iter().map(|(_, new, _)| new.clone()).collect();
        let stored: Vec<Result<Run, EngineError>> = match self.store.create_runs(news).await {
            Ok(runs) => runs.into_iter().map(Ok).collect(),
            Err(e) if planned.len() == 1 => vec![Err(e.into())],
            Err(_) => {
                let mut one_by_one = Vec::with_capacity(planned.len());
                for (_, new, _) in &planned {
                    one_by_one.push(self.store.create_run(new.clone()).await.map_err(Into::into));
                }
                one_by_one
            }
        };
        for ((index, new, state), run) in planned.into_iter().zip(stored) {
            // Its payload is the run state's to keep (see `install_run`).
            drop(new);
            answers[index] = Some(run.and_then(|run| self.install_run(run, state)));
        }
        answers
            .into_iter()
            .map(|a| a.expect("every spec answered"))
            .collect()
    }

    /// Starts driving a run just recorded.
    fn install_run(&mut self, run: Run, state: NewRunState) -> Result<Run, EngineError> {
        let NewRunState {
            spec,
            keys,
            recs,
            mut base,
            event,
            text,
        } = state;
        let run_id = run.id;
        let wf = spec.workflow.clone();
        self.jobs.extend(recs);
        // Planned with a placeholder number: the store has numbered the run since. (Patched
        // rather than made again: cheaper, and the event has been taken out of them.)
        if let Some(Value::Object(github)) = base.get_mut("github") {
            github.insert("run_number".into(), run.run_number.to_string().into());
            github.insert("run_attempt".into(), run.run_attempt.to_string().into());
        }
        let _ = self.progress.send(Progress::RunCreated {
            run: Box::new(run.clone()),
        });
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for (key, job) in &wf.jobs {
            for need in &job.needs {
                dependents
                    .entry(need.clone())
                    .or_default()
                    .push(key.clone());
            }
        }
        let open = run.jobs.len();
        let undecided = keys.len();
        // The store has written the run and let go of the payload by now: no copy.
        let event = match event {
            Some(event) => Payload::Parsed(event, Some(text)),
            None => Payload::Text(text),
        };
        let base = Shared::Live(base);
        self.compact.push(run_id);
        let event_path = self.event_file(run_id);
        let candidates = keys.keys().cloned().collect();
        self.touched.push(run_id);
        self.runs.insert(
            run_id,
            RunState {
                id: run_id,
                wf,
                spec,
                number: run.run_number,
                attempt: run.run_attempt,
                base,
                event,
                keys,
                status: RunStatus::Queued,
                cancelled: false,
                event_path,
                event_written: false,
                dependents,
                candidates,
                open,
                undecided,
                claimed_at: Some(tokio::time::Instant::now()),
            },
        );
        Ok(run)
    }
}

/// A run's `github.event`: parsed while the run's first jobs are decided, then kept as
/// packed JSON text ([`Dispatcher::compact_payloads`]) — a webhook's payload takes several
/// times its size parsed and a third of it packed, and a queue of thousands of webhook runs
/// holds one each. A new run has its text already (made for the store), a run taken over
/// from the store has not.
enum Payload {
    Parsed(Value, Option<kiln_store::PayloadText>),
    /// Not parsed yet (a webhook's, which planning did not read).
    Text(kiln_store::PayloadText),
    Packed(kiln_store::PackedJson),
}

/// A run's shared contexts ([`RunState::base`]): values while its first jobs are decided,
/// then packed JSON text, unpacked for each later decision and job (kilobytes of small
/// strings and maps per run otherwise, for every run in the queue).
enum Shared {
    Live(Map<String, Value>),
    Packed(kiln_store::PackedJson),
}

impl Shared {
    fn get(&self) -> Map<String, Value> {
        match self {
            Shared::Live(map) => map.clone(),
            Shared::Packed(packed) => packed.parse(),
        }
    }
}

impl RunState {
    /// The contexts every job of the run starts from, `github.event` included.
    fn contexts(&self) -> Map<String, Value> {
        let mut contexts = self.base.get();
        if let Some(Value::Object(github)) = contexts.get_mut("github") {
            let event = match &self.event {
                Payload::Parsed(v, _) => v.clone(),
                Payload::Text(t) => t.parse(),
                Payload::Packed(p) => p.parse(),
            };
            github.insert("event".into(), event);
        }
        contexts
    }
}

/// Whether `job`'s instances are queued as they are made, with their run: it needs nothing
/// and has no `if` and no `max-parallel`, so its first decision cannot go otherwise (its run
/// is new, so not cancelled). Recording it with the run spares each run a transition and a
/// transaction.
fn born_queued(job: &kiln_core::workflow::Job) -> bool {
    job.needs.is_empty()
        && job.condition.as_deref().is_none_or(|c| c.trim().is_empty())
        && job
            .strategy
            .as_ref()
            .is_none_or(|s| s.max_parallel.is_none())
}

/// Whether what deciding `job` evaluates — its `if`, name, `runs-on` and strategy — could
/// read the `github` context (and so `github.event`): whether the word appears in any of
/// them, in any case, as the named value must. A copy of a webhook's whole payload per job
/// is saved for the jobs that cannot.
fn job_reads_github(job: &kiln_core::workflow::Job) -> bool {
    fn mentions(text: &str) -> bool {
        text.to_ascii_lowercase().contains("github")
    }
    fn value_mentions(v: &Value) -> bool {
        match v {
            Value::String(s) => mentions(s),
            Value::Array(items) => items.iter().any(value_mentions),
            Value::Object(m) => m.iter().any(|(k, v)| mentions(k) || value_mentions(v)),
            _ => false,
        }
    }
    let strategy = job.strategy.as_ref();
    job.condition.as_deref().is_some_and(mentions)
        || job.name.as_deref().is_some_and(mentions)
        || job.runs_on.as_ref().is_some_and(value_mentions)
        || strategy.is_some_and(|s| {
            [&s.matrix, &s.fail_fast, &s.max_parallel]
                .into_iter()
                .flatten()
                .any(value_mentions)
        })
}

/// Takes `github.event` out of a run's contexts (see [`RunState::event`]).
fn take_event(base: &mut Map<String, Value>) -> Value {
    let event = match base.get_mut("github") {
        Some(Value::Object(github)) => github.shift_remove("event"),
        _ => None,
    };
    event.unwrap_or_else(|| json!({}))
}

/// A planned run between [`Dispatcher::prepare_run`] and [`Dispatcher::install_run`].
struct NewRunState {
    spec: RunSpec,
    keys: IndexMap<String, KeyState>,
    recs: Vec<(JobId, JobRec)>,
    /// The run's contexts, made with run number 0, without `github.event`.
    base: Map<String, Value>,
    /// `github.event`, unless only `text` holds it (a webhook's, not parsed for planning).
    event: Option<Value>,
    /// `event` as JSON text, shared with the run being recorded.
    text: kiln_store::PayloadText,
}

impl Dispatcher {
    /// Rebuild a recorded run's state from its jobs as stored, and drive it on: queued jobs
    /// go to the ready queue, keys whose jobs are all pending are decided again when their
    /// needs have ended, and the run ends as usual.
    ///
    /// Not known after a restart: which failed jobs had `continue-on-error` (they count as
    /// failed for their dependents and the run's verdict).
    fn resume_run(&mut self, run: Run, spec: RunSpec) -> Result<(), EngineError> {
        if let Some(existing) = self.runs.get(&run.id) {
            if !existing.status.is_terminal() {
                return Ok(());
            }
            // A retried run: its next attempt starts from the store's state.
            self.forget(run.id);
        }
        let wf = spec.workflow.clone();
        let base = self.base_contexts(&spec, run.id, run.run_number, run.run_attempt, &run.inputs);
        let priorities = plan::critical_path(&wf.jobs);

        let mut by_key: HashMap<&str, Vec<&kiln_proto::Job>> = HashMap::new();
        for job in &run.jobs {
            by_key.entry(job.key.as_str()).or_default().push(job);
        }
        let mut keys: IndexMap<String, KeyState> = IndexMap::new();
        let mut open = 0usize;
        let mut undecided = 0usize;
        let mut ready = Vec::new();
        for (key, def) in &wf.jobs {
            let stored = by_key.remove(key.as_str()).unwrap_or_default();
            let decided =
                !stored.is_empty() && stored.iter().all(|j| j.status != JobStatus::Pending);
            if !decided {
                undecided += 1;
            }
            let total = stored.len();
            let mut ids = Vec::new();
            for (index, job) in stored.into_iter().enumerate() {
                self.seq += 1;
                let mut rec = JobRec::new(
                    run.id,
                    key.clone(),
                    job.name.clone(),
                    job.matrix.clone(),
                    index,
                    total,
                    self.seq,
                );
                rec.status = job.status;
                rec.outputs = job.outputs.clone();
                rec.labels = job.labels.clone();
                rec.attempts = job.attempts;
                if !job.status.is_terminal() {
                    open += 1;
                }
                if job.status == JobStatus::Queued {
                    ready.push((priorities.get(key).copied().unwrap_or(0), self.seq, job.id));
                }
                self.jobs.insert(job.id, rec);
                ids.push(job.id);
            }
            keys.insert(
                key.clone(),
                KeyState {
                    instances: (!ids.is_empty()).then_some(ids),
                    decided,
                    priority: priorities.get(key).copied().unwrap_or(0),
                    fail_fast: def.packages.is_none() && plan::fail_fast(def, &base),
                    max_parallel: package_slots(def).or_else(|| plan::max_parallel(def, &base)),
                    held: Vec::new(),
                    ancestor_failed: false,
                    pkg: None,
                },
            );
        }
        if !by_key.is_empty() {
            let mut unknown: Vec<&str> = by_key.keys().copied().collect();
            unknown.sort_unstable();
            return Err(EngineError::Usage(format!(
                "run {} has jobs {} that its workflow {} no longer declares",
                run.id,
                unknown.join(", "),
                wf.file
            )));
        }
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for (key, job) in &wf.jobs {
            for need in &job.needs {
                dependents
                    .entry(need.clone())
                    .or_default()
                    .push(key.clone());
            }
        }
        let mut base = base;
        let event = Payload::Parsed(take_event(&mut base), None);
        let base = Shared::Live(base);
        self.compact.push(run.id);
        let event_path = self.event_file(run.id);
        let candidates = keys
            .iter()
            .filter(|(_, k)| !k.decided)
            .map(|(key, _)| key.clone())
            .collect();
        let state = RunState {
            id: run.id,
            wf: wf.clone(),
            spec,
            number: run.run_number,
            attempt: run.run_attempt,
            base,
            event,
            keys,
            status: run.status,
            cancelled: false,
            event_path,
            event_written: false,
            dependents,
            candidates,
            open,
            undecided,
            claimed_at: Some(tokio::time::Instant::now()),
        };
        self.touched.push(run.id);
        self.runs.insert(run.id, state);
        // Ancestors' failures, in an order where every need comes first.
        let order: Vec<String> = plan::topological_order(&wf.jobs);
        for key in order {
            let failed = {
                let r = &self.runs[&run.id];
                r.keys.get(&key).is_some_and(|k| k.decided) && self.ancestor_failed(r, &key)
            };
            if let Some(k) = self
                .runs
                .get_mut(&run.id)
                .and_then(|r| r.keys.get_mut(&key))
            {
                k.ancestor_failed = failed;
            }
        }
        for (priority, seq, job) in ready {
            self.ready.push(Ready { priority, seq, job });
            self.offer(job);
        }
        Ok(())
    }

    /// The contexts every job of a run shares: `github`, `inputs`, `vars`, `secrets`, `env`.
    fn base_contexts(
        &self,
        spec: &RunSpec,
        run: RunId,
        number: i64,
        attempt: i64,
        inputs: &Map<String, Value>,
    ) -> Map<String, Value> {
        let workspace = self
            .work_dir
            .join("workspace")
            .to_string_lossy()
            .into_owned();
        let mut base = Map::new();
        let mut github = github_context(
            &spec.trigger,
            &spec.workflow,
            &run.to_string(),
            number,
            attempt,
            &workspace,
        );
        if let Value::Object(fields) = &mut github {
            fields.extend(spec.github.clone());
        }
        base.insert("github".into(), github);
        base.insert("inputs".into(), Value::Object(inputs.clone()));
        base.insert("vars".into(), json!({}));
        base.insert(
            "secrets".into(),
            Value::Object(
                spec.secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        base.insert("env".into(), json!({}));
        base
    }

    /// Drops a run and its jobs from memory (the store keeps them).
    fn forget(&mut self, run_id: RunId) {
        if let Some(run) = self.runs.shift_remove(&run_id) {
            for id in run.keys.values().flat_map(|k| k.instances.iter().flatten()) {
                self.jobs.remove(id);
            }
            let _ = std::fs::remove_file(&run.event_path);
        }
    }

    /// A server's dispatcher lives long: finished runs whose last transitions are
    /// committed leave memory.
    fn forget_finished(&mut self) {
        if self.commands.is_none() || !self.ops.is_empty() {
            return;
        }
        let done: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, r)| r.status.is_terminal())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.forget(id);
        }
    }

    /// Where run `run_id`'s `GITHUB_EVENT_PATH` goes.
    fn event_file(&self, run_id: RunId) -> PathBuf {
        self.work_dir.join(format!("event-{run_id}.json"))
    }

    /// Writes run `run_id`'s event payload to its `GITHUB_EVENT_PATH`, unless already done.
    /// A failure is logged and tried again by the run's next job; the job goes on, and a
    /// step that reads the file finds it missing.
    fn write_event_file(&mut self, run_id: RunId) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        if run.event_written {
            return;
        }
        let written = std::fs::create_dir_all(&self.work_dir).and_then(|()| match &run.event {
            Payload::Parsed(_, Some(t)) | Payload::Text(t) => {
                std::fs::write(&run.event_path, t.as_str())
            }
            Payload::Packed(p) => std::fs::write(&run.event_path, p.text()),
            Payload::Parsed(v, None) => {
                std::fs::write(&run.event_path, serde_json::to_vec(v).unwrap_or_default())
            }
        });
        match written {
            Ok(()) => run.event_written = true,
            Err(e) => tracing::error!(
                run = %run_id,
                path = %run.event_path.display(),
                error = %e,
                "cannot write the event payload for GITHUB_EVENT_PATH"
            ),
        }
    }

    async fn drive(mut self, cancel: CancellationToken) -> Result<RunOutcome, EngineError> {
        let mut renew = tokio::time::interval(RENEW_EVERY.min(self.lease_ttl / 4));
        renew.tick().await;
        // A server's dispatcher looks for cancellations asked through other replicas.
        let mut asked = tokio::time::interval(CANCEL_LOOK_EVERY);
        asked.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut run_ids: Vec<RunId> = self.runs.keys().copied().collect();
        // The first turn decides the jobs that need nothing.
        self.advance_all();
        self.flush().await?;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            let long_lived = self.commands.is_some() || self.draining.is_some();
            if !long_lived && self.all_done() {
                break;
            }
            // A remote package build being recorded ends its job once the row is in: a
            // dispatcher that stopped first would leave the job to be built again.
            if self.draining.is_some()
                && self.busy == 0
                && self.recording == 0
                && self.ops.is_empty()
            {
                break;
            }
            let grace = self.draining.filter(|_| !self.grace_over);
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    while let Ok(msg) = self.rx.try_recv() {
                        self.handle(msg);
                    }
                }
                cmd = next_command(&mut self.commands), if self.commands.is_some() => {
                    match cmd {
                        Some(Command::Submit { specs, reply }) => {
                            let created = self.create_runs(specs).await;
                            run_ids.extend(created.iter().flatten().map(|run| run.id));
                            let _ = reply.send(created);
                        }
                        Some(Command::Resume { run, spec, reply }) => {
                            let id = run.id;
                            let resumed = self.resume_run(*run, *spec);
                            if resumed.is_ok() {
                                run_ids.push(id);
                            }
                            let _ = reply.send(resumed);
                        }
                        Some(Command::Cancel { run, reply }) => {
                            let _ = reply.send(self.cancel_run(run));
                        }
                        Some(Command::Claim { owner, labels, max, reply }) => {
                            let _ = reply.send(self.claim_remote(&owner, &labels, max).await);
                        }
                        Some(Command::Report { owner, job, token, events, reply }) => {
                            let taken = self.remote_report(&owner, job, token, events);
                            self.advance_all();
                            let flushed = self.flush().await;
                            let _ = reply.send(flushed.map(|()| taken));
                        }
                        Some(Command::Heartbeat { owner, jobs, reply }) => {
                            let _ = reply.send(self.remote_heartbeat(&owner, &jobs));
                        }
                        Some(Command::Source { owner, job, token, reply }) => {
                            let _ = reply.send(self.remote_source(&owner, job, token));
                        }
                        Some(Command::Adopt { owner, job, token, reply }) => {
                            let _ = reply.send(self.adopt_remote(&owner, job, token));
                        }
                        Some(Command::Driving { reply }) => {
                            let _ = reply.send(self.driving());
                        }
                        Some(Command::PackagePart { owner, job, token, part, reply }) => {
                            let _ = reply.send(self.remote_package_part(&owner, job, token, part));
                        }
                        Some(Command::PackageDep { owner, job, token, digest, reply }) => {
                            let _ = reply.send(self.remote_package_dep(&owner, job, token, &digest));
                        }
                        Some(Command::Holds { owner, job, token, reply }) => {
                            let _ = reply.send(self.remote_holds(&owner, job, token));
                        }
                        Some(Command::Expired { expired, reply }) => {
                            self.remote_leases_expired(&expired);
                            let _ = reply.send(());
                        }
                        Some(Command::Shutdown { grace, reply }) => {
                            shutdown = Some(reply);
                            self.begin_drain(grace);
                        }
                        // Every handle is gone: nobody can ask for anything any more.
                        None => self.begin_drain(Duration::ZERO),
                    }
                }
                _ = renew.tick() => {
                    self.renew_leases();
                    self.renew_runs();
                    if self.offer {
                        self.check_remote_leases();
                    }
                }
                _ = asked.tick(), if self.commands.is_some() => self.ask_for_cancellations(),
                _ = cancel.cancelled(), if !self.cancelled => self.cancel_all(),
                _ = tokio::time::sleep_until(grace.unwrap_or_else(tokio::time::Instant::now)),
                    if grace.is_some() => {
                    self.grace_over = true;
                    self.cancel_running();
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if deadline.is_some() => {}
            }
            self.advance_all();
            if self.ready.len() > self.ready_seen
                && let Some(signal) = &self.ready_signal
            {
                signal.notify_waiters();
            }
            self.ready_seen = self.ready.len();
            // Decisions (leases, completions, skips, run ends) are committed at once: someone
            // acts on them. Mere progress (a job started, log bytes, step results) rides along
            // with the next decision, or is committed within PROGRESS_DELAY: that halves the
            // transactions of a busy graph without delaying any decision.
            //
            // While at least a slot's worth of prepared jobs wait for a permit, even decisions
            // may wait DECISION_DELAY: the slots stay busy, and the transaction grows.
            let now = tokio::time::Instant::now();
            let due = deadline.is_some_and(|d| now >= d);
            let decisions = self.has_decisions();
            let urgent = self.has_urgent() || (decisions && self.waiting() < self.slots);
            if urgent || due || self.ops.is_empty() {
                self.flush().await?;
                self.forget_finished();
                deadline = None;
            } else {
                let want = now
                    + if decisions {
                        DECISION_DELAY
                    } else {
                        PROGRESS_DELAY
                    };
                deadline = Some(deadline.map_or(want, |d| d.min(want)));
            }
        }
        self.flush().await?;
        if let Some(reply) = shutdown {
            let _ = reply.send(());
        }
        Ok(RunOutcome {
            runs: run_ids,
            cancelled: self.cancelled,
        })
    }

    /// Shutdown: nothing new starts, prepared jobs go back to the queue, running ones get
    /// until `grace` to finish.
    fn begin_drain(&mut self, grace: Duration) {
        if self.draining.is_some() {
            return;
        }
        self.commands = None;
        self.draining = Some(tokio::time::Instant::now() + grace);
        self.ready.clear();
        for rec in self.jobs.values_mut() {
            // A remote worker's job runs on; its lease outlives this server, and expires if
            // nobody takes its reports.
            if rec.status == JobStatus::Leased && rec.remote.is_none() {
                rec.released = true;
                rec.cancel.cancel();
            }
        }
    }

    /// The grace period is over: cancel what still runs (recorded as cancelled).
    fn cancel_running(&mut self) {
        for rec in self.jobs.values() {
            if rec.status == JobStatus::Running && rec.remote.is_none() {
                rec.cancel.cancel();
            }
        }
    }

    /// Whether the pending operations hold anything besides progress records.
    fn has_decisions(&self) -> bool {
        self.ops.iter().any(|op| {
            !matches!(
                op,
                Op::LogChunk { .. }
                    | Op::StepResult { .. }
                    | Op::StartJob { .. }
                    | Op::RenewLease { .. }
            )
        })
    }

    /// Whether the pending operations hold a decision someone waits for: a lease (an
    /// executor waits to be spawned), a run's status or new jobs. Completions and job status
    /// changes alone can wait DECISION_DELAY.
    fn has_urgent(&self) -> bool {
        self.ops.iter().any(|op| {
            matches!(
                op,
                Op::GrantLease { .. } | Op::SetRunStatus { .. } | Op::AddJobs { .. }
            )
        })
    }

    /// Leased jobs not started yet (prepared, or being prepared).
    fn waiting(&self) -> usize {
        self.busy.saturating_sub(self.running)
    }

    fn all_done(&self) -> bool {
        self.runs.values().all(|r| r.status.is_terminal())
    }

    /// Commit what this turn decided, then act on it.
    async fn flush(&mut self) -> Result<(), EngineError> {
        for set in std::mem::take(&mut self.closing) {
            set.close().await;
        }
        let offered = !self.offers.is_empty();
        if offered {
            // Last: after the batch's status changes (the offer itself does not care).
            self.ops.push(Op::OfferJobs {
                jobs: std::mem::take(&mut self.offers),
                at: now(),
            });
        }
        if self.ops.is_empty() {
            for p in self.after.drain(..) {
                let _ = self.progress.send(p);
            }
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        let kinds: Vec<Option<JobId>> = ops
            .iter()
            .map(|op| match op {
                Op::GrantLease { job, .. } => Some(*job),
                _ => None,
            })
            .collect();
        // Jobs ended here (cancelled) whose end the store may refuse: a remote worker may
        // have taken them from the shared queue meanwhile.
        let ends: Vec<Option<(JobId, JobStatus)>> = ops
            .iter()
            .map(|op| match op {
                Op::SetJobStatus { job, status, .. } if self.offer && status.is_terminal() => {
                    Some((*job, *status))
                }
                _ => None,
            })
            .collect();
        let results = self.commit_retrying(ops).await;
        for p in self.after.drain(..) {
            let _ = self.progress.send(p);
        }
        // Claims waiting on this replica look at the shared queue again now that the offers
        // are in it.
        if offered && let Some(signal) = &self.ready_signal {
            signal.notify_waiters();
        }
        let mut taken_ends = Vec::new();
        for ((end, granted), result) in ends.into_iter().zip(kinds).zip(results) {
            if let (Some(end), OpResult::Refused { reason }) = (end, &result)
                && matches!(
                    reason,
                    Refusal::WrongState {
                        status: JobStatus::Leased | JobStatus::Running,
                        ..
                    }
                )
            {
                taken_ends.push(end);
                continue;
            }
            match (granted, result) {
                (Some(job), OpResult::Lease { token }) => {
                    if let Some(rec) = self.jobs.get_mut(&job) {
                        rec.attempts += 1;
                    }
                    match self.jobs.get_mut(&job) {
                        // A remote worker's: it starts when the worker gets its answer.
                        Some(rec) if rec.remote.is_some() => rec.token = Some(token),
                        _ => self.spawn(job, token),
                    }
                }
                (Some(job), other) => {
                    if self.jobs.get(&job).is_some_and(|r| r.remote.is_none()) {
                        self.busy = self.busy.saturating_sub(1);
                    }
                    // A remote worker took it from the shared queue first: it is that
                    // worker's (it asks for the details next); or the store has it queued
                    // again already (that worker gave it back).
                    if self.offer {
                        match self.store.lease_of(job).await {
                            Ok(Some(lease)) if another_holds_or_queued(&lease, &self.owner) => {
                                if let Some(rec) = self.jobs.get_mut(&job) {
                                    rec.remote = None;
                                    rec.ending = false;
                                    rec.parts = None;
                                    rec.token = None;
                                }
                                self.follow_store(job, lease);
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(%job, error = %e, "cannot read a refused lease")
                            }
                        }
                    }
                    // The store refused a lease we decided on: the in-memory view was wrong.
                    // Record the job as failed rather than hang.
                    tracing::warn!(%job, ?other, "lease refused");
                    if let Some(rec) = self.jobs.get_mut(&job) {
                        rec.remote = None;
                        rec.ending = false;
                        rec.parts = None;
                        rec.status = JobStatus::Failure;
                        self.ended(job);
                    }
                }
                (None, OpResult::Refused { reason }) => {
                    tracing::warn!(?reason, "store refused an operation");
                }
                _ => {}
            }
        }
        if !taken_ends.is_empty() {
            self.end_taken(taken_ends).await;
        }
        Ok(())
    }

    /// Jobs that ended here (`status`: cancelled) while a remote worker held them from the
    /// shared queue, before it asked for their details: they end so in the store too, under
    /// the worker's lease, which it then finds lost.
    async fn end_taken(&mut self, ended: Vec<(JobId, JobStatus)>) {
        let mut ops = Vec::new();
        for (job, status) in ended {
            match self.store.lease_of(job).await {
                Ok(Some(lease))
                    if matches!(lease.status, JobStatus::Leased | JobStatus::Running) =>
                {
                    ops.push(Op::CompleteJob {
                        job,
                        token: lease.token,
                        status,
                        outputs: Map::new(),
                        at: now(),
                    });
                }
                // Given back meanwhile: queued, so the status applies now.
                Ok(Some(lease)) if lease.status == JobStatus::Queued => {
                    ops.push(Op::SetJobStatus {
                        job,
                        status,
                        at: now(),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%job, error = %e, "cannot read the lease of a job that ended")
                }
            }
        }
        if !ops.is_empty() {
            self.commit_retrying(ops).await;
        }
    }

    /// Makes this dispatcher's view of `job` the store's `lease`, which a remote worker's
    /// claim from the shared queue (or its giving the job back, or its lease expiring)
    /// changed behind it: held by that worker, or queued again.
    fn follow_store(&mut self, job: JobId, lease: kiln_store::Lease) {
        let Some(rec) = self.jobs.get_mut(&job) else {
            return;
        };
        // Leased or running by nobody known here (a view of the store from a take-over): that
        // grant was counted, and has been given back since.
        let stale =
            rec.token.is_none() && matches!(rec.status, JobStatus::Leased | JobStatus::Running);
        match (lease.status, lease.owner) {
            (JobStatus::Leased | JobStatus::Running, Some(owner)) if owner != self.owner => {
                tracing::debug!(%job, %owner, "a worker holds the job from the shared queue");
                if !stale && (rec.remote.is_none() || rec.token.is_none()) {
                    rec.attempts += 1;
                }
                rec.status = lease.status;
                rec.held_by(Some((owner, lease.token)));
                let run = rec.run;
                self.mark_run_running(run);
            }
            (JobStatus::Queued, _) => {
                tracing::debug!(%job, "the job is queued again in the store");
                let was_held = rec.remote.is_some() && rec.token.is_some();
                rec.status = JobStatus::Queued;
                rec.held_by(None);
                if was_held || stale {
                    rec.attempts = (rec.attempts - 1).max(0);
                }
                let (run, key, seq) = (rec.run, rec.key.clone(), rec.seq);
                let priority = self
                    .runs
                    .get(&run)
                    .and_then(|r| r.keys.get(&key))
                    .map_or(0, |k| k.priority);
                self.ready.push(Ready { priority, seq, job });
                self.offer(job);
            }
            _ => {}
        }
    }

    /// Every renewal period: the leases remote workers hold from the shared queue, checked
    /// against the store (in a task of its own); what changed behind this dispatcher's back
    /// (a worker gave a job back, another took it) comes back as [`Msg::LeasesMoved`]. Jobs
    /// leased or running that nobody here holds are checked too: a run taken over from a view
    /// of the store in which a worker held one, which it has given back (queued again) or
    /// another worker claimed since, would otherwise wait for it for ever.
    fn check_remote_leases(&self) {
        let held: Vec<(JobId, Option<String>, Option<i64>)> = self
            .jobs
            .iter()
            .filter(|(_, rec)| matches!(rec.status, JobStatus::Leased | JobStatus::Running))
            .filter_map(|(id, rec)| match (&rec.remote, rec.token) {
                (Some(owner), Some(token)) => Some((*id, Some(owner.clone()), Some(token))),
                (_, None) => Some((*id, None, None)),
                // This server's own pool runs it.
                (None, Some(_)) => None,
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let (store, tx, me) = (self.store.clone(), self.tx.clone(), self.owner.clone());
        tokio::spawn(async move {
            let mut moved = Vec::new();
            for (job, owner, token) in held {
                match store.lease_of(job).await {
                    Ok(Some(lease)) => {
                        let changed = match (&owner, token) {
                            (Some(owner), Some(token)) => {
                                (lease.token != token || lease.owner.as_deref() != Some(owner))
                                    && matches!(
                                        lease.status,
                                        JobStatus::Queued | JobStatus::Leased | JobStatus::Running
                                    )
                            }
                            // Held by nobody known here: queued, or a worker's.
                            _ => another_holds_or_queued(&lease, &me),
                        };
                        if changed {
                            moved.push((job, token, lease));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check the leases of remote workers");
                        return;
                    }
                }
            }
            if !moved.is_empty() {
                let _ = tx.send(Msg::LeasesMoved(moved));
            }
        });
    }

    /// Commits `ops`, trying again (every 100 ms at first, every 5 s at most) while the store
    /// fails: a database that restarts or drops connections holds the engine up instead of
    /// stopping it. (Should a commit have applied with its answer lost, its repetition
    /// answers each lease it granted again, with the same token, and refuses the other ops
    /// harmlessly: a stale token or a state already reached.)
    async fn commit_retrying(&self, ops: Vec<Op>) -> Vec<OpResult> {
        let mut wait = Duration::from_millis(100);
        let mut failing = false;
        let started = tokio::time::Instant::now();
        loop {
            // A server stopping while its database is away gives up after a while rather
            // than hang: what was not committed is redone by whoever drives the runs next.
            if failing && self.draining.is_some() && started.elapsed() > Duration::from_secs(10) {
                tracing::error!("giving up committing the engine's last changes: stopping");
                return Vec::new();
            }
            match self.store.commit(ops.clone()).await {
                Ok(results) => {
                    if failing {
                        tracing::info!("the store answers again: the engine carries on");
                    }
                    return results;
                }
                Err(e) => {
                    failing = true;
                    tracing::error!(error = %e, retry_in = ?wait, "cannot commit the engine's changes; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// A job reached a terminal status (set by the caller just before): count it and let its
    /// key's dependents be re-examined.
    fn ended(&mut self, job: JobId) {
        let Some(rec) = self.jobs.get(&job) else {
            return;
        };
        let Some(run) = self.runs.get_mut(&rec.run) else {
            return;
        };
        run.open = run.open.saturating_sub(1);
        if let Some(deps) = run.dependents.get(&rec.key) {
            run.candidates.extend(deps.iter().cloned());
        }
        self.touched.push(rec.run);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Started(job) => self.on_started(job),
            Msg::Exec(job, ev) => self.on_exec(job, ev),
            Msg::Done(job, outcome, slot) => {
                self.free.push(slot);
                self.on_done(job, *outcome);
            }
            Msg::Recorded => self.recording = self.recording.saturating_sub(1),
            Msg::RemoteDone(job, token, outcome) => {
                // Only if the lease it ended under still holds (not expired meanwhile).
                if self
                    .jobs
                    .get(&job)
                    .is_some_and(|r| r.ending && r.token == Some(token))
                {
                    self.remote_done(job, *outcome);
                }
            }
            Msg::LeasesMoved(moved) => {
                for (job, token, lease) in moved {
                    // Only if nothing changed here since the look.
                    if self.jobs.get(&job).is_some_and(|r| r.token == token) {
                        self.follow_store(job, lease);
                    }
                }
            }
            Msg::CancelRequested(runs) => {
                for run in runs {
                    if self.runs.get(&run).is_some_and(|r| !r.cancelled) {
                        tracing::info!(%run, "cancelling a run as asked through another replica");
                        self.cancel_run(run);
                    }
                }
            }
            Msg::RenewFailed(runs) => {
                for run in runs {
                    if let Some(r) = self.runs.get_mut(&run) {
                        r.claimed_at = None;
                    }
                }
            }
        }
    }

    /// Offers `job`, just made ready, to remote workers claiming from the shared queue (with
    /// the next flush), when this dispatcher offers jobs and a remote worker may run it.
    fn offer(&mut self, job: JobId) {
        if self.offer && self.remote_eligible(job) {
            self.offers.push(job);
        }
    }

    /// Looks up (in a task of its own, one at a time) the runs driven here whose cancellation
    /// was asked through the store; they come back as [`Msg::CancelRequested`].
    fn ask_for_cancellations(&self) {
        if self.runs.is_empty() || self.asking.swap(true, AtomicOrdering::AcqRel) {
            return;
        }
        let (store, owner, tx) = (self.store.clone(), self.owner.clone(), self.tx.clone());
        let asking = self.asking.clone();
        tokio::spawn(async move {
            match store.cancel_requests(&owner).await {
                Ok(runs) if !runs.is_empty() => {
                    let _ = tx.send(Msg::CancelRequested(runs));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for cancellations asked elsewhere")
                }
            }
            asking.store(false, AtomicOrdering::Release);
        });
    }

    fn on_started(&mut self, job: JobId) {
        let Some(rec) = self.jobs.get_mut(&job) else {
            return;
        };
        let Some(token) = rec.token else { return };
        rec.started = Some(Instant::now());
        rec.status = JobStatus::Running;
        if rec.remote.is_none() {
            self.running += 1;
        }
        self.ops.push(Op::StartJob {
            job,
            token,
            at: now(),
        });
        self.after.push(Progress::JobStarted {
            run: rec.run,
            job,
            name: rec.name.clone(),
        });
    }

    fn on_exec(&mut self, job: JobId, ev: ExecEvent) {
        let Some(rec) = self.jobs.get_mut(&job) else {
            return;
        };
        let Some(token) = rec.token else { return };
        match ev {
            // Step boundaries are not written into the log: each chunk records its step, and
            // readers (`kiln logs`) print the headers. A silent step then costs no log bytes.
            ExecEvent::StepStarted { .. } => {}
            ExecEvent::Log { index, data } => {
                if data.is_empty() {
                    return;
                }
                let len = data.len() as u64;
                self.ops.push(Op::LogChunk {
                    job,
                    token,
                    step: index,
                    offset: rec.log_offset,
                    data,
                });
                rec.log_offset += len;
            }
            ExecEvent::StepFinished { step } => {
                self.ops.push(Op::StepResult { job, token, step });
            }
        }
    }

    fn on_done(&mut self, job: JobId, outcome: JobOutcome) {
        let Some(rec) = self.jobs.get_mut(&job) else {
            return;
        };
        let Some(token) = rec.token.take() else {
            return;
        };
        // A remote worker's job holds no local slot or permit.
        if rec.remote.is_none() {
            self.busy = self.busy.saturating_sub(1);
        }
        if rec.started.is_some() {
            if rec.remote.is_none() {
                self.running = self.running.saturating_sub(1);
            }
        } else if rec.released {
            // Given back at shutdown before it started: queued again, for whoever drives the
            // run next (this server after a restart, or another).
            rec.status = JobStatus::Queued;
            rec.attempts -= 1;
            self.ops.push(Op::ReleaseLease { job, token });
            return;
        }
        if let Some(err) = &outcome.error {
            let line = format!("##[error] {err}\n").into_bytes();
            let len = line.len() as u64;
            self.ops.push(Op::LogChunk {
                job,
                token,
                step: u32::MAX,
                offset: rec.log_offset,
                data: line,
            });
            rec.log_offset += len;
        }
        rec.status = outcome.status;
        rec.outputs = outcome.outputs.clone();
        rec.continue_on_error = outcome.continue_on_error;
        let elapsed = rec.started.map(|s| s.elapsed()).unwrap_or_default();
        metrics::histogram!("kiln_job_duration_seconds", "status" => outcome.status.as_str())
            .record(elapsed.as_secs_f64());
        self.ops.push(Op::CompleteJob {
            job,
            token,
            status: outcome.status,
            outputs: outcome.outputs,
            at: now(),
        });
        self.after.push(Progress::JobFinished {
            run: rec.run,
            job,
            name: rec.name.clone(),
            status: outcome.status,
            elapsed,
            error: outcome.error,
        });
        let run = rec.run;
        let key = rec.key.clone();
        let failed = matches!(outcome.status, JobStatus::Failure | JobStatus::TimedOut)
            && !rec.continue_on_error;
        self.ended(job);

        // A held sibling (max-parallel) may take the freed place of its key.
        if let Some(ks) = self.runs.get_mut(&run).and_then(|r| r.keys.get_mut(&key))
            && !ks.held.is_empty()
        {
            let next = ks.held.remove(0);
            let priority = ks.priority;
            if let Some(r) = self.jobs.get(&next) {
                self.ready.push(Ready {
                    priority,
                    seq: r.seq,
                    job: next,
                });
                self.offer(next);
            }
        }
        if failed {
            self.fail_fast(run, &key, job);
        }
        self.package_ended(run, &key, job, outcome.status);
    }

    /// `fail-fast`: a failed matrix instance cancels its siblings.
    fn fail_fast(&mut self, run: RunId, key: &str, failed: JobId) {
        let Some(ks) = self.runs.get(&run).and_then(|r| r.keys.get(key)) else {
            return;
        };
        if !ks.fail_fast {
            return;
        }
        let siblings: Vec<JobId> = ks.instances.clone().unwrap_or_default();
        for sib in siblings {
            if sib == failed {
                continue;
            }
            self.cancel_job(sib);
        }
    }

    /// Cancel one job: running ones through their token (they report back), the rest at once.
    fn cancel_job(&mut self, job: JobId) {
        let Some(rec) = self.jobs.get_mut(&job) else {
            return;
        };
        match rec.status {
            JobStatus::Leased | JobStatus::Running => rec.cancel.cancel(),
            JobStatus::Pending | JobStatus::Queued | JobStatus::Waiting => {
                rec.status = JobStatus::Cancelled;
                self.ops.push(Op::SetJobStatus {
                    job,
                    status: JobStatus::Cancelled,
                    at: now(),
                });
                if let Some(ks) = self
                    .runs
                    .get_mut(&rec.run)
                    .and_then(|r| r.keys.get_mut(&rec.key))
                {
                    ks.held.retain(|j| *j != job);
                }
                self.ended(job);
            }
            _ => {}
        }
    }

    /// Ctrl-C: nothing new starts; running jobs are cancelled and report back.
    fn cancel_all(&mut self) {
        self.cancelled = true;
        let runs: Vec<RunId> = self.runs.keys().copied().collect();
        for run in runs {
            self.cancel_run(run);
        }
        self.ready.clear();
    }

    /// Cancel one run: its running jobs through their tokens (they report back), the rest at
    /// once; undecided keys are never decided. Whether this dispatcher drives the run.
    fn cancel_run(&mut self, run_id: RunId) -> bool {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return false;
        };
        if run.status.is_terminal() {
            return true;
        }
        run.cancelled = true;
        self.touched.push(run_id);
        let ids: Vec<JobId> = run
            .keys
            .values()
            .flat_map(|ks| ks.instances.iter().flatten().copied())
            .collect();
        for id in ids {
            self.cancel_job(id);
        }
        true
    }

    /// The unfinished runs driven here.
    fn driving(&self) -> std::collections::HashSet<RunId> {
        self.runs
            .iter()
            .filter(|(_, r)| !r.status.is_terminal())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Keeps this engine's claim on the runs it drives, so that other replicas leave them
    /// alone; written beside the batch (chunks of runs per statement), each renewal period.
    ///
    /// A claim written less than a period ago is left: it has most of the lease TTL to run,
    /// and a run's row holds its context (kilobytes), so renewing every run each period
    /// rewrote a burst of new runs moments after they were written (100,000 runs held
    /// SQLite's writer for over a second). A claim is renewed when one to two periods old:
    /// with the period a quarter of the TTL at most, it never has less than half the TTL
    /// left, and a renewal that fails is tried again at the next period.
    fn renew_runs(&mut self) {
        let at = tokio::time::Instant::now();
        let period = RENEW_EVERY.min(self.lease_ttl / 4);
        // A tenth of a period's slack: ticks come a little early or late.
        let due = |r: &RunState| {
            r.claimed_at
                .is_none_or(|c| at.saturating_duration_since(c) + period / 10 >= period)
        };
        let runs: Vec<RunId> = self
            .runs
            .values_mut()
            .filter(|r| !r.status.is_terminal() && due(r))
            .map(|r| {
                r.claimed_at = Some(at);
                r.id
            })
            .collect();
        if runs.is_empty() {
            return;
        }
        let store = self.store.clone();
        let owner = self.owner.clone();
        let until = now() + self.lease_ttl;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            match store.renew_runs(&owner, &runs, until).await {
                Ok(lost) if !lost.is_empty() => tracing::warn!(
                    runs = ?lost,
                    "another engine took over runs this one drives (it failed to renew in time)"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the claim on driven runs");
                    let _ = tx.send(Msg::RenewFailed(runs));
                }
            }
        });
    }

    fn renew_leases(&mut self) {
        let at = now();
        for (id, rec) in &self.jobs {
            // A remote worker's leases last as long as its heartbeats — but for an end being
            // recorded here (the worker has stopped heartbeating it).
            if let Some(token) = rec.token
                && (rec.remote.is_none() || rec.ending)
            {
                self.ops.push(Op::RenewLease {
                    job: *id,
                    token,
                    ttl_ms: self.lease_ttl.as_millis() as i64,
                    at,
                });
            }
        }
    }

    /// Decide every job whose needs have ended, fill free slots, and end finished runs.
    fn advance_all(&mut self) {
        // In the order the runs came, as a scan of every run would take them.
        let mut run_ids = std::mem::take(&mut self.touched);
        run_ids.sort_by_key(|id| self.runs.get_index_of(id));
        run_ids.dedup();
        for run in &run_ids {
            self.decide(*run);
        }
        self.fill_slots();
        for run in run_ids {
            self.maybe_finish(run);
        }
        self.compact_payloads();
    }

    /// Packs the event payloads and shared contexts of runs whose first jobs are now
    /// decided (see [`Payload`] and [`Shared`]).
    fn compact_payloads(&mut self) {
        for id in std::mem::take(&mut self.compact) {
            let Some(run) = self.runs.get_mut(&id) else {
                continue;
            };
            let packed = match &run.event {
                Payload::Parsed(_, Some(text)) | Payload::Text(text) => Some(text.packed()),
                Payload::Parsed(v, None) => Some(kiln_store::PackedJson::of(v)),
                Payload::Packed(_) => None,
            };
            if let Some(packed) = packed {
                run.event = Payload::Packed(packed);
            }
            if let Shared::Live(base) = &run.base {
                run.base = Shared::Packed(kiln_store::PackedJson::of(base));
            }
        }
    }

    /// The aggregated result of a job key, as `needs.<key>.result` shows it.
    fn key_result(&self, run: &RunState, key: &str) -> Option<&'static str> {
        let ks = run.keys.get(key)?;
        if !ks.decided {
            return None;
        }
        let ids = ks.instances.as_ref()?;
        let mut any_failed = false;
        let mut any_cancelled = false;
        let mut all_skipped = true;
        for id in ids {
            let rec = self.jobs.get(id)?;
            if !rec.status.is_terminal() {
                return None;
            }
            match rec.status {
                JobStatus::Failure | JobStatus::TimedOut if !rec.continue_on_error => {
                    any_failed = true
                }
                JobStatus::Cancelled => any_cancelled = true,
                _ => {}
            }
            if rec.status != JobStatus::Skipped {
                all_skipped = false;
            }
        }
        Some(if any_failed {
            "failure"
        } else if any_cancelled {
            "cancelled"
        } else if all_skipped && !ids.is_empty() {
            "skipped"
        } else {
            "success"
        })
    }

    /// Decide the candidate keys whose needs have all ended; deciding may end jobs (skips),
    /// which makes their dependents candidates in turn.
    fn decide(&mut self, run_id: RunId) {
        loop {
            let Some(run) = self.runs.get_mut(&run_id) else {
                return;
            };
            if run.status.is_terminal() || run.candidates.is_empty() {
                return;
            }
            let mut cands = std::mem::take(&mut run.candidates);
            cands.sort_by_key(|k| run.keys.get_index_of(k));
            cands.dedup();
            let run = &self.runs[&run_id];
            let mut decisions = Vec::new();
            for key in cands {
                let Some(ks) = run.keys.get(&key) else {
                    continue;
                };
                if ks.decided {
                    continue;
                }
                let Some(job) = run.wf.jobs.get(&key) else {
                    continue;
                };
                let mut results = Vec::new();
                let mut ready = true;
                for need in &job.needs {
                    match self.key_result(run, need) {
                        Some(r) => results.push((need.clone(), r)),
                        None => {
                            ready = false;
                            break;
                        }
                    }
                }
                if ready {
                    decisions.push((key, results));
                }
            }
            for (key, results) in decisions {
                self.decide_key(run_id, &key, &results);
            }
        }
    }

    /// All of `key`'s needs have ended: expand its matrix if that waited on them, then queue
    /// or skip each instance by its `if`.
    fn decide_key(&mut self, run_id: RunId, key: &str, results: &[(String, &'static str)]) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        let wf = run.wf.clone();
        let Some(job) = wf.jobs.get(key) else { return };
        let cancelled = run.cancelled;

        let needs = self.needs_context(run, &job.needs);
        let ancestor_failed = self.ancestor_failed(run, key);
        let all_needs_succeeded = results.iter().all(|(_, r)| *r == "success");
        // The event payload is copied in only when the job's own fields could read it.
        let mut ctx = if run.spec.packages.contains_key(key) || job_reads_github(job) {
            run.contexts()
        } else {
            run.base.get()
        };
        ctx.insert("needs".into(), Value::Object(needs));

        let scope = Scope {
            contexts: &ctx,
            state: ExprState {
                failed: ancestor_failed,
                cancelled,
            },
            hasher: None,
        };
        let pkg_set = run.spec.packages.get(key).cloned();
        // A package tree goes on past a failure: only what waits on it is skipped.
        let fail_fast = pkg_set.is_none() && plan::fail_fast(job, &ctx);
        let max_parallel = package_slots(job).or_else(|| plan::max_parallel(job, &ctx));

        // Expand a matrix that had to wait for its needs.
        let mut newly_open = 0usize;
        let instances = match run.keys.get(key).and_then(|k| k.instances.clone()) {
            Some(ids) => ids,
            None => {
                let expanded = match &pkg_set {
                    Some(set) => package_instances(key, job, set, &ctx),
                    None => plan::expand_job(job, &ctx),
                };
                let (new_jobs, ids) = match expanded {
                    Ok(list) => {
                        let total = list.len();
                        let mut new_jobs = Vec::new();
                        let mut ids = Vec::new();
                        for (index, inst) in list.into_iter().enumerate() {
                            let id = JobId::new();
                            self.seq += 1;
                            new_jobs.push(NewJob {
                                id,
                                key: key.to_owned(),
                                name: inst.name.clone(),
                                matrix: inst.matrix.clone(),
                                needs: job.needs.clone(),
                                status: JobStatus::Pending,
                                max_attempts: self.max_attempts,
                                labels: inst.labels.clone(),
                            });
                            let mut rec = JobRec::new(
                                run_id,
                                key.to_owned(),
                                inst.name,
                                inst.matrix,
                                index,
                                total,
                                self.seq,
                            );
                            rec.labels = inst.labels;
                            self.jobs.insert(id, rec);
                            ids.push(id);
                        }
                        (new_jobs, ids)
                    }
                    Err(msg) => {
                        // The matrix cannot be expanded (bad fromJSON, empty vector, …): one
                        // failed job that says why, so the run ends and tells the user.
                        let id = JobId::new();
                        self.seq += 1;
                        let name = job.name.clone().unwrap_or_else(|| key.to_owned());
                        new_jobs_failed(
                            &mut self.ops,
                            run_id,
                            id,
                            key,
                            &name,
                            &job.needs,
                            self.max_attempts,
                        );
                        let mut rec = JobRec::new(
                            run_id,
                            key.to_owned(),
                            name.clone(),
                            Map::new(),
                            0,
                            1,
                            self.seq,
                        );
                        rec.status = JobStatus::Failure;
                        self.jobs.insert(id, rec);
                        self.after.push(Progress::JobFinished {
                            run: run_id,
                            job: id,
                            name,
                            status: JobStatus::Failure,
                            elapsed: Duration::ZERO,
                            error: Some(format!(
                                "{}:{}: jobs.{key}.strategy.matrix: {msg}",
                                wf.file, job.pos.line
                            )),
                        });
                        if let Some(r) = self.runs.get_mut(&run_id) {
                            if let Some(ks) = r.keys.get_mut(key) {
                                ks.instances = Some(vec![id]);
                                ks.decided = true;
                            }
                            r.undecided = r.undecided.saturating_sub(1);
                            if let Some(deps) = r.dependents.get(key) {
                                r.candidates.extend(deps.iter().cloned());
                            }
                        }
                        return;
                    }
                };
                newly_open = new_jobs.len();
                if !new_jobs.is_empty() {
                    self.ops.push(Op::AddJobs {
                        run: run_id,
                        jobs: new_jobs,
                        at: now(),
                    });
                }
                ids
            }
        };

        // The job's `if`. Without a status function GitHub requires every need to have
        // succeeded (a skipped need skips its dependents too).
        let condition = job
            .condition
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let uses_status = condition.is_some_and(condition_uses_status);
        let verdict: Result<bool, String> = if !uses_status && (cancelled || !all_needs_succeeded) {
            Ok(false)
        } else {
            match condition {
                None => Ok(!ancestor_failed && !cancelled),
                Some(c) => expr::eval_condition(c, &scope).map_err(|e| {
                    format!("{}:{}: jobs.{key}.if: {}", wf.file, job.pos.line, e.message)
                }),
            }
        };

        let priority = run.keys.get(key).map(|k| k.priority).unwrap_or(0);
        let mut queued = 0usize;
        let mut held = Vec::new();
        let mut ended = Vec::new();
        // A package tree that runs: its instances are queued by the package schedule below
        // as their dependencies succeed, not all at once.
        let no_instances = instances.is_empty();
        let pkg = match (&pkg_set, &verdict) {
            (Some(set), Ok(true)) => Some(self.package_state(set.clone(), &instances)),
            _ => None,
        };
        for id in instances.iter().filter(|_| pkg.is_none()) {
            let Some(rec) = self.jobs.get_mut(id) else {
                continue;
            };
            if rec.status.is_terminal() {
                continue;
            }
            match &verdict {
                Ok(true) => {
                    // One made queued with its run (see `born_queued`) has no transition to
                    // record.
                    if rec.status != JobStatus::Queued {
                        rec.status = JobStatus::Queued;
                        self.ops.push(Op::SetJobStatus {
                            job: *id,
                            status: JobStatus::Queued,
                            at: now(),
                        });
                    }
                    if max_parallel.is_some_and(|m| queued >= m.max(1)) {
                        held.push(*id);
                    } else {
                        self.ready.push(Ready {
                            priority,
                            seq: rec.seq,
                            job: *id,
                        });
                        // Not a package key's (those are queued by their schedule below).
                        if self.offer {
                            self.offers.push(*id);
                        }
                    }
                    queued += 1;
                }
                Ok(false) => {
                    rec.status = JobStatus::Skipped;
                    ended.push(*id);
                    self.ops.push(Op::SetJobStatus {
                        job: *id,
                        status: JobStatus::Skipped,
                        at: now(),
                    });
                    self.after.push(Progress::JobSkipped {
                        run: run_id,
                        job: *id,
                        name: rec.name.clone(),
                    });
                }
                Err(msg) => {
                    rec.status = JobStatus::Failure;
                    ended.push(*id);
                    new_job_failed_status(&mut self.ops, *id);
                    self.after.push(Progress::JobFinished {
                        run: run_id,
                        job: *id,
                        name: rec.name.clone(),
                        status: JobStatus::Failure,
                        elapsed: Duration::ZERO,
                        error: Some(msg.clone()),
                    });
                }
            }
        }
        if let Some(r) = self.runs.get_mut(&run_id) {
            if let Some(ks) = r.keys.get_mut(key) {
                ks.instances = Some(instances);
                ks.decided = true;
                ks.ancestor_failed = ancestor_failed;
                ks.fail_fast = fail_fast;
                ks.max_parallel = max_parallel;
                ks.held = held;
                ks.pkg = pkg;
            }
            r.undecided = r.undecided.saturating_sub(1);
            r.open += newly_open;
            if no_instances {
                // Nothing will end to wake its dependents (a package tree all cached).
                if let Some(deps) = r.dependents.get(key) {
                    r.candidates.extend(deps.iter().cloned());
                }
            }
        }
        for id in ended {
            self.ended(id);
        }
        self.pump_packages(run_id, key);
    }

    /// The package state of a `packages:` key about to run: its instances mapped to their
    /// packages, a fresh package schedule.
    fn package_state(&self, set: Arc<PackageSet>, instances: &[JobId]) -> PkgState {
        let mut job_of = HashMap::with_capacity(instances.len());
        let mut pkg_of = HashMap::with_capacity(instances.len());
        for id in instances {
            if let Some(p) = self.jobs.get(id).and_then(|r| set.package_of(&r.matrix)) {
                job_of.insert(p, *id);
                pkg_of.insert(*id, p);
            }
        }
        PkgState {
            schedule: set.schedule(),
            set,
            job_of,
            pkg_of,
            in_flight: 0,
        }
    }

    /// Queues the package jobs of `key` whose dependencies have all succeeded, highest
    /// critical path first, up to the key's `slots`; cached packages (no job) and packages
    /// whose jobs ended earlier (a resumed run) are passed through the schedule at once.
    fn pump_packages(&mut self, run_id: RunId, key: &str) {
        let mut skipped: Vec<(PackageId, PackageId)> = Vec::new();
        let mut queued = Vec::new();
        {
            let Some(run) = self.runs.get_mut(&run_id) else {
                return;
            };
            if run.cancelled {
                return;
            }
            let Some(ks) = run.keys.get_mut(key) else {
                return;
            };
            let max = ks.max_parallel;
            let base = ks.priority;
            let Some(pk) = ks.pkg.as_mut() else { return };
            loop {
                if max.is_some_and(|m| pk.in_flight >= m.max(1)) {
                    break;
                }
                let Some(p) = pk.schedule.start_next() else {
                    break;
                };
                let Some(rec) = pk.job_of.get(&p).and_then(|j| self.jobs.get_mut(j)) else {
                    // Cached: its stored output serves its dependents.
                    pk.set.note_cached(p);
                    pk.schedule.finish(p, PackageOutcome::Cached);
                    continue;
                };
                let job = pk.job_of[&p];
                match rec.status {
                    JobStatus::Success => {
                        pk.schedule.finish(p, PackageOutcome::Built);
                    }
                    s if s.is_terminal() => {
                        for w in pk.schedule.finish(p, PackageOutcome::Failed) {
                            skipped.push((w, p));
                        }
                    }
                    JobStatus::Pending => {
                        rec.status = JobStatus::Queued;
                        self.ops.push(Op::SetJobStatus {
                            job,
                            status: JobStatus::Queued,
                            at: now(),
                        });
                        let prio = u32::try_from(pk.set.priority(p)).unwrap_or(u32::MAX);
                        self.ready.push(Ready {
                            priority: base.saturating_add(prio),
                            seq: rec.seq,
                            job,
                        });
                        pk.in_flight += 1;
                        queued.push(job);
                    }
                    // Queued again by a resume: already in the ready queue.
                    _ => pk.in_flight += 1,
                }
            }
        }
        // Remote workers may build them too (through the shared queue, on PostgreSQL).
        for job in queued {
            self.offer(job);
        }
        self.skip_packages(run_id, key, skipped);
    }

    /// Skips the jobs of packages whose dependency `cause` failed (each `(package, cause)`).
    fn skip_packages(&mut self, run_id: RunId, key: &str, skipped: Vec<(PackageId, PackageId)>) {
        if skipped.is_empty() {
            return;
        }
        let Some(pk) = self
            .runs
            .get(&run_id)
            .and_then(|r| r.keys.get(key))
            .and_then(|k| k.pkg.as_ref())
        else {
            return;
        };
        let set = pk.set.clone();
        let jobs: Vec<(PackageId, PackageId, Option<JobId>)> = skipped
            .into_iter()
            .map(|(p, cause)| (p, cause, pk.job_of.get(&p).copied()))
            .collect();
        for (p, cause, job) in jobs {
            set.note_skipped(p, cause);
            let Some(job) = job else { continue };
            let Some(rec) = self.jobs.get_mut(&job) else {
                continue;
            };
            if rec.status.is_terminal() {
                continue;
            }
            rec.status = JobStatus::Skipped;
            self.ops.push(Op::SetJobStatus {
                job,
                status: JobStatus::Skipped,
                at: now(),
            });
            self.after.push(Progress::JobSkipped {
                run: run_id,
                job,
                name: rec.name.clone(),
            });
            self.ended(job);
        }
    }

    /// A package job ended: release what waited on it, or skip it all when it failed.
    fn package_ended(&mut self, run_id: RunId, key: &str, job: JobId, status: JobStatus) {
        let skipped = {
            let Some(pk) = self
                .runs
                .get_mut(&run_id)
                .and_then(|r| r.keys.get_mut(key))
                .and_then(|k| k.pkg.as_mut())
            else {
                return;
            };
            let Some(&p) = pk.pkg_of.get(&job) else {
                return;
            };
            pk.in_flight = pk.in_flight.saturating_sub(1);
            if pk.schedule.state(p) != kiln_core::packages::State::Running {
                return;
            }
            let outcome = if status == JobStatus::Success {
                PackageOutcome::Built
            } else {
                PackageOutcome::Failed
            };
            pk.schedule
                .finish(p, outcome)
                .into_iter()
                .map(|w| (w, p))
                .collect()
        };
        self.skip_packages(run_id, key, skipped);
        self.pump_packages(run_id, key);
    }

    /// Whether any job `key` depends on, directly or not, failed. Its needs are decided (and
    /// ended) by now, so their own flags are final.
    fn ancestor_failed(&self, run: &RunState, key: &str) -> bool {
        let Some(job) = run.wf.jobs.get(key) else {
            return false;
        };
        job.needs.iter().any(|need| {
            run.keys.get(need).is_some_and(|k| k.ancestor_failed)
                || self.key_result(run, need) == Some("failure")
        })
    }

    /// Lease ready jobs onto free slots (committed before their executors start).
    fn fill_slots(&mut self) {
        if self.waiting() > self.slots * REFILL_BELOW {
            return;
        }
        while self.busy < self.slots * (1 + LOOKAHEAD) && !self.cancelled && self.draining.is_none()
        {
            let Some(next) = self.ready.pop() else { break };
            let Some(rec) = self.jobs.get(&next.job) else {
                continue;
            };
            if rec.status != JobStatus::Queued {
                continue;
            }
            let big = self
                .runs
                .get(&rec.run)
                .is_some_and(|r| r.spec.snapshot.files.len() > LOOKAHEAD_MAX_FILES);
            if big && self.busy >= self.slots {
                // No slot is free and this job would wait holding a copy of a big project.
                self.ready.push(next);
                break;
            }
            let Some(rec) = self.jobs.get_mut(&next.job) else {
                continue;
            };
            rec.status = JobStatus::Leased;
            self.busy += 1;
            let run = rec.run;
            self.ops.push(Op::GrantLease {
                job: next.job,
                owner: self.owner.clone(),
                ttl_ms: self.lease_ttl.as_millis() as i64,
                at: now(),
            });
            self.mark_run_running(run);
        }
    }

    /// A job of a queued run was leased: the run is running.
    fn mark_run_running(&mut self, run: RunId) {
        if let Some(r) = self.runs.get_mut(&run)
            && r.status == RunStatus::Queued
        {
            r.status = RunStatus::Running;
            self.ops.push(Op::SetRunStatus {
                run,
                status: RunStatus::Running,
                at: now(),
            });
        }
    }

    /// End the run when every job has ended and every key was decided.
    fn maybe_finish(&mut self, run_id: RunId) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        if run.status.is_terminal() || run.open > 0 || (run.undecided > 0 && !run.cancelled) {
            return;
        }
        // The counters say every job has ended: only the verdict is left to compute.
        let mut failed = false;
        let mut any_cancelled = false;
        for id in run
            .keys
            .values()
            .flat_map(|ks| ks.instances.iter().flatten())
        {
            let Some(rec) = self.jobs.get(id) else {
                continue;
            };
            match rec.status {
                JobStatus::Failure | JobStatus::TimedOut if !rec.continue_on_error => failed = true,
                JobStatus::Cancelled => any_cancelled = true,
                _ => {}
            }
        }
        let status = if run.cancelled {
            RunStatus::Cancelled
        } else if failed || any_cancelled {
            RunStatus::Failure
        } else {
            RunStatus::Success
        };
        if let Some(r) = self.runs.get_mut(&run_id) {
            r.status = status;
            // Package trees' sessions end with the run (closed at the next flush).
            self.closing.extend(r.spec.packages.values().cloned());
        }
        self.ops.push(Op::SetRunStatus {
            run: run_id,
            status,
            at: now(),
        });
        self.after.push(Progress::RunFinished {
            run: run_id,
            status,
        });
    }

    /// Start an executor for a granted lease.
    /// What any executor needs to run `job`, besides where it runs: its definition, its
    /// contexts and environment (no folder named yet: see [`kiln_exec::place_job`]) and the
    /// values to mask. `None`: the job or its run is not driven here.
    fn job_inputs(&self, job: JobId) -> Option<JobInputs> {
        let rec = self.jobs.get(&job)?;
        let run = self.runs.get(&rec.run)?;
        let def = run.wf.jobs.get(&rec.key)?;
        let ks = run.keys.get(&rec.key);
        let mut contexts = run.contexts();
        if let Some(Value::Object(gh)) = contexts.get_mut("github") {
            gh.insert("job".into(), Value::String(rec.key.clone()));
        }
        contexts.insert("matrix".into(), Value::Object(rec.matrix.clone()));
        let needs = self.needs_context(run, &def.needs);
        contexts.insert("needs".into(), Value::Object(needs));
        contexts.insert(
            "strategy".into(),
            json!({
                "fail-fast": ks.map(|k| k.fail_fast).unwrap_or(true),
                "job-index": rec.index,
                "job-total": rec.total,
                "max-parallel": ks.and_then(|k| k.max_parallel).unwrap_or(rec.total),
            }),
        );
        contexts.insert(
            "job".into(),
            json!({"status": "success", "container": {}, "services": {}}),
        );
        let t = &run.spec.trigger;
        let ref_name = t
            .git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| t.git_ref.strip_prefix("refs/tags/"))
            .unwrap_or(&t.git_ref)
            .to_owned();
        let env = vec![
            ("CI".to_owned(), "true".to_owned()),
            ("GITHUB_ACTIONS".to_owned(), "true".to_owned()),
            ("KILN".to_owned(), "true".to_owned()),
            ("GITHUB_SHA".to_owned(), t.sha.clone()),
            ("GITHUB_REF".to_owned(), t.git_ref.clone()),
            ("GITHUB_REF_NAME".to_owned(), ref_name),
            (
                "GITHUB_REF_TYPE".to_owned(),
                if t.git_ref.starts_with("refs/tags/") {
                    "tag"
                } else {
                    "branch"
                }
                .to_owned(),
            ),
            ("GITHUB_EVENT_NAME".to_owned(), t.event.clone()),
            ("GITHUB_REPOSITORY".to_owned(), t.repository.clone()),
            (
                "GITHUB_REPOSITORY_OWNER".to_owned(),
                t.repository.split('/').next().unwrap_or("").to_owned(),
            ),
            ("GITHUB_RUN_ID".to_owned(), run.id.to_string()),
            ("GITHUB_RUN_NUMBER".to_owned(), run.number.to_string()),
            ("GITHUB_RUN_ATTEMPT".to_owned(), run.attempt.to_string()),
            ("GITHUB_JOB".to_owned(), rec.key.clone()),
            (
                "GITHUB_WORKFLOW".to_owned(),
                run.wf.display_name().to_owned(),
            ),
            (
                "GITHUB_WORKFLOW_REF".to_owned(),
                format!("{}/{}@{}", t.repository, run.wf.file, t.git_ref),
            ),
            (
                "GITHUB_ACTOR".to_owned(),
                std::env::var("USER").unwrap_or_else(|_| "kiln".to_owned()),
            ),
            ("GITHUB_SERVER_URL".to_owned(), String::new()),
            ("GITHUB_API_URL".to_owned(), String::new()),
            ("KILN_RUN_ID".to_owned(), run.id.to_string()),
            ("KILN_JOB_ID".to_owned(), job.to_string()),
        ];
        Some(JobInputs {
            def: def.clone(),
            contexts,
            env,
            masks: run.spec.secrets.values().cloned().collect(),
        })
    }

    fn spawn(&mut self, job: JobId, token: i64) {
        let run_id = {
            let Some(rec) = self.jobs.get_mut(&job) else {
                return;
            };
            rec.token = Some(token);
            rec.run
        };
        self.write_event_file(run_id);
        let Some(rec) = self.jobs.get(&job) else {
            return;
        };
        let Some(run) = self.runs.get(&rec.run) else {
            return;
        };

        // There is a folder per lease, so a leased job always finds a free one.
        let slot = self.free.pop().unwrap_or_else(|| Slot {
            dir: self.work_dir.join(format!("slot-extra-{job}")),
            written: Written::new(),
            last_run: None,
        });
        if let Some(set) = run.spec.packages.get(&rec.key)
            && let Some(p) = set.package_of(&rec.matrix)
        {
            let set = set.clone();
            let permits = self.permits.clone();
            let tx = self.tx.clone();
            let cancel = rec.cancel.clone();
            tokio::spawn(execute_package(job, set, p, slot, permits, tx, cancel));
            return;
        }
        let Some(JobInputs {
            def,
            mut contexts,
            mut env,
            masks,
        }) = self.job_inputs(job)
        else {
            self.free.push(slot);
            return;
        };
        let dir = slot.dir.clone();
        let workspace = dir.join("workspace");
        let temp = dir.join("temp");
        let ws_str = workspace.to_string_lossy().into_owned();
        let temp_str = temp.to_string_lossy().into_owned();
        let event_str = run.event_path.to_string_lossy().into_owned();
        kiln_exec::place_job(
            &mut contexts,
            &mut env,
            kiln_exec::Place {
                workspace: &ws_str,
                temp: &temp_str,
                event_path: &event_str,
                runner_name: "kiln",
            },
        );
        let spec = JobSpec {
            job: def,
            workflow_env: run.wf.env.clone(),
            workflow_defaults: run.wf.defaults.clone(),
            contexts,
            workspace: workspace.clone(),
            temp_dir: temp.clone(),
            base_env: env,
            inherit_env: true,
            masks,
            artifacts: Some(Arc::new(crate::artifacts::StoreHost {
                store: self.store.clone(),
                objects: self.artifacts.clone(),
                run: rec.run,
                job,
            })),
        };
        let snapshot = run.spec.snapshot.clone();
        let permits = self.permits.clone();
        let tx = self.tx.clone();
        let cancel = rec.cancel.clone();
        let spare = Slot {
            dir: self.work_dir.join(format!("slot-after-{job}")),
            written: Written::new(),
            last_run: None,
        };
        let run_id = rec.run;
        tokio::spawn(async move {
            let inner_tx = tx.clone();
            let inner = tokio::spawn(async move {
                execute(
                    job, run_id, spec, snapshot, slot, permits, &inner_tx, cancel,
                )
                .await
            });
            // A panicking executor must still end its job, or the run would never finish;
            // its slot folder is abandoned for a new one.
            let (outcome, slot) = inner.await.unwrap_or_else(|e| {
                let outcome = JobOutcome {
                    status: JobStatus::Failure,
                    outputs: Map::new(),
                    continue_on_error: false,
                    error: Some(format!("kiln's executor failed: {e}")),
                };
                (outcome, spare)
            });
            let _ = tx.send(Msg::Done(job, Box::new(outcome), slot));
        });
    }

    fn needs_context(&self, run: &RunState, needs: &[String]) -> Map<String, Value> {
        let mut out = Map::new();
        for need in needs {
            let mut outputs = Map::new();
            if let Some(ids) = run.keys.get(need).and_then(|k| k.instances.as_ref()) {
                for id in ids {
                    if let Some(rec) = self.jobs.get(id) {
                        for (k, v) in &rec.outputs {
                            outputs.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            let result = self.key_result(run, need).unwrap_or("success");
            out.insert(need.clone(), json!({"result": result, "outputs": outputs}));
        }
        out
    }
}

fn condition_uses_status(cond: &str) -> bool {
    let inner = cond
        .trim()
        .strip_prefix("${{")
        .and_then(|s| s.strip_suffix("}}"))
        .unwrap_or(cond);
    expr::parse(inner).is_ok_and(|e| e.calls_status_function())
}

fn new_jobs_failed(
    ops: &mut Vec<Op>,
    run: RunId,
    id: JobId,
    key: &str,
    name: &str,
    needs: &[String],
    max_attempts: i64,
) {
    ops.push(Op::AddJobs {
        run,
        jobs: vec![NewJob {
            id,
            key: key.to_owned(),
            name: name.to_owned(),
            matrix: Map::new(),
            needs: needs.to_vec(),
            status: JobStatus::Failure,
            max_attempts,
            labels: Vec::new(),
        }],
        at: now(),
    });
}

/// A job that never ran but failed (a bad `if`): record it as failed without a lease.
fn new_job_failed_status(ops: &mut Vec<Op>, job: JobId) {
    ops.push(Op::SetJobStatus {
        job,
        status: JobStatus::Failure,
        at: now(),
    });
}

impl JobRec {
    /// Records who holds the job now: the remote worker `owner` under lease `token`, or nobody
    /// (`None`). What an earlier holder ran, uploaded or reported the end of is forgotten.
    fn held_by(&mut self, holder: Option<(String, i64)>) {
        let (remote, token) =
            holder.map_or((None, None), |(owner, token)| (Some(owner), Some(token)));
        self.remote = remote;
        self.token = token;
        self.ending = false;
        self.parts = None;
        self.started = None;
        self.log_offset = 0;
    }

    fn new(
        run: RunId,
        key: String,
        name: String,
        matrix: Map<String, Value>,
        index: usize,
        total: usize,
        seq: u64,
    ) -> Self {
        Self {
            run,
            key,
            name,
            matrix,
            index,
            total,
            status: JobStatus::Pending,
            token: None,
            outputs: Map::new(),
            continue_on_error: false,
            cancel: CancellationToken::new(),
            log_offset: 0,
            started: None,
            seq,
            released: false,
            attempts: 0,
            labels: Vec::new(),
            remote: None,
            parts: None,
            ending: false,
        }
    }
}

/// One executor: refresh the folder's workspace, wait for a run permit, run the job's steps,
/// forward what they report.
#[expect(
    clippy::too_many_arguments,
    reason = "one executor's whole world, passed once"
)]
async fn execute(
    job: JobId,
    run: RunId,
    spec: JobSpec,
    snapshot: Arc<Snapshot>,
    mut slot: Slot,
    permits: Arc<tokio::sync::Semaphore>,
    tx: &mpsc::UnboundedSender<Msg>,
    cancel: CancellationToken,
) -> (JobOutcome, Slot) {
    let ws = spec.workspace.clone();
    let temp = spec.temp_dir.clone();
    let mut written = std::mem::take(&mut slot.written);
    // A folder another run used last is emptied for good; within one run, kiln's own step
    // files are left for the executor to empty or overwrite as each step needs them.
    let same_run = slot.last_run == Some(run);
    slot.last_run = Some(run);
    let prepared = tokio::task::spawn_blocking(move || -> (std::io::Result<()>, Written) {
        let result = (|| {
            snapshot.refresh(&ws, &mut written)?;
            reset_temp(&temp, same_run)
        })();
        (result, written)
    })
    .await;
    let failure = |error: String| JobOutcome {
        status: JobStatus::Failure,
        outputs: Map::new(),
        continue_on_error: false,
        error: Some(error),
    };
    let outcome = match prepared {
        Ok((Ok(()), written)) => {
            slot.written = written;
            // Permits are handed out in the order executors ask, which is lease order.
            let permit = match run_permit(permits, &cancel).await {
                Ok(p) => p,
                Err(cancelled) => return (cancelled, slot),
            };
            let _ = tx.send(Msg::Started(job));
            let (etx, mut erx) = mpsc::channel::<ExecEvent>(256);
            let forward = async {
                while let Some(ev) = erx.recv().await {
                    let _ = tx.send(Msg::Exec(job, ev));
                }
            };
            let (outcome, ()) = tokio::join!(
                async move {
                    let outcome = kiln_exec::run_job(spec, etx, cancel).await;
                    // The next prepared executor may start while this one reports.
                    drop(permit);
                    outcome
                },
                forward
            );
            outcome
        }
        Ok((Err(e), _)) => failure(format!(
            "failed to prepare the job's workspace in {}: {e}",
            slot.dir.display()
        )),
        Err(e) => failure(format!("failed to prepare the job's workspace: {e}")),
    };
    (outcome, slot)
}

/// A run permit, or — when the job is cancelled while it waits — its `cancelled` outcome.
async fn run_permit(
    permits: Arc<tokio::sync::Semaphore>,
    cancel: &CancellationToken,
) -> Result<tokio::sync::OwnedSemaphorePermit, JobOutcome> {
    let permit = tokio::select! {
        p = permits.acquire_owned() => p.ok(),
        () = cancel.cancelled() => None,
    };
    permit.ok_or(JobOutcome {
        status: JobStatus::Cancelled,
        outputs: Map::new(),
        continue_on_error: false,
        error: None,
    })
}

/// One package job's executor: wait for a run permit, build the package (its slot folder is
/// not used: a package builds in its own scratch copy), report its log as it comes.
async fn execute_package(
    job: JobId,
    set: Arc<PackageSet>,
    p: PackageId,
    slot: Slot,
    permits: Arc<tokio::sync::Semaphore>,
    tx: mpsc::UnboundedSender<Msg>,
    cancel: CancellationToken,
) {
    let permit = match run_permit(permits, &cancel).await {
        Ok(p) => p,
        Err(cancelled) => {
            let _ = tx.send(Msg::Done(job, Box::new(cancelled), slot));
            return;
        }
    };
    let _ = tx.send(Msg::Started(job));
    let (log, mut lines) = mpsc::unbounded_channel::<Vec<u8>>();
    let forward = async {
        while let Some(data) = lines.recv().await {
            let _ = tx.send(Msg::Exec(job, ExecEvent::Log { index: 0, data }));
        }
    };
    let build = async move {
        let ended = set.build(p, cancel, log).await;
        drop(permit);
        ended
    };
    let ((status, outputs, reason), ()) = tokio::join!(build, forward);
    let outcome = package_outcome(status, outputs, reason);
    let _ = tx.send(Msg::Done(job, Box::new(outcome), slot));
}

/// A package job's end as its build's status, outputs and failure reason give it.
fn package_outcome(
    status: kiln_store::PackageBuildStatus,
    outputs: Map<String, Value>,
    reason: Option<String>,
) -> JobOutcome {
    let status = match status {
        kiln_store::PackageBuildStatus::Success => JobStatus::Success,
        kiln_store::PackageBuildStatus::Cancelled => JobStatus::Cancelled,
        _ => JobStatus::Failure,
    };
    JobOutcome {
        status,
        outputs,
        continue_on_error: false,
        error: if status == JobStatus::Failure {
            reason
        } else {
            None
        },
    }
}

/// A `packages:` job's `slots`: at most this many of its packages build at once.
fn package_slots(job: &kiln_core::workflow::Job) -> Option<usize> {
    job.packages
        .as_ref()
        .and_then(|p| p.slots)
        .map(|n| n as usize)
}

/// The instances of a `packages:` key: one per package to build, named after it.
fn package_instances(
    key: &str,
    job: &kiln_core::workflow::Job,
    set: &PackageSet,
    ctx: &Map<String, Value>,
) -> Result<Vec<JobInstance>, String> {
    let base = job
        .name
        .as_deref()
        .filter(|n| !n.contains("${{"))
        .unwrap_or(key);
    set.to_build()
        .into_iter()
        .map(|(p, matrix)| {
            Ok(JobInstance {
                name: format!("{base} ({})", set.tree().origin(p)),
                labels: plan::runs_on_labels(job, &matrix, ctx)?,
                matrix,
            })
        })
        .collect()
}

/// Empty a slot's temp folder for the next job. Files are truncated rather than deleted (the
/// next job writes the same names, and an inode reused is far cheaper than a new one);
/// folders the last job made are removed. With `same_run`, kiln's own step files are kept
/// (the executor empties or overwrites each before its step) — never across runs, whose
/// scripts may hold other secrets. Files already empty are left alone: truncating one still
/// costs a journal transaction.
fn reset_temp(temp: &std::path::Path, same_run: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(temp)?;
    for entry in std::fs::read_dir(temp)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else if ty.is_file() {
            if same_run
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(kiln_exec::is_step_file)
            {
                continue;
            }
            if entry.metadata()?.len() > 0 {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(entry.path())?
                    .set_len(0)?;
            }
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The next command, or never when there is no command channel (the `select!` branch is
/// disabled then anyway).
async fn next_command(commands: &mut Option<mpsc::UnboundedReceiver<Command>>) -> Option<Command> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
