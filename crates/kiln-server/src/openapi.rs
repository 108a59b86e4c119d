//! The OpenAPI document, generated from the handlers' annotations, and its Swagger UI
//! (served from files compiled into the binary: nothing is fetched at build or run time).
//! Both are open routes: `/api/v1/openapi.json` and `/api/docs`.

use axum::Router;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::envelope::VERSION;
use crate::metrics;
use crate::routes::artifacts;
use crate::routes::notifications;
use crate::routes::watches;
use crate::routes::workers;
use crate::routes::{
    bans, deliveries, hooks, live, ops, packages, projects, runs_read, runs_write, schedules,
    system, tokens,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kiln",
        description = "kiln's HTTP API. Every JSON answer is an envelope: \
            `{\"status\":\"success\",\"data\":…,\"meta\":…}` or \
            `{\"status\":\"error\",\"error\":{\"code\",\"message\",\"details\"},\"meta\":…}`; \
            `error.code` is stable. Send `Authorization: Bearer <token>` to every route but \
            the probes and these documents."
    ),
    paths(
        system::healthz,
        system::readyz,
        system::status,
        tokens::list,
        tokens::create,
        tokens::revoke,
        projects::list,
        projects::create,
        projects::show,
        projects::update,
        projects::remove,
        projects::refetch,
        hooks::receive,
        deliveries::show,
        deliveries::list,
        deliveries::rotate,
        runs_read::list,
        runs_read::show,
        runs_read::job,
        runs_read::log,
        bans::list,
        bans::lift,
        live::log_stream,
        live::events,
        live::ws,
        runs_write::trigger,
        runs_write::cancel,
        runs_write::retry,
        schedules::list,
        schedules::stop,
        schedules::start,
        watches::list,
        watches::check,
        notifications::list_receivers,
        notifications::create_receiver,
        notifications::remove_receiver,
        notifications::list_notifications,
        notifications::retry,
        ops::queue,
        ops::stats,
        ops::config,
        ops::database_stats,
        ops::database_export,
        packages::list,
        packages::show,
        packages::status,
        packages::history,
        packages::deps,
        packages::log,
        artifacts::list,
        artifacts::show,
        artifacts::download,
        artifacts::dependencies,
        artifacts::worker_keep,
        artifacts::worker_list,
        artifacts::worker_put_blob,
        artifacts::worker_get_blob,
        workers::register,
        workers::claim,
        workers::heartbeat,
        workers::report,
        workers::source,
        workers::package_dep,
        workers::package_part,
        workers::assignment,
        workers::release,
        workers::list,
        workers::show,
        workers::log,
        workers::pause,
        workers::resume,
        metrics::scrape,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "system", description = "The server itself"),
        (name = "tokens", description = "API tokens (admin only)"),
        (name = "runs", description = "Runs of a project's workflows"),
        (name = "projects", description = "Projects: folders and git repositories of workflows"),
        (name = "operations", description = "The queue, statistics, settings and the database (settings and database: admin only)"),
        (name = "live", description = "Live events: SSE and WebSocket"),
        (name = "schedules", description = "on.schedule entries of the projects' workflows: next fires, stop and start"),
        (name = "watches", description = "on.watch entries of the projects' workflows: poll state, versions seen, poll now"),
        (name = "notifications", description = "Outbound notifications: receivers a project names, signed deliveries of its events and their attempts"),
        (name = "packages", description = "Package builds (`kiln build`): the latest build of every origin, an origin's history, status and build logs, and its dependencies in the server's tree. An origin `CATEGORY/NAME` is two path segments: `/api/v1/packages/devel/gmake/history`"),
        (name = "artifacts", description = "Artifacts jobs kept (`jobs.<id>.artifacts`, `actions/upload-artifact`), content-addressed by SHA-256 with their metadata: list, metadata, download with ETag and ranges; and `/api/v1/dependencies`, the dep-server read API buildpacks query"),
        (name = "workers", description = "Remote workers: the protocol `kiln worker` speaks under `/api/v1/worker/` (register, claim jobs by label, report under the lease's fencing token, heartbeat), and `/api/v1/workers` for people (list, pause, resume)"),
        (name = "hooks", description = "Project webhooks (`/hooks/{hook_id}`, open, signed with the project's secret) and their recorded deliveries")
    )
)]
struct ApiDoc;

/// Declares the `bearer` scheme the routes' `security` refers to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as this server serves it: its version and public URL filled in.
pub(crate) fn document(public_url: &str) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = VERSION.to_owned();
    doc.servers = Some(vec![Server::new(public_url)]);
    doc
}

/// `/api/v1/openapi.json` and the Swagger UI at `/api/docs`.
pub(crate) fn docs(state: &AppState) -> Router<AppState> {
    SwaggerUi::new("/api/docs")
        .url("/api/v1/openapi.json", document(&state.config().public_url))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document() {
        let doc = serde_json::to_value(document("http://127.0.0.1:1")).unwrap();
        for path in [
            "/healthz",
            "/readyz",
            "/api/v1/status",
            "/api/v1/tokens",
            "/api/v1/tokens/{id}",
            "/api/v1/projects",
            "/api/v1/projects/{id}",
            "/api/v1/projects/{id}/fetch",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert_eq!(doc["servers"][0]["url"], "http://127.0.0.1:1");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["components"]["schemas"]["TokenInfo"].is_object());
        assert!(doc["components"]["schemas"]["ProjectView"].is_object());
        for path in [
            "/api/v1/schedules",
            "/api/v1/schedules/{id}/stop",
            "/api/v1/schedules/{id}/start",
            "/api/v1/watches",
            "/api/v1/watches/{id}/check",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["components"]["schemas"]["ScheduleView"].is_object());
        for path in [
            "/api/v1/projects/{id}/receivers",
            "/api/v1/projects/{id}/receivers/{rid}",
            "/api/v1/projects/{id}/notifications",
            "/api/v1/notifications/{id}/retry",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["components"]["schemas"]["NotificationView"].is_object());
        for path in [
            "/api/v1/packages",
            "/api/v1/packages/{category}/{name}",
            "/api/v1/packages/{category}/{name}/status",
            "/api/v1/packages/{category}/{name}/history",
            "/api/v1/packages/{category}/{name}/deps",
            "/api/v1/packages/{category}/{name}/builds/{id}/log",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        for schema in ["PackageBuildView", "PackageDeps", "PackageStatsView"] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
    }
}
