//! The schedule runner: keeps the stored schedules in step with the projects' workflow files,
//! and starts a run for each fire that comes due (event `schedule`, on the default branch,
//! `github.event.schedule` = the cron pattern, as GitHub does).
//!
//! Every replica of `kiln serve` runs one; the store makes sure each fire runs once
//! ([`Store::claim_fire`]). The next fire time lives in the database, so a restart picks up
//! where the last process stopped. What happens to fires missed while no server ran is each
//! schedule's `catch-up:` (kiln's key next to `cron:`): `one` (the default) runs once for
//! everything missed, `none` skips it. A fire counts as missed when it is more than
//! [`MISSED_AFTER`] old when a scheduler sees it.
//!
//! [`Scheduler::tick`] and [`Scheduler::sync_all`] take the time as an argument, so tests
//! drive them with any clock; [`Scheduler::spawn`] drives them with the real one.
//!
//! Not here: computing fire times (`kiln_core::cron`), the claim itself (`kiln-store`), HTTP.

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use jiff::{SignedDuration, Timestamp};
use kiln_core::cron::{CronSchedule, DEFAULT_ZONE};
use kiln_core::ids::{ProjectId, RunId};
use kiln_core::workflow::{CatchUp, Workflow};
use kiln_proto::{Project, ScheduleId, ScheduleView};
use kiln_store::{FireKind, ScheduleDef, Store, SyncReport};
use serde_json::json;

use crate::{Engine, EngineError, TriggerRequest};

/// A fire older than this when a scheduler first sees it was missed (no server ran at its
/// time); its schedule's `catch-up:` decides whether it still runs.
pub const MISSED_AFTER: SignedDuration = SignedDuration::from_secs(60);

/// The longest a scheduler sleeps between two looks at the store (other replicas may have
/// added, started or moved schedules meanwhile).
pub const MAX_SLEEP: Duration = Duration::from_secs(30);

/// At most this many due fires are handled per tick (the rest on the next one, at once).
const DUE_BATCH: u32 = 100;

/// What a tick did with one due fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickFire {
    pub schedule: ScheduleId,
    pub fire_at: Timestamp,
    pub outcome: FireOutcome,
}

/// The outcome of one due fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FireOutcome {
    /// This scheduler claimed it and started the run.
    Started(RunId),
    /// This scheduler claimed it; no run started (the message says why).
    Failed(String),
    /// Missed while no server ran, and the schedule says `catch-up: none`.
    Skipped,
    /// Another scheduler (replica) claimed it first.
    Lost,
}

/// What runs before a scheduled run of a project starts: the server fetches a git
/// project's mirror there, so that the run is of the default branch as it is now.
pub type BeforeRun = std::sync::Arc<
    dyn Fn(ProjectId) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Syncs schedules and starts their runs; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    engine: Engine,
    store: Store,
    data_dir: PathBuf,
    before_run: Option<BeforeRun>,
}

impl Scheduler {
    /// `data_dir` is the engine's (git projects' mirrors are under `repos/`).
    pub fn new(engine: Engine, store: Store, data_dir: impl Into<PathBuf>) -> Self {
        Scheduler {
            engine,
            store,
            data_dir: data_dir.into(),
            before_run: None,
        }
    }

    /// The same scheduler, awaiting `hook` before each run it starts (see [`BeforeRun`]).
    pub fn with_before_run(mut self, hook: BeforeRun) -> Self {
        self.before_run = Some(hook);
        self
    }

    /// Syncs every project that is not archived (see [`Scheduler::sync_project`]); a project
    /// that cannot be read is logged and left as it was.
    pub async fn sync_all(&self, now: Timestamp) -> Result<(), EngineError> {
        for record in self.store.list_projects(false).await? {
            if let Err(e) = self.sync_project(&record.project, now).await {
                tracing::warn!(project = %record.project.name, error = %e, "cannot read a project's schedules");
            }
        }
        Ok(())
    }

    /// Reads `project`'s workflow files (a folder as it is; a git project's mirror at its
    /// default branch) and makes its stored schedules what they say. A file that does not
    /// parse keeps the schedules it had; a git project not fetched yet is left alone.
    pub async fn sync_project(
        &self,
        project: &Project,
        now: Timestamp,
    ) -> Result<SyncReport, EngineError> {
        let Some((workflows, keep)) =
            crate::project::current_workflows(&self.data_dir, project).await?
        else {
            return Ok(SyncReport::default());
        };
        let defs: Vec<ScheduleDef> = workflows.iter().flat_map(schedule_defs).collect();
        Ok(self
            .store
            .sync_schedules(project.id, &defs, &keep, now)
            .await?)
    }

    /// Syncs one project by id (after a fetch of its mirror); an unknown id syncs nothing.
    pub async fn sync_project_id(
        &self,
        project: ProjectId,
        now: Timestamp,
    ) -> Result<SyncReport, EngineError> {
        match self.store.get_project(project).await? {
            Some(p) => self.sync_project(&p, now).await,
            None => Ok(SyncReport::default()),
        }
    }

    /// Handles every fire due at `now`: claims it (or finds another replica did), moves its
    /// schedule on to the first fire after `now`, and starts its run. Returns what it did,
    /// oldest fire first.
    pub async fn tick(&self, now: Timestamp) -> Result<Vec<TickFire>, EngineError> {
        let mut done = Vec::new();
        for schedule in self.store.due_schedules(now, DUE_BATCH).await? {
            let Some(fire_at) = schedule.next_fire_at else {
                continue;
            };
            let outcome = self.fire(&schedule, fire_at, now).await?;
            done.push(TickFire {
                schedule: schedule.id,
                fire_at,
                outcome,
            });
        }
        Ok(done)
    }

    async fn fire(
        &self,
        schedule: &ScheduleView,
        fire_at: Timestamp,
        now: Timestamp,
    ) -> Result<FireOutcome, EngineError> {
        let zone = (schedule.timezone != DEFAULT_ZONE).then_some(schedule.timezone.as_str());
        // Several missed fires collapse into this one: the schedule moves on past `now`.
        let next = CronSchedule::new(&schedule.cron, zone)
            .ok()
            .and_then(|c| c.next_after(now));
        let missed = now.duration_since(fire_at) > MISSED_AFTER;
        let kind = if missed && CatchUp::parse(&schedule.catch_up) == Some(CatchUp::None) {
            FireKind::Skip
        } else {
            FireKind::Run
        };
        let claimed = self
            .store
            .claim_fire(schedule.id, fire_at, next, kind, self.engine.owner(), now)
            .await?;
        let Some(fire) = claimed else {
            return Ok(FireOutcome::Lost);
        };
        if kind == FireKind::Skip {
            tracing::info!(schedule = %schedule.id, workflow = schedule.workflow, %fire_at, "skipped a missed fire (catch-up: none)");
            return Ok(FireOutcome::Skipped);
        }
        if let Some(hook) = &self.before_run {
            hook(schedule.project).await;
        }
        let request = TriggerRequest {
            project: schedule.project,
            workflow: Some(schedule.workflow.clone()),
            event: "schedule".to_owned(),
            git_ref: None,
            payload: Some(json!({ "schedule": schedule.cron })),
            payload_text: None,
            inputs: IndexMap::new(),
        };
        let outcome = match self.engine.trigger(request).await {
            Ok(runs) if !runs.is_empty() => {
                let run = runs[0].id;
                self.store.finish_fire(fire, Ok(run)).await?;
                tracing::info!(schedule = %schedule.id, workflow = schedule.workflow, %fire_at, run = %run, "started a scheduled run");
                FireOutcome::Started(run)
            }
            Ok(_) => {
                let why = "the workflow started no run";
                self.store.finish_fire(fire, Err(why)).await?;
                FireOutcome::Failed(why.to_owned())
            }
            Err(e) => {
                let why = e.to_string();
                self.store.finish_fire(fire, Err(&why)).await?;
                tracing::warn!(schedule = %schedule.id, workflow = schedule.workflow, %fire_at, error = %why, "a scheduled run did not start");
                FireOutcome::Failed(why)
            }
        };
        Ok(outcome)
    }

    /// Runs in the background until the engine stops: syncs every project at once and then
    /// every `sync_every`, and ticks at the soonest next fire (at least every
    /// [`MAX_SLEEP`]).
    pub fn spawn(self, sync_every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut last_sync: Option<tokio::time::Instant> = None;
            loop {
                if self.engine.is_stopped() {
                    break;
                }
                if last_sync.is_none_or(|t| t.elapsed() >= sync_every) {
                    if let Err(e) = self.sync_all(Timestamp::now()).await {
                        tracing::warn!(error = %e, "cannot sync schedules");
                    }
                    last_sync = Some(tokio::time::Instant::now());
                }
                if let Err(e) = self.tick(Timestamp::now()).await {
                    tracing::warn!(error = %e, "cannot run due schedules");
                }
                let sleep = match self.store.next_schedule_fire().await {
                    Ok(Some(next)) => {
                        let wait = next.duration_since(Timestamp::now());
                        Duration::try_from(wait).unwrap_or(Duration::ZERO)
                    }
                    Ok(None) => MAX_SLEEP,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the next schedule fire");
                        MAX_SLEEP
                    }
                };
                let until_sync =
                    sync_every.saturating_sub(last_sync.map_or(sync_every, |t| t.elapsed()));
                tokio::time::sleep(sleep.min(MAX_SLEEP).min(until_sync)).await;
            }
        })
    }
}

/// The stored form of a workflow's `on.schedule` entries.
pub fn schedule_defs(wf: &Workflow) -> Vec<ScheduleDef> {
    wf.on
        .schedule_entries
        .iter()
        .enumerate()
        .map(|(i, e)| ScheduleDef {
            workflow: wf.file.clone(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            cron: e.cron.clone(),
            timezone: e
                .timezone
                .clone()
                .unwrap_or_else(|| DEFAULT_ZONE.to_owned()),
            catch_up: e.catch_up,
        })
        .collect()
}

#[cfg(test)]
mod tests;
