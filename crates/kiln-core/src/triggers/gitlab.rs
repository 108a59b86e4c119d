//! GitLab deliveries, reshaped into GitHub's payloads.
//!
//! | `X-Gitlab-Event` | becomes |
//! |---|---|
//! | `Push Hook`, `Tag Push Hook` | `push` |
//! | `Merge Request Hook` | `pull_request`: `open` → `opened`, `reopen` → `reopened`, `close` → `closed`, `merge` → `closed` with `merged: true`, `update` → `synchronize` when it brought commits (`oldrev`), else `edited`; approvals are not run on |
//! | `Release Hook` | `release`: `create` → `published`, `update` → `edited`, `delete` → `deleted` |
//!
//! `System Hook` deliveries are not run on: they come for every project of the instance, so a
//! system hook pointed at one project's hook would start its workflows for pushes elsewhere.
//!
//! What GitLab does not say: whether a push was forced (so `changed_paths` from a forced push
//! may miss files a rewrite dropped), the author of a merge request (only an id), whether a
//! release is a pre-release. A push lists at most 20 commits; `total_commits_count` tells when
//! the list is cut, and then the files are left to git. `actor` is `user_username` (older
//! GitLab versions send only the display name, `user_name`, which is used then).

use serde_json::{Map, Value, json};

use super::github;
use super::json::{Reader, at, str_at};
use super::{HookEvent, NormalizeError, Provider, is_zero_sha};

/// GitLab lists at most this many commits in a push delivery.
const GITLAB_MAX_COMMITS: usize = 20;

pub(super) fn normalize(event: &str, payload: &Value) -> Result<Option<HookEvent>, NormalizeError> {
    match event {
        "Push Hook" | "Tag Push Hook" => push(event, payload).map(Some),
        "Merge Request Hook" => merge_request(event, payload),
        "Release Hook" => release(event, payload).map(Some),
        _ => Ok(None),
    }
}

/// GitHub's `repository` object from GitLab's `project`.
fn repository(payload: &Value) -> Value {
    let Some(project) = at(payload, "project") else {
        return Value::Null;
    };
    let full_name = str_at(project, "path_with_namespace");
    let owner = full_name
        .and_then(|f| f.rsplit_once('/'))
        .map(|(owner, _)| owner);
    let mut repo = Map::new();
    let mut put = |k: &str, v: Option<&Value>| {
        if let Some(v) = v {
            repo.insert(k.to_owned(), v.clone());
        }
    };
    put("id", project.get("id").or(payload.get("project_id")));
    put("name", project.get("name"));
    put("full_name", project.get("path_with_namespace"));
    put("description", project.get("description"));
    put("html_url", project.get("web_url"));
    put("clone_url", project.get("git_http_url"));
    put("ssh_url", project.get("git_ssh_url"));
    put("default_branch", project.get("default_branch"));
    if let Some(level) = project.get("visibility_level").and_then(Value::as_u64) {
        // 20 is public; 0 private, 10 internal.
        repo.insert("private".into(), Value::Bool(level != 20));
    }
    if let Some(owner) = owner {
        repo.insert("owner".into(), json!({ "login": owner, "name": owner }));
    }
    Value::Object(repo)
}

fn original(payload: &Value) -> Value {
    payload.clone()
}

fn push(event: &str, payload: &Value) -> Result<HookEvent, NormalizeError> {
    let r = Reader::new(event, payload);
    let git_ref = r.req_str("ref")?;
    let after = r.req_str("after")?;
    let before = r.opt_str("before")?;
    let checkout_sha = r.opt_str("checkout_sha")?;
    let login = match r.opt_str("user_username")? {
        Some(u) => Some(u),
        None => r.opt_str("user_name")?,
    };
    let commits = r.opt_array("commits")?;
    let total = match at(payload, "total_commits_count") {
        None => None,
        Some(_) => Some(r.req_u64("total_commits_count")? as usize),
    };

    let mut gh_commits = Vec::new();
    for (i, c) in commits.into_iter().flatten().enumerate() {
        let field = |k: &str| c.get(k).cloned().unwrap_or(Value::Null);
        if !c.is_object() {
            return Err(NormalizeError::Invalid {
                event: event.to_owned(),
                field: format!("commits.{i}"),
                expected: "an object",
            });
        }
        gh_commits.push(json!({
            "id": field("id"),
            "message": field("message"),
            "timestamp": field("timestamp"),
            "url": field("url"),
            "author": field("author"),
            "distinct": true,
            "added": field("added"),
            "modified": field("modified"),
            "removed": field("removed"),
        }));
    }
    let head = checkout_sha.unwrap_or(after);
    let head_commit = gh_commits
        .iter()
        .find(|c| c["id"].as_str() == Some(head))
        .cloned()
        .unwrap_or(Value::Null);
    let compare = match (str_at(payload, "project.web_url"), before) {
        (Some(web), Some(before)) => Value::String(format!("{web}/-/compare/{before}...{after}")),
        _ => Value::Null,
    };
    let gh = json!({
        "ref": git_ref,
        "before": before,
        "after": after,
        "created": before.is_some_and(is_zero_sha),
        "deleted": is_zero_sha(after),
        "base_ref": null,
        "compare": compare,
        "commits": gh_commits,
        "head_commit": head_commit,
        "repository": repository(payload),
        "pusher": { "name": login, "email": payload.get("user_email") },
        "sender": {
            "login": login,
            "id": payload.get("user_id"),
            "avatar_url": payload.get("user_avatar"),
        },
        "kiln_original": original(payload),
    });
    let mut ev = github::push(Provider::Gitlab, gh, GITLAB_MAX_COMMITS, total)?;
    // An annotated tag's `after` is the tag object; `checkout_sha` is its commit.
    if !ev.deleted
        && let Some(sha) = checkout_sha
    {
        ev.sha = Some(sha.to_owned());
    }
    Ok(ev)
}

fn merge_request(event: &str, payload: &Value) -> Result<Option<HookEvent>, NormalizeError> {
    let r = Reader::new(event, payload);
    r.req_obj("object_attributes")?;
    let action = r.req_str("object_attributes.action")?;
    let oldrev = r.opt_str("object_attributes.oldrev")?;
    let (action, merged) = match action {
        "open" => ("opened", false),
        "reopen" => ("reopened", false),
        "close" => ("closed", false),
        "merge" => ("closed", true),
        "update" if oldrev.is_some() => ("synchronize", false),
        "update" => ("edited", false),
        // approved, unapproved, approval, unapproval and whatever comes later: reviews, which
        // GitHub tells as `pull_request_review`, an event kiln does not run on.
        _ => return Ok(None),
    };
    let iid = r.req_u64("object_attributes.iid")?;
    let source_branch = r.req_str("object_attributes.source_branch")?;
    let target_branch = r.req_str("object_attributes.target_branch")?;
    let head_sha = r.req_str("object_attributes.last_commit.id")?;
    let login = r.opt_str("user.username")?;
    let attr = |k: &str| at(payload, &format!("object_attributes.{k}")).cloned();
    let gl_state = r.opt_str("object_attributes.state")?;
    // An edit of a merged merge request is still merged.
    let merged = merged || gl_state == Some("merged");
    let state = match gl_state {
        Some("opened") | None if !merged && action != "closed" => "open",
        _ => "closed",
    };
    let draft = attr("draft")
        .or_else(|| attr("work_in_progress"))
        .unwrap_or(Value::Bool(false));
    let labels: Vec<Value> = payload
        .get("labels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("title"))
        .map(|t| json!({ "name": t }))
        .collect();
    let side = |branch: &str, sha: Option<&str>, project: &str| {
        json!({
            "ref": branch,
            "sha": sha,
            "label": branch,
            "repo": {
                "full_name": str_at(payload, &format!("object_attributes.{project}.path_with_namespace")),
                "clone_url": str_at(payload, &format!("object_attributes.{project}.git_http_url")),
                "html_url": str_at(payload, &format!("object_attributes.{project}.web_url")),
            },
        })
    };
    let gh = json!({
        "action": action,
        "number": iid,
        "before": oldrev,
        "after": head_sha,
        "pull_request": {
            "id": attr("id"),
            "number": iid,
            "title": attr("title"),
            "body": attr("description"),
            "state": state,
            "merged": merged,
            "draft": draft,
            "html_url": attr("url"),
            "merge_commit_sha": attr("merge_commit_sha"),
            "labels": labels,
            "head": side(source_branch, Some(head_sha), "source"),
            "base": side(target_branch, None, "target"),
        },
        "repository": repository(payload),
        "sender": {
            "login": login,
            "id": at(payload, "user.id"),
            "avatar_url": at(payload, "user.avatar_url"),
        },
        "kiln_original": original(payload),
    });
    let mut ev = github::pull_request(Provider::Gitlab, gh)?;
    ev.fetch_ref = Some(format!("refs/merge-requests/{iid}/head"));
    Ok(Some(ev))
}

fn release(event: &str, payload: &Value) -> Result<HookEvent, NormalizeError> {
    let r = Reader::new(event, payload);
    let action = match r.req_str("action")? {
        "create" => "published",
        "update" => "edited",
        "delete" => "deleted",
        other => other,
    };
    let tag = r.req_str("tag")?;
    let commit = r.opt_str("commit.id")?;
    let gh = json!({
        "action": action,
        "release": {
            "id": payload.get("id"),
            "tag_name": tag,
            "name": payload.get("name"),
            "body": payload.get("description"),
            "html_url": payload.get("url"),
            "target_commitish": commit,
            "draft": false,
            "created_at": payload.get("created_at"),
            "published_at": payload.get("released_at"),
        },
        "repository": repository(payload),
        "kiln_original": original(payload),
    });
    github::release(Provider::Gitlab, gh)
}
