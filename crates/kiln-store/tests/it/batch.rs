//! Commits of many job transitions at once: they go through one statement per kind (and on
//! SQLite one script), and must give exactly what applying the ops one by one would.

use std::time::Duration;

use kiln_core::ids::{JobStatus, StepStatus};
use kiln_proto::Step;
use kiln_store::{Op, OpResult, Refusal};
use serde_json::Map;

use crate::harness::{Harness, at, both_backends, new_job, new_run};

both_backends!(
    a_job_s_whole_life_in_one_commit,
    ops_out_of_lifecycle_order_apply_as_given,
    a_commit_dropped_half_way_leaves_the_store_usable,
);

async fn run_with(h: &Harness, jobs: Vec<kiln_store::NewJob>) {
    let project = h.store.upsert_project("p", "/src/p").await.unwrap();
    let mut run = new_run(project.id, "ci.yml", jobs);
    run.status = kiln_core::ids::RunStatus::Queued;
    h.store.create_run(run).await.unwrap();
}

fn step(index: u32) -> Step {
    Step {
        index,
        name: format!("step {index}"),
        status: StepStatus::Success,
        outputs: Map::new(),
        started_at: Some(at(3)),
        finished_at: Some(at(4)),
    }
}

async fn a_job_s_whole_life_in_one_commit(h: &Harness) {
    let s = &h.store;
    let jobs = vec![
        new_job("a", JobStatus::Pending, 1),
        new_job("b", JobStatus::Pending, 1),
    ];
    let (a, b) = (jobs[0].id, jobs[1].id);
    run_with(h, jobs).await;
    let after = s.events_after(0, 10_000).await.unwrap().len();
    // A fresh job's first lease token is 1: its whole life fits in one commit.
    let results = s
        .commit(vec![
            Op::SetJobStatus {
                job: a,
                status: JobStatus::Queued,
                at: at(1),
            },
            Op::SetJobStatus {
                job: b,
                status: JobStatus::Skipped,
                at: at(1),
            },
            Op::GrantLease {
                job: a,
                owner: "w".into(),
                ttl_ms: 60_000,
                at: at(2),
            },
            Op::StartJob {
                job: a,
                token: 1,
                at: at(3),
            },
            Op::LogChunk {
                job: a,
                token: 1,
                step: 0,
                offset: 0,
                data: b"ab".to_vec(),
            },
            Op::StepResult {
                job: a,
                token: 1,
                step: step(0),
            },
            Op::LogChunk {
                job: a,
                token: 1,
                step: 1,
                offset: 2,
                data: b"cd".to_vec(),
            },
            Op::StepResult {
                job: a,
                token: 1,
                step: step(1),
            },
            Op::CompleteJob {
                job: a,
                token: 1,
                status: JobStatus::Success,
                outputs: Map::new(),
                at: at(5),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            OpResult::Done,
            OpResult::Done,
            OpResult::Lease { token: 1 },
            OpResult::Done,
            OpResult::Done,
            OpResult::Done,
            OpResult::Done,
            OpResult::Done,
            OpResult::Done,
        ]
    );
    let job = s.get_job(a).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.steps.len(), 2);
    assert_eq!(
        s.get_job(b).await.unwrap().unwrap().status,
        JobStatus::Skipped
    );
    assert_eq!(s.read_log(a, 0, 100).await.unwrap().data, b"abcd");
    assert_eq!(s.log_steps(a).await.unwrap(), vec![(0, 0), (1, 2)]);

    // Job a's events come in its lifecycle order.
    let mut kinds = Vec::new();
    for _ in 0..100 {
        let events = s.events_after(0, 10_000).await.unwrap();
        kinds = events[after..]
            .iter()
            .filter(|e| e.job == Some(a))
            .map(|e| e.kind.clone())
            .collect::<Vec<_>>();
        if kinds.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses: Vec<&str> = kinds.iter().map(String::as_str).collect();
    assert_eq!(statuses.len(), 4, "{statuses:?}");
    assert_eq!(statuses[3], "job.completed", "{statuses:?}");
}

async fn ops_out_of_lifecycle_order_apply_as_given(h: &Harness) {
    let s = &h.store;
    let jobs = vec![
        new_job("a", JobStatus::Queued, 1),
        new_job("b", JobStatus::Queued, 1),
    ];
    let (a, b) = (jobs[0].id, jobs[1].id);
    run_with(h, jobs).await;
    // A grant then a status change of the same job: applied kind by kind the status change
    // would come first and win; in order, the grant wins and the change is refused.
    let results = s
        .commit(vec![
            Op::GrantLease {
                job: a,
                owner: "w".into(),
                ttl_ms: 60_000,
                at: at(1),
            },
            Op::SetJobStatus {
                job: a,
                status: JobStatus::Cancelled,
                at: at(1),
            },
            // Two grants of one job in one commit: the second finds it leased.
            Op::GrantLease {
                job: b,
                owner: "w".into(),
                ttl_ms: 60_000,
                at: at(1),
            },
            Op::GrantLease {
                job: b,
                owner: "w".into(),
                ttl_ms: 60_000,
                at: at(1),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            OpResult::Lease { token: 1 },
            OpResult::Refused {
                reason: Refusal::WrongState {
                    job: a,
                    status: JobStatus::Leased
                }
            },
            OpResult::Lease { token: 1 },
            OpResult::Refused {
                reason: Refusal::WrongState {
                    job: b,
                    status: JobStatus::Leased
                }
            },
        ]
    );
    assert_eq!(
        s.get_job(a).await.unwrap().unwrap().status,
        JobStatus::Leased
    );

    // In lifecycle order but one op stale: only that one is refused.
    let results = s
        .commit(vec![
            Op::StartJob {
                job: a,
                token: 7,
                at: at(2),
            },
            Op::StartJob {
                job: b,
                token: 1,
                at: at(2),
            },
            Op::CompleteJob {
                job: b,
                token: 1,
                status: JobStatus::Failure,
                outputs: Map::new(),
                at: at(3),
            },
        ])
        .await
        .unwrap();
    assert!(
        matches!(
            &results[0],
            OpResult::Refused {
                reason: Refusal::StaleToken { .. }
            }
        ),
        "{results:?}"
    );
    assert_eq!(&results[1..], &[OpResult::Done, OpResult::Done]);
    assert_eq!(
        s.get_job(a).await.unwrap().unwrap().status,
        JobStatus::Leased
    );
    assert_eq!(
        s.get_job(b).await.unwrap().unwrap().status,
        JobStatus::Failure
    );
}

async fn a_commit_dropped_half_way_leaves_the_store_usable(h: &Harness) {
    let s = &h.store;
    let jobs: Vec<_> = (0..20)
        .map(|i| new_job(&format!("j{i}"), JobStatus::Queued, 1))
        .collect();
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    run_with(h, jobs).await;
    let grants = |ids: &[kiln_core::ids::JobId]| -> Vec<Op> {
        ids.iter()
            .map(|&job| Op::GrantLease {
                job,
                owner: "w".into(),
                ttl_ms: 60_000,
                at: at(1),
            })
            .collect()
    };
    // Abandon commits at every point a future can stop (a client gone, a task aborted).
    for _ in 0..20 {
        let _ = tokio::time::timeout(Duration::ZERO, s.commit(grants(&ids[..10]))).await;
        tokio::task::yield_now().await;
    }
    // The store still takes commits, and each abandoned one left all or nothing.
    let results = s.commit(grants(&ids[10..])).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, OpResult::Lease { .. })));
    let mut leased = 0;
    for &id in &ids[..10] {
        if s.get_job(id).await.unwrap().unwrap().status == JobStatus::Leased {
            leased += 1;
        }
    }
    assert!(leased == 0 || leased == 10, "{leased} of 10 jobs leased");
}
