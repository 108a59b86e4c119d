//! `/api/v1/watches`: the `on.watch` entries of every project's workflows with their poll
//! state (last error, versions seen, next poll), and polling one now.
//!
//! Watches come from the workflow files (the poller re-reads them every minute); they are not
//! created over the API. Who may do what: anyone with a token reads; a maintainer or admin
//! checks. A token limited to one project sees and checks that project's watches only.
//!
//! Codes: `WATCH_NOT_FOUND` 404, `WATCHES_UNAVAILABLE` 409 (a server without a poller).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_proto::{WatchCheck, WatchId, WatchList};

use crate::auth::{Caller, Maintainer, sees};
use crate::envelope::Data;
use crate::error::ApiError;
use crate::state::AppState;

/// Every watch of the projects the token sees, by project, workflow and name.
#[utoipa::path(
    get,
    path = "/api/v1/watches",
    tag = "watches",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The watches", body = kiln_proto::Envelope<WatchList>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a worker token", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    Caller(caller): Caller,
    State(state): State<AppState>,
) -> Result<Data<WatchList>, ApiError> {
    let watches = state
        .store()
        .list_watches(caller.project)
        .await?
        .into_iter()
        .filter(|w| sees(&caller, w.project))
        .collect();
    Ok(Data::ok(WatchList { watches }))
}

/// Polls a watch now, whatever its next poll time: new versions are recorded and start their
/// runs as a scheduled poll's would. `id` is the watch's id, or its `name:` when that is
/// unique among the watches the token sees.
#[utoipa::path(
    post,
    path = "/api/v1/watches/{id}/check",
    tag = "watches",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The watch's id, or its name when unique")),
    responses(
        (status = 200, description = "What the poll did", body = kiln_proto::Envelope<WatchCheck>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`WATCH_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`WATCHES_UNAVAILABLE`: this server polls no watches", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn check(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<WatchCheck>, ApiError> {
    let id = visible(&state, &caller, &id).await?;
    let watcher = state.watcher().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "WATCHES_UNAVAILABLE",
            "this server polls no watches",
        )
    })?;
    let check = watcher
        .check(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| not_found(&id.to_string()))?;
    tracing::info!(watch = %id, by = %caller.id, new = check.new_versions.len(), "watch checked");
    Ok(Data::ok(check))
}

/// The watch `id` names (an id, or a name unique among the watches the token sees).
async fn visible(
    state: &AppState,
    caller: &kiln_proto::TokenInfo,
    id: &str,
) -> Result<WatchId, ApiError> {
    if let Ok(parsed) = id.parse::<WatchId>() {
        return match state.store().get_watch(parsed).await? {
            Some(w) if sees(caller, w.project) => Ok(parsed),
            _ => Err(not_found(id)),
        };
    }
    let named: Vec<_> = state
        .store()
        .list_watches(caller.project)
        .await?
        .into_iter()
        .filter(|w| w.name == id && sees(caller, w.project))
        .collect();
    match named.as_slice() {
        [one] => Ok(one.id),
        [] => Err(not_found(id)),
        _ => Err(ApiError::bad_request(format!(
            "{} watches are named `{id}`; give the watch's id",
            named.len()
        ))),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("WATCH_NOT_FOUND", format!("no watch {id}"))
}
