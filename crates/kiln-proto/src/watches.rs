//! Watches as the API shows them (`/api/v1/watches`, `kiln watch list --format json`): one
//! per `on.watch` entry of a project's workflows, with its poll state.
//!
//! A watch's id is stable while its entry keeps its name in the same workflow file (project,
//! workflow file, `name:`). Not here: polling sources, storing versions, starting runs.

use jiff::Timestamp;
use kiln_core::ids::{ProjectId, RunId};
use serde::{Deserialize, Serialize};

kiln_core::typed_id!(
    /// A watch's id.
    WatchId
);

/// Where a watch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WatchState {
    /// Never polled successfully yet.
    New,
    /// The last poll succeeded.
    Ok,
    /// The last poll failed (`last_error`); it is retried with backoff.
    Failing,
    /// The entry left its workflow file; it is not polled.
    Disabled,
}

/// One watch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: WatchId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub project: ProjectId,
    pub project_name: String,
    /// The workflow file (`.kiln/workflows/zlib.yml`).
    pub workflow: String,
    /// The entry's `name:`.
    pub name: String,
    /// `github-releases`, `github-tags`, `pypi`, `npm`, `crates`, `url` or `command`.
    pub source: String,
    /// The source spec as stored (`{"kind":"pypi","package":"requests"}`).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: serde_json::Value,
    pub constraint: Option<String>,
    pub filter: Option<String>,
    pub known_versions: Option<String>,
    pub interval_secs: u64,
    pub state: WatchState,
    /// The last poll's error, while it is failing.
    pub last_error: Option<String>,
    /// Failed polls in a row.
    pub failures: u32,
    /// Versions recorded (seen quietly or started a run).
    pub versions_seen: u64,
    /// The next poll; `null` when disabled.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub next_poll_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_poll_at: Option<Timestamp>,
    /// The run of the newest version that started one.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub last_run: Option<RunId>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

/// `GET /api/v1/watches`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchList {
    /// By project, workflow and name.
    pub watches: Vec<WatchView>,
}

/// One version a check found new.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchVersion {
    pub version: String,
    pub source_uri: Option<String>,
    /// The run it started, if it started one (a first poll records versions quietly).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub run: Option<RunId>,
    /// Why no run started, when one should have.
    pub error: Option<String>,
}

/// `POST /api/v1/watches/{id}/check`: what polling now did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchCheck {
    pub watch: WatchView,
    /// Whether the source answered `304 Not Modified` (nothing new, nothing read).
    pub not_modified: bool,
    /// Versions recorded by this check, in the order the source listed them.
    pub new_versions: Vec<WatchVersion>,
    /// The poll's error, when it failed.
    pub error: Option<String>,
}
