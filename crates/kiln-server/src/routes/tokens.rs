//! `/api/v1/tokens`: API tokens, for admins only. A token's plaintext appears once, in the
//! answer that creates it.

use axum::extract::{Path, State};
use kiln_proto::{CreatedToken, NewToken, TokenId, TokenInfo, TokenList, check_token_name};
use kiln_store::StoreError;

use crate::auth::Admin;
use crate::envelope::Data;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::state::AppState;

/// Every token, revoked ones included, oldest first. Never their secrets.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The tokens", body = kiln_proto::Envelope<TokenList>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not an admin token", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Data<TokenList>, ApiError> {
    let tokens = state.store().list_tokens().await?;
    Ok(Data::ok(TokenList { tokens }))
}

/// Creates a token; the answer holds its plaintext, which is never shown again.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    request_body = NewToken,
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = kiln_proto::Envelope<CreatedToken>),
        (status = 400, description = "`MALFORMED_JSON`, with `line` and `column`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not an admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`, naming the fields", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn create(
    Admin(caller): Admin,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<NewToken>,
) -> Result<Data<CreatedToken>, ApiError> {
    let name = check_token_name(&req.name).map_err(|message| {
        ApiError::validation(vec![FieldError {
            field: "name".to_owned(),
            message,
        }])
    })?;
    let unknown_project = |id: String| {
        ApiError::validation(vec![FieldError {
            field: "project".to_owned(),
            message: format!("no project has id `{id}`"),
        }])
    };
    let (info, token) = match state
        .store()
        .create_token(name, req.role, req.project)
        .await
    {
        Ok(created) => created,
        Err(StoreError::NotFound {
            what: "project",
            id,
        }) => return Err(unknown_project(id)),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(token = %info.id, role = %info.role, by = %caller.id, "API token created");
    Ok(Data::created(CreatedToken::new(&info, token)))
}

/// Revokes a token for good; answers the token as it now is.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The token's id (not its secret)")),
    responses(
        (status = 200, description = "Revoked (or already was)", body = kiln_proto::Envelope<TokenInfo>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not an admin token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`TOKEN_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn revoke(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<TokenInfo>, ApiError> {
    let not_found = || ApiError::not_found("TOKEN_NOT_FOUND", format!("no token has id `{id}`"));
    let token_id: TokenId = id.parse().map_err(|_| not_found())?;
    if !state.store().revoke_token(token_id).await? {
        return Err(not_found());
    }
    tracing::info!(token = %token_id, by = %caller.id, "API token revoked");
    let tokens = state.store().list_tokens().await?;
    let info = tokens
        .into_iter()
        .find(|t| t.id == token_id)
        .ok_or_else(not_found)?;
    Ok(Data::ok(info))
}
