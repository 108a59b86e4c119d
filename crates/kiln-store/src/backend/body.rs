// The backend's queries, written once for both dialects. `sqlite.rs` and `postgres.rs` each
// `include!` this file after defining `Db` (the sqlx database type) and `SQL` (the few
// statements whose spelling differs), so every query is checked against both drivers without
// a maze of generic sqlx bounds. Placeholders are `$N`: PostgreSQL's own, and sqlx's SQLite
// driver binds `$N` by number too. (No `//!` here: an included file cannot carry one; the
// including modules do.)

use std::collections::HashMap;

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId, RunStatus};
use kiln_proto::{Event, Job, Project, Run, Step};
use serde_json::{Map, Value, json};
use sqlx::{Pool, Row as _, Transaction};

use crate::backend::batch;
use crate::backend::{
    Pending, decode, json_text, ms, opt_ts, parse, parse_map, parse_strings, truncate, ts,
};
use crate::blob::BlobStore;
use crate::error::{StoreError, query};
use crate::types::{
    Claim, Claimed, ExpiredLease, Lease, LogSlice, NewJob, NewRun, Op, OpResult, Refusal, RunFilter,
};

type DbRow = <Db as sqlx::Database>::Row;
/// A read transaction. (Write transactions are each backend's `WriteTx`.)
type ReadTx = Transaction<'static, Db>;
/// A connection inside a write transaction.
type Conn = <Db as sqlx::Database>::Connection;

macro_rules! project_cols {
    () => {
        "id, name, source, hook_id, created_at"
    };
}
macro_rules! run_cols {
    () => {
        "id, project_id, workflow, workflow_name, run_number, run_attempt, status, event, \
         git_ref, sha, inputs, created_at, started_at, finished_at"
    };
}
macro_rules! job_cols {
    () => {
        "id, run_id, job_key, name, matrix, needs, status, attempts, max_attempts, started_at, \
         finished_at, outputs, labels"
    };
}
macro_rules! step_cols {
    () => {
        "s.job_id, s.idx, s.name, s.status, s.outputs, s.started_at, s.finished_at"
    };
}

/// Job states in which a lease is held: the only ones an op carrying a token applies to.
const HELD: [JobStatus; 2] = [JobStatus::Leased, JobStatus::Running];

/// One database and its blob store. On PostgreSQL `writer` and `reader` are the same pool;
/// on SQLite `writer` is one connection held for good (SQLite allows one writer at a time, and
/// queueing in the pool is cheaper than busy-waiting on the file lock).
pub(crate) struct Backend {
    writer: Writer,
    reader: Pool<Db>,
    blobs: BlobStore,
    /// What outbox readers may hand out (`Settle`; used where ids are not in commit order).
    settle: std::sync::Mutex<super::Settle>,
    /// Woken after each commit that appended events (`Dialect::announce`).
    announce: std::sync::Arc<tokio::sync::Notify>,
}

fn get<'r, T>(row: &'r DbRow, table: &'static str, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
{
    row.try_get(column).map_err(|e| decode(table, column, e))
}

fn project_from_row(row: &DbRow) -> Result<Project, StoreError> {
    const T: &str = "projects";
    Ok(Project {
        id: parse(T, "id", &get::<String>(row, T, "id")?)?,
        name: get(row, T, "name")?,
        source: get(row, T, "source")?,
        hook_id: get(row, T, "hook_id")?,
        created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
    })
}

fn run_from_row(row: &DbRow) -> Result<Run, StoreError> {
    const T: &str = "runs";
    Ok(Run {
        id: parse(T, "id", &get::<String>(row, T, "id")?)?,
        project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
        workflow: get(row, T, "workflow")?,
        workflow_name: get(row, T, "workflow_name")?,
        run_number: get(row, T, "run_number")?,
        run_attempt: get(row, T, "run_attempt")?,
        status: parse(T, "status", &get::<String>(row, T, "status")?)?,
        event: get(row, T, "event")?,
        git_ref: get(row, T, "git_ref")?,
        sha: get(row, T, "sha")?,
        inputs: parse_map(T, "inputs", &get::<String>(row, T, "inputs")?)?,
        created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
        started_at: opt_ts(T, "started_at", get(row, T, "started_at")?)?,
        finished_at: opt_ts(T, "finished_at", get(row, T, "finished_at")?)?,
        jobs: Vec::new(),
    })
}

fn job_from_row(row: &DbRow) -> Result<Job, StoreError> {
    const T: &str = "jobs";
    Ok(Job {
        id: parse(T, "id", &get::<String>(row, T, "id")?)?,
        run: parse(T, "run_id", &get::<String>(row, T, "run_id")?)?,
        key: get(row, T, "job_key")?,
        name: get(row, T, "name")?,
        matrix: parse_map(T, "matrix", &get::<String>(row, T, "matrix")?)?,
        status: parse(T, "status", &get::<String>(row, T, "status")?)?,
        attempts: get(row, T, "attempts")?,
        max_attempts: get(row, T, "max_attempts")?,
        needs: parse_strings(T, "needs", &get::<String>(row, T, "needs")?)?,
        labels: parse_strings(T, "labels", &get::<String>(row, T, "labels")?)?,
        started_at: opt_ts(T, "started_at", get(row, T, "started_at")?)?,
        finished_at: opt_ts(T, "finished_at", get(row, T, "finished_at")?)?,
        outputs: parse_map(T, "outputs", &get::<String>(row, T, "outputs")?)?,
        steps: Vec::new(),
    })
}

/// A step row and the job it belongs to.
fn step_from_row(row: &DbRow) -> Result<(String, Step), StoreError> {
    const T: &str = "steps";
    let index: i64 = get(row, T, "idx")?;
    Ok((
        get(row, T, "job_id")?,
        Step {
            index: u32::try_from(index).map_err(|e| decode(T, "idx", e))?,
            name: get(row, T, "name")?,
            status: parse(T, "status", &get::<String>(row, T, "status")?)?,
            outputs: parse_map(T, "outputs", &get::<String>(row, T, "outputs")?)?,
            started_at: opt_ts(T, "started_at", get(row, T, "started_at")?)?,
            finished_at: opt_ts(T, "finished_at", get(row, T, "finished_at")?)?,
        },
    ))
}

fn event_from_row(row: &DbRow) -> Result<Event, StoreError> {
    const T: &str = "events";
    let id_of =
        |column: &'static str| -> Result<Option<String>, StoreError> { get(row, T, column) };
    Ok(Event {
        id: get(row, T, "id")?,
        at: ts(T, "at", get(row, T, "at")?)?,
        kind: get(row, T, "kind")?,
        project: id_of("project_id")?
            .map(|s| parse(T, "project_id", &s))
            .transpose()?,
        run: id_of("run_id")?
            .map(|s| parse(T, "run_id", &s))
            .transpose()?,
        job: id_of("job_id")?
            .map(|s| parse(T, "job_id", &s))
            .transpose()?,
        data: serde_json::from_str(&get::<String>(row, T, "data")?)
            .map_err(|e| decode(T, "data", e))?,
    })
}

/// The lease state of one job, read to explain a refusal or to check a log offset.
struct LeaseState {
    status: JobStatus,
    token: i64,
    log_length: i64,
    /// Who holds the lease (`None` when nobody does).
    owner: Option<String>,
}

/// Why an op carrying `token` does not apply to a job in `state` (`None`: it applies).
fn token_refusal(
    job: JobId,
    state: &LeaseState,
    token: i64,
    allowed: &[JobStatus],
) -> Option<Refusal> {
    if state.token != token {
        Some(Refusal::StaleToken {
            job,
            given: token,
            current: state.token,
        })
    } else if !allowed.contains(&state.status) {
        Some(Refusal::WrongState {
            job,
            status: state.status,
        })
    } else {
        None
    }
}

fn refused(reason: Refusal) -> OpResult {
    OpResult::Refused { reason }
}

impl Backend {
    pub(crate) fn new(writer: Writer, reader: Pool<Db>, blobs: BlobStore) -> Self {
        Self {
            writer,
            reader,
            blobs,
            settle: std::sync::Mutex::default(),
            announce: std::sync::Arc::default(),
        }
    }

    pub(crate) fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        self.writer.begin().await
    }

    async fn begin_read(&self) -> Result<ReadTx, StoreError> {
        super::begin_detached(&self.reader, SQL.begin_read)
            .await
            .map_err(query("begin a read transaction"))
    }

    /// Writes the transaction's blobs and events, then commits.
    async fn finish(&self, mut tx: WriteTx, mut pending: Pending) -> Result<(), StoreError> {
        // Blobs before commit: the rows naming them become visible only at commit, so no
        // reader ever finds a chunk row without its bytes. If the write fails, the
        // transaction is dropped (rolled back) and an orphan blob at most is left.
        if let Some((key, bytes)) = pending.take_segment() {
            self.blobs.put(&key, bytes).await?;
        }
        let appends = pending.has_events();
        if appends {
            sqlx::query(SQL.insert_events)
                .bind(pending.events_json())
                .execute(&mut *tx)
                .await
                .map_err(query("append events to the outbox"))?;
        }
        tx.commit()
            .await
            .map_err(query("commit a write transaction"))?;
        if appends {
            self.announce.notify_one();
        }
        Ok(())
    }

    // ---- projects ----------------------------------------------------------------------

    pub(crate) async fn upsert_project(
        &self,
        name: &str,
        source: &str,
        now: Timestamp,
    ) -> Result<Project, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "INSERT INTO projects (id, name, source, hook_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET source = excluded.source \
             RETURNING ",
            project_cols!()
        ))
        .bind(ProjectId::new().to_string())
        .bind(name)
        .bind(source)
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(ms(now))
        .fetch_one(&mut *tx)
        .await
        .map_err(query("upsert a project"))?;
        let project = project_from_row(&row)?;
        tx.commit().await.map_err(query("commit a project"))?;
        Ok(project)
    }

    pub(crate) async fn get_project(&self, id: ProjectId) -> Result<Option<Project>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            project_cols!(),
            " FROM projects WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(query("read a project"))?
        .map(|row| project_from_row(&row))
        .transpose()
    }

    pub(crate) async fn find_project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            project_cols!(),
            " FROM projects WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.reader)
        .await
        .map_err(query("find a project by name"))?
        .map(|row| project_from_row(&row))
        .transpose()
    }

    // ---- runs and jobs: writes ----------------------------------------------------------

    /// Creates runs with their jobs, all in one transaction (a burst of webhook deliveries
    /// becomes one commit, not one per run).
    pub(crate) async fn create_runs(&self, news: Vec<NewRun>) -> Result<Vec<Run>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut pending = Pending::default();
        let mut runs = Vec::with_capacity(news.len());
        let mut numbers = RunNumbers::default();
        let mut rows = Vec::with_capacity(news.len());
        let mut jobs = Vec::new();
        for new in news {
            runs.push(run_row(&mut tx, &mut pending, &mut numbers, new, &mut rows, &mut jobs).await?);
        }
        // A few statements for the whole batch (every statement is a round trip to the
        // database's thread): the runs in multi-row inserts, their jobs in one.
        insert_run_rows(&mut tx, rows).await?;
        insert_job_rows(&mut tx, jobs).await?;
        self.finish(tx, pending).await?;
        Ok(runs)
    }
    /// Re-runs a finished run's failed jobs: see [`crate::Store::retry_run`].
    pub(crate) async fn retry_run(
        &self,
        run: RunId,
        at: Timestamp,
        driver: Option<&crate::types::Driver>,
    ) -> Result<Result<(), RunStatus>, StoreError> {
        let mut tx = self.begin_write().await?;
        let run_id = run.to_string();
        let row = sqlx::query("SELECT status, project_id FROM runs WHERE id = $1")
            .bind(&run_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("read a run to retry"))?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                what: "run",
                id: run_id,
            });
        };
        let status: RunStatus = parse("runs", "status", &get::<String>(&row, "runs", "status")?)?;
        if !matches!(status, RunStatus::Failure | RunStatus::Cancelled) {
            return Ok(Err(status));
        }
        let project: String = get(&row, "runs", "project_id")?;
        let at = ms(at);
        sqlx::query(
            "UPDATE runs SET status = 'queued', run_attempt = run_attempt + 1, \
             started_at = NULL, finished_at = NULL, driver = $2, driver_until = $3, \
             cancel_requested_at = NULL WHERE id = $1",
        )
        .bind(&run_id)
        .bind(driver.map(|d| d.owner.clone()))
        .bind(driver.map(|d| ms(d.until)))
        .execute(&mut *tx)
        .await
        .map_err(query("start a run's next attempt"))?;
        let reset = sqlx::query(
            "UPDATE jobs SET status = 'pending', outputs = '{}', started_at = NULL, \
             finished_at = NULL, lease_owner = NULL, lease_expires_at = NULL, offered_at = NULL \
             WHERE run_id = $1 AND status IN ('failure', 'cancelled', 'timed_out', 'skipped') \
             RETURNING id",
        )
        .bind(&run_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(query("reset a run's failed jobs"))?;
        let mut pending = Pending::default();
        pending.run_status(at, &project, &run_id, RunStatus::Queued, false);
        for row in &reset {
            let job: String = get(row, "jobs", "id")?;
            pending.job_status(
                at,
                &project,
                &run_id,
                &job,
                JobStatus::Pending,
                json!({ "retry": true }),
            );
        }
        self.finish(tx, pending).await?;
        Ok(Ok(()))
    }

    pub(crate) async fn expire_leases(
        &self,
        now: Timestamp,
        scope: crate::types::LeaseScope<'_>,
    ) -> Result<Vec<ExpiredLease>, StoreError> {
        use crate::types::LeaseScope;
        let mut tx = self.begin_write().await?;
        let mut pending = Pending::default();
        let now_ms = ms(now);
        let mut expired = Vec::new();
        // Two set-based updates (spent attempts fail, the rest go back to the queue) rather
        // than a read-then-write loop. The lease token is kept so the old holder's token
        // stays current-but-unleased and is refused as such, and the next grant moves past it.
        for requeue in [false, true] {
            let sql = match (scope, requeue) {
                (LeaseScope::Expired, false) => {
                    "UPDATE jobs SET status = 'failure', finished_at = $2, lease_owner = NULL, \
                     lease_expires_at = NULL \
                     WHERE status IN ('leased', 'running') AND lease_expires_at < $1 \
                     AND attempts >= max_attempts RETURNING id, run_id, project_id, attempts"
                }
                (LeaseScope::Expired, true) => {
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, \
                     lease_expires_at = NULL \
                     WHERE status IN ('leased', 'running') AND lease_expires_at < $1 \
                     AND attempts < max_attempts  \
                     RETURNING id, run_id, project_id, attempts"
                }
                (LeaseScope::ExpiredDrivenBy(_), false) => {
                    "UPDATE jobs SET status = 'failure', finished_at = $2, lease_owner = NULL, \
                     lease_expires_at = NULL \
                     WHERE status IN ('leased', 'running') AND lease_expires_at < $1 \
                     AND attempts >= max_attempts AND run_id IN (SELECT id FROM runs \
                     WHERE driver IS NULL OR driver = $3 OR driver_until < $1) \
                     RETURNING id, run_id, project_id, attempts"
                }
                (LeaseScope::ExpiredDrivenBy(_), true) => {
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, \
                     lease_expires_at = NULL \
                     WHERE status IN ('leased', 'running') AND lease_expires_at < $1 \
                     AND attempts < max_attempts AND run_id IN (SELECT id FROM runs \
                     WHERE driver IS NULL OR driver = $2 OR driver_until < $1) \
                     RETURNING id, run_id, project_id, attempts"
                }
                (LeaseScope::HeldBy(_), false) => {
                    "UPDATE jobs SET status = 'failure', finished_at = $2, lease_owner = NULL, \
                     lease_expires_at = NULL \
                     WHERE status IN ('leased', 'running') AND lease_owner = $1 \
                     AND attempts >= max_attempts RETURNING id, run_id, project_id, attempts"
                }
                (LeaseScope::HeldBy(_), true) => {
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, \
                     lease_expires_at = NULL \
                     WHERE status IN ('leased', 'running') AND lease_owner = $1 \
                     AND attempts < max_attempts  \
                     RETURNING id, run_id, project_id, attempts"
                }
            };
            let mut q = sqlx::query(sql);
            q = match scope {
                LeaseScope::HeldBy(owner) => q.bind(owner.to_owned()),
                LeaseScope::Expired | LeaseScope::ExpiredDrivenBy(_) => q.bind(now_ms),
            };
            if !requeue {
                q = q.bind(now_ms);
            }
            if let LeaseScope::ExpiredDrivenBy(me) = scope {
                q = q.bind(me.to_owned());
            }
            let rows = q
                .fetch_all(&mut *tx)
                .await
                .map_err(query("expire leases"))?;
            for row in rows {
                let job: String = get(&row, "jobs", "id")?;
                let run: String = get(&row, "jobs", "run_id")?;
                let project: String = get(&row, "jobs", "project_id")?;
                let attempts: i64 = get(&row, "jobs", "attempts")?;
                let status = if requeue {
                    JobStatus::Queued
                } else {
                    JobStatus::Failure
                };
                pending.job_status(
                    now_ms,
                    &project,
                    &run,
                    &job,
                    status,
                    json!({ "reason": "lease_expired", "attempts": attempts }),
                );
                expired.push(ExpiredLease {
                    job: parse("jobs", "id", &job)?,
                    run: parse("jobs", "run_id", &run)?,
                    requeued: requeue,
                });
            }
        }
        self.finish(tx, pending).await?;
        Ok(expired)
    }

    pub(crate) async fn lease_of(&self, job: JobId) -> Result<Option<Lease>, StoreError> {
        let mut conn = self
            .reader
            .acquire()
            .await
            .map_err(query("read a job's lease"))?;
        Ok(lease_state(&mut conn, job).await?.map(|l| Lease {
            status: l.status,
            owner: l.owner,
            token: l.token,
        }))
    }

    pub(crate) async fn claim_jobs(&self, claim: &Claim) -> Result<Vec<Claimed>, StoreError> {
        let at = ms(claim.at);
        let statement = sqlx::query(SQL.claim_jobs)
            .bind(&claim.owner)
            .bind(at.saturating_add(claim.ttl_ms))
            .bind(claim.labels.as_ref().map(json_text))
            .bind(i64::from(claim.limit))
            .bind(at)
            .bind(claim.offered_only);
        // Either the statement appends its own events and commits alone, or it runs in a
        // write transaction that appends them.
        let (rows, tx) = if SQL.claim_appends_events {
            let rows = statement.fetch_all(&self.reader).await;
            let rows = rows.map_err(query("claim jobs"))?;
            if !rows.is_empty() {
                self.announce.notify_one();
            }
            (rows, None)
        } else {
            let mut tx = self.begin_write().await?;
            let rows = statement.fetch_all(&mut *tx).await;
            (rows.map_err(query("claim jobs"))?, Some(tx))
        };
        let mut pending = Pending::default();
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            let project: String = get(row, "jobs", "project_id")?;
            let token: i64 = get(row, "jobs", "lease_token")?;
            let order = (
                get::<i64>(row, "jobs", "created_at")?,
                job.run.to_string(),
                get::<i64>(row, "jobs", "seq")?,
            );
            claimed.push((
                order,
                Claimed {
                    project: parse("jobs", "project_id", &project)?,
                    token,
                    driver: get(row, "jobs", "driver")?,
                    job,
                },
            ));
        }
        // RETURNING gives no order: put the claims back in queue order, and the events too.
        claimed.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(tx) = tx {
            for (_, c) in &claimed {
                pending.job_status(
                    at,
                    &c.project.to_string(),
                    &c.job.run.to_string(),
                    &c.job.id.to_string(),
                    JobStatus::Leased,
                    json!({ "owner": claim.owner, "attempt": c.job.attempts }),
                );
            }
            self.finish(tx, pending).await?;
        }
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }
}

/// What one transaction creating runs has learnt: the projects it has found (and, on
/// PostgreSQL, locked) and the next run number of each (project, workflow). A burst of runs of
/// one workflow thus looks both up once, not once per run; the lock (or SQLite's one writer)
/// keeps the numbers its own until it commits.
#[derive(Default)]
struct RunNumbers {
    locked: std::collections::HashSet<String>,
    next: HashMap<(String, String), i64>,
}

/// A run row to insert (see [`insert_run_rows`]).
struct RunRow {
    id: String,
    project: String,
    workflow: String,
    workflow_name: String,
    run_number: i64,
    status: &'static str,
    event: String,
    git_ref: String,
    sha: String,
    inputs: String,
    at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    driver: Option<String>,
    driver_until: Option<i64>,
    /// `runs.context` and `runs.context_packed` (see `types::pack_context`).
    context: (Option<String>, Option<Vec<u8>>),
}

/// Numbers a new run (locking its project in `tx` the first time) and adds its row to
/// `rows` and its jobs' rows to `jobs`, for [`insert_run_rows`] and [`insert_job_rows`];
/// the run as it will read back.
async fn run_row(
    tx: &mut Conn,
    pending: &mut Pending,
    numbers: &mut RunNumbers,
    new: NewRun,
    rows: &mut Vec<RunRow>,
    jobs: &mut Vec<Value>,
) -> Result<Run, StoreError> {
    let project = new.project.to_string();
    let run_id = new.id.to_string();
    if !numbers.locked.contains(&project) {
        let found = sqlx::query(SQL.lock_project)
            .bind(&project)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("look up the project of a new run"))?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                what: "project",
                id: project,
            });
        }
        numbers.locked.insert(project.clone());
    }
    let key = (project.clone(), new.workflow.clone());
    let run_number: i64 = match numbers.next.get(&key) {
        Some(&n) => n,
        None => sqlx::query_scalar(
            "SELECT COALESCE(MAX(run_number), 0) + 1 FROM runs \
             WHERE project_id = $1 AND workflow = $2",
        )
        .bind(&project)
        .bind(&new.workflow)
        .fetch_one(&mut *tx)
        .await
        .map_err(query("number a new run"))?,
    };
    numbers.next.insert(key, run_number + 1);

    let at = ms(new.at);
    let started_at = (new.status == RunStatus::Running).then_some(at);
    let finished_at = new.status.is_terminal().then_some(at);
    rows.push(RunRow {
        id: run_id.clone(),
        project: project.clone(),
        workflow: new.workflow.clone(),
        workflow_name: new.workflow_name.clone(),
        run_number,
        status: new.status.as_str(),
        event: new.event.clone(),
        git_ref: new.git_ref.clone(),
        sha: new.sha.clone(),
        inputs: json_text(&new.inputs),
        at,
        started_at,
        finished_at,
        driver: new.driver.as_ref().map(|d| d.owner.clone()),
        driver_until: new.driver.as_ref().map(|d| ms(d.until)),
        context: if new.context.is_empty() {
            (None, None)
        } else {
            crate::types::pack_context(new.context.to_json())
        },
    });
    pending.run_status(at, &project, &run_id, new.status, true);

    let jobs = job_rows(pending, new.id, &project, 0, new.jobs, at, jobs);

    let at = truncate(new.at);
    Ok(Run {
        id: new.id,
        project: new.project,
        workflow: new.workflow,
        workflow_name: new.workflow_name,
        run_number,
        run_attempt: 1,
        status: new.status,
        event: new.event,
        git_ref: new.git_ref,
        sha: new.sha,
        inputs: new.inputs,
        created_at: at,
        started_at: started_at.map(|_| at),
        finished_at: finished_at.map(|_| at),
        jobs,
    })
}

/// `n` rows as chunks whose sizes are powers of two, at most 64, largest first: a
/// multi-row statement then has one of seven shapes, which stay prepared in sqlx's
/// statement cache, and a batch of up to 127 rows takes at most seven statements.
fn row_chunks(n: usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < n {
        let left = n - at;
        let size = if left >= 64 {
            64
        } else {
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        chunks.push(at..at + size);
        at += size;
    }
    chunks
}

#[cfg(test)]
#[test]
fn row_chunks_are_powers_of_two_largest_first() {
    let sizes = |n| row_chunks(n).iter().map(ExactSizeIterator::len).collect::<Vec<_>>();
    assert_eq!(sizes(0), Vec::<usize>::new());
    assert_eq!(sizes(1), [1]);
    assert_eq!(sizes(63), [32, 16, 8, 4, 2, 1]);
    assert_eq!(sizes(64), [64]);
    assert_eq!(sizes(130), [64, 64, 2]);
    let chunks = row_chunks(100);
    assert_eq!(chunks.first().map(|c| c.start), Some(0));
    assert!(chunks.windows(2).all(|w| w[0].end == w[1].start));
    assert_eq!(chunks.last().map(|c| c.end), Some(100));
}

/// Inserts the rows [`run_row`] made, a chunk ([`row_chunks`]) per statement.
async fn insert_run_rows(tx: &mut Conn, rows: Vec<RunRow>) -> Result<(), StoreError> {
    let mut rows = rows.into_iter();
    for chunk in row_chunks(rows.len()) {
        let mut insert = sqlx::QueryBuilder::<Db>::new(
            "INSERT INTO runs (id, project_id, workflow, workflow_name, run_number, \
             run_attempt, status, event, git_ref, sha, inputs, created_at, started_at, \
             finished_at, driver, driver_until, context, context_packed) ",
        );
        insert.push_values(rows.by_ref().take(chunk.len()), |mut b, r| {
            b.push_bind(r.id)
                .push_bind(r.project)
                .push_bind(r.workflow)
                .push_bind(r.workflow_name)
                .push_bind(r.run_number)
                .push_bind(1_i64)
                .push_bind(r.status)
                .push_bind(r.event)
                .push_bind(r.git_ref)
                .push_bind(r.sha)
                .push_bind(r.inputs)
                .push_bind(r.at)
                .push_bind(r.started_at)
                .push_bind(r.finished_at)
                .push_bind(r.driver)
                .push_bind(r.driver_until)
                .push_bind(r.context.0)
                .push_bind(r.context.1);
        });
        insert
            .build()
            .execute(&mut *tx)
            .await
            .map_err(query("insert runs"))?;
    }
    Ok(())
}

/// Adds the rows of jobs with consecutive `seq` numbers from `first_seq` to `rows` (for
/// [`insert_job_rows`]); returns the jobs as they will read back.
fn job_rows(
    pending: &mut Pending,
    run: RunId,
    project: &str,
    first_seq: i64,
    jobs: Vec<NewJob>,
    at: i64,
    rows: &mut Vec<Value>,
) -> Vec<Job> {
    let run_id = run.to_string();
    let finished_at = |status: JobStatus| status.is_terminal().then_some(at);
    let mut seq = first_seq;
    rows.extend(jobs.iter().map(|new| {
        seq += 1;
        json!([
            new.id.to_string(),
            new.key,
            new.name,
            json_text(&new.matrix),
            json_text(&new.needs),
            new.status.as_str(),
            new.max_attempts,
            finished_at(new.status),
            json_text(&new.labels),
            run_id,
            project,
            seq - 1,
            at,
        ])
    }));
    let mut out = Vec::with_capacity(jobs.len());
    for new in jobs {
        // `pending` is where every job starts: recording it is creation, not a transition.
        if new.status != JobStatus::Pending {
            let job_id = new.id.to_string();
            pending.job_status(at, project, &run_id, &job_id, new.status, json!({}));
        }
        out.push(Job {
            id: new.id,
            run,
            key: new.key,
            name: new.name,
            matrix: new.matrix,
            status: new.status,
            attempts: 0,
            max_attempts: new.max_attempts,
            needs: new.needs,
            labels: new.labels,
            started_at: None,
            finished_at: finished_at(new.status)
                .and_then(|ms| Timestamp::from_millisecond(ms).ok()),
            outputs: Map::new(),
            steps: Vec::new(),
        });
    }
    out
}

/// Inserts the rows [`job_rows`] made, of one run or many, in one statement over a JSON
/// array: a run of thousands of jobs costs one round trip to the database, not one per job.
async fn insert_job_rows(tx: &mut Conn, rows: Vec<Value>) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(SQL.insert_jobs)
        .bind(Value::Array(rows).to_string())
        .execute(&mut *tx)
        .await
        .map_err(query("insert jobs"))?;
    Ok(())
}

async fn lease_state(tx: &mut Conn, job: JobId) -> Result<Option<LeaseState>, StoreError> {
    let row = sqlx::query(
        "SELECT status, lease_token, log_length, lease_owner FROM jobs WHERE id = $1",
    )
        .bind(job.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(query("read a job's lease"))?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(LeaseState {
        status: parse("jobs", "status", &get::<String>(&row, "jobs", "status")?)?,
        token: get(&row, "jobs", "lease_token")?,
        log_length: get(&row, "jobs", "log_length")?,
        owner: get(&row, "jobs", "lease_owner")?,
    }))
}

/// Explains why a guarded update touched no row.
async fn explain(
    tx: &mut Conn,
    job: JobId,
    token: i64,
    allowed: &[JobStatus],
) -> Result<OpResult, StoreError> {
    Ok(match lease_state(tx, job).await? {
        None => refused(Refusal::NotFound),
        Some(state) => refused(token_refusal(job, &state, token, allowed).unwrap_or(
            // The guard failed but the state looks right: only possible if the row changed
            // between the two statements, which one transaction rules out. Report the state.
            Refusal::WrongState {
                job,
                status: state.status,
            },
        )),
    })
}

/// The run and project a job belongs to, from a `RETURNING run_id, project_id` row.
fn owners(row: &DbRow) -> Result<(String, String), StoreError> {
    Ok((get(row, "jobs", "run_id")?, get(row, "jobs", "project_id")?))
}

/// Applies one op inside the batch's transaction. A refusal changes nothing and returns
/// `Refused`; only infrastructure errors abort the batch.
async fn apply(tx: &mut Conn, pending: &mut Pending, op: Op) -> Result<OpResult, StoreError> {
    match op {
        Op::AddJobs { run, jobs, at } => add_jobs(tx, pending, run, jobs, ms(at)).await,
        Op::SetRunStatus { run, status, at } => {
            set_run_status(tx, pending, run, status, ms(at)).await
        }
        Op::SetJobStatus { job, status, at } => {
            set_job_status(tx, pending, job, status, ms(at)).await
        }
        Op::GrantLease {
            job,
            owner,
            ttl_ms,
            at,
        } => grant_lease(tx, pending, job, &owner, ttl_ms, ms(at)).await,
        Op::StartJob { job, token, at } => start_job(tx, pending, job, token, ms(at)).await,
        Op::RenewLease {
            job,
            token,
            ttl_ms,
            at,
        } => {
            let done = sqlx::query(
                "UPDATE jobs SET lease_expires_at = $3 \
                 WHERE id = $1 AND lease_token = $2 AND status IN ('leased', 'running')",
            )
            .bind(job.to_string())
            .bind(token)
            .bind(ms(at).saturating_add(ttl_ms))
            .execute(&mut *tx)
            .await
            .map_err(query("renew a lease"))?;
            if done.rows_affected() == 1 {
                Ok(OpResult::Done)
            } else {
                explain(tx, job, token, &HELD).await
            }
        }
        Op::OfferJobs { jobs, at } => {
            let ids: Vec<String> = jobs.iter().map(ToString::to_string).collect();
            sqlx::query(SQL.offer_jobs)
                .bind(json_text(&ids))
                .bind(ms(at))
                .execute(&mut *tx)
                .await
                .map_err(query("offer jobs to claims"))?;
            Ok(OpResult::Done)
        }
        Op::ReleaseLease { job, token } => {
            let job_id = job.to_string();
            let row = sqlx::query(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, \
                 lease_expires_at = NULL, attempts = attempts - 1 \
                 WHERE id = $1 AND lease_token = $2 AND status = 'leased' \
                 RETURNING run_id, project_id",
            )
            .bind(&job_id)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("release a lease"))?;
            let Some(row) = row else {
                return explain(tx, job, token, &[JobStatus::Leased]).await;
            };
            let (run, project) = owners(&row)?;
            pending.job_status(
                ms(Timestamp::now()),
                &project,
                &run,
                &job_id,
                JobStatus::Queued,
                json!({ "released": true }),
            );
            Ok(OpResult::Done)
        }
        Op::StepResult { job, token, step } => {
            let done = sqlx::query(
                "INSERT INTO steps (job_id, attempt, idx, name, status, outputs, started_at, \
                 finished_at) \
                 SELECT id, attempts, $3, $4, $5, $6, $7, $8 FROM jobs \
                 WHERE id = $1 AND lease_token = $2 AND status IN ('leased', 'running') \
                 ON CONFLICT (job_id, attempt, idx) DO UPDATE SET name = excluded.name, \
                 status = excluded.status, outputs = excluded.outputs, \
                 started_at = excluded.started_at, finished_at = excluded.finished_at \
                 RETURNING (SELECT run_id FROM jobs WHERE jobs.id = steps.job_id) AS run_id, \
                 (SELECT project_id FROM jobs WHERE jobs.id = steps.job_id) AS project_id",
            )
            .bind(job.to_string())
            .bind(token)
            .bind(i64::from(step.index))
            .bind(&step.name)
            .bind(step.status.as_str())
            .bind(json_text(&step.outputs))
            .bind(step.started_at.map(ms))
            .bind(step.finished_at.map(ms))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("record a step"))?;
            match done {
                Some(row) => {
                    let run: String = get(&row, "jobs", "run_id")?;
                    let project: String = get(&row, "jobs", "project_id")?;
                    pending.job_progress(&project, &run, &job.to_string(), &step);
                    Ok(OpResult::Done)
                }
                None => explain(tx, job, token, &HELD).await,
            }
        }
        Op::LogChunk {
            job,
            token,
            step,
            offset,
            data,
        } => log_chunk(tx, pending, job, token, step, offset, data).await,
        Op::CompleteJob {
            job,
            token,
            status,
            outputs,
            at,
        } => complete_job(tx, pending, job, token, status, outputs, ms(at)).await,
    }
}

async fn add_jobs(
    tx: &mut Conn,
    pending: &mut Pending,
    run: RunId,
    jobs: Vec<NewJob>,
    at: i64,
) -> Result<OpResult, StoreError> {
    let row = sqlx::query(
        "SELECT status, project_id, \
         (SELECT COALESCE(MAX(seq), -1) + 1 FROM jobs WHERE run_id = $1) AS next_seq \
         FROM runs WHERE id = $1",
    )
    .bind(run.to_string())
    .fetch_optional(&mut *tx)
    .await
    .map_err(query("read a run to add jobs"))?;
    let Some(row) = row else {
        return Ok(refused(Refusal::NotFound));
    };
    let status: RunStatus = parse("runs", "status", &get::<String>(&row, "runs", "status")?)?;
    if status.is_terminal() {
        return Ok(refused(Refusal::RunWrongState { run, status }));
    }
    let project: String = get(&row, "runs", "project_id")?;
    let next_seq: i64 = get(&row, "runs", "next_seq")?;
    let mut rows = Vec::with_capacity(jobs.len());
    job_rows(pending, run, &project, next_seq, jobs, at, &mut rows);
    insert_job_rows(tx, rows).await?;
    Ok(OpResult::Done)
}

async fn set_run_status(
    tx: &mut Conn,
    pending: &mut Pending,
    run: RunId,
    status: RunStatus,
    at: i64,
) -> Result<OpResult, StoreError> {
    let run_id = run.to_string();
    let row = sqlx::query("SELECT status, project_id, started_at FROM runs WHERE id = $1")
        .bind(&run_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query("read a run's status"))?;
    let Some(row) = row else {
        return Ok(refused(Refusal::NotFound));
    };
    let current: RunStatus = parse("runs", "status", &get::<String>(&row, "runs", "status")?)?;
    if current == status {
        return Ok(OpResult::Done);
    }
    if current.is_terminal() {
        return Ok(refused(Refusal::RunWrongState {
            run,
            status: current,
        }));
    }
    let project: String = get(&row, "runs", "project_id")?;
    let first_start = get::<Option<i64>>(&row, "runs", "started_at")?.is_none();
    sqlx::query(
        "UPDATE runs SET status = $2, started_at = COALESCE(started_at, $3), \
         finished_at = COALESCE($4, finished_at) WHERE id = $1",
    )
    .bind(&run_id)
    .bind(status.as_str())
    .bind((status == RunStatus::Running).then_some(at))
    .bind(status.is_terminal().then_some(at))
    .execute(&mut *tx)
    .await
    .map_err(query("set a run's status"))?;
    pending.run_status(at, &project, &run_id, status, first_start);
    Ok(OpResult::Done)
}

async fn set_job_status(
    tx: &mut Conn,
    pending: &mut Pending,
    job: JobId,
    status: JobStatus,
    at: i64,
) -> Result<OpResult, StoreError> {
    if HELD.contains(&status) {
        return Ok(refused(Refusal::BadTransition { job, to: status }));
    }
    let job_id = job.to_string();
    let row = sqlx::query(
        "UPDATE jobs SET status = $2, finished_at = COALESCE($3, finished_at) \
         WHERE id = $1 AND status IN ('pending', 'queued', 'waiting') AND status <> $2 \
         RETURNING run_id, project_id",
    )
    .bind(&job_id)
    .bind(status.as_str())
    .bind(status.is_terminal().then_some(at))
    .fetch_optional(&mut *tx)
    .await
    .map_err(query("set a job's status"))?;
    if let Some(row) = row {
        let (run, project) = owners(&row)?;
        pending.job_status(at, &project, &run, &job_id, status, json!({}));
        return Ok(OpResult::Done);
    }
    Ok(match lease_state(tx, job).await? {
        None => refused(Refusal::NotFound),
        Some(state) if state.status == status => OpResult::Done,
        Some(state) => refused(Refusal::WrongState {
            job,
            status: state.status,
        }),
    })
}

async fn grant_lease(
    tx: &mut Conn,
    pending: &mut Pending,
    job: JobId,
    owner: &str,
    ttl_ms: i64,
    at: i64,
) -> Result<OpResult, StoreError> {
    let job_id = job.to_string();
    let row = sqlx::query(
        "UPDATE jobs SET status = 'leased', lease_owner = $2, lease_token = lease_token + 1, \
         lease_expires_at = $3, attempts = attempts + 1, log_length = 0, started_at = NULL, \
         finished_at = NULL \
         WHERE id = $1 AND status = 'queued' \
         RETURNING run_id, project_id, lease_token, attempts",
    )
    .bind(&job_id)
    .bind(owner)
    .bind(at.saturating_add(ttl_ms))
    .fetch_optional(&mut *tx)
    .await
    .map_err(query("grant a lease"))?;
    let Some(row) = row else {
        // The same owner asking again for the lease it holds: its commit applied but the
        // answer was lost (a connection cut at commit), and it commits again. The lease is
        // its own: answer it again rather than leave the job held by nobody who knows.
        return Ok(match lease_state(tx, job).await? {
            None => refused(Refusal::NotFound),
            Some(state)
                if state.status == JobStatus::Leased && state.owner.as_deref() == Some(owner) =>
            {
                OpResult::Lease { token: state.token }
            }
            Some(state) => refused(Refusal::WrongState {
                job,
                status: state.status,
            }),
        });
    };
    let (run, project) = owners(&row)?;
    let token: i64 = get(&row, "jobs", "lease_token")?;
    let attempts: i64 = get(&row, "jobs", "attempts")?;
    pending.job_status(
        at,
        &project,
        &run,
        &job_id,
        JobStatus::Leased,
        json!({ "owner": owner, "attempt": attempts }),
    );
    Ok(OpResult::Lease { token })
}

async fn start_job(
    tx: &mut Conn,
    pending: &mut Pending,
    job: JobId,
    token: i64,
    at: i64,
) -> Result<OpResult, StoreError> {
    let job_id = job.to_string();
    let row = sqlx::query(
        "UPDATE jobs SET status = 'running', started_at = $3 \
         WHERE id = $1 AND lease_token = $2 AND status = 'leased' \
         RETURNING run_id, project_id, attempts",
    )
    .bind(&job_id)
    .bind(token)
    .bind(at)
    .fetch_optional(&mut *tx)
    .await
    .map_err(query("start a job"))?;
    let Some(row) = row else {
        return explain(tx, job, token, &[JobStatus::Leased]).await;
    };
    let (run, project) = owners(&row)?;
    let attempts: i64 = get(&row, "jobs", "attempts")?;
    pending.job_status(
        at,
        &project,
        &run,
        &job_id,
        JobStatus::Running,
        json!({ "attempt": attempts }),
    );
    Ok(OpResult::Done)
}

async fn log_chunk(
    tx: &mut Conn,
    pending: &mut Pending,
    job: JobId,
    token: i64,
    step: u32,
    offset: u64,
    data: Vec<u8>,
) -> Result<OpResult, StoreError> {
    let job_id = job.to_string();
    let length = i64::try_from(data.len()).unwrap_or(i64::MAX);
    let given = i64::try_from(offset).unwrap_or(i64::MAX);
    // One guarded statement checks the token, the state and the offset, and extends the
    // log; only a refusal costs a second read to say why.
    let row = sqlx::query(
        "UPDATE jobs SET log_length = log_length + $4 \
         WHERE id = $1 AND lease_token = $2 AND status IN ('leased', 'running') \
         AND log_length = $3 RETURNING attempts, run_id, project_id",
    )
    .bind(&job_id)
    .bind(token)
    .bind(given)
    .bind(length)
    .fetch_optional(&mut *tx)
    .await
    .map_err(query("extend a job's log"))?;
    let Some(row) = row else {
        let Some(state) = lease_state(tx, job).await? else {
            return Ok(refused(Refusal::NotFound));
        };
        if let Some(reason) = token_refusal(job, &state, token, &HELD) {
            return Ok(refused(reason));
        }
        return Ok(refused(Refusal::BadOffset {
            job,
            expected: u64::try_from(state.log_length).unwrap_or(0),
            given: offset,
        }));
    };
    if data.is_empty() {
        return Ok(OpResult::Done);
    }
    let attempts: i64 = get(&row, "jobs", "attempts")?;
    let run: String = get(&row, "jobs", "run_id")?;
    let project: String = get(&row, "jobs", "project_id")?;
    let (key, blob_offset) = pending.log_bytes(&data);
    pending.log_line(
        [&project, &run, &job_id],
        attempts,
        step,
        offset,
        data.len(),
        (&key, blob_offset),
    );
    sqlx::query(
        "INSERT INTO log_chunks (job_id, attempt, byte_offset, length, step, blob_key, \
         blob_offset) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&job_id)
    .bind(attempts)
    .bind(given)
    .bind(length)
    .bind(i64::from(step))
    .bind(&key)
    .bind(blob_offset)
    .execute(&mut *tx)
    .await
    .map_err(query("index a log chunk"))?;
    Ok(OpResult::Done)
}

async fn complete_job(
    tx: &mut Conn,
    pending: &mut Pending,
    job: JobId,
    token: i64,
    status: JobStatus,
    outputs: Map<String, Value>,
    at: i64,
) -> Result<OpResult, StoreError> {
    if !status.is_terminal() {
        return Ok(refused(Refusal::BadTransition { job, to: status }));
    }
    let job_id = job.to_string();
    let row = sqlx::query(
        "UPDATE jobs SET status = $3, outputs = $4, finished_at = $5, lease_owner = NULL, \
         lease_expires_at = NULL \
         WHERE id = $1 AND lease_token = $2 AND status IN ('leased', 'running') \
         RETURNING run_id, project_id, attempts",
    )
    .bind(&job_id)
    .bind(token)
    .bind(status.as_str())
    .bind(json_text(&outputs))
    .bind(at)
    .fetch_optional(&mut *tx)
    .await
    .map_err(query("complete a job"))?;
    let Some(row) = row else {
        return explain(tx, job, token, &HELD).await;
    };
    let (run, project) = owners(&row)?;
    let attempts: i64 = get(&row, "jobs", "attempts")?;
    pending.job_status(
        at,
        &project,
        &run,
        &job_id,
        status,
        json!({ "attempt": attempts }),
    );
    Ok(OpResult::Done)
}

/// Applies `ops` in order: runs of job transitions through [`apply_batch`], anything else
/// (run changes, new jobs, renewals) one by one. `begun` says whether the transaction is
/// open; when it is not (SQLite's scripted commit), the first statement begins it.
async fn apply_ops(
    tx: &mut Conn,
    pending: &mut Pending,
    ops: Vec<Op>,
    begun: &mut bool,
) -> Result<Vec<OpResult>, StoreError> {
    let mut results = Vec::with_capacity(ops.len());
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let mut segment = Vec::new();
        while let Some(op) = ops.next_if(|op| batch::kind(op).is_some()) {
            segment.push(op);
        }
        if segment.is_empty() {
            if let Some(op) = ops.next() {
                begin(tx, begun).await?;
                results.push(apply(tx, pending, op).await?);
            }
            continue;
        }
        results.extend(apply_batch(tx, pending, segment, begun).await?);
    }
    Ok(results)
}

/// Begins the write transaction if it is not open yet.
async fn begin(tx: &mut Conn, begun: &mut bool) -> Result<(), StoreError> {
    if !*begun {
        sqlx::query(SQL.begin_write)
            .execute(&mut *tx)
            .await
            .map_err(query("begin a write transaction"))?;
        *begun = true;
    }
    Ok(())
}

/// Applies a run of job transitions with one statement per kind of transition (SQLite runs
/// them all as one script: one trip to its worker thread instead of one per op).
///
/// Kinds go in lifecycle order (status changes, grants, starts, step results, log chunks,
/// completions), which is the order a job's own ops always come in. When they do not — a job
/// with two ops of one kind, ops out of lifecycle order, log chunks that do not follow each
/// other — the segment is applied op by op instead, so the result is always what applying
/// the ops in order would give. An op the batch did not apply is applied alone afterwards:
/// that repeats its guarded statement (which fails again) and explains the refusal. Events
/// are appended in the ops' own order.
async fn apply_batch(
    tx: &mut Conn,
    pending: &mut Pending,
    ops: Vec<Op>,
    begun: &mut bool,
) -> Result<Vec<OpResult>, StoreError> {
    let Some(plan) = batch::Plan::new(&ops) else {
        begin(tx, begun).await?;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(apply(tx, pending, op).await?);
        }
        return Ok(results);
    };
    let rows: Vec<DbRow> = match SQL.batch {
        Batch::Script { batch, begin_batch } => {
            let script = if *begun { batch } else { begin_batch };
            let mut q = sqlx::query(script);
            for param in plan.params() {
                q = q.bind(param.as_str());
            }
            let rows = q
                .fetch_all(&mut *tx)
                .await
                .map_err(query("apply a batch of job transitions"))?;
            *begun = true;
            rows
        }
        Batch::Statements(statements) => {
            let mut rows = Vec::new();
            for (statement, param) in statements.iter().zip(plan.params()) {
                if param == "[]" {
                    continue;
                }
                rows.extend(
                    sqlx::query(*statement)
                        .bind(param.as_str())
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(query("apply a batch of job transitions"))?,
                );
            }
            rows
        }
    };
    let mut applied = batch::Applied::default();
    for row in &rows {
        let kind: i64 = get(row, "jobs", "kind")?;
        let id: String = get(row, "jobs", "id")?;
        let done = batch::Done {
            run: get(row, "jobs", "run_id")?,
            project: get(row, "jobs", "project_id")?,
            token: get(row, "jobs", "token")?,
            attempts: get(row, "jobs", "attempts")?,
        };
        let idx: Option<i64> = get(row, "jobs", "idx")?;
        applied.insert(kind, id, idx, done);
    }

    // Log bytes of the groups whose offsets were accepted, then their index rows.
    let mut chunks = Vec::new();
    let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
    for i in 0..ops.len() {
        let op = &ops[i];
        let Some(kind) = batch::kind(op) else {
            continue;
        };
        let Some(job) = batch::job_of(op) else {
            continue;
        };
        let job_id = job.to_string();
        let step_idx = match op {
            Op::StepResult { step, .. } => Some(i64::from(step.index)),
            _ => None,
        };
        let Some(done) = applied.get(kind, &job_id, step_idx) else {
            continue;
        };
        let run = done.run.as_deref().unwrap_or_default();
        let project = done.project.as_deref().unwrap_or_default();
        results[i] = Some(match op {
            Op::SetJobStatus { status, at, .. } => {
                pending.job_status(ms(*at), project, run, &job_id, *status, json!({}));
                OpResult::Done
            }
            Op::GrantLease { owner, at, .. } => {
                pending.job_status(
                    ms(*at),
                    project,
                    run,
                    &job_id,
                    JobStatus::Leased,
                    json!({ "owner": owner, "attempt": done.attempts }),
                );
                OpResult::Lease {
                    token: done.token.unwrap_or_default(),
                }
            }
            Op::StartJob { at, .. } => {
                pending.job_status(
                    ms(*at),
                    project,
                    run,
                    &job_id,
                    JobStatus::Running,
                    json!({ "attempt": done.attempts }),
                );
                OpResult::Done
            }
            Op::StepResult { step, .. } => {
                pending.job_progress(project, run, &job_id, step);
                OpResult::Done
            }
            Op::LogChunk {
                step, offset, data, ..
            } => {
                if !data.is_empty() {
                    let (key, blob_offset) = pending.log_bytes(data);
                    pending.log_line(
                        [project, run, &job_id],
                        done.attempts,
                        *step,
                        *offset,
                        data.len(),
                        (&key, blob_offset),
                    );
                    chunks.push(json!([
                        job_id,
                        done.attempts,
                        i64::try_from(*offset).unwrap_or(i64::MAX),
                        i64::try_from(data.len()).unwrap_or(i64::MAX),
                        i64::from(*step),
                        key,
                        blob_offset
                    ]));
                }
                OpResult::Done
            }
            Op::CompleteJob { status, at, .. } => {
                pending.job_status(
                    ms(*at),
                    project,
                    run,
                    &job_id,
                    *status,
                    json!({ "attempt": done.attempts }),
                );
                OpResult::Done
            }
            _ => continue,
        });
    }
    if !chunks.is_empty() {
        sqlx::query(SQL.insert_chunks)
            .bind(Value::Array(chunks).to_string())
            .execute(&mut *tx)
            .await
            .map_err(query("index log chunks"))?;
    }
    let mut out = Vec::with_capacity(ops.len());
    for (op, result) in ops.into_iter().zip(results) {
        out.push(match result {
            Some(r) => r,
            None => apply(tx, pending, op).await?,
        });
    }
    Ok(out)
}

// ---- reads ----------------------------------------------------------------------------------

impl Backend {
    pub(crate) async fn run_context(
        &self,
        id: RunId,
    ) -> Result<Option<crate::RunContext>, StoreError> {
        let mut tx = self.begin_read().await?;
        let found: Option<(Option<String>, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT context, context_packed FROM runs WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(query("read a run's trigger context"))?;
        let Some((text, packed)) = found else {
            return Ok(None);
        };
        let Some(text) = crate::types::unpack_context(text, packed, &format_args!("run {id}"))?
        else {
            return Ok(Some(crate::RunContext::default()));
        };
        let decode = |detail: String| StoreError::Decode {
            column: "context",
            table: "runs",
            detail: format!("run {id}: {detail}"),
        };
        let stored: crate::types::StoredContext =
            serde_json::from_str(&text).map_err(|e| decode(e.to_string()))?;
        let payload = match stored.payload_of {
            None => stored.payload,
            // The body of the webhook delivery that started the run (see
            // `PayloadText::of_delivery`), read back as it is kept.
            Some(delivery) => {
                let found: Option<(Vec<u8>, i64)> = sqlx::query_as(
                    "SELECT p.payload, d.size FROM deliveries d \
                     JOIN delivery_payloads p ON p.id = d.id WHERE d.id = $1",
                )
                .bind(&delivery)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query("read the webhook body of a run's context"))?;
                let (stored, size) = found.ok_or_else(|| {
                    decode(format!("the body of webhook delivery {delivery} is gone"))
                })?;
                let body = crate::hooks::PackedBody::new(stored.into(), size);
                let text = String::from_utf8(body.unpack()?).map_err(|e| {
                    decode(format!("the body of webhook delivery {delivery}: {e}"))
                })?;
                Some(
                    crate::PayloadText::of_json_text(&text)
                        .with_packed(body.json())
                        .of_delivery(&delivery),
                )
            }
        };
        Ok(Some(crate::RunContext {
            payload,
            github: stored.github,
        }))
    }

    pub(crate) async fn get_run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        let mut tx = self.begin_read().await?;
        let run_id = id.to_string();
        let row = sqlx::query(concat!("SELECT ", run_cols!(), " FROM runs WHERE id = $1"))
            .bind(&run_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("read a run"))?;
        let Some(row) = row else { return Ok(None) };
        let mut run = run_from_row(&row)?;
        let jobs = sqlx::query(concat!(
            "SELECT ",
            job_cols!(),
            " FROM jobs WHERE run_id = $1 ORDER BY seq"
        ))
        .bind(&run_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(query("read a run's jobs"))?;
        let steps = sqlx::query(concat!(
            "SELECT ",
            step_cols!(),
            " FROM steps s JOIN jobs j ON j.id = s.job_id AND s.attempt = j.attempts \
             WHERE j.run_id = $1 ORDER BY s.job_id, s.idx"
        ))
        .bind(&run_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(query("read a run's steps"))?;
        tx.commit().await.map_err(query("end a read transaction"))?;

        let mut steps_of: HashMap<String, Vec<Step>> = HashMap::new();
        for row in &steps {
            let (job, step) = step_from_row(row)?;
            steps_of.entry(job).or_default().push(step);
        }
        run.jobs = jobs
            .iter()
            .map(|row| {
                let mut job = job_from_row(row)?;
                job.steps = steps_of.remove(&job.id.to_string()).unwrap_or_default();
                Ok(job)
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(run))
    }

    pub(crate) async fn resolve_run(&self, id_or_prefix: &str) -> Result<Option<Run>, StoreError> {
        let prefix = id_or_prefix.trim().to_ascii_lowercase();
        if let Ok(id) = prefix.parse::<RunId>() {
            return self.get_run(id).await;
        }
        if prefix.len() < 4 {
            return Err(StoreError::PrefixTooShort {
                prefix: id_or_prefix.to_owned(),
            });
        }
        // Only what can appear in a uuid string: this also keeps LIKE wildcards out.
        if !prefix.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Ok(None);
        }
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM runs WHERE id LIKE $1 LIMIT 2")
            .bind(format!("{prefix}%"))
            .fetch_all(&self.reader)
            .await
            .map_err(query("resolve a run id prefix"))?;
        match ids.as_slice() {
            [] => Ok(None),
            [id] => self.get_run(parse("runs", "id", id)?).await,
            _ => Err(StoreError::Ambiguous {
                prefix: id_or_prefix.to_owned(),
            }),
        }
    }

    pub(crate) async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            i64::from(filter.limit)
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_cols!(),
            " FROM runs WHERE ($1 IS NULL OR project_id = $1) AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR workflow = $3 OR workflow_name = $3) \
             AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        ))
        .bind(filter.project.map(|p| p.to_string()))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.workflow.as_deref())
        .bind(filter.before.map(|r| r.to_string()))
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(query("list runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    pub(crate) async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let mut tx = self.begin_read().await?;
        let job_id = id.to_string();
        let row = sqlx::query(concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1"))
            .bind(&job_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("read a job"))?;
        let Some(row) = row else { return Ok(None) };
        let mut job = job_from_row(&row)?;
        let steps = sqlx::query(concat!(
            "SELECT ",
            step_cols!(),
            " FROM steps s WHERE s.job_id = $1 AND s.attempt = $2 ORDER BY s.idx"
        ))
        .bind(&job_id)
        .bind(job.attempts)
        .fetch_all(&mut *tx)
        .await
        .map_err(query("read a job's steps"))?;
        tx.commit().await.map_err(query("end a read transaction"))?;
        job.steps = steps
            .iter()
            .map(|row| step_from_row(row).map(|(_, step)| step))
            .collect::<Result<_, _>>()?;
        Ok(Some(job))
    }

    pub(crate) async fn log_steps(&self, job: JobId) -> Result<Vec<(u32, u64)>, StoreError> {
        let mut tx = self.begin_read().await?;
        let rows = sqlx::query(
            "SELECT step, MIN(byte_offset) AS start FROM log_chunks \
             WHERE job_id = $1 AND attempt = (SELECT attempts FROM jobs WHERE id = $1) \
             GROUP BY step ORDER BY start",
        )
        .bind(job.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(query("read where a job's steps start in its log"))?;
        tx.commit().await.map_err(query("end a read transaction"))?;
        rows.iter()
            .map(|row| {
                let step = get::<i64>(row, "log_chunks", "step")?;
                let start = get::<i64>(row, "log_chunks", "start")?;
                Ok((
                    u32::try_from(step).map_err(|e| decode("log_chunks", "step", e))?,
                    u64::try_from(start).map_err(|e| decode("log_chunks", "start", e))?,
                ))
            })
            .collect()
    }

    pub(crate) async fn read_log(
        &self,
        job: JobId,
        offset: u64,
        limit: usize,
    ) -> Result<LogSlice, StoreError> {
        let mut tx = self.begin_read().await?;
        let job_id = job.to_string();
        let row = sqlx::query("SELECT attempts, log_length FROM jobs WHERE id = $1")
            .bind(&job_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("read a job's log length"))?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                what: "job",
                id: job_id,
            });
        };
        let attempts: i64 = get(&row, "jobs", "attempts")?;
        let total = u64::try_from(get::<i64>(&row, "jobs", "log_length")?).unwrap_or(0);
        let end = offset.saturating_add(limit as u64).min(total);
        let mut data = Vec::new();
        if offset < end {
            let chunks = sqlx::query(
                "SELECT byte_offset, length, blob_key, blob_offset FROM log_chunks \
                 WHERE job_id = $1 AND attempt = $2 AND byte_offset < $3 \
                 AND byte_offset + length > $4 ORDER BY byte_offset",
            )
            .bind(&job_id)
            .bind(attempts)
            .bind(i64::try_from(end).unwrap_or(i64::MAX))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(query("read a job's log chunks"))?;
            tx.commit().await.map_err(query("end a read transaction"))?;
            for chunk in &chunks {
                let field = |column: &'static str| -> Result<u64, StoreError> {
                    u64::try_from(get::<i64>(chunk, "log_chunks", column)?)
                        .map_err(|e| decode("log_chunks", column, e))
                };
                let (start, length, in_blob) = (
                    field("byte_offset")?,
                    field("length")?,
                    field("blob_offset")?,
                );
                let key: String = get(chunk, "log_chunks", "blob_key")?;
                // The part of this chunk inside [offset, end), relative to the chunk.
                let from = offset.max(start) - start;
                let to = end.min(start + length) - start;
                if from < to {
                    let bytes = self
                        .blobs
                        .get_range(&key, in_blob + from, (to - from) as usize)
                        .await?;
                    data.extend_from_slice(&bytes);
                }
            }
        }
        Ok(LogSlice {
            next_offset: offset + data.len() as u64,
            data,
            total,
        })
    }

    pub(crate) async fn event_head(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(SQL.event_head)
            .fetch_one(&self.reader)
            .await
            .map_err(query("read the newest event id"))?;
        let head: i64 = get(&row, "events", "head")?;
        if SQL.events_in_commit_order {
            return Ok(head);
        }
        // Every id up to `head` is final once the transactions in flight at that read have
        // ended (`Settle`): wait for them, briefly.
        let xnext: i64 = get(&row, "events", "xnext")?;
        let mut xmin: i64 = get(&row, "events", "xmin")?;
        let mut pause = std::time::Duration::from_millis(1);
        let deadline = std::time::Instant::now() + HEAD_WAIT;
        while xmin < xnext {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    head,
                    "a transaction has been open for over {}s; the outbox head is taken \
                     without waiting for it",
                    HEAD_WAIT.as_secs()
                );
                return Ok(head);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
            xmin = sqlx::query_scalar(SQL.event_horizon)
                .fetch_one(&self.reader)
                .await
                .map_err(query("read the oldest transaction in flight"))?;
        }
        self.settle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .settled(head);
        Ok(head)
    }

    pub(crate) async fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(SQL.events_after)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query("read events"))?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if !SQL.events_in_commit_order && let Some(first) = rows.first() {
            let xmin: i64 = get(first, "events", "xmin")?;
            let xnext: i64 = get(first, "events", "xnext")?;
            let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
            let n = self
                .settle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(after, &ids, xmin, xnext);
            events.truncate(n);
        }
        Ok(events)
    }
}

/// How long `event_head` waits for the transactions in flight when it read the head.
const HEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
