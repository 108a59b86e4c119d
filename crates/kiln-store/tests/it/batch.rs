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
    log_lines_and_progress_of_a_batch_name_their_bytes,
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

    // Job a's events come in its lifecycle order, log lines and step progress included.
    let expected = [
        "job.queued",
        "job.leased",
        "job.started",
        "log.line",
        "job.progress",
        "log.line",
        "job.progress",
        "job.completed",
    ];
    let mut events = Vec::new();
    for _ in 0..100 {
        events = s.events_after(0, 10_000).await.unwrap()[after..]
            .iter()
            .filter(|e| e.job == Some(a))
            .cloned()
            .collect::<Vec<_>>();
        if events.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, expected);
    // A log line names its bytes; filled, it carries them instead of their blob location.
    s.fill_log_lines(&mut events).await.unwrap();
    let lines: Vec<_> = events.iter().filter(|e| e.kind == "log.line").collect();
    assert_eq!(lines[0].data["text"], "ab");
    assert_eq!(lines[0].data["offset"], 0);
    assert_eq!(lines[1].data["text"], "cd");
    assert_eq!(lines[1].data["offset"], 2);
    assert_eq!(lines[1].data["step"], 1);
    assert!(lines[1].data.get("blob").is_none());
    assert_eq!(events[4].data["step"], 0);
    assert!(events[4].run.is_some() && events[4].project.is_some());
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
            // Two grants of one job in one commit: the second (another owner's) finds it
            // leased.
            Op::GrantLease {
                job: b,
                owner: "w".into(),
                ttl_ms: 60_000,
                at: at(1),
            },
            Op::GrantLease {
                job: b,
                owner: "w2".into(),
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

/// One log chunk and one step per job: a commit the store applies kind by kind (no job has
/// two ops of a kind). Each chunk still gets its `log.line` and each step its
/// `job.progress`, with the run and project they belong to, in the order given.
async fn log_lines_and_progress_of_a_batch_name_their_bytes(h: &Harness) {
    let s = &h.store;
    let jobs = vec![
        new_job("a", JobStatus::Queued, 1),
        new_job("b", JobStatus::Queued, 1),
    ];
    let (a, b) = (jobs[0].id, jobs[1].id);
    run_with(h, jobs).await;
    let mut start = Vec::new();
    for job in [a, b] {
        start.push(Op::GrantLease {
            job,
            owner: "w".into(),
            ttl_ms: 60_000,
            at: at(2),
        });
    }
    s.commit(start).await.unwrap();
    let mut ops = Vec::new();
    for (job, text) in [(a, "hello\n"), (b, "world\n")] {
        ops.push(Op::LogChunk {
            job,
            token: 1,
            step: 0,
            offset: 0,
            data: text.as_bytes().to_vec(),
        });
        ops.push(Op::StepResult {
            job,
            token: 1,
            step: step(0),
        });
    }
    let results = s.commit(ops).await.unwrap();
    assert!(results.iter().all(|r| *r == OpResult::Done), "{results:?}");
    // On PostgreSQL events show once every older transaction of the cluster has ended (so
    // the events are picked by kind, not by how many were visible before).
    let mut events = Vec::new();
    for _ in 0..100 {
        events = s
            .events_after(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "log.line" || e.kind == "job.progress")
            .collect();
        if events.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.fill_log_lines(&mut events).await.unwrap();
    let seen: Vec<(&str, Option<kiln_core::ids::JobId>)> =
        events.iter().map(|e| (e.kind.as_str(), e.job)).collect();
    assert_eq!(
        seen,
        vec![
            ("log.line", Some(a)),
            ("job.progress", Some(a)),
            ("log.line", Some(b)),
            ("job.progress", Some(b)),
        ]
    );
    assert_eq!(events[0].data["text"], "hello\n");
    assert_eq!(events[2].data["text"], "world\n");
    assert_eq!(events[1].data["name"], "step 0");
    assert_eq!(events[1].data["status"], "success");
    for e in &events {
        assert!(e.run.is_some() && e.project.is_some(), "{e:?}");
    }
}
