//! Gitea (and Forgejo, and Gogs): GitHub-shaped deliveries with a few names of their own.
//!
//! Differences from GitHub this reads through:
//! - push: no `created`/`deleted`/`forced` flags (created and deleted are read from the zero
//!   commit; forced is unknown and left out), `compare_url` for `compare`, `pusher.login` for
//!   `pusher.name`; the commit list is cut to a few commits (`UI.FEED_MAX_COMMIT_NUM`, 5 by
//!   default), and newer versions say the real count in `total_commits`; Gogs has no file
//!   lists in its commits.
//! - pull_request: the action `synchronized` (GitHub: `synchronize`); labels, assignees,
//!   milestones, comments and reviews come as events of their own (`pull_request_label`, …),
//!   which kiln does not run on.
//! - release: the action `updated` (GitHub: `edited`).
//! - create: the commit is in `sha`.

use serde_json::Value;

use super::github;
use super::{HookEvent, NormalizeError, Provider, is_zero_sha};

/// Gitea's default `UI.FEED_MAX_COMMIT_NUM`: a push delivery lists at most this many commits.
const GITEA_MAX_COMMITS: usize = 5;

pub(super) fn normalize(event: &str, payload: &Value) -> Result<Option<HookEvent>, NormalizeError> {
    if !matches!(
        event,
        "push" | "pull_request" | "release" | "create" | "delete"
    ) {
        return Ok(None);
    }
    let mut p = payload.clone();
    let Some(obj) = p.as_object_mut() else {
        return Err(NormalizeError::NotAnObject);
    };
    // Gitea has both `login` and `username`; Gogs's older payloads only `username`.
    if let Some(sender) = obj.get_mut("sender").and_then(Value::as_object_mut)
        && sender.get("login").is_none_or(Value::is_null)
        && let Some(u) = sender.get("username").cloned()
    {
        sender.insert("login".into(), u);
    }
    match event {
        "push" => {
            let zero = |k: &str| obj.get(k).and_then(Value::as_str).is_some_and(is_zero_sha);
            let (created, deleted) = (zero("before"), zero("after"));
            obj.entry("created").or_insert(Value::Bool(created));
            obj.entry("deleted").or_insert(Value::Bool(deleted));
            if let Some(url) = obj.get("compare_url").cloned() {
                obj.entry("compare").or_insert(url);
            }
            if let Some(pusher) = obj.get_mut("pusher").and_then(Value::as_object_mut)
                && pusher.get("name").is_none_or(Value::is_null)
                && let Some(login) = pusher.get("login").or(pusher.get("username")).cloned()
            {
                pusher.insert("name".into(), login);
            }
            let total = obj
                .get("total_commits")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            github::push(Provider::Gitea, p, GITEA_MAX_COMMITS, total).map(Some)
        }
        "pull_request" => {
            if obj.get("action").and_then(Value::as_str) == Some("synchronized") {
                obj.insert("action".into(), "synchronize".into());
            }
            github::pull_request(Provider::Gitea, p).map(Some)
        }
        "release" => {
            if obj.get("action").and_then(Value::as_str) == Some("updated") {
                obj.insert("action".into(), "edited".into());
            }
            github::release(Provider::Gitea, p).map(Some)
        }
        "create" => github::create(Provider::Gitea, p).map(Some),
        "delete" => github::delete(Provider::Gitea, p).map(Some),
        _ => Ok(None),
    }
}
