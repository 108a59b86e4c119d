//! `/api/v1/packages`: what `kiln build` recorded (DESIGN.md "Package trees"), read back — the
//! latest build of every origin, one origin's latest build, status, history and build logs —
//! and an origin's place in the server's package tree (`/deps`).
//!
//! An origin (`CATEGORY/NAME`) is two path segments, as in the tree:
//! `/api/v1/packages/devel/gmake/history`. History comes from the store and needs no tree;
//! `/deps` reads the manifests of the tree the server was started with (`kiln serve --tree
//! DIR`, [`ServerConfig::package_tree`](crate::ServerConfig::package_tree)), as they are now.
//! The loaded tree is kept between requests and loaded again when a manifest or a folder of
//! the tree changes ([`TreeCache`]): a 60,000-package tree takes far longer to parse than
//! to look at.
//!
//! Who may call: any token that reads (viewers too); a token limited to one project is
//! refused (`403`), since package builds belong to no project.
//!
//! Codes: `PACKAGE_NOT_FOUND` 404 (no build recorded, or for `/deps` not in the tree),
//! `PACKAGE_BUILD_NOT_FOUND` 404, `LOG_NOT_FOUND` 404, `PACKAGE_TREE_NOT_CONFIGURED` 409,
//! `PACKAGE_TREE_INVALID` 409, `BAD_REQUEST` 400 naming the parameter (`origin`, `limit`,
//! `cursor`, `before`, `id`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kiln_core::packages::{DepsWalker, MANIFEST_FILE, PackageId, Tree, TreeErrors, is_origin};
use kiln_proto::{
    BlobRef, PackageBuildView, PackageCounts, PackageDeps, PackageHistory, PackageList,
    PackageSessionView, PackageStatsView, PackageStatus, PackageView,
};
use kiln_store::{
    BuildCounts, ContentBlob, PackageBuild, PackageBuildId, PackageBuildStatus, PackageStats,
    StoreError,
};
use serde_json::json;

use crate::auth::Caller;
use crate::envelope::Data;
use crate::error::ApiError;
use crate::state::AppState;

/// Origins or builds per page unless `limit` says otherwise, and the most it may say.
const PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;
/// The most of a log one answer carries: its last this many bytes. A build log can be far
/// larger than an answer should hold in memory; the end is where a failure shows.
const MAX_LOG_BYTES: usize = 16 * 1024 * 1024;
/// Tree problems listed in a `PACKAGE_TREE_INVALID` answer; `kiln build` lists them all.
const MAX_TREE_ERRORS: usize = 20;

fn bad_param(name: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("parameter `{name}`: {message}"))
        .with_details(json!({ "parameter": name }))
}

/// Package builds are not any project's: a token limited to one is refused, as it is for
/// the other server-wide routes.
fn server_wide(caller: &Caller) -> Result<(), ApiError> {
    match caller.0.project {
        Some(project) => Err(ApiError::forbidden(format!(
            "this token is limited to project {project}; package builds are about the whole \
             server"
        ))),
        None => Ok(()),
    }
}

/// The origin the path's two segments name, or `400` naming `origin`.
fn origin_of(category: &str, name: &str) -> Result<String, ApiError> {
    let origin = format!("{category}/{name}");
    if is_origin(&origin) {
        Ok(origin)
    } else {
        Err(bad_param(
            "origin",
            format!(
                "`{origin}` is not an origin: expected CATEGORY/NAME, two non-empty path \
                 segments other than `.` and `..`, without whitespace or control characters"
            ),
        ))
    }
}

fn package_not_found(origin: &str) -> ApiError {
    ApiError::not_found(
        "PACKAGE_NOT_FOUND",
        format!("no build of `{origin}` is recorded"),
    )
}

/// `limit` from the query: 1–500, 50 when absent.
fn limit(q: &HashMap<String, String>) -> Result<u32, ApiError> {
    match q.get("limit") {
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| bad_param("limit", format!("expected 1 to {MAX_PAGE}, got `{l}`"))),
        None => Ok(PAGE),
    }
}

/// A path segment as it may appear in a URL: bytes outside the unreserved set are
/// percent-encoded (an origin may hold `#`, `?` or `%`).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where `…/builds/{id}/log` serves a build's log.
fn log_path(origin: &str, id: PackageBuildId) -> String {
    let (category, name) = origin.split_once('/').unwrap_or((origin, ""));
    format!(
        "/api/v1/packages/{}/{}/builds/{id}/log",
        encode_segment(category),
        encode_segment(name)
    )
}

fn blob_ref(b: ContentBlob) -> BlobRef {
    BlobRef {
        digest: b.digest,
        size: b.size,
    }
}

fn status_view(s: PackageBuildStatus) -> kiln_proto::PackageBuildStatus {
    use kiln_proto::PackageBuildStatus as P;
    match s {
        PackageBuildStatus::Success => P::Success,
        PackageBuildStatus::Failure => P::Failure,
        PackageBuildStatus::Skipped => P::Skipped,
        PackageBuildStatus::Cancelled => P::Cancelled,
        PackageBuildStatus::Cached => P::Cached,
    }
}

fn build_view(b: PackageBuild) -> PackageBuildView {
    PackageBuildView {
        log_url: b.log.as_ref().map(|_| log_path(&b.origin, b.id)),
        id: b.id.0,
        session: b.session.0,
        version: b.version,
        key: b.key,
        status: status_view(b.status),
        reason: b.reason,
        started_at: b.started_at,
        finished_at: b.finished_at,
        duration_ms: u64::try_from(b.duration.as_millis()).unwrap_or(u64::MAX),
        log: b.log.map(blob_ref),
        log_tail: b.log_tail,
        output: b.output.map(blob_ref),
        origin: b.origin,
    }
}

fn counts_view(c: &BuildCounts) -> PackageCounts {
    PackageCounts {
        built: c.built,
        failed: c.failed,
        skipped: c.skipped,
        cached: c.cached,
        cancelled: c.cancelled,
    }
}

/// The `packages` object of `/api/v1/stats`.
pub(crate) fn stats_view(s: PackageStats) -> PackageStatsView {
    let seconds = |ms: Option<i64>| ms.map(|ms| ms as f64 / 1000.0);
    PackageStatsView {
        all_time: counts_view(&s.all_time),
        last_session: s.last_session.map(|session| PackageSessionView {
            id: session.id.0,
            tree: session.tree,
            slots: session.slots,
            started_at: session.started_at,
            finished_at: session.finished_at,
            counts: counts_view(&session.counts),
        }),
        origins: s.origins,
        build_time_p50_seconds: seconds(s.p50_ms),
        build_time_p95_seconds: seconds(s.p95_ms),
    }
}

/// The latest build of every origin ever built, by origin; `limit` (1–500, default 50) and
/// `cursor` (the `next_cursor` of the last page: the last origin it listed).
#[utoipa::path(
    get,
    path = "/api/v1/packages",
    tag = "packages",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Origins per page, 1–500 (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses(
        (status = 200, description = "A page of origins with their latest build", body = kiln_proto::Envelope<PackageList>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`: a worker token or one limited to a project", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<PackageList>, ApiError> {
    server_wide(&caller)?;
    let limit = limit(&q)?;
    let cursor = match q.get("cursor") {
        Some(c) if is_origin(c) => Some(c.as_str()),
        Some(_) => return Err(bad_param("cursor", "not a cursor this server gave")),
        None => None,
    };
    // One more than asked tells whether another page follows.
    let mut builds = state.store().package_status(cursor, limit + 1).await?;
    let more = builds.len() > limit as usize;
    builds.truncate(limit as usize);
    let next_cursor = more
        .then(|| builds.last().map(|b| b.origin.clone()))
        .flatten();
    let packages = builds
        .into_iter()
        .map(|b| PackageView {
            origin: b.origin.clone(),
            latest: build_view(b),
        })
        .collect();
    Ok(Data::ok(PackageList {
        packages,
        next_cursor,
    }))
}

/// The latest build of `origin` (by finish time), or `PACKAGE_NOT_FOUND`.
async fn latest(state: &AppState, origin: &str) -> Result<PackageBuild, ApiError> {
    state
        .store()
        .package_latest(origin)
        .await?
        .ok_or_else(|| package_not_found(origin))
}

/// One origin (`CATEGORY/NAME`, two path segments) with its latest build.
#[utoipa::path(
    get,
    path = "/api/v1/packages/{category}/{name}",
    tag = "packages",
    security(("bearer" = [])),
    params(
        ("category" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's category (`devel` of `devel/gmake`)"),
        ("name" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's name (`gmake` of `devel/gmake`)")
    ),
    responses(
        (status = 200, description = "The origin and its latest build", body = kiln_proto::Envelope<PackageView>),
        (status = 400, description = "`BAD_REQUEST`: not an origin", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PACKAGE_NOT_FOUND`: no build recorded", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path((category, name)): Path<(String, String)>,
) -> Result<Data<PackageView>, ApiError> {
    server_wide(&caller)?;
    let origin = origin_of(&category, &name)?;
    let build = latest(&state, &origin).await?;
    Ok(Data::ok(PackageView {
        origin,
        latest: build_view(build),
    }))
}

/// The latest build of an origin in brief: status, version, key, reason, when.
#[utoipa::path(
    get,
    path = "/api/v1/packages/{category}/{name}/status",
    tag = "packages",
    security(("bearer" = [])),
    params(
        ("category" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's category"),
        ("name" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's name")
    ),
    responses(
        (status = 200, description = "The latest build's status", body = kiln_proto::Envelope<PackageStatus>),
        (status = 400, description = "`BAD_REQUEST`: not an origin", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PACKAGE_NOT_FOUND`: no build recorded", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn status(
    caller: Caller,
    State(state): State<AppState>,
    Path((category, name)): Path<(String, String)>,
) -> Result<Data<PackageStatus>, ApiError> {
    server_wide(&caller)?;
    let origin = origin_of(&category, &name)?;
    let b = latest(&state, &origin).await?;
    Ok(Data::ok(PackageStatus {
        origin,
        status: status_view(b.status),
        version: b.version,
        key: b.key,
        reason: b.reason,
        finished_at: b.finished_at,
        build: b.id.0,
    }))
}

/// Every recorded build of an origin, newest first (by finish time); `limit` (1–500,
/// default 50) and `before` (the `next_before` of the last page: a build of this origin).
#[utoipa::path(
    get,
    path = "/api/v1/packages/{category}/{name}/history",
    tag = "packages",
    security(("bearer" = [])),
    params(
        ("category" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's category"),
        ("name" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's name"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Builds per page, 1–500 (default 50)"),
        ("before" = Option<String>, Query, description = "`next_before` of the previous page: only builds older than that one")
    ),
    responses(
        (status = 200, description = "A page of builds, newest first", body = kiln_proto::Envelope<PackageHistory>),
        (status = 400, description = "`BAD_REQUEST` naming the parameter (`origin`, `limit`, `before`)", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PACKAGE_NOT_FOUND`: no build recorded", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn history(
    caller: Caller,
    State(state): State<AppState>,
    Path((category, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data<PackageHistory>, ApiError> {
    server_wide(&caller)?;
    let origin = origin_of(&category, &name)?;
    let limit = limit(&q)?;
    let before = match q.get("before") {
        Some(b) => {
            let not_ours = || bad_param("before", format!("`{b}` is not a build of `{origin}`"));
            let id: PackageBuildId = b.parse().map_err(|_| not_ours())?;
            // The store answers an unknown `before` with an empty page, which would read as
            // "no older builds": say what is wrong instead.
            match state.store().package_build(id).await? {
                Some(build) if build.origin == origin => Some(id),
                _ => return Err(not_ours()),
            }
        }
        None => None,
    };
    let mut builds = state
        .store()
        .package_history(&origin, before, limit + 1)
        .await?;
    if builds.is_empty() && before.is_none() {
        return Err(package_not_found(&origin));
    }
    let more = builds.len() > limit as usize;
    builds.truncate(limit as usize);
    let next_before = more
        .then(|| builds.last().map(|b| b.id.to_string()))
        .flatten();
    Ok(Data::ok(PackageHistory {
        origin,
        builds: builds.into_iter().map(build_view).collect(),
        next_before,
    }))
}

/// A build's whole log as `text/plain` — its last 16 MiB when it is longer, with the bytes
/// left out in `X-Kiln-Log-Skipped`.
#[utoipa::path(
    get,
    path = "/api/v1/packages/{category}/{name}/builds/{id}/log",
    tag = "packages",
    security(("bearer" = [])),
    params(
        ("category" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's category"),
        ("name" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's name"),
        ("id" = String, Path, description = "The build's id (a build of this origin)")
    ),
    responses(
        (status = 200, description = "The log's bytes", body = String, content_type = "text/plain",
            headers(("x-kiln-log-skipped" = u64, description = "Bytes left out at the start (0: the whole log)"))),
        (status = 400, description = "`BAD_REQUEST` naming the parameter (`origin`, `id`)", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PACKAGE_BUILD_NOT_FOUND`, or `LOG_NOT_FOUND`: none was kept, or it is no longer stored", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn log(
    caller: Caller,
    State(state): State<AppState>,
    Path((category, name, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    server_wide(&caller)?;
    let origin = origin_of(&category, &name)?;
    let build_id: PackageBuildId = id
        .parse()
        .map_err(|_| bad_param("id", format!("`{id}` is not a build id")))?;
    let build = state
        .store()
        .package_build(build_id)
        .await?
        .filter(|b| b.origin == origin)
        .ok_or_else(|| {
            ApiError::not_found(
                "PACKAGE_BUILD_NOT_FOUND",
                format!("`{origin}` has no build `{id}`"),
            )
        })?;
    let no_log = |why: &str| {
        ApiError::not_found("LOG_NOT_FOUND", format!("build `{id}` of `{origin}` {why}"))
    };
    let Some(blob) = build.log else {
        return Err(no_log("kept no log"));
    };
    let read = state
        .store()
        .blobs()
        .read_content_with(&blob.digest, |r: &mut dyn Read| {
            tail_of(r, MAX_LOG_BYTES).map_err(|source| StoreError::BlobRead {
                path: PathBuf::from("sha256"),
                source,
            })
        })
        .await;
    let (bytes, skipped) = match read {
        Ok(tail) => tail,
        Err(StoreError::BlobRead { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(no_log("had a log that is no longer stored"));
        }
        Err(e) => return Err(e.into()),
    };
    let mut res = bytes.into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("x-kiln-log-skipped", HeaderValue::from(skipped));
    Ok(res)
}

/// The last `max` bytes of what `r` yields, and how many came before them.
fn tail_of(r: &mut dyn Read, max: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut kept = Vec::new();
    let mut skipped = 0_u64;
    let mut chunk = vec![0_u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        kept.extend_from_slice(&chunk[..n]);
        // Trimmed in batches, not per chunk: one move per `max` bytes read.
        if kept.len() >= 2 * max {
            let cut = kept.len() - max;
            kept.drain(..cut);
            skipped += cut as u64;
        }
    }
    if kept.len() > max {
        let cut = kept.len() - max;
        kept.drain(..cut);
        skipped += cut as u64;
    }
    Ok((kept, skipped))
}

/// An origin's dependencies, dependents and `$KILN_DEPS` in the server's package tree (the
/// manifests as they are now, whether or not it was ever built).
#[utoipa::path(
    get,
    path = "/api/v1/packages/{category}/{name}/deps",
    tag = "packages",
    security(("bearer" = [])),
    params(
        ("category" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's category"),
        ("name" = String, Path, pattern = r"^[^/\s]+$", description = "The origin's name")
    ),
    responses(
        (status = 200, description = "The origin's place in the tree", body = kiln_proto::Envelope<PackageDeps>),
        (status = 400, description = "`BAD_REQUEST`: not an origin", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PACKAGE_NOT_FOUND`: not in the tree", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 409, description = "`PACKAGE_TREE_NOT_CONFIGURED` (start the server with `--tree DIR`) or `PACKAGE_TREE_INVALID` (its problems in `details.errors`)", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn deps(
    caller: Caller,
    State(state): State<AppState>,
    Path((category, name)): Path<(String, String)>,
) -> Result<Data<PackageDeps>, ApiError> {
    server_wide(&caller)?;
    let origin = origin_of(&category, &name)?;
    let Some(root) = state.config().package_tree.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "PACKAGE_TREE_NOT_CONFIGURED",
            "this server has no package tree: start it with `kiln serve --tree DIR` (or \
             KILN__PACKAGES__TREE=DIR) to answer dependency questions",
        ));
    };
    let cache = state.package_trees().clone();
    let tree = tokio::task::spawn_blocking(move || cache.get(&root))
        .await
        .map_err(|e| ApiError::internal(format_args!("the tree loader panicked: {e}")))??;
    let id = tree.id(&origin).ok_or_else(|| {
        ApiError::not_found(
            "PACKAGE_NOT_FOUND",
            format!("`{origin}` is not in the server's package tree"),
        )
    })?;
    Ok(Data::ok(deps_of(&tree, id)))
}

/// [`PackageDeps`] of `id` in `tree`. Ids are numbered in origin order, so every list comes
/// out sorted by origin.
fn deps_of(tree: &Tree, id: PackageId) -> PackageDeps {
    let graph = tree.graph();
    let names = |ids: &[PackageId]| -> Vec<String> {
        ids.iter().map(|&p| tree.origin(p).to_owned()).collect()
    };
    // No reverse relation of the manifests' lists is kept in the graph: one pass over the
    // edges (lists are sorted, so each test is a binary search).
    let dependents: Vec<PackageId> = tree
        .ids()
        .filter(|&p| {
            graph.depends(p).binary_search(&id).is_ok()
                || graph.run_depends(p).binary_search(&id).is_ok()
        })
        .collect();
    let mut walker = DepsWalker::new(graph);
    PackageDeps {
        origin: tree.origin(id).to_owned(),
        version: tree.package(id).version.clone(),
        depends: names(graph.depends(id)),
        run_depends: names(graph.run_depends(id)),
        dependents: names(&dependents),
        waiters: names(graph.waiters(id)),
        kiln_deps: names(walker.kiln_deps(id)),
    }
}

/// The server's package tree, loaded once and again only when it changed.
///
/// "Changed" is a signature over every category and package folder's name and modification
/// time and every manifest's size and modification time: adding, removing or editing a
/// manifest changes it, and computing it reads directory entries without parsing anything.
/// One lock around check and load: concurrent requests after a change wait for one load
/// rather than each parsing the tree.
#[derive(Debug, Default)]
pub(crate) struct TreeCache {
    loaded: Mutex<Option<Loaded>>,
}

#[derive(Debug)]
struct Loaded {
    root: PathBuf,
    signature: u64,
    tree: Arc<Tree>,
}

impl TreeCache {
    /// The tree at `root` as it is now (blocking: call it off the async runtime).
    fn get(&self, root: &FsPath) -> Result<Arc<Tree>, ApiError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let signature = signature(root).map_err(|e| tree_unusable(&[e.to_string()], 1))?;
        if let Some(l) = loaded.as_ref()
            && l.root == root
            && l.signature == signature
        {
            return Ok(l.tree.clone());
        }
        let tree = Arc::new(Tree::load(root).map_err(|e| tree_invalid(&e))?);
        *loaded = Some(Loaded {
            root: root.to_owned(),
            signature,
            tree: tree.clone(),
        });
        Ok(tree)
    }
}

fn tree_invalid(errors: &TreeErrors) -> ApiError {
    let shown: Vec<String> = errors
        .iter()
        .take(MAX_TREE_ERRORS)
        .map(ToString::to_string)
        .collect();
    tree_unusable(&shown, errors.len())
}

/// `409 PACKAGE_TREE_INVALID` with the first problems; `kiln build --dry-run` on the tree
/// lists every one.
fn tree_unusable(shown: &[String], count: usize) -> ApiError {
    let first = shown.first().map(String::as_str).unwrap_or("");
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "PACKAGE_TREE_INVALID",
        format!(
            "the server's package tree cannot be used ({count} problem(s); the first: {first}); \
             `kiln build --dry-run --tree DIR` lists them all"
        ),
    )
    .with_details(json!({ "count": count, "errors": shown }))
}

/// See [`TreeCache`]. Hidden entries are left out, as [`Tree::load`] leaves them out.
fn signature(root: &FsPath) -> std::io::Result<u64> {
    let with_path = |path: &FsPath| {
        let path = path.to_owned();
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
    };
    let mut hasher = std::hash::DefaultHasher::new();
    let mut categories = visible_dirs(root).map_err(with_path(root))?;
    categories.sort();
    for category in categories {
        let dir = root.join(&category);
        let meta = std::fs::metadata(&dir).map_err(with_path(&dir))?;
        (&category, meta.modified().ok()).hash(&mut hasher);
        let mut packages = visible_dirs(&dir).map_err(with_path(&dir))?;
        packages.sort();
        for package in packages {
            let folder = dir.join(&package);
            let folder_mtime = std::fs::metadata(&folder)
                .ok()
                .and_then(|m| m.modified().ok());
            let manifest = std::fs::metadata(folder.join(MANIFEST_FILE))
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            (&package, folder_mtime, manifest).hash(&mut hasher);
        }
    }
    Ok(hasher.finish())
}

/// The names of the folders in `dir` that do not start with a dot.
fn visible_dirs(dir: &FsPath) -> std::io::Result<Vec<std::ffi::OsString>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            out.push(name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_spelled_as_the_store_spells_them() {
        for s in PackageBuildStatus::ALL {
            let wire = serde_json::to_value(status_view(s)).unwrap();
            assert_eq!(wire, s.as_str(), "{s:?}");
        }
    }

    #[test]
    fn origins_are_two_plain_segments() {
        assert_eq!(origin_of("devel", "gmake").unwrap(), "devel/gmake");
        for (c, n) in [("", "x"), ("x", ""), (".", "x"), ("x", ".."), ("a b", "x")] {
            let e = origin_of(c, n).unwrap_err();
            assert_eq!(e.code(), "BAD_REQUEST");
            assert!(e.body().message.contains("`origin`"), "{c:?} {n:?}");
            assert_eq!(e.body().details["parameter"], "origin");
        }
    }

    #[test]
    fn log_paths_escape_what_a_url_cannot_hold() {
        let id: PackageBuildId = "0190f2a4-0000-7000-8000-000000000001".parse().unwrap();
        assert_eq!(
            log_path("devel/gm#ke%", id),
            "/api/v1/packages/devel/gm%23ke%25/builds/0190f2a4-0000-7000-8000-000000000001/log"
        );
    }

    #[test]
    fn a_log_tail_keeps_the_end_and_counts_the_rest() {
        let data: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
        let (kept, skipped) = tail_of(&mut data.as_slice(), 1000).unwrap();
        assert_eq!(kept, &data[data.len() - 1000..]);
        assert_eq!(skipped, 199_000);
        let (kept, skipped) = tail_of(&mut &b"short"[..], 1000).unwrap();
        assert_eq!((kept.as_slice(), skipped), (&b"short"[..], 0));
    }

    #[test]
    fn the_signature_changes_with_a_manifest_and_ignores_hidden_folders() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("devel/gmake");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(
            pkg.join(MANIFEST_FILE),
            "version = \"1\"\nbuild = \"true\"\n",
        )
        .unwrap();
        let first = signature(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join(".git/objects")).unwrap();
        assert_eq!(signature(dir.path()).unwrap(), first);
        // A different size: a change even where the clock's resolution hides the mtime's.
        std::fs::write(
            pkg.join(MANIFEST_FILE),
            "version = \"22\"\nbuild = \"true\"\n",
        )
        .unwrap();
        assert_ne!(signature(dir.path()).unwrap(), first);
        assert!(signature(&dir.path().join("missing")).is_err());
    }
}
