//! The server itself: liveness, readiness, status.

use axum::extract::State;
use kiln_proto::ServerStatus;

use crate::envelope::{Data, VERSION};
use crate::error::ApiError;
use crate::state::AppState;

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain"))
)]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers too.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    responses(
        (status = 200, description = "Ready to serve", body = String, content_type = "text/plain"),
        (status = 503, description = "`NOT_READY`: the store does not answer", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match state.store().ping().await {
        Ok(()) => Ok("ok"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "NOT_READY",
                "the store does not answer",
            ))
        }
    }
}

/// The server's version, store backend and start time.
#[utoipa::path(
    get,
    path = "/api/v1/status",
    tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The server is up", body = kiln_proto::Envelope<ServerStatus>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn status(State(state): State<AppState>) -> Data<ServerStatus> {
    Data::ok(ServerStatus {
        status: "ok".to_owned(),
        version: VERSION.to_owned(),
        backend: state.store().backend_name().to_owned(),
        started_at: state.started_at(),
    })
}
