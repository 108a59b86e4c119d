//! Jobs run by remote workers (`kiln worker`), driven by the same dispatcher as the local
//! pool: a worker's claim takes ready jobs whose labels it has and leases them to it; its
//! reports arrive as the events a local executor would send (started, log, step, done),
//! checked against the lease it holds; its heartbeats renew its leases and tell it which jobs
//! to cancel or which it lost. A remote lease that expires (the worker died or was cut off)
//! sends the job back to the queue with attempt + 1, or fails it when its attempts are spent.

use std::sync::Arc;

use kiln_core::ids::{JobId, JobStatus, RunId};
use kiln_core::packages::PackageId;
use kiln_exec::{ExecEvent, JobOutcome};
use kiln_proto::workers::{AssignedJob, HeldJob, ReportEvent};
use kiln_store::{ExpiredLease, Op, PackageBuildStatus};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Dispatcher, Msg, PackageParts, Ready, now, package_outcome};
use crate::EngineError;
use crate::packages::PackageSet;

/// What became of a job a remote worker leased from the shared queue, when it asked the
/// dispatcher for its details.
#[derive(Debug)]
pub(crate) enum Adoption {
    /// Now the worker's: what it needs to run it.
    Assigned(Box<AssignedJob>),
    /// Not to be run remotely now (the dispatcher is shutting down, or a package job whose
    /// dependencies' outputs are not known): the lease should be given back.
    Refused,
    /// Ended here already (cancelled while the worker's lease was being taken): the lease
    /// should end the job as cancelled.
    Ended,
    /// Not a job of a run this dispatcher drives.
    NotDriven,
}

/// Why a worker's report was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportRefusal {
    /// The worker does not hold this job's lease (any more): stop it, report nothing more.
    Lost,
    /// The report makes no sense (a `done` with a status that does not end a job).
    Invalid(String),
}

impl Dispatcher {
    /// Leases up to `max` ready jobs whose every label `labels` has to the worker `owner`,
    /// highest priority first, and describes each (its lease committed first).
    pub(super) async fn claim_remote(
        &mut self,
        owner: &str,
        labels: &[String],
        max: usize,
    ) -> Result<Vec<AssignedJob>, EngineError> {
        if self.draining.is_some() || self.cancelled || max == 0 {
            return Ok(Vec::new());
        }
        let mut picked = Vec::new();
        let mut passed = Vec::new();
        while picked.len() < max {
            let Some(next) = self.ready.pop() else { break };
            let Some(rec) = self.jobs.get(&next.job) else {
                continue;
            };
            if rec.status != JobStatus::Queued {
                continue;
            }
            if !self.remote_eligible(next.job) || !rec.labels.iter().all(|l| labels.contains(l)) {
                passed.push(next);
                continue;
            }
            picked.push(next.job);
        }
        for p in passed {
            self.ready.push(p);
        }
        for job in &picked {
            let Some(rec) = self.jobs.get_mut(job) else {
                continue;
            };
            rec.status = JobStatus::Leased;
            rec.remote = Some(owner.to_owned());
            rec.ending = false;
            rec.parts = None;
            let run = rec.run;
            self.ops.push(Op::GrantLease {
                job: *job,
                owner: owner.to_owned(),
                ttl_ms: self.lease_ttl.as_millis() as i64,
                at: now(),
            });
            self.mark_run_running(run);
        }
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        self.flush().await?;
        // A job the store refused is left out: flush handled it.
        Ok(picked
            .into_iter()
            .filter_map(|job| self.assignment(job))
            .collect())
    }

    /// What a remote worker needs to run `job`, which it holds (under the token recorded).
    fn assignment(&self, job: JobId) -> Option<AssignedJob> {
        let rec = self.jobs.get(&job)?;
        let token = rec.token?;
        let inputs = self.job_inputs(job)?;
        let run = self.runs.get(&rec.run)?;
        let package = match self.package_of(job) {
            Some((set, p)) => Some(set.assignment(p)?),
            None => None,
        };
        // The job's contexts hold the run's `github.event` (the run keeps it apart from
        // the contexts it shares between jobs: see `RunState::event`).
        let event = inputs
            .contexts
            .get("github")
            .and_then(|g| g.get("event"))
            .cloned()
            .unwrap_or(Value::Null);
        Some(AssignedJob {
            job,
            run: rec.run,
            token,
            attempt: rec.attempts,
            name: rec.name.clone(),
            key: rec.key.clone(),
            workflow: run.wf.file.clone(),
            contexts: inputs.contexts,
            env: inputs.env,
            masks: inputs.masks,
            event,
            package,
        })
    }

    /// The package set and package of a `packages:` job.
    fn package_of(&self, job: JobId) -> Option<(&Arc<PackageSet>, PackageId)> {
        let rec = self.jobs.get(&job)?;
        let set = self.runs.get(&rec.run)?.spec.packages.get(&rec.key)?;
        Some((set, set.package_of(&rec.matrix)?))
    }

    /// Whether a remote worker may run `job`: any job of a run driven here (a package job
    /// too: the worker fetches its dependencies' outputs and uploads its own).
    pub(super) fn remote_eligible(&self, job: JobId) -> bool {
        self.jobs
            .get(&job)
            .is_some_and(|rec| self.runs.contains_key(&rec.run))
    }

    /// Keeps what the worker `owner` uploaded of the package job it holds (`false`: it does
    /// not hold it).
    pub(super) fn remote_package_part(
        &mut self,
        owner: &str,
        job: JobId,
        token: i64,
        part: PackageParts,
    ) -> bool {
        if self.remote_holds(owner, job, token).is_none() || self.package_of(job).is_none() {
            return false;
        }
        let Some(rec) = self.jobs.get_mut(&job) else {
            return false;
        };
        if rec.parts.as_ref().is_some_and(|p| p.token != token) {
            rec.parts = None;
        }
        let parts = rec.parts.get_or_insert_with(Box::default);
        parts.token = token;
        if part.output.is_some() {
            parts.output = part.output;
        }
        if part.log.is_some() {
            parts.log = part.log;
        }
        true
    }

    /// Whether the worker `owner`, holding the package job `job`, may fetch the output
    /// `digest`; `None`: it does not hold the job.
    pub(super) fn remote_package_dep(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
        digest: &str,
    ) -> Option<bool> {
        self.remote_holds(owner, job, token)?;
        Some(
            self.package_of(job)
                .is_some_and(|(set, p)| set.is_dependency_output(p, digest)),
        )
    }

    /// A remote worker's end of the package job `job`: its history row is recorded first (in
    /// a task: the dispatcher does not wait on the store), then the job ends (`Msg::RemoteDone`),
    /// as a build of the local pool records its row before its job ends — so the run cannot end,
    /// and close its package set, before the row is in. The output is known at once to the
    /// dependents this end will let start. The job's outputs are the server's (`key`, and the
    /// `output` it kept), whatever the worker said. `Err(outcome)`: not a package job.
    fn remote_package_done(
        &mut self,
        job: JobId,
        mut outcome: JobOutcome,
    ) -> Result<(), JobOutcome> {
        let Some((set, p)) = self.package_of(job).map(|(s, p)| (s.clone(), p)) else {
            return Err(outcome);
        };
        let Some(rec) = self.jobs.get_mut(&job) else {
            return Err(outcome);
        };
        if rec.ending {
            // The same end reported again (its first answer was lost): recorded once.
            return Ok(());
        }
        let Some(token) = rec.token else {
            return Err(outcome);
        };
        rec.ending = true;
        let parts = rec
            .parts
            .take()
            .filter(|p| p.token == token)
            .map(|b| *b)
            .unwrap_or_default();
        let took = rec.started.map(|at| at.elapsed()).unwrap_or_default();
        let mut status = match outcome.status {
            JobStatus::Success => PackageBuildStatus::Success,
            JobStatus::Cancelled => PackageBuildStatus::Cancelled,
            _ => PackageBuildStatus::Failure,
        };
        let mut reason = outcome.error.take();
        // As a build of its own: one whose output or log is not kept has failed.
        if status == PackageBuildStatus::Success {
            if parts.output.is_none() {
                status = PackageBuildStatus::Failure;
                reason = Some("the worker sent no output for the package".to_owned());
            } else if parts.log.is_none() {
                status = PackageBuildStatus::Failure;
                reason = Some("the worker sent no log for the package".to_owned());
            }
        }
        let output = parts
            .output
            .filter(|_| status == PackageBuildStatus::Success);
        let finished_at = jiff::Timestamp::now();
        let (log, log_tail) = match parts.log {
            Some((blob, tail)) => (Some(blob), tail),
            None => (None, String::new()),
        };
        let done = crate::packages::Done {
            id: p,
            status,
            reason,
            started_at: finished_at - jiff::SignedDuration::try_from(took).unwrap_or_default(),
            finished_at,
            duration: took,
            log,
            log_tail,
            output,
        };
        let tx = self.tx.clone();
        self.recording += 1;
        tokio::spawn(async move {
            // Sent however the task ends (a panic too), after the end if there is one.
            let _recorded = Recorded(tx.clone());
            let (status, outputs, reason) = set.record(p, done).await;
            let _ = tx.send(Msg::RemoteDone(
                job,
                token,
                Box::new(package_outcome(status, outputs, reason)),
            ));
        });
        Ok(())
    }

    /// The remote worker `owner` leased `job` (`token`) from the shared queue, through this
    /// replica or another (the store said so; see `Engine::adopt_remote`): record it as
    /// that worker's and describe it.
    pub(super) fn adopt_remote(&mut self, owner: &str, job: JobId, token: i64) -> Adoption {
        let Some(rec) = self.jobs.get(&job) else {
            return Adoption::NotDriven;
        };
        if rec.remote.as_deref() == Some(owner) && rec.token == Some(token) {
            // Asked again (its first answer was lost).
            return self
                .assignment(job)
                .map_or(Adoption::Refused, |a| Adoption::Assigned(Box::new(a)));
        }
        if rec.status.is_terminal() {
            return Adoption::Ended;
        }
        let unheld = rec.token.is_none();
        if (rec.remote.is_some() || unheld)
            && matches!(rec.status, JobStatus::Leased | JobStatus::Running)
        {
            // Held here by a lease the store has since given to `owner` (the worker that held
            // it gave it back, and this one claimed it), or held by nobody known here (the
            // run was taken over from a view of the store in which a worker held the job,
            // which it has given back since): the store is right.
            let Some(rec) = self.jobs.get_mut(&job) else {
                return Adoption::NotDriven;
            };
            rec.status = JobStatus::Leased;
            rec.held_by(Some((owner.to_owned(), token)));
            return self
                .assignment(job)
                .map_or(Adoption::Refused, |a| Adoption::Assigned(Box::new(a)));
        }
        if rec.status != JobStatus::Queued
            || self.draining.is_some()
            || self.cancelled
            || !self.remote_eligible(job)
        {
            return Adoption::Refused;
        }
        let Some(rec) = self.jobs.get_mut(&job) else {
            return Adoption::NotDriven;
        };
        rec.status = JobStatus::Leased;
        rec.held_by(Some((owner.to_owned(), token)));
        rec.attempts += 1;
        let run = rec.run;
        self.mark_run_running(run);
        self.assignment(job)
            .map_or(Adoption::Refused, |a| Adoption::Assigned(Box::new(a)))
    }

    /// Takes a worker's report on `job` under lease `token`, as a local executor's events.
    pub(super) fn remote_report(
        &mut self,
        owner: &str,
        job: JobId,
        token: i64,
        events: Vec<ReportEvent>,
    ) -> Result<(), ReportRefusal> {
        let held = |d: &Dispatcher| {
            d.jobs
                .get(&job)
                .is_some_and(|r| r.remote.as_deref() == Some(owner) && r.token == Some(token))
        };
        if !held(self) {
            return Err(ReportRefusal::Lost);
        }
        for ev in events {
            if !held(self) {
                return Err(ReportRefusal::Lost);
            }
            match ev {
                ReportEvent::Started => {
                    if self.jobs.get(&job).is_some_and(|r| r.started.is_none()) {
                        self.on_started(job);
                    }
                }
                ReportEvent::Log { step, data, bytes } => {
                    // The exact bytes when the worker sent them (output that is not UTF-8).
                    let exact = bytes.and_then(|b| {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD.decode(b).ok()
                    });
                    self.on_exec(
                        job,
                        ExecEvent::Log {
                            index: step,
                            data: exact.unwrap_or_else(|| data.into_bytes()),
                        },
                    );
                }
                ReportEvent::Step { step } => self.on_exec(job, ExecEvent::StepFinished { step }),
                ReportEvent::Done {
                    status,
                    outputs,
                    error,
                    continue_on_error,
                } => {
                    if !status.is_terminal() || status == JobStatus::Skipped {
                        return Err(ReportRefusal::Invalid(format!(
                            "a job cannot end `{status}`"
                        )));
                    }
                    let ended = JobOutcome {
                        status,
                        outputs,
                        continue_on_error,
                        error,
                    };
                    if let Err(outcome) = self.remote_package_done(job, ended) {
                        self.remote_done(job, outcome);
                    }
                }
            }
        }
        Ok(())
    }

    /// A remote worker's job ended as `outcome`.
    pub(super) fn remote_done(&mut self, job: JobId, outcome: JobOutcome) {
        self.on_done(job, outcome);
        if let Some(rec) = self.jobs.get_mut(&job) {
            rec.remote = None;
            rec.ending = false;
            rec.parts = None;
        }
    }

    /// The project files of `job`, when the worker `owner` holds its lease `token`.
    pub(super) fn remote_source(
        &self,
        owner: &str,
        job: JobId,
        token: i64,
    ) -> Option<std::sync::Arc<crate::project::Snapshot>> {
        let rec = self.jobs.get(&job)?;
        if rec.remote.as_deref() != Some(owner) || rec.token != Some(token) {
            return None;
        }
        Some(self.runs.get(&rec.run)?.spec.snapshot.clone())
    }

    /// The run of a job `owner` holds under `token`.
    pub(super) fn remote_holds(&self, owner: &str, job: JobId, token: i64) -> Option<RunId> {
        let rec = self.jobs.get(&job)?;
        (rec.remote.as_deref() == Some(owner) && rec.token == Some(token)).then_some(rec.run)
    }

    /// A worker's heartbeat: renews the leases it still holds; answers the jobs to cancel and
    /// the jobs it no longer holds.
    pub(super) fn remote_heartbeat(
        &mut self,
        owner: &str,
        jobs: &[HeldJob],
    ) -> (Vec<JobId>, Vec<JobId>) {
        let (mut cancel, mut lost) = (Vec::new(), Vec::new());
        let at = now();
        for held in jobs {
            match self.jobs.get(&held.job) {
                Some(rec)
                    if rec.remote.as_deref() == Some(owner) && rec.token == Some(held.token) =>
                {
                    self.ops.push(Op::RenewLease {
                        job: held.job,
                        token: held.token,
                        ttl_ms: self.lease_ttl.as_millis() as i64,
                        at,
                    });
                    if rec.cancel.is_cancelled() {
                        cancel.push(held.job);
                    }
                }
                _ => lost.push(held.job),
            }
        }
        (cancel, lost)
    }

    /// Leases the store took back because they expired: a job held elsewhere — by a remote
    /// worker, or by whoever held it when this server picked the run up after a restart —
    /// goes back to the ready queue, or ends failed when its attempts were spent (as the store
    /// recorded). Jobs this server's own pool runs hold a token and are left alone.
    pub(super) fn remote_leases_expired(&mut self, expired: &[ExpiredLease]) {
        for e in expired {
            let Some(rec) = self.jobs.get_mut(&e.job) else {
                continue;
            };
            if rec.status.is_terminal() && e.requeued {
                // Ended here (cancelled) while a worker held it from the shared queue: the
                // store has it queued again; it ends as it did here.
                let status = rec.status;
                self.ops.push(Op::SetJobStatus {
                    job: e.job,
                    status,
                    at: now(),
                });
                continue;
            }
            if rec.status == JobStatus::Queued {
                // Leased from the shared queue by a worker that never asked for its details
                // (it died, or could not reach this replica): still in the ready queue here.
                if e.requeued {
                    rec.attempts += 1;
                } else {
                    rec.status = JobStatus::Failure;
                    let (run, key) = (rec.run, rec.key.clone());
                    self.ended(e.job);
                    self.fail_fast(run, &key, e.job);
                }
                continue;
            }
            let ours = rec.remote.is_none() && rec.token.is_some();
            if ours || !matches!(rec.status, JobStatus::Leased | JobStatus::Running) {
                continue;
            }
            rec.held_by(None);
            let (run, key, seq) = (rec.run, rec.key.clone(), rec.seq);
            if e.requeued {
                rec.status = JobStatus::Queued;
                let priority = self
                    .runs
                    .get(&run)
                    .and_then(|r| r.keys.get(&key))
                    .map_or(0, |k| k.priority);
                self.ready.push(Ready {
                    priority,
                    seq,
                    job: e.job,
                });
            } else {
                rec.status = JobStatus::Failure;
                self.ended(e.job);
                self.fail_fast(run, &key, e.job);
            }
        }
    }
}

/// Tells the dispatcher, when dropped, that a recording task is over (`Msg::Recorded`).
struct Recorded(mpsc::UnboundedSender<Msg>);

impl Drop for Recorded {
    fn drop(&mut self) {
        let _ = self.0.send(Msg::Recorded);
    }
}
