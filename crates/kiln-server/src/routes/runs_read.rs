//! Reading runs, jobs and logs: `GET /api/v1/runs` (filters, cursor pages),
//! `/api/v1/runs/{id}` (with jobs and steps), `/api/v1/jobs/{id}` and `/api/v1/logs/{job}`
//! (byte offsets). Every answer is what the store holds; nothing here writes.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use kiln_core::ids::{JobId, ProjectId, RunId, RunStatus};
use kiln_proto::{Job, Run};
use kiln_store::{RunFilter, StoreError};
use serde::Serialize;

use crate::auth::Caller;
use crate::envelope::Data;
use crate::error::ApiError;
use crate::state::AppState;

/// Runs per page unless `limit` says otherwise, and the most it may say.
const PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;
/// Log bytes per read unless `limit` says otherwise, and the most it may say.
const LOG_READ: usize = 256 * 1024;
const MAX_LOG_READ: usize = 4 * 1024 * 1024;

/// One page of runs, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RunPage {
    #[schema(value_type = Vec<Object>)]
    runs: Vec<Run>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// A slice of a job's log (its latest attempt).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LogRead {
    /// The bytes as UTF-8 (invalid sequences replaced).
    data: String,
    offset: u64,
    /// Where the next read continues.
    next_offset: u64,
    /// The log's length so far.
    total: u64,
    /// Whether the job has ended and everything was read.
    complete: bool,
    /// Where each step's output begins in the whole log (not only this slice), in log
    /// order; steps that printed nothing are not listed. `step` is the step's index
    /// (4294967295 for the job's own lines, such as a failed `needs` or a timeout).
    steps: Vec<StepStart>,
}

/// Where a step's output begins in its job's log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StepStart {
    step: u32,
    offset: u64,
}

fn bad_param(name: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("query parameter `{name}`: {message}"))
        .with_details(serde_json::json!({ "parameter": name }))
}

/// Runs, newest first, filtered by `project` (id or name), `status` and `workflow` (file
/// or name); `limit` (1–500, default 50) and `cursor` (the `next_cursor` of the last page).
#[utoipa::path(
    get,
    path = "/api/v1/runs",
    tag = "runs",
    security(("bearer" = [])),
    params(
        ("project" = Option<String>, Query, description = "A project's id or name"),
        ("status" = Option<String>, Query, description = "pending, queued, running, waiting, success, failure or cancelled"),
        ("workflow" = Option<String>, Query, description = "A workflow's file or name"),
        ("limit" = Option<u32>, Query, description = "Runs per page, 1–500"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses(
        (status = 200, description = "A page of runs", body = kiln_proto::Envelope<RunPage>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<RunPage>, ApiError> {
    let mut filter = RunFilter::default();
    if let Some(p) = q.get("project") {
        let found = match p.parse::<ProjectId>() {
            Ok(id) => state.store().get_project(id).await?,
            Err(_) => state.store().find_project(p).await?,
        };
        match found.filter(|p| caller.sees(p.id)) {
            Some(project) => filter.project = Some(project.id),
            // An unknown project has no runs.
            None => {
                return Ok(Data::ok(RunPage {
                    runs: Vec::new(),
                    next_cursor: None,
                }));
            }
        }
    }
    if let Some(scope) = caller.0.project {
        filter.project = Some(scope);
    }
    if let Some(s) = q.get("status") {
        filter.status = Some(
            s.parse::<RunStatus>()
                .map_err(|_| bad_param("status", format!("unknown status `{s}`")))?,
        );
    }
    filter.workflow = q.get("workflow").cloned();
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| bad_param("limit", format!("expected 1 to {MAX_PAGE}, got `{l}`")))?,
        None => PAGE,
    };
    if let Some(c) = q.get("cursor") {
        filter.before = Some(
            c.parse::<RunId>()
                .map_err(|_| bad_param("cursor", "not a cursor this server gave"))?,
        );
    }
    // One more than asked tells whether another page follows.
    filter.limit = limit + 1;
    let mut runs = state.store().list_runs(&filter).await?;
    let more = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    let next_cursor = more
        .then(|| runs.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Data::ok(RunPage { runs, next_cursor }))
}

/// A run with its jobs and their steps; `id` may be a unique prefix of at least 4 characters.
#[utoipa::path(
    get,
    path = "/api/v1/runs/{id}",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The run's id, or a unique prefix of it")),
    responses(
        (status = 200, description = "The run", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "`BAD_REQUEST`: the prefix is too short or not unique", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`RUN_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<Run>, ApiError> {
    match state.store().resolve_run(&id).await {
        Ok(Some(run)) if caller.sees(run.project) => Ok(Data::ok(run)),
        Ok(_) => Err(ApiError::not_found(
            "RUN_NOT_FOUND",
            format!("no run `{id}`"),
        )),
        Err(e @ (StoreError::Ambiguous { .. } | StoreError::PrefixTooShort { .. })) => {
            Err(ApiError::bad_request(e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// One job (a matrix instance) with its steps.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn job(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<Job>, ApiError> {
    let not_found = || ApiError::not_found("JOB_NOT_FOUND", format!("no job `{id}`"));
    let job_id: JobId = id.parse().map_err(|_| not_found())?;
    let job = visible_job(&state, &caller, job_id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Data::ok(job))
}

/// Bytes of a job's log from `offset` (default 0), at most `limit` (default 256 KiB).
#[utoipa::path(
    get,
    path = "/api/v1/logs/{job}",
    tag = "runs",
    security(("bearer" = [])),
    params(
        ("job" = String, Path, description = "The job's id"),
        ("offset" = Option<u64>, Query, description = "Byte offset to read from"),
        ("limit" = Option<u64>, Query, description = "Most bytes to return (up to 4 MiB)")
    ),
    responses(
        (status = 200, description = "A slice of the log", body = kiln_proto::Envelope<LogRead>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn log(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<LogRead>, ApiError> {
    let not_found = || ApiError::not_found("JOB_NOT_FOUND", format!("no job `{id}`"));
    let job_id: JobId = id.parse().map_err(|_| not_found())?;
    let offset = match q.get("offset") {
        Some(o) => o
            .parse::<u64>()
            .map_err(|_| bad_param("offset", format!("expected a byte offset, got `{o}`")))?,
        None => 0,
    };
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LOG_READ).contains(n))
            .ok_or_else(|| {
                bad_param("limit", format!("expected 1 to {MAX_LOG_READ}, got `{l}`"))
            })?,
        None => LOG_READ,
    };
    let job = visible_job(&state, &caller, job_id)
        .await?
        .ok_or_else(not_found)?;
    let slice = state.store().read_log(job_id, offset, limit).await?;
    let steps = state
        .store()
        .log_steps(job_id)
        .await?
        .into_iter()
        .map(|(step, offset)| StepStart { step, offset })
        .collect();
    Ok(Data::ok(LogRead {
        steps,
        data: String::from_utf8_lossy(&slice.data).into_owned(),
        offset,
        next_offset: slice.next_offset,
        complete: job.status.is_terminal() && slice.next_offset >= slice.total,
        total: slice.total,
    }))
}

/// The job, if it exists and `caller`'s token may see its project.
pub(crate) async fn visible_job(
    state: &AppState,
    caller: &Caller,
    id: JobId,
) -> Result<Option<Job>, ApiError> {
    let Some(job) = state.store().get_job(id).await? else {
        return Ok(None);
    };
    if caller.0.project.is_none() {
        return Ok(Some(job));
    }
    let run = state.store().get_run(job.run).await?;
    Ok(run.filter(|r| caller.sees(r.project)).map(|_| job))
}
