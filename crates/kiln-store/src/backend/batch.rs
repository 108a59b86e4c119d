//! Planning a batch of job transitions for `commit`: which ops go through the batched
//! statements, in which order, with which parameters, and reading back what they applied.
//!
//! A busy engine commits a handful of transitions of different jobs per transaction (one
//! job's completion, the next one's lease, a third one's start and step result, …). One
//! statement per op meant one trip to the database per op — on SQLite a hand-off to its
//! worker thread each, which on a loaded two-core machine costs more than the statement.
//! Here every kind of transition becomes one statement over a JSON array of rows, and
//! SQLite runs all six as one script. Not here: the SQL itself (the dialects hold it).

use std::collections::{HashMap, HashSet};

use kiln_core::ids::{JobId, JobStatus};
use serde_json::{Value, json};

use super::{json_text, ms};
use crate::types::Op;

pub(crate) const SET_STATUS: i64 = 1;
pub(crate) const GRANT: i64 = 2;
pub(crate) const START: i64 = 3;
pub(crate) const STEP: i64 = 4;
pub(crate) const LOG: i64 = 5;
pub(crate) const COMPLETE: i64 = 6;

/// The batched kind of `op` (also its place in the lifecycle order), if it has one.
pub(crate) fn kind(op: &Op) -> Option<i64> {
    Some(match op {
        Op::SetJobStatus { .. } => SET_STATUS,
        Op::GrantLease { .. } => GRANT,
        Op::StartJob { .. } => START,
        Op::StepResult { .. } => STEP,
        Op::LogChunk { .. } => LOG,
        Op::CompleteJob { .. } => COMPLETE,
        Op::AddJobs { .. }
        | Op::SetRunStatus { .. }
        | Op::RenewLease { .. }
        | Op::ReleaseLease { .. }
        | Op::OfferJobs { .. } => return None,
    })
}

/// The job an op is about, if it is about one job.
pub(crate) fn job_of(op: &Op) -> Option<JobId> {
    match op {
        Op::SetJobStatus { job, .. }
        | Op::GrantLease { job, .. }
        | Op::StartJob { job, .. }
        | Op::StepResult { job, .. }
        | Op::LogChunk { job, .. }
        | Op::CompleteJob { job, .. }
        | Op::RenewLease { job, .. }
        | Op::ReleaseLease { job, .. } => Some(*job),
        Op::AddJobs { .. } | Op::SetRunStatus { .. } | Op::OfferJobs { .. } => None,
    }
}

/// The batch's statements' parameters.
pub(crate) struct Plan {
    params: Vec<String>,
}

impl Plan {
    /// `None` when applying `ops` kind by kind could differ from applying them in order (see
    /// `apply_batch`), or when an op is one the single-op path refuses outright.
    pub(crate) fn new(ops: &[Op]) -> Option<Plan> {
        let mut params: [Vec<Value>; 6] = Default::default();
        // Per job: the last kind seen, and where its log chunks have reached.
        let mut last: HashMap<JobId, i64> = HashMap::new();
        let mut log_end: HashMap<JobId, (usize, u64)> = HashMap::new();
        let mut steps: HashSet<(JobId, u32)> = HashSet::new();
        for op in ops {
            let k = kind(op)?;
            let job = job_of(op)?;
            match last.insert(job, k) {
                Some(prev) if prev > k => return None,
                Some(prev) if prev == k && k != STEP && k != LOG => return None,
                _ => {}
            }
            let id = job.to_string();
            match op {
                Op::SetJobStatus { status, at, .. } => {
                    if matches!(status, JobStatus::Leased | JobStatus::Running) {
                        return None;
                    }
                    let fin = status.is_terminal().then_some(ms(*at));
                    params[0].push(json!([id, status.as_str(), fin]));
                }
                Op::GrantLease {
                    owner, ttl_ms, at, ..
                } => {
                    params[1].push(json!([id, owner, ms(*at).saturating_add(*ttl_ms)]));
                }
                Op::StartJob { token, at, .. } => {
                    params[2].push(json!([id, token, ms(*at)]));
                }
                Op::StepResult { token, step, .. } => {
                    if !steps.insert((job, step.index)) {
                        return None;
                    }
                    params[3].push(json!([
                        id,
                        token,
                        step.index,
                        step.name,
                        step.status.as_str(),
                        json_text(&step.outputs),
                        step.started_at.map(ms),
                        step.finished_at.map(ms)
                    ]));
                }
                Op::LogChunk {
                    token,
                    offset,
                    data,
                    ..
                } => {
                    let len = data.len() as u64;
                    match log_end.get(&job).copied() {
                        // A job's chunks in one batch make one group: one guarded update
                        // from the first offset by their total length.
                        Some((row, end)) => {
                            if end != *offset {
                                return None;
                            }
                            let total = params[4][row][3].as_u64().unwrap_or(0) + len;
                            params[4][row][3] = json!(total);
                            log_end.insert(job, (row, end + len));
                        }
                        None => {
                            log_end.insert(job, (params[4].len(), offset + len));
                            params[4].push(json!([id, token, offset, len]));
                        }
                    }
                }
                Op::CompleteJob {
                    token,
                    status,
                    outputs,
                    at,
                    ..
                } => {
                    if !status.is_terminal() {
                        return None;
                    }
                    params[5].push(json!([
                        id,
                        token,
                        status.as_str(),
                        json_text(outputs),
                        ms(*at)
                    ]));
                }
                Op::AddJobs { .. }
                | Op::SetRunStatus { .. }
                | Op::RenewLease { .. }
                | Op::ReleaseLease { .. }
                | Op::OfferJobs { .. } => {
                    return None;
                }
            }
        }
        let params = params
            .into_iter()
            .map(|rows| Value::Array(rows).to_string())
            .collect();
        Some(Plan { params })
    }

    /// One JSON array per kind, in kind order (`$1` … `$6` of the script).
    pub(crate) fn params(&self) -> &[String] {
        &self.params
    }
}

/// What a statement of the batch reports for one applied row.
pub(crate) struct Done {
    pub(crate) run: Option<String>,
    pub(crate) project: Option<String>,
    pub(crate) token: Option<i64>,
    pub(crate) attempts: i64,
}

/// The rows the batch applied, by (kind, job id, step index).
#[derive(Default)]
pub(crate) struct Applied(HashMap<(i64, String, Option<i64>), Done>);

impl Applied {
    pub(crate) fn insert(&mut self, kind: i64, id: String, idx: Option<i64>, done: Done) {
        self.0.insert((kind, id, idx), done);
    }

    pub(crate) fn get(&self, kind: i64, id: &str, idx: Option<i64>) -> Option<&Done> {
        self.0.get(&(kind, id.to_owned(), idx))
    }
}
