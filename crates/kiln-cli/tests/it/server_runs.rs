//! Runs on a real `kiln serve`: triggered over HTTP with `kiln trigger`, driven by the
//! server's engine, recorded in its store; and the crash-recovery contract of DESIGN.md
//! "Leases": after `kill -9`, the next start takes back its own leases, every run finishes,
//! and no job is recorded as succeeded twice.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_testkit::Project;
use serde_json::Value;

use crate::run_json;
use crate::serve::{Served, local};

const CI: &str = r#"
name: ci
on: [push, workflow_dispatch]
jobs:
  first:
    runs-on: local
    steps:
      - run: echo "hello ${{ inputs.greeting }}"
      - run: sleep ${{ inputs.pause }}
  second:
    needs: first
    runs-on: local
    steps:
      - run: echo "second ran"
"#;

/// A project whose `ci` workflow says hello, pauses, then runs a second job; registered in
/// its data dir by one local run (so the server knows it). Answers the project's name.
fn registered() -> (Project, String) {
    let p = Project::new().workflow("ci.yml", CI);
    let out = run_json(&p, &["--input", "greeting=local", "--input", "pause=0"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let name = p.root().file_name().unwrap().to_string_lossy().into_owned();
    (p, name)
}

/// The runs in the local store, newest first.
fn runs(p: &Project) -> Vec<Value> {
    let out = local(p, &["runs", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["runs"].as_array().cloned().unwrap_or_default()
}

fn run_by_id(p: &Project, id: &str) -> Value {
    runs(p)
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("run {id} is not in the store"))
}

/// Waits until run `id` has `status` (or any terminal status when `None`).
fn wait_for(p: &Project, id: &str, status: Option<&str>, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let run = run_by_id(p, id);
        let s = run["status"].as_str().unwrap_or_default().to_owned();
        let done = match status {
            Some(want) => s == want,
            None => matches!(s.as_str(), "success" | "failure" | "cancelled"),
        };
        if done {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} is still {s} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kiln trigger NAME --workflow ci --input … --format json`: the runs it created.
fn trigger(s: &Served, p: &Project, token: &str, name: &str, pause: &str) -> Vec<Value> {
    let pause = format!("pause={pause}");
    let out = s.call(
        p,
        token,
        &[
            "trigger",
            name,
            "--workflow",
            "ci",
            "--input",
            "greeting=server",
            "--input",
            &pause,
            "--format",
            "json",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.json()["runs"].as_array().cloned().unwrap()
}

#[test]
fn a_triggered_run_is_driven_by_the_server() {
    let (p, name) = registered();
    let s = Served::start(&p, &[]);
    let admin = s.admin().unwrap();
    let created = trigger(&s, &p, &admin, &name, "0");
    assert_eq!(created.len(), 1);
    let run = &created[0];
    assert_eq!(run["event"], "workflow_dispatch");
    assert_eq!(run["run_number"], 2, "the local run was number 1");
    let id = run["id"].as_str().unwrap();
    let done = wait_for(&p, id, None, Duration::from_secs(60));
    assert_eq!(done["status"], "success", "{done}");
    let logs = local(&p, &["logs", id]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(logs.stdout.contains("hello server"), "{}", logs.stdout);
    assert!(logs.stdout.contains("second ran"), "{}", logs.stdout);

    // Bad requests are the caller's: an unknown project, an unknown workflow, a bad input.
    let unknown = s.call(&p, &admin, &["trigger", "no-such-project"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("PROJECT_NOT_FOUND"),
        "{}",
        unknown.stderr
    );
    let no_wf = s.call(&p, &admin, &["trigger", &name, "--workflow", "nope"]);
    assert_eq!(no_wf.code, 2, "{}", no_wf.stderr);
    assert_eq!(runs(&p).len(), 2, "a refused trigger stores nothing");
    assert_eq!(s.stop(), 0);
}

#[test]
fn kill_9_mid_run_then_restart_finishes_every_run_and_no_job_succeeds_twice() {
    let (p, name) = registered();
    let s = Served::start(&p, &[]);
    let admin = s.admin().unwrap();
    let slow = trigger(&s, &p, &admin, &name, "2")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(&p, &slow, Some("running"), Duration::from_secs(30));
    // Let the first job's step start, then kill the server outright.
    std::thread::sleep(Duration::from_millis(700));
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    drop(s);
    assert_eq!(run_by_id(&p, &slow)["status"], "running");

    let s = Served::start(&p, &[]);
    assert!(s.admin().is_none(), "the admin token exists already");
    let done = wait_for(&p, &slow, None, Duration::from_secs(60));
    assert_eq!(done["status"], "success", "{done}");

    // The store's own record: the first job ran twice (its first lease taken back), and
    // each job completed exactly once.
    let events = events_of(&p);
    let mut completed: HashMap<String, usize> = HashMap::new();
    let mut leased: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["run"] == slow.as_str()) {
        let job = e["job"].as_str().unwrap_or_default().to_owned();
        match e["type"].as_str().unwrap_or_default() {
            "job.completed" => *completed.entry(job).or_default() += 1,
            "job.leased" => *leased.entry(job).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(completed.len(), 2, "{events:#?}");
    assert!(completed.values().all(|&n| n == 1), "{completed:?}");
    assert!(
        leased.values().any(|&n| n >= 2),
        "the killed job ran again: {leased:?}"
    );
    assert_eq!(s.stop(), 0);
}

/// Every event of the store, read with the store's own API.
fn events_of(p: &Project) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = kiln_store::Store::open_sqlite(&p.data_dir()).await.unwrap();
        let events = store.events_after(0, 100_000).await.unwrap();
        events
            .into_iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    })
}

const TWO: &str = r#"
name: two
on: workflow_dispatch
jobs:
  sleeper:
    runs-on: local
    steps:
      - run: sleep 30
  quick:
    runs-on: local
    steps:
      - run: echo quick
"#;

#[test]
fn sigterm_lets_the_grace_period_pass_then_records_running_jobs_cancelled() {
    // A second, quick workflow registers the project in the store with one local run.
    let p = Project::new().workflow("two.yml", TWO).workflow(
        "reg.yml",
        "on: push\njobs:\n  r:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    let reg = run_json(&p, &["--workflow", "reg"]);
    assert_eq!(reg.code, 0, "{}\n{}", reg.stdout, reg.stderr);
    let name = p.root().file_name().unwrap().to_string_lossy().into_owned();

    let data_dir = p.data_dir();
    let mut cmd = crate::serve::kiln(
        &p,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--workers",
            "1",
            "--shutdown-grace",
            "1",
        ],
    );
    let s = Served::from_command(&mut cmd);
    let admin = s.admin().unwrap();
    let out = s.call(
        &p,
        &admin,
        &["trigger", &name, "--workflow", "two", "--format", "json"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.json()["runs"][0]["id"].as_str().unwrap().to_owned();
    wait_for(&p, &id, Some("running"), Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    assert_eq!(s.stop(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the 30 s step was cancelled after the 1 s grace"
    );
    let jobs = jobs_of(&p, &id);
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs["sleeper"], "cancelled", "{jobs:?}");
    // The job that had not started when the server stopped is back in the queue (or it
    // ran first and succeeded): never cancelled, never lost.
    assert!(
        matches!(jobs["quick"].as_str(), "queued" | "success"),
        "{jobs:?}"
    );

    // The next start drives the rest of the run to its end.
    let s = Served::start(&p, &[]);
    let done = wait_for(&p, &id, None, Duration::from_secs(60));
    assert_ne!(done["status"], "running");
    let jobs = jobs_of(&p, &id);
    assert_eq!(jobs["quick"], "success", "{jobs:?}");
    assert_eq!(s.stop(), 0);
}

/// Job key → status of a run, from the store.
fn jobs_of(p: &Project, id: &str) -> HashMap<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = kiln_store::Store::open_sqlite(&p.data_dir()).await.unwrap();
        let run = store.get_run(id.parse().unwrap()).await.unwrap().unwrap();
        run.jobs
            .into_iter()
            .map(|j| (j.key, j.status.as_str().to_owned()))
            .collect()
    })
}

#[test]
fn trigger_wait_prints_the_run_and_exits_with_its_verdict() {
    let (p, name) = registered();
    let s = Served::start(&p, &[]);
    let admin = s.admin().unwrap();
    let out = s.call(
        &p,
        &admin,
        &[
            "trigger",
            &name,
            "--workflow",
            "ci",
            "--input",
            "greeting=w",
            "--input",
            "pause=0",
            "--wait",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let run = out.json();
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["jobs"].as_array().unwrap().len(), 2, "{run:#}");
    // A failing run: `sleep` of a word fails the first job; --wait exits 1.
    let out = s.call(
        &p,
        &admin,
        &[
            "trigger",
            &name,
            "--workflow",
            "ci",
            "--input",
            "greeting=w",
            "--input",
            "pause=nope",
            "--wait",
        ],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("failure"), "{}", out.stdout);
    assert_eq!(s.stop(), 0);
}
