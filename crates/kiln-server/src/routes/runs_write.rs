//! Starting and stopping runs: `POST /api/v1/projects/{id}/runs` and
//! `POST /api/v1/runs/{id}/cancel`. Both go through the engine's handle; the store records
//! every transition, so readers see the result on the run routes and the event stream.

use axum::extract::{Path, State};
use indexmap::IndexMap;
use jiff::Timestamp;
use kiln_core::ids::RunId;
use kiln_engine::{EngineError, TriggerRequest};
use kiln_proto::Run;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::envelope::Data;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::state::AppState;

/// What to run.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewRunRequest {
    /// A workflow's file name, stem, path or `name:`; without it every workflow the event
    /// triggers runs (one run each).
    #[serde(default)]
    workflow: Option<String>,
    /// A branch, tag or commit of a git project (default: its default branch).
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    /// The event (default `workflow_dispatch`).
    #[serde(default)]
    event: Option<String>,
    /// `workflow_dispatch` inputs; strings, numbers and booleans.
    #[serde(default)]
    #[schema(value_type = Object)]
    inputs: serde_json::Map<String, Value>,
}

/// The runs a trigger created.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TriggeredRuns {
    #[schema(value_type = Vec<Object>)]
    runs: Vec<Run>,
}

/// Starts runs of a project's workflow(s). Answers `201` with the runs, queued. A git
/// project's mirror is fetched first (behind the egress policy), so `ref` names what the
/// upstream has now; when that fetch fails, `409 PROJECT_FETCH_FAILED` and nothing runs.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/runs",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The project's id or name")),
    request_body = NewRunRequest,
    responses(
        (status = 201, description = "The runs created", body = kiln_proto::Envelope<TriggeredRuns>),
        (status = 400, description = "`MALFORMED_JSON`, with `line` and `column`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PROJECT_ARCHIVED`, or `PROJECT_FETCH_FAILED`: a git project could not be fetched", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`WORKFLOW_INVALID` (file, line, key in `details`) or `VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 503, description = "`ENGINE_UNAVAILABLE`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn trigger(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<NewRunRequest>,
) -> Result<Data<TriggeredRuns>, ApiError> {
    let engine = state.engine().ok_or_else(engine_unavailable)?;
    let found = crate::routes::projects::lookup(&state, &caller, &id).await?;
    crate::routes::projects::refuse_archived(&found)?;
    let project = found.project.id;
    let mut inputs = IndexMap::new();
    let mut bad = Vec::new();
    for (k, v) in req.inputs {
        match v {
            Value::String(s) => {
                inputs.insert(k, s);
            }
            Value::Number(n) => {
                inputs.insert(k, n.to_string());
            }
            Value::Bool(b) => {
                inputs.insert(k, b.to_string());
            }
            _ => bad.push(FieldError {
                field: format!("inputs.{k}"),
                message: "expected a string, a number or a boolean".to_owned(),
            }),
        }
    }
    if !bad.is_empty() {
        return Err(ApiError::validation(bad));
    }
    let request = TriggerRequest {
        project,
        workflow: req.workflow,
        event: req.event.unwrap_or_else(|| "workflow_dispatch".to_owned()),
        git_ref: req.git_ref,
        payload: None,
        payload_text: None,
        inputs,
    };
    // A git project's mirror is fetched first: the ref means what the upstream has now.
    if found.kind() == kiln_proto::ProjectKind::Git
        && let Err(e) = crate::fetch::fetch_now(&state, project).await
    {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "PROJECT_FETCH_FAILED",
            format!(
                "could not fetch project `{}` to run it: {e}",
                found.project.name
            ),
        ));
    }
    let runs = engine.trigger(request).await.map_err(engine_error)?;
    Ok(Data::created(TriggeredRuns { runs }))
}

/// Cancels a run: its running jobs are stopped and recorded as `cancelled`, the others
/// never start. Answers with the run as it is now.
#[utoipa::path(
    post,
    path = "/api/v1/runs/{id}/cancel",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run, its jobs cancelled (this server drives it)", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 202, description = "The run, its cancellation asked of the replica that drives it", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`RUN_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`RUN_NOT_ACTIVE`: the run has ended, or (SQLite) a `kiln run` drives it", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 503, description = "`ENGINE_UNAVAILABLE`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn cancel(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(axum::http::StatusCode, Data<Run>), ApiError> {
    let engine = state.engine().ok_or_else(engine_unavailable)?;
    let not_found = || ApiError::not_found("RUN_NOT_FOUND", format!("no run `{id}`"));
    let run_id: RunId = id.parse().map_err(|_| not_found())?;
    let run = state
        .store()
        .get_run(run_id)
        .await?
        .filter(|r| caller.sees(r.project))
        .ok_or_else(not_found)?;
    if run.status.is_terminal() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "RUN_NOT_ACTIVE",
            format!("run {id} has already ended ({})", run.status.as_str()),
        ));
    }
    let mut status = axum::http::StatusCode::OK;
    if !engine.cancel(run_id).await.map_err(engine_error)? {
        // On SQLite the only other driver is a `kiln run` on the same data dir, which does
        // not look for requests.
        if !state.store().is_shared() {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "RUN_NOT_ACTIVE",
                format!("run {id} is not driven by this server"),
            ));
        }
        // Another replica drives it (or nobody does, for now): ask through the store; its
        // driver cancels within a second, a replica taking it over at once.
        if !state
            .store()
            .request_cancel(run_id, Timestamp::now())
            .await?
        {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "RUN_NOT_ACTIVE",
                format!("run {id} has already ended"),
            ));
        }
        tracing::info!(run = %run_id, by = %caller.0.id, "cancellation asked of the run's driver");
        status = axum::http::StatusCode::ACCEPTED;
    }
    let run = state.store().get_run(run_id).await?.ok_or_else(not_found)?;
    Ok((status, Data::ok(run)))
}

/// Re-runs a failed or cancelled run's failed jobs, and the jobs they held back, as the
/// run's next attempt (`run_attempt` + 1); its successful jobs keep their outputs.
#[utoipa::path(
    post,
    path = "/api/v1/runs/{id}/retry",
    tag = "runs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run's next attempt, queued", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`RUN_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`RUN_NOT_RETRYABLE`: the run is still active or succeeded", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 503, description = "`ENGINE_UNAVAILABLE`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn retry(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<Run>, ApiError> {
    let engine = state.engine().ok_or_else(engine_unavailable)?;
    let not_found = || ApiError::not_found("RUN_NOT_FOUND", format!("no run `{id}`"));
    let run_id: RunId = id.parse().map_err(|_| not_found())?;
    let visible = state.store().get_run(run_id).await?;
    if !visible.is_some_and(|r| caller.sees(r.project)) {
        return Err(not_found());
    }
    match engine.retry(run_id).await.map_err(engine_error)? {
        Ok(run) => Ok(Data::ok(run)),
        Err(status) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "RUN_NOT_RETRYABLE",
            format!(
                "run {id} is {}: only a failed or cancelled run can be retried",
                status.as_str()
            ),
        )),
    }
}

pub(crate) fn engine_unavailable() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "ENGINE_UNAVAILABLE",
        "this server runs no engine",
    )
}

/// The engine's refusals are the caller's (4xx); its failures are the server's (5xx).
pub(crate) fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Invalid(diags) => {
            let problems: Vec<Value> = diags
                .0
                .iter()
                .map(|d| serde_json::to_value(d).unwrap_or_else(|_| json!(d.to_string())))
                .collect();
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "WORKFLOW_INVALID",
                format!("the workflow is invalid:\n{diags}"),
            )
            .with_details(json!({ "problems": problems }))
        }
        EngineError::Usage(message) => ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "RUN_REFUSED",
            message,
        ),
        other => ApiError::internal(other),
    }
}
