//! The server's engine against a real SQLite store: adopting a run whose holder died.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, RunId, RunStatus};
use kiln_store::{NewJob, NewRun, Op, OpResult, Store};
use serde_json::Map;

use super::{Engine, EngineConfig};

const CI: &str = "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n  b:\n    needs: a\n    runs-on: x\n    steps: [{run: 'true'}]\n";

/// A folder project `p` with one workflow, on a fresh SQLite store in a temporary folder
/// (kept while the first value lives): the folder, the data dir, the store, the project.
async fn folder_project(
    file: &str,
    workflow: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Store,
    kiln_proto::Project,
) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join(".kiln/workflows")).unwrap();
    std::fs::write(src.join(".kiln/workflows").join(file), workflow).unwrap();
    let data = dir.path().join("data");
    let store = Store::open_sqlite(&data).await.unwrap();
    let project = store
        .upsert_project("p", &src.to_string_lossy())
        .await
        .unwrap();
    (dir, data, store, project)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_expired_is_driven_on_by_the_server() {
    let (_dir, data, store, project) = folder_project("ci.yml", CI).await;
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
            context: Default::default(),
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

    let (engine, recovery) = Engine::start(store.clone(), engine_config(&data, 1))
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

const SEES_EVENT: &str = r#"on: pull_request
jobs:
  look:
    runs-on: x
    outputs:
      seen: ${{ steps.s.outputs.seen }}
    steps:
      - id: s
        run: |
          grep -q '"marker": *"from-the-hook"' "$GITHUB_EVENT_PATH"
          echo "seen=${{ github.event.marker }}/${{ github.head_ref }}/${{ github.actor }}" >> "$GITHUB_OUTPUT"
"#;

fn engine_config(data: &std::path::Path, slots: usize) -> EngineConfig {
    EngineConfig {
        slots,
        data_dir: data.to_owned(),
        max_attempts: 3,
        sandbox: crate::packages::Sandbox::off(),
        fetch_egress: None,
        lease_ttl: crate::dispatch::LEASE_TTL,
        artifacts: None,
    }
}

/// A run started by a webhook keeps its event across engines: one that never ran it stops,
/// the next drives it on, and its job sees the payload and the `github` fields the trigger
/// gave (not ones made up from the event name), in expressions and `GITHUB_EVENT_PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_driven_on_after_a_restart_sees_the_event_it_was_started_by() {
    let (_dir, data, store, project) = folder_project("pr.yml", SEES_EVENT).await;

    // No slots: the run waits, queued, for a worker that never comes.
    let (first, _) = Engine::start(store.clone(), engine_config(&data, 0))
        .await
        .unwrap();
    let mut github = Map::new();
    github.insert("head_ref".into(), "feature-x".into());
    github.insert("actor".into(), "octocat".into());
    let runs = first
        .trigger_at(
            crate::TriggerRequest {
                project: project.id,
                workflow: None,
                event: "pull_request".to_owned(),
                git_ref: None,
                payload: Some(serde_json::json!({"marker": "from-the-hook", "number": 7})),
                inputs: Default::default(),
            },
            crate::EventTarget {
                github,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    let run = runs[0].id;
    first.shutdown(Duration::from_secs(5)).await.unwrap();
    let stored = store.run_context(run).await.unwrap().unwrap();
    assert_eq!(stored.payload.as_ref().unwrap()["number"], 7);
    assert_eq!(stored.github["head_ref"], "feature-x");

    let (second, recovery) = Engine::start(store.clone(), engine_config(&data, 1))
        .await
        .unwrap();
    assert_eq!(recovery.resumed, vec![run], "{recovery:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = store.get_run(run).await.unwrap().unwrap();
        if r.status.is_terminal() {
            break r;
        }
        assert!(Instant::now() < deadline, "run not driven on: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.status, RunStatus::Success, "{done:#?}");
    assert_eq!(
        done.jobs[0].outputs.get("seen").and_then(|v| v.as_str()),
        Some("from-the-hook/feature-x/octocat"),
        "{done:#?}"
    );
    second.shutdown(Duration::from_secs(5)).await.unwrap();
}
