//! The watch poller: keeps the stored watches in step with the projects' `on.watch` entries,
//! polls each due watch's source, and starts one run (event `watch`, `inputs.version`,
//! `inputs.source_uri`) for each new version.
//!
//! Mirrors the schedule runner ([`crate::schedule`]): every replica of `kiln serve` runs one;
//! the store makes sure one poller at a time polls a watch (a claim moves its
//! `next_poll_at` on by [`POLL_LEASE`]) and that a version starts at most one run — the
//! poll's new versions are recorded in one transaction *before* their runs start, and only
//! versions that transaction inserted start a run. A crash between recording and starting
//! leaves that version `claimed` without a run rather than risking a second run after the
//! restart (at most once; `GET /api/v1/watches` shows it).
//!
//! What a poll means is decided by [`kiln_core::watch::decide`]: the first successful poll of
//! a watch records every version found without starting runs — unless the watch names a
//! `known-versions:` file, when versions not in it start runs from the first poll on.
//!
//! A failing source records its error and is retried with exponential backoff (from
//! [`BACKOFF_BASE`], capped at [`BACKOFF_MAX`]); it never holds up other watches. Polls run
//! with bounded concurrency ([`WatchConfig::concurrency`]) and each next poll time carries a
//! little jitter, so a thousand watches with one interval spread out instead of polling in
//! lockstep.
//!
//! [`Watcher::tick`] and [`Watcher::sync_all`] take the time as an argument, so tests drive
//! them with any clock; [`Watcher::spawn`] drives them with the real one.
//!
//! Not here: parsing entries (`kiln_core`), SQL (`kiln-store`), HTTP routes.

mod client;
mod sources;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use jiff::{SignedDuration, Timestamp};
use kiln_core::ids::RunId;
use kiln_core::watch::{Selector, WatchSource, decide, parse_known_versions};
use kiln_core::workflow::Workflow;
use kiln_proto::{Project, WatchCheck, WatchId, WatchVersion};
use kiln_store::{NewVersion, PollRecord, Store, WatchDef, WatchRow, WatchSyncReport};
use serde_json::json;
use tokio::sync::Semaphore;

pub use client::{FetchError, Fetched, HttpClient};
pub use sources::{Found, Registries, extract, run_command, url_of};

use crate::egress::EgressPolicy;
use crate::source::GitRepo;
use crate::{Engine, EngineError, TriggerRequest};

/// How long a claimed poll holds its watch: a poller that dies mid-poll leaves the watch to
/// be polled again after this.
pub const POLL_LEASE: SignedDuration = SignedDuration::from_secs(300);
/// The first retry after a failed poll; doubled per failure in a row.
pub const BACKOFF_BASE: Duration = Duration::from_secs(60);
/// The longest wait between retries of a failing source.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// The longest a poller sleeps between two looks at the store.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);
/// At most this many due watches are taken per tick (the rest on the next one, at once).
const DUE_BATCH: u32 = 1000;

/// The watches' configuration (`[watch]` of the server's configuration).
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub registries: Registries,
    /// Polls at the same time, at most.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// One request, answer body included.
    pub timeout: Duration,
    /// The largest answer read (npm documents of big packages run to tens of MB).
    pub max_body: usize,
    /// Sent as `Authorization: Bearer` to the GitHub API (higher rate limits).
    pub github_token: Option<String>,
    /// Every outbound connection of a watch passes this.
    pub egress: EgressPolicy,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            registries: Registries::default(),
            concurrency: 16,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_body: 64 << 20,
            github_token: None,
            egress: EgressPolicy::default(),
        }
    }
}

/// What polling one watch did.
#[derive(Clone, Debug, PartialEq)]
pub struct PollOutcome {
    pub watch: WatchId,
    /// The source answered `304 Not Modified`.
    pub not_modified: bool,
    /// Versions recorded by this poll.
    pub new_versions: Vec<WatchVersion>,
    /// Why the poll failed (recorded; retried with backoff).
    pub error: Option<String>,
    /// Another poller held the watch: nothing was done.
    pub lost: bool,
}

/// Syncs watches, polls them and starts their runs; cheap to clone.
#[derive(Clone)]
pub struct Watcher {
    engine: Engine,
    store: Store,
    data_dir: PathBuf,
    config: Arc<WatchConfig>,
    http: HttpClient,
    limit: Arc<Semaphore>,
}

impl Watcher {
    /// `data_dir` is the engine's (git projects' mirrors are under `repos/`).
    pub fn new(
        engine: Engine,
        store: Store,
        data_dir: impl Into<PathBuf>,
        config: WatchConfig,
    ) -> Result<Self, FetchError> {
        let http = HttpClient::new(
            config.egress.clone(),
            config.connect_timeout,
            config.timeout,
            config.max_body,
        )?;
        let limit = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Ok(Watcher {
            engine,
            store,
            data_dir: data_dir.into(),
            config: Arc::new(config),
            http,
            limit,
        })
    }

    /// Syncs every project that is not archived; a project that cannot be read is logged and
    /// left as it was.
    pub async fn sync_all(&self, now: Timestamp) -> Result<(), EngineError> {
        for record in self.store.list_projects(false).await? {
            if let Err(e) = self.sync_project(&record.project, now).await {
                tracing::warn!(project = %record.project.name, error = %e, "cannot read a project's watches");
            }
        }
        Ok(())
    }

    /// Reads `project`'s workflow files and makes its stored watches what they say. A file
    /// that does not parse keeps the watches it had.
    pub async fn sync_project(
        &self,
        project: &Project,
        now: Timestamp,
    ) -> Result<WatchSyncReport, EngineError> {
        let Some((workflows, keep)) =
            crate::project::current_workflows(&self.data_dir, project).await?
        else {
            return Ok(WatchSyncReport::default());
        };
        let defs: Vec<WatchDef> = workflows.iter().flat_map(watch_defs).collect();
        Ok(self
            .store
            .sync_watches(project.id, &defs, &keep, now)
            .await?)
    }

    /// Polls every watch due at `now`, at most [`WatchConfig::concurrency`] at a time; one
    /// failing source never stops the others. Returns what each poll did.
    pub async fn tick(&self, now: Timestamp) -> Result<Vec<PollOutcome>, EngineError> {
        let due = self.store.due_watches(now, DUE_BATCH).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for row in due {
            let this = self.clone();
            tasks.spawn(async move { this.claim_and_poll(row, now).await });
        }
        let mut done = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(outcome)) => done.push(outcome),
                Ok(Err(e)) => tracing::warn!(error = %e, "a watch poll could not be recorded"),
                Err(e) => tracing::warn!(error = %e, "a watch poll panicked"),
            }
        }
        Ok(done)
    }

    /// Polls one watch now, whatever its next poll time (`POST /watches/{id}/check`).
    /// `None`: no such watch.
    pub async fn check(&self, id: WatchId) -> Result<Option<WatchCheck>, EngineError> {
        let Some(row) = self.store.watch_row(id).await? else {
            return Ok(None);
        };
        let outcome = self.claim_and_poll(row, Timestamp::now()).await?;
        let Some(watch) = self.store.get_watch(id).await? else {
            return Ok(None);
        };
        Ok(Some(WatchCheck {
            watch,
            not_modified: outcome.not_modified,
            new_versions: outcome.new_versions,
            error: if outcome.lost {
                Some("another poller is polling this watch right now".to_owned())
            } else {
                outcome.error
            },
        }))
    }

    async fn claim_and_poll(
        &self,
        row: WatchRow,
        now: Timestamp,
    ) -> Result<PollOutcome, EngineError> {
        let mut outcome = PollOutcome {
            watch: row.id,
            not_modified: false,
            new_versions: Vec::new(),
            error: None,
            lost: false,
        };
        let lease = now.checked_add(POLL_LEASE).unwrap_or(now);
        if !self
            .store
            .claim_watch(row.id, row.next_poll_at, lease)
            .await?
        {
            outcome.lost = true;
            return Ok(outcome);
        }
        let _permit = self.limit.acquire().await.ok();
        match self.poll(&row, &mut outcome).await {
            Ok(()) => {}
            Err(why) => {
                let failures = row.failures.saturating_add(1);
                let next = add(Timestamp::now(), jitter(backoff(failures)));
                tracing::info!(watch = %row.id, name = row.name, failures, error = %why, "a watch poll failed");
                self.store
                    .record_poll_error(row.id, &why, next, Timestamp::now())
                    .await?;
                outcome.error = Some(why);
            }
        }
        Ok(outcome)
    }

    /// Fetches, decides, records, then starts runs. `Err`: the poll failed (nothing recorded
    /// but the error).
    async fn poll(&self, row: &WatchRow, outcome: &mut PollOutcome) -> Result<(), String> {
        let source: WatchSource = serde_json::from_str(&row.def.source)
            .map_err(|e| format!("the stored source spec is unusable: {e}"))?;
        let selector = Selector::new(row.def.constraint.as_deref(), row.def.filter.as_deref())?;
        let project = self
            .store
            .get_project(row.project)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the project is gone")?;
        let mut etag = row.etag.clone();
        let found = match &source {
            WatchSource::Command {
                command,
                timeout_secs,
            } => {
                let dir = Path::new(&project.source);
                if !dir.is_absolute() {
                    return Err(
                        "a command watch runs in a folder project; this project is a git repository"
                            .to_owned(),
                    );
                }
                Some(run_command(command, dir, Duration::from_secs(*timeout_secs)).await?)
            }
            _ => {
                let url = url_of(&source, &self.config.registries).ok_or("no URL")?;
                let token = match &source {
                    WatchSource::GithubReleases { .. } | WatchSource::GithubTags { .. } => {
                        self.config.github_token.as_deref()
                    }
                    _ => None,
                };
                // Only an answer that was read completely may be skipped next time.
                let sent = if row.polled {
                    row.etag.as_deref()
                } else {
                    None
                };
                match self
                    .http
                    .get(&url, sent, token)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Fetched::NotModified => None,
                    Fetched::Body { bytes, etag: tag } => {
                        etag = tag;
                        Some(extract(&source, &self.config.registries, &bytes)?)
                    }
                }
            }
        };
        let now = Timestamp::now();
        let next_poll_at = add(now, jitter(Duration::from_secs(row.def.interval_secs)));
        let Some(found) = found else {
            outcome.not_modified = true;
            self.store
                .record_poll(
                    row.id,
                    &PollRecord {
                        etag,
                        versions: Vec::new(),
                        next_poll_at,
                        now,
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        };
        let known = match &row.def.known_versions {
            Some(file) => Some(self.known_versions(&project, file).await?),
            None => None,
        };
        let seen: HashSet<String> = self
            .store
            .seen_versions(row.id)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let versions: Vec<String> = found.iter().map(|f| f.version.clone()).collect();
        let decision = decide(&versions, &seen, known.as_ref(), !row.polled, &selector);
        let uri_of = |v: &str| {
            found
                .iter()
                .find(|f| f.version.trim() == v)
                .and_then(|f| f.source_uri.clone())
        };
        let mut new = Vec::new();
        for v in &decision.quiet {
            new.push(NewVersion {
                version: v.clone(),
                source_uri: uri_of(v),
                trigger: false,
            });
        }
        for v in &decision.trigger {
            new.push(NewVersion {
                version: v.clone(),
                source_uri: uri_of(v),
                trigger: true,
            });
        }
        let claimed = self
            .store
            .record_poll(
                row.id,
                &PollRecord {
                    etag,
                    versions: new.clone(),
                    next_poll_at,
                    now,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        for v in new.iter().filter(|v| !v.trigger) {
            outcome.new_versions.push(WatchVersion {
                version: v.version.clone(),
                source_uri: v.source_uri.clone(),
                run: None,
                error: None,
            });
        }
        for c in claimed {
            let (run, error) = match self
                .start(row, &source, &c.version, c.source_uri.as_deref())
                .await
            {
                Ok(run) => (Some(run), None),
                Err(why) => (None, Some(why)),
            };
            let result = match (&run, &error) {
                (Some(r), _) => Ok(*r),
                (None, e) => Err(e.as_deref().unwrap_or("no run started")),
            };
            self.store
                .finish_watch_version(row.id, c.id, result)
                .await
                .map_err(|e| e.to_string())?;
            outcome.new_versions.push(WatchVersion {
                version: c.version,
                source_uri: c.source_uri,
                run,
                error,
            });
        }
        Ok(())
    }

    /// Starts the one run of a new version.
    async fn start(
        &self,
        row: &WatchRow,
        source: &WatchSource,
        version: &str,
        source_uri: Option<&str>,
    ) -> Result<RunId, String> {
        let mut inputs = IndexMap::new();
        inputs.insert("version".to_owned(), version.to_owned());
        if let Some(uri) = source_uri {
            inputs.insert("source_uri".to_owned(), uri.to_owned());
        }
        let request = TriggerRequest {
            project: row.project,
            workflow: Some(row.workflow.clone()),
            event: "watch".to_owned(),
            git_ref: None,
            payload: Some(json!({
                "watch": row.name,
                "source": source.kind(),
                "version": version,
                "source_uri": source_uri,
            })),
            payload_text: None,
            inputs,
        };
        match self.engine.trigger(request).await {
            Ok(runs) if !runs.is_empty() => {
                tracing::info!(watch = %row.id, name = row.name, version, run = %runs[0].id, "a new version started a run");
                Ok(runs[0].id)
            }
            Ok(_) => Err("the workflow started no run".to_owned()),
            Err(e) => {
                tracing::warn!(watch = %row.id, name = row.name, version, error = %e, "a new version's run did not start");
                Err(e.to_string())
            }
        }
    }

    /// A project's known-versions file (a folder as it is; a git project at its default
    /// branch). Unreadable is an error: polling on would start a run for every version.
    async fn known_versions(
        &self,
        project: &Project,
        file: &str,
    ) -> Result<HashSet<String>, String> {
        let fail = |e: String| format!("failed to read the known-versions file `{file}`: {e}");
        let root = Path::new(&project.source);
        let text = if root.is_absolute() {
            tokio::fs::read_to_string(root.join(file))
                .await
                .map_err(|e| fail(e.to_string()))?
        } else {
            let repo = self
                .mirror(project)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let Some((repo, sha)) = repo else {
                return Err(fail("the project is not fetched yet".to_owned()));
            };
            let bytes = repo
                .read_file(&sha, file)
                .await
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| fail("no such file at the default branch".to_owned()))?;
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Ok(parse_known_versions(&text))
    }

    /// A git project's mirror and the commit of its default branch (`None`: not fetched).
    async fn mirror(&self, project: &Project) -> Result<Option<(GitRepo, String)>, EngineError> {
        crate::project::default_head(&self.data_dir, project).await
    }

    /// Runs in the background until the engine stops: syncs every project at once and then
    /// every `sync_every`, and polls due watches (looking at least every [`MAX_SLEEP`]).
    pub fn spawn(self, sync_every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut last_sync: Option<tokio::time::Instant> = None;
            loop {
                if self.engine.is_stopped() {
                    break;
                }
                if last_sync.is_none_or(|t| t.elapsed() >= sync_every) {
                    if let Err(e) = self.sync_all(Timestamp::now()).await {
                        tracing::warn!(error = %e, "cannot sync watches");
                    }
                    last_sync = Some(tokio::time::Instant::now());
                }
                if let Err(e) = self.tick(Timestamp::now()).await {
                    tracing::warn!(error = %e, "cannot poll due watches");
                }
                let sleep = match self.store.next_watch_poll().await {
                    Ok(Some(next)) => Duration::try_from(next.duration_since(Timestamp::now()))
                        .unwrap_or(Duration::ZERO),
                    Ok(None) => MAX_SLEEP,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the next watch poll");
                        MAX_SLEEP
                    }
                };
                let until_sync =
                    sync_every.saturating_sub(last_sync.map_or(sync_every, |t| t.elapsed()));
                // At least a second: a watch due now is being polled by another replica.
                let sleep = sleep
                    .min(MAX_SLEEP)
                    .min(until_sync)
                    .max(Duration::from_secs(1));
                tokio::time::sleep(sleep).await;
            }
        })
    }
}

/// The stored form of a workflow's `on.watch` entries.
pub fn watch_defs(wf: &Workflow) -> Vec<WatchDef> {
    wf.on
        .watches
        .iter()
        .map(|w| WatchDef {
            workflow: wf.file.clone(),
            name: w.name.clone(),
            source: serde_json::to_string(&w.source).unwrap_or_default(),
            constraint: w.constraint.clone(),
            filter: w.filter.clone(),
            known_versions: w.known_versions.clone(),
            interval_secs: w.interval_secs,
        })
        .collect()
}

/// The wait after `failures` failed polls in a row: [`BACKOFF_BASE`] doubled per failure
/// after the first, at most [`BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX)
}

/// `d` plus up to a tenth of it, at random: watches with one interval drift apart.
fn jitter(d: Duration) -> Duration {
    let tenth = d.as_millis() / 10;
    if tenth == 0 {
        return d;
    }
    let r = uuid::Uuid::new_v4().as_u128() % tenth;
    d + Duration::from_millis(u64::try_from(r).unwrap_or(0))
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

#[cfg(test)]
mod tests;
