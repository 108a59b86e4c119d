//! The handlers, grouped by resource, and the routers that mount them. Each handler carries
//! its `utoipa::path` annotation: the OpenAPI document is generated from these.
//!
//! Not here: auth (a layer, `auth.rs`), the envelope (a layer, `envelope.rs`).

pub(crate) mod artifacts;
pub(crate) mod bans;
pub(crate) mod deliveries;
pub(crate) mod hooks;
pub(crate) mod live;
pub(crate) mod notifications;
pub(crate) mod ops;
pub(crate) mod packages;
pub(crate) mod projects;
pub(crate) mod runs_read;
pub(crate) mod runs_write;
pub(crate) mod schedules;
pub(crate) mod system;
pub(crate) mod tokens;
pub(crate) mod watches;
pub(crate) mod workers;

use axum::Router;
use axum::routing::{delete, get, post, put};

use crate::error::ApiError;
use crate::state::AppState;

/// The probes: plain answers for load balancers and orchestrators.
pub(crate) fn probes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
}

/// `/api/v1`: everything behind a token.
pub(crate) fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/status", get(system::status))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke))
        .route(
            "/api/v1/projects",
            get(projects::list).post(projects::create),
        )
        .route(
            "/api/v1/projects/{id}",
            get(projects::show)
                .patch(projects::update)
                .delete(projects::remove),
        )
        .route("/api/v1/projects/{id}/fetch", post(projects::refetch))
        .route("/api/v1/projects/{id}/deliveries", get(deliveries::list))
        .route(
            "/api/v1/projects/{id}/hook/rotate",
            post(deliveries::rotate),
        )
        .route("/api/v1/deliveries/{id}", get(deliveries::show))
        .route("/api/v1/projects/{id}/runs", post(runs_write::trigger))
        .route("/api/v1/runs", get(runs_read::list))
        .route("/api/v1/runs/{id}", get(runs_read::show))
        .route("/api/v1/jobs/{id}", get(runs_read::job))
        .route("/api/v1/logs/{job}", get(runs_read::log))
        .route("/api/v1/logs/{job}/stream", get(live::log_stream))
        .route("/api/v1/events", get(live::events))
        .route("/api/v1/ws", get(live::ws))
        .route("/api/v1/runs/{id}/cancel", post(runs_write::cancel))
        .route("/api/v1/runs/{id}/retry", post(runs_write::retry))
        .route("/api/v1/schedules", get(schedules::list))
        .route("/api/v1/schedules/{id}/stop", post(schedules::stop))
        .route("/api/v1/schedules/{id}/start", post(schedules::start))
        .route("/api/v1/watches", get(watches::list))
        .route("/api/v1/watches/{id}/check", post(watches::check))
        .route(
            "/api/v1/projects/{id}/receivers",
            get(notifications::list_receivers).post(notifications::create_receiver),
        )
        .route(
            "/api/v1/projects/{id}/receivers/{rid}",
            delete(notifications::remove_receiver),
        )
        .route(
            "/api/v1/projects/{id}/notifications",
            get(notifications::list_notifications),
        )
        .route(
            "/api/v1/notifications/{id}/retry",
            post(notifications::retry),
        )
        .route("/api/v1/queue", get(ops::queue))
        .route("/api/v1/bans", get(bans::list))
        .route("/api/v1/bans/{id}", delete(bans::lift))
        .route("/api/v1/packages", get(packages::list))
        .route("/api/v1/packages/{category}/{name}", get(packages::show))
        .route(
            "/api/v1/packages/{category}/{name}/status",
            get(packages::status),
        )
        .route(
            "/api/v1/packages/{category}/{name}/history",
            get(packages::history),
        )
        .route(
            "/api/v1/packages/{category}/{name}/deps",
            get(packages::deps),
        )
        .route(
            "/api/v1/packages/{category}/{name}/builds/{id}/log",
            get(packages::log),
        )
        .route("/api/v1/stats", get(ops::stats))
        .route("/api/v1/config", get(ops::config))
        .route("/api/v1/database/stats", get(ops::database_stats))
        .route("/api/v1/database/export", get(ops::database_export))
        .route("/api/v1/worker/register", post(workers::register))
        .route("/api/v1/worker/{id}/claim", post(workers::claim))
        .route("/api/v1/worker/{id}/heartbeat", post(workers::heartbeat))
        .route(
            "/api/v1/worker/{id}/jobs/{job}/report",
            post(workers::report),
        )
        .route(
            "/api/v1/worker/{id}/jobs/{job}/source",
            get(workers::source),
        )
        .route(
            "/api/v1/worker/{id}/jobs/{job}/assignment",
            post(workers::assignment),
        )
        .route(
            "/api/v1/worker/{id}/jobs/{job}/release",
            post(workers::release),
        )
        .route(
            "/api/v1/worker/{id}/jobs/{job}/artifacts",
            get(artifacts::worker_list).post(artifacts::worker_keep),
        )
        .route(
            "/api/v1/worker/{id}/jobs/{job}/blobs/{sha256}",
            get(artifacts::worker_get_blob),
        )
        .route(
            "/api/v1/worker/{id}/jobs/{job}/package/deps/{digest}",
            get(workers::package_dep),
        )
        .route("/api/v1/artifacts", get(artifacts::list))
        .route("/api/v1/artifacts/{id}", get(artifacts::show))
        .route("/api/v1/artifacts/{id}/download", get(artifacts::download))
        .route("/api/v1/dependencies", get(artifacts::dependencies))
        .route("/api/v1/workers", get(workers::list))
        .route("/api/v1/workers/{id}", get(workers::show))
        .route("/api/v1/workers/{id}/log", get(workers::log))
        .route("/api/v1/workers/{id}/pause", post(workers::pause))
        .route("/api/v1/workers/{id}/resume", post(workers::resume))
}

/// A worker's uploads (artifacts, package outputs and logs): behind a token like the API,
/// with a body limit of their own.
pub(crate) fn blobs() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/worker/{id}/jobs/{job}/blobs/{sha256}",
            put(artifacts::worker_put_blob),
        )
        .route(
            "/api/v1/worker/{id}/jobs/{job}/package/{part}",
            put(workers::package_part),
        )
}

/// `/hooks/{hook_id}`: open (the signature is the credential), with a body limit of its own.
pub(crate) fn hooks() -> Router<AppState> {
    Router::new().route("/hooks/{hook_id}", post(hooks::receive))
}

/// `?limit=` of a project's deliveries or notifications: 50 when absent, 1–500, else
/// `422 VALIDATION_FAILED` naming `limit`.
pub(crate) fn project_list_limit(
    q: &std::collections::HashMap<String, String>,
) -> Result<u32, ApiError> {
    const DEFAULT: u32 = 50;
    const MAX: u32 = 500;
    match q.get("limit") {
        None => Ok(DEFAULT),
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::validation(vec![crate::error::FieldError {
                field: "limit".to_owned(),
                message: format!("expected a number from 1 to {MAX}, got `{l}`"),
            }])),
        },
    }
}

/// Any path no route matches.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found(
        "NOT_FOUND",
        "no such route; the API is described at /api/v1/openapi.json",
    )
}

/// A route that exists, called with a method it does not take.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
