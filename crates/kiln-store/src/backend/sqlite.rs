//! The SQLite backend: the embedded default, one file `<data-dir>/kiln.db` in WAL mode.
//!
//! Every connection gets WAL, `synchronous=NORMAL`, a busy timeout and foreign keys. Writes
//! go through ONE connection (a pool of size one, so callers queue in-process instead of
//! spinning on the file lock) and every write transaction starts with `BEGIN IMMEDIATE`;
//! reads use a small pool of read-only connections, which WAL lets run beside the writer.
//! A connection of its own copies the WAL into the database file every 100 ms
//! (`spawn_checkpointer`), so that no commit stalls on a checkpoint.
//! With a single writer, AUTOINCREMENT event ids commit in id order, so the outbox needs no
//! horizon. The queries themselves are in `body.rs`.

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use sqlx::ConnectOptions as _;
use sqlx::Sqlite as Db;
use sqlx::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Batch, Dialect};

/// Appends a JSON array of `[at, kind, project, run, job, data]` rows in array order.
macro_rules! insert_events {
    () => {
        "INSERT INTO events (at, kind, project_id, run_id, job_id, data) \
                    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                    json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                    json_extract(value, '$[4]'), json_extract(value, '$[5]') \
                    FROM json_each($1) ORDER BY key"
    };
}

/// The six batched job transitions (see `batch.rs`), `$1` … `$6`. `+status`: keeps SQLite
/// from driving each join from the status index (a scan of every queued job) instead of from
/// the batch's rows.
macro_rules! batch_script {
    () => {
        "UPDATE jobs SET status = b.status, finished_at = COALESCE(b.fin, \
            jobs.finished_at) FROM (SELECT json_extract(value, '$[0]') AS id, \
            json_extract(value, '$[1]') AS status, json_extract(value, '$[2]') AS fin \
            FROM json_each($1)) AS b WHERE jobs.id = b.id AND +jobs.status IN ('pending', \
            'queued', 'waiting') AND +jobs.status <> b.status RETURNING 1 AS kind, id, \
            run_id, project_id, NULL AS token, attempts, NULL AS idx; UPDATE jobs SET \
            status = 'leased', lease_owner = b.owner, lease_token = lease_token + 1, \
            lease_expires_at = b.exp, attempts = attempts + 1, log_length = 0, \
            started_at = NULL, finished_at = NULL FROM (SELECT json_extract(value, \
            '$[0]') AS id, json_extract(value, '$[1]') AS owner, json_extract(value, \
            '$[2]') AS exp FROM json_each($2)) AS b WHERE jobs.id = b.id AND +jobs.status \
            = 'queued' RETURNING 2 AS kind, id, run_id, project_id, lease_token AS \
            token, attempts, NULL AS idx; UPDATE jobs SET status = 'running', started_at \
            = b.at FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, \
            '$[1]') AS token, json_extract(value, '$[2]') AS at FROM json_each($3)) AS b \
            WHERE jobs.id = b.id AND jobs.lease_token = b.token AND +jobs.status = \
            'leased' RETURNING 3 AS kind, id, run_id, project_id, lease_token AS token, \
            attempts, NULL AS idx; INSERT INTO steps (job_id, attempt, idx, name, \
            status, outputs, started_at, finished_at) SELECT j.id, j.attempts, b.idx, \
            b.name, b.status, b.outputs, b.started, b.finished FROM (SELECT \
            json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS token, \
            json_extract(value, '$[2]') AS idx, json_extract(value, '$[3]') AS name, \
            json_extract(value, '$[4]') AS status, json_extract(value, '$[5]') AS \
            outputs, json_extract(value, '$[6]') AS started, json_extract(value, '$[7]') \
            AS finished FROM json_each($4)) AS b JOIN jobs AS j ON j.id = b.id WHERE \
            j.lease_token = b.token AND +j.status IN ('leased', 'running') ON CONFLICT \
            (job_id, attempt, idx) DO UPDATE SET name = excluded.name, status = \
            excluded.status, outputs = excluded.outputs, started_at = \
            excluded.started_at, finished_at = excluded.finished_at RETURNING 4 AS kind, \
            job_id AS id, (SELECT run_id FROM jobs WHERE jobs.id = steps.job_id) AS \
            run_id, (SELECT project_id FROM jobs WHERE jobs.id = steps.job_id) AS \
            project_id, NULL AS token, attempt AS attempts, idx; UPDATE jobs SET log_length = log_length + b.len FROM (SELECT \
            json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS token, \
            json_extract(value, '$[2]') AS off, json_extract(value, '$[3]') AS len FROM \
            json_each($5)) AS b WHERE jobs.id = b.id AND jobs.lease_token = b.token AND \
            +jobs.status IN ('leased', 'running') AND jobs.log_length = b.off RETURNING 5 \
            AS kind, id, run_id, project_id, lease_token AS token, attempts, NULL AS \
            idx; UPDATE jobs SET status = b.status, outputs = b.outputs, finished_at = \
            b.at, lease_owner = NULL, lease_expires_at = NULL FROM (SELECT \
            json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS token, \
            json_extract(value, '$[2]') AS status, json_extract(value, '$[3]') AS \
            outputs, json_extract(value, '$[4]') AS at FROM json_each($6)) AS b WHERE \
            jobs.id = b.id AND jobs.lease_token = b.token AND +jobs.status IN ('leased', \
            'running') RETURNING 6 AS kind, id, run_id, project_id, lease_token AS \
            token, attempts, NULL AS idx"
    };
}

const SQL: Dialect = Dialect {
    begin_write: "BEGIN IMMEDIATE",
    begin_read: "BEGIN",
    lock_project: "SELECT id FROM projects WHERE id = $1",
    claim_appends_events: false,
    insert_jobs: "INSERT INTO jobs (id, run_id, project_id, seq, job_key, name, matrix, needs, \
                  status, attempts, max_attempts, lease_owner, lease_token, lease_expires_at, \
                  log_length, outputs, created_at, started_at, finished_at, labels) \
                  SELECT json_extract(value, '$[0]'), json_extract(value, '$[9]'), \
                  json_extract(value, '$[10]'), json_extract(value, '$[11]'), \
                  json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
                  json_extract(value, '$[3]'), json_extract(value, '$[4]'), \
                  json_extract(value, '$[5]'), 0, json_extract(value, '$[6]'), NULL, 0, NULL, \
                  0, '{}', json_extract(value, '$[12]'), NULL, json_extract(value, '$[7]'), \
                  json_extract(value, '$[8]') FROM json_each($1) ORDER BY key",
    insert_events: insert_events!(),
    events_after: "SELECT id, at, kind, project_id, run_id, job_id, data FROM events \
                   WHERE id > $1 ORDER BY id LIMIT $2",
    event_head: "SELECT COALESCE(MAX(id), 0) AS head FROM events",
    event_horizon: "SELECT 0",
    events_in_commit_order: true,
    batch: Batch::Script {
        batch: batch_script!(),
        begin_batch: concat!("BEGIN IMMEDIATE; ", batch_script!()),
    },
    // One writer at a time: no row locks to skip. A job fits when none of its labels is
    // missing from the claimer's.
    claim_jobs: "UPDATE jobs SET status = 'leased', lease_owner = $1, \
                 lease_token = lease_token + 1, lease_expires_at = $2, \
                 attempts = attempts + 1, log_length = 0, started_at = NULL, \
                 finished_at = NULL \
                 WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' \
                 AND ($3 IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(jobs.labels) AS l \
                 WHERE l.value NOT IN (SELECT value FROM json_each($3)))) \
                 AND (NOT $6 OR (offered_at IS NOT NULL AND EXISTS (SELECT 1 FROM runs \
                 JOIN replicas ON replicas.owner = runs.driver \
                 WHERE runs.id = jobs.run_id AND runs.driver_until > $5))) \
                 ORDER BY created_at, run_id, seq LIMIT $4) \
                 RETURNING id, run_id, job_key, name, matrix, needs, status, attempts, max_attempts, \
                 started_at, finished_at, outputs, labels, project_id, lease_token, seq, created_at, \
                 (SELECT driver FROM runs WHERE runs.id = jobs.run_id) AS driver",
    insert_chunks: "INSERT INTO log_chunks (job_id, attempt, byte_offset, length, step, blob_key, \
                    blob_offset) \
                    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                    json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                    json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
                    json_extract(value, '$[6]') FROM json_each($1)",
    // `+status`: driven from the batch's rows by id, not from the status index (a scan of
    // every delivery still waiting, for each row of the batch).
    finish_deliveries: "UPDATE deliveries SET status = b.status, reason = b.reason, \
                        run_ids = b.runs, processed_at = $2 \
                        FROM (SELECT json_extract(value, '$.id') AS id, \
                        json_extract(value, '$.status') AS status, \
                        json_extract(value, '$.reason') AS reason, \
                        json_extract(value, '$.runs') AS runs FROM json_each($1)) AS b \
                        WHERE deliveries.id = b.id AND +deliveries.status = 'accepted' \
                        RETURNING deliveries.id",
    offer_jobs: "UPDATE jobs SET offered_at = $2 WHERE id IN (SELECT value FROM json_each($1))",
};

/// The embedded SQLite migrations, oldest first. Forward-only.
pub(crate) fn migrator() -> sqlx::migrate::Migrator {
    super::migrator(&[
        (
            1,
            "init",
            include_str!("../../migrations/sqlite/0001_init.sql"),
        ),
        (
            2,
            "log segments",
            include_str!("../../migrations/sqlite/0002_log_segments.sql"),
        ),
        (
            3,
            "tokens",
            include_str!("../../migrations/sqlite/0003_tokens.sql"),
        ),
        (
            5,
            "projects",
            include_str!("../../migrations/sqlite/0005_projects.sql"),
        ),
        (
            6,
            "hooks",
            include_str!("../../migrations/sqlite/0006_hooks.sql"),
        ),
        (
            7,
            "schedules",
            include_str!("../../migrations/sqlite/0007_schedules.sql"),
        ),
        (
            8,
            "watches",
            include_str!("../../migrations/sqlite/0008_watches.sql"),
        ),
        (
            9,
            "notifications",
            include_str!("../../migrations/sqlite/0009_notifications.sql"),
        ),
        (
            10,
            "bans",
            include_str!("../../migrations/sqlite/0010_bans.sql"),
        ),
        (
            11,
            "delivery_claims",
            include_str!("../../migrations/sqlite/0011_delivery_claims.sql"),
        ),
        (
            12,
            "package_builds",
            include_str!("../../migrations/sqlite/0012_package_builds.sql"),
        ),
        (
            13,
            "job_queue",
            include_str!("../../migrations/sqlite/0013_job_queue.sql"),
        ),
        (
            14,
            "workers",
            include_str!("../../migrations/sqlite/0014_workers.sql"),
        ),
        (
            15,
            "artifacts",
            include_str!("../../migrations/sqlite/0015_artifacts.sql"),
        ),
        (
            16,
            "run_drivers",
            include_str!("../../migrations/sqlite/0016_run_drivers.sql"),
        ),
        (
            17,
            "events_notify",
            include_str!("../../migrations/sqlite/0017_events_notify.sql"),
        ),
        (
            18,
            "worker_offline",
            include_str!("../../migrations/sqlite/0018_worker_offline.sql"),
        ),
        (
            19,
            "replicas",
            include_str!("../../migrations/sqlite/0019_replicas.sql"),
        ),
        (
            20,
            "run_context",
            include_str!("../../migrations/sqlite/0020_run_context.sql"),
        ),
        (
            21,
            "outbox without lock",
            include_str!("../../migrations/sqlite/0021_outbox_without_lock.sql"),
        ),
        (
            22,
            "cancel requests",
            include_str!("../../migrations/sqlite/0022_cancel_requests.sql"),
        ),
        (
            23,
            "job offers",
            include_str!("../../migrations/sqlite/0023_job_offers.sql"),
        ),
        (
            24,
            "run context packed",
            include_str!("../../migrations/sqlite/0024_run_context_packed.sql"),
        ),
        (
            25,
            "delivery payloads",
            include_str!("../../migrations/sqlite/0025_delivery_payloads.sql"),
        ),
    ])
}

/// Readers beside the one writer: enough for the API and the event stream on two cores.
const READERS: u32 = 4;

/// Opens (creating if needed) and migrates the database file.
pub(crate) async fn open(db_file: &Path, blobs: BlobStore) -> Result<Backend, StoreError> {
    let location = db_file.display().to_string();
    let open_err = |source| StoreError::Open {
        backend: "sqlite",
        location: location.clone(),
        source,
    };
    let options = SqliteConnectOptions::new()
        .filename(db_file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let mut writer = options.connect().await.map_err(open_err)?;
    migrator()
        .run(&mut writer)
        .await
        .map_err(|source| StoreError::Migrate {
            backend: "sqlite",
            source,
        })?;
    // The checkpointer below keeps the WAL short; the writer checkpoints only as a backstop.
    sqlx::query(WRITER_CHECKPOINT)
        .execute(&mut writer)
        .await
        .map_err(open_err)?;
    // Readers open after the migration so that the file and its WAL exist.
    let reader = SqlitePoolOptions::new()
        .max_connections(READERS)
        .test_before_acquire(false)
        .connect_with(options.clone().read_only(true))
        .await
        .map_err(open_err)?;
    let writer = Writer::new(writer);
    spawn_checkpointer(options, Arc::downgrade(&writer.0));
    Ok(Backend::new(writer, reader, blobs))
}

/// The WAL pages past which the writer checkpoints on its own (SQLite's default is 1,000):
/// only when the checkpointer has fallen far behind.
const WRITER_CHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 8000";

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copies the WAL into the database file from a connection of its own, every
/// [`CHECKPOINT_EVERY`], for as long as the store's writer lives. Left to the writer, a
/// checkpoint (copying the WAL's pages and two `fsync`s) runs inside whichever commit
/// crosses SQLite's threshold, and every writer queued behind it waits (measured under a
/// stream of webhooks: 2–12% more deliveries a second with the checkpointer). `PASSIVE`
/// neither waits for nor blocks readers and the writer; a checkpoint it cannot finish is
/// taken up again on the next turn.
fn spawn_checkpointer(options: SqliteConnectOptions, writer: std::sync::Weak<Mutex<Held>>) {
    tokio::spawn(async move {
        let mut conn = match options.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open SQLite's checkpointer: the writer checkpoints instead");
                return;
            }
        };
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if writer.strong_count() == 0 {
                break;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut conn)
                .await
            {
                tracing::debug!(error = %e, "a WAL checkpoint failed; the next turn tries again");
            }
        }
        let _ = sqlx::Connection::close(conn).await;
    });
}

/// SQLite's one writer connection, held for the life of the store (and with it its prepared
/// statements). Taking it is one lock; a pool would hand it back through a spawned task after
/// each use, a thread hop that cost as much as the statements.
pub(crate) struct Writer(Arc<Mutex<Held>>);

/// The writer connection, and whether a transaction may have been left open on it (by an
/// error, or a future dropped half-way): the next user rolls it back first.
pub(crate) struct Held {
    conn: SqliteConnection,
    open: bool,
}

impl Held {
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    pub(crate) fn set_open(&mut self, open: bool) {
        self.open = open;
    }
}

impl Writer {
    fn new(conn: SqliteConnection) -> Self {
        Writer(Arc::new(Mutex::new(Held { conn, open: false })))
    }

    /// Waits for the writer; rolls back what an earlier user left open.
    pub(crate) async fn lock(&self) -> Result<OwnedMutexGuard<Held>, StoreError> {
        let mut held = self.0.clone().lock_owned().await;
        if held.open {
            // "no transaction is active" when the earlier BEGIN itself failed: fine.
            let _ = sqlx::query("ROLLBACK").execute(&mut held.conn).await;
            held.open = false;
        }
        Ok(held)
    }

    /// The writer for one statement in autocommit mode (atomic on its own, one trip to the
    /// connection's thread instead of three with BEGIN and COMMIT): a lone statement takes
    /// the write lock when it starts, so `busy_timeout` applies.
    pub(crate) async fn single(&self) -> Result<Single, StoreError> {
        Ok(Single(self.lock().await?))
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`: see `Dialect::begin_write`).
    pub(crate) async fn begin(&self) -> Result<WriteTx, StoreError> {
        let mut held = self.lock().await?;
        held.open = true;
        sqlx::query(SQL.begin_write)
            .execute(&mut held.conn)
            .await
            .map_err(crate::error::query("begin a write transaction"))?;
        Ok(WriteTx(Some(held)))
    }
}

/// The writer, held for one autocommit statement (see [`Writer::single`]).
pub(crate) struct Single(OwnedMutexGuard<Held>);

impl std::ops::Deref for Single {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.0.conn
    }
}

impl std::ops::DerefMut for Single {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.0.conn
    }
}

/// A write transaction on the writer. Dropped without `commit` or `rollback` (an early
/// `return Ok(None)`, an error, a cancelled future), it is rolled back at once by a spawned
/// task that keeps the writer until then: left open, the transaction would hold the database
/// file's write lock, and another process on the same file (a second replica, `kiln token
/// create --data-dir` beside a server) would wait out its busy timeout and fail with
/// "database is locked". Outside a runtime the writer's next user rolls it back instead.
pub(crate) struct WriteTx(Option<OwnedMutexGuard<Held>>);

impl WriteTx {
    fn held(&mut self) -> &mut Held {
        self.0
            .as_mut()
            .expect("a write transaction holds the writer until dropped")
    }

    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let held = self.held();
        sqlx::query("COMMIT").execute(&mut held.conn).await?;
        held.open = false;
        Ok(())
    }

    pub(crate) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let held = self.held();
        sqlx::query("ROLLBACK").execute(&mut held.conn).await?;
        held.open = false;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(mut held) = self.0.take() else {
            return;
        };
        if !held.open {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if sqlx::query("ROLLBACK")
                    .execute(&mut held.conn)
                    .await
                    .is_ok()
                {
                    held.open = false;
                }
            });
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self
            .0
            .as_ref()
            .expect("a write transaction holds the writer until dropped")
            .conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.held().conn
    }
}

include!("body.rs");

/// The first admin token needs no lock of its own here: `BEGIN IMMEDIATE` already makes the
/// check-then-insert of `tokens_body.rs` one writer at a time.
const LOCK_TOKENS: Option<&str> = None;
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

impl Backend {
    /// Applies `ops` in one transaction. The transaction is begun by the first script and
    /// ended by the last, so a commit of job transitions costs two trips to the driver's
    /// worker thread however many ops it holds. If it fails, or its future is dropped
    /// half-way, the writer stays marked open and its next user rolls it back first.
    pub(crate) async fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        let mut held = self.writer.lock().await?;
        let mut pending = Pending::default();
        let mut begun = false;
        held.set_open(true);
        let results = apply_ops(held.conn(), &mut pending, ops, &mut begun).await?;
        if !begun {
            held.set_open(false);
            return Ok(results);
        }
        if let Some((key, bytes)) = pending.take_segment() {
            self.blobs.put(&key, bytes).await?;
        }
        if pending.has_events() {
            sqlx::query(concat!(insert_events!(), "; COMMIT"))
                .bind(pending.events_json())
                .execute(held.conn())
                .await
                .map_err(query("append events to the outbox and commit"))?;
        } else {
            sqlx::query("COMMIT")
                .execute(held.conn())
                .await
                .map_err(query("commit a write transaction"))?;
        }
        held.set_open(false);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::moved_payloads as seed;

    /// A database made by an earlier kiln keeps its webhook bodies when migration 25 moves
    /// them to `delivery_payloads` (see `moved_payloads`).
    #[tokio::test]
    async fn delivery_payloads_move_to_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("kiln.db"))
            .create_if_missing(true)
            .foreign_keys(true);
        let mut conn = options.connect().await.unwrap();
        seed::seed!(migrator(), &mut conn);
        drop(conn);

        let store = crate::Store::open_sqlite(dir.path()).await.unwrap();
        seed::check(&store).await;
        let mut conn = options.connect().await.unwrap();
        let moved: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_payloads")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(moved, 2);
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('deliveries')")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert!(columns.contains(&"size".to_owned()), "{columns:?}");
        assert!(!columns.contains(&"payload".to_owned()), "{columns:?}");
    }
}
