//! Package builds as the API shows them (`/api/v1/packages…`, DESIGN.md "Package trees"): the
//! latest state of every origin, one origin's history, its place in the tree, and the package
//! figures of `/api/v1/stats`.
//!
//! An origin is `CATEGORY/NAME`; in a URL it is two path segments, as it is in the tree
//! (`/api/v1/packages/devel/gmake/history`), never an escaped slash, which proxies and
//! clients treat inconsistently. Build and session ids are the store's UUIDs, carried here
//! as plain [`Uuid`]s because the typed ids live in the store, which depends on this crate.
//! Not here: how builds are recorded, keyed or scheduled.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How a package build ended (the store's spelling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PackageBuildStatus {
    /// Built; its output is stored.
    Success,
    /// The build (or its fetch, or a distfile's checksum) failed.
    Failure,
    /// Not run because a dependency failed (`reason` names it).
    Skipped,
    /// Stopped (Ctrl-C), or never started because the session was stopped.
    Cancelled,
    /// Not run: a successful build with the same key exists and its output was reused.
    Cached,
}

/// A blob in the content-addressed store: the SHA-256 of its bytes and its length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobRef {
    /// SHA-256 of the bytes, lowercase hex.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
}

/// One recorded build of one package.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageBuildView {
    /// The build's id (what `…/builds/{id}/log` and `?before=` take).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: Uuid,
    /// The `kiln build` invocation (session) that recorded it.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub session: Uuid,
    /// `CATEGORY/NAME`.
    pub origin: String,
    pub version: String,
    /// The package's cache key: SHA-256, lowercase hex.
    pub key: String,
    pub status: PackageBuildStatus,
    /// Why it ended so, for people: `exit status 2`, `dependency devel/foo failed`, …
    pub reason: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub started_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub finished_at: Timestamp,
    /// How long the build ran, in milliseconds (0 for skipped and cached builds).
    pub duration_ms: u64,
    /// The whole log in the blob store; `null` when none was kept.
    pub log: Option<BlobRef>,
    /// Where the API serves the log as `text/plain` (a path on this server); `null` when
    /// there is no log.
    pub log_url: Option<String>,
    /// The log's last lines, as kept with the build.
    pub log_tail: String,
    /// The packed `$KILN_OUT`: present for `success` and `cached` builds only.
    pub output: Option<BlobRef>,
}

/// One origin and its latest build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageView {
    /// `CATEGORY/NAME`.
    pub origin: String,
    /// Its latest build (by finish time), whatever its status.
    pub latest: PackageBuildView,
}

/// `GET /api/v1/packages`: one page of origins ever built, by origin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageList {
    pub packages: Vec<PackageView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/packages/{category}/{name}/history`: one page of an origin's builds, newest
/// first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageHistory {
    pub origin: String,
    pub builds: Vec<PackageBuildView>,
    /// Pass as `before` for the next (older) page; `null` on the last one.
    pub next_before: Option<String>,
}

/// `GET /api/v1/packages/{category}/{name}/status`: the latest build in brief, what a
/// script polls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageStatus {
    pub origin: String,
    pub status: PackageBuildStatus,
    pub version: String,
    pub key: String,
    pub reason: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub finished_at: Timestamp,
    /// The build these figures are from.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub build: Uuid,
}

/// `GET /api/v1/packages/{category}/{name}/deps`: an origin's place in the server's tree
/// (read from the manifests as they are now, not from history). Every list is sorted by
/// origin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageDeps {
    pub origin: String,
    /// The manifest's `version`.
    pub version: String,
    /// The manifest's `depends`: built before it.
    pub depends: Vec<String>,
    /// The manifest's `run-depends`: needed by whoever depends on it.
    pub run_depends: Vec<String>,
    /// Packages whose `depends` or `run-depends` name it.
    pub dependents: Vec<String>,
    /// Packages that wait for it to be built (its `depends`-dependents, and theirs through
    /// `run-depends`): what a failure of it skips first.
    pub waiters: Vec<String>,
    /// Its `$KILN_DEPS`: everything reachable from `depends` over both kinds of edge.
    pub kiln_deps: Vec<String>,
}

/// Package builds counted by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageCounts {
    /// `success`.
    pub built: i64,
    /// `failure`.
    pub failed: i64,
    pub skipped: i64,
    pub cached: i64,
    pub cancelled: i64,
}

/// The newest finished `kiln build` session and what it reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageSessionView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: Uuid,
    /// The tree's folder, as the builder named it.
    pub tree: String,
    /// How many builds it ran at once.
    pub slots: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub started_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub finished_at: Option<Timestamp>,
    pub counts: PackageCounts,
}

/// The `packages` object of `/api/v1/stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageStatsView {
    /// ALL TIME: every build ever recorded, by how it ended (a package built in ten sessions
    /// counts ten times).
    pub all_time: PackageCounts,
    /// LAST SESSION: the newest finished `kiln build` (by start) with the counts it
    /// reported; `null` before the first one finishes.
    pub last_session: Option<PackageSessionView>,
    /// Origins with at least one recorded build.
    pub origins: i64,
    /// ALL TIME: the median duration of every successful build, in seconds (nearest rank);
    /// `null` before the first success.
    pub build_time_p50_seconds: Option<f64>,
    /// ALL TIME: the 95th percentile of the same.
    pub build_time_p95_seconds: Option<f64>,
}
