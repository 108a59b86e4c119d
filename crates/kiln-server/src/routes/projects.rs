//! `/api/v1/projects`: register, list, show, change and remove projects, and fetch a git
//! project's mirror again.
//!
//! Who may do what: anyone with a token reads; a maintainer or admin adds, changes and
//! removes; only an admin registers a source on the server's own disk (a folder, or a
//! `file://` URL), since such a path is powerful, and only when the egress policy allows
//! local paths; a developer may ask for a fetch.
//!
//! A source is checked in the request — a folder must exist and be a folder, a git URL must
//! pass the egress policy (scheme, loopback, private ranges, the allow-list) — but a URL is
//! never fetched from the request that registers it: the answer comes first, the fetch
//! follows in the background (`fetch.rs`) and its outcome shows on `GET`
//! (`fetch_status`, `head_sha`, `default_branch`, `fetch_error`).
//!
//! Removing a project archives it, and is refused (`409 PROJECT_BUSY`) while any of its runs
//! has not finished: an archived project leaves the listing and can no longer be changed,
//! fetched or triggered (`409 PROJECT_ARCHIVED`), but it keeps its id, hook id and name (so
//! the name cannot be taken again), `GET /api/v1/projects/{id}` still shows it with its
//! `archived_at`, and its runs and logs stay readable. Its git mirror is kept on disk.
//!
//! Codes: `PROJECT_NOT_FOUND` 404; `PROJECT_EXISTS`, `PROJECT_BUSY`, `PROJECT_ARCHIVED`,
//! `PROJECT_NOT_GIT` 409; `VALIDATION_FAILED` 422 naming `name` or `source`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_core::ids::ProjectId;
use kiln_engine::egress::{EgressError, Target, redact_url};
use kiln_proto::{
    NewProject, ProjectKind, ProjectList, ProjectUpdate, ProjectView, Role, TokenInfo,
    check_project_name, default_project_name,
};
use kiln_store::{Archived, ProjectChange, ProjectRecord, StoreError};
use serde_json::json;

use crate::auth::{Caller, Maintainer};
use crate::envelope::Data;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::fetch;
use crate::state::AppState;

/// Every project that is not archived, by name.
#[utoipa::path(
    get,
    path = "/api/v1/projects",
    tag = "projects",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The projects", body = kiln_proto::Envelope<ProjectList>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a worker token", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    Caller(caller): Caller,
    State(state): State<AppState>,
) -> Result<Data<ProjectList>, ApiError> {
    let projects = state
        .store()
        .list_projects(false)
        .await?
        .iter()
        .filter(|r| crate::auth::sees(&caller, r.project.id))
        .map(|r| view(&state, r))
        .collect();
    Ok(Data::ok(ProjectList { projects }))
}

/// Registers a project. A git project's mirror is fetched in the background after the
/// answer; poll the project for `head_sha` (or `fetch_error`). The answer carries the
/// webhook's `secret` (given, or drawn at random): no other answer shows it.
#[utoipa::path(
    post,
    path = "/api/v1/projects",
    tag = "projects",
    security(("bearer" = [])),
    request_body = NewProject,
    responses(
        (status = 201, description = "Registered", body = kiln_proto::Envelope<ProjectView>),
        (status = 400, description = "`MALFORMED_JSON`, with `line` and `column`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: not a maintainer or admin token, or a folder or `file://` source from a non-admin", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PROJECT_EXISTS`: the name is taken", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`: a bad `name`, or a `source` that is no folder or that the egress policy refuses", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn create(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<NewProject>,
) -> Result<Data<ProjectView>, ApiError> {
    if let Some(name) = &req.name {
        check_project_name(name).map_err(|m| ApiError::field("name", m))?;
    }
    if let Some(secret) = &req.secret {
        kiln_proto::check_hook_secret(secret).map_err(|m| ApiError::field("secret", m))?;
    }
    check_source(&state, &caller, &req.source).await?;
    let name = match &req.name {
        Some(name) => name.as_str(),
        None => derived_name(&req.source)?,
    };
    let record = match state.store().create_project(name, &req.source).await {
        Ok(r) => r,
        Err(StoreError::NameTaken { .. }) => return Err(name_taken(&state, name).await),
        Err(e) => return Err(e.into()),
    };
    let id = record.project.id;
    // The webhook's provider and secret; the secret is shown in this answer only.
    let secret = match req.secret {
        Some(s) => s,
        None => kiln_store::generate_secret()?,
    };
    let hook = kiln_store::HookChange {
        provider: req.provider,
        new_hook_id: false,
        secret: Some(secret.clone()),
    };
    state.store().set_hook(id, &hook).await?;
    let record = ProjectRecord {
        provider: req.provider.unwrap_or_default(),
        ..record
    };
    tracing::info!(project = %id, name, kind = record.kind().as_str(), by = %caller.id, "project added");
    if record.kind() == ProjectKind::Git {
        fetch::request(&state, id);
    }
    let mut shown = view(&state, &record);
    shown.secret = Some(secret);
    Ok(Data::created(shown))
}

/// One project, by id or name; an archived one too (with its `archived_at`).
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}",
    tag = "projects",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The project's id or name")),
    responses(
        (status = 200, description = "The project", body = kiln_proto::Envelope<ProjectView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn show(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<ProjectView>, ApiError> {
    let record = lookup(&state, &caller, &id).await?;
    Ok(Data::ok(view(&state, &record)))
}

/// Renames a project or gives it another source (checked as when adding; a git source is
/// fetched again in the background, and the old source's fetch state is forgotten).
#[utoipa::path(
    patch,
    path = "/api/v1/projects/{id}",
    tag = "projects",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The project's id or name")),
    request_body = ProjectUpdate,
    responses(
        (status = 200, description = "The project as it now is", body = kiln_proto::Envelope<ProjectView>),
        (status = 400, description = "`MALFORMED_JSON`, with `line` and `column`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PROJECT_EXISTS` or `PROJECT_ARCHIVED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 422, description = "`VALIDATION_FAILED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn update(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ProjectUpdate>,
) -> Result<Data<ProjectView>, ApiError> {
    let current = lookup(&state, &caller, &id).await?;
    refuse_archived(&current)?;
    if req.name.is_none() && req.source.is_none() {
        return Err(ApiError::field(
            ".",
            "nothing to change: give `name`, `source` or both",
        ));
    }
    if let Some(name) = &req.name {
        check_project_name(name).map_err(|m| ApiError::field("name", m))?;
    }
    let new_source = req
        .source
        .as_deref()
        .filter(|s| *s != current.project.source);
    if let Some(source) = new_source {
        check_source(&state, &caller, source).await?;
    }
    let change = ProjectChange {
        name: req.name.as_deref(),
        source: new_source,
    };
    let pid = current.project.id;
    let updated = state.store().update_project(pid, change).await;
    state.lookups().forget_targets();
    let record = match updated {
        Ok(Some(r)) => r,
        // Archived (or gone) since it was read.
        Ok(None) => return Err(archived(&current)),
        Err(StoreError::NameTaken { name, .. }) => return Err(name_taken(&state, &name).await),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(project = %pid, by = %caller.id, "project changed");
    if new_source.is_some() && record.kind() == ProjectKind::Git {
        fetch::request(&state, pid);
    }
    Ok(Data::ok(view(&state, &record)))
}

/// Removes a project by archiving it — refused while any of its runs has not finished. Its
/// runs and logs stay readable and its name stays taken; removing it again changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{id}",
    tag = "projects",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The project's id or name")),
    responses(
        (status = 200, description = "Archived; the project with its `archived_at`", body = kiln_proto::Envelope<ProjectView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PROJECT_BUSY`: runs not finished (`details.active_runs`)", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn remove(
    Maintainer(caller): Maintainer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Data<ProjectView>, ApiError> {
    let current = lookup(&state, &caller, &id).await?;
    let pid = current.project.id;
    let archived = state.store().archive_project(pid).await;
    // A removed project's webhook answers 404 from now on.
    state.lookups().forget_targets();
    match archived? {
        None => Err(not_found(&id)),
        Some(Archived::Busy { active_runs }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "PROJECT_BUSY",
            format!(
                "project `{}` has {active_runs} run(s) that have not finished; cancel them \
                 or let them end, then remove it",
                current.project.name
            ),
        )
        .with_details(json!({ "active_runs": active_runs }))),
        Some(Archived::Done(record)) => {
            tracing::info!(project = %pid, by = %caller.id, "project archived");
            Ok(Data::ok(view(&state, &record)))
        }
    }
}

/// Fetches a git project's mirror again, in the background; answers `202` at once with the
/// project (`fetch_status` `pending`).
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/fetch",
    tag = "projects",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The project's id or name")),
    responses(
        (status = 202, description = "The fetch is under way", body = kiln_proto::Envelope<ProjectView>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a viewer or worker token", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PROJECT_ARCHIVED`, or `PROJECT_NOT_GIT`: a folder has nothing to fetch", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn refetch(
    Caller(caller): Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Data<ProjectView>), ApiError> {
    let current = lookup(&state, &caller, &id).await?;
    refuse_archived(&current)?;
    if current.kind() != ProjectKind::Git {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "PROJECT_NOT_GIT",
            format!(
                "project `{}` is a folder on the server: there is nothing to fetch",
                current.project.name
            ),
        ));
    }
    let pid = current.project.id;
    let record = state
        .store()
        .request_fetch(pid)
        .await?
        .ok_or_else(|| archived(&current))?;
    tracing::info!(project = %pid, by = %caller.id, "project fetch asked for");
    fetch::request(&state, pid);
    Ok((StatusCode::ACCEPTED, Data::ok(view(&state, &record))))
}

/// The project `id` names: its id, else its name. Archived projects are found too; those
/// `caller`'s token may not see are not.
pub(crate) async fn lookup(
    state: &AppState,
    caller: &TokenInfo,
    id: &str,
) -> Result<ProjectRecord, ApiError> {
    let found = match id.parse::<ProjectId>() {
        Ok(pid) => state.store().project_record(pid).await?,
        Err(_) => state.store().project_record_by_name(id).await?,
    };
    found
        .filter(|r| crate::auth::sees(caller, r.project.id))
        .ok_or_else(|| not_found(id))
}

/// `409 PROJECT_ARCHIVED` for an archived project.
pub(crate) fn refuse_archived(record: &ProjectRecord) -> Result<(), ApiError> {
    if record.is_archived() {
        Err(archived(record))
    } else {
        Ok(())
    }
}

fn archived(record: &ProjectRecord) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "PROJECT_ARCHIVED",
        format!(
            "project `{}` has been removed (archived); its runs stay readable but it can no \
             longer be changed, fetched or run",
            record.project.name
        ),
    )
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("PROJECT_NOT_FOUND", format!("no project `{id}`"))
}

/// `409 PROJECT_EXISTS`, saying whether the holder of the name is archived.
async fn name_taken(state: &AppState, name: &str) -> ApiError {
    let holder = state
        .store()
        .project_record_by_name(name)
        .await
        .ok()
        .flatten();
    let message = match holder {
        Some(h) if h.is_archived() => format!(
            "the name `{name}` belongs to a removed (archived) project, {}, whose runs keep \
             it; choose another name",
            h.project.id
        ),
        Some(h) => format!(
            "project {} already has the name `{name}`; choose another",
            h.project.id
        ),
        None => format!("the name `{name}` is taken; choose another"),
    };
    ApiError::new(StatusCode::CONFLICT, "PROJECT_EXISTS", message)
        .with_details(json!({ "name": name }))
}

/// The default name of a project from its source, or why there is none.
fn derived_name(source: &str) -> Result<&str, ApiError> {
    let name = default_project_name(source).ok_or_else(|| {
        ApiError::field(
            "name",
            "cannot be taken from `source` (it has no last segment); give one",
        )
    })?;
    check_project_name(name).map_err(|why| {
        ApiError::field(
            "name",
            format!("`{name}`, taken from `source`, {why}; give another"),
        )
    })
}

/// Whether `caller` may register `source` and whether it is usable: a folder must exist on
/// the server, a URL must pass the egress policy. Nothing is fetched.
async fn check_source(state: &AppState, caller: &TokenInfo, source: &str) -> Result<(), ApiError> {
    if source.is_empty() {
        return Err(ApiError::field("source", "must not be empty"));
    }
    let kind = ProjectKind::of(source);
    let on_disk = kind == ProjectKind::Path
        || source
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("file:"));
    if on_disk && caller.role != Role::Admin {
        return Err(ApiError::forbidden(format!(
            "only an admin token may register a folder or file:// URL on the server; this one \
             is `{}`",
            caller.role
        )));
    }
    let policy = &state.config().egress;
    if kind == ProjectKind::Path {
        if !policy.allow_local_paths {
            return Err(ApiError::field(
                "source",
                "the server's egress policy refuses local paths (kiln serve \
                 --egress-allow-local-paths admits them)",
            ));
        }
        return match tokio::fs::metadata(source).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ApiError::field(
                "source",
                format!("{source} is not a folder"),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::field(
                "source",
                format!("there is no folder {source} on the server"),
            )),
            Err(e) => Err(ApiError::field(
                "source",
                format!("failed to read {source} on the server: {e}"),
            )),
        };
    }
    match policy.check_url(source).await {
        Ok(Target::Local { .. }) if !on_disk => Err(ApiError::field(
            "source",
            format!(
                "`{}` is neither a URL nor an absolute path; a folder must be given as an \
                 absolute path on the server",
                redact_url(source)
            ),
        )),
        Ok(_) => Ok(()),
        Err(e @ EgressError::LocalRefused { .. }) => Err(ApiError::field(
            "source",
            format!("{e} (kiln serve --egress-allow-local-paths)"),
        )),
        Err(e) => Err(ApiError::field("source", e.to_string())),
    }
}

/// A project as the API shows it: credentials out of its URL, its absolute webhook URL.
fn view(state: &AppState, r: &ProjectRecord) -> ProjectView {
    let kind = r.kind();
    let p = &r.project;
    ProjectView {
        id: p.id,
        name: p.name.clone(),
        source: match kind {
            ProjectKind::Git => redact_url(&p.source),
            ProjectKind::Path => p.source.clone(),
        },
        kind,
        hook_id: p.hook_id.clone(),
        hook_url: format!("{}/hooks/{}", state.config().public_url, p.hook_id),
        provider: r.provider,
        secret: None,
        default_branch: r.default_branch.clone(),
        head_sha: r.head_sha.clone(),
        fetch_status: r.fetch_status(),
        fetch_requested_at: r.fetch_requested_at,
        fetched_at: r.fetched_at,
        fetch_error: r.fetch_error.clone(),
        created_at: p.created_at,
        updated_at: r.updated_at,
        archived_at: r.archived_at,
    }
}
