//! The server's engine against a real SQLite store: adopting a run whose holder died.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, RunId, RunStatus};
use kiln_store::{NewJob, NewRun, Op, OpResult, Store};
use serde_json::Map;

use super::{Engine, EngineConfig};

const CI: &str = "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n  b:\n    needs: a\n    runs-on: x\n    steps: [{run: 'true'}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_expired_is_driven_on_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join(".kiln/workflows")).unwrap();
    std::fs::write(src.join(".kiln/workflows/ci.yml"), CI).unwrap();
    let data = dir.path().join("data");
    let store = Store::open_sqlite(&data).await.unwrap();
    let project = store
        .upsert_project("p", &src.to_string_lossy())
        .await
        .unwrap();
    let job = |key: &str, status| NewJob {
        id: JobId::new(),
        key: key.to_owned(),
        name: key.to_owned(),
        matrix: Map::new(),
        needs: if key == "b" {
            vec!["a".to_owned()]
        } else {
            vec![]
        },
        status,
        max_attempts: 3,
        labels: Vec::new(),
    };
    let jobs = vec![job("a", JobStatus::Queued), job("b", JobStatus::Pending)];
    let a = jobs[0].id;
    let run = store
        .create_run(NewRun {
            id: RunId::new(),
            project: project.id,
            workflow: ".kiln/workflows/ci.yml".to_owned(),
            workflow_name: "ci".to_owned(),
            event: "push".to_owned(),
            git_ref: "refs/heads/main".to_owned(),
            sha: "0".repeat(40),
            inputs: Map::new(),
            status: RunStatus::Queued,
            jobs,
            at: Timestamp::now(),
            driver: None,
        })
        .await
        .unwrap();
    // A `kiln run` that leased job a and died: its lease ran out long ago.
    let long_ago = Timestamp::now() - jiff::SignedDuration::from_secs(600);
    let granted = store
        .commit(vec![Op::GrantLease {
            job: a,
            owner: "kiln-run:dead".to_owned(),
            ttl_ms: 1_000,
            at: long_ago,
        }])
        .await
        .unwrap();
    assert!(matches!(granted[0], OpResult::Lease { .. }));

    let (engine, recovery) = Engine::start(
        store.clone(),
        EngineConfig {
            slots: 1,
            data_dir: data.clone(),
            max_attempts: 3,
            sandbox: crate::packages::Sandbox::off(),
            lease_ttl: crate::dispatch::LEASE_TTL,
            artifacts: None,
        },
    )
    .await
    .unwrap();
    // Someone else's lease is not this engine's to take back at start-up.
    assert!(recovery.resumed.is_empty(), "{recovery:?}");
    assert_eq!(recovery.expired_leases, 0);

    engine.adopt_expired_every(Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = store.get_run(run.id).await.unwrap().unwrap();
        if r.status.is_terminal() {
            break r;
        }
        assert!(Instant::now() < deadline, "run not adopted: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.status, RunStatus::Success, "{done:#?}");
    let a = done.jobs.iter().find(|j| j.key == "a").unwrap();
    assert_eq!(a.attempts, 2, "the dead holder's attempt counts: {a:#?}");
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}
