//! Webhook deliveries turned into the events kiln runs on, and GitHub's rules for which
//! workflows such an event starts.
//!
//! Three pure steps, in the order the hook receiver calls them:
//! 1. [`normalize`] turns one delivery (provider, event header, JSON body) into a [`HookEvent`]
//!    shaped as GitHub would have sent it, whatever the provider — or says it is nothing kiln
//!    runs on (`Ok(None)`), or names the field the payload lacks (`Err`, for a 400).
//! 2. [`matches()`] applies one workflow's `on.<event>` filters (`branches`, `tags`, `paths`,
//!    `types`, their `-ignore`s) to the event, with GitHub's glob [`pattern`]s. When only the
//!    changed files are missing to decide, it answers [`Match::NeedPaths`]: the caller asks git
//!    and calls again with the list.
//! 3. [`github_context`] gives the `github` expression context the event sets.
//!
//! Not here: verifying signatures, reading bodies, git, storing deliveries (the server and the
//! engine do those).
//!
//! # What [`normalize`] accepts
//!
//! | provider | header | runs on | `Ok(None)` for |
//! |---|---|---|---|
//! | GitHub | `X-GitHub-Event` | `push`, `pull_request`, `release`, `create`, `delete` | `ping` and every other event |
//! | Gitea, Gogs | `X-Gitea-Event` / `X-Gogs-Event` | the same five | `pull_request_label`, `pull_request_assign`, … and every other event |
//! | GitLab | `X-Gitlab-Event` | `Push Hook`, `Tag Push Hook` (→ `push`), `Merge Request Hook` (→ `pull_request`), `Release Hook` (→ `release`) | approvals, notes, pipelines, `System Hook`, … |
//! | generic | `X-Kiln-Event` (empty → `push`) | a GitHub-shaped body for any of the five | `ping` and every other name |
//!
//! Gogs deliveries go through [`Provider::Gitea`]: Gogs is where Gitea's payloads come from,
//! and Gitea itself also sends `X-Gogs-Event`.
//!
//! # The payload (`github.event`)
//!
//! - GitHub and generic: the body as it came.
//! - Gitea/Gogs: the body as it came, with GitHub's fields added where Gitea lacks them or
//!   names them differently (`created`, `deleted`, `forced`, `compare`, `sender.login`, the
//!   action `synchronized` → `synchronize`, `updated` → `edited`); Gitea's own fields stay.
//! - GitLab: a new GitHub-shaped object (`ref`, `before`, `after`, `created`, `deleted`,
//!   `commits[].{id,message,timestamp,url,author,added,modified,removed}`, `head_commit`,
//!   `repository.{name,full_name,html_url,clone_url,default_branch,owner.login}`,
//!   `sender.login`, `pull_request.{number,title,body,state,merged,draft,html_url,head,base,…}`,
//!   `release.{tag_name,name,body,…}`), with the delivery as received under `kiln_original`.
//!
//! # Deviations from GitHub
//!
//! - `sha` of a pull request is the head commit; GitHub's `GITHUB_SHA` is its test merge
//!   commit, which only GitHub has. `git_ref` is still `refs/pull/N/merge` as GitHub names it;
//!   [`HookEvent::fetch_ref`] is the provider's ref that holds the head commit.
//! - A push that deletes a ref has `sha: None`; GitHub runs it at the default branch's head
//!   (the caller resolves that). Path filters are not evaluated for it (there are no changed
//!   files), as for tag pushes.
//! - `changed_paths` comes from the payload's commit lists; when those may be incomplete
//!   (forced pushes, truncated lists, a new branch without commits, Gogs without file lists)
//!   it is `None` and the caller diffs `before..sha` with git. GitHub's 300-file cap on the
//!   diff is not copied: every changed file counts.
//! - `!` patterns in `-ignore` lists take names back out of the ignored set (GitHub documents
//!   `!` for `branches`/`tags`/`paths` only).

mod filter;
mod gitea;
mod github;
mod gitlab;
mod json;
pub mod pattern;
mod pick;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value};

pub use filter::{PULL_REQUEST_DEFAULT_TYPES, matches, matches_triggers};

/// Who sent a delivery, which decides how it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Gitlab,
    /// Gitea, Forgejo and Gogs.
    Gitea,
    /// kiln's own scheme: a GitHub-shaped body, the event in `X-Kiln-Event`.
    Generic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Generic => "generic",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider name that is none of `github`, `gitlab`, `gitea`, `generic`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook provider `{0}` (expected github, gitlab, gitea or generic)")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "github" => Ok(Provider::Github),
            "gitlab" => Ok(Provider::Gitlab),
            "gitea" => Ok(Provider::Gitea),
            "generic" => Ok(Provider::Generic),
            other => Err(UnknownProvider(other.to_owned())),
        }
    }
}

/// A delivery turned into what kiln runs on, whatever the provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HookEvent {
    /// Who sent it.
    pub provider: Provider,
    /// GitHub's name: `push`, `pull_request`, `release`, `create`, `delete`.
    pub event_name: String,
    /// `pull_request`/`release` action in GitHub's words (`opened`, `synchronize`, `closed`,
    /// `published`, …).
    pub action: Option<String>,
    /// Full ref: `refs/heads/main`, `refs/tags/v1`, `refs/pull/N/merge` for pull requests;
    /// for `delete`, the default branch (as GitHub does), `None` when the payload names none.
    pub git_ref: Option<String>,
    /// The short name GitHub gives: `main`, `v1`, `N/merge`.
    pub ref_name: Option<String>,
    /// `branch` or `tag`.
    pub ref_type: Option<String>,
    /// The commit to check out (push: `after`; pull request: the head commit; release and
    /// create: the tag's or branch's commit when the payload says it). `None`: resolve
    /// `git_ref` with git (or, for a deletion, the default branch).
    pub sha: Option<String>,
    /// The commit the ref pointed at before (push; a pull request's `synchronize`).
    pub before: Option<String>,
    /// Pull requests: the target branch name.
    pub base_ref: Option<String>,
    /// Pull requests: the source branch name.
    pub head_ref: Option<String>,
    /// Login of who caused the event.
    pub actor: Option<String>,
    /// `owner/name` (GitLab: the path with namespace, which may hold more slashes).
    pub repository: Option<String>,
    /// The repository's default branch, when the payload says it.
    pub default_branch: Option<String>,
    /// Pull requests: the number (GitLab: the merge request's `iid`).
    pub number: Option<u64>,
    /// Pull requests: the ref on the provider that holds the head commit, also for forks
    /// (`refs/pull/N/head`, GitLab `refs/merge-requests/N/head`).
    pub fetch_ref: Option<String>,
    /// Files the push changed, from the payload's commit lists (added + modified + removed,
    /// each once, in order of appearance). `None` when the payload has none or they may be
    /// incomplete: then the caller asks git.
    pub changed_paths: Option<Vec<String>>,
    /// A push that deletes its ref.
    pub deleted: bool,
    /// The payload as GitHub would shape it, for `github.event` (see the module docs). Made
    /// from [`read_github_body`], it holds only the fields kiln reads itself: the caller
    /// keeps the body's text for `github.event`.
    pub payload: Value,
}

/// Why a delivery cannot become an event: the payload lacks what its event needs. Answer 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("the payload is not a JSON object")]
    NotAnObject,
    #[error("the `{event}` payload has no `{field}`")]
    Missing { event: String, field: String },
    #[error("`{field}` of the `{event}` payload is not {expected}")]
    Invalid {
        event: String,
        field: String,
        expected: &'static str,
    },
}

impl NormalizeError {
    /// The payload field at fault, as a path such as `pull_request.head.sha`.
    pub fn field(&self) -> Option<&str> {
        match self {
            NormalizeError::NotAnObject => None,
            NormalizeError::Missing { field, .. } | NormalizeError::Invalid { field, .. } => {
                Some(field)
            }
        }
    }
}

/// Turn one delivery into a [`HookEvent`].
///
/// `event_header` is the provider's event header: GitHub `X-GitHub-Event`, GitLab
/// `X-Gitlab-Event` (`Push Hook`, `Tag Push Hook`, `Merge Request Hook`, `Release Hook`), Gitea
/// `X-Gitea-Event` (or `X-Gogs-Event`), generic `X-Kiln-Event` (empty means `push`).
///
/// `Ok(None)`: a ping, or an event kiln does not run on (see the module docs' table); record
/// the delivery and start nothing. `Err`: the payload lacks a field the event needs.
pub fn normalize(
    provider: Provider,
    event_header: &str,
    payload: Value,
) -> Result<Option<HookEvent>, NormalizeError> {
    if !payload.is_object() {
        return Err(NormalizeError::NotAnObject);
    }
    let header = event_header.trim();
    // GitHub-shaped payloads become `github.event` as they are (moved, not copied); GitLab's
    // and Gitea's are translated into new ones.
    match provider {
        Provider::Github => github::normalize(Provider::Github, header, payload),
        Provider::Generic => {
            let name = if header.is_empty() { "push" } else { header };
            github::normalize(Provider::Generic, name, payload)
        }
        Provider::Gitea => gitea::normalize(header, &payload),
        Provider::Gitlab => gitlab::normalize(header, &payload),
    }
}

/// A GitHub delivery's body as [`normalize`] reads it: checked as JSON throughout (the same
/// errors as [`serde_json::from_str`]), but only the fields kiln reads itself are kept —
/// the normalised event's, the filters', [`github_fields`]' and the pull request commits'.
/// A push's body is kilobytes of which a few dozen bytes are read: parsing it all was
/// most of the work of turning a delivery into runs. The caller keeps `body` itself for
/// `github.event`.
pub fn read_github_body(body: &str) -> serde_json::Result<Value> {
    pick::pick(body, &pick::GITHUB_READS)
}

/// The `pull_request_target` event a pull request delivery also is, as on GitHub: the same
/// payload, action and branches, but run at the base branch (`refs/heads/<base>`, at the
/// payload's `pull_request.base.sha` when it names a commit) — the target repository's own
/// workflows and code, never the pull request's. `None` for any other event.
pub fn pull_request_target(event: &HookEvent) -> Option<HookEvent> {
    if event.event_name != "pull_request" {
        return None;
    }
    let base = event.base_ref.clone()?;
    let sha = pull_request_base(event).map(str::to_owned);
    Some(HookEvent {
        event_name: "pull_request_target".to_owned(),
        git_ref: Some(format!("refs/heads/{base}")),
        ref_name: Some(base),
        ref_type: Some("branch".to_owned()),
        sha,
        fetch_ref: None,
        ..event.clone()
    })
}

/// A pull request's head commit (`pull_request` or `pull_request_target`), for path filters,
/// which judge the pull request's own changes. `None` for other events.
pub fn pull_request_head(event: &HookEvent) -> Option<&str> {
    pull_request_commit(event, "/pull_request/head/sha")
}

/// A pull request's base commit, as the payload names it. `None` for other events.
pub fn pull_request_base(event: &HookEvent) -> Option<&str> {
    pull_request_commit(event, "/pull_request/base/sha")
}

fn pull_request_commit<'e>(event: &'e HookEvent, pointer: &str) -> Option<&'e str> {
    if !matches!(
        event.event_name.as_str(),
        "pull_request" | "pull_request_target"
    ) {
        return None;
    }
    event
        .payload
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| is_full_sha(s))
}

/// Whether a workflow runs for an event, and if not, why (for the delivery record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    Yes,
    /// It does not; the reason reads as a sentence ("branch `dev` matches no pattern of
    /// `branches`").
    No(String),
    /// Only the changed files are missing to decide: the workflow has `paths`/`paths-ignore`
    /// and neither the event nor the caller has the list. Ask git, then call again.
    NeedPaths,
}

/// The `github` context fields this event sets: `event_name`, `event` (the payload), `ref`,
/// `ref_name`, `ref_type`, `sha`, `before`, `actor`, `triggering_actor`, `repository`,
/// `repository_owner`, `repository_id`, `repository_owner_id`, `head_ref`, `base_ref`.
///
/// Unknown values are empty strings, as GitHub leaves `head_ref`/`base_ref` outside pull
/// requests. The caller adds what the run knows (`run_id`, `workspace`, `server_url`, …) and
/// overwrites `sha` (and `ref` for deletions) once it has resolved them with git.
pub fn github_context(event: &HookEvent) -> Map<String, Value> {
    let mut m = github_fields(event);
    m.insert("event".into(), event.payload.clone());
    m
}

/// [`github_context`] but `event`: for a caller that passes the payload on by itself (a
/// webhook's run takes it as its trigger's payload), so it is not copied.
pub fn github_fields(event: &HookEvent) -> Map<String, Value> {
    let s = |v: &Option<String>| Value::String(v.clone().unwrap_or_default());
    let mut m = Map::new();
    m.insert("event_name".into(), Value::String(event.event_name.clone()));
    m.insert("ref".into(), s(&event.git_ref));
    m.insert("ref_name".into(), s(&event.ref_name));
    m.insert("ref_type".into(), s(&event.ref_type));
    m.insert("sha".into(), s(&event.sha));
    m.insert("before".into(), s(&event.before));
    m.insert("actor".into(), s(&event.actor));
    m.insert("triggering_actor".into(), s(&event.actor));
    m.insert("repository".into(), s(&event.repository));
    let owner = event
        .repository
        .as_deref()
        .and_then(|r| r.rsplit_once('/'))
        .map(|(owner, _)| owner.to_owned());
    m.insert("repository_owner".into(), s(&owner));
    let id = |v: Option<&Value>| match v {
        Some(Value::Number(n)) => Value::String(n.to_string()),
        Some(Value::String(s)) => Value::String(s.clone()),
        _ => Value::String(String::new()),
    };
    m.insert(
        "repository_id".into(),
        id(event.payload.pointer("/repository/id")),
    );
    m.insert(
        "repository_owner_id".into(),
        id(event.payload.pointer("/repository/owner/id")),
    );
    m.insert("head_ref".into(), s(&event.head_ref));
    m.insert("base_ref".into(), s(&event.base_ref));
    m
}

/// `refs/heads/x` → (`x`, `branch`), `refs/tags/x` → (`x`, `tag`).
fn split_ref(git_ref: &str) -> Option<(&str, &'static str)> {
    if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        Some((b, "branch"))
    } else {
        git_ref.strip_prefix("refs/tags/").map(|t| (t, "tag"))
    }
}

/// A git object name of only zeros: the "no commit" of a ref created or deleted.
fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}
