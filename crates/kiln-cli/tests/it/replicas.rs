//! Two `kiln serve` replicas on one PostgreSQL schema, and two `kiln worker`s each given one
//! of them and learning the other from it: a run of 500 jobs completes with every job succeeded exactly once, also when the
//! replica driving it is killed (`kill -9`) halfway: the other replica takes the run over once
//! the dead one's claim on it and the leases it gave ran out, and the workers carry on with
//! it. The other replica's live event stream shows what happened on the first. And a run
//! survives its PostgreSQL restarting under it (on a private cluster).

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::Project;
use serde_json::json;

use crate::postgres::{Schema, psql};
use crate::serve::{Served, kiln};
use crate::workers::{Worker, get, post, wait_run};

const ADMIN: &str = "kiln_replicas_test_admin_token_0123456789";
const SECRETS_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// 5 job keys × 100 matrix instances.
fn workflow() -> String {
    let mut wf = String::from("name: ci\non: workflow_dispatch\njobs:\n");
    let list: Vec<String> = (0..100).map(|n| n.to_string()).collect();
    for k in 0..5 {
        wf.push_str(&format!(
            "  j{k}:\n    runs-on: linux\n    strategy:\n      matrix:\n        n: [{}]\n    steps:\n      - run: echo \"j{k}-${{{{ matrix.n }}}}\" >> \"$DONE_LOG\"\n",
            list.join(", ")
        ));
    }
    wf
}

/// `kiln serve --workers 0` on `database`, with its own data dir `name`, leases of
/// `lease_ttl` seconds, and the test's admin token and secrets key.
fn replica(p: &Project, database: &str, name: &str, lease_ttl: &str) -> Served {
    replica_with(p, database, name, lease_ttl, "0", &[], &[])
}

/// [`replica`] with `workers` local slots, `env` for the server (and its local jobs), and
/// `extra` flags (`--listen` among them replaces the free port it listens on otherwise).
fn replica_with(
    p: &Project,
    database: &str,
    name: &str,
    lease_ttl: &str,
    workers: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Served {
    let data = p.data_dir().join(name);
    let mut args = vec!["serve"];
    if !extra.contains(&"--listen") {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    args.extend(extra);
    let mut cmd = kiln(
        p,
        &[
            &args[..],
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--database",
                database,
                "--workers",
                workers,
                "--lease-ttl",
                lease_ttl,
                "--egress-allow-local-paths",
            ],
        ]
        .concat(),
    );
    cmd.env("KILN_ADMIN_TOKEN", ADMIN)
        .env("KILN__SECRETS__KEY", SECRETS_KEY)
        .envs(env.iter().copied());
    Served::from_command(&mut cmd)
}

/// A worker token made through `s`, with `p` added as the project `app`.
fn worker_token_and_project(s: &Served, p: &Project) -> String {
    let out = s.call(
        p,
        ADMIN,
        &["token", "create", "--name", "w", "--role", "worker"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out.stdout.trim().to_owned();
    let src = p.root().to_str().unwrap().to_owned();
    let out = s.call(p, ADMIN, &["project", "add", &src, "--name", "app"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    token
}

/// Two replicas (leases of 60 s) on a fresh schema, the project `app` holding `workflow` as
/// `ci`, a worker token, and a run of it started through A (which drives it).
fn two_replicas_running(workflow: &str) -> (Schema, Project, Served, Served, String, String) {
    let schema = Schema::new();
    let p = Project::new().workflow("ci.yml", workflow);
    let a = replica(&p, &schema.url(), "a", "60");
    let b = replica(&p, &schema.url(), "b", "60");
    let token = worker_token_and_project(&a, &p);
    let run = trigger_ci(&a, &p);
    (schema, p, a, b, token, run)
}

/// Starts the workflow `ci` of the project `app` through `s`: the run's id.
fn trigger_ci(s: &Served, p: &Project) -> String {
    let out = s.call(
        p,
        ADMIN,
        &["trigger", "app", "--workflow", "ci", "--format", "json"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["runs"][0]["id"].as_str().unwrap().to_owned()
}

/// How many jobs of `run` succeeded, and the most successes any one job recorded.
fn successes(schema: &Schema, run: &str) -> (i64, i64) {
    let out = psql(&format!(
        "SELECT count(*), COALESCE(max(n), 0) FROM (SELECT job_id, count(*) AS n \
         FROM {}.events WHERE run_id = '{run}' AND kind = 'job.completed' \
         AND data::jsonb->>'status' = 'success' GROUP BY job_id) AS per_job",
        schema.name
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains('|') && !l.contains("count"))
        .unwrap_or_else(|| panic!("no row in {text}"));
    let mut cols = row.split('|').map(|c| c.trim().parse::<i64>().unwrap());
    (cols.next().unwrap(), cols.next().unwrap())
}

fn completed_jobs(s: &Served, run: &str) -> usize {
    let r = get(s, ADMIN, &format!("/api/v1/runs/{run}"))["data"].clone();
    r["jobs"]
        .as_array()
        .map(|jobs| jobs.iter().filter(|j| j["status"] == "success").count())
        .unwrap_or(0)
}

#[test]
fn two_replicas_run_500_jobs_exactly_once_even_when_the_driving_replica_is_killed() {
    let schema = Schema::new();
    let p = Project::new().workflow("ci.yml", &workflow());
    let a = replica(&p, &schema.url(), "a", "3");
    let b = replica(&p, &schema.url(), "b", "3");
    let token = worker_token_and_project(&a, &p);
    let log = p.data_dir().join("done.log");
    let env = [("DONE_LOG", log.to_str().unwrap())];
    // Each worker is given one replica and learns the other from it.
    let _w1 = Worker::start(&p, &a, &token, "w1", "linux", &env);
    let w2 = Worker::start(&p, &b, &token, "w2", "linux", &env);

    // An SSE client on replica B, which drives nothing yet, sees jobs of A's run.
    let mut sse = Command::new("curl")
        .args(["-sSN", "-H", &format!("Authorization: Bearer {ADMIN}")])
        .arg(format!("{}/api/v1/events", b.url))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read as it comes: a full pipe would make the server drop the stream as too slow.
    let sse_out = sse.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let into = seen.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(sse_out).lines() {
            let Ok(line) = line else { break };
            let mut all = into.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });

    let run = trigger_ci(&a, &p);

    // Halfway through, the replica driving the run dies.
    let deadline = Instant::now() + Duration::from_secs(120);
    while completed_jobs(&b, &run) < 150 {
        assert!(Instant::now() < deadline, "the run made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    // B drives nothing: the jobs B's worker ran, it got from A, which it learned of from B.
    let w2_log = get(
        &b,
        ADMIN,
        &format!("/api/v1/workers/{}/log?limit=500", w2.id),
    );
    let given = w2_log["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "job.leased")
        .count();
    assert!(
        given > 0,
        "B's worker never got a job of A's run: {w2_log:#}"
    );
    // Jobs driven by A: B's live stream has shown them completing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.lock().unwrap().contains("event: job.completed") {
        assert!(
            Instant::now() < deadline,
            "B's event stream never showed a job of A's run completing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    let r = wait_run(&b, ADMIN, &run, Duration::from_secs(180));
    assert_eq!(r["status"], "success", "{r:#}");
    let jobs = r["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 500);
    assert!(jobs.iter().all(|j| j["status"] == "success"));
    let (succeeded, most) = successes(&schema, &run);
    assert_eq!(
        (succeeded, most),
        (500, 1),
        "every job succeeded exactly once"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &sse.id().to_string()])
        .status();
    let _ = sse.wait();
    reader.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains("event: job.completed") && seen.contains(&run),
        "B's event stream showed A's run: {}",
        seen.lines()
            .filter(|l| l.starts_with("event:"))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(b.stop(), 0);
}

const STEADY: &str = r#"
name: ci
on: workflow_dispatch
jobs:
  first:
    runs-on: linux
    steps:
      - run: sleep 2
  many:
    needs: first
    runs-on: linux
    strategy:
      matrix:
        n: [1, 2, 3, 4, 5, 6, 7, 8]
    steps:
      - run: echo "many ${{ matrix.n }}"; sleep 0.5
  last:
    needs: many
    runs-on: linux
    steps:
      - run: echo done
"#;

const LONG: &str = r#"
name: ci
on: workflow_dispatch
jobs:
  long:
    runs-on: linux
    steps:
      - run: echo started; sleep 300
"#;

/// A user cancels through a replica that does not drive the run (behind a load balancer,
/// say): the replica asks the driver through the store, and the job stops on its worker.
#[test]
fn a_run_is_cancelled_through_a_replica_that_does_not_drive_it() {
    let schema = Schema::new();
    let p = Project::new().workflow("ci.yml", LONG);
    let a = replica(&p, &schema.url(), "a", "3");
    let b = replica(&p, &schema.url(), "b", "3");
    let token = worker_token_and_project(&a, &p);
    let _w = Worker::start(&p, &a, &token, "w1", "linux", &[]);
    let run = trigger_ci(&a, &p);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(&b, ADMIN, &format!("/api/v1/runs/{run}"))["data"].clone();
        if r["jobs"][0]["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started: {r:#}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let cancel = format!("/api/v1/runs/{run}/cancel");
    let (status, answer) = post(&b.url, ADMIN, &cancel, &json!({}));
    assert_eq!(status, 202, "{answer:#}");
    assert_eq!(answer["data"]["id"], run.as_str(), "{answer:#}");
    // The job sleeps for minutes: ending at all means it was stopped.
    let r = wait_run(&b, ADMIN, &run, Duration::from_secs(60));
    assert_eq!(r["status"], "cancelled", "{r:#}");
    assert_eq!(r["jobs"][0]["status"], "cancelled", "{r:#}");
    let out = psql(&format!(
        "SELECT 'asked=' || count(*) FROM {}.events WHERE run_id = '{run}' \
         AND kind = 'run.cancel_requested'",
        schema.name
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("asked=1"), "one request recorded: {text}");
    let (status, answer) = post(&b.url, ADMIN, &cancel, &json!({}));
    assert_eq!(status, 409, "{answer:#}");
    assert_eq!(answer["error"]["code"], "RUN_NOT_ACTIVE", "{answer:#}");
    assert_eq!(b.stop(), 0);
    assert_eq!(a.stop(), 0);
}

/// 120 matrix jobs that each note their number and the runner they ran on.
const SHARED: &str = r#"
name: ci
on: workflow_dispatch
jobs:
  j:
    runs-on: linux
    strategy:
      matrix:
        n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
            25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46,
            47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68,
            69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90,
            91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109,
            110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120]
    steps:
      - run: echo "${{ matrix.n }} $RUNNER_NAME" >> "$DONE_LOG"; sleep 0.05
"#;

/// A server on PostgreSQL with a local pool of its own and a remote worker: both take jobs
/// from one queue (the pool by lease, the worker by claim), racing for the same jobs, and
/// every job runs exactly once.
#[test]
fn a_local_pool_and_a_remote_worker_share_the_queue_and_run_each_job_once() {
    let schema = Schema::new();
    let p = Project::new().workflow("ci.yml", SHARED);
    let log = p.data_dir().join("done.log");
    let env = [("DONE_LOG", log.to_str().unwrap())];
    let s = replica_with(&p, &schema.url(), "server", "20", "1", &env, &[]);
    let token = worker_token_and_project(&s, &p);
    let _w = Worker::start(&p, &s, &token, "remote", "linux", &env);
    let run = trigger_ci(&s, &p);
    let r = wait_run(&s, ADMIN, &run, Duration::from_secs(120));
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(
        successes(&schema, &run),
        (120, 1),
        "every job succeeded once"
    );
    let done = std::fs::read_to_string(&log).unwrap();
    let mut numbers: Vec<u32> = done
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=120).collect::<Vec<_>>(), "{done}");
    let remote = done.lines().filter(|l| l.ends_with(" remote")).count();
    assert!(
        remote > 0 && remote < 120,
        "both the pool and the worker ran jobs ({remote} remote): {done}"
    );
    assert_eq!(s.stop(), 0);
}

const TWO: &str = r#"
name: ci
on: workflow_dispatch
jobs:
  one:
    runs-on: linux
    steps:
      - run: echo one
  two:
    runs-on: linux
    steps:
      - run: echo two
"#;

/// A worker that claims through replica B gets the jobs of a run replica A drives, leased
/// from the shared queue, as hand-offs naming A: A describes them and takes their reports;
/// B, which does not drive them, refuses to and leaves the leases alone. A job whose run was
/// cancelled before the worker asked for it ends cancelled.
#[test]
fn a_claim_through_one_replica_hands_off_jobs_another_drives() {
    let (_schema, _p, a, b, token, run) = two_replicas_running(TWO);

    let (status, registered) = post(
        &b.url,
        &token,
        "/api/v1/worker/register",
        &json!({"name": "w", "labels": ["linux"], "slots": 2,
                "protocol": kiln_proto::workers::PROTOCOL, "version": "test"}),
    );
    assert_eq!(status, 201, "{registered:#}");
    let worker = registered["data"]["id"].as_str().unwrap().to_owned();
    let (status, claimed) = post(
        &b.url,
        &token,
        &format!("/api/v1/worker/{worker}/claim"),
        &json!({"free": 2, "wait_ms": 10_000}),
    );
    assert_eq!(status, 200, "{claimed:#}");
    let data = &claimed["data"];
    assert_eq!(data["jobs"], json!([]), "{claimed:#}");
    let mut handoffs = data["handoffs"].as_array().unwrap().clone();
    if handoffs.len() < 2 {
        // The second was offered a moment after the first was claimed.
        let (_, more) = post(
            &b.url,
            &token,
            &format!("/api/v1/worker/{worker}/claim"),
            &json!({"free": 1, "wait_ms": 10_000}),
        );
        handoffs.extend(more["data"]["handoffs"].as_array().unwrap().clone());
    }
    assert_eq!(handoffs.len(), 2, "{claimed:#}");
    for h in &handoffs {
        assert_eq!(h["server"], a.url.as_str(), "{h:#}");
        assert_eq!(h["attempt"], 1, "{h:#}");
    }
    let assignment = |h: &serde_json::Value| {
        format!(
            "/api/v1/worker/{worker}/jobs/{}/assignment",
            h["job"].as_str().unwrap()
        )
    };
    let lease = |h: &serde_json::Value| json!({ "token": h["token"] });

    let first = &handoffs[0];
    let (status, refused) = post(&b.url, &token, &assignment(first), &lease(first));
    assert_eq!(status, 409, "{refused:#}");
    assert_eq!(refused["error"]["code"], "LEASE_LOST", "{refused:#}");
    let (status, assigned) = post(&a.url, &token, &assignment(first), &lease(first));
    assert_eq!(status, 200, "{assigned:#}");
    assert_eq!(assigned["data"]["token"], first["token"], "{assigned:#}");
    assert_eq!(assigned["data"]["run"], run.as_str(), "{assigned:#}");
    let key = assigned["data"]["key"].as_str().unwrap().to_owned();
    let (status, answer) = post(
        &a.url,
        &token,
        &format!(
            "/api/v1/worker/{worker}/jobs/{}/report",
            first["job"].as_str().unwrap()
        ),
        &json!({"token": first["token"], "events": [
            {"type": "started"},
            {"type": "log", "step": 0, "data": "hello\n"},
            {"type": "done", "status": "success"}
        ]}),
    );
    assert_eq!(status, 200, "{answer:#}");

    // The worker gives the second job back through B (say A did not answer): queued again
    // at once, the grant not counted; claimed again, it is the same job's first attempt.
    let second = &handoffs[1];
    let release = format!(
        "/api/v1/worker/{worker}/jobs/{}/release",
        second["job"].as_str().unwrap()
    );
    let stale = json!({ "token": second["token"].as_i64().unwrap() + 1 });
    let (status, refused) = post(&b.url, &token, &release, &stale);
    assert_eq!(status, 409, "{refused:#}");
    let (status, answer) = post(&b.url, &token, &release, &lease(second));
    assert_eq!(status, 200, "{answer:#}");
    let job = get(
        &b,
        ADMIN,
        &format!("/api/v1/jobs/{}", second["job"].as_str().unwrap()),
    );
    assert_eq!(job["data"]["status"], "queued", "{job:#}");
    assert_eq!(job["data"]["attempts"], 0, "{job:#}");
    let (_, again) = post(
        &b.url,
        &token,
        &format!("/api/v1/worker/{worker}/claim"),
        &json!({"free": 1, "wait_ms": 10_000}),
    );
    let second = again["data"]["handoffs"][0].clone();
    assert_eq!(second["job"], handoffs[1]["job"], "{again:#}");
    assert_eq!(second["attempt"], 1, "{again:#}");

    // The run is cancelled before the worker asks for the second job's details.
    let (status, answer) = post(
        &a.url,
        ADMIN,
        &format!("/api/v1/runs/{run}/cancel"),
        &json!({}),
    );
    assert_eq!(status, 200, "{answer:#}");
    let second = &second;
    let (status, refused) = post(&a.url, &token, &assignment(second), &lease(second));
    assert_eq!(status, 409, "{refused:#}");
    let r = wait_run(&b, ADMIN, &run, Duration::from_secs(30));
    assert_eq!(r["status"], "cancelled", "{r:#}");
    let jobs = r["jobs"].as_array().unwrap();
    let by_key = |k: &str| jobs.iter().find(|j| j["key"] == k).unwrap().clone();
    let done = by_key(&key);
    assert_eq!(done["status"], "success", "{r:#}");
    assert_eq!(done["attempts"], 1, "{r:#}");
    let other = by_key(if key == "one" { "two" } else { "one" });
    assert_eq!(other["status"], "cancelled", "{r:#}");
    assert_eq!(b.stop(), 0);
    assert_eq!(a.stop(), 0);
}

/// Registers a worker named `name` through `s`'s `url`: its id.
fn register_raw(url: &str, token: &str, name: &str) -> String {
    let (status, registered) = post(
        url,
        token,
        "/api/v1/worker/register",
        &json!({"name": name, "labels": ["linux"], "slots": 1,
                "protocol": kiln_proto::workers::PROTOCOL, "version": "test"}),
    );
    assert_eq!(status, 201, "{registered:#}");
    registered["data"]["id"].as_str().unwrap().to_owned()
}

/// `POST /api/v1/worker/{worker}/jobs/{job}/{what}` with `body` to the server at `url`,
/// answered 200.
fn worker_job_call(
    url: &str,
    token: &str,
    worker: &str,
    job: &str,
    what: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let path = format!("/api/v1/worker/{worker}/jobs/{job}/{what}");
    let (status, answer) = post(url, token, &path, body);
    assert_eq!(status, 200, "{path}: {answer:#}");
    answer
}

/// A worker's claim of one job through `url`: its hand-off.
fn claim_handoff(url: &str, token: &str, worker: &str) -> serde_json::Value {
    let (status, claimed) = post(
        url,
        token,
        &format!("/api/v1/worker/{worker}/claim"),
        &json!({"free": 1, "wait_ms": 10_000}),
    );
    assert_eq!(status, 200, "{claimed:#}");
    claimed["data"]["handoffs"][0].clone()
}

/// A worker asked the driving replica for a job's details, then gave the job back (it is
/// queued again in the store while the driver still counts it as that worker's); the next
/// worker that claims it gets it from the driver all the same, and the run succeeds.
#[test]
fn a_job_given_back_after_its_driver_described_it_runs_on_the_next_worker() {
    let (_schema, _p, a, b, token, run) = two_replicas_running(LONG);
    let first = register_raw(&b.url, &token, "first");
    let second = register_raw(&b.url, &token, "second");

    let h1 = claim_handoff(&b.url, &token, &first);
    let job = h1["job"].as_str().unwrap().to_owned();
    let lease1 = json!({ "token": h1["token"] });
    worker_job_call(&a.url, &token, &first, &job, "assignment", &lease1);
    worker_job_call(&b.url, &token, &first, &job, "release", &lease1);

    let h2 = claim_handoff(&b.url, &token, &second);
    assert_eq!(h2["job"], job.as_str(), "{h2:#}");
    let lease2 = json!({ "token": h2["token"] });
    worker_job_call(&a.url, &token, &second, &job, "assignment", &lease2);
    let report = json!({"token": h2["token"], "events": [
        {"type": "started"},
        {"type": "done", "status": "success"}
    ]});
    worker_job_call(&a.url, &token, &second, &job, "report", &report);
    let r = wait_run(&a, ADMIN, &run, Duration::from_secs(30));
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(r["jobs"][0]["attempts"], 1, "{r:#}");
    assert_eq!(b.stop(), 0);
    assert_eq!(a.stop(), 0);
}

/// A local address nobody listens on (for now).
fn free_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// A worker that cannot reach the replica driving a job it claimed through another gives the
/// job back at once (not counted as an attempt) instead of sitting on it until its lease
/// runs out.
#[test]
fn a_worker_that_cannot_reach_the_driving_replica_gives_the_job_back() {
    let schema = Schema::new();
    let p = Project::new().workflow("ci.yml", TWO);
    // A names an address where nothing answers.
    let nowhere = format!("http://{}", free_address());
    let extra = ["--replica-url", nowhere.as_str()];
    let a = replica_with(&p, &schema.url(), "a", "60", "0", &[], &extra);
    let b = replica(&p, &schema.url(), "b", "60");
    let token = worker_token_and_project(&a, &p);
    let _w = Worker::start(&p, &b, &token, "w", "linux", &[]);
    let run = trigger_ci(&a, &p);
    let leased = || {
        let out = psql(&format!(
            "SELECT 'leased=' || count(*) FROM {}.events WHERE run_id = '{run}' \
             AND kind = 'job.leased'",
            schema.name
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("leased=")
            .nth(1)
            .and_then(|n| n.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(0)
    };
    // Each of the two jobs leased, given back, and leased again, well within a lease.
    let deadline = Instant::now() + Duration::from_secs(30);
    while leased() < 4 {
        assert!(Instant::now() < deadline, "the jobs were not given back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = get(&b, ADMIN, &format!("/api/v1/runs/{run}"))["data"].clone();
    for j in r["jobs"].as_array().unwrap() {
        assert!(
            j["attempts"].as_i64().unwrap() <= 1,
            "no attempt spent: {r:#}"
        );
        assert!(
            matches!(j["status"].as_str(), Some("queued" | "leased")),
            "{r:#}"
        );
    }
    assert_eq!(b.stop(), 0);
    assert_eq!(a.stop(), 0);
}

/// Two replicas behind one load balancer address (`--public-url`, which hook URLs show), each
/// reachable by workers at its own `--replica-url`: a worker that knows only one replica
/// learns the other at its own address and runs jobs handed off to it.
#[test]
fn replicas_behind_one_public_url_hand_jobs_off_at_their_replica_urls() {
    let schema = Schema::new();
    let p = Project::new().workflow("ci.yml", TWO);
    let lb = "http://kiln.example.invalid";
    let start = |name: &str, listen: &str| {
        let own = format!("http://{listen}");
        let extra = [
            "--listen",
            listen,
            "--public-url",
            lb,
            "--replica-url",
            &own,
        ];
        replica_with(&p, &schema.url(), name, "60", "0", &[], &extra)
    };
    let bad = crate::serve::run(&p, &["serve", "--replica-url", "kiln.example:8080"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--replica-url"), "{}", bad.stderr);
    let (listen_a, listen_b) = (free_address(), free_address());
    let a = start("a", &listen_a);
    let b = start("b", &listen_b);
    let token = worker_token_and_project(&a, &p);
    let config = get(&b, ADMIN, "/api/v1/config");
    assert_eq!(config["data"]["public_url"], lb, "{config:#}");
    assert_eq!(
        config["data"]["replica_url"],
        format!("http://{listen_b}").as_str(),
        "{config:#}"
    );
    // The worker is given B only; A drives the run.
    let _w = Worker::start(&p, &b, &token, "w", "linux", &[]);
    let run = trigger_ci(&a, &p);
    let r = wait_run(&a, ADMIN, &run, Duration::from_secs(60));
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(b.stop(), 0);
    assert_eq!(a.stop(), 0);
}

/// The database restarts under a running run: the server and its worker reconnect and the
/// run completes. On a private cluster (the shared server stays up for the other tests).
#[test]
fn a_run_completes_when_postgres_restarts_under_it() {
    let pg = kiln_testkit::pg::PrivatePostgres::start();
    let p = Project::new().workflow("ci.yml", STEADY);
    let s = replica(&p, &pg.url(), "server", "20");
    let token = worker_token_and_project(&s, &p);
    let _w = Worker::start(&p, &s, &token, "w", "linux", &[]);
    let run = trigger_ci(&s, &p);

    // While `first` runs, the database goes away for longer than a connection is waited for
    // (5 s), so that writes fail and are tried again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(&s, ADMIN, &format!("/api/v1/runs/{run}"))["data"].clone();
        if r["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| j["status"] == "running"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the run never started: {r:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.stop();
    std::thread::sleep(Duration::from_secs(7));
    pg.start_again();

    let r = wait_run(&s, ADMIN, &run, Duration::from_secs(120));
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(r["jobs"].as_array().unwrap().len(), 10);
    assert_eq!(s.stop(), 0);
}
