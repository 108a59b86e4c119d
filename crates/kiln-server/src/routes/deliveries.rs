//! Webhook deliveries and hooks over the API: `GET /api/v1/deliveries/{id}`,
//! `GET /api/v1/projects/{id}/deliveries` (newest first, `?limit=`, default 50, at most 500)
//! and `POST /api/v1/projects/{id}/hook/rotate` (maintainer or admin), which draws a new
//! secret and/or hook id and shows the secret that once.
//!
//! Who sees what: a token sees the deliveries of the projects it sees; the payload itself is
//! not served. Codes: `DELIVERY_NOT_FOUND`, `PROJECT_NOT_FOUND` 404; `PROJECT_ARCHIVED` 409;
//! `VALIDATION_FAILED` 422 for a chosen secret that is too short or a bad `limit`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use kiln_proto::{DeliveryList, DeliveryView, HookRotate, HookSecret, check_hook_secret};
use kiln_store::{HookChange, generate_secret};

use crate::auth::{Caller, Maintainer};
use crate::envelope::Data;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::routes::projects::{lookup, refuse_archived};
use crate::state::AppState;

/// One delivery: what became of it and the runs it started.
#[utoipa::path(
    get,
    path = "/api/v1/deliveries/{id}",
    tag = "hooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "kiln's delivery id (the hook's answer's `delivery_id`)")),
    responses(
        (status = 200, description = "The delivery", body = kiln_proto::Envelope<DeliveryView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`DELIVERY_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<DeliveryView>, ApiError> {
    let not_found = || ApiError::not_found("DELIVERY_NOT_FOUND", format!("no delivery `{id}`"));
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(not_found());
    }
    let d = state
        .store()
        .get_delivery(&id)
        .await?
        .filter(|d| caller.sees(d.project))
        .ok_or_else(not_found)?;
    Ok(Data::ok(d))
}

/// A project's deliveries, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/deliveries",
    tag = "hooks",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The project's id or name"),
        ("limit" = Option<u32>, Query, description = "At most this many, 1–500 (default 50)")
    ),
    responses(
        (status = 200, description = "The deliveries", body = kiln_proto::Envelope<DeliveryList>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`: a bad `limit`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<DeliveryList>, ApiError> {
    let limit = super::project_list_limit(&q)?;
    let project = lookup(&state, &caller, &id).await?;
    let deliveries = state
        .store()
        .list_deliveries(project.project.id, limit)
        .await?;
    Ok(Data::ok(DeliveryList { deliveries }))
}

/// Gives a project's webhook a new secret (by default, drawn at random, or `value`), a new
/// hook id (`hook_id: true`; the old URL stops working) and/or another provider. The
/// answer shows the secret, once.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/hook/rotate",
    tag = "hooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The project's id or name")),
    request_body = HookRotate,
    responses(
        (status = 200, description = "The hook as it now is, with its secret (shown once)", body = kiln_proto::Envelope<HookSecret>),
        (status = 400, description = "`MALFORMED_JSON`, with `line` and `column`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PROJECT_ARCHIVED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`: a chosen secret that is too short", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn rotate(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<HookRotate>,
) -> Result<Data<HookSecret>, ApiError> {
    let current = lookup(&state, &caller, &id).await?;
    refuse_archived(&current)?;
    if let Some(value) = &req.value {
        check_hook_secret(value).map_err(|m| ApiError::field("value", m))?;
    }
    let new_secret = match (req.value, req.secret) {
        (Some(v), _) => Some(v),
        (None, Some(false)) => None,
        (None, _) => Some(generate_secret()?),
    };
    let change = HookChange {
        provider: req.provider,
        new_hook_id: req.hook_id == Some(true),
        secret: new_secret,
    };
    let pid = current.project.id;
    let settings = state.store().set_hook(pid, &change).await;
    // The old secret (or hook id) must stop working now, not when the kept one goes stale.
    state.lookups().forget_targets();
    let settings = settings?.ok_or_else(|| {
        refuse_archived(&current)
            .err()
            .unwrap_or_else(|| ApiError::field(".", "the project is gone"))
    })?;
    tracing::info!(project = %pid, by = %caller.id, new_hook_id = change.new_hook_id, new_secret = change.secret.is_some(), "project hook rotated");
    let Some(secret) = settings.secret else {
        return Err(ApiError::field(
            "secret",
            "the project has no secret yet: leave `secret` out (or true) to draw one",
        ));
    };
    Ok(Data::ok(HookSecret {
        id: pid,
        name: settings.project_name,
        provider: settings.provider,
        hook_url: format!("{}/hooks/{}", state.config().public_url, settings.hook_id),
        hook_id: settings.hook_id,
        secret,
    }))
}
