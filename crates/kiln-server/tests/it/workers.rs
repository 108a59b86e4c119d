//! The remote-worker protocol over HTTP, with the test acting as the workers: registration and
//! its refusals, claims by label, a job's source, reports under the lease's token, a lease
//! that expires and goes to another worker (the late report of the first refused), cancel
//! through heartbeats, pause, and the workers listing. On SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use kiln_core::ids::{JobStatus, RunId, RunStatus};
use serde_json::{Value, json};

use crate::harness::Server;
use crate::runs_write::wait_until;

const LEASE: Duration = Duration::from_secs(2);

macro_rules! remote {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let s = $crate::harness::Server::for_remote_workers(false, super::LEASE).await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let s = $crate::harness::Server::for_remote_workers(true, super::LEASE).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}

remote!(
    package_jobs_run_on_workers_that_fetch_their_deps_and_upload_their_outputs,
    a_silent_worker_is_announced_offline_once_and_back_at_its_next_heartbeat,
    workers_run_jobs_by_label_and_a_lost_lease_goes_to_another_worker,
    a_cancelled_run_stops_its_jobs_on_workers_and_paused_workers_get_none,
);

const CI: &str = r#"
name: ci
on: workflow_dispatch
jobs:
  build:
    runs-on: linux
    outputs:
      v: ${{ steps.s.outputs.v }}
    steps:
      - id: s
        run: echo "v=1" >> "$GITHUB_OUTPUT"
  test:
    needs: build
    runs-on: [linux, gpu]
    steps:
      - run: echo "${{ needs.build.outputs.v }}"
"#;

async fn project_with(s: &Server, workflow: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".kiln/workflows/ci.yml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, workflow).unwrap();
    std::fs::write(dir.path().join("README"), "the project's own file\n").unwrap();
    let name = format!("p{}", uuid::Uuid::new_v4().simple());
    let p = s
        .store
        .upsert_project(&name, &dir.path().to_string_lossy())
        .await
        .unwrap();
    (dir, p.id.to_string())
}

async fn trigger(s: &Server, project: &str) -> RunId {
    s.start_workflow(project, "ci").await
}

async fn register(s: &Server, token: &str, name: &str, labels: &[&str]) -> String {
    let r = s.register_worker(token, name, labels, 2).await;
    assert_eq!(r["lease_ms"], 2000);
    r["id"].as_str().unwrap().to_owned()
}

async fn claim(s: &Server, token: &str, worker: &str, wait_ms: u64) -> Vec<Value> {
    let r = s
        .post(
            &format!("/api/v1/worker/{worker}/claim"),
            token,
            &json!({"free": 2, "wait_ms": wait_ms}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.data()["jobs"].as_array().unwrap().clone()
}

async fn report(s: &Server, token: &str, worker: &str, job: &Value, events: Value) -> u16 {
    let r = s
        .post(
            &format!(
                "/api/v1/worker/{worker}/jobs/{}/report",
                job["job"].as_str().unwrap()
            ),
            token,
            &json!({"token": job["token"], "events": events}),
        )
        .await;
    r.status
}

fn step(index: u32, outputs: Value) -> Value {
    json!({"type": "step", "step": {
        "index": index, "name": "s", "status": "success", "outputs": outputs,
        "started_at": null, "finished_at": null
    }})
}

async fn workers_run_jobs_by_label_and_a_lost_lease_goes_to_another_worker(s: &Server) {
    let token = s.token("worker").await;
    // Another protocol, or nonsense, is refused saying what is wrong.
    let r = s
        .post(
            "/api/v1/worker/register",
            &token,
            &json!({"name": "old", "labels": [], "slots": 1, "protocol": 99, "version": "x"}),
        )
        .await;
    let e = r.expect_error(409, "PROTOCOL_MISMATCH");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("protocol {}", kiln_proto::workers::PROTOCOL)),
        "{e}"
    );
    let r = s
        .post(
            "/api/v1/worker/register",
            &token,
            &json!({"name": "", "labels": ["a b "], "slots": 0, "protocol": kiln_proto::workers::PROTOCOL, "version": "x"}),
        )
        .await;
    let e = r.expect_invalid("name");
    let fields: Vec<&str> = e["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "slots", "labels[0]"]);
    // A worker token reaches the worker routes only.
    assert_eq!(s.get("/api/v1/runs", Some(&token)).await.status, 403);

    let linux = register(s, &token, "linux-1", &["linux"]).await;
    let (_dir, project) = project_with(s, CI).await;
    let run = trigger(s, &project).await;

    let got = claim(s, &token, &linux, 10_000).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let build = &got[0];
    assert_eq!(
        (build["key"].as_str(), build["attempt"].as_i64()),
        (Some("build"), Some(1))
    );
    assert_eq!(build["workflow"], ".kiln/workflows/ci.yml");
    // Its event, for `GITHUB_EVENT_PATH`: the run's payload, as its contexts show it.
    assert!(build["event"]["head_commit"]["id"].is_string(), "{build}");
    assert_eq!(build["event"], build["contexts"]["github"]["event"]);
    assert!(
        build["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[0] == "GITHUB_RUN_ID")
    );
    // Its source: the project's files as a tar.
    let src = s
        .send(
            s.request(
                reqwest::Method::GET,
                &format!(
                    "/api/v1/worker/{linux}/jobs/{}/source?token={}",
                    build["job"].as_str().unwrap(),
                    build["token"]
                ),
            )
            .bearer_auth(&token),
        )
        .await;
    assert_eq!(src.status, 200);
    assert!(src.text.contains("the project's own file"));
    assert!(src.text.contains(".kiln/workflows/ci.yml"));

    // It runs and reports; the job ends as it says.
    let events = json!([
        {"type": "started"},
        {"type": "log", "step": 0, "data": "hello from linux-1\n"},
        // Output that is not UTF-8 comes as base64 too, and is kept byte for byte.
        {"type": "log", "step": 0, "data": "\u{fffd}A\n", "bytes": "/0EK"},
        step(0, json!({"v": "1"})),
        {"type": "done", "status": "success", "outputs": {"v": "1"}},
    ]);
    assert_eq!(report(s, &token, &linux, build, events).await, 200);
    let r = wait_until(s, run, |r| {
        r.jobs
            .iter()
            .any(|j| j.key == "build" && j.status == JobStatus::Success)
    })
    .await;
    let build_id = r.jobs.iter().find(|j| j.key == "build").unwrap().id;
    let log = s
        .get(&format!("/api/v1/logs/{build_id}"), Some(&s.admin))
        .await;
    assert!(log.text.contains("hello from linux-1"), "{}", log.text);
    let stored = s.store.read_log(build_id, 0, 1 << 20).await.unwrap();
    assert!(
        stored.data.ends_with(b"linux-1\n\xffA\n"),
        "{:?}",
        String::from_utf8_lossy(&stored.data)
    );

    // `test` needs a GPU: not for this worker.
    assert!(claim(s, &token, &linux, 300).await.is_empty());
    let gpu = register(s, &token, "gpu-1", &["gpu", "linux", "x86_64"]).await;
    let got = claim(s, &token, &gpu, 10_000).await;
    assert_eq!(got.len(), 1);
    let first = got[0].clone();
    assert_eq!(first["key"], "test");
    assert_eq!(first["contexts"]["needs"]["build"]["outputs"]["v"], "1");
    assert_eq!(
        report(s, &token, &gpu, &first, json!([{"type": "started"}])).await,
        200
    );

    // gpu-1 goes silent: its lease expires and the job goes back to the queue, attempt 2.
    let gpu2 = register(s, &token, "gpu-2", &["gpu", "linux"]).await;
    let got = claim(s, &token, &gpu2, 15_000).await;
    assert_eq!(got.len(), 1, "the job came back to the queue");
    let second = got[0].clone();
    assert_eq!(
        (second["job"].clone(), second["attempt"].as_i64()),
        (first["job"].clone(), Some(2))
    );
    assert!(second["token"].as_i64() > first["token"].as_i64());

    // gpu-1 wakes up: what it says now is refused, and its heartbeat says it lost the job.
    let late = json!([{"type": "done", "status": "success"}]);
    assert_eq!(report(s, &token, &gpu, &first, late).await, 409);
    let hb = s
        .post(
            &format!("/api/v1/worker/{gpu}/heartbeat"),
            &token,
            &json!({"jobs": [{"job": first["job"], "token": first["token"]}]}),
        )
        .await;
    assert_eq!(hb.data()["lost"], json!([first["job"]]));

    let done = json!([{"type": "started"}, {"type": "done", "status": "success"}]);
    assert_eq!(report(s, &token, &gpu2, &second, done).await, 200);
    let r = wait_until(s, run, |r| r.status.is_terminal()).await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    let test = r.jobs.iter().find(|j| j.key == "test").unwrap();
    assert_eq!((test.status, test.attempts), (JobStatus::Success, 2));

    // People see the workers.
    let list = s.get("/api/v1/workers", Some(&s.admin)).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let data = list.data();
    let names: Vec<&str> = data["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let one = s
        .get(&format!("/api/v1/workers/{gpu2}"), Some(&s.admin))
        .await;
    assert_eq!(one.data()["status"], "idle");
    assert_eq!(one.data()["labels"], json!(["gpu", "linux"]));
}

/// The `worker.*` events of worker `id` in the outbox, as (kind, status).
async fn worker_events(s: &Server, id: &str, want: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events: Vec<(String, Value)> = s
            .store
            .events_after(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind.starts_with("worker.") && e.data["worker"] == id)
            .map(|e| (e.kind, e.data["status"].clone()))
            .collect();
        if events.len() >= want || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_cancelled_run_stops_its_jobs_on_workers_and_paused_workers_get_none(s: &Server) {
    let token = s.token("worker").await;
    let w = register(s, &token, "w", &["linux", "gpu"]).await;
    let (_dir, project) = project_with(s, CI).await;
    let run = trigger(s, &project).await;
    let got = claim(s, &token, &w, 10_000).await;
    let build = got[0].clone();
    assert_eq!(
        report(s, &token, &w, &build, json!([{"type": "started"}])).await,
        200
    );
    let busy = s.get(&format!("/api/v1/workers/{w}"), Some(&s.admin)).await;
    assert_eq!(busy.data()["status"], "busy");
    assert_eq!(busy.data()["jobs"], json!([build["job"]]));

    let r = s
        .post(&format!("/api/v1/runs/{run}/cancel"), &s.admin, &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The next heartbeat tells the worker to stop the job; it reports it cancelled.
    let hb = s
        .post(
            &format!("/api/v1/worker/{w}/heartbeat"),
            &token,
            &json!({"jobs": [{"job": build["job"], "token": build["token"]}]}),
        )
        .await;
    assert_eq!(hb.data()["cancel"], json!([build["job"]]));
    assert_eq!(hb.data()["paused"], false);
    let stop = json!([{"type": "done", "status": "cancelled"}]);
    assert_eq!(report(s, &token, &w, &build, stop).await, 200);
    let r = wait_until(s, run, |r| r.status.is_terminal()).await;
    assert_eq!(r.status, RunStatus::Cancelled);
    // Registered (idle), then idle again once its only job ended.
    assert_eq!(
        worker_events(s, &w, 2).await,
        [
            ("worker.status".to_owned(), json!("idle")),
            ("worker.idle".to_owned(), Value::Null)
        ]
    );

    // A paused worker gets nothing (at once), until resumed; only maintainers pause.
    assert_eq!(
        s.post(&format!("/api/v1/workers/{w}/pause"), &token, &json!({}))
            .await
            .status,
        403
    );
    let p = s
        .post(&format!("/api/v1/workers/{w}/pause"), &s.admin, &json!({}))
        .await;
    assert_eq!(p.data()["status"], "paused");
    let events = worker_events(s, &w, 3).await;
    assert_eq!(events[2], ("worker.status".to_owned(), json!("paused")));
    let run = trigger(s, &project).await;
    let started = Instant::now();
    assert!(claim(s, &token, &w, 5_000).await.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a paused worker waits for nothing"
    );
    s.post(&format!("/api/v1/workers/{w}/resume"), &s.admin, &json!({}))
        .await;
    assert_eq!(claim(s, &token, &w, 10_000).await.len(), 1);
    let missing = s
        .post(
            "/api/v1/workers/0190ffff-0000-7000-8000-000000000000/pause",
            &s.admin,
            &json!({}),
        )
        .await;
    missing.expect_error(404, "WORKER_NOT_FOUND");

    // The worker's log: registered, given jobs, paused and resumed, newest first, in pages.
    let log = s
        .get(&format!("/api/v1/workers/{w}/log"), Some(&s.admin))
        .await;
    assert_eq!(log.status, 200, "{}", log.text);
    let kinds: Vec<String> = log.data()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("job.leased"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("worker.status"),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "worker.status").count() >= 3,
        "{kinds:?}"
    );
    let page = s
        .get(&format!("/api/v1/workers/{w}/log?limit=1"), Some(&s.admin))
        .await;
    let next = page.data()["next"].as_i64().expect("a next page");
    let rest = s
        .get(
            &format!("/api/v1/workers/{w}/log?before={next}"),
            Some(&s.admin),
        )
        .await;
    assert_eq!(
        rest.data()["events"].as_array().unwrap().len(),
        kinds.len() - 1
    );
    s.get(&format!("/api/v1/workers/{w}/log?before=x"), Some(&s.admin))
        .await
        .expect_invalid("before");
    s.get(
        "/api/v1/workers/0190ffff-0000-7000-8000-000000000000/log",
        Some(&s.admin),
    )
    .await
    .expect_error(404, "WORKER_NOT_FOUND");
    let _ = run;
}

async fn a_silent_worker_is_announced_offline_once_and_back_at_its_next_heartbeat(s: &Server) {
    let token = s.token("worker").await;
    let w = register(s, &token, "quiet", &["linux"]).await;
    let statuses = || async {
        let log = s
            .get(&format!("/api/v1/workers/{w}/log"), Some(&s.admin))
            .await;
        log.data()["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "worker.status")
            .map(|e| e["data"]["status"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // Silent for longer than a lease (2 s): announced offline, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while statuses().await.first().map(String::as_str) != Some("offline") {
        assert!(
            Instant::now() < deadline,
            "never announced offline: {:?}",
            statuses().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(statuses().await, ["offline", "idle"], "announced once");
    let shown = s.get(&format!("/api/v1/workers/{w}"), Some(&s.admin)).await;
    assert_eq!(shown.data()["status"], "offline");
    // Heard from again: announced back.
    let hb = s
        .post(
            &format!("/api/v1/worker/{w}/heartbeat"),
            &token,
            &json!({"jobs": []}),
        )
        .await;
    assert_eq!(hb.status, 200, "{}", hb.text);
    assert_eq!(statuses().await, ["idle", "offline", "idle"]);
    let shown = s.get(&format!("/api/v1/workers/{w}"), Some(&s.admin)).await;
    assert_eq!(shown.data()["status"], "idle");
}

/// A tar archive of `entries`: `(path, Some(content))` a file, `(path, None)` a symlink to
/// `/etc/passwd` (an output no dependent may be given).
fn archive(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        match content {
            Some(text) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                tar.append_data(&mut header, path, text.as_bytes()).unwrap();
            }
            None => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                header.set_cksum();
                tar.append_link(&mut header, path, "/etc/passwd").unwrap();
            }
        }
    }
    tar.into_inner().unwrap()
}

/// `PUT /api/v1/worker/{worker}/jobs/{job}/package/{part}?token=` of `body`.
async fn put_part(
    s: &Server,
    token: &str,
    worker: &str,
    job: &Value,
    part: &str,
    body: Vec<u8>,
) -> crate::harness::Reply {
    let path = format!(
        "/api/v1/worker/{worker}/jobs/{}/package/{part}?token={}",
        job["job"].as_str().unwrap(),
        job["token"]
    );
    s.send(
        s.request(reqwest::Method::PUT, &path)
            .bearer_auth(token)
            .body(body),
    )
    .await
}

/// The history of `origin` once it holds a build (rows are recorded as builds end).
async fn builds_of(s: &Server, origin: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = s
            .get(
                &format!("/api/v1/packages/{origin}/history"),
                Some(&s.admin),
            )
            .await;
        if h.status == 200 && h.data()["builds"].as_array().is_some_and(|b| !b.is_empty()) {
            return h.data();
        }
        assert!(
            Instant::now() < deadline,
            "no build of {origin}: {}",
            h.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `packages:` jobs run on remote workers like any job: the worker is told what to build (the
/// package, its key, its `$KILN_DEPS` closure with the digest of each output), fetches its
/// dependencies' outputs, uploads its own output and log, and reports; the server records the
/// build in the package history and gives the output to the dependents. Refused, saying why:
/// an unknown part, an output that would unpack outside its folder, an output that is not a
/// dependency's, a lease the worker does not hold.
async fn package_jobs_run_on_workers_that_fetch_their_deps_and_upload_their_outputs(s: &Server) {
    let wf = "name: ci\non: workflow_dispatch\njobs:\n  ports:\n    runs-on: linux\n    packages:\n      tree: tree\n";
    let (dir, project) = project_with(s, wf).await;
    let manifest = |rel: &str, text: &str| {
        let path = dir.path().join("tree").join(rel).join("kiln-package.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    manifest("lib/base", "version = \"1.0\"\nbuild = 'echo base'\n");
    manifest(
        "app/one",
        "version = \"2.0\"\ndepends = [\"lib/base\"]\nbuild = 'echo one'\n",
    );
    let token = s.token("worker").await;
    let w = register(s, &token, "builder", &["linux"]).await;
    let run = trigger(s, &project).await;

    // The dependency first: nothing in its closure.
    let got = claim(s, &token, &w, 10_000).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let base = &got[0];
    let pkg = &base["package"];
    assert_eq!(pkg["origin"], "lib/base", "{base:#}");
    assert_eq!(
        (pkg["version"].as_str(), pkg["tree"].as_str()),
        (Some("1.0"), Some("tree"))
    );
    assert_eq!(pkg["build"], "echo base");
    assert_eq!(pkg["key"].as_str().unwrap().len(), 64);
    assert_eq!(pkg["deps"], json!([]));
    assert!(["auto", "require", "off"].contains(&pkg["sandbox"].as_str().unwrap()));
    let facts: Vec<&str> = pkg["machine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[0].as_str().unwrap())
        .collect();
    assert_eq!(facts, ["os", "arch", "sh"], "{pkg:#}");

    put_part(s, &token, &w, base, "bogus", b"x".to_vec())
        .await
        .expect_invalid("part");
    let unsafe_output = archive(&[("lib/base", Some("base-1")), ("escape", None)]);
    let refused = put_part(s, &token, &w, base, "output", unsafe_output).await;
    let e = refused.expect_invalid("body");
    assert!(e["message"].as_str().unwrap().contains("escape"), "{e}");
    let kept = put_part(
        s,
        &token,
        &w,
        base,
        "output",
        archive(&[("lib/base", Some("base-1"))]),
    )
    .await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    let output = kept.data()["digest"].as_str().unwrap().to_owned();
    let log = put_part(
        s,
        &token,
        &w,
        base,
        "log",
        b"==> build: echo base\nbase\n".to_vec(),
    )
    .await;
    assert_eq!(log.status, 200, "{}", log.text);
    let done = json!([{"type": "started"}, {"type": "done", "status": "success", "outputs": {"output": "forged"}}]);
    assert_eq!(report(s, &token, &w, base, done).await, 200);

    // The dependent: its closure names the output the server kept.
    let got = claim(s, &token, &w, 10_000).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let one = &got[0];
    assert_eq!(one["package"]["origin"], "app/one");
    assert_eq!(
        one["package"]["deps"],
        json!([{"origin": "lib/base", "output": output}])
    );
    let dep_path = |job: &Value, digest: &str, token_of: &Value| {
        format!(
            "/api/v1/worker/{w}/jobs/{}/package/deps/{digest}?token={token_of}",
            job["job"].as_str().unwrap()
        )
    };
    let fetched = s
        .request(reqwest::Method::GET, &dep_path(one, &output, &one["token"]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let bytes = fetched.bytes().await.unwrap();
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        output
    );
    let mut entries = tar::Archive::new(&bytes[..]);
    let names: Vec<String> = entries
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.trim_end_matches('/') == "lib/base"),
        "{names:?}"
    );
    s.get(&dep_path(one, &"0".repeat(64), &one["token"]), Some(&token))
        .await
        .expect_error(404, "OUTPUT_NOT_FOUND");
    s.get(&dep_path(one, &output, &json!(999)), Some(&token))
        .await
        .expect_error(409, "LEASE_LOST");
    let done = json!([{"type": "done", "status": "failure", "error": "the build phase exited with status 3"}]);
    assert_eq!(report(s, &token, &w, one, done).await, 200);

    let ended = wait_until(s, run, |r| r.status.is_terminal()).await;
    assert_eq!(ended.status, RunStatus::Failure);
    let base_job = ended
        .jobs
        .iter()
        .find(|j| j.matrix["package"] == "lib/base")
        .unwrap();
    assert_eq!(
        base_job.outputs["output"],
        output.as_str(),
        "the server's digest, not the worker's word"
    );
    // The package history holds both builds, with the log the worker sent.
    let history = builds_of(s, "lib/base").await;
    let b = &history["builds"][0];
    assert_eq!(b["status"], "success", "{history:#}");
    assert_eq!(b["output"]["digest"], output.as_str());
    assert!(
        b["log_tail"].as_str().unwrap().contains("echo base"),
        "{b:#}"
    );
    let history = builds_of(s, "app/one").await;
    let b = &history["builds"][0];
    assert_eq!(b["status"], "failure", "{history:#}");
    assert_eq!(b["reason"], "the build phase exited with status 3");
    // The run has ended: its jobs' leases are gone.
    put_part(s, &token, &w, one, "log", b"late".to_vec())
        .await
        .expect_error(409, "LEASE_LOST");
}
