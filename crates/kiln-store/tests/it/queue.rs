//! The job queue that workers and replicas claim from: labels, order, concurrent claimers,
//! and fencing of a lease that expired.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::ids::{JobId, JobStatus, RunStatus};
use kiln_store::{Claim, Claimed, ExpiredLease, NewJob, Op, OpResult, Refusal};
use serde_json::{Map, json};
use tokio::sync::Mutex;

use crate::harness::{Harness, at, both_backends, new_job, new_run};

both_backends!(
    claims_take_queued_jobs_oldest_first_that_the_claimer_has_labels_for,
    concurrent_claimers_never_take_the_same_job,
    a_completion_from_an_expired_claim_is_refused,
    workers_register_and_show_what_they_hold,
);

fn labelled(key: &str, status: JobStatus, labels: &[&str]) -> NewJob {
    NewJob {
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        ..new_job(key, status, 3)
    }
}

fn claim(owner: &str, labels: Option<&[&str]>, limit: u32, now: i64) -> Claim {
    Claim {
        owner: owner.to_owned(),
        labels: labels.map(|l| l.iter().map(|s| (*s).to_owned()).collect()),
        limit,
        ttl_ms: 10_000,
        at: at(now),
        offered_only: false,
    }
}

/// A run of `jobs` in `project` that the engine `owner` drives until `until` (ms).
async fn driven_run(
    s: &kiln_store::Store,
    project: kiln_core::ids::ProjectId,
    jobs: Vec<NewJob>,
    owner: &str,
    until: i64,
) -> kiln_proto::Run {
    let mut run = new_run(project, "ci.yml", jobs);
    run.driver = Some(kiln_store::Driver {
        owner: owner.to_owned(),
        until: at(until),
    });
    s.create_run(run).await.unwrap()
}

fn keys(claimed: &[Claimed]) -> Vec<&str> {
    claimed.iter().map(|c| c.job.key.as_str()).collect()
}

async fn claims_take_queued_jobs_oldest_first_that_the_claimer_has_labels_for(h: &Harness) {
    let s = &h.store;
    let project = s.upsert_project("p", "/src/p").await.unwrap();
    // The newer run is created first: the queue goes by when jobs were made, not by insertion.
    let mut newer = new_run(
        project.id,
        "ci.yml",
        vec![labelled("n1", JobStatus::Queued, &[])],
    );
    newer.at = at(5_000);
    s.create_run(newer).await.unwrap();
    let older = new_run(
        project.id,
        "ci.yml",
        vec![
            labelled("linux", JobStatus::Queued, &["linux"]),
            labelled("gpu", JobStatus::Queued, &["linux", "gpu"]),
            labelled("waits", JobStatus::Pending, &[]),
            labelled("any", JobStatus::Queued, &[]),
            labelled("done", JobStatus::Success, &[]),
        ],
    );
    let older_id = older.id;
    s.create_run(older).await.unwrap();
    let head = s.event_head().await.unwrap();

    // A worker with `linux` (and more) takes the linux job and the unlabelled ones, in
    // order, but not the one that also needs a GPU.
    let got = s
        .claim_jobs(&claim("w1", Some(&["x86_64", "linux"]), 10, 6_000))
        .await
        .unwrap();
    assert_eq!(keys(&got), ["linux", "any", "n1"]);
    for c in &got {
        assert_eq!(c.project, project.id);
        assert_eq!(
            (c.job.status, c.job.attempts, c.token),
            (JobStatus::Leased, 1, 1)
        );
    }
    assert_eq!(got[0].job.labels, ["linux"]);
    assert_eq!(got[0].job.run, older_id);

    // Leased jobs are taken; the limit holds; no labels at all takes only unlabelled jobs.
    assert!(
        s.claim_jobs(&claim("w2", Some(&[]), 10, 6_000))
            .await
            .unwrap()
            .is_empty()
    );
    let gpu = s
        .claim_jobs(&claim("w2", Some(&["gpu", "linux"]), 1, 6_000))
        .await
        .unwrap();
    assert_eq!(keys(&gpu), ["gpu"]);
    // The local pool (labels `None`) would have taken anything; nothing queued is left.
    assert!(
        s.claim_jobs(&claim("pool", None, 10, 6_000))
            .await
            .unwrap()
            .is_empty()
    );

    // Every claim is recorded with its owner, and reads show the lease.
    let job = s.get_job(gpu[0].job.id).await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.labels.clone()),
        (
            JobStatus::Leased,
            vec!["linux".to_owned(), "gpu".to_owned()]
        )
    );
    let mut events = Vec::new();
    for _ in 0..200 {
        events = s.events_after(head, 100).await.unwrap();
        if events.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leased: Vec<(Option<JobId>, serde_json::Value)> = events
        .iter()
        .filter(|e| e.kind == "job.leased")
        .map(|e| (e.job, e.data["owner"].clone()))
        .collect();
    assert_eq!(leased.len(), 4, "{events:?}");
    assert!(leased.contains(&(Some(gpu[0].job.id), json!("w2"))));
    assert!(leased.contains(&(Some(got[0].job.id), json!("w1"))));
}

async fn concurrent_claimers_never_take_the_same_job(h: &Harness) {
    let s = &h.store;
    let project = s.upsert_project("p", "/src/p").await.unwrap();
    let jobs: Vec<NewJob> = (0..120)
        .map(|i| labelled(&format!("j{i}"), JobStatus::Queued, &[]))
        .collect();
    let mut run = new_run(project.id, "ci.yml", jobs);
    run.status = RunStatus::Running;
    let run = s.create_run(run).await.unwrap();

    // Four claimers, each with its own store handle (on PostgreSQL its own pool, as a
    // replica would have), claim one job at a time and complete it.
    let seen: Arc<Mutex<HashMap<JobId, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = h.reopen().await;
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            loop {
                let got = store
                    .claim_jobs(&claim(&owner, Some(&["linux"]), 1, 1_000))
                    .await
                    .unwrap();
                assert!(got.len() <= 1, "a claim of one took {}", got.len());
                let Some(c) = got.into_iter().next() else {
                    break;
                };
                *seen.lock().await.entry(c.job.id).or_default() += 1;
                let done = store
                    .commit(vec![Op::CompleteJob {
                        job: c.job.id,
                        token: c.token,
                        status: JobStatus::Success,
                        outputs: Map::new(),
                        at: at(2_000),
                    }])
                    .await
                    .unwrap();
                assert_eq!(done, [OpResult::Done]);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().await;
    assert_eq!(seen.len(), 120);
    assert!(seen.values().all(|n| *n == 1), "a job was claimed twice");
    let run = s.get_run(run.id).await.unwrap().unwrap();
    assert!(
        run.jobs
            .iter()
            .all(|j| (j.status, j.attempts) == (JobStatus::Success, 1))
    );
}

async fn a_completion_from_an_expired_claim_is_refused(h: &Harness) {
    let s = &h.store;
    let project = s.upsert_project("p", "/src/p").await.unwrap();
    let mut run = new_run(
        project.id,
        "ci.yml",
        vec![NewJob {
            max_attempts: 2,
            ..labelled("a", JobStatus::Queued, &[])
        }],
    );
    run.status = RunStatus::Running;
    let run = s.create_run(run).await.unwrap();
    let id = run.jobs[0].id;

    let first = s.claim_jobs(&claim("dead", None, 1, 0)).await.unwrap();
    assert_eq!(first[0].token, 1);
    // The holder goes quiet: its lease expires and the job goes back to the queue.
    assert_eq!(
        s.expire_leases(at(10_001), None).await.unwrap(),
        vec![ExpiredLease {
            job: id,
            run: run.id,
            requeued: true
        }]
    );
    let second = s
        .claim_jobs(&claim("alive", None, 1, 10_002))
        .await
        .unwrap();
    assert_eq!((second[0].token, second[0].job.attempts), (2, 2));

    // The late completion of the dead holder is refused and changes nothing.
    let late = s
        .commit(vec![Op::CompleteJob {
            job: id,
            token: first[0].token,
            status: JobStatus::Success,
            outputs: Map::new(),
            at: at(10_003),
        }])
        .await
        .unwrap();
    assert_eq!(
        late,
        [OpResult::Refused {
            reason: Refusal::StaleToken {
                job: id,
                given: 1,
                current: 2
            }
        }]
    );
    assert_eq!(
        s.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Leased
    );
    let done = s
        .commit(vec![Op::CompleteJob {
            job: id,
            token: 2,
            status: JobStatus::Failure,
            outputs: Map::new(),
            at: at(10_004),
        }])
        .await
        .unwrap();
    assert_eq!(done, [OpResult::Done]);
    // Its events: leased twice (once requeued between), then completed and failed, in order.
    let mut events = Vec::new();
    for _ in 0..200 {
        events = s.events_after(0, 1_000).await.unwrap();
        if events.iter().any(|e| e.kind == "job.failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let of_job: Vec<(&str, serde_json::Value)> = events
        .iter()
        .filter(|e| e.job == Some(id))
        .map(|e| (e.kind.as_str(), e.data.clone()))
        .collect();
    assert_eq!(
        of_job[of_job.len() - 2..],
        [
            ("job.completed", json!({"status": "failure", "attempt": 2})),
            ("job.failed", json!({"status": "failure", "attempt": 2})),
        ]
    );
    assert_eq!(of_job.iter().filter(|(k, _)| *k == "job.leased").count(), 2);
    // Spent: when the second holder's lease had expired instead, the job would fail.
    assert!(
        s.claim_jobs(&claim("x", None, 1, 10_005))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn workers_register_and_show_what_they_hold(h: &Harness) {
    use kiln_proto::workers::{RegisterWorker, WorkerStatus, lease_owner};
    let s = &h.store;
    let day = Duration::from_secs(86_400);
    let w = s
        .register_worker(
            &RegisterWorker {
                name: "builder-1".to_owned(),
                labels: vec!["linux".to_owned(), "x86_64".to_owned()],
                slots: 2,
                protocol: 1,
                version: "0.1.0".to_owned(),
            },
            at(0),
        )
        .await
        .unwrap();
    let view = s.get_worker(w, at(1), day).await.unwrap().unwrap();
    assert_eq!(
        (view.name.as_str(), view.slots, view.status),
        ("builder-1", 2, WorkerStatus::Idle)
    );
    assert_eq!(view.labels, ["linux", "x86_64"]);

    // It holds what it claimed under its owner id: busy.
    let project = s.upsert_project("p", "/src/p").await.unwrap();
    let mut run = new_run(
        project.id,
        "ci.yml",
        vec![labelled("a", JobStatus::Queued, &["linux"])],
    );
    run.status = RunStatus::Running;
    s.create_run(run).await.unwrap();
    let got = s
        .claim_jobs(&Claim {
            owner: lease_owner(w),
            labels: Some(view.labels.clone()),
            limit: 2,
            ttl_ms: 10_000,
            at: at(2),
            offered_only: false,
        })
        .await
        .unwrap();
    let view = s.get_worker(w, at(3), day).await.unwrap().unwrap();
    assert_eq!(view.status, WorkerStatus::Busy);
    assert_eq!(view.jobs, [got[0].job.id]);

    // Paused, then not heard from: offline wins; heard from again: paused.
    assert!(s.set_worker_paused(w, true).await.unwrap());
    assert_eq!(s.worker_seen(w, at(4)).await.unwrap(), Some(true));
    let list = s.list_workers(at(5), day).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, WorkerStatus::Paused);
    let later = s.list_workers(at(4 + 86_400_001), day).await.unwrap();
    assert_eq!(later[0].status, WorkerStatus::Offline);
    assert!(s.set_worker_paused(w, false).await.unwrap());
    assert_eq!(s.worker_seen(w, at(6)).await.unwrap(), Some(false));
    // Unknown workers are said to be so.
    let nobody = kiln_proto::WorkerId::new();
    assert_eq!(s.worker_seen(nobody, at(7)).await.unwrap(), None);
    assert!(!s.set_worker_paused(nobody, true).await.unwrap());
    assert!(s.get_worker(nobody, at(7), day).await.unwrap().is_none());
}

both_backends!(replicas_drive_each_run_alone_and_take_over_runs_whose_driver_stopped);

async fn replicas_drive_each_run_alone_and_take_over_runs_whose_driver_stopped(h: &Harness) {
    use kiln_store::LeaseScope;
    let s = &h.store;
    let project = s.upsert_project("p", "/src/p").await.unwrap();
    let by_a = driven_run(
        s,
        project.id,
        vec![new_job("x", JobStatus::Queued, 3)],
        "a",
        10_000,
    )
    .await;
    let nobody = s
        .create_run(new_run(
            project.id,
            "ci.yml",
            vec![new_job("y", JobStatus::Queued, 3)],
        ))
        .await
        .unwrap();
    let leased = driven_run(
        s,
        project.id,
        vec![new_job("z", JobStatus::Queued, 3)],
        "dead",
        1_000,
    )
    .await;
    let granted = s
        .commit(vec![Op::GrantLease {
            job: leased.jobs[0].id,
            owner: "worker:w".to_owned(),
            ttl_ms: 4_000,
            at: at(0),
        }])
        .await
        .unwrap();
    assert!(matches!(granted[0], OpResult::Lease { .. }));

    // At 5 s: `a` still drives its run; `b` gets the run nobody drives; the run whose
    // driver is gone still has a job under a live lease.
    assert_eq!(
        s.claim_runs("b", at(65_000), at(5_000)).await.unwrap(),
        [nobody.id]
    );
    // `a` takes its own again (a restart), renews, and loses nothing.
    assert_eq!(
        s.claim_runs("a", at(20_000), at(5_000)).await.unwrap(),
        [by_a.id]
    );
    assert!(
        s.renew_runs("a", &[by_a.id], at(30_000))
            .await
            .unwrap()
            .is_empty()
    );
    // `b` leaves the lease of a run someone else drives alone … until that driver is gone.
    let none = s
        .expire_leases_of(at(3_000), LeaseScope::ExpiredDrivenBy("b"))
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let taken = s
        .expire_leases_of(at(6_000), LeaseScope::ExpiredDrivenBy("b"))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert!(taken[0].requeued);
    // (A claim names the runs the claimer drives already, too.)
    assert_eq!(
        s.claim_runs("b", at(66_000), at(6_000)).await.unwrap(),
        [nobody.id, leased.id]
    );

    // `a` stops renewing: after its claim ran out, `b` takes its run, and `a` hears it lost it.
    assert!(
        s.claim_runs("b", at(90_000), at(29_000))
            .await
            .unwrap()
            .contains(&nobody.id)
    );
    let later = s.claim_runs("b", at(95_000), at(31_000)).await.unwrap();
    assert!(later.contains(&by_a.id), "{later:?}");
    assert_eq!(
        s.renew_runs("a", &[by_a.id], at(40_000)).await.unwrap(),
        [by_a.id]
    );
    // Many at once (one statement): only the ones no longer driven, or unknown, are lost.
    let unknown = kiln_core::ids::RunId::new();
    assert_eq!(
        s.renew_runs("b", &[nobody.id, unknown, by_a.id, leased.id], at(100_000))
            .await
            .unwrap(),
        [unknown]
    );
    assert_eq!(
        s.renew_runs("a", &[nobody.id, by_a.id], at(100_000))
            .await
            .unwrap(),
        [nobody.id, by_a.id]
    );
}

both_backends!(a_cancellation_asked_elsewhere_reaches_the_run_s_driver);
async fn a_cancellation_asked_elsewhere_reaches_the_run_s_driver(h: &Harness) {
    let s = &h.store;
    let project = s.upsert_project("p", "/src/p").await.unwrap();
    let by_a = driven_run(
        s,
        project.id,
        vec![new_job("x", JobStatus::Queued, 3)],
        "a",
        60_000,
    )
    .await;
    let by_b = driven_run(
        s,
        project.id,
        vec![new_job("y", JobStatus::Queued, 3)],
        "b",
        60_000,
    )
    .await;
    assert!(s.cancel_requests("a").await.unwrap().is_empty());

    let head = s.event_head().await.unwrap();
    // Asked twice: one request, one event; only the driver is told.
    assert!(s.request_cancel(by_a.id, at(1_000)).await.unwrap());
    assert!(s.request_cancel(by_a.id, at(2_000)).await.unwrap());
    assert_eq!(s.cancel_requests("a").await.unwrap(), [by_a.id]);
    assert!(s.cancel_requests("b").await.unwrap().is_empty());
    let mut asked = Vec::new();
    for _ in 0..100 {
        asked = s
            .events_after(head, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "run.cancel_requested")
            .collect::<Vec<_>>();
        if !asked.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].run, Some(by_a.id));

    // A run that ended cannot be asked, and one cancelled since is no longer listed.
    s.commit(vec![Op::SetRunStatus {
        run: by_b.id,
        status: RunStatus::Failure,
        at: at(3_000),
    }])
    .await
    .unwrap();
    assert!(!s.request_cancel(by_b.id, at(4_000)).await.unwrap());
    assert!(s.cancel_requests("b").await.unwrap().is_empty());
    s.commit(vec![Op::SetRunStatus {
        run: by_a.id,
        status: RunStatus::Cancelled,
        at: at(5_000),
    }])
    .await
    .unwrap();
    assert!(s.cancel_requests("a").await.unwrap().is_empty());
    // Its next attempt starts without the old request.
    let driver = kiln_store::Driver {
        owner: "a".to_owned(),
        until: at(90_000),
    };
    s.retry_run(by_a.id, at(5_500), Some(&driver))
        .await
        .unwrap()
        .unwrap();
    assert!(s.cancel_requests("a").await.unwrap().is_empty());
    // A run nobody knows of.
    assert!(
        !s.request_cancel(kiln_core::ids::RunId::new(), at(6_000))
            .await
            .unwrap()
    );
}

both_backends!(remote_claims_take_only_what_a_live_driver_offered);
async fn remote_claims_take_only_what_a_live_driver_offered(h: &Harness) {
    use kiln_store::Lease;
    let s = &h.store;
    let project = s.upsert_project("p", "/src/p").await.unwrap();
    let live = driven_run(
        s,
        project.id,
        vec![
            new_job("offered", JobStatus::Queued, 3),
            new_job("kept", JobStatus::Queued, 3),
            labelled("gpu", JobStatus::Queued, &["gpu"]),
        ],
        "a",
        60_000,
    )
    .await;
    let orphan = driven_run(
        s,
        project.id,
        vec![new_job("orphan", JobStatus::Queued, 3)],
        "dead",
        1_000,
    )
    .await;
    // Driven by a replica that has left (stopping, it removed itself) though its claim on
    // the run has not run out yet.
    let leaving = driven_run(
        s,
        project.id,
        vec![new_job("leaving", JobStatus::Queued, 3)],
        "gone",
        60_000,
    )
    .await;
    s.replica_seen("a", "http://a.example:8080").await.unwrap();
    let offered = vec![
        live.jobs[0].id,
        live.jobs[2].id,
        orphan.jobs[0].id,
        leaving.jobs[0].id,
    ];
    s.commit(vec![Op::OfferJobs {
        jobs: offered,
        at: at(2_000),
    }])
    .await
    .unwrap();

    // Offered, fitting, and its run's driver alive: only `offered`. The claim names the
    // driver, whom the worker then asks for the job's details.
    let remote = |owner: &str, labels: &[&str]| Claim {
        offered_only: true,
        ..claim(owner, Some(labels), 10, 5_000)
    };
    let got = s.claim_jobs(&remote("worker:1", &["linux"])).await.unwrap();
    assert_eq!(keys(&got), ["offered"]);
    assert_eq!(got[0].driver.as_deref(), Some("a"));
    assert_eq!(
        s.lease_of(live.jobs[0].id).await.unwrap(),
        Some(Lease {
            status: JobStatus::Leased,
            owner: Some("worker:1".to_owned()),
            token: got[0].token,
        })
    );
    let got = s.claim_jobs(&remote("worker:2", &["gpu"])).await.unwrap();
    assert_eq!(keys(&got), ["gpu"]);
    assert!(
        s.claim_jobs(&remote("worker:3", &["gpu", "linux"]))
            .await
            .unwrap()
            .is_empty()
    );
    // A claim that is not remote takes the rest.
    let got = s.claim_jobs(&claim("pool", None, 10, 5_000)).await.unwrap();
    assert_eq!(keys(&got), ["kept", "orphan", "leaving"]);
    assert_eq!(s.lease_of(JobId::new()).await.unwrap(), None);

    // Replicas are found by their owner id.
    assert_eq!(
        s.replica_url("a").await.unwrap().as_deref(),
        Some("http://a.example:8080")
    );
    assert_eq!(s.replica_url("b").await.unwrap(), None);
}
