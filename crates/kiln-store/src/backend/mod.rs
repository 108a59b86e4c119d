//! The two database backends and what they share.
//!
//! Both backends run the same queries: `body.rs` is written once and included by
//! `sqlite.rs` and `postgres.rs`, which each fix the sqlx driver type and the handful of
//! statements whose spelling differs ([`Dialect`]). This module holds the dialect-free
//! helpers: conversions between stored columns and `kiln_proto` values, the event kinds each
//! transition appends, the per-transaction buffer of events and blobs, and the embedded
//! migrations. Not here: any SQL that runs (that is in `body.rs`).

pub(crate) mod batch;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::borrow::Cow;
use std::str::FromStr;

use jiff::Timestamp;
use kiln_core::ids::{JobStatus, RunStatus};
use kiln_proto::Step;
use serde_json::{Map, Value, json};
use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::error::StoreError;

/// The statements whose spelling differs between SQLite and PostgreSQL.
pub(crate) struct Dialect {
    /// `BEGIN IMMEDIATE` on SQLite: a deferred transaction that reads and then writes fails
    /// at once with "database is locked" instead of waiting out `busy_timeout`.
    pub(crate) begin_write: &'static str,
    pub(crate) begin_read: &'static str,
    /// Finds the project of a new run; on PostgreSQL it also locks the project row so that
    /// two concurrent runs of one workflow cannot take the same run number.
    pub(crate) lock_project: &'static str,
    /// Inserts jobs, of one run or of many, from `$1`, a JSON array of `[id, key, name,
    /// matrix, needs, status, max_attempts, finished_at, labels, run, project, seq,
    /// created_at]` rows.
    pub(crate) insert_jobs: &'static str,
    /// Inserts a JSON array of `[at, kind, project, run, job, data]` rows in array order.
    /// On PostgreSQL it first makes sure the transaction has its xid (see `Settle`).
    pub(crate) insert_events: &'static str,
    /// `$1`: the last id seen, `$2`: the limit. Where ids are not in commit order, each row
    /// also has the snapshot's `xmin` and the next xid `xnext` (as `int8`) for `Settle`.
    pub(crate) events_after: &'static str,
    /// The newest event id (`head`, 0 when none); where ids are not in commit order, with
    /// the snapshot's `xmin` and the next xid `xnext`.
    pub(crate) event_head: &'static str,
    /// The `xmin` of a fresh snapshot (unused where ids are in commit order).
    pub(crate) event_horizon: &'static str,
    /// Whether event ids become visible in the order they were drawn (SQLite: one writer).
    /// If not, readers hand out events through `Settle`.
    pub(crate) events_in_commit_order: bool,
    /// The batched job transitions (see `batch.rs`). Each statement takes a JSON array of
    /// rows and returns `kind, id, run_id, project_id, token, attempts, idx` per applied row.
    pub(crate) batch: Batch,
    /// Leases queued jobs: `$1` owner, `$2` lease expiry, `$3` the claimer's labels as a
    /// JSON array (NULL: any), `$4` limit, `$5` now, `$6` only jobs offered by a live
    /// driver. Returns `job_cols!()` plus `project_id`, `lease_token`, `seq`, `created_at`
    /// and the run's `driver`.
    pub(crate) claim_jobs: &'static str,
    /// Whether `claim_jobs` also appends the `job.leased` events, so that a claim is one
    /// statement committed on its own (PostgreSQL: one round trip instead of five).
    pub(crate) claim_appends_events: bool,
    /// Inserts a JSON array of `[job, attempt, offset, length, step, blob_key, blob_offset]`.
    pub(crate) insert_chunks: &'static str,
    /// Offers jobs to claims: `$1` a JSON array of job ids, `$2` now.
    pub(crate) offer_jobs: &'static str,
    /// Records how accepted deliveries were processed: `$1` a JSON array of
    /// `{"id","status","reason","runs"}` objects (`runs` a JSON array as text), `$2` now.
    /// Returns the `id` of each delivery that was still `accepted`.
    pub(crate) finish_deliveries: &'static str,
}

/// How a dialect runs the batched statements.
pub(crate) enum Batch {
    /// One script of six statements taking `$1` … `$6` (SQLite binds numbered parameters
    /// across the statements of a script): one trip to the driver's worker thread. The
    /// commit then begins and ends the transaction itself, inside the scripts, so that a
    /// whole commit costs two trips.
    Script {
        batch: &'static str,
        /// `BEGIN IMMEDIATE` and `batch`.
        begin_batch: &'static str,
    },
    /// Six statements, each taking `$1`; those with no rows are skipped.
    Statements([&'static str; 6]),
}

/// One event waiting to be appended when its transaction commits.
struct PendingEvent {
    at: i64,
    kind: &'static str,
    project: Option<String>,
    run: Option<String>,
    job: Option<String>,
    data: Value,
}

/// What a write transaction accumulates before it commits: events (appended with one
/// statement) and the bytes of its log chunks (written as one blob, a segment).
#[derive(Default)]
pub(crate) struct Pending {
    events: Vec<PendingEvent>,
    segment: Option<(String, Vec<u8>)>,
}

impl Pending {
    /// Appends a log chunk's bytes to this transaction's segment; returns the segment's key
    /// and where the bytes start in it.
    pub(crate) fn log_bytes(&mut self, data: &[u8]) -> (String, i64) {
        let (key, buf) = self
            .segment
            .get_or_insert_with(|| (segment_key(), Vec::new()));
        let start = i64::try_from(buf.len()).unwrap_or(i64::MAX);
        buf.extend_from_slice(data);
        (key.clone(), start)
    }

    /// The segment to write before commit, if any chunk was logged.
    pub(crate) fn take_segment(&mut self) -> Option<(String, Vec<u8>)> {
        self.segment.take()
    }

    pub(crate) fn event(
        &mut self,
        at: i64,
        kind: &'static str,
        project: &str,
        run: &str,
        job: Option<&str>,
        data: Value,
    ) {
        self.events.push(PendingEvent {
            at,
            kind,
            project: Some(project.to_owned()),
            run: Some(run.to_owned()),
            job: job.map(str::to_owned),
            data,
        });
    }

    /// An event of no project, run or job (a worker's).
    pub(crate) fn system_event(&mut self, at: i64, kind: &'static str, data: Value) {
        self.events.push(PendingEvent {
            at,
            kind,
            project: None,
            run: None,
            job: None,
            data,
        });
    }

    /// The events of a run's transition to `status`.
    pub(crate) fn run_status(
        &mut self,
        at: i64,
        project: &str,
        run: &str,
        status: RunStatus,
        first_start: bool,
    ) {
        for kind in run_event_kinds(status, first_start) {
            self.event(
                at,
                kind,
                project,
                run,
                None,
                json!({ "status": status.as_str() }),
            );
        }
    }

    /// The events of a job's transition to `status`, with extra fields merged into the data.
    pub(crate) fn job_status(
        &mut self,
        at: i64,
        project: &str,
        run: &str,
        job: &str,
        status: JobStatus,
        extra: Value,
    ) {
        let mut data = json!({ "status": status.as_str() });
        if let (Value::Object(data), Value::Object(extra)) = (&mut data, extra) {
            data.extend(extra);
        }
        for kind in job_event_kinds(status) {
            self.event(at, kind, project, run, Some(job), data.clone());
        }
    }

    /// `job.progress`: a step of the job started or ended.
    pub(crate) fn job_progress(&mut self, project: &str, run: &str, job: &str, step: &Step) {
        let at = step
            .finished_at
            .or(step.started_at)
            .unwrap_or_else(Timestamp::now);
        self.event(
            ms(at),
            "job.progress",
            project,
            run,
            Some(job),
            json!({
                "step": step.index,
                "name": step.name,
                "status": step.status.as_str(),
            }),
        );
    }

    /// `log.line`: bytes `offset..offset + length` were appended to the job's log (of
    /// `attempt`, written by step `step`). The event names the bytes and where they are in the
    /// blob store (`blob`, internal: [`crate::Store::fill_log_lines`] swaps it for the text);
    /// it does not carry them, so that logs are not stored twice.
    pub(crate) fn log_line(
        &mut self,
        [project, run, job]: [&str; 3],
        attempt: i64,
        step: u32,
        offset: u64,
        length: usize,
        (key, blob_offset): (&str, i64),
    ) {
        self.event(
            ms(Timestamp::now()),
            "log.line",
            project,
            run,
            Some(job),
            json!({
                "attempt": attempt,
                "step": step,
                "offset": offset,
                "length": length,
                "blob": [key, blob_offset],
            }),
        );
    }

    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The events as one JSON array for `Dialect::insert_events`; `data` travels as text
    /// because the column stores text.
    pub(crate) fn events_json(&self) -> String {
        let rows: Vec<Value> = self
            .events
            .iter()
            .map(|e| json!([e.at, e.kind, e.project, e.run, e.job, e.data.to_string()]))
            .collect();
        Value::Array(rows).to_string()
    }
}

/// Event kinds of a run entering `status` (DESIGN.md "HTTP API" lists the public ones).
pub(crate) fn run_event_kinds(status: RunStatus, first_start: bool) -> &'static [&'static str] {
    match status {
        RunStatus::Pending => &["run.pending"],
        RunStatus::Queued => &["run.queued"],
        RunStatus::Running if first_start => &["run.started"],
        RunStatus::Running => &["run.resumed"],
        RunStatus::Waiting => &["run.waiting"],
        RunStatus::Success => &["run.completed"],
        RunStatus::Failure => &["run.completed", "run.failed"],
        RunStatus::Cancelled => &["run.completed", "run.cancelled"],
    }
}

/// Event kinds of a job entering `status`.
pub(crate) fn job_event_kinds(status: JobStatus) -> &'static [&'static str] {
    match status {
        JobStatus::Pending => &["job.pending"],
        JobStatus::Queued => &["job.queued"],
        JobStatus::Waiting => &["job.waiting"],
        JobStatus::Leased => &["job.leased"],
        JobStatus::Running => &["job.started"],
        JobStatus::Success | JobStatus::Cancelled | JobStatus::Cached => &["job.completed"],
        JobStatus::Failure | JobStatus::TimedOut => &["job.completed", "job.failed"],
        JobStatus::Skipped => &["job.completed", "job.skipped"],
    }
}

/// Timestamps are stored as unix milliseconds.
pub(crate) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// `t` as it will read back from the store (millisecond precision).
pub(crate) fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(t.as_millisecond()).unwrap_or(t)
}

pub(crate) fn ts(
    table: &'static str,
    column: &'static str,
    v: i64,
) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(v).map_err(|e| decode(table, column, e))
}

pub(crate) fn opt_ts(
    table: &'static str,
    column: &'static str,
    v: Option<i64>,
) -> Result<Option<Timestamp>, StoreError> {
    v.map(|v| ts(table, column, v)).transpose()
}

/// Parses an id or a status from its stored spelling.
pub(crate) fn parse<T>(table: &'static str, column: &'static str, s: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| decode(table, column, e))
}

pub(crate) fn parse_map(
    table: &'static str,
    column: &'static str,
    s: &str,
) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(s).map_err(|e| decode(table, column, e))
}

pub(crate) fn parse_strings(
    table: &'static str,
    column: &'static str,
    s: &str,
) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(s).map_err(|e| decode(table, column, e))
}

pub(crate) fn decode(
    table: &'static str,
    column: &'static str,
    e: impl std::fmt::Display,
) -> StoreError {
    StoreError::Decode {
        table,
        column,
        detail: e.to_string(),
    }
}

/// JSON text of a value that always serialises (string-keyed maps, string lists).
pub(crate) fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// A new log segment's blob key. Keys are UUIDv7, grouped in folders by their first 8 hex
/// digits (about a minute each) so that no folder grows without bound.
pub(crate) fn segment_key() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("logs/{}/{id}", &id[..8])
}

/// Builds a migrator from migrations embedded with `include_str!`. (sqlx's `migrate!` macro
/// would need the `macros` feature and its proc-macro build; the files are just as embedded
/// this way and sqlx still checks each applied migration's checksum.)
pub(crate) fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// `pool.begin_with(statement)`, in a task of its own, so that a caller dropped meanwhile (an
/// HTTP client gone, a timeout) cannot stop it half-way: sqlx then leaves the server inside
/// the transaction without knowing it, and the pool hands that connection to the next user,
/// whose statements never commit. Finished in its task, the transaction is rolled back as
/// any dropped one is.
pub(crate) async fn begin_detached<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: &'static str,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("beginning a transaction stopped: {e}")))?
}

/// Which events an outbox reader may hand out where event ids are not drawn in commit order
/// (PostgreSQL: an identity value is taken at insert and becomes visible at commit, and
/// writers do not serialise their commits). A reader that handed out event 8 while 7 was
/// still in flight would resume past 7 forever, so a row that follows a gap waits until the
/// gap is *settled*: filled, or known never to be.
///
/// The rule needs one promise from writers: a transaction has its xid before it draws an
/// event id (the outbox statements call `pg_current_xact_id()` first). Then, when row `b`
/// is visible after a gap, whoever holds an id of the gap drew it before `b` was drawn, so
/// its xid is below the next xid as the reading statement began (`xnext`). Once a later
/// snapshot's `xmin` reaches that, every such holder has ended: the gap's ids are visible or
/// never will be.
/// Exact, with no lock and no timeout; a reader only waits for the transactions that were
/// in flight when it first saw the gap.
#[derive(Debug, Default)]
pub(crate) struct Settle {
    /// Every id up to this one is final: visible, or never to be.
    final_upto: i64,
    /// For a row first read after a gap: the next xid when it was read.
    seen: std::collections::BTreeMap<i64, i64>,
}

/// How many rows after a gap `Settle` remembers; the oldest are forgotten first (a forgotten
/// gap is timed again from its next read, a little later than it need be).
const SETTLE_SEEN_MAX: usize = 4096;

impl Settle {
    /// Of `ids` (ascending, after `after`, read in one snapshot with `xmin`, when the next
    /// xid was `xnext`), how many from the first a reader may hand out now.
    pub(crate) fn take(&mut self, after: i64, ids: &[i64], xmin: i64, xnext: i64) -> usize {
        let mut prev = after;
        // Whether every id up to `prev` is final.
        let mut chained = after <= self.final_upto;
        let mut n = 0;
        for &id in ids {
            if id - 1 <= self.final_upto {
                chained = true;
            } else if id == prev + 1 {
                // Nothing in between: final below `id` exactly when it was below `prev`.
            } else {
                let first = *self.seen.entry(id).or_insert(xnext);
                if xmin < first {
                    break;
                }
                // Every holder of an id below `id` has ended.
                chained = true;
            }
            if chained {
                self.final_upto = self.final_upto.max(id);
            }
            prev = id;
            n += 1;
        }
        self.seen = self.seen.split_off(&(self.final_upto + 1));
        while self.seen.len() > SETTLE_SEEN_MAX {
            self.seen.pop_first();
        }
        n
    }

    /// Records that every id up to `id` is final (a head waited for).
    pub(crate) fn settled(&mut self, id: i64) {
        self.final_upto = self.final_upto.max(id);
        self.seen = self.seen.split_off(&(self.final_upto + 1));
    }
}

/// Both backends' test of migration 25: deliveries stored by an earlier kiln (payloads in
/// `deliveries`) keep their bodies when the payloads move to `delivery_payloads`. A
/// compressed body and one stored as it came read back as they were; one already pruned
/// stays empty.
#[cfg(test)]
pub(crate) mod moved_payloads {
    /// The migrations before 25.
    pub(crate) fn before(mut all: Migrator) -> Migrator {
        all.migrations = all
            .migrations
            .iter()
            .filter(|m| m.version < 25)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        assert_eq!(all.migrations.last().map(|m| m.version), Some(24));
        all
    }

    /// Migrates the connection `$conn` to 24 (of the backend's `$migrator`) and stores a
    /// project with the deliveries of [`rows`].
    macro_rules! seed {
        ($migrator:expr, $conn:expr) => {
            $crate::backend::moved_payloads::before($migrator)
                .run(&mut *$conn)
                .await
                .unwrap();
            sqlx::query($crate::backend::moved_payloads::PROJECT)
                .execute(&mut *$conn)
                .await
                .unwrap();
            for (id, stored, size) in $crate::backend::moved_payloads::rows() {
                sqlx::query($crate::backend::moved_payloads::DELIVERY)
                    .bind(id)
                    .bind(stored)
                    .bind(size)
                    .execute(&mut *$conn)
                    .await
                    .unwrap();
            }
        };
    }
    pub(crate) use seed;

    pub(crate) const PROJECT: &str = "INSERT INTO projects (id, name, source, hook_id, \
        created_at) VALUES ('00000000-0000-0000-0000-000000000001', 'app', '/src', 'h', 0)";

    /// A delivery as migration 24 stored it: `$1` id, `$2` stored payload, `$3` size.
    pub(crate) const DELIVERY: &str = "INSERT INTO deliveries (id, project_id, provider, \
        delivery_id, event, received_at, status, run_ids, payload, size) VALUES ($1, \
        '00000000-0000-0000-0000-000000000001', 'github', $1, 'push', 0, 'processed', '[]', \
        $2, $3)";

    fn json() -> Vec<u8> {
        br#"{"ref":"refs/heads/main","commits":[]}"#.repeat(20)
    }

    const RAW: &[u8] = b"\x01\x02not json";

    /// `(id, stored payload, size)`: packed, as it came, pruned.
    pub(crate) fn rows() -> Vec<(&'static str, Vec<u8>, i64)> {
        let json = json();
        let packed = crate::hooks::pack_payload(&json).into_owned();
        assert!(packed.len() < json.len());
        let size = |b: &[u8]| i64::try_from(b.len()).unwrap();
        vec![
            ("d1", packed, size(&json)),
            ("d2", RAW.to_vec(), size(RAW)),
            ("d3", Vec::new(), 99),
        ]
    }

    /// What the migrated store reads back.
    pub(crate) async fn check(store: &crate::Store) {
        assert_eq!(store.delivery_payload("d1").await.unwrap(), Some(json()));
        assert_eq!(
            store.delivery_payload("d2").await.unwrap(),
            Some(RAW.to_vec())
        );
        assert_eq!(
            store.delivery_payload("d3").await.unwrap(),
            Some(Vec::new())
        );
        assert_eq!(store.delivery_payload("d4").await.unwrap(), None);
        let view = store.get_delivery("d1").await.unwrap().unwrap();
        assert_eq!(view.size, i64::try_from(json().len()).unwrap());
    }

    use sqlx::migrate::Migrator;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_after_a_gap_waits_until_the_gap_s_holders_ended() {
        let mut s = Settle::default();
        // 1, 2 visible; 3 in flight (a transaction below the next xid, 10); 4 visible.
        assert_eq!(s.take(0, &[1, 2, 4], 7, 10), 2);
        // Read again while 3's holder still runs (xmin 8 < 10): still 1..2 only.
        assert_eq!(s.take(2, &[4], 8, 12), 0);
        // 3 committed: contiguous, no wait.
        assert_eq!(s.take(2, &[3, 4, 5], 9, 12), 3);
        assert_eq!(s.final_upto, 5);
        // 6 rolled back: 7 waits until every transaction in flight when 7 was first read
        // (next xid 15) has ended, then goes out although 6 never appears.
        assert_eq!(s.take(5, &[7], 11, 15), 0);
        assert_eq!(s.take(5, &[7, 8], 14, 16), 0);
        assert_eq!(s.take(5, &[7, 8], 15, 16), 2);
        assert_eq!(s.final_upto, 8);
        assert!(s.seen.is_empty());
    }

    #[test]
    fn a_gap_below_what_is_final_costs_no_wait() {
        let mut s = Settle::default();
        s.settled(100);
        // 50..60 were never committed (or pruned): below the final mark, nothing to wait for.
        assert_eq!(s.take(10, &[61, 62], 1, 99), 2);
        // A cursor that did not come from this process (an SSE client's Last-Event-ID
        // beyond what is final) is not chained: a gap after it still waits.
        let mut s = Settle::default();
        assert_eq!(s.take(40, &[41, 43], 5, 9), 1);
        assert_eq!(
            s.final_upto, 0,
            "41 is not known final: ids below 40 were not read"
        );
        assert_eq!(s.take(41, &[43], 9, 12), 1);
        assert_eq!(
            s.final_upto, 43,
            "43 settled by xmin: everything below it is final"
        );
    }

    #[test]
    fn every_status_has_an_event_kind() {
        for s in RunStatus::ALL {
            assert!(!run_event_kinds(*s, true).is_empty());
            if s.is_terminal() {
                assert_eq!(run_event_kinds(*s, false)[0], "run.completed");
            }
        }
        for s in JobStatus::ALL {
            let kinds = job_event_kinds(*s);
            assert_eq!(kinds.contains(&"job.completed"), s.is_terminal(), "{s}");
        }
    }

    #[test]
    fn events_travel_as_one_json_array_in_order() {
        let mut p = Pending::default();
        p.job_status(
            5,
            "p",
            "r",
            "j",
            JobStatus::Failure,
            json!({ "reason": "x" }),
        );
        let rows: Vec<Value> = serde_json::from_str(&p.events_json()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][1], "job.completed");
        assert_eq!(rows[1][1], "job.failed");
        let data: Value = serde_json::from_str(rows[0][5].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({ "status": "failure", "reason": "x" }));
    }

    #[test]
    fn chunks_of_one_transaction_share_a_segment() {
        let mut p = Pending::default();
        let (k1, o1) = p.log_bytes(b"abc");
        let (k2, o2) = p.log_bytes(b"de");
        assert_eq!((k1.as_str(), o1, o2), (k2.as_str(), 0, 3));
        assert_eq!(p.take_segment(), Some((k1, b"abcde".to_vec())));
        assert_eq!(p.take_segment(), None);
    }

    #[test]
    fn millisecond_truncation_round_trips() {
        let t = Timestamp::from_nanosecond(1_700_000_000_123_456_789).unwrap();
        let back = ts("t", "c", ms(t)).unwrap();
        assert_eq!(back, truncate(t));
    }
}
