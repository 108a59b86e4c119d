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
    /// The engine that drives the run, and until when (it renews that while it runs);
    /// `None`: any engine may take the run over.
    pub driver: Option<Driver>,
    /// What the trigger gave besides the columns (`runs.context`).
    pub context: RunContext,
}

/// What a run was triggered with beyond its event name, ref, commit and inputs: read back
/// whenever an engine drives the run on (after a restart, on a replica taking over, for a
/// retry), so its jobs see the same `github` context as its first attempt did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunContext {
    /// The event payload (`github.event`) as JSON text; `None`: kiln made one up from the
    /// trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadText>,
    /// `github` fields laid over the ones kiln makes from the trigger (a webhook's actor,
    /// head and base refs, …).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub github: Map<String, Value>,
}

impl RunContext {
    /// Nothing beyond the columns: stored as NULL.
    pub fn is_empty(&self) -> bool {
        self.payload.is_none() && self.github.is_empty()
    }

    /// The context as stored ([`StoredContext`]). The payload's text goes in as it is: a
    /// webhook's payload is kilobytes of JSON, and serialising it again (in the write
    /// transaction, which every webhook's acknowledgement waits for) was most of recording
    /// its run. A payload that is a webhook delivery's stored body
    /// ([`PayloadText::of_delivery`]) is not copied: the delivery's id stands for it.
    pub(crate) fn to_json(&self) -> String {
        let github = (!self.github.is_empty()).then(|| crate::backend::json_text(&self.github));
        let delivery = self
            .payload
            .as_ref()
            .and_then(|p| p.delivery.as_deref())
            .map(|id| crate::backend::json_text(&id));
        let payload = self.payload.as_ref().map(PayloadText::as_str);
        let mut out = String::with_capacity(
            payload.map_or(0, str::len) + github.as_ref().map_or(0, String::len) + 24,
        );
        out.push('{');
        if let Some(delivery) = &delivery {
            out.push_str("\"payload_of\":");
            out.push_str(delivery);
        } else if let Some(payload) = payload {
            out.push_str("\"payload\":");
            out.push_str(payload);
        }
        if let Some(github) = &github {
            if payload.is_some() {
                out.push(',');
            }
            out.push_str("\"github\":");
            out.push_str(github);
        }
        out.push('}');
        out
    }
}

/// A run's context as [`RunContext::to_json`] stores it: the payload itself, or the id of
/// the webhook delivery whose stored body it is (`delivery_payloads`; read back with it).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct StoredContext {
    #[serde(default)]
    pub payload: Option<PayloadText>,
    #[serde(default)]
    pub payload_of: Option<String>,
    #[serde(default)]
    pub github: Map<String, Value>,
}

/// Contexts shorter than this are stored as text: compressing them gains too little.
const PACK_FROM: usize = 512;

/// A run's context as the database keeps it: `(runs.context, runs.context_packed)`, the
/// text, or when that is smaller its LZ4 block with the text's length first (at most one
/// is set). A webhook's context is its payload: stored compressed, its run's row no
/// longer spills into overflow pages, and the run-creating commit writes a quarter of it.
pub(crate) fn pack_context(text: String) -> (Option<String>, Option<Vec<u8>>) {
    if text.len() < PACK_FROM {
        return (Some(text), None);
    }
    let packed = PackedJson::pack(&text).into_bytes();
    if packed.len() < text.len() {
        (None, Some(packed))
    } else {
        (Some(text), None)
    }
}

/// The context text [`pack_context`] stored, from the two columns; `None`: there is none.
/// `what` names the row for an error.
pub(crate) fn unpack_context(
    text: Option<String>,
    packed: Option<Vec<u8>>,
    what: &dyn std::fmt::Display,
) -> Result<Option<String>, crate::StoreError> {
    let Some(packed) = packed else {
        return Ok(text);
    };
    let decode = |detail: String| crate::StoreError::Decode {
        table: "runs",
        column: "context_packed",
        detail: format!("{what}: {detail}"),
    };
    let bytes = lz4_flex::block::decompress_size_prepended(&packed)
        .map_err(|e| decode(format!("does not decompress: {e}")))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| decode(format!("is not UTF-8 text: {e}")))
}

/// A JSON value kept as its text: made once by whoever has the value, shared (not copied)
/// by the run's copies, stored as it is, and written out as it is. It may come with the
/// text packed already (a webhook's body, as the intake journal packed it), and may be a
/// webhook delivery's body as the store keeps it, which a run then stores by reference.
#[derive(Clone, Debug)]
pub struct PayloadText {
    text: std::sync::Arc<str>,
    packed: Option<std::sync::Arc<PackedJson>>,
    /// The webhook delivery whose stored body this is, byte for byte.
    delivery: Option<std::sync::Arc<str>>,
}

impl PartialEq for PayloadText {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for PayloadText {}

impl PayloadText {
    /// `value`'s compact JSON text.
    pub fn of(value: &Value) -> Self {
        Self::of_json_text(&serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned()))
    }

    /// `text` as it is, which the caller has parsed as JSON already (a webhook's body): it
    /// is stored and written out unchanged, whitespace and all.
    pub fn of_json_text(text: &str) -> Self {
        PayloadText {
            text: text.into(),
            packed: None,
            delivery: None,
        }
    }

    /// The same text, with `packed` as its packed form (which the caller made of it).
    pub fn with_packed(self, packed: Option<PackedJson>) -> Self {
        PayloadText {
            packed: packed.map(std::sync::Arc::new),
            ..self
        }
    }

    /// The same text, which is the body the store keeps for the webhook delivery `id`
    /// (`Store::delivery_payload`), byte for byte: a run started with it stores the
    /// delivery's id instead of a copy, and reads the body back from the delivery. That
    /// body then stays as long as the delivery lists the run
    /// (`Store::prune_delivery_payloads`).
    pub fn of_delivery(self, id: &str) -> Self {
        PayloadText {
            delivery: Some(id.into()),
            ..self
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text packed: as it came when it came packed, else packed now.
    pub fn packed(&self) -> PackedJson {
        match &self.packed {
            Some(packed) => PackedJson::clone(packed),
            None => PackedJson::pack(&self.text),
        }
    }

    /// The value again.
    pub fn parse(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

impl serde::Serialize for PayloadText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::value::RawValue::from_string(self.text.to_string()) {
            Ok(raw) => raw.serialize(serializer),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for PayloadText {
    /// Kept as the text it was read from (one allocation, no tree of values).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        Ok(Self::of_json_text(raw.get()))
    }
}

/// JSON text kept LZ4-compressed (an LZ4 block with the text's length first): in memory,
/// what waits long and is read seldom (a queued run's contexts in the engine's dispatcher),
/// at a third or less of its size; in `runs.context_packed` (see [`pack_context`]).
#[derive(Clone, Debug)]
pub struct PackedJson(Box<[u8]>);

impl PackedJson {
    /// `text` packed; the caller has made it as JSON.
    pub fn pack(text: &str) -> Self {
        PackedJson(lz4_flex::block::compress_prepend_size(text.as_bytes()).into_boxed_slice())
    }

    /// JSON text of `size` bytes that is already an LZ4 block (`block`).
    pub(crate) fn from_block(block: &[u8], size: usize) -> Self {
        let mut bytes = Vec::with_capacity(4 + block.len());
        bytes.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend_from_slice(block);
        PackedJson(bytes.into_boxed_slice())
    }

    /// `value` as compact JSON text, packed.
    pub fn of(value: &impl serde::Serialize) -> Self {
        Self::pack(&serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()))
    }

    /// The text again.
    pub fn text(&self) -> String {
        lz4_flex::block::decompress_size_prepended(&self.0)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            // Packed here from a `&str`: it always unpacks.
            .unwrap_or_else(|| "null".to_owned())
    }

    /// The value again.
    pub fn parse<T: serde::de::DeserializeOwned + Default>(&self) -> T {
        serde_json::from_str(&self.text()).unwrap_or_default()
    }

    fn into_bytes(self) -> Vec<u8> {
        self.0.into_vec()
    }
}

/// Which leases [`crate::Store::expire_leases_of`] takes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseScope<'a> {
    /// Every lease this owner holds, expired or not (a restarting engine's own).
    HeldBy(&'a str),
    /// Every lease that expired.
    Expired,
    /// Leases that expired, of runs this engine drives or nobody drives any more (replicas
    /// leave each other's runs alone).
    ExpiredDrivenBy(&'a str),
}

/// An engine driving runs: its owner id and until when its claim holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Driver {
    pub owner: String,
    pub until: Timestamp,
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
    /// Its `runs-on` labels: only a claimer with every one of them may take it.
    pub labels: Vec<String>,
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
    /// the new attempt starts empty. Answers [`OpResult::Lease`]. Asked again by the owner
    /// that holds the lease (its first answer was lost and it committed again), it answers
    /// the same token and changes nothing.
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
    /// Offers `jobs` to claims from the shared queue ([`Claim::offered_only`]): their
    /// driver lets any replica lease them to a remote worker while they are queued.
    OfferJobs { jobs: Vec<JobId>, at: Timestamp },
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

/// What [`Store::claim_jobs`](crate::Store::claim_jobs) asks for: up to `limit` queued jobs,
/// oldest first, whose labels `owner` has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Who holds the leases (a worker's id, or a server's local pool).
    pub owner: String,
    /// The claimer's labels: it takes only jobs whose every label is among them. `None`
    /// takes any job (the local pool and `kiln run` run whatever `runs-on` says).
    pub labels: Option<Vec<String>>,
    pub limit: u32,
    /// How long each lease lasts unless renewed.
    pub ttl_ms: i64,
    pub at: Timestamp,
    /// Only jobs their driver offered ([`Op::OfferJobs`]) of runs whose driver is alive (its
    /// claim on the run runs past `at`, and it is a replica noted in the store — one that
    /// is stopping has left): what a remote worker may take through any replica. `false`
    /// takes any queued job.
    pub offered_only: bool,
}

/// A job [`Store::claim_jobs`](crate::Store::claim_jobs) leased.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    /// The job as it is now: `leased`, `attempts` counting this execution.
    pub job: kiln_proto::Job,
    pub project: ProjectId,
    /// The lease's fencing token: every op of this execution carries it.
    pub token: i64,
    /// Who drives the job's run (a server engine's owner id), if anyone does.
    pub driver: Option<String>,
}

/// A job's lease as the store has it now ([`Store::lease_of`](crate::Store::lease_of)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub status: JobStatus,
    /// Who holds it; `None` when nobody does.
    pub owner: Option<String>,
    /// The current (or last) lease's fencing token.
    pub token: i64,
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

/// A job waiting or in hand (`queued`, `waiting`, `leased` or `running`), as
/// [`Store::queue`](crate::Store::queue) lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueEntry {
    pub job: JobId,
    pub run: RunId,
    pub project: ProjectId,
    pub project_name: String,
    /// The run's workflow file.
    pub workflow: String,
    pub key: String,
    pub name: String,
    pub status: JobStatus,
    pub attempts: i64,
    pub max_attempts: i64,
    /// When the job was created: it has been waiting or in hand since.
    pub created_at: Timestamp,
    /// When its current attempt started running.
    pub started_at: Option<Timestamp>,
    /// Who holds its lease, while it is leased or running.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
}

/// The queue: the oldest jobs waiting or in hand, and how many there are of each status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueSnapshot {
    /// Oldest first (by creation, then run, then declaration order), at most the limit asked.
    pub jobs: Vec<QueueEntry>,
    /// Every queue status ([`QUEUE_STATUSES`]), zeros included, whatever the limit.
    pub counts: Vec<(JobStatus, i64)>,
}

/// The job statuses the queue shows: waiting to run or running.
pub const QUEUE_STATUSES: [JobStatus; 4] = [
    JobStatus::Queued,
    JobStatus::Waiting,
    JobStatus::Leased,
    JobStatus::Running,
];

/// How many runs and jobs the store holds in each status, every status listed (zeros
/// included) in the order of `RunStatus::ALL` and `JobStatus::ALL`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusCounts {
    pub runs: Vec<(RunStatus, i64)>,
    pub jobs: Vec<(JobStatus, i64)>,
}

impl StatusCounts {
    /// The number of jobs in `status`.
    pub fn jobs_in(&self, status: JobStatus) -> i64 {
        self.jobs
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    /// The number of runs in `status`.
    pub fn runs_in(&self, status: RunStatus) -> i64 {
        self.runs
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

/// The runs of one workflow of one project, and how long the finished ones took.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowStats {
    pub project: ProjectId,
    pub project_name: String,
    /// The workflow file.
    pub workflow: String,
    /// Runs of every status.
    pub runs: i64,
    /// Runs that ended (success, failure or cancelled) after they started: the durations.
    pub finished: i64,
    pub succeeded: i64,
    /// Median and 95th percentile of the finished runs' durations (`finished_at -
    /// started_at`), nearest-rank; `None` when none finished.
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

/// What [`Store::run_stats`](crate::Store::run_stats) answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunStats {
    pub counts: StatusCounts,
    /// By project name, then workflow file.
    pub workflows: Vec<WorkflowStats>,
    /// Runs created on each UTC day from the `since` day to today, oldest first; days
    /// without runs are listed with 0.
    pub per_day: Vec<(jiff::civil::Date, i64)>,
}

/// One table of the database: its rows and, where the backend can say, its size on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct TableStats {
    pub name: &'static str,
    pub rows: i64,
    /// Bytes of the table with its indexes (PostgreSQL: `pg_total_relation_size`; SQLite:
    /// the `dbstat` pages of the table and its indexes).
    pub bytes: Option<i64>,
}

/// What [`Store::database_stats`](crate::Store::database_stats) answers.
#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseStats {
    /// `"sqlite"` or `"postgres"`.
    pub backend: &'static str,
    pub tables: Vec<TableStats>,
    /// The whole database: SQLite's file (`page_count * page_size`), PostgreSQL's
    /// `pg_database_size` (every schema of the database).
    pub size_bytes: Option<i64>,
}

/// The tables [`Store::export_page`](crate::Store::export_page) reads, in export order
/// (parents before children): every table of the schema, each with every column but its
/// secrets (see [`Projects`](Self::Projects), [`Tokens`](Self::Tokens),
/// [`NotificationReceivers`](Self::NotificationReceivers)) and the bytes of webhook payloads
/// (see [`Deliveries`](Self::Deliveries)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExportTable {
    /// Projects, without their webhook secrets (`hook_secret` is absent).
    Projects,
    Runs,
    Jobs,
    Steps,
    /// The index of the logs (job, attempt, byte offset → blob key); not the log bytes,
    /// which live in the blob store.
    LogChunks,
    Events,
    /// API tokens, without their hashes.
    Tokens,
    /// Webhook deliveries: the payload's `size` but not its bytes (`payload` is absent).
    Deliveries,
    /// Schedules (`on.schedule`).
    Schedules,
    /// Every fire a scheduler claimed.
    ScheduleFires,
    /// Watches (`on.watch`), their source spec as JSON.
    Watches,
    /// Every version a watch recorded.
    WatchVersions,
    /// Notification receivers, without the secret their deliveries are signed with
    /// (`secret` is absent; every receiver has one).
    NotificationReceivers,
    /// Notification deliveries, with the body they send (`payload`: event data, not signed).
    NotificationDeliveries,
    /// Every attempt of a notification delivery.
    NotificationAttempts,
    /// How far each notifier has read the outbox.
    NotifierCursor,
    /// Webhook senders banned for failing verification.
    Bans,
    /// `kiln build` invocations.
    BuildSessions,
    /// Every package build, with its key, status, and log and output digests.
    PackageBuilds,
    /// Registered remote workers.
    Workers,
    /// Artifacts kept by jobs (their metadata; the bytes are in the artifact store).
    Artifacts,
    /// The servers sharing the database.
    Replicas,
}

impl ExportTable {
    pub const ALL: [ExportTable; 22] = [
        ExportTable::Projects,
        ExportTable::Runs,
        ExportTable::Jobs,
        ExportTable::Steps,
        ExportTable::LogChunks,
        ExportTable::Events,
        ExportTable::Tokens,
        ExportTable::Deliveries,
        ExportTable::Schedules,
        ExportTable::ScheduleFires,
        ExportTable::Watches,
        ExportTable::WatchVersions,
        ExportTable::NotificationReceivers,
        ExportTable::NotificationDeliveries,
        ExportTable::NotificationAttempts,
        ExportTable::NotifierCursor,
        ExportTable::Bans,
        ExportTable::BuildSessions,
        ExportTable::PackageBuilds,
        ExportTable::Workers,
        ExportTable::Artifacts,
        ExportTable::Replicas,
    ];

    /// The name an export line carries (`"table"`): the table's name in the schema, but
    /// `tokens` for `api_tokens`.
    pub fn name(self) -> &'static str {
        match self {
            ExportTable::Projects => "projects",
            ExportTable::Runs => "runs",
            ExportTable::Jobs => "jobs",
            ExportTable::Steps => "steps",
            ExportTable::LogChunks => "log_chunks",
            ExportTable::Events => "events",
            ExportTable::Tokens => "tokens",
            ExportTable::Deliveries => "deliveries",
            ExportTable::Schedules => "schedules",
            ExportTable::ScheduleFires => "schedule_fires",
            ExportTable::Watches => "watches",
            ExportTable::WatchVersions => "watch_versions",
            ExportTable::NotificationReceivers => "notification_receivers",
            ExportTable::NotificationDeliveries => "notification_deliveries",
            ExportTable::NotificationAttempts => "notification_attempts",
            ExportTable::NotifierCursor => "notifier_cursor",
            ExportTable::Bans => "bans",
            ExportTable::BuildSessions => "build_sessions",
            ExportTable::PackageBuilds => "package_builds",
            ExportTable::Workers => "workers",
            ExportTable::Artifacts => "artifacts",
            ExportTable::Replicas => "replicas",
        }
    }
}

/// Where the next page of an export continues (after the last row's key). Opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportCursor(pub(crate) ExportKey);

/// The key of an exported row, in the order pages are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExportKey {
    Text(String),
    Int(i64),
    /// A notification attempt: (delivery id, attempt).
    Pair(String, i64),
    /// A step (job id, attempt, index) or a log chunk (job id, attempt, byte offset).
    Triple(String, i64, i64),
}

/// One page of an export: rows as JSON objects (column → value; timestamps as the stored
/// unix milliseconds, JSON columns as JSON), and where the next page starts (`None`: this
/// table is done).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportPage {
    pub rows: Vec<Map<String, Value>>,
    pub next: Option<ExportCursor>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_contexts_are_stored_compressed_and_read_back_whole() {
        let large = format!(
            r#"{{"payload":{{"commits":[{}]}}}}"#,
            r#"{"id":"1"},"#.repeat(200) + "{}"
        );
        let (text, packed) = pack_context(large.clone());
        assert_eq!(text, None);
        let packed = packed.unwrap();
        assert!(
            packed.len() < large.len() / 4,
            "{} of {}",
            packed.len(),
            large.len()
        );
        let what = "run r";
        assert_eq!(
            unpack_context(None, Some(packed), &what).unwrap(),
            Some(large)
        );
        // Short ones stay text; nothing stored reads as none.
        let short = r#"{"github":{"actor":"octocat"}}"#.to_owned();
        assert_eq!(pack_context(short.clone()), (Some(short.clone()), None));
        assert_eq!(
            unpack_context(Some(short.clone()), None, &what).unwrap(),
            Some(short)
        );
        assert_eq!(unpack_context(None, None, &what).unwrap(), None);
        // Damage is an error naming the column and the row, not garbage.
        let err = unpack_context(None, Some(vec![9, 0, 0, 0, 0xff]), &what).unwrap_err();
        assert!(err.to_string().contains("context_packed"), "{err}");
        assert!(err.to_string().contains("run r"), "{err}");
    }

    use serde_json::json;

    use super::*;

    #[test]
    fn a_run_context_is_stored_as_json_that_reads_back_the_same() {
        let payload = PayloadText::of(&json!({
            "ref": "refs/heads/main",
            "commits": [{"id": "a\"b\\c", "added": ["ä/ö.txt"], "n": 1.5}],
            "deleted": false,
            "none": null
        }));
        let mut github = Map::new();
        github.insert("actor".into(), json!("octo\ncat"));
        let contexts = [
            RunContext {
                payload: Some(payload.clone()),
                github: github.clone(),
            },
            RunContext {
                payload: Some(payload.clone()),
                github: Map::new(),
            },
            RunContext {
                payload: None,
                github,
            },
            RunContext::default(),
        ];
        for context in contexts {
            let text = context.to_json();
            let back: RunContext = serde_json::from_str(&text).unwrap();
            assert_eq!(back, context, "{text}");
            // The same JSON serde would have written.
            let written: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(written, serde_json::to_value(&context).unwrap(), "{text}");
        }
        assert_eq!(
            payload.parse()["commits"][0]["id"],
            json!("a\"b\\c"),
            "the text parses back to the value"
        );
    }
}
