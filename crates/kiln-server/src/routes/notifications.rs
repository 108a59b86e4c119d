//! Outbound notifications over the API: a project's receivers
//! (`GET`/`POST /api/v1/projects/{id}/receivers`, `DELETE …/receivers/{rid}`), its deliveries
//! with their attempts (`GET /api/v1/projects/{id}/notifications`, newest first, `?limit=`,
//! default 50, at most 500), and `POST /api/v1/notifications/{id}/retry`.
//!
//! A receiver's URL is checked when it is registered — http(s), no credentials, and the
//! egress policy must allow every address its host resolves to — but never fetched then:
//! the notifier (`notify.rs`) sends to it when events come. The secret (given, or drawn at
//! random) is shown once, in the answer that registers the receiver.
//!
//! Who may do what: anyone with a token who sees the project lists; a maintainer or admin adds,
//! removes and retries. A project-scoped token sees its project only.
//!
//! Codes: `PROJECT_NOT_FOUND`, `RECEIVER_NOT_FOUND`, `NOTIFICATION_NOT_FOUND` 404;
//! `PROJECT_ARCHIVED`, `NOTIFICATION_NOT_RETRYABLE` 409; `VALIDATION_FAILED` 422 naming `url`,
//! `events`, `secret` or `limit`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use kiln_proto::notifications::check_event_patterns;
use kiln_proto::{
    NewReceiver, NotificationId, NotificationList, NotificationView, ReceiverId, ReceiverList,
    ReceiverView, check_hook_secret,
};
use kiln_store::generate_secret;
use serde_json::{Value, json};

use crate::auth::{Caller, Maintainer};
use crate::envelope::Data;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::notify;
use crate::routes::projects::{lookup, refuse_archived};
use crate::state::AppState;

/// A project's receivers, oldest first, without their secrets.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/receivers",
    tag = "notifications",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The project's id or name")),
    responses(
        (status = 200, description = "The receivers", body = kiln_proto::Envelope<ReceiverList>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list_receivers(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<ReceiverList>, ApiError> {
    let project = lookup(&state, &caller, &id).await?;
    let receivers = state.store().list_receivers(project.project.id).await?;
    Ok(Data::ok(ReceiverList { receivers }))
}

/// Registers a receiver: the project's events of the named types are `POST`ed to `url`,
/// signed with the secret, which this answer shows once.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/receivers",
    tag = "notifications",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The project's id or name")),
    request_body = NewReceiver,
    responses(
        (status = 201, description = "The receiver, with its secret (shown once)", body = kiln_proto::Envelope<ReceiverView>),
        (status = 400, description = "`MALFORMED_JSON`, with `line` and `column`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PROJECT_ARCHIVED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`: a URL that is not http(s) or that the egress policy refuses, an unknown event pattern, a short secret", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn create_receiver(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<NewReceiver>,
) -> Result<Data<ReceiverView>, ApiError> {
    let project = lookup(&state, &caller, &id).await?;
    refuse_archived(&project)?;
    let mut fields = Vec::new();
    let url = req.url.trim();
    if let Err(e) = notify::parse_url(url) {
        fields.push(field_error("url", format!("`{url}` {e}")));
    }
    if let Err(e) = check_event_patterns(&req.events) {
        fields.push(field_error("events", e));
    }
    if let Some(secret) = &req.secret
        && let Err(e) = check_hook_secret(secret)
    {
        fields.push(field_error("secret", e));
    }
    if !fields.is_empty() {
        return Err(ApiError::validation(fields));
    }
    // Resolves the host and checks its addresses; connects to nothing.
    if let Err(e) = notify::check_url(&state.config().egress, url).await {
        return Err(ApiError::validation(vec![field_error(
            "url",
            e.to_string(),
        )]));
    }
    let secret = match req.secret {
        Some(s) => s,
        None => generate_secret()?,
    };
    let mut events = req.events;
    events.dedup();
    let receiver = state
        .store()
        .create_receiver(project.project.id, url, &events, &secret)
        .await?;
    tracing::info!(project = %project.project.id, receiver = %receiver.id, by = %caller.id, "notification receiver added");
    Ok(Data::created(receiver))
}

/// Removes a receiver: nothing more is sent to it, and its pending deliveries are cancelled;
/// what was sent stays listed.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{id}/receivers/{rid}",
    tag = "notifications",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The project's id or name"),
        ("rid" = String, Path, description = "The receiver's id")
    ),
    responses(
        (status = 200, description = "`{\"id\",\"removed\":true}`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`, `RECEIVER_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn remove_receiver(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path((id, rid)): Path<(String, String)>,
) -> Result<Data<Value>, ApiError> {
    let project = lookup(&state, &caller, &id).await?;
    let not_found = || ApiError::not_found("RECEIVER_NOT_FOUND", format!("no receiver `{rid}`"));
    let parsed: ReceiverId = rid.parse().map_err(|_| not_found())?;
    if !state
        .store()
        .remove_receiver(project.project.id, parsed)
        .await?
    {
        return Err(not_found());
    }
    tracing::info!(project = %project.project.id, receiver = %parsed, by = %caller.id, "notification receiver removed");
    Ok(Data::ok(json!({ "id": parsed, "removed": true })))
}

/// A project's notification deliveries with their attempts, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/notifications",
    tag = "notifications",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The project's id or name"),
        ("limit" = Option<u32>, Query, description = "At most this many, 1–500 (default 50)")
    ),
    responses(
        (status = 200, description = "The deliveries", body = kiln_proto::Envelope<NotificationList>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`: a bad `limit`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list_notifications(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<NotificationList>, ApiError> {
    let limit = super::project_list_limit(&q)?;
    let project = lookup(&state, &caller, &id).await?;
    let notifications = state
        .store()
        .list_notifications(project.project.id, limit)
        .await?;
    Ok(Data::ok(NotificationList { notifications }))
}

/// Sends a delivered or failed notification again, at once, with a fresh round of attempts.
#[utoipa::path(
    post,
    path = "/api/v1/notifications/{id}/retry",
    tag = "notifications",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The notification's id (its `X-Kiln-Delivery`)")),
    responses(
        (status = 200, description = "The notification, pending again", body = kiln_proto::Envelope<NotificationView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`NOTIFICATION_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`NOTIFICATION_NOT_RETRYABLE`: pending already, or its receiver was removed", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn retry(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<NotificationView>, ApiError> {
    let not_found =
        || ApiError::not_found("NOTIFICATION_NOT_FOUND", format!("no notification `{id}`"));
    let parsed: NotificationId = id.parse().map_err(|_| not_found())?;
    let current = state
        .store()
        .get_notification(parsed)
        .await?
        .filter(|n| crate::auth::sees(&caller, n.project))
        .ok_or_else(not_found)?;
    if !state
        .store()
        .retry_notification(parsed, Timestamp::now())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "NOTIFICATION_NOT_RETRYABLE",
            format!(
                "notification `{id}` is {}; only a delivered or failed notification of a \
                 receiver that still exists is sent again",
                current.status
            ),
        ));
    }
    tracing::info!(notification = %parsed, by = %caller.id, "notification retried");
    let view = state
        .store()
        .get_notification(parsed)
        .await?
        .ok_or_else(not_found)?;
    Ok(Data::ok(view))
}

fn field_error(name: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: name.to_owned(),
        message: message.into(),
    }
}
