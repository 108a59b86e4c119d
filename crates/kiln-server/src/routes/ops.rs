//! Operations: what an operator looks at. `GET /api/v1/queue` (jobs waiting or in hand),
//! `/api/v1/stats` (counts, durations per workflow, runs per day), and, for admins only,
//! `/api/v1/config` (the effective settings, secrets redacted), `/api/v1/database/stats`
//! (rows and sizes) and `/api/v1/database/export` (every row as JSON lines, streamed).
//!
//! Everything comes from the store's reads (`kiln_store::Store::queue` and its neighbours);
//! nothing here writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use indexmap::IndexMap;
use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId};
use kiln_store::{ExportCursor, ExportPage, ExportTable, Store};
use serde::Serialize;

use crate::auth::Admin;
use crate::envelope::Data;
use crate::error::ApiError;
use crate::state::AppState;

/// Queue entries unless `limit` says otherwise, and the most it may say.
const QUEUE_LIMIT: u32 = 100;
const MAX_QUEUE_LIMIT: u32 = 1000;
/// Days of runs per day unless `days` says otherwise, and the most it may say.
const STATS_DAYS: u32 = 30;
const MAX_STATS_DAYS: u32 = 365;
/// Rows per page read from the store while exporting.
const EXPORT_PAGE: u32 = 500;
/// The blob folder is measured only while it holds at most this many entries.
const MAX_BLOB_ENTRIES: u64 = 100_000;

fn bad_param(name: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("query parameter `{name}`: {message}"))
        .with_details(serde_json::json!({ "parameter": name }))
}

/// `name` from the query: a whole number in `1..=max`, or `default` when absent.
fn bounded(
    q: &HashMap<String, String>,
    name: &str,
    default: u32,
    max: u32,
) -> Result<u32, ApiError> {
    match q.get(name) {
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad_param(name, format!("expected 1 to {max}, got `{v}`"))),
        None => Ok(default),
    }
}

/// One job waiting or in hand.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct QueuedJob {
    /// The job's id (what `/api/v1/jobs/{id}` takes).
    #[schema(value_type = String)]
    id: JobId,
    #[schema(value_type = String)]
    run: RunId,
    #[schema(value_type = String)]
    project: ProjectId,
    project_name: String,
    /// The run's workflow file.
    workflow: String,
    /// The job's key in the workflow.
    key: String,
    /// Its display name (a matrix instance's includes its values).
    name: String,
    /// `queued`, `waiting`, `leased` or `running`.
    #[schema(value_type = String)]
    status: JobStatus,
    /// Executions so far, and the most it may have.
    attempts: i64,
    max_attempts: i64,
    /// When the job was created: it has been waiting, or in hand, since.
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    /// When its current attempt started running.
    #[schema(value_type = Option<String>, format = DateTime)]
    started_at: Option<Timestamp>,
    /// Who holds its lease (leased and running jobs).
    lease_owner: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    lease_expires_at: Option<Timestamp>,
}

/// The queue: the oldest jobs waiting or in hand, and how many there are.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct QueueView {
    /// Oldest first; at most `limit`.
    jobs: Vec<QueuedJob>,
    /// Jobs in each of `queued`, `waiting`, `leased`, `running`, whatever the limit.
    #[schema(value_type = BTreeMap<String, i64>)]
    counts: IndexMap<&'static str, i64>,
    /// All of them.
    total: i64,
    limit: u32,
}

/// The jobs waiting for a slot or a policy (`queued`, `waiting`) and those in hand
/// (`leased`, `running`), oldest first, with counts by status.
#[utoipa::path(
    get,
    path = "/api/v1/queue",
    tag = "operations",
    security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, description = "Jobs to list, 1–1000 (default 100)")),
    responses(
        (status = 200, description = "The queue", body = kiln_proto::Envelope<QueueView>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn queue(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<QueueView>, ApiError> {
    let limit = bounded(&q, "limit", QUEUE_LIMIT, MAX_QUEUE_LIMIT)?;
    let snapshot = state.store().queue(limit).await?;
    let jobs = snapshot
        .jobs
        .into_iter()
        .map(|j| QueuedJob {
            id: j.job,
            run: j.run,
            project: j.project,
            project_name: j.project_name,
            workflow: j.workflow,
            key: j.key,
            name: j.name,
            status: j.status,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            created_at: j.created_at,
            started_at: j.started_at,
            lease_owner: j.lease_owner,
            lease_expires_at: j.lease_expires_at,
        })
        .collect();
    let counts: IndexMap<&'static str, i64> = snapshot
        .counts
        .iter()
        .map(|(s, n)| (s.as_str(), *n))
        .collect();
    Ok(Data::ok(QueueView {
        jobs,
        total: counts.values().sum(),
        counts,
        limit,
    }))
}

/// One workflow of one project: its runs and how long the finished ones took.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WorkflowView {
    #[schema(value_type = String)]
    project: ProjectId,
    project_name: String,
    /// The workflow file.
    workflow: String,
    /// Runs of every status.
    runs: i64,
    /// Runs that ended (success, failure, cancelled) after starting: the durations' sample.
    finished: i64,
    succeeded: i64,
    /// Median duration of the finished runs, in seconds (nearest rank); `null` if none.
    duration_p50_seconds: Option<f64>,
    /// 95th percentile of the same.
    duration_p95_seconds: Option<f64>,
}

/// Counts, durations and activity.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StatsView {
    /// Runs in each status (every status listed).
    #[schema(value_type = BTreeMap<String, i64>)]
    runs: IndexMap<&'static str, i64>,
    /// Jobs in each status (every status listed).
    #[schema(value_type = BTreeMap<String, i64>)]
    jobs: IndexMap<&'static str, i64>,
    /// By project name, then workflow file.
    workflows: Vec<WorkflowView>,
    /// Runs created on each UTC date (`YYYY-MM-DD`) of the last `days` days, oldest first,
    /// days without runs included.
    #[schema(value_type = BTreeMap<String, i64>)]
    runs_per_day: IndexMap<String, i64>,
    days: u32,
    /// Package builds (`kiln build`): counts all time and of the last finished session, and
    /// build-time percentiles of every successful build (all time).
    packages: kiln_proto::PackageStatsView,
}

fn seconds(ms: Option<i64>) -> Option<f64> {
    ms.map(|ms| ms as f64 / 1000.0)
}

/// Runs and jobs by status, runs and duration percentiles per workflow, runs per day, and
/// package builds (`packages`: counts all time and of the last finished `kiln build`, build
/// time percentiles all time).
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "operations",
    security(("bearer" = [])),
    params(("days" = Option<u32>, Query, description = "Days of `runs_per_day`, 1–365 (default 30), today included")),
    responses(
        (status = 200, description = "The statistics", body = kiln_proto::Envelope<StatsView>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn stats(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<StatsView>, ApiError> {
    let days = bounded(&q, "days", STATS_DAYS, MAX_STATS_DAYS)?;
    let stats = state.store().run_stats(days, Timestamp::now()).await?;
    let packages = crate::routes::packages::stats_view(state.store().package_stats().await?);
    Ok(Data::ok(StatsView {
        runs: stats
            .counts
            .runs
            .iter()
            .map(|(s, n)| (s.as_str(), *n))
            .collect(),
        jobs: stats
            .counts
            .jobs
            .iter()
            .map(|(s, n)| (s.as_str(), *n))
            .collect(),
        workflows: stats
            .workflows
            .into_iter()
            .map(|w| WorkflowView {
                project: w.project,
                project_name: w.project_name,
                workflow: w.workflow,
                runs: w.runs,
                finished: w.finished,
                succeeded: w.succeeded,
                duration_p50_seconds: seconds(w.p50_ms),
                duration_p95_seconds: seconds(w.p95_ms),
            })
            .collect(),
        runs_per_day: stats
            .per_day
            .iter()
            .map(|(d, n)| (d.to_string(), *n))
            .collect(),
        days,
        packages,
    }))
}

/// The egress policy as lists.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EgressView {
    /// Host names allowed (empty: any public host).
    hosts: Vec<String>,
    /// Address ranges allowed.
    cidrs: Vec<String>,
    allow_loopback: bool,
    allow_private: bool,
    allow_local_paths: bool,
}

/// The server's effective settings, secrets redacted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConfigView {
    public_url: String,
    /// How remote workers reach this replica (`--replica-url`, else the public URL).
    replica_url: String,
    /// The largest request body, in bytes.
    body_limit: usize,
    /// How long a request may take, in seconds.
    request_timeout_seconds: f64,
    egress: EgressView,
    data_dir: String,
    /// `sqlite` or `postgres`.
    backend: String,
    /// The database URL with its password as `***`; `null` for the embedded default.
    database: Option<String>,
    /// Whether `/metrics` is open without a token.
    metrics_open: bool,
    /// Whether this server runs jobs (its engine is up).
    engine: bool,
    /// The engine's local worker slots, when it runs one and they are known.
    worker_slots: Option<usize>,
}

/// The effective settings (admin only). Nothing secret: the database URL's password is
/// `***`.
#[utoipa::path(
    get,
    path = "/api/v1/config",
    tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The settings", body = kiln_proto::Envelope<ConfigView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not an admin token", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn config(_: Admin, State(state): State<AppState>) -> Data<ConfigView> {
    let c = state.config();
    let engine = state.engine().is_some();
    Data::ok(ConfigView {
        public_url: c.public_url.clone(),
        replica_url: c.worker_url().to_owned(),
        body_limit: c.body_limit,
        request_timeout_seconds: c.request_timeout.as_secs_f64(),
        egress: EgressView {
            hosts: c.egress.hosts(),
            cidrs: c.egress.cidrs().iter().map(ToString::to_string).collect(),
            allow_loopback: c.egress.allow_loopback,
            allow_private: c.egress.allow_private,
            allow_local_paths: c.egress.allow_local_paths,
        },
        data_dir: c.data_dir.display().to_string(),
        backend: state.store().backend_name().to_owned(),
        // Redacted again here, whatever was put in the field.
        database: c.database.as_deref().map(kiln_engine::egress::redact_url),
        metrics_open: c.metrics_open,
        engine,
        worker_slots: if engine { c.worker_slots } else { None },
    })
}

/// One table's rows and size.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TableView {
    name: String,
    rows: i64,
    /// Bytes with its indexes, where the backend can say.
    bytes: Option<i64>,
}

/// The database's tables and sizes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DatabaseView {
    /// `sqlite` or `postgres`.
    backend: String,
    /// The database's size in bytes (SQLite: the file's pages; PostgreSQL:
    /// `pg_database_size`).
    size_bytes: Option<i64>,
    tables: Vec<TableView>,
    /// Bytes and files in the blob folder (`<data dir>/blobs`: log segments); `null` when it
    /// is missing or too large to measure on request.
    blob_bytes: Option<u64>,
    blob_files: Option<u64>,
}

/// Bytes and files under `dir`, or `None` when it cannot be read or holds more than
/// `MAX_BLOB_ENTRIES` entries.
fn folder_size(dir: &Path) -> Option<(u64, u64)> {
    let mut stack = vec![dir.to_owned()];
    let (mut bytes, mut files, mut seen) = (0_u64, 0_u64, 0_u64);
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()? {
            let entry = entry.ok()?;
            seen += 1;
            if seen > MAX_BLOB_ENTRIES {
                return None;
            }
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    Some((bytes, files))
}

/// Row counts and sizes of the database's tables, and the blob folder's size (admin only).
#[utoipa::path(
    get,
    path = "/api/v1/database/stats",
    tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The database's tables and sizes", body = kiln_proto::Envelope<DatabaseView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not an admin token", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn database_stats(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Data<DatabaseView>, ApiError> {
    let stats = state.store().database_stats().await?;
    let blobs: PathBuf = state.config().data_dir.join("blobs");
    let measured = tokio::task::spawn_blocking(move || folder_size(&blobs))
        .await
        .unwrap_or(None);
    Ok(Data::ok(DatabaseView {
        backend: stats.backend.to_owned(),
        size_bytes: stats.size_bytes,
        tables: stats
            .tables
            .into_iter()
            .map(|t| TableView {
                name: t.name.to_owned(),
                rows: t.rows,
                bytes: t.bytes,
            })
            .collect(),
        blob_bytes: measured.map(|(b, _)| b),
        blob_files: measured.map(|(_, f)| f),
    }))
}

/// Where an export stands between pages.
struct Export {
    store: Store,
    /// Index into `ExportTable::ALL` of the table being read; past the end when done.
    table: usize,
    after: Option<ExportCursor>,
    /// The first page, read before the answer began (so that a failing store still gets an
    /// error envelope).
    first: Option<ExportPage>,
}

/// The NDJSON lines of one page.
fn lines(table: ExportTable, page: &ExportPage) -> Bytes {
    let mut out = Vec::with_capacity(page.rows.len() * 256);
    for row in &page.rows {
        let line = serde_json::json!({ "table": table.name(), "row": row });
        // A `Value` of strings, numbers and maps always serialises.
        if serde_json::to_writer(&mut out, &line).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

impl Export {
    /// The next non-empty chunk of lines, `None` at the end.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            let table = *ExportTable::ALL.get(self.table)?;
            let page = match self.first.take() {
                Some(page) => page,
                None => match self
                    .store
                    .export_page(table, self.after.as_ref(), EXPORT_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::error!(error = %e, table = table.name(), "the export failed half-way");
                        // Past the end: the stream ends after this error.
                        self.table = ExportTable::ALL.len();
                        return Some(Err(std::io::Error::other(e.to_string())));
                    }
                },
            };
            match page.next.clone() {
                Some(next) => self.after = Some(next),
                None => {
                    self.table += 1;
                    self.after = None;
                }
            }
            if !page.rows.is_empty() {
                return Some(Ok(lines(table, &page)));
            }
        }
    }
}

/// Every row of every table as JSON lines `{"table":…,"row":{…}}`, streamed from the store
/// page by page (admin only), table by table: projects (without their webhook secrets),
/// runs, jobs, steps, log_chunks, events, tokens (without their hashes), deliveries (a
/// webhook payload's size, not its bytes), schedules, schedule_fires, watches,
/// watch_versions, notification_receivers (without their secrets), notification_deliveries,
/// notification_attempts, notifier_cursor, bans, build_sessions, package_builds, workers.
/// Timestamps are the stored unix milliseconds. Rows written during the export may or may
/// not be in it. An error before the first byte is an envelope; one half-way cuts the
/// stream short (the body ends without its final chunk).
#[utoipa::path(
    get,
    path = "/api/v1/database/export",
    tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "JSON lines, one row each", body = String, content_type = "application/x-ndjson"),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not an admin token", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn database_export(
    Admin(caller): Admin,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let store = state.store().clone();
    let first = store
        .export_page(ExportTable::ALL[0], None, EXPORT_PAGE)
        .await?;
    tracing::info!(by = %caller.id, "database export started");
    let export = Export {
        store,
        table: 0,
        after: None,
        first: Some(first),
    };
    let stream = futures_util::stream::unfold(export, |mut export| async move {
        export.next_chunk().await.map(|chunk| (chunk, export))
    });
    let mut res = Body::from_stream(stream).into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"kiln-export.ndjson\""),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_parameters_name_themselves() {
        let q = |v: &str| HashMap::from([("limit".to_owned(), v.to_owned())]);
        assert_eq!(bounded(&HashMap::new(), "limit", 100, 1000).unwrap(), 100);
        assert_eq!(bounded(&q("1000"), "limit", 100, 1000).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "x", ""] {
            let e = bounded(&q(bad), "limit", 100, 1000).unwrap_err();
            assert_eq!(e.code(), "BAD_REQUEST");
            assert!(e.body().message.contains("`limit`"), "{bad}");
        }
    }

    #[test]
    fn folders_are_measured_within_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/one"), b"12345").unwrap();
        std::fs::write(dir.path().join("two"), b"678").unwrap();
        assert_eq!(folder_size(dir.path()), Some((8, 2)));
        assert_eq!(folder_size(&dir.path().join("missing")), None);
    }
}
