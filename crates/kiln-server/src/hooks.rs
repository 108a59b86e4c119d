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
/// How long a server's claim on a delivery lasts: processing includes a git fetch.
const CLAIM_FOR: jiff::SignedDuration = jiff::SignedDuration::from_secs(600);
/// How often deliveries nobody processes (a server died with them claimed, or before it
/// claimed them) are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Processes delivery `id` in the background.
pub(crate) fn spawn(state: &AppState, id: String) {
    let state = state.clone();
    tokio::spawn(async move { process_id(&state, &id).await });
}

/// At start-up and then every minute: processes every delivery left `accepted` whose claim
/// (if any) has expired, oldest first — what a previous or another server did not finish.
pub(crate) fn resume(state: &AppState) {
    if state.engine().is_none() {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            match state.store().accepted_deliveries(RESUME_LIMIT).await {
                Ok(pending) => {
                    for d in pending {
                        process_id(&state, &d.id).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "failed to list webhook deliveries to resume");
                }
            }
            if state.engine().is_none_or(|e| e.is_stopped()) {
                return;
            }
            tokio::time::sleep(SWEEP_EVERY).await;
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
    // One server processes it: another's live claim means it is being processed there.
    let Some(engine) = state.engine() else { return };
    let now = jiff::Timestamp::now();
    let until = now.checked_add(CLAIM_FOR).unwrap_or(now);
    // This process's claims carry the engine's id (kept across restarts) and a name of
    // their own: an earlier process of the same server left its claims for this one.
    let stale = format!("{}/", engine.owner());
    let me = format!("{stale}{}", process_name());
    match store.claim_delivery(id, &me, &stale, now, until).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(delivery = id, error = %e, "failed to claim a webhook delivery");
            return;
        }
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

/// Whether the project's mirror holds commit `sha` (a full commit id).
async fn mirror_has(state: &AppState, project: kiln_core::ids::ProjectId, sha: &str) -> bool {
    let dir = crate::fetch::mirror_dir(&state.config().data_dir, project);
    if sha.len() != 40 || !dir.exists() {
        return false;
    }
    let Ok(repo) = kiln_engine::source::GitRepo::open(&dir).await else {
        return false;
    };
    repo.resolve(sha)
        .await
        .is_ok_and(|found| found.eq_ignore_ascii_case(sha))
}

/// A name for this process, drawn once.
fn process_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| uuid::Uuid::now_v7().to_string())
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
    // The mirror is fetched unless it has the event's commit already (a burst of pushes, a
    // redelivery): then every fact the run needs is there, and a fetch would only cost.
    let have = match &event.sha {
        Some(sha) if git && !event.deleted => mirror_has(state, d.project, sha).await,
        _ => false,
    };
    if git
        && !have
        && let Err(e) = crate::fetch::fetch_now(state, d.project).await
    {
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
