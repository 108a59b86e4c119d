//! The PostgreSQL backend: many `kiln serve` replicas sharing one database.
//!
//! One `PgPool` serves reads and writes. The outbox needs care here: identity values are
//! taken when a row is inserted but become visible when its transaction commits, so a reader
//! could see event 8 before event 7 commits and then resume past 7 forever. Writers do not
//! queue for the outbox (an outbox lock held to commit halved the job queue's throughput);
//! instead every writer has its xid before it draws an event id, and readers hand out a row
//! that follows a gap only once every transaction that could hold the gap has ended
//! (`Settle` in `mod.rs`). Other replicas hear of new events through `NOTIFY`, sent once per
//! burst of commits by `announce_events`, outside the writers' transactions: a `NOTIFY` in
//! a transaction takes a database-wide lock at its commit. The queries themselves are in
//! `body.rs`.

use sqlx::Postgres as Db;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use super::{Batch, Dialect};

/// The reading snapshot's `xmin`, and `xnext`: a transaction id above every one assigned
/// before the statement began (`Settle`), as `h`. A snapshot's `xmax` is not that: it is one
/// past the newest *completed* transaction, so a transaction that took its xid and is still
/// running may be at or above it. PostgreSQL's next xid is read without taking one through
/// `age()`, which counts from it for a reader without an xid (32 bits, put back on the
/// snapshot's epoch: the next xid is at or above `xmax`, and less than 2^31 beyond it).
macro_rules! horizon {
    () => {
        "(SELECT xmin, x - x % 4294967296 + n + CASE WHEN n < x % 4294967296 \
         THEN 4294967296 ELSE 0 END AS xnext FROM (SELECT \
         pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS xmin, \
         pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS x, \
         ((age('3'::xid)::int8 + 3) % 4294967296 + 4294967296) % 4294967296 AS n) AS v) AS h"
    };
}

const SQL: Dialect = Dialect {
    begin_write: "BEGIN",
    begin_read: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    lock_project: "SELECT id FROM projects WHERE id = $1 FOR UPDATE",
    insert_jobs: "INSERT INTO jobs (id, run_id, project_id, seq, job_key, name, matrix, needs, \
                  status, attempts, max_attempts, lease_owner, lease_token, lease_expires_at, \
                  log_length, outputs, created_at, started_at, finished_at, labels) \
                  SELECT e->>0, e->>9, e->>10, (e->>11)::bigint, e->>1, e->>2, e->>3, e->>4, \
                  e->>5, 0, (e->>6)::bigint, NULL, 0, NULL, 0, '{}', (e->>12)::bigint, NULL, \
                  (e->>7)::bigint, e->>8 \
                  FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n",
    // The xid is taken by the join before any row is made, so before any event id is
    // drawn (`Settle` relies on it).
    insert_events: "INSERT INTO events (at, kind, project_id, run_id, job_id, data) \
                    SELECT (e->>0)::bigint, e->>1, e->>2, e->>3, e->>4, e->>5 \
                    FROM (SELECT pg_current_xact_id()) AS xid, \
                    jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n",
    events_after: concat!(
        "SELECT id, at, kind, project_id, run_id, job_id, data, h.xmin, h.xnext \
         FROM events, ",
        horizon!(),
        " WHERE id > $1 ORDER BY id LIMIT $2"
    ),
    event_head: concat!(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM events)::int8 AS head, h.xmin, h.xnext \
         FROM ",
        horizon!()
    ),
    event_horizon: "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8",
    events_in_commit_order: false,
    batch: Batch::Statements([
        "UPDATE jobs SET status = b.status, finished_at = COALESCE(b.fin, \
        jobs.finished_at) FROM (SELECT e->>0 AS id, e->>1 AS status, (e->>2)::bigint AS \
        fin FROM jsonb_array_elements($1::jsonb) AS t(e)) AS b WHERE jobs.id = b.id AND \
        jobs.status IN ('pending', 'queued', 'waiting') AND jobs.status <> b.status \
        RETURNING 1::int8 AS kind, jobs.id AS id, jobs.run_id AS run_id, jobs.project_id \
        AS project_id, NULL::int8 AS token, jobs.attempts AS attempts, NULL::int8 AS idx",
        "UPDATE jobs SET status = 'leased', lease_owner = b.owner, lease_token = \
        jobs.lease_token + 1, lease_expires_at = b.exp, attempts = jobs.attempts + 1, \
        log_length = 0, started_at = NULL, finished_at = NULL FROM (SELECT e->>0 AS id, \
        e->>1 AS owner, (e->>2)::bigint AS exp FROM jsonb_array_elements($1::jsonb) AS \
        t(e)) AS b WHERE jobs.id = b.id AND jobs.status = 'queued' RETURNING 2::int8 AS \
        kind, jobs.id AS id, jobs.run_id AS run_id, jobs.project_id AS project_id, \
        jobs.lease_token AS token, jobs.attempts AS attempts, NULL::int8 AS idx",
        "UPDATE jobs SET status = 'running', started_at = b.at FROM (SELECT e->>0 AS id, \
        (e->>1)::bigint AS token, (e->>2)::bigint AS at FROM \
        jsonb_array_elements($1::jsonb) AS t(e)) AS b WHERE jobs.id = b.id AND \
        jobs.lease_token = b.token AND jobs.status = 'leased' RETURNING 3::int8 AS kind, \
        jobs.id AS id, jobs.run_id AS run_id, jobs.project_id AS project_id, \
        jobs.lease_token AS token, jobs.attempts AS attempts, NULL::int8 AS idx",
        "INSERT INTO steps (job_id, attempt, idx, name, status, outputs, started_at, \
        finished_at) SELECT j.id, j.attempts, b.idx, b.name, b.status, b.outputs, \
        b.started, b.finished FROM (SELECT e->>0 AS id, (e->>1)::bigint AS token, \
        (e->>2)::bigint AS idx, e->>3 AS name, e->>4 AS status, e->>5 AS outputs, \
        (e->>6)::bigint AS started, (e->>7)::bigint AS finished FROM \
        jsonb_array_elements($1::jsonb) AS t(e)) AS b JOIN jobs AS j ON j.id = b.id \
        WHERE j.lease_token = b.token AND j.status IN ('leased', 'running') ON CONFLICT \
        (job_id, attempt, idx) DO UPDATE SET name = excluded.name, status = \
        excluded.status, outputs = excluded.outputs, started_at = excluded.started_at, \
        finished_at = excluded.finished_at RETURNING 4::int8 AS kind, job_id AS id, \
        (SELECT run_id FROM jobs WHERE jobs.id = steps.job_id) AS run_id, \
        (SELECT project_id FROM jobs WHERE jobs.id = steps.job_id) AS project_id, \
        NULL::int8 AS token, attempt AS attempts, idx",
        "UPDATE jobs SET log_length = jobs.log_length + b.len FROM (SELECT e->>0 AS id, \
        (e->>1)::bigint AS token, (e->>2)::bigint AS off, (e->>3)::bigint AS len FROM \
        jsonb_array_elements($1::jsonb) AS t(e)) AS b WHERE jobs.id = b.id AND \
        jobs.lease_token = b.token AND jobs.status IN ('leased', 'running') AND \
        jobs.log_length = b.off RETURNING 5::int8 AS kind, jobs.id AS id, jobs.run_id AS \
        run_id, jobs.project_id AS project_id, jobs.lease_token AS token, jobs.attempts \
        AS attempts, NULL::int8 AS idx",
        "UPDATE jobs SET status = b.status, outputs = b.outputs, finished_at = b.at, \
        lease_owner = NULL, lease_expires_at = NULL FROM (SELECT e->>0 AS id, \
        (e->>1)::bigint AS token, e->>2 AS status, e->>3 AS outputs, (e->>4)::bigint AS \
        at FROM jsonb_array_elements($1::jsonb) AS t(e)) AS b WHERE jobs.id = b.id AND \
        jobs.lease_token = b.token AND jobs.status IN ('leased', 'running') RETURNING \
        6::int8 AS kind, jobs.id AS id, jobs.run_id AS run_id, jobs.project_id AS \
        project_id, jobs.lease_token AS token, jobs.attempts AS attempts, NULL::int8 AS \
        idx",
    ]),
    // The CTE locks the rows it picks and skips those another claim holds, so concurrent
    // claimers each get different jobs without waiting on one another. It must be
    // materialised: as `WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` the planner
    // may run the subquery once per outer row, and each run skips past the rows the last
    // one locked — one claim of `LIMIT 1` then leased the whole queue.
    // The claim and its events in one statement, committed alone: one round trip. The
    // events are drawn once every claimed row is updated (`count(*)` needs all of
    // `claimed`), so the transaction has its xid by then (`Settle`); and only when something
    // was claimed.
    claim_jobs: "WITH next AS MATERIALIZED (SELECT id FROM jobs WHERE status = 'queued' \
                 AND ($3::text IS NULL OR labels::jsonb <@ $3::jsonb) \
                 AND (NOT $6::bool OR (offered_at IS NOT NULL AND EXISTS (SELECT 1 FROM runs \
                 JOIN replicas ON replicas.owner = runs.driver \
                 WHERE runs.id = jobs.run_id AND runs.driver_until > $5))) \
                 ORDER BY created_at, run_id, seq LIMIT $4 FOR UPDATE SKIP LOCKED), \
                 claimed AS (UPDATE jobs SET status = 'leased', lease_owner = $1, \
                 lease_token = jobs.lease_token + 1, lease_expires_at = $2, \
                 attempts = jobs.attempts + 1, log_length = 0, started_at = NULL, \
                 finished_at = NULL \
                 FROM next WHERE jobs.id = next.id \
                 RETURNING jobs.id, run_id, job_key, name, matrix, needs, status, attempts, \
                 max_attempts, started_at, finished_at, outputs, labels, project_id, \
                 lease_token, seq, created_at, \
                 (SELECT driver FROM runs WHERE runs.id = jobs.run_id) AS driver), \
                 outbox AS MATERIALIZED (SELECT pg_current_xact_id() \
                 FROM (SELECT count(*) AS n FROM claimed) AS c WHERE c.n > 0), \
                 appended AS (INSERT INTO events (at, kind, project_id, run_id, job_id, data) \
                 SELECT $5, 'job.leased', c.project_id, c.run_id, c.id, \
                 json_build_object('status', 'leased', 'owner', $1::text, \
                 'attempt', c.attempts)::text \
                 FROM outbox, (SELECT * FROM claimed ORDER BY created_at, run_id, seq) AS c) \
                 SELECT * FROM claimed",
    claim_appends_events: true,
    insert_chunks: "INSERT INTO log_chunks (job_id, attempt, byte_offset, length, step, blob_key, \
                    blob_offset) \
                    SELECT e->>0, (e->>1)::bigint, (e->>2)::bigint, (e->>3)::bigint, \
                    (e->>4)::bigint, e->>5, (e->>6)::bigint \
                    FROM jsonb_array_elements($1::jsonb) AS t(e)",
    finish_deliveries: "UPDATE deliveries SET status = b.status, reason = b.reason, \
                        run_ids = b.runs, processed_at = $2 \
                        FROM jsonb_to_recordset($1::jsonb) \
                        AS b(id TEXT, status TEXT, reason TEXT, runs TEXT) \
                        WHERE deliveries.id = b.id AND deliveries.status = 'accepted' \
                        RETURNING deliveries.id",
    offer_jobs: "UPDATE jobs SET offered_at = $2 \
                 WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb))",
};

/// The embedded PostgreSQL migrations, oldest first. Forward-only.
pub(crate) fn migrator() -> sqlx::migrate::Migrator {
    super::migrator(&[
        (
            1,
            "init",
            include_str!("../../migrations/postgres/0001_init.sql"),
        ),
        (
            2,
            "log segments",
            include_str!("../../migrations/postgres/0002_log_segments.sql"),
        ),
        (
            3,
            "tokens",
            include_str!("../../migrations/postgres/0003_tokens.sql"),
        ),
        (
            5,
            "projects",
            include_str!("../../migrations/postgres/0005_projects.sql"),
        ),
        (
            6,
            "hooks",
            include_str!("../../migrations/postgres/0006_hooks.sql"),
        ),
        (
            7,
            "schedules",
            include_str!("../../migrations/postgres/0007_schedules.sql"),
        ),
        (
            8,
            "watches",
            include_str!("../../migrations/postgres/0008_watches.sql"),
        ),
        (
            9,
            "notifications",
            include_str!("../../migrations/postgres/0009_notifications.sql"),
        ),
        (
            10,
            "bans",
            include_str!("../../migrations/postgres/0010_bans.sql"),
        ),
        (
            11,
            "delivery_claims",
            include_str!("../../migrations/postgres/0011_delivery_claims.sql"),
        ),
        (
            12,
            "package_builds",
            include_str!("../../migrations/postgres/0012_package_builds.sql"),
        ),
        (
            13,
            "job_queue",
            include_str!("../../migrations/postgres/0013_job_queue.sql"),
        ),
        (
            14,
            "workers",
            include_str!("../../migrations/postgres/0014_workers.sql"),
        ),
        (
            15,
            "artifacts",
            include_str!("../../migrations/postgres/0015_artifacts.sql"),
        ),
        (
            16,
            "run_drivers",
            include_str!("../../migrations/postgres/0016_run_drivers.sql"),
        ),
        (
            17,
            "events_notify",
            include_str!("../../migrations/postgres/0017_events_notify.sql"),
        ),
        (
            18,
            "worker_offline",
            include_str!("../../migrations/postgres/0018_worker_offline.sql"),
        ),
        (
            19,
            "replicas",
            include_str!("../../migrations/postgres/0019_replicas.sql"),
        ),
        (
            20,
            "run_context",
            include_str!("../../migrations/postgres/0020_run_context.sql"),
        ),
        (
            21,
            "outbox without lock",
            include_str!("../../migrations/postgres/0021_outbox_without_lock.sql"),
        ),
        (
            22,
            "cancel requests",
            include_str!("../../migrations/postgres/0022_cancel_requests.sql"),
        ),
        (
            23,
            "job offers",
            include_str!("../../migrations/postgres/0023_job_offers.sql"),
        ),
        (
            24,
            "run context packed",
            include_str!("../../migrations/postgres/0024_run_context_packed.sql"),
        ),
        (
            25,
            "delivery payloads",
            include_str!("../../migrations/postgres/0025_delivery_payloads.sql"),
        ),
    ])
}

const POOL_SIZE: u32 = 8;

/// Connects and migrates. `url` is a `postgres://` URL; `?schema=NAME` (kiln's own
/// parameter, used by tests to isolate themselves) puts NAME first on the `search_path`, as
/// would sqlx's `options=-c search_path=NAME`.
pub(crate) async fn open(url: &str, blobs: BlobStore) -> Result<Backend, StoreError> {
    let options = connect_options(url)?;
    // A refused or unreachable server should be reported within seconds, not after sqlx's
    // default 30 s: the CLI maps it to exit 3 and a person is waiting.
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(std::time::Duration::from_secs(5))
        // sqlx pings every connection it hands out by default: a round trip more for each
        // statement. Only a connection idle for a while may have been cut (a database
        // restart); one in use is checked by its next statement failing. (What a dropped
        // caller leaves behind is cleaned when the connection is released, and transactions
        // begin where no caller can stop them half-way: `begin_detached`.)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= std::time::Duration::from_secs(1) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Open {
            backend: "postgres",
            location: redact(url),
            source,
        })?;
    migrator()
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate {
            backend: "postgres",
            source,
        })?;
    Ok(Backend::new(Writer(pool.clone()), pool, blobs))
}

impl Backend {
    /// The pool readers use (the event listener takes a connection of its own from its
    /// options).
    pub(crate) fn reader_pool(&self) -> Pool<Db> {
        self.reader.clone()
    }

    /// Woken after each commit of this backend that appended events: what tells other
    /// processes (`announce_events`).
    pub(crate) fn announcements(&self) -> std::sync::Weak<tokio::sync::Notify> {
        std::sync::Arc::downgrade(&self.announce)
    }
}

/// Wakes this process's outbox readers when any process (another replica, `kiln run`)
/// appends events: listens on `kiln_events_<schema>` (`announce_events`) and bumps `writes` at
/// each notification, and once after every reconnection, since notifications sent while
/// disconnected are lost. Ends when the store is dropped.
pub(crate) fn listen_for_events(
    pool: Pool<Db>,
    writes: std::sync::Weak<tokio::sync::watch::Sender<u64>>,
) {
    let bump =
        move |writes: &std::sync::Weak<tokio::sync::watch::Sender<u64>>| match writes.upgrade() {
            Some(w) => {
                w.send_modify(|n| *n = n.wrapping_add(1));
                true
            }
            None => false,
        };
    tokio::spawn(async move {
        // Until the first connection: retried every second (the database may be restarting).
        let mut listener = loop {
            match connect_listener(&pool).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen for other replicas' events");
                }
            }
            if writes.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        };
        // `try_recv` is not cancel-safe, so it is never raced against a timer: the task
        // notices the store is gone at the next notification or reconnection.
        loop {
            match listener.try_recv().await {
                // A notification, or the connection was lost (the next call reconnects and
                // listens again; what was sent meanwhile is lost, so readers poll once now).
                Ok(_) => {
                    if !bump(&writes) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen for other replicas' events");
                    if writes.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// The least time between two announcements of one process (`announce_events`).
const ANNOUNCE_GAP: std::time::Duration = std::time::Duration::from_millis(10);

/// Tells other processes' outbox readers (`listen_for_events`) that this one appended
/// events: one `NOTIFY kiln_events_<schema>` after each burst of commits, at most one per
/// `ANNOUNCE_GAP` (a commit alone is told at once; under load, readers elsewhere hear within
/// that gap instead of once per commit). Ends when the store is dropped.
pub(crate) fn announce_events(pool: Pool<Db>, announce: std::sync::Weak<tokio::sync::Notify>) {
    tokio::spawn(async move {
        let mut channel: Option<String> = None;
        loop {
            let Some(wake) = announce.upgrade() else {
                return;
            };
            // Checked every second for the store being gone.
            let woken = tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
                .await
                .is_ok();
            drop(wake);
            if !woken {
                continue;
            }
            let sent = async {
                if channel.is_none() {
                    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                        .fetch_one(&pool)
                        .await?;
                    channel = Some(format!("kiln_events_{schema}"));
                }
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(channel.as_deref())
                    .execute(&pool)
                    .await
            };
            if let Err(e) = sent.await {
                // Readers elsewhere still poll; they hear of these events at their next.
                tracing::debug!(error = %e, "cannot tell other replicas of new events");
            }
            tokio::time::sleep(ANNOUNCE_GAP).await;
        }
    });
}

async fn connect_listener(pool: &Pool<Db>) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(&mut listener)
        .await?;
    listener.listen(&format!("kiln_events_{schema}")).await?;
    Ok(listener)
}

/// Parses `url`, taking out kiln's `schema` parameter. Without an explicit `sslmode`, TLS is
/// off: this build carries no TLS stack (the database is expected on loopback or a private
/// network), and asking for TLS then would fail every connection.
pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let bad = |reason: String| StoreError::BadUrl {
        url: redact(url),
        reason,
    };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", name)) => schema = Some(name.to_owned()),
            _ => kept.push(pair),
        }
    }
    let url_without_schema = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut options: PgConnectOptions = url_without_schema
        .parse()
        .map_err(|e: sqlx::Error| bad(e.to_string()))?;
    if !kept.iter().any(|p| p.starts_with("sslmode=")) {
        options = options.ssl_mode(PgSslMode::Disable);
    }
    if let Some(schema) = schema {
        if schema.is_empty()
            || !schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad(format!(
                "schema `{schema}` must be letters, digits and `_`"
            )));
        }
        options = options.options([("search_path", schema.as_str())]);
    }
    Ok(options)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

include!("body.rs");

/// Serialises the creation of the first admin token between replicas starting together
/// (`tokens_body.rs`). 0x6b746f6b = "ktok".
const LOCK_TOKENS: Option<&str> = Some("SELECT pg_advisory_xact_lock(1802792811)");
include!("tokens_body.rs");
include!("projects_body.rs");
include!("hooks_body.rs");
include!("bans_body.rs");
include!("schedules_body.rs");
include!("watches_body.rs");
include!("notifications_body.rs");
include!("packages_body.rs");
include!("ops_body.rs");
include!("workers_body.rs");
include!("artifacts_body.rs");
include!("drivers_body.rs");

/// A completion and its events in one statement committed alone, as `CLAIM` does for a
/// claim: `$1` job, `$2` token, `$3` status, `$4` outputs, `$5` now, `$6` the event kinds as
/// a JSON array. Returns the job's `attempts` when it applied, no row when it was refused.
const COMPLETE_ALONE: &str = "WITH done AS (UPDATE jobs SET status = $3, outputs = $4, \
    finished_at = $5, lease_owner = NULL, lease_expires_at = NULL \
    WHERE id = $1 AND lease_token = $2 AND status IN ('leased', 'running') \
    RETURNING id, run_id, project_id, attempts), \
    outbox AS MATERIALIZED (SELECT pg_current_xact_id() \
    FROM (SELECT count(*) AS n FROM done) AS c WHERE c.n > 0), \
    appended AS (INSERT INTO events (at, kind, project_id, run_id, job_id, data) \
    SELECT $5, k.kind, d.project_id, d.run_id, d.id, \
    json_build_object('status', $3::text, 'attempt', d.attempts)::text \
    FROM outbox, done AS d, jsonb_array_elements_text($6::jsonb) WITH ORDINALITY AS k(kind, n) \
    ORDER BY k.n) \
    SELECT attempts FROM done";

impl Backend {
    /// Applies `ops` in one transaction, one statement per kind of job transition.
    pub(crate) async fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        if let [
            Op::CompleteJob {
                job,
                token,
                status,
                outputs,
                at,
            },
        ] = ops.as_slice()
            && status.is_terminal()
        {
            // A worker's report that a job ended, alone: one round trip instead of four
            // (BEGIN, update, events, COMMIT). The same guard as `complete_job`.
            let kinds = json_text(&super::job_event_kinds(*status));
            let done = sqlx::query(COMPLETE_ALONE)
                .bind(job.to_string())
                .bind(*token)
                .bind(status.as_str())
                .bind(json_text(outputs))
                .bind(ms(*at))
                .bind(kinds)
                .fetch_optional(&self.reader)
                .await
                .map_err(query("complete a job"))?;
            if done.is_some() {
                self.announce.notify_one();
                return Ok(vec![OpResult::Done]);
            }
            let mut conn = self.writer.single().await?;
            return Ok(vec![explain(&mut conn, *job, *token, &HELD).await?]);
        }
        let mut tx = self.begin_write().await?;
        let mut pending = Pending::default();
        let mut begun = true;
        let results = apply_ops(&mut tx, &mut pending, ops, &mut begun).await?;
        self.finish(tx, pending).await?;
        Ok(results)
    }
}

/// The writer: the pool (PostgreSQL has no single-writer rule).
pub(crate) struct Writer(Pool<Db>);

/// A write transaction.
pub(crate) type WriteTx = sqlx::Transaction<'static, Db>;

/// A connection for one autocommit statement (see `Writer::single`).
pub(crate) type Single = sqlx::pool::PoolConnection<Db>;

impl Writer {
    /// A connection for one statement in autocommit mode (atomic on its own).
    pub(crate) async fn single(&self) -> Result<Single, StoreError> {
        self.0
            .acquire()
            .await
            .map_err(query("take a connection to write"))
    }

    pub(crate) async fn begin(&self) -> Result<WriteTx, StoreError> {
        super::begin_detached(&self.0, SQL.begin_write)
            .await
            .map_err(query("begin a write transaction"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::moved_payloads as seed;
    use sqlx::Connection;

    /// As SQLite's test of the same name: migration 25 keeps every webhook body.
    #[tokio::test]
    async fn delivery_payloads_move_to_their_own_table() {
        let schema = kiln_testkit::pg::Schema::new();
        let url = schema.url();
        let mut conn = sqlx::PgConnection::connect_with(&connect_options(&url).unwrap())
            .await
            .unwrap();
        seed::seed!(migrator(), &mut conn);
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open_postgres(&url, dir.path()).await.unwrap();
        seed::check(&store).await;
        let moved: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_payloads")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(moved, 2);
        let payload: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'deliveries' AND column_name = 'payload'",
        )
        .bind(&schema.name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(payload, 0);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn schema_parameter_becomes_the_search_path() {
        let o = connect_options("postgres://postgres@127.0.0.1:5432/test?schema=t_abc").unwrap();
        assert_eq!(o.get_options(), Some("-c search_path=t_abc"));
        assert_eq!(o.get_database(), Some("test"));
        assert!(connect_options("postgres://h/db?schema=a;drop").is_err());
    }
}
