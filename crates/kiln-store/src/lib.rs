//! kiln's durable store: every project, run, job, step, log chunk and event, in SQLite (the
//! embedded default) or PostgreSQL (scale-out), plus the blob store that holds log bytes.
//!
//! The store is the truth the engine's in-memory scheduler caches (DESIGN.md "State
//! machines"): a transition is committed before anyone acts on it, many transitions share
//! one transaction ([`Store::commit`]), every transition appends to the event outbox in the
//! same transaction, and leases with fencing tokens make sure a job never succeeds twice. The
//! state-machine rules that need the database to be enforced (who holds a lease, what a log's
//! length is) are enforced here; deciding *which* transition to make is the engine's job.
//!
//! Layout: [`types`] are the requests and answers, [`blob`] the blob store, `backend` the two
//! SQL dialects (one body of queries, included twice), `error` the error type, `token` how
//! API token secrets are drawn and hashed, [`schedules`] `on.schedule` entries and their
//! claimed fires, [`projects`] the project records of the API,
//! [`hooks`] project webhooks and their recorded deliveries, [`notifications`] outbound
//! notification receivers, deliveries and the notifier's cursor, [`packages`] package builds
//! (`kiln build`): their history, the cache by key, and outputs packed into the blob store.
//! Not here: scheduling, HTTP, anything that decides what to run.

pub mod artifacts;
mod backend;
pub mod blob;
mod error;
pub mod hooks;
pub mod notifications;
pub mod packages;
pub mod projects;
pub mod schedules;
pub mod secrets;
mod token;
pub mod types;
pub mod watches;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use kiln_core::ids::{JobId, ProjectId, RunId, RunStatus};
use kiln_proto::{Event, Job, Project, Role, Run, TokenId, TokenInfo};
use tokio::sync::watch;

pub use artifacts::{ArtifactFilter, ArtifactStore, NewArtifact, StoredBlob};
pub use blob::{BlobStore, ContentBlob};
pub use error::StoreError;
pub use hooks::{
    DeliveryClaim, DeliveryOutcome, HookChange, HookSettings, HookTarget, NewDelivery, PackedBody,
    Recorded, generate_secret,
};
pub use notifications::{
    AfterAttempt, AttemptRecord, ClaimedNotification, NewNotification, ReceiverTarget,
};
pub use packages::{
    BuildCounts, BuildSession, BuildSessionId, CachedBuild, OutputError, PackageBuild,
    PackageBuildId, PackageBuildStatus, PackageStats,
};
pub use projects::{Archived, FetchOutcome, ProjectChange, ProjectRecord};
pub use schedules::{Fire, FireKind, ScheduleDef, SyncReport};
pub use secrets::SecretKeys;
pub use types::{
    Claim, Claimed, Driver, ExpiredLease, Lease, LeaseScope, LogSlice, NewJob, NewRun, Op,
    OpResult, PackedJson, PayloadText, Refusal, RunContext, RunFilter,
};
pub use watches::{
    ClaimedVersion, NewVersion, PollRecord, SeenVersion, WatchDef, WatchRow, WatchSyncReport,
};

/// A handle on the store; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Backend>,
    /// What seals and opens webhook and receiver secrets (`None`: a PostgreSQL store given
    /// no key; writing or reading a secret then fails with [`StoreError::NoSecretKey`]).
    keys: Option<Arc<SecretKeys>>,
    /// Bumped after every write that may have appended events, so that readers of the
    /// outbox in this process need not wait for their next poll ([`Store::watch_writes`]).
    writes: Arc<watch::Sender<u64>>,
    /// The embedded store's webhook intake journal, once the server opens it
    /// ([`Store::open_intake_journal`]).
    intake: Arc<std::sync::OnceLock<intake::Intake>>,
}

enum Backend {
    Sqlite(backend::sqlite::Backend),
    Postgres(backend::postgres::Backend),
}

/// Runs `$body` with `$b` bound to whichever backend the store has.
macro_rules! with_backend {
    ($self:ident, $b:ident => $body:expr) => {
        match &*$self.inner {
            Backend::Sqlite($b) => $body,
            Backend::Postgres($b) => $body,
        }
    };
}

mod intake;

impl Store {
    /// Opens the embedded store in `data_dir` (created if missing): the database
    /// `<data_dir>/kiln.db` and blobs under `<data_dir>/blobs`. Migrates the database.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let blobs = BlobStore::local(&data_dir.join("blobs"))?;
        let keys = SecretKeys::resolve(data_dir, true)?;
        let b = backend::sqlite::open(&data_dir.join("kiln.db"), blobs).await?;
        Store {
            writes: Arc::default(),
            inner: Arc::new(Backend::Sqlite(b)),
            keys: None,
            intake: Arc::default(),
        }
        .with_keys(keys)
        .await
    }

    /// Opens a PostgreSQL store, with blobs in the local folder `<data_dir>/blobs`. Migrates
    /// the database. `url` may end in `?schema=NAME` to work in that schema (tests do), or
    /// carry sqlx's `options=-c search_path=…`. The secrets keys come from the environment or
    /// `<data_dir>/secrets.key` ([`SecretKeys::resolve`]); without them the store opens but
    /// refuses to write or read a secret.
    pub async fn open_postgres(url: &str, data_dir: &Path) -> Result<Store, StoreError> {
        let blobs = BlobStore::local(&data_dir.join("blobs"))?;
        let keys = SecretKeys::resolve(data_dir, false)?;
        let b = backend::postgres::open(url, blobs).await?;
        let writes: Arc<watch::Sender<u64>> = Arc::default();
        backend::postgres::listen_for_events(b.reader_pool(), Arc::downgrade(&writes));
        backend::postgres::announce_events(b.reader_pool(), b.announcements());
        Store {
            writes,
            inner: Arc::new(Backend::Postgres(b)),
            keys: None,
            intake: Arc::default(),
        }
        .with_keys(keys)
        .await
    }

    /// This store with `keys` sealing and opening its secrets. Every stored secret is opened
    /// with them first (a key that does not open what is stored is an error, not a surprise
    /// at the first webhook), and those stored in the clear or under an older key version are
    /// sealed under the current one.
    pub async fn with_secret_keys(self, keys: SecretKeys) -> Result<Store, StoreError> {
        self.with_keys(Some(keys)).await
    }

    async fn with_keys(mut self, keys: Option<SecretKeys>) -> Result<Store, StoreError> {
        let Some(keys) = keys else {
            return Ok(self);
        };
        for (hook, id, stored) in with_backend!(self, b => b.stored_secrets().await)? {
            let what = if hook {
                secrets::hook_secret_id(&id)
            } else {
                secrets::receiver_secret_id(&id)
            };
            let plain = zeroize::Zeroizing::new(keys.open(&what, &stored)?);
            if keys.needs_sealing(&stored) {
                let sealed = keys.seal(&what, &plain)?;
                with_backend!(self, b => b.replace_secret(hook, &id, &stored, &sealed).await)?;
            }
        }
        self.keys = Some(Arc::new(keys));
        Ok(self)
    }

    /// Whether this store can seal and open secrets (a PostgreSQL store needs a key given).
    pub fn has_secret_keys(&self) -> bool {
        self.keys.is_some()
    }

    fn keys(&self) -> Result<&SecretKeys, StoreError> {
        self.keys.as_deref().ok_or(StoreError::NoSecretKey)
    }

    /// Opens what the `--database` option names: nothing or `sqlite:…` is the embedded
    /// store in `data_dir` (its file is always `<data_dir>/kiln.db`); `postgres://…` or
    /// `postgresql://…` is PostgreSQL with blobs in `<data_dir>/blobs`.
    pub async fn open(database: Option<&str>, data_dir: &Path) -> Result<Store, StoreError> {
        match database {
            None => Self::open_sqlite(data_dir).await,
            Some(url) if url.starts_with("sqlite:") => Self::open_sqlite(data_dir).await,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::open_postgres(url, data_dir).await
            }
            Some(url) => Err(StoreError::BadUrl {
                url: url.split('@').next_back().unwrap_or_default().to_owned(),
                reason: "expected `sqlite:` or `postgres://…`".to_owned(),
            }),
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match &*self.inner {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Whether several servers may share this store (PostgreSQL: replicas), so that what one
    /// server decides must go through it for the others — jobs offered to the shared queue,
    /// cancellations asked of a run's driver. An embedded SQLite store has one server.
    pub fn is_shared(&self) -> bool {
        matches!(&*self.inner, Backend::Postgres(_))
    }

    /// The blob store (for artifacts and other large bytes).
    pub fn blobs(&self) -> &BlobStore {
        with_backend!(self, b => b.blobs())
    }

    /// Creates the project `name` (with a new id and a random hook id) or updates its source.
    pub async fn upsert_project(&self, name: &str, source: &str) -> Result<Project, StoreError> {
        with_backend!(self, b => b.upsert_project(name, source, Timestamp::now()).await)
    }

    pub async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        with_backend!(self, b => b.get_project(id).await)
    }

    pub async fn find_project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        with_backend!(self, b => b.find_project(name).await)
    }

    /// Registers a project under a name no other project (archived ones included) has:
    /// [`StoreError::NameTaken`] otherwise. A git source is marked to be fetched.
    pub async fn create_project(
        &self,
        name: &str,
        source: &str,
    ) -> Result<ProjectRecord, StoreError> {
        with_backend!(self, b => b.create_project(name, source, Timestamp::now()).await)
    }

    /// A project with its fetch state and archive mark, archived or not.
    pub async fn project_record(&self, id: ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        with_backend!(self, b => b.project_record(id).await)
    }

    /// [`Store::project_record`] by name.
    pub async fn project_record_by_name(
        &self,
        name: &str,
    ) -> Result<Option<ProjectRecord>, StoreError> {
        with_backend!(self, b => b.project_record_by_name(name).await)
    }

    /// Projects by name; archived ones only when asked for.
    pub async fn list_projects(
        &self,
        include_archived: bool,
    ) -> Result<Vec<ProjectRecord>, StoreError> {
        with_backend!(self, b => b.list_projects(include_archived).await)
    }

    /// Renames a project and/or gives it a new source (which forgets the old one's fetch
    /// state and marks a git source to be fetched). `None`: no project that is not archived
    /// has this id. A name another project has is [`StoreError::NameTaken`].
    pub async fn update_project(
        &self,
        id: ProjectId,
        change: ProjectChange<'_>,
    ) -> Result<Option<ProjectRecord>, StoreError> {
        with_backend!(self, b => b.update_project(id, change, Timestamp::now()).await)
    }

    /// Marks a project's mirror to be fetched again (`fetch_requested_at`); `None`: no
    /// project that is not archived has this id.
    pub async fn request_fetch(&self, id: ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        with_backend!(self, b => b.request_fetch(id, Timestamp::now()).await)
    }

    /// Records how a fetch of `source` ended. `false`: nothing was recorded, because the
    /// project is gone, archived, or has another source by now.
    pub async fn record_fetch(
        &self,
        id: ProjectId,
        source: &str,
        outcome: &FetchOutcome,
    ) -> Result<bool, StoreError> {
        with_backend!(self, b => b.record_fetch(id, source, outcome, Timestamp::now()).await)
    }

    /// Archives a project (a soft delete: it leaves listings, keeps its name, and its runs
    /// and logs stay readable), unless some of its runs have not finished:
    /// [`Archived::Busy`]. Archiving twice keeps the first time. `None`: no such project.
    pub async fn archive_project(&self, id: ProjectId) -> Result<Option<Archived>, StoreError> {
        with_backend!(self, b => b.archive_project(id, Timestamp::now()).await)
    }

    /// Creates a run and its jobs in one transaction. Its `run_number` is one more than the
    /// largest of its (project, workflow); `run_attempt` is 1. Appends `run.queued` (or the
    /// event of its initial status) and an event for each job not created `pending`.
    pub async fn create_run(&self, new: NewRun) -> Result<Run, StoreError> {
        let mut runs = self.create_runs(vec![new]).await?;
        Ok(runs.pop().expect("one run created for one asked"))
    }

    /// [`Store::create_run`] for many runs in ONE transaction: all are created, in order, or
    /// none (a burst of webhook deliveries commits once).
    pub async fn create_runs(&self, news: Vec<NewRun>) -> Result<Vec<Run>, StoreError> {
        if news.is_empty() {
            return Ok(Vec::new());
        }
        let runs = with_backend!(self, b => b.create_runs(news).await);
        self.wrote();
        runs
    }

    /// Applies all `ops` in ONE transaction (group commit) and answers for each, in order. A
    /// refused op changes nothing and does not abort the others; an `Err` means nothing was
    /// committed.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let results = with_backend!(self, b => b.commit(ops).await);
        self.wrote();
        results
    }

    /// Starts the next attempt of a finished run that failed or was cancelled (GitHub's
    /// "re-run failed jobs"): `run_attempt` + 1, the run `queued`, its failed, cancelled,
    /// timed-out and skipped jobs `pending` again (their outputs cleared; their earlier
    /// attempts' steps and logs kept), its successful jobs and their outputs untouched.
    /// `Ok(Err(status))`: refused, the run is `status` (still active, or succeeded).
    pub async fn retry_run(
        &self,
        run: RunId,
        at: Timestamp,
        driver: Option<&types::Driver>,
    ) -> Result<Result<(), RunStatus>, StoreError> {
        let retried = with_backend!(self, b => b.retry_run(run, at, driver).await);
        self.wrote();
        retried
    }

    /// Takes back leases: with `owner` `None`, every lease that expired before `now`; with
    /// `Some(owner)`, every lease that owner holds, expired or not (a restarting server
    /// reclaiming its previous pool's). A job with attempts left goes back to `queued`, the
    /// others to `failure`.
    pub async fn expire_leases(
        &self,
        now: Timestamp,
        owner: Option<&str>,
    ) -> Result<Vec<ExpiredLease>, StoreError> {
        let scope = match owner {
            Some(owner) => types::LeaseScope::HeldBy(owner),
            None => types::LeaseScope::Expired,
        };
        self.expire_leases_of(now, scope).await
    }

    /// Takes back the leases `scope` names (see [`Store::expire_leases`]).
    pub async fn expire_leases_of(
        &self,
        now: Timestamp,
        scope: types::LeaseScope<'_>,
    ) -> Result<Vec<ExpiredLease>, StoreError> {
        let expired = with_backend!(self, b => b.expire_leases(now, scope).await);
        self.wrote();
        expired
    }

    /// Takes over, for `me` until `until`, the unfinished runs nobody drives, `me` drove
    /// before, or whose driver stopped renewing before `now`, except runs with a job under a
    /// lease (take expired leases back first). Several replicas on one database call this; each run goes to one.
    pub async fn claim_runs(
        &self,
        me: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<Vec<RunId>, StoreError> {
        with_backend!(self, b => b.claim_runs(me, until, now).await)
    }

    /// Ends `me`'s claim on the runs it drives (an engine stopping): any engine may take
    /// them over at once.
    pub async fn release_runs(&self, me: &str) -> Result<(), StoreError> {
        with_backend!(self, b => b.release_runs(me).await)
    }

    /// Notes that the replica `owner` (an engine's owner id) answers at `url`; replicas call
    /// this every few seconds, and workers learn the others from [`Store::live_replicas`].
    pub async fn replica_seen(&self, owner: &str, url: &str) -> Result<(), StoreError> {
        with_backend!(self, b => b.replica_seen(owner, url, Timestamp::now()).await)
    }

    /// Removes a replica that stops.
    pub async fn replica_gone(&self, owner: &str) -> Result<(), StoreError> {
        with_backend!(self, b => b.replica_gone(owner).await)
    }

    /// The URLs of the replicas seen since `since`.
    pub async fn live_replicas(&self, since: Timestamp) -> Result<Vec<String>, StoreError> {
        with_backend!(self, b => b.live_replicas(since).await)
    }

    /// The lease `job` is under now (`None`: no such job).
    pub async fn lease_of(&self, job: JobId) -> Result<Option<Lease>, StoreError> {
        with_backend!(self, b => b.lease_of(job).await)
    }

    /// The URL the replica `owner` last noted for itself ([`Store::replica_seen`]).
    pub async fn replica_url(&self, owner: &str) -> Result<Option<String>, StoreError> {
        with_backend!(self, b => b.replica_url(owner).await)
    }

    /// Asks whoever drives `run` to cancel it: recorded with the time and a
    /// `run.cancel_requested` event (once, however often it is asked). `false`: no such run,
    /// or it has ended. The driver finds it through [`Store::cancel_requests`].
    pub async fn request_cancel(&self, run: RunId, at: Timestamp) -> Result<bool, StoreError> {
        with_backend!(self, b => b.request_cancel(run, at).await)
    }

    /// The unfinished runs `me` drives whose cancellation was asked for
    /// ([`Store::request_cancel`]).
    pub async fn cancel_requests(&self, me: &str) -> Result<Vec<RunId>, StoreError> {
        with_backend!(self, b => b.cancel_requests(me).await)
    }

    /// Renews `me`'s claim on the runs it drives until `until`; the ones it lost (another
    /// engine took them over after `me` failed to renew in time, or they ended).
    pub async fn renew_runs(
        &self,
        me: &str,
        runs: &[RunId],
        until: Timestamp,
    ) -> Result<Vec<RunId>, StoreError> {
        with_backend!(self, b => b.renew_runs(me, runs, until).await)
    }

    /// Leases up to `claim.limit` queued jobs, oldest first (then in their run's order),
    /// whose labels the claimer has: each becomes `leased` with the next fencing token and
    /// `attempts` + 1, and appends `job.leased`. Safe to call from many processes at once:
    /// on PostgreSQL a claim skips rows another claim holds (`FOR UPDATE SKIP LOCKED`)
    /// instead of waiting for it, so no job is leased twice and no claimer blocks another.
    pub async fn claim_jobs(&self, claim: &Claim) -> Result<Vec<Claimed>, StoreError> {
        if claim.limit == 0 {
            return Ok(Vec::new());
        }
        let claimed = with_backend!(self, b => b.claim_jobs(claim).await);
        self.wrote();
        claimed
    }

    /// Marks that this process wrote (and may have appended events).
    fn wrote(&self) {
        self.writes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes after each write this process makes through any clone of this store that may
    /// have appended events. A hint for outbox readers, not a guarantee: other processes
    /// (replicas, `kiln run`) write too, so readers still poll.
    pub fn watch_writes(&self) -> watch::Receiver<u64> {
        self.writes.subscribe()
    }

    /// A run with its jobs (in creation order) and each job's steps (latest attempt).
    pub async fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        with_backend!(self, b => b.get_run(id).await)
    }

    /// What run `id` was triggered with beyond its columns (its event payload and `github`
    /// fields); empty for a run made without any, or before kiln kept them. `None`: no such
    /// run.
    pub async fn run_context(&self, id: RunId) -> Result<Option<RunContext>, StoreError> {
        with_backend!(self, b => b.run_context(id).await)
    }

    /// A run by its full id or a unique prefix of at least 4 characters.
    pub async fn resolve_run(&self, id_or_prefix: &str) -> Result<Option<Run>, StoreError> {
        with_backend!(self, b => b.resolve_run(id_or_prefix).await)
    }

    /// Runs matching `filter`, newest first, without their jobs.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        with_backend!(self, b => b.list_runs(filter).await)
    }

    /// A job with its steps (latest attempt).
    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        with_backend!(self, b => b.get_job(id).await)
    }

    /// Up to `limit` bytes of the job's log (its latest attempt) from `offset`.
    pub async fn read_log(
        &self,
        job: JobId,
        offset: u64,
        limit: usize,
    ) -> Result<LogSlice, StoreError> {
        with_backend!(self, b => b.read_log(job, offset, limit).await)
    }

    /// Where each step's output starts in the job's log (latest attempt): `(step index,
    /// byte offset)` in log order. Steps that printed nothing have no entry.
    pub async fn log_steps(&self, job: JobId) -> Result<Vec<(u32, u64)>, StoreError> {
        with_backend!(self, b => b.log_steps(job).await)
    }

    /// Up to `limit` events with ids greater than `after`, in id order. Gap-safe: an event
    /// that becomes visible later always has a larger id than every event returned here, so
    /// a reader may resume after the last id it saw.
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        with_backend!(self, b => b.events_after(after, limit).await)
    }

    /// The id of the newest event [`Store::events_after`] may return now (0 when there is
    /// none): a reader that wants only what happens from now on starts after it.
    pub async fn event_head(&self) -> Result<i64, StoreError> {
        with_backend!(self, b => b.event_head().await)
    }

    /// Gives each `log.line` event among `events` its bytes: the internal `blob` location in
    /// its data is replaced by `text` (UTF-8, invalid sequences replaced). Events of one
    /// transaction share a blob segment, which is read once for all of them.
    pub async fn fill_log_lines(&self, events: &mut [Event]) -> Result<(), StoreError> {
        let mut i = 0;
        while i < events.len() {
            let Some((key, start, len)) = blob_of(&events[i]) else {
                i += 1;
                continue;
            };
            // The run of following log lines in the same segment, read as one range.
            let mut end = start + len;
            let mut j = i + 1;
            while let Some((k, s, l)) = events.get(j).and_then(blob_of) {
                if k != key || s < start {
                    break;
                }
                end = end.max(s + l);
                j += 1;
            }
            let bytes = self
                .blobs()
                .get_range(&key, start, usize::try_from(end - start).unwrap_or(0))
                .await?;
            for event in &mut events[i..j] {
                let Some((_, s, l)) = blob_of(event) else {
                    continue;
                };
                let from = usize::try_from(s - start).unwrap_or(0);
                let to = usize::try_from(s - start + l).unwrap_or(0);
                let text = String::from_utf8_lossy(bytes.get(from..to).unwrap_or_default());
                if let serde_json::Value::Object(data) = &mut event.data {
                    data.remove("blob");
                    data.insert("text".to_owned(), text.into_owned().into());
                }
            }
            i = j;
        }
        Ok(())
    }

    /// Creates an API token; returns it and its plaintext, which the store does not keep (only
    /// its SHA-256). `project` must exist ([`StoreError::NotFound`] otherwise).
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        project: Option<ProjectId>,
    ) -> Result<(TokenInfo, String), StoreError> {
        with_backend!(self, b => b.create_token(name, role, project, Timestamp::now()).await)
    }

    /// Every token, revoked ones included, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        with_backend!(self, b => b.list_tokens().await)
    }

    /// Revokes a token for good. `false`: no token has this id (revoking twice is `true`).
    pub async fn revoke_token(&self, id: TokenId) -> Result<bool, StoreError> {
        with_backend!(self, b => b.revoke_token(id, Timestamp::now()).await)
    }

    /// The token whose plaintext this is, unless it is unknown or revoked. Records the use
    /// (`last_used_at`) at most once a minute per token.
    pub async fn verify_token(&self, plaintext: &str) -> Result<Option<TokenInfo>, StoreError> {
        with_backend!(self, b => b.verify_token(plaintext, Timestamp::now()).await)
    }

    /// When the store holds no token at all, creates an admin token, atomically even with
    /// several replicas starting together: `preseed` (at least 32 printable characters;
    /// returns `None`, the operator knows it) or a random one, returned to be shown once.
    /// Does nothing and returns `None` when any token exists.
    pub async fn ensure_admin_token(
        &self,
        preseed: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        with_backend!(self, b => b.ensure_admin_token(preseed, Timestamp::now()).await)
    }

    /// Whether the database answers (a server's readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_backend!(self, b => b.ping().await)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

/// Where a `log.line` event's bytes are: (segment key, start in it, length).
fn blob_of(event: &Event) -> Option<(String, u64, u64)> {
    if event.kind != "log.line" {
        return None;
    }
    let blob = event.data.get("blob")?;
    let key = blob.get(0)?.as_str()?.to_owned();
    let start = blob.get(1)?.as_u64()?;
    let length = event.data.get("length")?.as_u64()?;
    Some((key, start, length))
}

pub use types::{
    DatabaseStats, ExportCursor, ExportPage, ExportTable, QUEUE_STATUSES, QueueEntry,
    QueueSnapshot, RunStats, StatusCounts, TableStats, WorkflowStats,
};

/// Reads for operators (the server's queue, stats, database and export routes).
impl Store {
    /// The jobs waiting or in hand (`queued`, `waiting`, `leased`, `running`), oldest first,
    /// at most `limit` of them, and how many there are of each of those statuses.
    pub async fn queue(&self, limit: u32) -> Result<QueueSnapshot, StoreError> {
        with_backend!(self, b => b.queue(limit).await)
    }

    /// How many runs and jobs are in each status.
    pub async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        with_backend!(self, b => b.status_counts().await)
    }

    /// Counts by status, runs and durations per workflow, and runs created on each of the
    /// last `days` UTC days up to `now`'s (at least one: today).
    pub async fn run_stats(&self, days: u32, now: Timestamp) -> Result<RunStats, StoreError> {
        let today = jiff::tz::TimeZone::UTC.to_datetime(now).date();
        let back = jiff::Span::new().days(i64::from(days.max(1)) - 1);
        let since = today.checked_sub(back).unwrap_or(today);
        with_backend!(self, b => b.run_stats(since, today).await)
    }

    /// Row counts of every table and the database's size where the backend can say.
    pub async fn database_stats(&self) -> Result<DatabaseStats, StoreError> {
        with_backend!(self, b => b.database_stats().await)
    }

    /// Up to `limit` rows of `table` after `after` (from the start when `None`), in key
    /// order; pass the page's `next` to continue. Each page is read on its own, so rows
    /// written during an export may or may not appear in it. Tokens come without their hash.
    pub async fn export_page(
        &self,
        table: ExportTable,
        after: Option<&ExportCursor>,
        limit: u32,
    ) -> Result<ExportPage, StoreError> {
        self.flush_intake().await?;
        with_backend!(self, b => b.export_page(table, after, limit).await)
    }
}

/// Schedules (`on.schedule`) and their fires (`schedules_body.rs`). Every call takes `now`,
/// so that the scheduler (and its tests) decide what time it is.
impl Store {
    /// Makes `project`'s stored schedules what its workflow files say (`defs`): new entries
    /// count from `now`, changed patterns from `now`, entries gone from their file are
    /// removed; a stopped schedule stays stopped. Schedules of the files in
    /// `keep_workflows` (files that could not be read this time) are left as they are.
    pub async fn sync_schedules(
        &self,
        project: ProjectId,
        defs: &[ScheduleDef],
        keep_workflows: &[String],
        now: Timestamp,
    ) -> Result<SyncReport, StoreError> {
        with_backend!(self, b => b.sync_schedules(project, defs, keep_workflows, now).await)
    }

    /// Schedules of projects that are not archived (of `project` only, when given): active
    /// ones by next fire, then stopped ones.
    pub async fn list_schedules(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<kiln_proto::ScheduleView>, StoreError> {
        with_backend!(self, b => b.list_schedules(project).await)
    }

    pub async fn get_schedule(
        &self,
        id: kiln_proto::ScheduleId,
    ) -> Result<Option<kiln_proto::ScheduleView>, StoreError> {
        with_backend!(self, b => b.get_schedule(id).await)
    }

    /// Stops a schedule (it keeps its row and stays stopped across syncs). `None`: no such
    /// schedule.
    pub async fn stop_schedule(
        &self,
        id: kiln_proto::ScheduleId,
        now: Timestamp,
    ) -> Result<Option<kiln_proto::ScheduleView>, StoreError> {
        with_backend!(self, b => b.set_schedule_stopped(id, true, now).await)
    }

    /// Starts a stopped schedule again: its next fire counts from `now`.
    pub async fn start_schedule(
        &self,
        id: kiln_proto::ScheduleId,
        now: Timestamp,
    ) -> Result<Option<kiln_proto::ScheduleView>, StoreError> {
        with_backend!(self, b => b.set_schedule_stopped(id, false, now).await)
    }

    /// Active schedules whose next fire is at or before `now`, oldest fire first.
    pub async fn due_schedules(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<kiln_proto::ScheduleView>, StoreError> {
        with_backend!(self, b => b.due_schedules(now, i64::from(limit)).await)
    }

    /// The soonest next fire of any active schedule.
    pub async fn next_schedule_fire(&self) -> Result<Option<Timestamp>, StoreError> {
        with_backend!(self, b => b.next_schedule_fire().await)
    }

    /// Claims the fire `fire_at` of `schedule` and moves the schedule on to `next_fire_at`,
    /// in one transaction. `None`: someone claimed it first (another replica), or the
    /// schedule moved on, stopped or left its file meanwhile — do nothing.
    pub async fn claim_fire(
        &self,
        schedule: kiln_proto::ScheduleId,
        fire_at: Timestamp,
        next_fire_at: Option<Timestamp>,
        kind: FireKind,
        owner: &str,
        now: Timestamp,
    ) -> Result<Option<uuid::Uuid>, StoreError> {
        with_backend!(self, b => b.claim_fire(schedule, fire_at, next_fire_at, kind, owner, now).await)
    }

    /// Records what a claimed fire did: the run it started, or why none started.
    pub async fn finish_fire(
        &self,
        fire: uuid::Uuid,
        result: Result<RunId, &str>,
    ) -> Result<(), StoreError> {
        with_backend!(self, b => b.finish_fire(fire, result).await)
    }

    /// A schedule's fires, newest first, at most `limit`.
    pub async fn list_fires(
        &self,
        schedule: kiln_proto::ScheduleId,
        limit: u32,
    ) -> Result<Vec<Fire>, StoreError> {
        with_backend!(self, b => b.list_fires(schedule, i64::from(limit)).await)
    }
}

/// Project webhooks and their deliveries (`hooks_body.rs`).
impl Store {
    /// The project whose webhook URL is `/hooks/{hook_id}`, with what verifying needs.
    pub async fn hook_target(&self, hook_id: &str) -> Result<Option<HookTarget>, StoreError> {
        let mut target = with_backend!(self, b => b.hook_target(hook_id).await)?;
        if let Some(t) = &mut target
            && let Some(stored) = &t.secret
        {
            let what = secrets::hook_secret_id(&t.project.to_string());
            t.secret = Some(self.keys()?.open(&what, stored)?);
        }
        Ok(target)
    }

    /// Changes a project's hook: its provider, its hook id (a new random one), its secret.
    /// `None`: no project that is not archived has this id.
    pub async fn set_hook(
        &self,
        project: ProjectId,
        change: &HookChange,
    ) -> Result<Option<HookSettings>, StoreError> {
        let what = secrets::hook_secret_id(&project.to_string());
        let sealed;
        let change = match &change.secret {
            Some(secret) => {
                sealed = HookChange {
                    secret: Some(self.keys()?.seal(&what, secret)?),
                    ..change.clone()
                };
                &sealed
            }
            None => change,
        };
        let mut settings = with_backend!(self, b => b.set_hook(project, change).await)?;
        if let Some(s) = &mut settings
            && let Some(stored) = &s.secret
        {
            s.secret = Some(self.keys()?.open(&what, stored)?);
        }
        Ok(settings)
    }

    /// Records a ban (its id, address, hook or `None` for every hook, reason, dates).
    pub async fn add_ban(&self, ban: &kiln_proto::Ban) -> Result<(), StoreError> {
        with_backend!(self, b => b.add_ban(ban).await)
    }

    /// The ban in force at `now` that keeps `address` from hook `hook_id` (a ban from that
    /// hook, or from every hook), if any.
    pub async fn active_ban(
        &self,
        address: &str,
        hook_id: &str,
        now: Timestamp,
    ) -> Result<Option<kiln_proto::Ban>, StoreError> {
        with_backend!(self, b => b.active_ban(address, hook_id, now).await)
    }

    /// Bans newest first: those in force at `now`, or with `all` every one ever made.
    pub async fn list_bans(
        &self,
        all: bool,
        now: Timestamp,
    ) -> Result<Vec<kiln_proto::Ban>, StoreError> {
        with_backend!(self, b => b.list_bans(all, now).await)
    }

    /// Lifts a ban (a second lift keeps the first time); `None`: no such ban.
    pub async fn lift_ban(
        &self,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<kiln_proto::Ban>, StoreError> {
        with_backend!(self, b => b.lift_ban(id, at).await)
    }

    /// Records a verified delivery, once per (project, provider delivery id): a delivery id
    /// seen before is [`Recorded::Duplicate`] with the first delivery as it stands.
    /// With the intake journal open, an accepted delivery this process claims is journaled
    /// rather than written (see `intake.rs`).
    pub async fn record_delivery(&self, new: &NewDelivery) -> Result<Recorded, StoreError> {
        Ok(self.record_delivery_packed(new).await?.0)
    }

    /// [`Store::record_delivery`], with the body as the intake journal packed it when it
    /// journaled the delivery (for its processor to keep rather than the body).
    pub async fn record_delivery_packed(
        &self,
        new: &NewDelivery,
    ) -> Result<(Recorded, Option<PackedBody>), StoreError> {
        if let Some(intake) = self.intake.get() {
            return self.record_through(intake, new, Timestamp::now()).await;
        }
        let recorded = with_backend!(self, b => b.record_delivery(new, Timestamp::now()).await)?;
        Ok((recorded, None))
    }

    /// Marks an accepted delivery processed, ignored or failed, with the runs it started.
    /// `false`: it was not `accepted` (another processor finished it first).
    pub async fn finish_delivery(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        let done = [(id.to_owned(), outcome.clone())];
        Ok(self.finish_deliveries(&done).await?.first() == Some(&true))
    }

    /// Claims an accepted delivery for `owner` until `until`, so that one processor handles
    /// it: `false` when it is not accepted any more or another claim is still live. Claims
    /// by owners starting with `stale` (but not `owner` itself) count as dead: a restarted
    /// server's earlier processes, which cannot be processing any more.
    pub async fn claim_delivery(
        &self,
        id: &str,
        owner: &str,
        stale: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let ids = [id.to_owned()];
        let claimed = self
            .claim_deliveries(&ids, owner, stale, now, until)
            .await?;
        Ok(!claimed.is_empty())
    }

    /// [`Store::claim_delivery`] for a batch, in one transaction: the deliveries claimed,
    /// each with its payload, in the order of `ids` (the others are finished or claimed
    /// elsewhere).
    pub async fn claim_deliveries(
        &self,
        ids: &[String],
        owner: &str,
        stale: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<(kiln_proto::DeliveryView, Vec<u8>)>, StoreError> {
        self.flush_intake().await?;
        with_backend!(self, b => b.claim_deliveries(ids, owner, stale, now, until).await)
    }

    /// [`Store::finish_delivery`] for a batch, in one transaction: for each, whether it was
    /// still accepted.
    pub async fn finish_deliveries(
        &self,
        done: &[(String, DeliveryOutcome)],
    ) -> Result<Vec<bool>, StoreError> {
        self.flush_intake().await?;
        with_backend!(self, b => b.finish_deliveries(done, Timestamp::now()).await)
    }

    /// Drops the bodies of webhook deliveries received before `before` that were ignored or
    /// failed and started no run (their rows, outcomes and sizes stay), in rounds of at most
    /// a thousand: how many were emptied. Deliveries still waiting keep theirs, and so do
    /// those that started runs: a run's `github.event` is its delivery's body
    /// ([`PayloadText::of_delivery`]), kept as long as the run.
    pub async fn prune_delivery_payloads(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = with_backend!(self, b => b.prune_delivery_payloads(before, 1000).await)?;
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }

    /// One delivery by kiln's id.
    pub async fn get_delivery(
        &self,
        id: &str,
    ) -> Result<Option<kiln_proto::DeliveryView>, StoreError> {
        self.flush_intake().await?;
        with_backend!(self, b => b.get_delivery(id).await)
    }

    /// The body a delivery came with.
    pub async fn delivery_payload(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.flush_intake().await?;
        with_backend!(self, b => b.delivery_payload(id).await)
    }

    /// A project's deliveries, newest first, at most `limit`.
    pub async fn list_deliveries(
        &self,
        project: ProjectId,
        limit: u32,
    ) -> Result<Vec<kiln_proto::DeliveryView>, StoreError> {
        self.flush_intake().await?;
        with_backend!(self, b => b.list_deliveries(project, limit).await)
    }

    /// Deliveries recorded and not processed yet, oldest first, at most `limit`.
    pub async fn accepted_deliveries(
        &self,
        limit: u32,
    ) -> Result<Vec<kiln_proto::DeliveryView>, StoreError> {
        self.flush_intake().await?;
        with_backend!(self, b => b.accepted_deliveries(limit).await)
    }
}

/// Outbound notifications (`notifications_body.rs`; see [`notifications`] for how a delivery
/// is sent at least once and never twice at a time).
impl Store {
    /// Registers a receiver of `project`'s events; it gets only events after the outbox's
    /// head now. The answer carries `secret`, to be shown once.
    pub async fn create_receiver(
        &self,
        project: ProjectId,
        url: &str,
        events: &[String],
        secret: &str,
    ) -> Result<kiln_proto::ReceiverView, StoreError> {
        let head = self.event_head().await?;
        let id = kiln_proto::ReceiverId::new();
        let sealed = self
            .keys()?
            .seal(&secrets::receiver_secret_id(&id.to_string()), secret)?;
        let mut view = with_backend!(self, b => b.create_receiver(id, project, url, events, &sealed, head, Timestamp::now()).await)?;
        view.secret = Some(secret.to_owned());
        Ok(view)
    }

    /// A project's receivers (not removed), oldest first, without their secrets.
    pub async fn list_receivers(
        &self,
        project: ProjectId,
    ) -> Result<Vec<kiln_proto::ReceiverView>, StoreError> {
        with_backend!(self, b => b.list_receivers(project).await)
    }

    /// Every receiver not removed, of every project: what the notifier matches events with.
    pub async fn active_receivers(&self) -> Result<Vec<ReceiverTarget>, StoreError> {
        with_backend!(self, b => b.active_receivers().await)
    }

    /// Removes a receiver of `project`; its pending deliveries are cancelled, the others stay
    /// listed. `false`: the project has no such receiver.
    pub async fn remove_receiver(
        &self,
        project: ProjectId,
        id: kiln_proto::ReceiverId,
    ) -> Result<bool, StoreError> {
        with_backend!(self, b => b.remove_receiver(project, id, Timestamp::now()).await)
    }

    /// Where the notifier `name` has read the outbox up to; a notifier that never ran starts
    /// at `start` (the outbox head: notifications are about what happens from now on).
    pub async fn notifier_cursor(&self, name: &str, start: i64) -> Result<i64, StoreError> {
        with_backend!(self, b => b.notifier_cursor(name, start, Timestamp::now()).await)
    }

    /// Records the deliveries of the events up to `upto` and moves the cursor `name` there,
    /// in one transaction (never back). A (receiver, event) recorded before is left as it is.
    /// Returns how many deliveries are new.
    pub async fn record_notifications(
        &self,
        name: &str,
        upto: i64,
        new: &[NewNotification],
    ) -> Result<usize, StoreError> {
        with_backend!(self, b => b.record_notifications(name, upto, new, Timestamp::now()).await)
    }

    /// Claims up to `limit` due deliveries for `owner` until `now + lease`; none that another
    /// sender holds a live claim on.
    pub async fn claim_notifications(
        &self,
        owner: &str,
        now: Timestamp,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedNotification>, StoreError> {
        let lease = jiff::SignedDuration::try_from(lease).unwrap_or(jiff::SignedDuration::MAX);
        let expires = now.checked_add(lease).unwrap_or(Timestamp::MAX);
        let mut claimed = with_backend!(self, b => b.claim_notifications(owner, now, expires, i64::from(limit)).await)?;
        for c in &mut claimed {
            let what = secrets::receiver_secret_id(&c.receiver.to_string());
            c.secret = self.keys()?.open(&what, &c.secret)?;
        }
        Ok(claimed)
    }

    /// Records an attempt of a claimed delivery and what becomes of it. `false`: the claim
    /// (`owner`, `token`) is no longer current, and nothing was recorded.
    pub async fn finish_notification_attempt(
        &self,
        id: kiln_proto::NotificationId,
        owner: &str,
        token: i64,
        attempt: &AttemptRecord,
        after: AfterAttempt,
    ) -> Result<bool, StoreError> {
        with_backend!(self, b => b.finish_notification_attempt(id, owner, token, attempt, after).await)
    }

    /// A project's deliveries with their attempts, newest first, at most `limit`.
    pub async fn list_notifications(
        &self,
        project: ProjectId,
        limit: u32,
    ) -> Result<Vec<kiln_proto::NotificationView>, StoreError> {
        with_backend!(self, b => b.list_notifications(project, i64::from(limit)).await)
    }

    /// One delivery with its attempts.
    pub async fn get_notification(
        &self,
        id: kiln_proto::NotificationId,
    ) -> Result<Option<kiln_proto::NotificationView>, StoreError> {
        with_backend!(self, b => b.get_notification(id).await)
    }

    /// Makes a delivered or failed delivery pending again, due at `now`, with a fresh count of
    /// attempts for its backoff. `false`: it is pending already, cancelled, or its receiver
    /// was removed.
    pub async fn retry_notification(
        &self,
        id: kiln_proto::NotificationId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        with_backend!(self, b => b.retry_notification(id, now).await)
    }
}

/// Watches (`on.watch`) and the versions they recorded (`watches_body.rs`).
impl Store {
    /// Makes `project`'s stored watches what its workflow files say: new entries are added
    /// (due at `now`), changed ones updated (a new source forgets its ETag and is due at
    /// `now`), entries gone from their file disabled — except in `keep_workflows`, files
    /// that could not be read this time.
    pub async fn sync_watches(
        &self,
        project: ProjectId,
        defs: &[WatchDef],
        keep_workflows: &[String],
        now: Timestamp,
    ) -> Result<WatchSyncReport, StoreError> {
        with_backend!(self, b => b.sync_watches(project, defs, keep_workflows, now).await)
    }

    /// Every watch of projects not archived (of one project with `Some`), disabled included.
    pub async fn list_watches(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<kiln_proto::WatchView>, StoreError> {
        with_backend!(self, b => b.list_watches(project).await)
    }

    pub async fn get_watch(
        &self,
        id: kiln_proto::WatchId,
    ) -> Result<Option<kiln_proto::WatchView>, StoreError> {
        with_backend!(self, b => b.get_watch(id).await)
    }

    /// A watch as a poller needs it.
    pub async fn watch_row(&self, id: kiln_proto::WatchId) -> Result<Option<WatchRow>, StoreError> {
        with_backend!(self, b => b.watch_row(id).await)
    }

    /// Enabled watches due at `now`, longest due first, at most `limit`.
    pub async fn due_watches(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<WatchRow>, StoreError> {
        with_backend!(self, b => b.due_watches(now, limit).await)
    }

    /// The soonest poll of any enabled watch.
    pub async fn next_watch_poll(&self) -> Result<Option<Timestamp>, StoreError> {
        with_backend!(self, b => b.next_watch_poll().await)
    }

    /// Claims a watch's poll: moves `next_poll_at` from `seen_next` (what the poller read)
    /// to `lease_until`. False when another poller moved it first.
    pub async fn claim_watch(
        &self,
        id: kiln_proto::WatchId,
        seen_next: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool, StoreError> {
        with_backend!(self, b => b.claim_watch(id, seen_next, lease_until).await)
    }

    /// Every version the watch recorded.
    pub async fn seen_versions(&self, id: kiln_proto::WatchId) -> Result<Vec<String>, StoreError> {
        with_backend!(self, b => b.seen_versions(id).await)
    }

    /// Records a successful poll in one transaction: its versions (each once per watch) and
    /// the watch's ETag and next poll, failures reset. Returns the versions that were
    /// inserted to start a run — only those may start one.
    pub async fn record_poll(
        &self,
        id: kiln_proto::WatchId,
        poll: &PollRecord,
    ) -> Result<Vec<ClaimedVersion>, StoreError> {
        with_backend!(self, b => b.record_poll(id, poll).await)
    }

    /// Records a failed poll: its error, one more failure, when to try again.
    pub async fn record_poll_error(
        &self,
        id: kiln_proto::WatchId,
        error: &str,
        next_poll_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        with_backend!(self, b => b.record_poll_error(id, error, next_poll_at, now).await)
    }

    /// Records what a claimed version did: the run it started, or why none started.
    pub async fn finish_watch_version(
        &self,
        watch: kiln_proto::WatchId,
        version: uuid::Uuid,
        result: Result<RunId, &str>,
    ) -> Result<(), StoreError> {
        with_backend!(self, b => b.finish_watch_version(watch, version, result).await)
    }

    /// Every version a watch recorded, oldest first.
    pub async fn list_watch_versions(
        &self,
        id: kiln_proto::WatchId,
    ) -> Result<Vec<SeenVersion>, StoreError> {
        with_backend!(self, b => b.list_watch_versions(id).await)
    }
}

/// Package builds (`kiln build`) and their sessions (`packages_body.rs`; see [`packages`] for
/// who reads what). Calls that record take the time, so that builders (and tests) decide it.
impl Store {
    /// Starts a session: the builds of one `kiln build` (or of one workflow job building a
    /// tree) of the tree in the folder `tree`, `slots` at a time.
    pub async fn begin_build_session(
        &self,
        tree: &str,
        slots: u32,
        at: Timestamp,
    ) -> Result<BuildSessionId, StoreError> {
        with_backend!(self, b => b.begin_build_session(tree, slots, at).await)
    }

    /// Ends a session with what it did. `false`: no such session, or it had ended already
    /// (the first end stands).
    pub async fn finish_build_session(
        &self,
        id: BuildSessionId,
        counts: &BuildCounts,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        with_backend!(self, b => b.finish_build_session(id, counts, at).await)
    }

    pub async fn build_session(
        &self,
        id: BuildSessionId,
    ) -> Result<Option<BuildSession>, StoreError> {
        with_backend!(self, b => b.build_session(id).await)
    }

    /// Sessions, newest first (by start), at most `limit`.
    pub async fn build_sessions(&self, limit: u32) -> Result<Vec<BuildSession>, StoreError> {
        with_backend!(self, b => b.build_sessions(limit).await)
    }

    /// Records `builds` in ONE transaction, all or none, a few statements for however many:
    /// a builder batches what finished since its last call instead of committing each. The
    /// database refuses the whole batch ([`StoreError::Query`]) when a build's session does
    /// not exist, an id is recorded already, or an output is missing from a `success` or
    /// `cached` build (or present on another). NUL characters in texts become U+FFFD.
    pub async fn record_package_builds(&self, builds: &[PackageBuild]) -> Result<(), StoreError> {
        with_backend!(self, b => b.record_package_builds(builds).await)
    }

    /// The successful build of each of `keys` that has one (the newest, when a key was built
    /// more than once): what a builder reuses instead of building. Keys without one are
    /// absent. One query per 2,000 keys, so a whole tree is looked up at once. The output
    /// blob is not checked here ([`BlobStore::contains_content`] does).
    pub async fn cached_builds(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, CachedBuild>, StoreError> {
        with_backend!(self, b => b.cached_builds(keys).await)
    }

    /// One build by id.
    pub async fn package_build(
        &self,
        id: PackageBuildId,
    ) -> Result<Option<PackageBuild>, StoreError> {
        with_backend!(self, b => b.package_build(id).await)
    }

    /// The latest build of `origin` (by finish time), whatever its status.
    pub async fn package_latest(&self, origin: &str) -> Result<Option<PackageBuild>, StoreError> {
        Ok(self.package_history(origin, None, 1).await?.pop())
    }

    /// The builds of `origin`, newest first (by finish time), at most `limit`; with
    /// `before`, only those older than that build (the last of the previous page).
    pub async fn package_history(
        &self,
        origin: &str,
        before: Option<PackageBuildId>,
        limit: u32,
    ) -> Result<Vec<PackageBuild>, StoreError> {
        with_backend!(self, b => b.package_history(origin, before, limit).await)
    }

    /// The latest build of every origin ever built, by origin, at most `limit` of them;
    /// with `after`, only origins after that one (the last of the previous page).
    pub async fn package_status(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PackageBuild>, StoreError> {
        with_backend!(self, b => b.package_status(after, limit).await)
    }

    /// How long the latest successful build of each of `origins` took: the scheduler's
    /// critical-path weights. Origins never built successfully are absent.
    pub async fn package_durations(
        &self,
        origins: &[String],
    ) -> Result<HashMap<String, std::time::Duration>, StoreError> {
        with_backend!(self, b => b.package_durations(origins).await)
    }

    /// Package figures: the last finished session's counts, all-time counts by status, and
    /// build-time percentiles of every successful build.
    pub async fn package_stats(&self) -> Result<PackageStats, StoreError> {
        with_backend!(self, b => b.package_stats().await)
    }

    /// Packs the folder `dir` (a build's `$KILN_OUT`) as a deterministic tar
    /// ([`packages::pack_output`]) straight into the content-addressed blob store: an
    /// unchanged output is the same blob.
    pub async fn store_package_output(&self, dir: &Path) -> Result<ContentBlob, OutputError> {
        let dir = dir.to_owned();
        self.blobs()
            .put_content_with(move |out: &mut dyn std::io::Write| packages::pack_output(&dir, out))
            .await
    }

    /// Unpacks the output blob `digest` into `dst` (missing, or an empty folder) with every
    /// check of [`packages::unpack_output`], and checks the blob against its digest. On an
    /// error `dst` is left empty: a refused or damaged archive leaves nothing behind.
    pub async fn restore_package_output(
        &self,
        digest: &str,
        dst: &Path,
    ) -> Result<(), OutputError> {
        let blocking = |e: tokio::task::JoinError| StoreError::BlobTask(e.to_string());
        let prepared = dst.to_owned();
        tokio::task::spawn_blocking(move || packages::prepare_destination(&prepared))
            .await
            .map_err(blocking)??;
        let into = dst.to_owned();
        let unpacked = self
            .blobs()
            .read_content_with(digest, move |archive: &mut dyn std::io::Read| {
                packages::unpack_output(archive, &into)
            })
            .await;
        if unpacked.is_err() {
            let emptied = dst.to_owned();
            let cleanup =
                tokio::task::spawn_blocking(move || packages::empty_destination(&emptied))
                    .await
                    .map_err(blocking)?;
            if let Err(e) = cleanup {
                tracing::warn!(
                    path = %dst.display(),
                    error = %e,
                    "could not empty a folder after a failed unpack"
                );
            }
        }
        unpacked
    }
}

/// Remote workers (`workers_body.rs`).
impl Store {
    /// Records a worker that introduced itself; its id.
    pub async fn register_worker(
        &self,
        new: &kiln_proto::workers::RegisterWorker,
        at: Timestamp,
    ) -> Result<kiln_proto::WorkerId, StoreError> {
        let id = with_backend!(self, b => b.register_worker(new, at).await);
        self.wrote();
        id
    }

    /// Notes that a worker was heard from at `at`: whether it is paused, or `None` when no
    /// worker has this id.
    pub async fn worker_seen(
        &self,
        id: kiln_proto::WorkerId,
        at: Timestamp,
    ) -> Result<Option<bool>, StoreError> {
        with_backend!(self, b => b.worker_seen(id, at).await)
    }

    /// Pauses (no new jobs) or resumes a worker, appending `worker.status`. `false`: no such
    /// worker.
    pub async fn set_worker_paused(
        &self,
        id: kiln_proto::WorkerId,
        paused: bool,
    ) -> Result<bool, StoreError> {
        let done =
            with_backend!(self, b => b.set_worker_paused(id, paused, Timestamp::now()).await);
        self.wrote();
        done
    }

    /// Announces `worker.status` offline, once, for every worker not heard from since
    /// `silent_since` (a lease ago); its ids. It is announced back at its next heartbeat.
    pub async fn mark_offline_workers(
        &self,
        silent_since: Timestamp,
    ) -> Result<Vec<kiln_proto::WorkerId>, StoreError> {
        let ids =
            with_backend!(self, b => b.mark_offline_workers(silent_since, Timestamp::now()).await)?;
        if !ids.is_empty() {
            self.wrote();
        }
        Ok(ids)
    }

    /// A worker's log, newest first: its `worker.status` and `worker.idle` events and the
    /// `job.leased` events of the jobs it was given; `before` an event id to page.
    pub async fn worker_log(
        &self,
        id: kiln_proto::WorkerId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        with_backend!(self, b => b.worker_log(id, before, limit).await)
    }

    /// Appends `worker.idle`: the worker ended its last job.
    pub async fn worker_idle(&self, id: kiln_proto::WorkerId) -> Result<(), StoreError> {
        with_backend!(self, b => b.worker_idle(id, Timestamp::now()).await)?;
        self.wrote();
        Ok(())
    }

    /// Every worker, newest first, with the jobs it holds; `offline` when not heard from for
    /// longer than `offline_after` before `now`.
    pub async fn list_workers(
        &self,
        now: Timestamp,
        offline_after: std::time::Duration,
    ) -> Result<Vec<kiln_proto::WorkerView>, StoreError> {
        let after = i64::try_from(offline_after.as_millis()).unwrap_or(i64::MAX);
        with_backend!(self, b => b.list_workers(None, now, after).await)
    }

    /// One worker, as [`Store::list_workers`] shows it.
    pub async fn get_worker(
        &self,
        id: kiln_proto::WorkerId,
        now: Timestamp,
        offline_after: std::time::Duration,
    ) -> Result<Option<kiln_proto::WorkerView>, StoreError> {
        let after = i64::try_from(offline_after.as_millis()).unwrap_or(i64::MAX);
        Ok(
            with_backend!(self, b => b.list_workers(Some(id), now, after).await)?
                .into_iter()
                .next(),
        )
    }
}

/// Artifacts (`artifacts_body.rs`).
impl Store {
    /// Records an artifact whose blob is stored; its id. A name another job of the run used
    /// already is [`StoreError::NameTaken`]; the same job using it again replaces it.
    pub async fn record_artifact(
        &self,
        new: &artifacts::NewArtifact,
    ) -> Result<kiln_proto::ArtifactId, StoreError> {
        with_backend!(self, b => b.record_artifact(new, Timestamp::now()).await)
    }

    pub async fn get_artifact(
        &self,
        id: kiln_proto::ArtifactId,
    ) -> Result<Option<kiln_proto::ArtifactView>, StoreError> {
        with_backend!(self, b => b.get_artifact(id).await)
    }

    /// Up to `limit` artifacts (0: all) matching `filter`, newest first, older than
    /// `before` when given.
    pub async fn list_artifacts(
        &self,
        filter: &artifacts::ArtifactFilter,
        before: Option<kiln_proto::ArtifactId>,
        limit: usize,
    ) -> Result<Vec<kiln_proto::ArtifactView>, StoreError> {
        let want = if limit == 0 { usize::MAX } else { limit };
        if filter.labels.is_empty() {
            let n = i64::try_from(want).unwrap_or(i64::MAX);
            return with_backend!(self, b => b.list_artifacts(filter, before, n).await);
        }
        // Labels live in the metadata JSON: read pages and keep the matching rows.
        const PAGE: usize = 500;
        let mut out = Vec::new();
        let mut cursor = before;
        loop {
            let page =
                with_backend!(self, b => b.list_artifacts(filter, cursor, PAGE as i64).await)?;
            let full = page.len() == PAGE;
            cursor = page.last().map(|a| a.id);
            out.extend(page.into_iter().filter(|a| filter.labels_match(a)));
            if out.len() >= want || !full {
                out.truncate(want);
                return Ok(out);
            }
        }
    }

    /// Whether an artifact of `run` has the blob `sha256` (what a job of the run may read).
    pub async fn run_has_blob(&self, run: RunId, sha256: &str) -> Result<bool, StoreError> {
        with_backend!(self, b => b.run_has_blob(run, sha256).await)
    }
}
