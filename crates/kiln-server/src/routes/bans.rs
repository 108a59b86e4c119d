//! `GET /api/v1/bans` and `DELETE /api/v1/bans/{id}`: the webhook senders banned for failing
//! verification (see `bans.rs`), listed and lifted by admins.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use jiff::Timestamp;
use kiln_proto::{Ban, BanList};

use crate::auth::Admin;
use crate::envelope::Data;
use crate::error::ApiError;
use crate::state::AppState;

/// The bans in force, newest first; `?all=true` lists every ban ever made (ended and lifted
/// ones too).
#[utoipa::path(
    get,
    path = "/api/v1/bans",
    tag = "hooks",
    security(("bearer" = [])),
    params(("all" = Option<bool>, Query, description = "Also the bans that ended or were lifted")),
    responses(
        (status = 200, description = "The bans", body = kiln_proto::Envelope<BanList>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not an admin", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<BanList>, ApiError> {
    let all = match q.get("all").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "query parameter `all`: expected true or false, got `{other}`"
            ))
            .with_details(serde_json::json!({ "parameter": "all" })));
        }
    };
    let bans = state.store().list_bans(all, Timestamp::now()).await?;
    Ok(Data::ok(BanList { bans }))
}

/// Lifts a ban at once (the address's failure counts start again from zero); answers the ban.
#[utoipa::path(
    delete,
    path = "/api/v1/bans/{id}",
    tag = "hooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The ban's id")),
    responses(
        (status = 200, description = "The ban, lifted", body = kiln_proto::Envelope<Ban>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not an admin", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`BAN_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn lift(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<Ban>, ApiError> {
    let ban = state
        .store()
        .lift_ban(&id, Timestamp::now())
        .await?
        .ok_or_else(|| ApiError::not_found("BAN_NOT_FOUND", format!("no ban `{id}`")))?;
    state.lookups().forget_bans();
    if let Ok(address) = ban.address.parse() {
        state.bans().forget(address);
    }
    tracing::info!(ban = %ban.id, address = %ban.address, by = %caller.id, "ban lifted");
    Ok(Data::ok(ban))
}
