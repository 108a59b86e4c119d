//! The behavioural suite: every test here runs once on SQLite and once on PostgreSQL.

use std::time::Duration;

use kiln_core::ids::{JobId, JobStatus, RunId, RunStatus, StepStatus};
use kiln_proto::{Event, Step};
use kiln_store::{ExpiredLease, NewJob, Op, OpResult, Refusal, RunFilter, Store, StoreError};
use serde_json::{Map, json};

use crate::harness::{Harness, at, both_backends, new_job, new_run};

both_backends!(
    migrations_run_on_an_empty_database_and_again_on_reopen,
    projects_upsert_by_name,
    run_numbers_count_per_project_and_workflow,
    a_group_commit_applies_many_ops_and_refusals_do_not_abort_it,
    a_grant_increments_the_token_and_the_attempts,
    stale_tokens_are_refused_and_change_nothing,
    completing_twice_is_refused,
    expired_leases_requeue_until_attempts_are_spent,
    expiring_by_owner_touches_only_that_owner,
    log_chunks_append_at_the_log_length_and_read_back_in_slices,
    events_are_appended_in_order_and_readers_resume,
    list_runs_filters_and_pages_newest_first,
    resolve_run_takes_a_full_id_or_a_unique_prefix,
    status_ops_follow_the_state_machine,
    add_jobs_appends_in_order,
);

/// Events after `after`, waiting a little for PostgreSQL's outbox horizon: another test's
/// transaction still in flight holds it back for a moment.
async fn events_until(store: &Store, after: i64, want: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..200 {
        events = store.events_after(after, 10_000).await.unwrap();
        if events.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    events
}

async fn queued_run(store: &Store, jobs: Vec<NewJob>) -> RunId {
    let project = store.upsert_project("p", "/src/p").await.unwrap();
    let mut run = new_run(project.id, "ci.yml", jobs);
    run.status = RunStatus::Queued;
    store.create_run(run).await.unwrap().id
}

async fn one(store: &Store, op: Op) -> OpResult {
    let mut r = store.commit(vec![op]).await.unwrap();
    assert_eq!(r.len(), 1);
    r.remove(0)
}

async fn grant(store: &Store, job: JobId, owner: &str, ttl_ms: i64, now: i64) -> i64 {
    match one(
        store,
        Op::GrantLease {
            job,
            owner: owner.to_owned(),
            ttl_ms,
            at: at(now),
        },
    )
    .await
    {
        OpResult::Lease { token } => token,
        other => panic!("lease refused: {other:?}"),
    }
}

async fn job_status(store: &Store, job: JobId) -> JobStatus {
    store.get_job(job).await.unwrap().unwrap().status
}

fn step(index: u32, status: StepStatus) -> Step {
    Step {
        index,
        name: format!("step {index}"),
        status,
        outputs: Map::new(),
        started_at: Some(at(10)),
        finished_at: Some(at(20)),
    }
}

async fn migrations_run_on_an_empty_database_and_again_on_reopen(h: &Harness) {
    let project = h.store.upsert_project("p", "/src/p").await.unwrap();
    let run = h
        .store
        .create_run(new_run(
            project.id,
            "ci.yml",
            vec![new_job("a", JobStatus::Pending, 1)],
        ))
        .await
        .unwrap();
    // Opening again runs the migrator again: it must find everything applied.
    let again = h.reopen().await;
    let third = h.reopen().await;
    assert_eq!(again.get_run(run.id).await.unwrap(), Some(run.clone()));
    assert_eq!(third.find_project("p").await.unwrap(), Some(project));
}

async fn projects_upsert_by_name(h: &Harness) {
    let s = &h.store;
    let a = s.upsert_project("alpha", "/one").await.unwrap();
    assert_eq!(a.name, "alpha");
    assert_eq!(a.source, "/one");
    assert_eq!(
        uuid::Uuid::parse_str(&a.hook_id).unwrap().get_version_num(),
        4
    );
    let again = s
        .upsert_project("alpha", "https://example.invalid/alpha.git")
        .await
        .unwrap();
    assert_eq!(again.id, a.id, "the name is the key");
    assert_eq!(again.hook_id, a.hook_id, "the hook id never changes");
    assert_eq!(again.source, "https://example.invalid/alpha.git");
    let b = s.upsert_project("beta", "/two").await.unwrap();
    assert_ne!(b.id, a.id);
    assert_ne!(b.hook_id, a.hook_id);
    assert_eq!(s.get_project(a.id).await.unwrap(), Some(again.clone()));
    assert_eq!(s.find_project("alpha").await.unwrap(), Some(again));
    assert_eq!(s.find_project("gamma").await.unwrap(), None);
}

async fn run_numbers_count_per_project_and_workflow(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("p", "/p").await.unwrap();
    let q = s.upsert_project("q", "/q").await.unwrap();
    let mut numbers = Vec::new();
    for (project, wf) in [
        (p.id, "ci.yml"),
        (p.id, "ci.yml"),
        (p.id, "deploy.yml"),
        (p.id, "ci.yml"),
        (q.id, "ci.yml"),
    ] {
        let jobs = vec![
            new_job("build", JobStatus::Pending, 1),
            new_job("test", JobStatus::Queued, 3),
        ];
        let run = s.create_run(new_run(project, wf, jobs)).await.unwrap();
        assert_eq!(run.run_attempt, 1);
        // What create_run answers is exactly what a later read finds.
        assert_eq!(s.get_run(run.id).await.unwrap().as_ref(), Some(&run));
        assert_eq!(run.jobs.len(), 2);
        assert_eq!(run.jobs[0].key, "build");
        assert_eq!(run.jobs[1].status, JobStatus::Queued);
        numbers.push(run.run_number);
    }
    assert_eq!(numbers, vec![1, 2, 1, 3, 1]);

    let unknown = new_run(kiln_core::ids::ProjectId::new(), "ci.yml", vec![]);
    assert!(matches!(
        s.create_run(unknown).await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
}

async fn a_group_commit_applies_many_ops_and_refusals_do_not_abort_it(h: &Harness) {
    let s = &h.store;
    let jobs: Vec<NewJob> = (0..60)
        .map(|i| new_job(&format!("j{i}"), JobStatus::Pending, 1))
        .collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let run = queued_run(s, jobs).await;

    let mut ops = vec![Op::SetRunStatus {
        run,
        status: RunStatus::Running,
        at: at(1),
    }];
    for &job in &ids {
        ops.push(Op::SetJobStatus {
            job,
            status: JobStatus::Queued,
            at: at(1),
        });
        ops.push(Op::GrantLease {
            job,
            owner: "pool".into(),
            ttl_ms: 60_000,
            at: at(2),
        });
    }
    // A refused op in the middle: the rest of the batch still commits.
    ops.insert(
        7,
        Op::StartJob {
            job: JobId::new(),
            token: 1,
            at: at(2),
        },
    );
    let results = s.commit(ops).await.unwrap();
    assert_eq!(results.len(), 2 + 2 * ids.len());
    assert_eq!(
        results[7],
        OpResult::Refused {
            reason: Refusal::NotFound
        }
    );
    let leases = results
        .iter()
        .filter(|r| matches!(r, OpResult::Lease { token: 1 }))
        .count();
    assert_eq!(leases, ids.len());

    let mut ops = Vec::new();
    for &job in &ids {
        ops.push(Op::StartJob {
            job,
            token: 1,
            at: at(3),
        });
        ops.push(Op::StepResult {
            job,
            token: 1,
            step: step(0, StepStatus::Success),
        });
        ops.push(Op::LogChunk {
            job,
            token: 1,
            step: 0,
            offset: 0,
            data: b"ok\n".to_vec(),
        });
        ops.push(Op::CompleteJob {
            job,
            token: 1,
            status: JobStatus::Success,
            outputs: Map::from_iter([("out".to_owned(), json!("v"))]),
            at: at(4),
        });
    }
    ops.push(Op::SetRunStatus {
        run,
        status: RunStatus::Success,
        at: at(5),
    });
    let results = s.commit(ops).await.unwrap();
    assert!(results.iter().all(|r| *r == OpResult::Done), "{results:?}");

    let run = s.get_run(run).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Success);
    assert_eq!(run.started_at, Some(at(1)));
    assert_eq!(run.finished_at, Some(at(5)));
    assert_eq!(run.jobs.len(), ids.len());
    for (job, id) in run.jobs.iter().zip(&ids) {
        assert_eq!(job.id, *id, "jobs keep their creation order");
        assert_eq!(job.status, JobStatus::Success);
        assert_eq!(job.attempts, 1);
        assert_eq!(job.started_at, Some(at(3)));
        assert_eq!(job.finished_at, Some(at(4)));
        assert_eq!(job.outputs["out"], json!("v"));
        assert_eq!(job.steps, vec![step(0, StepStatus::Success)]);
    }
    let log = s.read_log(ids[0], 0, 100).await.unwrap();
    assert_eq!(log.data, b"ok\n");
}

async fn a_grant_increments_the_token_and_the_attempts(h: &Harness) {
    let s = &h.store;
    let job = new_job("a", JobStatus::Queued, 5);
    let id = job.id;
    queued_run(s, vec![job]).await;
    assert_eq!(grant(s, id, "w1", 1_000, 0).await, 1);
    let j = s.get_job(id).await.unwrap().unwrap();
    assert_eq!((j.status, j.attempts), (JobStatus::Leased, 1));

    // A second grant while leased is refused.
    let r = one(
        s,
        Op::GrantLease {
            job: id,
            owner: "w2".into(),
            ttl_ms: 1_000,
            at: at(1),
        },
    )
    .await;
    assert_eq!(
        r,
        OpResult::Refused {
            reason: Refusal::WrongState {
                job: id,
                status: JobStatus::Leased
            }
        }
    );

    // The holder asking again (its commit applied, its answer was lost): the same token,
    // nothing changed, no second `job.leased`.
    let leased = |events: &[Event]| events.iter().filter(|e| e.kind == "job.leased").count();
    let before = leased(&events_until(s, 0, 3).await);
    assert_eq!(grant(s, id, "w1", 1_000, 2).await, 1);
    let j = s.get_job(id).await.unwrap().unwrap();
    assert_eq!((j.status, j.attempts), (JobStatus::Leased, 1));
    assert_eq!(leased(&s.events_after(0, 10_000).await.unwrap()), before);

    for (round, expected) in [(1, 2), (2, 3)] {
        let expired = s.expire_leases(at(10_000 * round), None).await.unwrap();
        assert_eq!(expired.len(), 1);
        assert!(expired[0].requeued);
        assert_eq!(grant(s, id, "w1", 1_000, 10_000 * round).await, expected);
        assert_eq!(s.get_job(id).await.unwrap().unwrap().attempts, expected);
    }
}

async fn stale_tokens_are_refused_and_change_nothing(h: &Harness) {
    let s = &h.store;
    let job = new_job("a", JobStatus::Queued, 3);
    let id = job.id;
    queued_run(s, vec![job]).await;
    assert_eq!(grant(s, id, "old", 1_000, 0).await, 1);
    s.expire_leases(at(5_000), None).await.unwrap();
    assert_eq!(grant(s, id, "new", 60_000, 5_000).await, 2);
    let before = s.get_job(id).await.unwrap().unwrap();

    let stale = Refusal::StaleToken {
        job: id,
        given: 1,
        current: 2,
    };
    let ops = vec![
        Op::StartJob {
            job: id,
            token: 1,
            at: at(6_000),
        },
        Op::StepResult {
            job: id,
            token: 1,
            step: step(0, StepStatus::Success),
        },
        Op::LogChunk {
            job: id,
            token: 1,
            step: 0,
            offset: 0,
            data: b"stale".to_vec(),
        },
        Op::RenewLease {
            job: id,
            token: 1,
            ttl_ms: 1_000_000,
            at: at(6_000),
        },
        Op::CompleteJob {
            job: id,
            token: 1,
            status: JobStatus::Success,
            outputs: Map::new(),
            at: at(6_000),
        },
    ];
    let results = s.commit(ops).await.unwrap();
    for r in &results {
        assert_eq!(
            *r,
            OpResult::Refused {
                reason: stale.clone()
            }
        );
    }
    let after = s.get_job(id).await.unwrap().unwrap();
    assert_eq!(after, before);
    assert!(after.steps.is_empty());
    assert_eq!(s.read_log(id, 0, 100).await.unwrap().total, 0);
    // The renewal was refused: the lease still expires at 5_000 + 60_000.
    assert!(s.expire_leases(at(64_999), None).await.unwrap().is_empty());
    assert_eq!(s.expire_leases(at(65_001), None).await.unwrap().len(), 1);
}

async fn completing_twice_is_refused(h: &Harness) {
    let s = &h.store;
    let job = new_job("a", JobStatus::Queued, 1);
    let id = job.id;
    queued_run(s, vec![job]).await;
    let token = grant(s, id, "w", 60_000, 0).await;
    assert_eq!(
        one(
            s,
            Op::StartJob {
                job: id,
                token,
                at: at(1)
            }
        )
        .await,
        OpResult::Done
    );
    let complete = |status, value: &str| Op::CompleteJob {
        job: id,
        token,
        status,
        outputs: Map::from_iter([("v".to_owned(), json!(value))]),
        at: at(2),
    };
    assert_eq!(
        one(s, complete(JobStatus::Success, "first")).await,
        OpResult::Done
    );
    assert_eq!(
        one(s, complete(JobStatus::Failure, "second")).await,
        OpResult::Refused {
            reason: Refusal::WrongState {
                job: id,
                status: JobStatus::Success
            }
        }
    );
    let j = s.get_job(id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Success);
    assert_eq!(j.outputs["v"], json!("first"));
    // A non-terminal completion is refused as a bad transition.
    let other = new_job("b", JobStatus::Queued, 1);
    let other_id = other.id;
    s.commit(vec![Op::AddJobs {
        run: j.run,
        jobs: vec![other],
        at: at(3),
    }])
    .await
    .unwrap();
    let t = grant(s, other_id, "w", 60_000, 3).await;
    assert_eq!(
        one(
            s,
            Op::CompleteJob {
                job: other_id,
                token: t,
                status: JobStatus::Queued,
                outputs: Map::new(),
                at: at(4)
            }
        )
        .await,
        OpResult::Refused {
            reason: Refusal::BadTransition {
                job: other_id,
                to: JobStatus::Queued
            }
        }
    );
}

async fn expired_leases_requeue_until_attempts_are_spent(h: &Harness) {
    let s = &h.store;
    let job = new_job("a", JobStatus::Queued, 2);
    let id = job.id;
    let run = queued_run(s, vec![job]).await;
    let token = grant(s, id, "w", 1_000, 0).await;
    assert_eq!(
        one(
            s,
            Op::StartJob {
                job: id,
                token,
                at: at(10)
            }
        )
        .await,
        OpResult::Done
    );
    assert!(s.expire_leases(at(999), None).await.unwrap().is_empty());
    assert_eq!(
        s.expire_leases(at(1_001), None).await.unwrap(),
        vec![ExpiredLease {
            job: id,
            run,
            requeued: true
        }]
    );
    let j = s.get_job(id).await.unwrap().unwrap();
    assert_eq!((j.status, j.attempts), (JobStatus::Queued, 1));

    assert_eq!(grant(s, id, "w", 1_000, 2_000).await, 2);
    assert_eq!(s.get_job(id).await.unwrap().unwrap().attempts, 2);
    // Renewal pushes the expiry out.
    assert_eq!(
        one(
            s,
            Op::RenewLease {
                job: id,
                token: 2,
                ttl_ms: 1_000,
                at: at(2_900)
            }
        )
        .await,
        OpResult::Done
    );
    assert!(s.expire_leases(at(3_500), None).await.unwrap().is_empty());
    assert_eq!(
        s.expire_leases(at(4_000), None).await.unwrap(),
        vec![ExpiredLease {
            job: id,
            run,
            requeued: false
        }]
    );
    let j = s.get_job(id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failure);
    assert_eq!(j.finished_at, Some(at(4_000)));
    // Nothing left to expire, and the old holder is refused.
    assert!(s.expire_leases(at(100_000), None).await.unwrap().is_empty());
    assert!(matches!(
        one(
            s,
            Op::StartJob {
                job: id,
                token: 2,
                at: at(5_000)
            }
        )
        .await,
        OpResult::Refused {
            reason: Refusal::WrongState {
                status: JobStatus::Failure,
                ..
            }
        }
    ));
}

async fn expiring_by_owner_touches_only_that_owner(h: &Harness) {
    let s = &h.store;
    let jobs = vec![
        new_job("a", JobStatus::Queued, 3),
        new_job("b", JobStatus::Queued, 3),
        new_job("c", JobStatus::Queued, 1),
    ];
    let (a, b, c) = (jobs[0].id, jobs[1].id, jobs[2].id);
    queued_run(s, jobs).await;
    grant(s, a, "me", 3_600_000, 0).await;
    grant(s, b, "other", 1_000, 0).await;
    grant(s, c, "me", 3_600_000, 0).await;

    // Long before any expiry: the owner's leases all come back, nobody else's.
    let mut expired = s.expire_leases(at(10), Some("me")).await.unwrap();
    expired.sort_by_key(|e| e.job);
    let mut want = vec![(a, true), (c, false)];
    want.sort();
    assert_eq!(
        expired
            .iter()
            .map(|e| (e.job, e.requeued))
            .collect::<Vec<_>>(),
        want
    );
    assert_eq!(job_status(s, a).await, JobStatus::Queued);
    assert_eq!(job_status(s, c).await, JobStatus::Failure);
    // `other`'s lease has expired by time, but an owner sweep leaves it alone.
    assert!(
        s.expire_leases(at(5_000), Some("me"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(job_status(s, b).await, JobStatus::Leased);
    assert_eq!(s.expire_leases(at(5_000), None).await.unwrap().len(), 1);
    assert_eq!(job_status(s, b).await, JobStatus::Queued);
}

async fn log_chunks_append_at_the_log_length_and_read_back_in_slices(h: &Harness) {
    let s = &h.store;
    let job = new_job("a", JobStatus::Queued, 2);
    let id = job.id;
    queued_run(s, vec![job]).await;
    let token = grant(s, id, "w", 60_000, 0).await;
    let chunk = |step, offset, data: &[u8]| Op::LogChunk {
        job: id,
        token,
        step,
        offset,
        data: data.to_vec(),
    };
    let results = s
        .commit(vec![
            chunk(0, 0, b"hello "),
            chunk(0, 6, b"world\n"),
            chunk(0, 3, b"bad"),
            chunk(2, 12, b""),
            chunk(2, 12, b"bye\n"),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            OpResult::Done,
            OpResult::Done,
            OpResult::Refused {
                reason: Refusal::BadOffset {
                    job: id,
                    expected: 12,
                    given: 3
                }
            },
            OpResult::Done,
            OpResult::Done,
        ]
    );
    let all = s.read_log(id, 0, 1 << 20).await.unwrap();
    assert_eq!(all.data, b"hello world\nbye\n");
    assert_eq!((all.next_offset, all.total), (16, 16));
    let mid = s.read_log(id, 3, 5).await.unwrap();
    assert_eq!(mid.data, b"lo wo");
    assert_eq!((mid.next_offset, mid.total), (8, 16));
    let rest = s.read_log(id, mid.next_offset, 100).await.unwrap();
    assert_eq!(rest.data, b"rld\nbye\n");
    assert_eq!(rest.next_offset, 16);
    let end = s.read_log(id, 16, 100).await.unwrap();
    assert!(end.data.is_empty());
    assert_eq!(end.next_offset, 16);
    let head = s.read_log(id, 0, 0).await.unwrap();
    assert_eq!((head.data.len(), head.total), (0, 16));
    // Where each step's output starts (step 1 printed nothing).
    assert_eq!(s.log_steps(id).await.unwrap(), vec![(0, 0), (2, 12)]);

    // The bytes live in the blob folder: the chunks of one commit share one segment.
    let segments = |h: &Harness| {
        let mut n = 0;
        for dir in std::fs::read_dir(h.blob_dir().join("logs")).unwrap() {
            n += std::fs::read_dir(dir.unwrap().path()).unwrap().count();
        }
        n
    };
    assert_eq!(segments(h), 1);

    // A new attempt starts a new log.
    s.expire_leases(at(1_000_000), None).await.unwrap();
    let token = grant(s, id, "w", 60_000, 1_000_000).await;
    assert_eq!(s.read_log(id, 0, 100).await.unwrap().total, 0);
    assert_eq!(
        one(
            s,
            Op::LogChunk {
                job: id,
                token,
                step: 1,
                offset: 0,
                data: b"again".to_vec()
            }
        )
        .await,
        OpResult::Done
    );
    assert_eq!(s.read_log(id, 0, 100).await.unwrap().data, b"again");
    assert_eq!(
        s.log_steps(id).await.unwrap(),
        vec![(1, 0)],
        "only the latest attempt"
    );
    assert_eq!(segments(h), 2);

    assert!(matches!(
        s.read_log(JobId::new(), 0, 10).await,
        Err(StoreError::NotFound { what: "job", .. })
    ));
}

async fn events_are_appended_in_order_and_readers_resume(h: &Harness) {
    let s = &h.store;
    let job = new_job("a", JobStatus::Pending, 1);
    let id = job.id;
    let run = queued_run(s, vec![job]).await;
    let results = s
        .commit(vec![
            Op::SetRunStatus {
                run,
                status: RunStatus::Running,
                at: at(1),
            },
            Op::SetJobStatus {
                job: id,
                status: JobStatus::Queued,
                at: at(1),
            },
        ])
        .await
        .unwrap();
    assert!(results.iter().all(|r| *r == OpResult::Done));
    let token = grant(s, id, "w", 60_000, 2).await;
    s.commit(vec![
        Op::StartJob {
            job: id,
            token,
            at: at(3),
        },
        Op::CompleteJob {
            job: id,
            token,
            status: JobStatus::Failure,
            outputs: Map::new(),
            at: at(4),
        },
        Op::SetRunStatus {
            run,
            status: RunStatus::Failure,
            at: at(5),
        },
    ])
    .await
    .unwrap();

    let kinds = [
        "run.queued",
        "run.started",
        "job.queued",
        "job.leased",
        "job.started",
        "job.completed",
        "job.failed",
        "run.completed",
        "run.failed",
    ];
    let events = events_until(s, 0, kinds.len()).await;
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        kinds
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert!(events.iter().all(|e| e.run == Some(run)));
    assert_eq!(events[5].job, Some(id));
    assert_eq!(events[5].data["status"], json!("failure"));
    assert_eq!(events[7].data, json!({ "status": "failure" }));
    assert_eq!(events[7].job, None);
    assert_eq!(events[4].at, at(3));

    // Resume after any id; limits cut the page.
    let resumed = s.events_after(events[3].id, 10_000).await.unwrap();
    assert_eq!(resumed, events[4..].to_vec());
    let page = s.events_after(events[0].id, 2).await.unwrap();
    assert_eq!(page, events[1..3].to_vec());
    assert!(s.events_after(events[8].id, 10).await.unwrap().is_empty());
    // Steps and log chunks add no events; refusals add none.
    s.commit(vec![Op::CompleteJob {
        job: id,
        token,
        status: JobStatus::Success,
        outputs: Map::new(),
        at: at(6),
    }])
    .await
    .unwrap();
    assert!(s.events_after(events[8].id, 10).await.unwrap().is_empty());
}

async fn list_runs_filters_and_pages_newest_first(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("p", "/p").await.unwrap();
    let q = s.upsert_project("q", "/q").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let (project, wf) = if i % 3 == 2 {
            (q.id, "other.yml")
        } else {
            (p.id, "ci.yml")
        };
        let run = s.create_run(new_run(project, wf, vec![])).await.unwrap();
        ids.push(run.id);
    }
    s.commit(vec![Op::SetRunStatus {
        run: ids[1],
        status: RunStatus::Running,
        at: at(1),
    }])
    .await
    .unwrap();
    let list = |filter: RunFilter| async move {
        s.list_runs(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                assert!(r.jobs.is_empty());
                r.id
            })
            .collect::<Vec<_>>()
    };
    let newest_first: Vec<RunId> = ids.iter().rev().copied().collect();
    assert_eq!(list(RunFilter::default()).await, newest_first);
    assert_eq!(
        list(RunFilter {
            project: Some(q.id),
            ..Default::default()
        })
        .await,
        vec![ids[5], ids[2]]
    );
    assert_eq!(
        list(RunFilter {
            status: Some(RunStatus::Running),
            ..Default::default()
        })
        .await,
        vec![ids[1]]
    );
    for name in ["other.yml", "other.yml name"] {
        assert_eq!(
            list(RunFilter {
                workflow: Some(name.to_owned()),
                ..Default::default()
            })
            .await,
            vec![ids[5], ids[2]]
        );
    }
    // Paging with the cursor walks every run once.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = list(RunFilter {
            before,
            limit: 3,
            ..Default::default()
        })
        .await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        before = page.last().copied();
        seen.extend(page);
    }
    assert_eq!(seen, newest_first);
    assert_eq!(
        list(RunFilter {
            project: Some(p.id),
            before: Some(ids[4]),
            limit: 2,
            ..Default::default()
        })
        .await,
        vec![ids[3], ids[1]]
    );
}

async fn resolve_run_takes_a_full_id_or_a_unique_prefix(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("p", "/p").await.unwrap();
    let a = s
        .create_run(new_run(
            p.id,
            "ci.yml",
            vec![new_job("x", JobStatus::Pending, 1)],
        ))
        .await
        .unwrap();
    let b = s.create_run(new_run(p.id, "ci.yml", vec![])).await.unwrap();
    let (ta, tb) = (a.id.to_string(), b.id.to_string());
    assert_eq!(s.resolve_run(&ta).await.unwrap(), Some(a.clone()));
    assert_eq!(
        s.resolve_run(&ta.to_uppercase()).await.unwrap(),
        Some(a.clone())
    );
    // The shortest prefix that tells them apart, and one character less.
    let common = ta
        .bytes()
        .zip(tb.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    let unique = &ta[..(common + 1).max(4)];
    assert_eq!(s.resolve_run(unique).await.unwrap(), Some(a.clone()));
    if common >= 4 {
        assert!(matches!(
            s.resolve_run(&ta[..common]).await,
            Err(StoreError::Ambiguous { .. })
        ));
    }
    assert!(matches!(
        s.resolve_run(&ta[..3]).await,
        Err(StoreError::PrefixTooShort { .. })
    ));
    assert_eq!(s.resolve_run("ffffffff").await.unwrap(), None);
    assert_eq!(s.resolve_run("zz%_zz").await.unwrap(), None);
    assert_eq!(
        s.resolve_run(&RunId::new().to_string()).await.unwrap(),
        None
    );
}

async fn status_ops_follow_the_state_machine(h: &Harness) {
    let s = &h.store;
    let jobs = vec![
        new_job("a", JobStatus::Pending, 1),
        new_job("b", JobStatus::Pending, 1),
    ];
    let (a, b) = (jobs[0].id, jobs[1].id);
    let run = queued_run(s, jobs).await;
    let set = |job, status| Op::SetJobStatus {
        job,
        status,
        at: at(7),
    };
    let results = s
        .commit(vec![
            set(a, JobStatus::Running),
            set(a, JobStatus::Queued),
            set(a, JobStatus::Queued),
            set(b, JobStatus::Skipped),
            set(b, JobStatus::Queued),
            set(JobId::new(), JobStatus::Queued),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            OpResult::Refused {
                reason: Refusal::BadTransition {
                    job: a,
                    to: JobStatus::Running
                }
            },
            OpResult::Done,
            OpResult::Done,
            OpResult::Done,
            OpResult::Refused {
                reason: Refusal::WrongState {
                    job: b,
                    status: JobStatus::Skipped
                }
            },
            OpResult::Refused {
                reason: Refusal::NotFound
            },
        ]
    );
    let skipped = s.get_job(b).await.unwrap().unwrap();
    assert_eq!(skipped.finished_at, Some(at(7)));
    // A leased job cannot be moved outside its lease.
    grant(s, a, "w", 60_000, 8).await;
    assert_eq!(
        one(s, set(a, JobStatus::Cancelled)).await,
        OpResult::Refused {
            reason: Refusal::WrongState {
                job: a,
                status: JobStatus::Leased
            }
        }
    );
    // A finished run refuses further status changes and new jobs.
    let done = s
        .commit(vec![
            Op::SetRunStatus {
                run,
                status: RunStatus::Cancelled,
                at: at(9),
            },
            Op::SetRunStatus {
                run,
                status: RunStatus::Running,
                at: at(10),
            },
            Op::AddJobs {
                run,
                jobs: vec![new_job("late", JobStatus::Pending, 1)],
                at: at(10),
            },
            Op::SetRunStatus {
                run: RunId::new(),
                status: RunStatus::Running,
                at: at(10),
            },
        ])
        .await
        .unwrap();
    let finished = Refusal::RunWrongState {
        run,
        status: RunStatus::Cancelled,
    };
    assert_eq!(
        done,
        vec![
            OpResult::Done,
            OpResult::Refused {
                reason: finished.clone()
            },
            OpResult::Refused { reason: finished },
            OpResult::Refused {
                reason: Refusal::NotFound
            },
        ]
    );
    let r = s.get_run(run).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!((r.started_at, r.finished_at), (None, Some(at(9))));
    assert_eq!(r.jobs.len(), 2);
}

async fn add_jobs_appends_in_order(h: &Harness) {
    let s = &h.store;
    let first = new_job("first", JobStatus::Pending, 1);
    let run = queued_run(s, vec![first.clone()]).await;
    let mut later: Vec<NewJob> = (0..3)
        .map(|i| new_job(&format!("m{i}"), JobStatus::Queued, 2))
        .collect();
    later[1].matrix = Map::from_iter([("os".to_owned(), json!("linux"))]);
    later[1].needs = vec!["first".to_owned()];
    assert_eq!(
        s.commit(vec![Op::AddJobs {
            run,
            jobs: later.clone(),
            at: at(3),
        }])
        .await
        .unwrap(),
        vec![OpResult::Done]
    );
    let r = s.get_run(run).await.unwrap().unwrap();
    let keys: Vec<&str> = r.jobs.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(keys, ["first", "m0", "m1", "m2"]);
    assert_eq!(r.jobs[2].matrix["os"], json!("linux"));
    assert_eq!(r.jobs[2].needs, vec!["first".to_owned()]);
    assert_eq!(r.jobs[2].max_attempts, 2);
    assert_eq!(r.jobs[2].status, JobStatus::Queued);
    assert_eq!(
        s.commit(vec![Op::AddJobs {
            run: RunId::new(),
            jobs: vec![],
            at: at(3)
        }])
        .await
        .unwrap(),
        vec![OpResult::Refused {
            reason: Refusal::NotFound
        }]
    );
}
