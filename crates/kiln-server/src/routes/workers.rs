//! Remote workers. Two sets of routes:
//! - `/api/v1/worker/…`, the protocol `kiln worker` speaks with a `worker` token: register,
//!   long-poll for jobs whose labels it has, fetch a job's source, report its progress under
//!   the lease's fencing token, heartbeat to keep its leases;
//! - `/api/v1/workers…`, for people: list and show workers (idle, busy, paused, offline, the
//!   jobs they hold), pause and resume them.
//!
//! A report or source request for a job the worker no longer holds (its lease expired and the
//! job went back to the queue, or was given to another worker) is `409 LEASE_LOST`: a job
//! never succeeds twice. Codes: `PROTOCOL_MISMATCH` 409, `WORKER_NOT_FOUND` 404,
//! `LEASE_LOST` 409, `VALIDATION_FAILED` 422.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use kiln_core::ids::JobId;
use kiln_engine::dispatch::{LEASE_TTL, ReportRefusal};
use kiln_engine::{Engine, PackagePart, PartAnswer};
use kiln_proto::workers::{
    AssignedJob, AssignmentRequest, ClaimRequest, Claimed, Heartbeat, HeartbeatReply, JobReport,
    PROTOCOL, PackagePartKept, RegisterWorker, Registered, WorkerId, WorkerList, WorkerView,
    lease_owner,
};
use serde::Deserialize;

use crate::auth::{Caller, Maintainer};
use crate::envelope::Data;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::routes::runs_write::{engine_error, engine_unavailable};
use crate::state::AppState;

/// How often a worker heartbeats: every 3 s (a cancelled run's jobs stop within seconds),
/// and at least four times per lease.
fn heartbeat_every(lease: Duration) -> Duration {
    Duration::from_secs(3).min(lease / 4)
}

/// How long leases last here (and so when a silent worker counts as offline).
fn lease_ttl(state: &AppState) -> Duration {
    state.engine().map_or(LEASE_TTL, Engine::lease_ttl)
}
/// The longest a claim waits for a job.
const MAX_WAIT: Duration = Duration::from_secs(30);

fn worker_not_found(id: &str) -> ApiError {
    ApiError::not_found("WORKER_NOT_FOUND", format!("no worker `{id}`"))
}

pub(crate) fn parse_worker(id: &str) -> Result<WorkerId, ApiError> {
    id.parse().map_err(|_| worker_not_found(id))
}

pub(crate) fn parse_job(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found("JOB_NOT_FOUND", format!("no job `{id}`")))
}

pub(crate) fn lease_lost(worker: WorkerId, job: JobId) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "LEASE_LOST",
        format!(
            "worker {worker} does not hold job {job}: its lease expired or the job was given \
             to another worker; stop it and report nothing more"
        ),
    )
}

/// The URLs of the replicas heard from within two leases (this one's own at least). A store
/// that fails to say answers only this server's.
async fn replicas(state: &AppState) -> Vec<String> {
    let since = Timestamp::now() - lease_ttl(state) * 2;
    let mut urls = state.store().live_replicas(since).await.unwrap_or_default();
    let own = state.config().worker_url();
    if !urls.iter().any(|u| u == own) {
        urls.insert(0, own.to_owned());
    }
    urls
}

/// Notes that the worker was heard from; whether it is paused.
async fn seen(state: &AppState, id: WorkerId) -> Result<bool, ApiError> {
    state
        .store()
        .worker_seen(id, Timestamp::now())
        .await?
        .ok_or_else(|| worker_not_found(&id.to_string()))
}

/// A worker's request about one of its jobs: the ids parsed, the engine, the worker noted as
/// heard from.
async fn worker_job(
    state: &AppState,
    id: &str,
    job: &str,
) -> Result<(WorkerId, JobId, Engine), ApiError> {
    let id = parse_worker(id)?;
    let job = parse_job(job)?;
    let engine = state.engine().ok_or_else(engine_unavailable)?.clone();
    seen(state, id).await?;
    Ok((id, job, engine))
}

/// Registers a worker (each start of `kiln worker`).
#[utoipa::path(
    post,
    path = "/api/v1/worker/register",
    tag = "workers",
    security(("bearer" = [])),
    request_body = RegisterWorker,
    responses(
        (status = 201, description = "Registered", body = kiln_proto::Envelope<Registered>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PROTOCOL_MISMATCH`: the worker speaks another protocol", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "`MALFORMED_JSON` or a malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: not JSON", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn register(
    Caller(caller): Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterWorker>,
) -> Result<(StatusCode, Data<Registered>), ApiError> {
    if body.protocol != PROTOCOL {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "PROTOCOL_MISMATCH",
            format!(
                "this server speaks worker protocol {PROTOCOL} and the worker speaks {}: run \
                 the same kiln version on both",
                body.protocol
            ),
        ));
    }
    let mut problems = Vec::new();
    if body.name.trim().is_empty() || body.name.len() > 200 {
        problems.push(FieldError {
            field: "name".to_owned(),
            message: "must be 1 to 200 characters".to_owned(),
        });
    }
    if body.slots == 0 || body.slots > 1024 {
        problems.push(FieldError {
            field: "slots".to_owned(),
            message: "must be 1 to 1024".to_owned(),
        });
    }
    for (i, label) in body.labels.iter().enumerate() {
        if label.trim().is_empty() || label.trim() != label || label.contains(',') {
            problems.push(FieldError {
                field: format!("labels[{i}]"),
                message: "a label is a non-empty word without commas or surrounding spaces"
                    .to_owned(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let id = state
        .store()
        .register_worker(&body, Timestamp::now())
        .await?;
    tracing::info!(worker = %id, name = %body.name, labels = ?body.labels, by = %caller.id, "worker registered");
    Ok((
        StatusCode::CREATED,
        Data::ok(Registered {
            id,
            protocol: PROTOCOL,
            heartbeat_ms: u64::try_from(heartbeat_every(lease_ttl(&state)).as_millis())
                .unwrap_or(u64::MAX),
            lease_ms: u64::try_from(lease_ttl(&state).as_millis()).unwrap_or(u64::MAX),
            replicas: replicas(&state).await,
        }),
    ))
}

/// Long-polls for up to `free` jobs whose labels the worker has (waiting up to `wait_ms`,
/// at most 30 s). A paused worker gets none.
#[utoipa::path(
    post,
    path = "/api/v1/worker/{id}/claim",
    tag = "workers",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The worker's id")),
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "The jobs leased to it (maybe none)", body = kiln_proto::Envelope<Claimed>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "`MALFORMED_JSON` or a malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: not JSON", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn claim(
    _caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> Result<Data<Claimed>, ApiError> {
    let id = parse_worker(&id)?;
    let engine = state.engine().ok_or_else(engine_unavailable)?.clone();
    if seen(&state, id).await? || body.free == 0 {
        return Ok(Data::ok(Claimed::default()));
    }
    let worker = state
        .store()
        .get_worker(id, Timestamp::now(), lease_ttl(&state))
        .await?
        .ok_or_else(|| worker_not_found(&id.to_string()))?;
    let wait = Duration::from_millis(body.wait_ms).min(MAX_WAIT);
    let max = usize::try_from(body.free.min(worker.slots)).unwrap_or(1);
    let claimed = engine
        .claim_remote(
            &lease_owner(id),
            &worker.labels,
            max,
            wait,
            state.bus().closing(),
        )
        .await
        .map_err(engine_error)?;
    for j in &claimed.jobs {
        tracing::info!(worker = %id, job = %j.job, attempt = j.attempt, "job leased to a worker");
    }
    for h in &claimed.handoffs {
        tracing::info!(worker = %id, job = %h.job, attempt = h.attempt, driver = %h.server, "job leased to a worker, handed off to its driver");
    }
    Ok(Data::ok(claimed))
}

/// The details of a job the worker leased through another replica from the shared queue
/// (a hand-off), when this server drives its run; the worker reports to this server from
/// now on.
#[utoipa::path(
    post,
    path = "/api/v1/worker/{id}/jobs/{job}/assignment",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id")
    ),
    request_body = AssignmentRequest,
    responses(
        (status = 200, description = "The job", body = kiln_proto::Envelope<AssignedJob>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`: the worker does not hold the job, or this server does not drive it (the lease is given back)", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "`MALFORMED_JSON` or a malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND` or `JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: not JSON", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn assignment(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job)): Path<(String, String)>,
    ApiJson(body): ApiJson<AssignmentRequest>,
) -> Result<Data<AssignedJob>, ApiError> {
    let (id, job, engine) = worker_job(&state, &id, &job).await?;
    let assigned = engine
        .adopt_remote(&lease_owner(id), job, body.token)
        .await
        .map_err(engine_error)?
        .ok_or_else(|| lease_lost(id, job))?;
    tracing::info!(worker = %id, job = %job, attempt = assigned.attempt, "job handed off to a worker");
    Ok(Data::ok(assigned))
}

/// Gives back a job the worker leased from the shared queue and cannot run (the replica
/// driving it did not answer): queued again at once, the grant not counted as an attempt.
#[utoipa::path(
    post,
    path = "/api/v1/worker/{id}/jobs/{job}/release",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id")
    ),
    request_body = AssignmentRequest,
    responses(
        (status = 200, description = "Given back", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`: the worker does not hold the job, or it has started", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "`MALFORMED_JSON` or a malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND` or `JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: not JSON", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn release(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job)): Path<(String, String)>,
    ApiJson(body): ApiJson<AssignmentRequest>,
) -> Result<Data<serde_json::Value>, ApiError> {
    let (id, job, engine) = worker_job(&state, &id, &job).await?;
    if !engine
        .release_remote(&lease_owner(id), job, body.token)
        .await
        .map_err(engine_error)?
    {
        return Err(lease_lost(id, job));
    }
    tracing::info!(worker = %id, job = %job, "a worker gave a job back");
    Ok(Data::ok(serde_json::json!({})))
}

#[derive(Deserialize)]
pub(crate) struct SourceQuery {
    token: i64,
}

/// The project's files at the run's commit, as a tar archive, for a job the worker holds.
#[utoipa::path(
    get,
    path = "/api/v1/worker/{id}/jobs/{job}/source",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id"),
        ("token" = i64, Query, description = "The lease's fencing token")
    ),
    responses(
        (status = 200, description = "A tar archive", content_type = "application/x-tar"),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "`MALFORMED_JSON` or a malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND` or `JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn source(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job)): Path<(String, String)>,
    Query(q): Query<SourceQuery>,
) -> Result<Response, ApiError> {
    let (id, job, engine) = worker_job(&state, &id, &job).await?;
    let tar = engine
        .job_source(&lease_owner(id), job, q.token)
        .await
        .map_err(engine_error)?
        .ok_or_else(|| lease_lost(id, job))?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], tar).into_response())
}

/// The packed output of a dependency of the package job the worker holds (one of its
/// assignment's `deps`), to lay out under `$KILN_DEPS`.
#[utoipa::path(
    get,
    path = "/api/v1/worker/{id}/jobs/{job}/package/deps/{digest}",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id"),
        ("digest" = String, Path, description = "The output's SHA-256"),
        ("token" = i64, Query, description = "The lease's fencing token")
    ),
    responses(
        (status = 200, description = "A tar archive", content_type = "application/x-tar"),
        (status = 400, description = "A malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND`, `JOB_NOT_FOUND` or `OUTPUT_NOT_FOUND` (no dependency of the job has that output)", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn package_dep(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job, digest)): Path<(String, String, String)>,
    Query(q): Query<SourceQuery>,
) -> Result<Response, ApiError> {
    let (id, job, engine) = worker_job(&state, &id, &job).await?;
    let digest = digest.to_ascii_lowercase();
    let tar = engine
        .package_dep(&lease_owner(id), job, q.token, &digest)
        .await
        .map_err(engine_error)?;
    match tar {
        Ok((file, size)) => {
            let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
            Ok((
                [
                    (header::CONTENT_TYPE, "application/x-tar".to_owned()),
                    (header::CONTENT_LENGTH, size.to_string()),
                ],
                body,
            )
                .into_response())
        }
        Err(false) => Err(lease_lost(id, job)),
        Err(true) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "OUTPUT_NOT_FOUND",
            format!("no dependency of job {job} has the output {digest}"),
        )),
    }
}

/// A part of the package build the worker holds: `output` (its `$KILN_OUT` as a tar archive,
/// checked as a restore checks it and kept packed as kiln packs outputs) or `log` (the build's
/// log). Uploaded before the job's `done` report, which records the build with them.
#[utoipa::path(
    put,
    path = "/api/v1/worker/{id}/jobs/{job}/package/{part}",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id"),
        ("part" = String, Path, description = "`output` or `log`"),
        ("token" = i64, Query, description = "The lease's fencing token")
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Kept", body = kiln_proto::Envelope<PackagePartKept>),
        (status = 400, description = "A malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND` or `JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST` (also for a job that is not a package build)", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`: an unknown part, or an output archive that cannot be unpacked safely", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn package_part(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job, part)): Path<(String, String, String)>,
    Query(q): Query<SourceQuery>,
    body: axum::body::Body,
) -> Result<Data<PackagePartKept>, ApiError> {
    let (id, job, engine) = worker_job(&state, &id, &job).await?;
    let part = match part.as_str() {
        "output" => PackagePart::Output,
        "log" => PackagePart::Log,
        _ => return Err(ApiError::field("part", "must be `output` or `log`")),
    };
    // Before the body is read: a worker that does not hold the job uploads nothing.
    engine
        .job_holder(&lease_owner(id), job, q.token)
        .await
        .map_err(engine_error)?
        .ok_or_else(|| lease_lost(id, job))?;
    let folder = state.config().data_dir.join("uploads");
    tokio::fs::create_dir_all(&folder)
        .await
        .map_err(ApiError::internal)?;
    let path = folder.join(format!("{}.part", uuid::Uuid::now_v7()));
    let received = crate::routes::artifacts::receive(body, &path, None).await;
    let answer = match received {
        Ok(()) => engine
            .package_part(&lease_owner(id), job, q.token, part, &path)
            .await
            .map_err(engine_error),
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    match answer? {
        PartAnswer::Kept(kept) => Ok(Data::ok(kept)),
        PartAnswer::Lost => Err(lease_lost(id, job)),
        PartAnswer::Invalid(why) => Err(ApiError::field("body", why)),
    }
}

/// Reports what happened in a job the worker holds (started, log, steps, done), in order.
/// Answered once it is committed.
#[utoipa::path(
    post,
    path = "/api/v1/worker/{id}/jobs/{job}/report",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id")
    ),
    request_body = serde_json::Value,
    responses(
        (status = 200, description = "Recorded", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "`MALFORMED_JSON` or a malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND` or `JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: not JSON", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn report(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job)): Path<(String, String)>,
    ApiJson(body): ApiJson<JobReport>,
) -> Result<Data<serde_json::Value>, ApiError> {
    let (id, job, engine) = worker_job(&state, &id, &job).await?;
    let ends = body
        .events
        .iter()
        .any(|e| matches!(e, kiln_proto::workers::ReportEvent::Done { .. }));
    match engine
        .report_remote(&lease_owner(id), job, body.token, body.events)
        .await
        .map_err(engine_error)?
    {
        Ok(()) => {
            if ends {
                let now = state
                    .store()
                    .get_worker(id, Timestamp::now(), lease_ttl(&state))
                    .await?;
                if now.is_some_and(|w| w.jobs.is_empty()) {
                    state.store().worker_idle(id).await?;
                }
            }
            Ok(Data::ok(serde_json::json!({})))
        }
        Err(ReportRefusal::Lost) => Err(lease_lost(id, job)),
        Err(ReportRefusal::Invalid(message)) => Err(ApiError::validation(vec![FieldError {
            field: "events".to_owned(),
            message,
        }])),
    }
}

/// Renews the leases of the jobs the worker lists; answers which to cancel, which it lost,
/// and whether it is paused.
#[utoipa::path(
    post,
    path = "/api/v1/worker/{id}/heartbeat",
    tag = "workers",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The worker's id")),
    request_body = Heartbeat,
    responses(
        (status = 200, description = "What to do", body = kiln_proto::Envelope<HeartbeatReply>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "`MALFORMED_JSON` or a malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: not JSON", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn heartbeat(
    _caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Heartbeat>,
) -> Result<Data<HeartbeatReply>, ApiError> {
    let id = parse_worker(&id)?;
    let engine = state.engine().ok_or_else(engine_unavailable)?;
    let paused = seen(&state, id).await?;
    let (cancel, lost) = engine
        .heartbeat_remote(&lease_owner(id), body.jobs)
        .await
        .map_err(engine_error)?;
    Ok(Data::ok(HeartbeatReply {
        cancel,
        lost,
        paused,
        replicas: replicas(&state).await,
    }))
}

/// Every registered worker, newest first: labels, slots, status, last heartbeat, the jobs it
/// holds.
#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "workers",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The workers", body = kiln_proto::Envelope<WorkerList>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    _caller: Caller,
    State(state): State<AppState>,
) -> Result<Data<WorkerList>, ApiError> {
    let workers = state
        .store()
        .list_workers(Timestamp::now(), lease_ttl(&state))
        .await?;
    Ok(Data::ok(WorkerList { workers }))
}

/// One worker.
#[utoipa::path(
    get,
    path = "/api/v1/workers/{id}",
    tag = "workers",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The worker's id")),
    responses(
        (status = 200, description = "The worker", body = kiln_proto::Envelope<WorkerView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn show(
    _caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<WorkerView>, ApiError> {
    let wid = parse_worker(&id)?;
    let view = state
        .store()
        .get_worker(wid, Timestamp::now(), lease_ttl(&state))
        .await?
        .ok_or_else(|| worker_not_found(&id))?;
    Ok(Data::ok(view))
}

/// A worker's log, newest first.
#[derive(serde::Serialize)]
pub(crate) struct WorkerLog {
    /// Its `worker.status` and `worker.idle` events and the `job.leased` events of the jobs
    /// it was given (`job` names each).
    events: Vec<kiln_proto::Event>,
    /// Pass as `before` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<i64>,
}

/// What a worker did, newest first: registered, paused and resumed, was given each job
/// (with its attempt), went idle. Pages with `before` (an event id) and `limit`.
#[utoipa::path(
    get,
    path = "/api/v1/workers/{id}/log",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("before" = Option<i64>, Query, description = "`next` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Events per page, 1–500 (default 50)")
    ),
    responses(
        (status = 200, description = "`{events, next}`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 400, description = "A malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn log(
    _caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Data<WorkerLog>, ApiError> {
    let wid = parse_worker(&id)?;
    let limit = super::project_list_limit(&q)?;
    let before = match q.get("before") {
        None => None,
        Some(b) => Some(b.parse::<i64>().map_err(|_| {
            ApiError::validation(vec![FieldError {
                field: "before".to_owned(),
                message: format!("`{b}` is not an event id"),
            }])
        })?),
    };
    state
        .store()
        .get_worker(wid, Timestamp::now(), lease_ttl(&state))
        .await?
        .ok_or_else(|| worker_not_found(&id))?;
    let mut events = state.store().worker_log(wid, before, limit + 1).await?;
    let more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let next = more.then(|| events.last().map(|e| e.id)).flatten();
    Ok(Data::ok(WorkerLog { events, next }))
}

async fn set_paused(state: &AppState, id: &str, paused: bool) -> Result<WorkerView, ApiError> {
    let wid = parse_worker(id)?;
    if !state.store().set_worker_paused(wid, paused).await? {
        return Err(worker_not_found(id));
    }
    state
        .store()
        .get_worker(wid, Timestamp::now(), lease_ttl(state))
        .await?
        .ok_or_else(|| worker_not_found(id))
}

/// Pauses a worker: it gets no new jobs; the ones it runs finish.
#[utoipa::path(
    post,
    path = "/api/v1/workers/{id}/pause",
    tag = "workers",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The worker's id")),
    responses(
        (status = 200, description = "The worker, paused", body = kiln_proto::Envelope<WorkerView>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn pause(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<WorkerView>, ApiError> {
    let view = set_paused(&state, &id, true).await?;
    tracing::info!(worker = %id, by = %caller.id, "worker paused");
    Ok(Data::ok(view))
}

/// Resumes a paused worker.
#[utoipa::path(
    post,
    path = "/api/v1/workers/{id}/resume",
    tag = "workers",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The worker's id")),
    responses(
        (status = 200, description = "The worker, resumed", body = kiln_proto::Envelope<WorkerView>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn resume(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<WorkerView>, ApiError> {
    let view = set_paused(&state, &id, false).await?;
    tracing::info!(worker = %id, by = %caller.id, "worker resumed");
    Ok(Data::ok(view))
}
