//! Artifacts and dependencies. Three sets of routes:
//! - `/api/v1/artifacts…` for people and scripts: list and filter, metadata, download
//!   (streamed, `ETag` = the SHA-256, `Range` of one span, `If-None-Match`);
//! - `/api/v1/dependencies?name=…[&version=…]`: the dep-server read API, one entry per
//!   version with the fields a buildpack's `buildpack.toml` takes;
//! - `/api/v1/worker/{id}/jobs/{job}/artifacts|blobs…`: how a remote worker keeps its job's
//!   artifacts and reads the run's, under the job's lease token. A worker offers an artifact
//!   by digest first; `409 BLOB_MISSING` asks it to upload the bytes (`PUT …/blobs/{sha256}`),
//!   so bytes the store holds already never cross the network again.
//!
//! Codes: `ARTIFACT_NOT_FOUND` 404, `BLOB_MISSING` 409, `ARTIFACT_NAME_TAKEN` 409,
//! `DIGEST_MISMATCH` 422, `RANGE_NOT_SATISFIABLE` 416, `VALIDATION_FAILED` 422.

use std::collections::HashMap;
use std::ops::Range;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use kiln_core::ids::{JobId, RunId};
use kiln_proto::artifacts::{
    ArtifactFormat, ArtifactId, ArtifactList, ArtifactUpload, ArtifactView, Dependency,
    RunArtifacts, is_sha256, semver_of, spdx_ids,
};
use kiln_proto::workers::lease_owner;
use kiln_store::{ArtifactFilter, ArtifactStore, NewArtifact};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth::Caller;
use crate::envelope::Data;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::routes::runs_write::{engine_error, engine_unavailable};
use crate::routes::workers::{lease_lost, parse_job, parse_worker};
use crate::state::AppState;

fn artifact_not_found(id: &str) -> ApiError {
    ApiError::not_found("ARTIFACT_NOT_FOUND", format!("no artifact `{id}`"))
}

fn objects(state: &AppState) -> Result<&ArtifactStore, ApiError> {
    Ok(state.engine().ok_or_else(engine_unavailable)?.artifacts())
}

/// An artifact the caller may see, or `ARTIFACT_NOT_FOUND` (also for another project's,
/// when the token is limited to one).
async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<ArtifactView, ApiError> {
    let parsed: ArtifactId = id.parse().map_err(|_| artifact_not_found(id))?;
    let a = state
        .store()
        .get_artifact(parsed)
        .await?
        .ok_or_else(|| artifact_not_found(id))?;
    if caller.0.project.is_some_and(|p| p != a.project_id) {
        return Err(artifact_not_found(id));
    }
    Ok(a)
}

/// Artifacts, newest first, filtered by every parameter given.
#[utoipa::path(
    get,
    path = "/api/v1/artifacts",
    tag = "artifacts",
    security(("bearer" = [])),
    params(
        ("project" = Option<String>, Query, description = "The project's name"),
        ("run" = Option<String>, Query, description = "A run's id"),
        ("job" = Option<String>, Query, description = "A job's id"),
        ("name" = Option<String>, Query, description = "The artifact's name"),
        ("version" = Option<String>, Query, description = "The version, exactly"),
        ("sha256" = Option<String>, Query, description = "The bytes' SHA-256"),
        ("label" = Option<String>, Query, description = "`key=value` labels the artifact must have, comma-separated"),
        ("before" = Option<String>, Query, description = "`next` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Artifacts per page, 1–500 (default 50)")
    ),
    responses(
        (status = 200, description = "A page of artifacts", body = kiln_proto::Envelope<ArtifactList>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a worker token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<ArtifactList>, ApiError> {
    const KNOWN: &[&str] = &[
        "project", "run", "job", "name", "version", "sha256", "label", "before", "limit",
    ];
    if let Some(unknown) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::field(
            unknown,
            format!("unknown parameter; the filters are {}", KNOWN.join(", ")),
        ));
    }
    let limit = super::project_list_limit(&q)?;
    let id_param = |key: &str| -> Result<Option<uuid::Uuid>, ApiError> {
        q.get(key)
            .map(|v| {
                v.parse::<uuid::Uuid>()
                    .map_err(|_| ApiError::field(key, format!("`{v}` is not an id")))
            })
            .transpose()
    };
    let mut labels = Vec::new();
    if let Some(text) = q.get("label") {
        for pair in text.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(ApiError::field(
                    "label",
                    format!("`{pair}` is not `key=value`"),
                ));
            };
            labels.push((k.to_owned(), v.to_owned()));
        }
    }
    if let Some(sha) = q.get("sha256")
        && !is_sha256(sha)
    {
        return Err(ApiError::field(
            "sha256",
            format!("`{sha}` is not a SHA-256"),
        ));
    }
    let filter = ArtifactFilter {
        project: q.get("project").cloned(),
        project_id: caller.0.project,
        run: id_param("run")?.map(RunId),
        job: id_param("job")?.map(JobId),
        name: q.get("name").cloned(),
        version: q.get("version").cloned(),
        sha256: q.get("sha256").map(|s| s.to_ascii_lowercase()),
        labels,
    };
    let before = id_param("before")?.map(ArtifactId);
    let limit = limit as usize;
    let mut artifacts = state
        .store()
        .list_artifacts(&filter, before, limit + 1)
        .await?;
    let more = artifacts.len() > limit;
    artifacts.truncate(limit);
    let next = more
        .then(|| artifacts.last().map(|a| a.id.to_string()))
        .flatten();
    Ok(Data::ok(ArtifactList { artifacts, next }))
}

/// One artifact's metadata.
#[utoipa::path(
    get,
    path = "/api/v1/artifacts/{id}",
    tag = "artifacts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The artifact's id")),
    responses(
        (status = 200, description = "The artifact", body = kiln_proto::Envelope<ArtifactView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a worker token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`ARTIFACT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<ArtifactView>, ApiError> {
    Ok(Data::ok(visible(&state, &caller, &id).await?))
}

/// What a `Range` header asks of a blob of `size` bytes: `None` for the whole (no header, or
/// several spans, which may be answered whole), `Err` when it cannot be satisfied.
fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<Range<u64>>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // The last `end` bytes.
        let n: u64 = end.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        size.saturating_sub(n)..size
    } else {
        let a: u64 = start.parse().map_err(|_| ())?;
        let b = if end.is_empty() {
            size
        } else {
            end.parse::<u64>()
                .map_err(|_| ())?
                .saturating_add(1)
                .min(size)
        };
        if b <= a {
            return Err(());
        }
        a..b
    };
    if range.start >= size {
        return Err(());
    }
    Ok(Some(range))
}

/// An artifact's bytes, streamed. `ETag` is the SHA-256 (quoted); `If-None-Match` with it
/// answers `304`; `Range: bytes=a-b` (one span) answers `206` with `Content-Range`.
#[utoipa::path(
    get,
    path = "/api/v1/artifacts/{id}/download",
    tag = "artifacts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The artifact's id")),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream"),
        (status = 206, description = "The span `Range` asked for", content_type = "application/octet-stream"),
        (status = 304, description = "`If-None-Match` names these bytes"),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a worker token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`ARTIFACT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 416, description = "`RANGE_NOT_SATISFIABLE`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn download(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let a = visible(&state, &caller, &id).await?;
    let etag = format!("\"{}\"", a.sha256);
    let matches_etag = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*")
        });
    let etag_value = HeaderValue::from_str(&etag).map_err(ApiError::internal)?;
    if matches_etag {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, etag_value);
        return Ok(res);
    }
    let range = match requested_range(&headers, a.size) {
        Ok(r) => r,
        Err(()) => {
            let mut res = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_NOT_SATISFIABLE",
                format!(
                    "the artifact has {} bytes; ask for a span inside them",
                    a.size
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", a.size)) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(res);
        }
    };
    let read = objects(&state)?
        .get(&a.sha256, range.clone())
        .await?
        .ok_or_else(|| {
            ApiError::internal(format_args!(
                "artifact {} names the blob {}, which the artifact store does not hold",
                a.id, a.sha256
            ))
        })?;
    let sent = read.range.clone();
    let body = Body::from_stream(read.body.map(|chunk| chunk.map_err(std::io::Error::other)));
    let mut res = body.into_response();
    *res.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = res.headers_mut();
    let content_type = match a.format {
        ArtifactFormat::File => "application/octet-stream",
        ArtifactFormat::Tar => "application/x-tar",
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ETAG, etag_value);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let length = sent.end - sent.start;
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if range.is_some()
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{}",
            sent.start,
            sent.end.saturating_sub(1),
            read.total
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    let disposition = format!(
        "attachment; filename=\"{}\"",
        a.file_name.replace(['"', '\\', '\r', '\n'], "_")
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// Whether `version` is a requirement (`>=1.2`, `~1.2`, `1.x`) rather than one version.
fn is_requirement(version: &str) -> bool {
    version.contains(['<', '>', '=', '~', '^', '*', ',', ' '])
        || version.split('.').any(|p| p == "x" || p == "X")
}

/// The versions of a dependency, newest first (by semver; versions that are not semver
/// after, newest kept first): per version, the latest artifact kept under that name.
/// `version` is one version (`18.2.0`, compared as semver when both are) or a requirement
/// (`>=18, <19`, `~18.2`, `18.x`).
#[utoipa::path(
    get,
    path = "/api/v1/dependencies",
    tag = "artifacts",
    security(("bearer" = [])),
    params(
        ("name" = String, Query, description = "The artifact name the dependency is kept under"),
        ("version" = Option<String>, Query, description = "A version, or a semver requirement")
    ),
    responses(
        (status = 200, description = "One entry per version", body = kiln_proto::Envelope<Vec<Dependency>>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a worker token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`: `name` missing, or `version` not a version or requirement", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn dependencies(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<Vec<Dependency>>, ApiError> {
    if let Some(unknown) = q.keys().find(|k| !matches!(k.as_str(), "name" | "version")) {
        return Err(ApiError::field(
            unknown,
            "unknown parameter; give `name` and maybe `version`",
        ));
    }
    let Some(name) = q.get("name").filter(|n| !n.is_empty()) else {
        return Err(ApiError::field("name", "the dependency's name is required"));
    };
    enum Want {
        Any,
        Exact(String, Option<semver::Version>),
        Req(semver::VersionReq),
    }
    let want = match q.get("version").filter(|v| !v.is_empty()) {
        None => Want::Any,
        Some(v) if is_requirement(v) => Want::Req(semver::VersionReq::parse(v).map_err(|e| {
            ApiError::field(
                "version",
                format!("`{v}` is neither a version nor a requirement: {e}"),
            )
        })?),
        Some(v) => Want::Exact(v.clone(), semver_of(v)),
    };
    let filter = ArtifactFilter {
        name: Some(name.clone()),
        project_id: caller.0.project,
        ..ArtifactFilter::default()
    };
    // Newest first: the first artifact seen for a version is the one served.
    let all = state.store().list_artifacts(&filter, None, 0).await?;
    let mut seen = std::collections::HashSet::new();
    let mut picked: Vec<(Option<semver::Version>, ArtifactView)> = Vec::new();
    for a in all {
        let Some(version) = a.metadata.version.clone() else {
            continue;
        };
        let parsed = semver_of(&version);
        let keep = match &want {
            Want::Any => true,
            Want::Exact(v, Some(sv)) => parsed.as_ref() == Some(sv) || &version == v,
            Want::Exact(v, None) => &version == v,
            Want::Req(req) => parsed.as_ref().is_some_and(|p| req.matches(p)),
        };
        if keep && seen.insert(version) {
            picked.push((parsed, a));
        }
    }
    // Stable: artifacts that are not semver keep their newest-first order, after the rest.
    picked.sort_by(|(a, _), (b, _)| match (a, b) {
        (Some(a), Some(b)) => b.cmp(a),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let base = &state.config().public_url;
    let deps = picked
        .into_iter()
        .map(|(_, a)| {
            let m = a.metadata;
            Dependency {
                id: m.id.clone().unwrap_or_else(|| a.name.clone()),
                name: a.name,
                version: m.version.unwrap_or_default(),
                uri: format!("{base}/api/v1/artifacts/{}/download", a.id),
                sha256: a.sha256,
                source: m.source,
                source_sha256: m.source_sha256,
                purl: m.purl,
                cpes: m.cpes,
                licenses: m
                    .licenses
                    .as_deref()
                    .and_then(|l| spdx_ids(l).ok())
                    .unwrap_or_default(),
                deprecation_date: m.deprecation_date,
                stacks: m.stacks,
            }
        })
        .collect();
    Ok(Data::ok(deps))
}

// ---- the worker protocol ----

/// The run of a job the worker holds under `token`, or `409 LEASE_LOST`.
async fn held(
    state: &AppState,
    worker: &str,
    job: &str,
    q: &HashMap<String, String>,
) -> Result<(JobId, RunId), ApiError> {
    let worker = parse_worker(worker)?;
    let job = parse_job(job)?;
    let token: i64 = q
        .get("token")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ApiError::bad_request("`token` (the lease's fencing token) is required"))?;
    let engine = state.engine().ok_or_else(engine_unavailable)?;
    let run = engine
        .job_holder(&lease_owner(worker), job, token)
        .await
        .map_err(engine_error)?
        .ok_or_else(|| lease_lost(worker, job))?;
    Ok((job, run))
}

/// The id of an artifact a worker kept.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct KeptArtifact {
    id: String,
}

/// A worker keeps an artifact of the job it holds, whose blob the store has: answers its id,
/// or `409 BLOB_MISSING` asking for the bytes first.
#[utoipa::path(
    post,
    path = "/api/v1/worker/{id}/jobs/{job}/artifacts",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id"),
        ("token" = i64, Query, description = "The lease's fencing token")
    ),
    request_body = ArtifactUpload,
    responses(
        (status = 200, description = "Kept", body = kiln_proto::Envelope<KeptArtifact>),
        (status = 400, description = "`MALFORMED_JSON` or a malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND` or `JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`, `BLOB_MISSING` or `ARTIFACT_NAME_TAKEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: not JSON", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn worker_keep(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    ApiJson(body): ApiJson<ArtifactUpload>,
) -> Result<Data<KeptArtifact>, ApiError> {
    let (job, run) = held(&state, &id, &job, &q).await?;
    let mut problems = Vec::new();
    if body.name.trim().is_empty() {
        problems.push(FieldError {
            field: "name".into(),
            message: "must not be empty".into(),
        });
    }
    if body.file_name.trim().is_empty() || body.file_name.contains('/') {
        problems.push(FieldError {
            field: "file_name".into(),
            message: "must be a file name (not empty, no `/`)".into(),
        });
    }
    if !is_sha256(&body.sha256) {
        problems.push(FieldError {
            field: "sha256".into(),
            message: "must be 64 hexadecimal digits".into(),
        });
    }
    for (f, message) in body.metadata.check() {
        problems.push(FieldError {
            field: format!("metadata.{f}"),
            message,
        });
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let sha256 = body.sha256.to_ascii_lowercase();
    if !objects(&state)?.exists(&sha256).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "BLOB_MISSING",
            format!("the store has no blob {sha256}: upload it with PUT …/blobs/{sha256} first"),
        ));
    }
    let new = NewArtifact {
        run,
        job,
        name: body.name,
        file_name: body.file_name,
        format: body.format,
        sha256,
        size: body.size,
        metadata: body.metadata,
    };
    let id = kiln_engine::artifacts::record(state.store(), &new)
        .await
        .map_err(|m| ApiError::new(StatusCode::CONFLICT, "ARTIFACT_NAME_TAKEN", m))?;
    Ok(Data::ok(KeptArtifact { id }))
}

/// The artifacts of the run of a job the worker holds (what `download-artifact` reads).
#[utoipa::path(
    get,
    path = "/api/v1/worker/{id}/jobs/{job}/artifacts",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id"),
        ("token" = i64, Query, description = "The lease's fencing token")
    ),
    responses(
        (status = 200, description = "The run's artifacts so far", body = kiln_proto::Envelope<RunArtifacts>),
        (status = 400, description = "A malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND` or `JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn worker_list(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<RunArtifacts>, ApiError> {
    let (_, run) = held(&state, &id, &job, &q).await?;
    let artifacts = kiln_engine::artifacts::run_artifacts(state.store(), run).await?;
    Ok(Data::ok(RunArtifacts { artifacts }))
}

/// A blob's digest and size once stored.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StoredBlobView {
    sha256: String,
    size: u64,
}

/// A worker uploads the bytes of an artifact of the job it holds; they must hash to the
/// path's SHA-256.
#[utoipa::path(
    put,
    path = "/api/v1/worker/{id}/jobs/{job}/blobs/{sha256}",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id"),
        ("sha256" = String, Path, description = "The bytes' SHA-256"),
        ("token" = i64, Query, description = "The lease's fencing token")
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Stored", body = kiln_proto::Envelope<StoredBlobView>),
        (status = 400, description = "A malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND` or `JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`DIGEST_MISMATCH` or `VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn worker_put_blob(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job, sha256)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Data<StoredBlobView>, ApiError> {
    held(&state, &id, &job, &q).await?;
    if !is_sha256(&sha256) {
        return Err(ApiError::field("sha256", "must be 64 hexadecimal digits"));
    }
    let sha256 = sha256.to_ascii_lowercase();
    let folder = state.config().data_dir.join("uploads");
    tokio::fs::create_dir_all(&folder)
        .await
        .map_err(ApiError::internal)?;
    let path = folder.join(format!("{}.part", uuid::Uuid::now_v7()));
    let result = receive(body, &path, Some(&sha256)).await;
    let stored = match result {
        Ok(()) => objects(&state)?
            .put_file(&path)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    let stored = stored?;
    Ok(Data::ok(StoredBlobView {
        sha256: stored.sha256,
        size: stored.size,
    }))
}

/// Writes a request body to `path`, checking it hashes to `sha256` when one is given.
pub(crate) async fn receive(
    body: Body,
    path: &std::path::Path,
    sha256: Option<&str>,
) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(ApiError::internal)?;
    let mut hasher = Sha256::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    let got = hex::encode(hasher.finalize());
    if let Some(sha256) = sha256
        && got != sha256
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "DIGEST_MISMATCH",
            format!("the bytes hash to {got}, not {sha256}"),
        ));
    }
    Ok(())
}

/// A blob of an artifact of the run of a job the worker holds, streamed.
#[utoipa::path(
    get,
    path = "/api/v1/worker/{id}/jobs/{job}/blobs/{sha256}",
    tag = "workers",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The worker's id"),
        ("job" = String, Path, description = "The job's id"),
        ("sha256" = String, Path, description = "The bytes' SHA-256"),
        ("token" = i64, Query, description = "The lease's fencing token")
    ),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream"),
        (status = 400, description = "A malformed parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a token whose role may not", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WORKER_NOT_FOUND`, `JOB_NOT_FOUND` or `ARTIFACT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`LEASE_LOST`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn worker_get_blob(
    _caller: Caller,
    State(state): State<AppState>,
    Path((id, job, sha256)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (_, run) = held(&state, &id, &job, &q).await?;
    let sha256 = sha256.to_ascii_lowercase();
    if !is_sha256(&sha256) || !state.store().run_has_blob(run, &sha256).await? {
        return Err(artifact_not_found(&sha256));
    }
    let read = objects(&state)?
        .get(&sha256, None)
        .await?
        .ok_or_else(|| artifact_not_found(&sha256))?;
    let mut res =
        Body::from_stream(read.body.map(|c| c.map_err(std::io::Error::other))).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(read.total));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<Range<u64>>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        requested_range(&h, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(range("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(range("bytes=-10", 100), Ok(Some(90..100)));
        assert_eq!(range("bytes=95-200", 100), Ok(Some(95..100)));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=5-1", 100), Err(()));
        assert_eq!(range("bytes=x-", 100), Err(()));
        assert_eq!(range("items=0-1", 100), Ok(None));
    }

    #[test]
    fn requirements_are_told_from_versions() {
        assert!(is_requirement(">=18, <19"));
        assert!(is_requirement("~18.2"));
        assert!(is_requirement("18.x"));
        assert!(!is_requirement("18.2.0"));
        assert!(!is_requirement("v18"));
    }
}
