//! The store's project records beyond [`kiln_proto::Project`]: the fetch state of a git
//! project's mirror and the archive mark, with the requests that change them. Plain data; the
//! SQL is in `backend/projects_body.rs`.

use jiff::Timestamp;
use kiln_proto::{FetchStatus, Project, ProjectKind};

/// A project with everything the store keeps about it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectRecord {
    /// The record runs refer to (id, name, source, hook id, creation time).
    pub project: Project,
    pub default_branch: Option<String>,
    pub head_sha: Option<String>,
    pub fetch_requested_at: Option<Timestamp>,
    pub fetched_at: Option<Timestamp>,
    pub fetch_error: Option<String>,
    pub updated_at: Option<Timestamp>,
    pub archived_at: Option<Timestamp>,
    /// Whose signature scheme its webhook verifies (the secret is not here: see
    /// [`crate::hooks`]).
    pub provider: kiln_proto::HookProvider,
}

impl ProjectRecord {
    pub fn kind(&self) -> ProjectKind {
        ProjectKind::of(&self.project.source)
    }

    pub fn fetch_status(&self) -> FetchStatus {
        FetchStatus::of(
            self.kind(),
            self.fetch_requested_at,
            self.fetched_at,
            self.fetch_error.as_deref(),
        )
    }

    pub fn is_archived(&self) -> bool {
        self.archived_at.is_some()
    }
}

/// What [`Store::update_project`](crate::Store::update_project) changes; `None` keeps a
/// field as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectChange<'a> {
    pub name: Option<&'a str>,
    /// A new source forgets the old one's fetch state; a git source is marked to be fetched.
    pub source: Option<&'a str>,
}

/// How a fetch of a git project's mirror ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The mirror is up to date: its default branch and that branch's commit (`None` for a
    /// repository without commits).
    Fetched {
        default_branch: Option<String>,
        head_sha: Option<String>,
    },
    /// The fetch failed; the message is shown as `fetch_error` (credentials already redacted).
    Failed(String),
}

/// What [`Store::archive_project`](crate::Store::archive_project) did.
#[derive(Clone, Debug, PartialEq)]
pub enum Archived {
    /// The project is archived now (or already was): the record as it stands.
    Done(Box<ProjectRecord>),
    /// Refused: this many of its runs have not finished.
    Busy { active_runs: i64 },
}
