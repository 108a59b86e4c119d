//! `/api/v1/schedules`: the `on.schedule` entries of every project's workflows with their
//! next fire, and stopping and starting them.
//!
//! Schedules come from the workflow files (the schedule runner re-reads them every minute);
//! they are not created over the API. Stopping one keeps it stopped whatever the files say
//! until it is started again; a started schedule counts from now (what it missed while
//! stopped does not run).
//!
//! Who may do what: anyone with a token reads; a maintainer or admin stops and starts. A
//! token limited to one project sees and changes that project's schedules only.
//!
//! Codes: `SCHEDULE_NOT_FOUND` 404.

use axum::extract::{Path, State};
use jiff::Timestamp;
use kiln_proto::{ScheduleId, ScheduleList, ScheduleView};

use crate::auth::{Caller, Maintainer, sees};
use crate::envelope::Data;
use crate::error::ApiError;
use crate::state::AppState;

/// Every schedule of the projects the token sees: active ones by next fire, then stopped ones.
#[utoipa::path(
    get,
    path = "/api/v1/schedules",
    tag = "schedules",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The schedules", body = kiln_proto::Envelope<ScheduleList>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a worker token", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    Caller(caller): Caller,
    State(state): State<AppState>,
) -> Result<Data<ScheduleList>, ApiError> {
    let schedules = state
        .store()
        .list_schedules(caller.project)
        .await?
        .into_iter()
        .filter(|s| sees(&caller, s.project))
        .collect();
    Ok(Data::ok(ScheduleList { schedules }))
}

/// Stops a schedule: it fires no more until started, even when its workflow file is read
/// again.
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{id}/stop",
    tag = "schedules",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "The schedule, stopped", body = kiln_proto::Envelope<ScheduleView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`SCHEDULE_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn stop(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<ScheduleView>, ApiError> {
    let id = visible(&state, &caller, &id).await?;
    let view = state
        .store()
        .stop_schedule(id, Timestamp::now())
        .await?
        .ok_or_else(|| not_found(&id.to_string()))?;
    tracing::info!(schedule = %id, by = %caller.id, "schedule stopped");
    Ok(Data::ok(view))
}

/// Starts a stopped schedule again; its next fire counts from now.
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{id}/start",
    tag = "schedules",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "The schedule, active", body = kiln_proto::Envelope<ScheduleView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`SCHEDULE_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn start(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<ScheduleView>, ApiError> {
    let id = visible(&state, &caller, &id).await?;
    let view = state
        .store()
        .start_schedule(id, Timestamp::now())
        .await?
        .ok_or_else(|| not_found(&id.to_string()))?;
    tracing::info!(schedule = %id, by = %caller.id, "schedule started");
    Ok(Data::ok(view))
}

/// The schedule `id` names, when it exists and the token sees its project.
async fn visible(
    state: &AppState,
    caller: &kiln_proto::TokenInfo,
    id: &str,
) -> Result<ScheduleId, ApiError> {
    let parsed: ScheduleId = id.parse().map_err(|_| not_found(id))?;
    match state.store().get_schedule(parsed).await? {
        Some(s) if sees(caller, s.project) => Ok(parsed),
        _ => Err(not_found(id)),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("SCHEDULE_NOT_FOUND", format!("no schedule {id}"))
}
