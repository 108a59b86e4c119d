//! A sanity run of the engine's benchmark load (2,000 no-op jobs, every transition recorded)
//! through `commit` batches on SQLite. Not a timed assertion: it must complete without error
//! and leave every job and event where it belongs.

use kiln_core::ids::{JobId, JobStatus, RunStatus, StepStatus};
use kiln_proto::Step;
use kiln_store::{NewJob, Op, OpResult};
use serde_json::Map;

use crate::harness::{Harness, at, new_job, new_run};

const JOBS: usize = 2_000;
const BATCH: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_jobs_of_transitions_commit_on_sqlite() {
    let h = Harness::sqlite().await;
    let s = &h.store;
    let p = s.upsert_project("bench", "/bench").await.unwrap();
    let jobs: Vec<NewJob> = (0..JOBS)
        .map(|i| new_job(&format!("j{i}"), JobStatus::Pending, 1))
        .collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let run = s
        .create_run(new_run(p.id, "bench.yml", jobs))
        .await
        .unwrap();
    s.commit(vec![Op::SetRunStatus {
        run: run.id,
        status: RunStatus::Running,
        at: at(0),
    }])
    .await
    .unwrap();

    for chunk in ids.chunks(BATCH) {
        let mut ops = Vec::new();
        for &job in chunk {
            ops.push(Op::SetJobStatus {
                job,
                status: JobStatus::Queued,
                at: at(1),
            });
            ops.push(Op::GrantLease {
                job,
                owner: "pool".into(),
                ttl_ms: 60_000,
                at: at(1),
            });
        }
        let results = s.commit(ops).await.unwrap();
        assert!(
            results
                .iter()
                .all(|r| matches!(r, OpResult::Done | OpResult::Lease { token: 1 }))
        );

        let mut ops = Vec::new();
        for &job in chunk {
            ops.push(Op::StartJob {
                job,
                token: 1,
                at: at(2),
            });
            ops.push(Op::LogChunk {
                job,
                token: 1,
                step: 0,
                offset: 0,
                data: b"##[step 1] true\n".to_vec(),
            });
            ops.push(Op::StepResult {
                job,
                token: 1,
                step: Step {
                    index: 0,
                    name: "true".into(),
                    status: StepStatus::Success,
                    outputs: Map::new(),
                    started_at: Some(at(2)),
                    finished_at: Some(at(3)),
                },
            });
            ops.push(Op::CompleteJob {
                job,
                token: 1,
                status: JobStatus::Success,
                outputs: Map::new(),
                at: at(3),
            });
        }
        let results = s.commit(ops).await.unwrap();
        assert!(results.iter().all(|r| *r == OpResult::Done));
    }
    s.commit(vec![Op::SetRunStatus {
        run: run.id,
        status: RunStatus::Success,
        at: at(4),
    }])
    .await
    .unwrap();

    let done = s.get_run(run.id).await.unwrap().unwrap();
    assert_eq!(done.jobs.len(), JOBS);
    assert!(
        done.jobs
            .iter()
            .all(|j| j.status == JobStatus::Success && j.steps.len() == 1)
    );
    // run.queued, run.started, 6 per job (queued, leased, started, its log line, its step's
    // progress, completed), run.completed.
    let mut count = 0;
    let mut after = 0;
    loop {
        let page = s.events_after(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        count += page.len();
    }
    assert_eq!(count, 2 + 6 * JOBS + 1);
}
