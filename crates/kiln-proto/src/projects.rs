//! Projects as the API shows them (`/api/v1/projects`, `kiln project … --format json`): what
//! kind of source a project has, how far fetching its git mirror got, and the requests that
//! add and change projects.
//!
//! [`crate::Project`] stays the small record runs refer to (a contract other tests compare);
//! [`ProjectView`] is the fuller answer of the project routes. Not here: storing projects,
//! fetching them, deciding who may register what (the server's).

use std::path::Path;

use jiff::Timestamp;
use kiln_core::ids::ProjectId;
use serde::{Deserialize, Serialize};

/// Where a project's files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ProjectKind {
    /// A folder on the server's disk, used as it is (no copy, no fetch).
    Path,
    /// A git repository (https, ssh, git or file URL), mirrored into the data dir.
    Git,
}

impl ProjectKind {
    /// The kind of `source`: an absolute path is a folder, anything else a git URL. The
    /// engine reads a project's source by the same rule.
    pub fn of(source: &str) -> Self {
        if Path::new(source).is_absolute() {
            Self::Path
        } else {
            Self::Git
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Git => "git",
        }
    }
}

/// How far the mirror of a git project got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FetchStatus {
    /// A folder project: nothing to fetch.
    None,
    /// A fetch has been asked for and has not ended yet.
    Pending,
    /// The last fetch succeeded (`head_sha` and `default_branch` are its findings).
    Ok,
    /// The last fetch failed (`fetch_error` says why).
    Failed,
}

impl FetchStatus {
    /// The status from the stored fetch columns: the last fetch asked for (`requested`),
    /// the last one that ended (`fetched`) and its error.
    pub fn of(
        kind: ProjectKind,
        requested: Option<Timestamp>,
        fetched: Option<Timestamp>,
        error: Option<&str>,
    ) -> Self {
        match (kind, requested, fetched) {
            (ProjectKind::Path, _, _) => Self::None,
            (ProjectKind::Git, _, None) => Self::Pending,
            (ProjectKind::Git, Some(r), Some(f)) if r > f => Self::Pending,
            (ProjectKind::Git, _, Some(_)) if error.is_some() => Self::Failed,
            (ProjectKind::Git, _, Some(_)) => Self::Ok,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pending => "pending",
            Self::Ok => "ok",
            Self::Failed => "failed",
        }
    }
}

/// A project as the API answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: ProjectId,
    pub name: String,
    /// The folder or git URL, with any credentials in the URL replaced by `***`.
    pub source: String,
    pub kind: ProjectKind,
    /// The id in the project's webhook URL.
    pub hook_id: String,
    /// The project's webhook URL, absolute: the server's public URL + `/hooks/{hook_id}`.
    pub hook_url: String,
    /// Whose signature scheme the webhook verifies.
    #[serde(default)]
    pub provider: crate::HookProvider,
    /// The webhook secret: only in the answer that registers the project (kiln cannot show
    /// it again; `POST /api/v1/projects/{id}/hook/rotate` draws a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A git project's default branch as of its last successful fetch.
    pub default_branch: Option<String>,
    /// The commit the default branch pointed at in the last successful fetch.
    pub head_sha: Option<String>,
    pub fetch_status: FetchStatus,
    /// When the last fetch was asked for.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub fetch_requested_at: Option<Timestamp>,
    /// When the last fetch ended, well or not.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub fetched_at: Option<Timestamp>,
    /// Why the last fetch failed (credentials redacted); `null` after a success.
    pub fetch_error: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When its name or source last changed through the API.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub updated_at: Option<Timestamp>,
    /// When it was removed; an archived project is left out of listings, keeps its name,
    /// and its runs and logs stay readable.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub archived_at: Option<Timestamp>,
}

/// A listing of projects (`GET /api/v1/projects`, `kiln project list --format json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectList {
    pub projects: Vec<ProjectView>,
}

/// A project to register (`POST /api/v1/projects`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// An absolute folder path on the server, or a git URL (`https://…`, `ssh://…`,
    /// `user@host:path`, `git://…`, `file://…`).
    pub source: String,
    /// Default: the last segment of the path or URL, without `.git`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whose webhook scheme the project's hook verifies (default `github`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<crate::HookProvider>,
    /// The webhook secret (at least 16 printable characters); drawn at random when absent.
    /// Either way the answer shows it, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Changes to a project (`PATCH /api/v1/projects/{id}`); at least one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new folder or git URL; a git project is fetched again from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The longest project name, in characters.
pub const MAX_PROJECT_NAME: usize = 100;

/// `name` if it is acceptable for a project registered through the API, or why not: 1 to
/// [`MAX_PROJECT_NAME`] ASCII letters, digits, `.`, `_` and `-`, not starting with `.` or
/// `-`, and not shaped like a UUID (routes take a project's id or its name).
pub fn check_project_name(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let len = name.chars().count();
    if len > MAX_PROJECT_NAME {
        return Err(format!(
            "has {len} characters; at most {MAX_PROJECT_NAME} are allowed"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "may hold only ASCII letters, digits, `.`, `_` and `-`, not {c:?}"
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("must not start with `.` or `-`".to_owned());
    }
    if uuid::Uuid::parse_str(name).is_ok() {
        return Err("must not be a UUID: routes would read it as a project id".to_owned());
    }
    Ok(name)
}

/// The name a source gives a project when none is asked for: its last path or URL segment
/// without `.git` (`https://host/org/app.git` → `app`, `git@host:app.git` → `app`,
/// `/srv/app/` → `app`). `None` when there is no such segment (`/`, `/srv/..`).
pub fn default_project_name(source: &str) -> Option<&str> {
    let trimmed = source.trim_end_matches('/');
    let last = trimmed
        .rsplit(['/', ':'])
        .next()
        .filter(|s| !s.is_empty())?;
    let last = last.strip_suffix(".git").unwrap_or(last);
    (!last.is_empty() && last != "." && last != "..").then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_engine_rule() {
        assert_eq!(ProjectKind::of("/srv/app"), ProjectKind::Path);
        for git in [
            "https://example.com/a.git",
            "git@example.com:a.git",
            "file:///srv/a.git",
            "ssh://example.com/a",
        ] {
            assert_eq!(ProjectKind::of(git), ProjectKind::Git, "{git}");
        }
    }

    #[test]
    fn fetch_status_reads_the_stored_columns() {
        let t = |s| Some(Timestamp::from_second(s).unwrap());
        let git = ProjectKind::Git;
        assert_eq!(
            FetchStatus::of(ProjectKind::Path, None, None, None),
            FetchStatus::None
        );
        assert_eq!(FetchStatus::of(git, t(1), None, None), FetchStatus::Pending);
        assert_eq!(FetchStatus::of(git, t(1), t(2), None), FetchStatus::Ok);
        assert_eq!(
            FetchStatus::of(git, t(1), t(2), Some("x")),
            FetchStatus::Failed
        );
        assert_eq!(
            FetchStatus::of(git, t(3), t(2), Some("x")),
            FetchStatus::Pending,
            "asked again after the last one ended"
        );
    }

    #[test]
    fn default_names_are_the_last_segment_without_dot_git() {
        for (source, name) in [
            ("https://example.com/org/app.git", Some("app")),
            ("https://example.com/org/app/", Some("app")),
            ("git@example.com:app.git", Some("app")),
            ("git@example.com:org/tool", Some("tool")),
            ("file:///srv/repos/lib.git", Some("lib")),
            ("/srv/app", Some("app")),
            ("/", None),
            ("/srv/..", None),
            ("https://example.com/.git", None),
        ] {
            assert_eq!(default_project_name(source), name, "{source}");
        }
    }

    #[test]
    fn project_names_are_checked() {
        assert_eq!(check_project_name("app-1.2_x"), Ok("app-1.2_x"));
        for bad in [
            "",
            "a b",
            ".hidden",
            "-x",
            "a/b",
            "0190d6f0-0000-7000-8000-000000000000",
        ] {
            assert!(check_project_name(bad).is_err(), "{bad:?}");
        }
        assert!(
            check_project_name(&"x".repeat(101))
                .unwrap_err()
                .contains("101")
        );
    }

    #[test]
    fn requests_name_unknown_fields() {
        let err = serde_json::from_str::<NewProject>(r#"{"source":"/x","colour":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`colour`"), "{err}");
        let ok: ProjectUpdate = serde_json::from_str(r#"{"name":"n"}"#).unwrap();
        assert_eq!(ok.source, None);
    }
}
