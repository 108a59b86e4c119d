//! Jobs run by remote workers (`kiln worker`), driven by the same dispatcher as the local
//! pool: a worker's claim takes ready jobs whose labels it has and leases them to it; its
//! reports arrive as the events a local executor would send (started, log, step, done),
//! checked against the lease it holds; its heartbeats renew its leases and tell it which jobs
//! to cancel or which it lost. A remote lease that expires (the worker died or was cut off)
//! sends the job back to the queue with attempt + 1, or fails it when its attempts are spent.

use kiln_core::ids::{JobId, JobStatus, RunId};
use kiln_exec::{ExecEvent, JobOutcome};
use kiln_proto::workers::{AssignedJob, HeldJob, ReportEvent};
use kiln_store::{ExpiredLease, Op};
use serde_json::Value;

use super::{Dispatcher, Ready, now};
use crate::EngineError;

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
            // Package builds need the server's tree and blob store: the local pool's.
            let local_only = self
                .runs
                .get(&rec.run)
                .is_some_and(|r| r.spec.packages.contains_key(&rec.key));
            if local_only || !rec.labels.iter().all(|l| labels.contains(l)) {
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
        let mut out = Vec::with_capacity(picked.len());
        for job in picked {
            let Some(token) = self.jobs.get(&job).and_then(|r| r.token) else {
                continue; // refused by the store: already handled by flush
            };
            let Some(inputs) = self.job_inputs(job) else {
                continue;
            };
            let Some(rec) = self.jobs.get(&job) else {
                continue;
            };
            let Some(run) = self.runs.get(&rec.run) else {
                continue;
            };
            let event = run
                .base
                .get("github")
                .and_then(|g| g.get("event"))
                .cloned()
                .unwrap_or(Value::Null);
            out.push(AssignedJob {
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
            });
        }
        Ok(out)
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
                    self.on_done(
                        job,
                        JobOutcome {
                            status,
                            outputs,
                            continue_on_error,
                            error,
                        },
                    );
                    if let Some(rec) = self.jobs.get_mut(&job) {
                        rec.remote = None;
                    }
                }
            }
        }
        Ok(())
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
            let ours = rec.remote.is_none() && rec.token.is_some();
            if ours || !matches!(rec.status, JobStatus::Leased | JobStatus::Running) {
                continue;
            }
            rec.remote = None;
            rec.token = None;
            rec.started = None;
            rec.log_offset = 0;
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
