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

use axum::body::Bytes;
use indexmap::IndexMap;
use kiln_core::ids::ProjectId;
use kiln_core::triggers::{self, HookEvent, Match, Provider};
use kiln_engine::source::GitRepo;
use kiln_engine::{EventTarget, Prepared, TriggerRequest};
use kiln_proto::{DeliveryStatus, DeliveryView, HookProvider, ProjectKind};
use kiln_store::{DeliveryClaim, DeliveryOutcome};
use tokio::sync::mpsc;

use crate::state::AppState;

/// Deliveries resumed at start-up, at most.
const RESUME_LIMIT: u32 = 1000;
/// Deliveries processed together, at most: claimed (or stored from the intake journal) in
/// one transaction, their runs created in one, their outcomes recorded in one. Since
/// acknowledgements no longer wait for SQLite's writer (the intake journal), 256 turned a
/// stream of pushes into runs 4–26% faster than 64 did (3 pairs, 2 cores).
const BATCH: usize = 256;
/// How long a batch waits for more deliveries while they keep coming (see [`drain`]).
/// Measured under a stream of signed pushes on 2 cores, before the intake journal: 3 ms
/// took the CPU per delivery down 5–10%, as 10 ms did, but 10 ms doubled the
/// acknowledgement p99 (a bigger batch held SQLite's writer longer while acknowledgements
/// waited for it).
const LINGER: std::time::Duration = std::time::Duration::from_millis(3);
/// Deliveries keep coming when one arrives within this of the last batch's end.
const STREAM: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a server's claim on a delivery lasts: processing includes a git fetch.
const CLAIM_FOR: jiff::SignedDuration = jiff::SignedDuration::from_secs(600);
/// How often deliveries nobody processes (a server died with them claimed, or before it
/// claimed them) are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The deliveries recorded (claimed by this process as they were: [`claim`]) and waiting to
/// be processed, with their payloads, in the order they came: one task takes whatever has
/// gathered while it processed the last batch, so a burst of pushes is read, matched and
/// turned into runs in a few transactions rather than several each.
#[derive(Default)]
pub(crate) struct Queue(std::sync::OnceLock<mpsc::UnboundedSender<(DeliveryView, Body)>>);

/// A delivery's body on its way to processing.
pub(crate) enum Body {
    /// As it came.
    Raw(Bytes),
    /// As the intake journal packed it.
    Packed(kiln_store::PackedBody),
}

/// The claim the receiver records a new delivery under, so that it can hand it straight to
/// [`spawn`]: this process's, for as long as processing may take. `None`: this server has
/// no engine, and leaves deliveries for one that has.
pub(crate) fn claim(state: &AppState) -> Option<DeliveryClaim> {
    let engine = state.engine()?;
    let now = jiff::Timestamp::now();
    Some(DeliveryClaim {
        owner: claimant(engine),
        until: now.checked_add(CLAIM_FOR).unwrap_or(now),
    })
}

/// This process's claims carry the engine's id (kept across restarts) and a name of their
/// own: an earlier process of the same server left its claims for this one.
fn claimant(engine: &kiln_engine::Engine) -> String {
    format!("{}/{}", engine.owner(), process_name())
}

/// Processes `delivery`, recorded under [`claim`], in the background (see [`Queue`]).
pub(crate) fn spawn(state: &AppState, delivery: DeliveryView, payload: Body) {
    if state.engine().is_none() {
        tracing::warn!(
            delivery = delivery.id,
            "no engine: the webhook delivery stays accepted"
        );
        return;
    }
    let sender = state.hook_queue().0.get_or_init(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(state.downgrade(), rx));
        tx
    });
    // The receiver lives as long as the state: a send cannot fail while `state` does.
    let _ = sender.send((delivery, payload));
}

/// The queue's task. It holds the state weakly: once the server is gone, so is the
/// queue's sender, and the task ends.
///
/// While deliveries keep coming (the last batch ended less than [`STREAM`] ago), a batch
/// waits [`LINGER`] for more before it is processed: each batch costs a few
/// transactions and a turn of the engine whatever its size, so a stream of pushes is turned
/// into runs in batches of several rather than ones and twos. A delivery after a quiet spell is
/// processed at once.
async fn drain(
    state: crate::state::WeakState,
    mut rx: mpsc::UnboundedReceiver<(DeliveryView, Body)>,
) {
    let mut last_batch: Option<tokio::time::Instant> = None;
    let mut runner: Option<mpsc::Sender<Read>> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        take_ready(&mut rx, &mut batch);
        if batch.len() < BATCH && last_batch.is_some_and(|at| at.elapsed() < STREAM) {
            // Asleep, not woken by each delivery that comes meanwhile.
            tokio::time::sleep(LINGER).await;
            take_ready(&mut rx, &mut batch);
        }
        let Some(state) = state.upgrade() else { return };
        if !store_journaled(&state).await {
            // They stay journaled and claimed: the sweep takes them when the claim ends.
            continue;
        }
        // One that another process recorded first is that process's to run.
        batch.retain(|(d, _)| !state.store().dropped_from_intake(&d.id));
        let read = read_batch(batch);
        let runner = runner.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(start_runs(state.downgrade(), rx));
            tx
        });
        if runner.send(read).await.is_err() {
            return;
        }
        last_batch = Some(tokio::time::Instant::now());
    }
}

/// The queue's second stage: creates the runs of each batch [`drain`] has read, then
/// records how its deliveries went while the next batch's runs are created. The two stages
/// and the recording overlap, so that the cores read and plan one batch while SQLite's
/// writer stores another; runs are still created in the order their deliveries came.
async fn start_runs(state: crate::state::WeakState, mut rx: mpsc::Receiver<Read>) {
    let mut recording: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(read) = rx.recv().await {
        let Some(state) = state.upgrade() else { return };
        let done = run_batch(&state, read).await;
        // One batch's outcomes at a time: the writer takes them in turn anyway.
        if let Some(previous) = recording.take() {
            let _ = previous.await;
        }
        recording = Some(tokio::spawn(async move { record(&state, done).await }));
    }
    if let Some(previous) = recording {
        let _ = previous.await;
    }
}

/// Stores the deliveries the intake journal answered for (see `Store::flush_intake`):
/// their runs must not be created before they are. A few tries; `false` when all failed.
async fn store_journaled(state: &AppState) -> bool {
    for attempt in 1..=3 {
        match state.store().flush_intake().await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "failed to store journaled webhook deliveries");
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
        }
    }
    false
}

/// Moves what is waiting in the queue into `batch`, up to [`BATCH`].
fn take_ready(
    rx: &mut mpsc::UnboundedReceiver<(DeliveryView, Body)>,
    batch: &mut Vec<(DeliveryView, Body)>,
) {
    while batch.len() < BATCH
        && let Ok(next) = rx.try_recv()
    {
        batch.push(next);
    }
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
                    let ids: Vec<String> = pending.into_iter().map(|d| d.id).collect();
                    for chunk in ids.chunks(BATCH) {
                        process_batch(&state, chunk.to_vec()).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "failed to list webhook deliveries to resume");
                }
            }
            prune(&state).await;
            if state.engine().is_none_or(|e| e.is_stopped()) {
                return;
            }
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    });
}

/// Empties the bodies of deliveries processed longer ago than the retention allows.
async fn prune(state: &AppState) {
    let Some(keep) = state.config().hook_payload_retention else {
        return;
    };
    let Ok(keep) = jiff::SignedDuration::try_from(keep) else {
        return;
    };
    let Ok(before) = jiff::Timestamp::now().checked_sub(keep) else {
        return;
    };
    match state.store().prune_delivery_payloads(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deliveries = n,
            "dropped the bodies of old webhook deliveries"
        ),
        Err(e) => tracing::warn!(error = %e, "failed to drop old webhook delivery bodies"),
    }
}

/// A claimed delivery whose payload reads as an event kiln runs on.
struct Item {
    delivery: DeliveryView,
    event: HookEvent,
    /// The event's payload as JSON text, when that is the body as it came (GitHub's).
    text: Option<kiln_store::PayloadText>,
}

/// Claims the deliveries `ids` (those still accepted and not claimed by another server),
/// processes them project by project (projects side by side), and records every outcome.
async fn process_batch(state: &AppState, ids: Vec<String>) {
    let Some(engine) = state.engine() else { return };
    let store = state.store();
    let now = jiff::Timestamp::now();
    let until = now.checked_add(CLAIM_FOR).unwrap_or(now);
    let stale = format!("{}/", engine.owner());
    let me = claimant(engine);
    let claimed = match store.claim_deliveries(&ids, &me, &stale, now, until).await {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(deliveries = ids.len(), error = %e, "failed to claim webhook deliveries");
            return;
        }
    };
    process_claimed(state, claimed).await;
}

/// Processes deliveries this process has claimed, with their payloads: project by project
/// (projects side by side), recording every outcome.
async fn process_claimed(state: &AppState, claimed: Vec<(DeliveryView, Vec<u8>)>) {
    let claimed = claimed
        .into_iter()
        .map(|(d, payload)| (d, Body::Raw(payload.into())))
        .collect();
    let done = run_batch(state, read_batch(claimed)).await;
    record(state, done).await;
}

/// A batch of claimed deliveries read: the events they start runs on, by project, and the
/// outcomes of those that start nothing.
struct Read {
    by_project: IndexMap<ProjectId, Vec<Item>>,
    done: Vec<(DeliveryView, DeliveryOutcome)>,
}

/// Reads each delivery's event from its payload.
fn read_batch(claimed: Vec<(DeliveryView, Body)>) -> Read {
    let mut done = Vec::new();
    let mut by_project: IndexMap<ProjectId, Vec<Item>> = IndexMap::new();
    for (delivery, body) in claimed {
        match read_event(&delivery, body) {
            Ok((event, text)) => {
                let items = by_project.entry(delivery.project).or_default();
                // A pull request is also its `pull_request_target`: one item each, their
                // outcomes merged into the delivery's by `merge_outcomes`.
                if let Some(target) = triggers::pull_request_target(&event) {
                    items.push(Item {
                        delivery: delivery.clone(),
                        event: target,
                        text: text.clone(),
                    });
                }
                items.push(Item {
                    delivery,
                    event,
                    text,
                });
            }
            Err(outcome) => done.push((delivery, outcome)),
        }
    }
    Read { by_project, done }
}

/// Starts the runs of a batch read, project by project (projects side by side): each
/// delivery's outcome.
async fn run_batch(state: &AppState, read: Read) -> Vec<(String, DeliveryOutcome)> {
    let Read {
        by_project,
        mut done,
    } = read;
    let mut projects = tokio::task::JoinSet::new();
    for (project, items) in by_project {
        let state = state.clone();
        projects.spawn(async move {
            let mut done = process_project(&state, project, items).await;
            // Reasons quote git and the engine, whose messages name paths in the data dir.
            for (_, outcome) in &mut done {
                if let Some(reason) = &mut outcome.reason {
                    *reason = crate::fetch::hide_data_dir(&state.config().data_dir, reason);
                }
            }
            done
        });
    }
    while let Some(finished) = projects.join_next().await {
        match finished {
            Ok(outcomes) => done.extend(outcomes),
            // The deliveries stay claimed; the sweep takes them again when the claim ends.
            Err(e) => tracing::error!(error = %e, "processing webhook deliveries panicked"),
        }
    }
    let done = merge_outcomes(done);
    for (d, outcome) in &done {
        tracing::info!(
            delivery = d.id,
            project = %d.project,
            status = %outcome.status,
            runs = outcome.runs.len(),
            reason = outcome.reason.as_deref().unwrap_or(""),
            "webhook delivery processed"
        );
    }
    done.into_iter().map(|(d, o)| (d.id, o)).collect()
}

/// Records how each delivery of a batch went.
async fn record(state: &AppState, done: Vec<(String, DeliveryOutcome)>) {
    if let Err(e) = state.store().finish_deliveries(&done).await {
        tracing::warn!(deliveries = done.len(), error = %e, "failed to record processed webhook deliveries");
    }
}

/// One outcome per delivery, in the order each first appears: a pull request's own and its
/// `pull_request_target`'s together. Processed when either started runs (all the runs kept),
/// failed when either failed, ignored otherwise; the reasons of the parts that started
/// nothing are kept only when nothing started.
fn merge_outcomes(
    done: Vec<(DeliveryView, DeliveryOutcome)>,
) -> Vec<(DeliveryView, DeliveryOutcome)> {
    let mut merged: IndexMap<String, (DeliveryView, DeliveryOutcome)> = IndexMap::new();
    for (d, outcome) in done {
        match merged.get_mut(&d.id) {
            None => {
                merged.insert(d.id.clone(), (d, outcome));
            }
            Some((_, into)) => {
                let rank = |s: DeliveryStatus| match s {
                    DeliveryStatus::Failed => 3,
                    DeliveryStatus::Processed => 2,
                    _ => 1,
                };
                let reason = match (rank(into.status), rank(outcome.status)) {
                    (a, b) if a > b => into.reason.take(),
                    (a, b) if a < b => outcome.reason,
                    _ => match (into.reason.take(), outcome.reason) {
                        (Some(a), Some(b)) => Some(format!("{b}; {a}")),
                        (a, b) => a.or(b),
                    },
                };
                if rank(outcome.status) > rank(into.status) {
                    into.status = outcome.status;
                }
                into.reason = if into.status == DeliveryStatus::Processed {
                    None
                } else {
                    reason
                };
                into.runs.extend(outcome.runs);
            }
        }
    }
    merged.into_values().collect()
}

/// The event a delivery's payload describes, or why it starts nothing; with a GitHub
/// delivery, its body's text, which is `github.event` as it came (the event's own payload
/// holds only what kiln reads of it: see [`triggers::read_github_body`]).
fn read_event(
    d: &DeliveryView,
    body: Body,
) -> Result<(HookEvent, Option<kiln_store::PayloadText>), DeliveryOutcome> {
    let (payload, packed) = match body {
        Body::Raw(raw) => (raw, None),
        Body::Packed(packed) => {
            let raw = packed
                .unpack()
                .map_err(|e| failed(format!("the body cannot be read back: {e}")))?;
            (Bytes::from(raw), Some(packed))
        }
    };
    let payload: &[u8] = &payload;
    let not_json = |e: serde_json::Error| failed(format!("the body is not JSON: {e}"));
    let (body, text) = if d.provider == HookProvider::Github {
        let text = std::str::from_utf8(payload)
            .map_err(|e| failed(format!("the body is not JSON: it is not UTF-8 ({e})")))?;
        let body = triggers::read_github_body(text).map_err(not_json)?;
        // The run keeps the text packed once its first jobs are decided: as the journal
        // packed it. It is the delivery's stored body: the run's row refers to it.
        let text = kiln_store::PayloadText::of_json_text(text)
            .with_packed(packed.and_then(|p| p.json()))
            .of_delivery(&d.id);
        (body, Some(text))
    } else {
        (serde_json::from_slice(payload).map_err(not_json)?, None)
    };
    match triggers::normalize(provider(d.provider), &d.event, body) {
        Ok(Some(event)) => Ok((event, text)),
        Ok(None) => Err(ignored(format!(
            "kiln runs nothing on the {} event `{}`",
            d.provider, d.event
        ))),
        Err(e) => Err(failed(format!("the payload cannot be read: {e}"))),
    }
}

/// One project's deliveries: its mirror fetched at most once (when a commit is missing),
/// its workflows read once per commit, and all the runs they start created together.
async fn process_project(
    state: &AppState,
    project: ProjectId,
    items: Vec<Item>,
) -> Vec<(DeliveryView, DeliveryOutcome)> {
    let all = |items: Vec<Item>, outcome: DeliveryOutcome| {
        items
            .into_iter()
            .map(|i| (i.delivery, outcome.clone()))
            .collect()
    };
    let Some(engine) = state.engine() else {
        return all(items, failed("the server has no engine to run workflows"));
    };
    let record = match state.store().project_record(project).await {
        Ok(Some(r)) if !r.is_archived() => r,
        Ok(_) => return all(items, ignored("the project has been removed")),
        Err(e) => return all(items, failed(format!("the store failed: {e}"))),
    };
    let git = record.kind() == ProjectKind::Git;
    // The mirror is fetched unless it has every event's commit already (a burst of pushes,
    // a redelivery): then every fact the runs need is there, and a fetch would only cost.
    if git
        && !mirror_has_all(state, project, &items).await
        && let Err(e) = crate::fetch::fetch_now(state, project).await
    {
        return all(items, failed(format!("could not fetch the project: {e}")));
    }
    // A pull request from a fork: its head commit is on no branch of the repository, only
    // under the provider's pull request ref.
    if git {
        let mut refs = Vec::new();
        for item in &items {
            if let (Some(sha), Some(r)) = (&item.event.sha, &item.event.fetch_ref)
                && !refs.contains(r)
                && !mirror_has(state, project, sha).await
            {
                refs.push(r.clone());
            }
        }
        if !refs.is_empty()
            && let Err(e) = crate::fetch::fetch_refs(state, project, &refs).await
        {
            tracing::warn!(project = %project, error = %e, "cannot fetch pull request refs");
        }
    }
    // A deleted ref has no commit: it runs at the default branch's head, as on GitHub.
    let mut by_target: IndexMap<(Option<String>, Option<String>), Vec<Item>> = IndexMap::new();
    for item in items {
        let target = if item.event.deleted || item.event.sha.is_none() {
            (None, None)
        } else {
            (item.event.git_ref.clone(), item.event.sha.clone())
        };
        by_target.entry(target).or_default().push(item);
    }
    let mut done = Vec::new();
    for ((git_ref, sha), items) in by_target {
        let prepared = match engine
            .prepare_at(project, git_ref.as_deref(), sha.as_deref())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let why = format!("could not read the workflows at the event's commit: {e}");
                done.extend(all(items, failed(why)));
                continue;
            }
        };
        let mut asked = Vec::new();
        let mut requests = Vec::new();
        for item in items {
            match choose(state, git, &prepared, &item).await {
                Ok(workflows) => {
                    requests.push(request(
                        project, &git_ref, &sha, item.event, item.text, workflows,
                    ));
                    asked.push(item.delivery);
                }
                Err(outcome) => done.push((item.delivery, outcome)),
            }
        }
        if requests.is_empty() {
            continue;
        }
        match engine.trigger_prepared(&prepared, requests).await {
            Ok(answers) => {
                for (delivery, answer) in asked.into_iter().zip(answers) {
                    let outcome = match answer {
                        Ok(runs) => DeliveryOutcome {
                            status: DeliveryStatus::Processed,
                            reason: None,
                            runs: runs.iter().map(|r| r.id).collect(),
                        },
                        Err(e) => failed(format!("could not start the runs: {e}")),
                    };
                    done.push((delivery, outcome));
                }
            }
            Err(e) => {
                let outcome = failed(format!("could not start the runs: {e}"));
                done.extend(asked.into_iter().map(|d| (d, outcome.clone())));
            }
        }
    }
    done
}

/// Whether the project's mirror holds the commit of every event (each commit looked up
/// once).
async fn mirror_has_all(state: &AppState, project: ProjectId, items: &[Item]) -> bool {
    let mut seen = std::collections::HashSet::new();
    for item in items {
        let Some(sha) = item.event.sha.as_deref().filter(|_| !item.event.deleted) else {
            return false;
        };
        if seen.insert(sha) && !mirror_has(state, project, sha).await {
            return false;
        }
    }
    true
}

/// The workflows (by file) whose `on:` takes the event and whose filters match it, or why
/// none runs.
async fn choose(
    state: &AppState,
    git: bool,
    prepared: &Prepared,
    item: &Item,
) -> Result<Vec<String>, DeliveryOutcome> {
    let (d, event) = (&item.delivery, &item.event);
    let workflows = prepared.workflows();
    let mut chosen = Vec::new();
    let mut reasons = Vec::new();
    let mut changed: Option<Vec<String>> = None;
    for wf in workflows {
        let mut answer = triggers::matches_triggers(event, &wf.on, changed.as_deref());
        if answer == Match::NeedPaths {
            if !git {
                // A folder has no history to diff: path filters are not applied.
                answer = Match::Yes;
            } else {
                // A pull request's paths (either event) are judged on its own changes.
                match changed_paths(state, d, event, prepared.sha()).await {
                    Ok(paths) => {
                        answer = triggers::matches_triggers(event, &wf.on, Some(&paths));
                        changed = Some(paths);
                    }
                    Err(e) => return Err(failed(format!("could not list the changed files: {e}"))),
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
            return Err(ignored("the project has no workflows"));
        }
        return Err(ignored(format!(
            "no workflow runs on this event ({})",
            reasons.join("; ")
        )));
    }
    Ok(chosen)
}

/// What to ask the engine for one event: its `workflows` at the event's commit, with the
/// event's `github` context.
fn request(
    project: ProjectId,
    git_ref: &Option<String>,
    sha: &Option<String>,
    event: HookEvent,
    text: Option<kiln_store::PayloadText>,
    workflows: Vec<String>,
) -> (TriggerRequest, EventTarget) {
    // The payload reaches `github.event` as the trigger's (moved, not copied); a GitHub
    // body's text is the payload, the event holding only the fields kiln read of it.
    let mut github = triggers::github_fields(&event);
    // What the event leaves unknown (a deletion's sha) the engine fills in.
    github.retain(|_, v| v.as_str() != Some(""));
    let request = TriggerRequest {
        project,
        event: event.event_name,
        git_ref: git_ref.clone(),
        payload: if text.is_some() {
            None
        } else {
            Some(event.payload)
        },
        payload_text: text,
        ..TriggerRequest::default()
    };
    let target = EventTarget {
        sha: sha.clone(),
        workflows: Some(workflows),
        github,
    };
    (request, target)
}

/// Whether the project's mirror holds commit `sha` (a full commit id).
async fn mirror_has(state: &AppState, project: ProjectId, sha: &str) -> bool {
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

/// The files the event changed, from the mirror. A pull request's (either event): what its
/// head changed since it left the base branch, `git diff --name-only base...head`, as GitHub
/// judges pull request paths. Otherwise — or when the base commit is not in the mirror —
/// `git diff --name-only before..sha` (every file of `sha` when `before` is unknown or all
/// zeros).
async fn changed_paths(
    state: &AppState,
    d: &DeliveryView,
    event: &HookEvent,
    sha: &str,
) -> Result<Vec<String>, String> {
    let dir = crate::fetch::mirror_dir(&state.config().data_dir, d.project);
    let repo = GitRepo::open(&dir).await.map_err(|e| e.to_string())?;
    if let (Some(base), Some(head)) = (
        triggers::pull_request_base(event),
        triggers::pull_request_head(event),
    ) {
        match repo.pull_request_paths(base, head).await {
            Ok(paths) => return Ok(paths),
            // The base commit is not in the mirror (the branch moved on since the last
            // fetch): judge the head's files as a push would be.
            Err(e) => tracing::warn!(
                delivery = d.id,
                error = %e,
                "cannot diff a pull request against its base; judging its head's files"
            ),
        }
    }
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
