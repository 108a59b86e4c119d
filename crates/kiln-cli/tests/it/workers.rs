//! `kiln worker` against a real `kiln serve --workers 0`: jobs run on the workers whose labels
//! fit; a worker killed with `kill -9` mid-job loses its lease, and the job runs again (attempt
//! 2) on another worker; SIGTERM drains a worker (its running job finishes, it claims no
//! more, it exits 0); a worker speaking to a server that refuses it exits 2.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_testkit::Project;
use serde_json::Value;

use crate::serve::{Served, kiln};

const CI: &str = r#"
name: ci
on: workflow_dispatch
jobs:
  build:
    runs-on: linux
    steps:
      # The first attempt announces itself and hangs; a later one finishes at once.
      - run: |
          if [ ! -e "$MARKER" ]; then touch "$MARKER"; sleep 120; fi
          echo "built on $RUNNER_NAME attempt $GITHUB_RUN_ATTEMPT-${{ github.run_attempt }}"
  ship:
    needs: build
    runs-on: [linux, deploy]
    steps:
      - run: echo "shipped from $RUNNER_NAME"; sleep "$PAUSE"
"#;

/// A running `kiln worker`, killed on drop.
pub(crate) struct Worker {
    child: Child,
    pub(crate) id: String,
}

impl Worker {
    pub(crate) fn start(
        p: &Project,
        s: &Served,
        token: &str,
        name: &str,
        labels: &str,
        env: &[(&str, &str)],
    ) -> Worker {
        Worker::start_at(p, &s.url, token, name, labels, env)
    }

    /// A worker of the servers `url` names (one URL, or several comma-separated).
    pub(crate) fn start_at(
        p: &Project,
        url: &str,
        token: &str,
        name: &str,
        labels: &str,
        env: &[(&str, &str)],
    ) -> Worker {
        let work = p.data_dir().join(format!("work-{name}"));
        let mut cmd = kiln(
            p,
            &[
                "worker",
                "--server",
                url,
                "--labels",
                labels,
                "--name",
                name,
                "--work-dir",
                work.to_str().unwrap(),
            ],
        );
        cmd.env("KILN_TOKEN", token);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln worker");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("kiln worker says it registered");
        let id = line
            .strip_prefix("worker ")
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Worker { child, id }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn wait(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "kiln worker did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn get(s: &Served, token: &str, path: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{}{path}", s.url))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// `POST path` with the JSON `body`, as `token`, to the server at `url`: the status and the
/// answer's JSON.
pub(crate) fn post(url: &str, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("{url}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

pub(crate) fn wait_run(s: &Served, token: &str, run: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = get(s, token, &format!("/api/v1/runs/{run}"))["data"].clone();
        if matches!(
            r["status"].as_str(),
            Some("success" | "failure" | "cancelled")
        ) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "run still {}: {r:#}",
            r["status"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn job<'a>(run: &'a Value, key: &str) -> &'a Value {
    run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["key"] == key)
        .unwrap()
}

/// `kiln serve --workers 0 --lease-ttl 3` on `listen` in `p`'s data dir, not started yet.
fn serve_for_workers(p: &Project, listen: &str) -> Command {
    let data = p.data_dir();
    kiln(
        p,
        &[
            "serve",
            "--listen",
            listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--workers",
            "0",
            "--lease-ttl",
            "3",
            "--egress-allow-local-paths",
        ],
    )
}

/// On a first start of the server: its admin token, a worker token, and `p` added as `app`.
fn first_start(s: &Served, p: &Project) -> (String, String) {
    let admin = s.admin().unwrap();
    let out = s.call(
        p,
        &admin,
        &["token", "create", "--name", "w", "--role", "worker"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out.stdout.trim().to_owned();
    let src = p.root().to_str().unwrap().to_owned();
    let out = s.call(p, &admin, &["project", "add", &src, "--name", "app"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    (admin, token)
}

/// `kiln trigger app --workflow ci`: the run's id.
fn trigger_ci(s: &Served, p: &Project, admin: &str) -> String {
    let out = s.call(
        p,
        admin,
        &["trigger", "app", "--workflow", "ci", "--format", "json"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["runs"][0]["id"].as_str().unwrap().to_owned()
}

/// Waits until the first attempt of `build` made its marker (it hangs after).
fn wait_for_marker(marker: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "build never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn workers_run_jobs_a_killed_worker_loses_its_job_to_another_and_sigterm_drains() {
    let p = Project::new().workflow("ci.yml", CI);
    let s = Served::from_command(&mut serve_for_workers(&p, "127.0.0.1:0"));
    let (admin, token) = first_start(&s, &p);

    // A server refusing a worker (here: a token it does not know) is exit 2.
    let w0 = p.data_dir().join("w0");
    let refused = crate::serve::run(
        &p,
        &[
            "worker",
            "--server",
            &s.url,
            "--token",
            "kiln_nope",
            "--work-dir",
            w0.to_str().unwrap(),
        ],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("UNAUTHORIZED"),
        "{}",
        refused.stderr
    );

    let marker = p.data_dir().join("marker");
    let env = [("MARKER", marker.to_str().unwrap()), ("PAUSE", "2")];
    let mut a = Worker::start(&p, &s, &token, "a", "linux", &env);
    let run = trigger_ci(&s, &p, &admin);

    // `build` runs on `a` (the only worker); once it hangs, kill -9 the worker.
    wait_for_marker(&marker);
    let held = get(&s, &admin, &format!("/api/v1/workers/{}", a.id));
    assert_eq!(held["data"]["status"], "busy", "{held:#}");
    a.signal("-KILL");
    a.wait(Duration::from_secs(10));

    // `b` has every label: it gets `build` back once a's lease expired (attempt 2), then
    // `ship`. SIGTERM while it ships: the job still finishes, and b exits 0.
    let mut b = Worker::start(&p, &s, &token, "b", "deploy,linux", &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(&s, &admin, &format!("/api/v1/runs/{run}"))["data"].clone();
        if job(&r, "ship")["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "ship never started: {r:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    b.signal("-TERM");
    assert_eq!(b.wait(Duration::from_secs(30)), 0);
    let r = wait_run(&s, &admin, &run, Duration::from_secs(30));
    assert_eq!(r["status"], "success", "{r:#}");
    let build = job(&r, "build");
    assert_eq!(
        (build["status"].as_str(), build["attempts"].as_i64()),
        (Some("success"), Some(2))
    );
    assert_eq!(job(&r, "ship")["attempts"], 1);
    let log = get(
        &s,
        &admin,
        &format!("/api/v1/logs/{}", build["id"].as_str().unwrap()),
    );
    let text = log["data"]["data"].as_str().unwrap_or_default().to_owned();
    assert!(text.contains("built on b attempt 1-1"), "{log:#}");

    // Both workers are listed; the killed one went quiet.
    let list = get(&s, &admin, "/api/v1/workers")["data"]["workers"].clone();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "a"], "{list:#}");
    assert_eq!(s.stop(), 0);
}

/// The server is killed (`kill -9`) while a worker runs a job, and started again on the same
/// data dir and address: the worker hears that it lost the job, the job's lease expires, and
/// the job runs again (attempt 2); the run still succeeds.
#[test]
fn a_server_killed_under_a_running_remote_job_gets_the_job_done_after_its_restart() {
    let p = Project::new().workflow("ci.yml", CI);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut s = Served::from_command(&mut serve_for_workers(&p, &listen));
    let (admin, token) = first_start(&s, &p);
    let marker = p.data_dir().join("marker");
    let env = [("MARKER", marker.to_str().unwrap()), ("PAUSE", "0")];
    let _w = Worker::start(&p, &s, &token, "w", "deploy,linux", &env);
    let run = trigger_ci(&s, &p, &admin);
    wait_for_marker(&marker);
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _ = s.child.wait();
    s = Served::from_command(&mut serve_for_workers(&p, &listen));
    let r = wait_run(&s, &admin, &run, Duration::from_secs(60));
    assert_eq!(r["status"], "success", "{r:#}");
    let build = job(&r, "build");
    assert_eq!(build["attempts"], 2, "{r:#}");
    assert_eq!(s.stop(), 0);
}

const ARTIFACTS: &str = r#"
name: ci
on: workflow_dispatch
jobs:
  build:
    runs-on: linux
    steps:
      - run: |
          mkdir -p out
          printf 'tool-1.4.0' > out/tool-1.4.0.tgz
          echo '{"name": "tool", "licenses": "Apache-2.0 OR MIT"}' >> "$KILN_ARTIFACT_METADATA"
    artifacts:
      - name: tool
        path: out/tool-1.4.0.tgz
        metadata:
          version: 1.4.0
  check:
    needs: build
    runs-on: linux
    steps:
      - uses: actions/download-artifact@v4
        with:
          name: tool
      - run: test "$(cat tool-1.4.0.tgz)" = tool-1.4.0
"#;

/// A job on a remote worker keeps an artifact on the server's S3 (`--artifacts s3://…`) and
/// a later job on a worker downloads it; the API and the dependency API show it.
#[test]
fn workers_keep_artifacts_on_the_servers_s3_and_download_them() {
    let s3 = kiln_testkit::s3::LocalS3::start();
    let p = Project::new().workflow("ci.yml", ARTIFACTS);
    let mut cmd = serve_for_workers(&p, "127.0.0.1:0");
    cmd.args(["--artifacts", &s3.url("kiln")]);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let s = Served::from_command(&mut cmd);
    let (admin, token) = first_start(&s, &p);
    let _w = Worker::start(&p, &s, &token, "w1", "linux", &[]);
    let run = trigger_ci(&s, &p, &admin);
    let r = wait_run(&s, &admin, &run, Duration::from_secs(60));
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(job(&r, "check")["status"], "success");

    let arts =
        get(&s, &admin, &format!("/api/v1/artifacts?run={run}"))["data"]["artifacts"].clone();
    assert_eq!(arts[0]["name"], "tool", "{arts:#}");
    assert_eq!(arts[0]["metadata"]["licenses"], "Apache-2.0 OR MIT");
    let deps = get(&s, &admin, "/api/v1/dependencies?name=tool")["data"].clone();
    assert_eq!(deps[0]["version"], "1.4.0", "{deps:#}");
    assert_eq!(
        deps[0]["licenses"],
        serde_json::json!(["Apache-2.0", "MIT"])
    );
    let body = Command::new("curl")
        .args(["-sS", "-H", &format!("Authorization: Bearer {admin}")])
        .arg(deps[0]["uri"].as_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&body.stdout), "tool-1.4.0");
    assert_eq!(s.stop(), 0);
}

const PORTS: &str = r#"
name: ci
on: workflow_dispatch
jobs:
  ports:
    runs-on: linux
    packages:
      tree: tree
"#;

const BASE: &str = "version = \"1.0\"\nbuild = 'mkdir -p \"$KILN_OUT/lib\"; echo base-1 > \"$KILN_OUT/lib/base\"'\n";
const ONE: &str = "version = \"2.0\"\ndepends = [\"lib/base\"]\nbuild = 'cp \"$KILN_DEPS/lib/base/lib/base\" \"$KILN_OUT/from-base\"; ln -s from-base \"$KILN_OUT/link\"'\n";

/// `app/top` reads both of its `$KILN_DEPS` (one of them transitive) and says what it saw.
fn top(version: &str) -> String {
    format!(
        "version = \"{version}\"\ndepends = [\"app/one\"]\nbuild = 'echo \"top saw $(cat \"$KILN_DEPS/app/one/link\") and $(cat \"$KILN_DEPS/lib/base/lib/base\") on $(hostname)\"; touch \"$KILN_OUT/ok\"'\n"
    )
}

/// `kiln build history ORIGIN --format json` on the server's data dir: its newest build.
fn newest_build(p: &Project, origin: &str) -> Value {
    let data = p.data_dir();
    let out = crate::serve::run(
        p,
        &[
            "build",
            "history",
            origin,
            "--format",
            "json",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["builds"][0].clone()
}

/// A `packages:` job on a server without a pool of its own (`--workers 0`): a remote worker
/// builds every package, each dependent seeing its `$KILN_DEPS` closure laid out from the
/// outputs the server kept (built on the worker in the same run, or cached from an earlier
/// one); the builds land in the package history with their logs, and a run with nothing
/// changed builds nothing.
#[test]
fn a_remote_worker_builds_a_package_tree_in_dependency_order() {
    let p = Project::new()
        .workflow("ci.yml", PORTS)
        .file("tree/lib/base/kiln-package.toml", BASE)
        .file("tree/app/one/kiln-package.toml", ONE)
        .file("tree/app/top/kiln-package.toml", &top("1"));
    let s = Served::from_command(&mut serve_for_workers(&p, "127.0.0.1:0"));
    let (admin, token) = first_start(&s, &p);
    let w = Worker::start(&p, &s, &token, "builder", "linux", &[]);

    let run = trigger_ci(&s, &p, &admin);
    let r = wait_run(&s, &admin, &run, Duration::from_secs(120));
    assert_eq!(r["status"], "success", "{r:#}");
    let names: std::collections::BTreeSet<&str> = r["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["matrix"]["package"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["app/one", "app/top", "lib/base"]
    );
    // All three on the worker.
    let log = get(
        &s,
        &admin,
        &format!("/api/v1/workers/{}/log?limit=100", w.id),
    );
    let leased = log["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "job.leased")
        .count();
    assert_eq!(leased, 3, "{log:#}");
    let top_build = newest_build(&p, "app/top");
    assert_eq!(top_build["status"], "success", "{top_build:#}");
    let text = std::fs::read_to_string(top_build["log_path"].as_str().unwrap()).unwrap();
    assert!(text.contains("top saw base-1 and base-1"), "{text}");
    assert!(text.contains("==> build: "), "{text}");
    // The job's log is the build's.
    let top_job = r["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["matrix"]["package"] == "app/top")
        .unwrap();
    assert_eq!(top_job["outputs"]["output"], top_build["output"]["digest"]);

    // Nothing changed: everything is cached, nothing is built.
    let again = trigger_ci(&s, &p, &admin);
    let r = wait_run(&s, &admin, &again, Duration::from_secs(60));
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(r["jobs"].as_array().map(Vec::len), Some(0), "{r:#}");

    // One package changed: only it builds, from its dependencies' cached outputs.
    let p = p.file("tree/app/top/kiln-package.toml", &top("2"));
    let third = trigger_ci(&s, &p, &admin);
    let r = wait_run(&s, &admin, &third, Duration::from_secs(60));
    assert_eq!(r["status"], "success", "{r:#}");
    let jobs = r["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{r:#}");
    assert_eq!(jobs[0]["matrix"]["package"], "app/top");
    let rebuilt = newest_build(&p, "app/top");
    assert_eq!(rebuilt["version"], "2");
    let text = std::fs::read_to_string(rebuilt["log_path"].as_str().unwrap()).unwrap();
    assert!(text.contains("top saw base-1 and base-1"), "{text}");
}
