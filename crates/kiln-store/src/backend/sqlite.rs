//! The SQLite backend: the embedded default, one file `<data-dir>/kiln.db` in WAL mode.
//!
//! Every connection gets WAL, `synchronous=NORMAL`, a busy timeout and foreign keys. Writes
//! go through ONE connection (a pool of size one, so callers queue in-process instead of
//! spinning on the file lock) and every write transaction starts with `BEGIN IMMEDIATE`;
//! reads use a small pool of read-only connections, which WAL lets run beside the writer.
//! With a single writer, AUTOINCREMENT event ids commit in id order, so the outbox needs no
//! horizon. The queries themselves are in `body.rs`.

use std::path::Path;
use std::time::Duration;

use sqlx::Sqlite as Db;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::Dialect;

const SQL: Dialect = Dialect {
    begin_write: "BEGIN IMMEDIATE",
    begin_read: "BEGIN",
    lock_project: "SELECT id FROM projects WHERE id = $1",
    lock_outbox: None,
    insert_jobs: "INSERT INTO jobs (id, run_id, project_id, seq, job_key, name, matrix, needs, \
                  status, attempts, max_attempts, lease_owner, lease_token, lease_expires_at, \
                  log_length, outputs, created_at, started_at, finished_at) \
                  SELECT json_extract(value, '$[0]'), $1, $2, $3 + key, \
                  json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
                  json_extract(value, '$[3]'), json_extract(value, '$[4]'), \
                  json_extract(value, '$[5]'), 0, json_extract(value, '$[6]'), NULL, 0, NULL, \
                  0, '{}', $4, NULL, json_extract(value, '$[7]') \
                  FROM json_each($5) ORDER BY key",
    insert_events: "INSERT INTO events (at, kind, project_id, run_id, job_id, data) \
                    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                    json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                    json_extract(value, '$[4]'), json_extract(value, '$[5]') \
                    FROM json_each($1) ORDER BY key",
    events_after: "SELECT id, at, kind, project_id, run_id, job_id, data FROM events \
                   WHERE id > $1 ORDER BY id LIMIT $2",
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
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        // Keep the writer (and its prepared statements) for the life of the store.
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await
        .map_err(open_err)?;
    migrator()
        .run(&writer)
        .await
        .map_err(|source| StoreError::Migrate {
            backend: "sqlite",
            source,
        })?;
    // Readers open after the migration so that the file and its WAL exist.
    let reader = SqlitePoolOptions::new()
        .max_connections(READERS)
        .test_before_acquire(false)
        .connect_with(options.read_only(true))
        .await
        .map_err(open_err)?;
    Ok(Backend::new(writer, reader, blobs))
}

include!("body.rs");

/// The first admin token needs no lock of its own here: `BEGIN IMMEDIATE` already makes the
/// check-then-insert of `tokens_body.rs` one writer at a time.
const LOCK_TOKENS: Option<&str> = None;
include!("tokens_body.rs");
