//! Who may call what (DESIGN.md "Security model").
//!
//! [`authenticate`] runs before every route. The open routes (probes, the OpenAPI document and
//! its UI, `/metrics` unless `ServerConfig::metrics_open` is off, webhooks) pass as they are; every other request needs
//! `Authorization: Bearer <token>` naming a token the store knows and has not revoked, or it
//! is answered `401`. The verified token goes into the request's extensions as [`Caller`].
//! The role then decides, before any handler reads a body: a `viewer` may only read
//! (GET/HEAD), a `worker` only the worker routes and `GET /api/v1/status`; anything else is
//! `403`. Finer rules (admin-only token management) are extractors such as [`Admin`] on the
//! handlers that need them. Not here yet: per-project scoping and session JWTs.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use kiln_core::ids::ProjectId;
use kiln_proto::{Role, TokenInfo};

use crate::error::ApiError;
use crate::state::AppState;

/// The verified token of this request.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) TokenInfo);

impl Caller {
    /// Whether this token may see `project`'s projects, runs, jobs, logs and events: a
    /// token created with `--project` sees that project only, and others' things are
    /// answered as not found (their existence is not told).
    pub(crate) fn sees(&self, project: ProjectId) -> bool {
        sees(&self.0, project)
    }
}

/// [`Caller::sees`] for a token's info.
pub(crate) fn sees(token: &TokenInfo, project: ProjectId) -> bool {
    token.project.is_none_or(|p| p == project)
}

/// Routes about the whole server, refused to a token limited to one project.
fn server_wide(method: &Method, path: &str) -> bool {
    path.starts_with("/api/v1/tokens")
        || path.starts_with("/api/v1/database")
        || matches!(path, "/api/v1/queue" | "/api/v1/stats" | "/api/v1/config")
        || (path == "/api/v1/projects" && method == Method::POST)
}

/// Routes anyone may call.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/api/v1/openapi.json" | "/metrics" | "/api/docs"
    ) || path.starts_with("/api/docs/")
        || path.starts_with("/hooks/")
}

/// The middleware (see the module doc).
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = req.uri().path();
    if is_open(path) && (path != "/metrics" || state.config().metrics_open) {
        return Ok(next.run(req).await);
    }
    let token = bearer(req.headers())?;
    let info = state
        .store()
        .verify_token(token)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the token is unknown or has been revoked"))?;
    authorize(info.role, req.method(), path)?;
    if let Some(project) = info.project
        && server_wide(req.method(), path)
    {
        return Err(ApiError::forbidden(format!(
            "this token is limited to project {project}; this route is about the whole server"
        )));
    }
    req.extensions_mut().insert(Caller(info));
    Ok(next.run(req).await)
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this route needs a token: send `Authorization: Bearer <token>`",
        ));
    };
    let malformed = || ApiError::unauthorized("the Authorization header must be `Bearer <token>`");
    let value = value.to_str().map_err(|_| malformed())?;
    match value.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(malformed()),
    }
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// What a role may do regardless of the route's own rules.
fn authorize(role: Role, method: &Method, path: &str) -> Result<(), ApiError> {
    match role {
        Role::Worker => {
            if path.starts_with("/api/v1/worker/") || (path == "/api/v1/status" && is_read(method))
            {
                Ok(())
            } else {
                Err(ApiError::forbidden(
                    "a worker token may only use the worker routes and `GET /api/v1/status`",
                ))
            }
        }
        Role::Viewer if !is_read(method) => Err(ApiError::forbidden(
            "a viewer token may only read (GET and HEAD)",
        )),
        Role::Viewer | Role::Developer | Role::Maintainer | Role::Admin => Ok(()),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("this route needs a token"))
    }
}

/// The caller, who must hold an admin token (`403` otherwise).
#[derive(Clone, Debug)]
pub(crate) struct Admin(pub(crate) TokenInfo);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        caller_in(parts, state, &[Role::Admin], "an admin token")
            .await
            .map(Admin)
    }
}

/// The caller, if its role is one of `roles`; `403` saying that only `who` may otherwise.
async fn caller_in<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    roles: &[Role],
    who: &str,
) -> Result<TokenInfo, ApiError> {
    let Caller(info) = Caller::from_request_parts(parts, state).await?;
    if roles.contains(&info.role) {
        Ok(info)
    } else {
        Err(ApiError::forbidden(format!(
            "only {who} may do this; this one is `{}`",
            info.role
        )))
    }
}

/// The caller, who must hold a maintainer or admin token (`403` otherwise).
#[derive(Clone, Debug)]
pub(crate) struct Maintainer(pub(crate) TokenInfo);

impl<S: Send + Sync> FromRequestParts<S> for Maintainer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let roles = [Role::Admin, Role::Maintainer];
        caller_in(parts, state, &roles, "a maintainer or admin token")
            .await
            .map(Maintainer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_routes_are_exactly_the_designed_ones() {
        for p in [
            "/healthz",
            "/readyz",
            "/api/v1/openapi.json",
            "/metrics",
            "/api/docs",
            "/api/docs/index.html",
            "/hooks/abc",
        ] {
            assert!(is_open(p), "{p}");
        }
        for p in [
            "/api/v1/tokens",
            "/api/v1/status",
            "/healthz/x",
            "/hooks",
            "/api/docsx",
            "/",
        ] {
            assert!(!is_open(p), "{p}");
        }
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).is_err());
        for (v, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer   ", None),
        ] {
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            assert_eq!(bearer(&h).ok(), want, "{v:?}");
        }
    }

    #[test]
    fn roles_limit_methods_and_routes() {
        let get = Method::GET;
        let post = Method::POST;
        assert!(authorize(Role::Viewer, &get, "/api/v1/tokens").is_ok());
        assert!(authorize(Role::Viewer, &post, "/api/v1/runs").is_err());
        assert!(authorize(Role::Worker, &get, "/api/v1/status").is_ok());
        assert!(authorize(Role::Worker, &post, "/api/v1/worker/claim").is_ok());
        assert!(authorize(Role::Worker, &get, "/api/v1/tokens").is_err());
        assert!(authorize(Role::Worker, &post, "/api/v1/status").is_err());
        assert!(authorize(Role::Developer, &Method::DELETE, "/api/v1/runs/x").is_ok());
    }
}
