//! GitHub's rules for whether an event's filters (`on.<event>.branches`, `tags`, `paths`,
//! `types` and the `-ignore`s) let a workflow run.

use super::pattern::{PatternError, PatternList};
use super::{HookEvent, Match, split_ref};
use crate::workflow::{EventFilter, Triggers};

/// The activity types a `pull_request` (or `pull_request_target`) workflow without `types`
/// runs for.
pub const PULL_REQUEST_DEFAULT_TYPES: [&str; 3] = ["opened", "synchronize", "reopened"];

/// Whether a workflow whose `on:` is `triggers` runs for `event`: [`matches()`] with the
/// filter of `event.event_name`, or `No` when the workflow does not list that event.
pub fn matches_triggers(
    event: &HookEvent,
    triggers: &Triggers,
    changed_paths: Option<&[String]>,
) -> Match {
    match triggers.events.get(&event.event_name) {
        Some(filter) => matches(event, filter, changed_paths),
        None => Match::No(format!(
            "the workflow does not run on `{}`",
            event.event_name
        )),
    }
}

/// Whether the filters of one `on.<event>` entry let `event` run the workflow.
///
/// `filter` is the entry of the event's own name (`on.push` for a push). `changed_paths` is
/// the caller's list of changed files when the event had none (`event.changed_paths` is used
/// otherwise); with `paths` filters and no list at all the answer is [`Match::NeedPaths`].
/// Ref and type filters are decided first, so `NeedPaths` means "only the files are left".
///
/// The rules, as GitHub documents them:
/// - push: a branch push is judged by `branches`/`branches-ignore`, a tag push by
///   `tags`/`tags-ignore`; a workflow that filters only tags does not run for branch pushes
///   and the other way round. Path filters apply to branch pushes, not to tag pushes (nor, in
///   kiln, to deletions).
/// - pull_request: `types` (default `opened`, `synchronize`, `reopened`), `branches` against
///   the base branch, then paths.
/// - release: `types` (default: all); draft releases do not run `created`, `edited`,
///   `deleted`.
/// - others (`create`, `delete`): `types` when the event has an action.
/// - `paths`: runs when at least one changed file is included; `paths-ignore`: skipped only
///   when every changed file is ignored (an empty change set is not "all ignored"). Both
///   present: both must let it run.
///
/// For [`Match::NeedPaths`], GitHub's diffs are: a push, `before..sha` (two dots; for a new
/// branch, against the default branch); a pull request, `base...head` (three dots: from the
/// merge base).
pub fn matches(event: &HookEvent, filter: &EventFilter, changed_paths: Option<&[String]>) -> Match {
    match decide(event, filter, changed_paths) {
        Ok(m) => m,
        Err(e) => Match::No(e.to_string()),
    }
}

fn decide(
    event: &HookEvent,
    filter: &EventFilter,
    changed_paths: Option<&[String]>,
) -> Result<Match, PatternError> {
    if let Some(no) = types(event, filter) {
        return Ok(no);
    }
    match event.event_name.as_str() {
        "push" => {
            let Some(git_ref) = event.git_ref.as_deref() else {
                return Ok(Match::No("the push names no ref".to_owned()));
            };
            match split_ref(git_ref) {
                Some((branch, "branch")) => {
                    if let Some(no) = refs(
                        branch,
                        "branch",
                        (&filter.branches, "branches"),
                        (&filter.branches_ignore, "branches-ignore"),
                        &filter.tags,
                        &filter.tags_ignore,
                        "tags",
                    )? {
                        return Ok(no);
                    }
                    if event.deleted {
                        return Ok(Match::Yes);
                    }
                    paths(event, filter, changed_paths)
                }
                Some((tag, _)) => Ok(refs(
                    tag,
                    "tag",
                    (&filter.tags, "tags"),
                    (&filter.tags_ignore, "tags-ignore"),
                    &filter.branches,
                    &filter.branches_ignore,
                    "branches",
                )?
                .unwrap_or(Match::Yes)),
                None => Ok(Match::No(format!(
                    "`{git_ref}` is neither a branch nor a tag"
                ))),
            }
        }
        "pull_request" | "pull_request_target" => {
            let Some(base) = event.base_ref.as_deref() else {
                return Ok(Match::No(
                    "the pull request names no base branch".to_owned(),
                ));
            };
            if let Some(no) = refs(
                base,
                "base branch",
                (&filter.branches, "branches"),
                (&filter.branches_ignore, "branches-ignore"),
                &[],
                &[],
                "tags",
            )? {
                return Ok(no);
            }
            paths(event, filter, changed_paths)
        }
        _ => Ok(Match::Yes),
    }
}

/// `Some(No)` when `types` (or its default) leaves the event's action out.
fn types(event: &HookEvent, filter: &EventFilter) -> Option<Match> {
    let action = event.action.as_deref()?;
    let name = event.event_name.as_str();
    let pr = matches!(name, "pull_request" | "pull_request_target");
    if filter.types.is_empty() {
        if pr && !PULL_REQUEST_DEFAULT_TYPES.contains(&action) {
            return Some(Match::No(format!(
                "`{action}` is not one of the default pull_request types (opened, synchronize, reopened)"
            )));
        }
    } else if !filter.types.iter().any(|t| t == action) {
        return Some(Match::No(format!(
            "`{action}` is not one of `types` ({})",
            filter.types.join(", ")
        )));
    }
    if name == "release"
        && matches!(action, "created" | "edited" | "deleted")
        && event
            .payload
            .pointer("/release/draft")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
    {
        return Some(Match::No(format!(
            "GitHub does not run workflows for `{action}` on a draft release"
        )));
    }
    None
}

/// The ref filters of one kind (`branches`/`branches-ignore` for a branch) for `name`;
/// `others` are the other kind's filters, which alone keep this kind out.
fn refs(
    name: &str,
    what: &str,
    (include, include_key): (&[String], &str),
    (ignore, ignore_key): (&[String], &str),
    others: &[String],
    others_ignore: &[String],
    others_key: &str,
) -> Result<Option<Match>, PatternError> {
    if !include.is_empty() {
        let list = PatternList::parse(include)?;
        return Ok(match list.decide(name) {
            Some((_, true)) => None,
            Some((p, false)) => Some(Match::No(format!(
                "{what} `{name}` is excluded by `{p}` in `{include_key}`"
            ))),
            None => Some(Match::No(format!(
                "{what} `{name}` matches no pattern of `{include_key}`"
            ))),
        });
    }
    if !ignore.is_empty() {
        let list = PatternList::parse(ignore)?;
        return Ok(match list.decide(name) {
            Some((p, true)) => Some(Match::No(format!(
                "{what} `{name}` is ignored by `{p}` in `{ignore_key}`"
            ))),
            _ => None,
        });
    }
    if !others.is_empty() || !others_ignore.is_empty() {
        return Ok(Some(Match::No(format!(
            "the workflow filters {others_key} only, so a {what} push does not run it"
        ))));
    }
    Ok(None)
}

fn paths(
    event: &HookEvent,
    filter: &EventFilter,
    changed_paths: Option<&[String]>,
) -> Result<Match, PatternError> {
    if filter.paths.is_empty() && filter.paths_ignore.is_empty() {
        return Ok(Match::Yes);
    }
    let include = PatternList::parse(&filter.paths)?;
    let ignore = PatternList::parse(&filter.paths_ignore)?;
    let Some(files) = changed_paths.or(event.changed_paths.as_deref()) else {
        return Ok(Match::NeedPaths);
    };
    if !include.is_empty() && !files.iter().any(|f| include.includes(f)) {
        return Ok(Match::No(if files.is_empty() {
            "no file changed, so none matches `paths`".to_owned()
        } else {
            format!(
                "none of the {} changed file(s) matches `paths` (first: `{}`)",
                files.len(),
                files[0]
            )
        }));
    }
    // An empty change set is not "all ignored": nothing was there to ignore.
    if !ignore.is_empty() && !files.is_empty() && files.iter().all(|f| ignore.includes(f)) {
        return Ok(Match::No(format!(
            "all {} changed file(s) are ignored by `paths-ignore`",
            files.len()
        )));
    }
    Ok(Match::Yes)
}
