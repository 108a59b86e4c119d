//! Processing recorded webhook deliveries, after the hook route has answered
//! (`routes/hooks.rs`): the delivery becomes an event (`kiln_core::triggers::normalize`), a
//! git project's mirror is fetched, the workflows whose `on:` takes the event and whose
//! filters match it are picked (changed files come from `git diff before..sha` in the mirror
//! when the payload's lists cannot be trusted), and one run per workflow starts at the
//! event's commit with the event's `github` context. The delivery is then recorded as
//! `processed` with its runs, or `ignored`/`failed` with the reason.
//!
//! At start-up [`resume`] processes the deliveries a previous server recorded and never
//! processed. A server without an engine leaves them `accepted` for one that has.
//!
//! Limits: a folder project runs from its folder as it is — there is no checkout of the
//! event's commit — and its path filters are not applied (there is no history to diff).
//! Two replicas starting together may both process a delivery left `accepted`.
//!
//! Not here: HTTP and signatures (`routes/hooks.rs`), SQL (the store's).

use kiln_core::triggers::{self, HookEvent, Match, Provider};
use kiln_engine::source::GitRepo;
use kiln_engine::{EventTarget, TriggerRequest};
use kiln_proto::{DeliveryStatus, DeliveryView, HookProvider, ProjectKind};
use kiln_store::DeliveryOutcome;
use serde_json::Value;

use crate::state::AppState;

/// Deliveries resumed at start-up, at most.
const RESUME_LIMIT: u32 = 1000;

/// Processes delivery `id` in the background.
pub(crate) fn spawn(state: &AppState, id: String) {
    let state = state.clone();
    tokio::spawn(async move { process_id(&state, &id).await });
}

/// At start-up: processes every delivery left `accepted`, oldest first.
pub(crate) fn resume(state: &AppState) {
    if state.engine().is_none() {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let pending = match state.store().accepted_deliveries(RESUME_LIMIT).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "failed to list webhook deliveries to resume");
                return;
            }
        };
        for d in pending {
            process_id(&state, &d.id).await;
        }
    });
}

async fn process_id(state: &AppState, id: &str) {
    if state.engine().is_none() {
        tracing::warn!(
            delivery = id,
            "no engine: the webhook delivery stays accepted"
        );
        return;
    }
    let store = state.store();
    let (delivery, payload) = match (
        store.get_delivery(id).await,
        store.delivery_payload(id).await,
    ) {
        (Ok(Some(d)), Ok(Some(p))) => (d, p),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(delivery = id, error = %e, "failed to read a webhook delivery");
            return;
        }
        _ => return,
    };
    if delivery.status != DeliveryStatus::Accepted {
        return;
    }
    let outcome = process(state, &delivery, &payload).await;
    tracing::info!(
        delivery = id,
        project = %delivery.project,
        status = %outcome.status,
        runs = outcome.runs.len(),
        reason = outcome.reason.as_deref().unwrap_or(""),
        "webhook delivery processed"
    );
    if let Err(e) = store.finish_delivery(id, &outcome).await {
        tracing::warn!(delivery = id, error = %e, "failed to record a processed webhook delivery");
    }
}

fn ignored(reason: impl Into<String>) -> DeliveryOutcome {
    DeliveryOutcome {
        status: DeliveryStatus::Ignored,
        reason: Some(reason.into()),
        runs: Vec::new(),
    }
}

fn failed(reason: impl Into<String>) -> DeliveryOutcome {
    DeliveryOutcome {
        status: DeliveryStatus::Failed,
        reason: Some(reason.into()),
        runs: Vec::new(),
    }
}

fn provider(p: HookProvider) -> Provider {
    match p {
        HookProvider::Github => Provider::Github,
        HookProvider::Gitlab => Provider::Gitlab,
        HookProvider::Gitea => Provider::Gitea,
        HookProvider::Generic => Provider::Generic,
    }
}

async fn process(state: &AppState, d: &DeliveryView, payload: &[u8]) -> DeliveryOutcome {
    let Some(engine) = state.engine() else {
        return failed("the server has no engine to run workflows");
    };
    let body: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return failed(format!("the body is not JSON: {e}")),
    };
    let event = match triggers::normalize(provider(d.provider), &d.event, &body) {
        Ok(Some(event)) => event,
        Ok(None) => {
            return ignored(format!(
                "kiln runs nothing on the {} event `{}`",
                d.provider, d.event
            ));
        }
        Err(e) => return failed(format!("the payload cannot be read: {e}")),
    };
    let record = match state.store().project_record(d.project).await {
        Ok(Some(r)) if !r.is_archived() => r,
        Ok(_) => return ignored("the project has been removed"),
        Err(e) => return failed(format!("the store failed: {e}")),
    };
    let git = record.kind() == ProjectKind::Git;
    if git && let Err(e) = crate::fetch::fetch_now(state, d.project).await {
        return failed(format!("could not fetch the project: {e}"));
    }
    // A deleted ref has no commit: it runs at the default branch's head, as on GitHub.
    let (git_ref, sha) = if event.deleted || event.sha.is_none() {
        (None, None)
    } else {
        (event.git_ref.clone(), event.sha.clone())
    };
    let (workflows, at_sha) = match engine
        .workflows_at(d.project, git_ref.as_deref(), sha.as_deref())
        .await
    {
        Ok(w) => w,
        Err(e) => {
            return failed(format!(
                "could not read the workflows at the event's commit: {e}"
            ));
        }
    };
    let mut chosen = Vec::new();
    let mut reasons = Vec::new();
    let mut changed: Option<Vec<String>> = None;
    for wf in &workflows {
        let mut answer = triggers::matches_triggers(&event, &wf.on, changed.as_deref());
        if answer == Match::NeedPaths {
            if !git {
                // A folder has no history to diff: path filters are not applied.
                answer = Match::Yes;
            } else {
                match changed_paths(state, d, &event, &at_sha).await {
                    Ok(paths) => {
                        answer = triggers::matches_triggers(&event, &wf.on, Some(&paths));
                        changed = Some(paths);
                    }
                    Err(e) => return failed(format!("could not list the changed files: {e}")),
                }
            }
        }
        match answer {
            Match::Yes => chosen.push(wf.file.clone()),
            Match::No(why) => reasons.push(format!("{}: {why}", wf.file)),
            Match::NeedPaths => reasons.push(format!("{}: the changed files are unknown", wf.file)),
        }
    }
    if chosen.is_empty() {
        if workflows.is_empty() {
            return ignored("the project has no workflows");
        }
        return ignored(format!(
            "no workflow runs on this event ({})",
            reasons.join("; ")
        ));
    }
    let mut github = triggers::github_context(&event);
    // What the event leaves unknown (a deletion's sha) the engine fills in.
    github.retain(|_, v| v.as_str() != Some(""));
    let request = TriggerRequest {
        project: d.project,
        event: event.event_name.clone(),
        git_ref,
        payload: Some(event.payload.clone()),
        ..TriggerRequest::default()
    };
    let target = EventTarget {
        sha,
        workflows: Some(chosen),
        github,
    };
    match engine.trigger_at(request, target).await {
        Ok(runs) => DeliveryOutcome {
            status: DeliveryStatus::Processed,
            reason: None,
            runs: runs.iter().map(|r| r.id).collect(),
        },
        Err(e) => failed(format!("could not start the runs: {e}")),
    }
}

/// The files the push changed, from the mirror: `git diff --name-only before..sha` (every
/// file of `sha` when `before` is unknown or all zeros).
async fn changed_paths(
    state: &AppState,
    d: &DeliveryView,
    event: &HookEvent,
    sha: &str,
) -> Result<Vec<String>, String> {
    let dir = crate::fetch::mirror_dir(&state.config().data_dir, d.project);
    let repo = GitRepo::open(&dir).await.map_err(|e| e.to_string())?;
    let before = event.before.as_deref().unwrap_or("");
    let before = if before.is_empty() {
        "0000000000000000000000000000000000000000"
    } else {
        before
    };
    repo.changed_paths(before, sha)
        .await
        .map_err(|e| e.to_string())
}
