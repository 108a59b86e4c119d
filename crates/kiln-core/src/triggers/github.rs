//! GitHub's deliveries, which are already in the shape kiln runs on; also the generic
//! provider's and, once reshaped, Gitea's.

use serde_json::Value;

use super::json::{Reader, paths_of_commits, str_at};
use super::{HookEvent, NormalizeError, Provider, is_full_sha, is_zero_sha, split_ref};

/// GitHub caps a push delivery's `commits` at this many; a full list may be cut.
const GITHUB_MAX_COMMITS: usize = 2048;

impl HookEvent {
    pub(super) fn new(provider: Provider, event_name: &str, payload: Value) -> HookEvent {
        HookEvent {
            provider,
            event_name: event_name.to_owned(),
            action: None,
            git_ref: None,
            ref_name: None,
            ref_type: None,
            sha: None,
            before: None,
            base_ref: None,
            head_ref: None,
            actor: None,
            repository: None,
            default_branch: None,
            number: None,
            fetch_ref: None,
            changed_paths: None,
            deleted: false,
            payload,
        }
    }
}

pub(super) fn normalize(
    provider: Provider,
    event: &str,
    payload: Value,
) -> Result<Option<HookEvent>, NormalizeError> {
    match event {
        "push" => push(provider, payload, GITHUB_MAX_COMMITS, None).map(Some),
        "pull_request" => pull_request(provider, payload).map(Some),
        "release" => release(provider, payload).map(Some),
        "create" => create(provider, payload).map(Some),
        "delete" => delete(provider, payload).map(Some),
        // `ping` and everything else: nothing runs.
        _ => Ok(None),
    }
}

/// Fields every event shares: who, which repository.
fn common(ev: &mut HookEvent) {
    let first = |paths: &[&str]| {
        paths
            .iter()
            .find_map(|p| str_at(&ev.payload, p).filter(|s| !s.is_empty()))
            .map(str::to_owned)
    };
    ev.actor = first(&["sender.login", "sender.username", "pusher.name"]);
    ev.repository = first(&["repository.full_name"]);
    ev.default_branch = first(&[
        "repository.default_branch",
        "repository.master_branch",
        "master_branch",
    ]);
}

/// A push; `max_commits` is how many commits the provider puts in a delivery at most (a list
/// that long may be cut, so the changed files are left to git), `total_commits` how many the
/// push had when the provider says it (Gitea's `total_commits`).
pub(super) fn push(
    provider: Provider,
    payload: Value,
    max_commits: usize,
    total_commits: Option<usize>,
) -> Result<HookEvent, NormalizeError> {
    let mut ev = HookEvent::new(provider, "push", payload);
    common(&mut ev);
    let r = Reader::new("push", &ev.payload);
    let git_ref = r.req_str("ref")?.to_owned();
    let after = r.req_str("after")?.to_owned();
    let before = r.opt_str("before")?.map(str::to_owned);
    let deleted = r.opt_bool("deleted")?.unwrap_or(false) || is_zero_sha(&after);
    let created =
        r.opt_bool("created")?.unwrap_or(false) || before.as_deref().is_some_and(is_zero_sha);
    let forced = r.opt_bool("forced")?.unwrap_or(false);
    let commits = r.opt_array("commits")?;
    let total = total_commits;

    ev.changed_paths = match commits {
        _ if deleted => Some(Vec::new()),
        // A forced push may drop commits whose files the list does not show.
        _ if forced => None,
        None => None,
        Some(list) if created && list.is_empty() => None,
        Some(list) if total.is_some_and(|t| t > list.len()) => None,
        Some(list) if total.is_none() && list.len() >= max_commits => None,
        Some(list) => paths_of_commits(list),
    };
    if let Some((name, kind)) = split_ref(&git_ref) {
        ev.ref_name = Some(name.to_owned());
        ev.ref_type = Some(kind.to_owned());
    }
    ev.git_ref = Some(git_ref);
    ev.sha = (!deleted).then_some(after);
    ev.before = before.filter(|b| !is_zero_sha(b));
    ev.deleted = deleted;
    Ok(ev)
}

pub(super) fn pull_request(
    provider: Provider,
    payload: Value,
) -> Result<HookEvent, NormalizeError> {
    let mut ev = HookEvent::new(provider, "pull_request", payload);
    common(&mut ev);
    let r = Reader::new("pull_request", &ev.payload);
    let action = r.req_str("action")?.to_owned();
    r.req_obj("pull_request")?;
    let number = match r.req_u64("number") {
        Ok(n) => n,
        Err(_) => r.req_u64("pull_request.number")?,
    };
    let head_sha = r.req_str("pull_request.head.sha")?.to_owned();
    let head_ref = r.req_str("pull_request.head.ref")?.to_owned();
    let base_ref = r.req_str("pull_request.base.ref")?.to_owned();
    let before = r.opt_str("before")?.map(str::to_owned);

    ev.action = Some(action);
    ev.number = Some(number);
    ev.git_ref = Some(format!("refs/pull/{number}/merge"));
    ev.ref_name = Some(format!("{number}/merge"));
    ev.ref_type = Some("branch".to_owned());
    ev.fetch_ref = Some(format!("refs/pull/{number}/head"));
    ev.sha = Some(head_sha);
    ev.before = before.filter(|b| !is_zero_sha(b));
    ev.head_ref = Some(head_ref);
    ev.base_ref = Some(base_ref);
    Ok(ev)
}

pub(super) fn release(provider: Provider, payload: Value) -> Result<HookEvent, NormalizeError> {
    let mut ev = HookEvent::new(provider, "release", payload);
    common(&mut ev);
    let r = Reader::new("release", &ev.payload);
    let action = r.req_str("action")?.to_owned();
    r.req_obj("release")?;
    let tag = r.req_str("release.tag_name")?.to_owned();
    // `target_commitish` is a branch name or a commit; only a commit tells the tag's target.
    let sha = r
        .opt_str("release.target_commitish")?
        .filter(|s| is_full_sha(s))
        .map(str::to_owned);
    ev.action = Some(action);
    ev.git_ref = Some(format!("refs/tags/{tag}"));
    ev.ref_name = Some(tag);
    ev.ref_type = Some("tag".to_owned());
    ev.sha = sha;
    Ok(ev)
}

/// `ref` and `ref_type` of `create`/`delete`: a short name and `branch` or `tag`.
fn short_ref<'a>(r: &Reader<'a>) -> Result<(&'a str, &'static str), NormalizeError> {
    let name = r.req_str("ref")?;
    let kind = match r.req_str("ref_type")? {
        "branch" => "branch",
        "tag" => "tag",
        _ => {
            return Err(NormalizeError::Invalid {
                event: r.event.to_owned(),
                field: "ref_type".to_owned(),
                expected: "`branch` or `tag`",
            });
        }
    };
    // Some senders give the full ref.
    let name = name
        .strip_prefix(if kind == "branch" {
            "refs/heads/"
        } else {
            "refs/tags/"
        })
        .unwrap_or(name);
    Ok((name, kind))
}

fn full_ref(name: &str, kind: &str) -> String {
    match kind {
        "tag" => format!("refs/tags/{name}"),
        _ => format!("refs/heads/{name}"),
    }
}

pub(super) fn create(provider: Provider, payload: Value) -> Result<HookEvent, NormalizeError> {
    let mut ev = HookEvent::new(provider, "create", payload);
    common(&mut ev);
    let r = Reader::new("create", &ev.payload);
    let (name, kind) = short_ref(&r)?;
    // GitHub's payload has no commit; Gitea's has `sha`.
    let sha = r
        .opt_str("sha")?
        .filter(|s| is_full_sha(s) && !is_zero_sha(s))
        .map(str::to_owned);
    ev.git_ref = Some(full_ref(name, kind));
    ev.ref_name = Some(name.to_owned());
    ev.ref_type = Some(kind.to_owned());
    ev.sha = sha;
    Ok(ev)
}

/// GitHub runs `delete` workflows at the default branch: `GITHUB_REF` is the default branch,
/// not the deleted ref (which stays in `github.event.ref`).
pub(super) fn delete(provider: Provider, payload: Value) -> Result<HookEvent, NormalizeError> {
    let mut ev = HookEvent::new(provider, "delete", payload);
    common(&mut ev);
    let r = Reader::new("delete", &ev.payload);
    short_ref(&r)?;
    if let Some(default) = ev.default_branch.clone() {
        ev.git_ref = Some(full_ref(&default, "branch"));
        ev.ref_name = Some(default);
        ev.ref_type = Some("branch".to_owned());
    }
    Ok(ev)
}
