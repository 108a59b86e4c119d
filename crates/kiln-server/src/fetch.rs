//! Background fetches of git projects' mirrors (DESIGN.md "Security model": a URL a user
//! registers is never fetched from the request that registers it).
//!
//! A route that adds a git project, changes its source or asks for a fetch marks the project
//! in the store (`fetch_requested_at`), answers, and calls [`request`]; the fetch then runs
//! in a task of its own, through the engine's [`GitRepo::fetch`] and so behind the server's
//! egress policy, into `<data dir>/repos/<project id>.git` (where the engine reads runs'
//! commits from), and records what it found — the default branch and its commit, or the
//! error — for `GET /api/v1/projects/{id}` to show. One fetch per project runs at a time; a
//! request that comes while one runs makes it run once more when it ends, from whatever
//! source the project has by then. At start-up [`resume`] fetches the git projects whose
//! last requested fetch never ended (the previous server stopped during it).
//!
//! Not here: HTTP (`routes/projects.rs`), git itself (`kiln_engine::source`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_core::ids::ProjectId;
use kiln_engine::egress::EgressPolicy;
use kiln_engine::source::{GitRepo, SourceError};
use kiln_proto::{FetchStatus, ProjectKind};
use kiln_store::FetchOutcome;

use crate::state::AppState;

/// The projects with a fetch running, each with whether another was asked for meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Fetches {
    running: Mutex<HashMap<ProjectId, bool>>,
    /// One fetch of a project's mirror at a time, whoever asks (background or a trigger).
    locks: Mutex<HashMap<ProjectId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetches {
    /// `true`: the caller is to start the fetch; `false`: one runs and will run again.
    fn claim(&self, id: ProjectId) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get_mut(&id) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                running.insert(id, false);
                true
            }
        }
    }

    fn lock_of(&self, id: ProjectId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id).or_default().clone()
    }

    /// After a fetch: `true` when another was asked for while it ran (and is now to run).
    fn again(&self, id: ProjectId) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get_mut(&id) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                running.remove(&id);
                false
            }
        }
    }
}

/// Where the mirror of project `id` lives (the engine reads it from the same place).
pub(crate) fn mirror_dir(data_dir: &Path, id: ProjectId) -> PathBuf {
    data_dir.join("repos").join(format!("{id}.git"))
}

/// `message` with the server's data folder written `<data dir>`: users read fetch and
/// delivery errors, not where the server keeps its data.
pub(crate) fn hide_data_dir(data_dir: &Path, message: &str) -> String {
    message.replace(&data_dir.display().to_string(), "<data dir>")
}

/// Fetches project `id`'s mirror in the background (see the module doc).
pub(crate) fn request(state: &AppState, id: ProjectId) {
    if !state.fetches().claim(id) {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            fetch_once(&state, id).await;
            if !state.fetches().again(id) {
                break;
            }
        }
    });
}

/// At start-up: fetches every git project whose last requested fetch has not ended.
pub(crate) fn resume(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        let projects = match state.store().list_projects(false).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "failed to list projects to resume their fetches");
                return;
            }
        };
        for p in projects {
            if p.fetch_status() == FetchStatus::Pending {
                request(&state, p.project.id);
            }
        }
    });
}

/// Before a run the server starts by itself (a schedule's fire): a git project's mirror is
/// fetched first, as a trigger's is; when that fails the run goes on with the mirror as last
/// fetched (the failure is on the project's record and in the log).
pub async fn refresh_before_run(state: &AppState, id: ProjectId) {
    if let Err(e) = fetch_now(state, id).await {
        tracing::warn!(project = %id, error = %e, "fetch before a scheduled run failed; the run uses the mirror as last fetched");
    }
}

/// Fetches a git project's mirror now and waits for it (a run is about to be planned from
/// it: the ref must name what the upstream has now, not what the last fetch saw).
/// `Err`: the fetch failed, as the project's record now says too.
pub(crate) async fn fetch_now(state: &AppState, id: ProjectId) -> Result<(), String> {
    match fetch_once(state, id).await {
        Some(FetchOutcome::Failed(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Fetches `refs` of project `id` (a pull request's head ref, which holds a fork's commit)
/// into its mirror, one fetch of the mirror at a time, behind the egress policy. Not recorded
/// as the project's fetch: branches and the default branch are the regular fetch's.
pub(crate) async fn fetch_refs(
    state: &AppState,
    id: ProjectId,
    refs: &[String],
) -> Result<(), String> {
    let lock = state.fetches().lock_of(id);
    let _one_at_a_time = lock.lock().await;
    let record = match state.store().project_record(id).await {
        Ok(Some(r)) if !r.is_archived() && r.kind() == ProjectKind::Git => r,
        Ok(_) => return Ok(()),
        Err(e) => return Err(format!("the store failed: {e}")),
    };
    let config = state.config();
    let dir = mirror_dir(&config.data_dir, id);
    GitRepo::fetch_refs(&record.project.source, &dir, &config.egress, refs)
        .await
        .map(|_| ())
        .map_err(|e| hide_data_dir(&config.data_dir, &e.to_string()))
}

/// One fetch of the project's current source, recorded in the store; what it found
/// (`None`: not a git project, or the store failed).
async fn fetch_once(state: &AppState, id: ProjectId) -> Option<FetchOutcome> {
    let lock = state.fetches().lock_of(id);
    let _one_at_a_time = lock.lock().await;
    let record = match state.store().project_record(id).await {
        Ok(Some(r)) if !r.is_archived() && r.kind() == ProjectKind::Git => r,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(project = %id, error = %e, "failed to read a project to fetch it");
            return None;
        }
    };
    let source = record.project.source;
    let config = state.config();
    let dir = mirror_dir(&config.data_dir, id);
    let outcome = match fetch_mirror(&source, &dir, &config.egress).await {
        Ok((default_branch, head_sha)) => {
            tracing::info!(
                project = %id,
                head_sha = head_sha.as_deref().unwrap_or(""),
                "fetched a project's mirror"
            );
            FetchOutcome::Fetched {
                default_branch,
                head_sha,
            }
        }
        Err(e) => {
            // The user's to fix (a URL, access to the repository), not the operator's.
            tracing::warn!(project = %id, error = %e, "failed to fetch a project's mirror");
            // Readers of the project see the error, not where the server keeps its data.
            let shown = hide_data_dir(&config.data_dir, &e.to_string());
            FetchOutcome::Failed(shown)
        }
    };
    if let Err(e) = state.store().record_fetch(id, &source, &outcome).await {
        tracing::warn!(project = %id, error = %e, "failed to record a project's fetch");
    }
    Some(outcome)
}

/// Mirrors `url` into `dir` behind `policy`; the default branch and its commit (both `None`
/// for a repository without commits).
async fn fetch_mirror(
    url: &str,
    dir: &Path,
    policy: &EgressPolicy,
) -> Result<(Option<String>, Option<String>), SourceError> {
    let repo = GitRepo::fetch(url, dir, policy).await?;
    let Some(branch) = repo.default_branch().await? else {
        return Ok((None, None));
    };
    let sha = repo.resolve(&branch).await?;
    Ok((Some(branch), Some(sha)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_during_a_fetch_runs_it_once_more() {
        let f = Fetches::default();
        let id = ProjectId::new();
        assert!(f.claim(id), "the first request starts a fetch");
        assert!(
            !f.claim(id),
            "later ones while it runs do not start another"
        );
        assert!(!f.claim(id));
        assert!(f.again(id), "they make it run once more");
        assert!(!f.again(id), "and then it ends");
        assert!(f.claim(id), "after which a request starts a fetch again");
        assert!(!f.again(id));
    }
}
