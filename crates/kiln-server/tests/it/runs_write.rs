//! Starting, cancelling and retrying runs over HTTP, with the engine running their jobs, on
//! SQLite and PostgreSQL; and the refusals (unknown project, unknown or broken workflow, bad
//! inputs, a run that cannot be cancelled or retried), which store nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_core::ids::{JobStatus, RunId, RunStatus};
use kiln_proto::Run;
use serde_json::json;

use crate::harness::Server;

macro_rules! with_engine {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let s = $crate::harness::Server::sqlite_with_engine().await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let s = $crate::harness::Server::postgres_with_engine().await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}

with_engine!(
    a_project_token_sees_its_project_only,
    a_failed_run_is_retried_keeping_its_successful_jobs,
    a_running_run_is_cancelled,
    refused_triggers_store_nothing,
    a_package_tree_job_runs_its_packages_and_a_retry_builds_only_what_failed,
);

const FLAKY: &str = r#"
name: flaky
on: workflow_dispatch
jobs:
  solid:
    runs-on: local
    outputs:
      value: ${{ steps.s.outputs.value }}
    steps:
      - id: s
        run: echo "value=kept" >> "$GITHUB_OUTPUT"
  flaky:
    runs-on: local
    steps:
      # Fails the first time (leaving a marker outside the workspace), passes after.
      - run: test -e "${{ inputs.marker }}" || { touch "${{ inputs.marker }}"; exit 1; }
  after:
    needs: [solid, flaky]
    runs-on: local
    steps:
      - run: test "${{ needs.solid.outputs.value }}" = kept
"#;

const SLOW: &str = r#"
name: slow
on: workflow_dispatch
jobs:
  sleeper:
    runs-on: local
    steps:
      - run: sleep 30
  later:
    needs: sleeper
    runs-on: local
    steps:
      - run: echo never
"#;

/// A project folder with `files` (relative path, content), registered in the store.
async fn project(s: &Server, dir: &Path, files: &[(&str, &str)]) -> String {
    for (rel, content) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let name = format!("p{}", uuid::Uuid::new_v4().simple());
    let p = s
        .store
        .upsert_project(&name, &dir.to_string_lossy())
        .await
        .unwrap();
    p.id.to_string()
}

pub(crate) async fn wait_until(s: &Server, run: RunId, done: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = s.store.get_run(run).await.unwrap().unwrap();
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "run stuck: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn job<'a>(run: &'a Run, key: &str) -> &'a kiln_proto::Job {
    run.jobs.iter().find(|j| j.key == key).unwrap()
}

async fn a_failed_run_is_retried_keeping_its_successful_jobs(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let src = dir.path().join("src");
    let id = project(s, &src, &[(".kiln/workflows/flaky.yml", FLAKY)]).await;
    let created = s
        .post(
            &format!("/api/v1/projects/{id}/runs"),
            &s.admin,
            &json!({ "inputs": { "marker": marker.to_string_lossy() } }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let runs = created.data()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 1);
    let run_id: RunId = runs[0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(runs[0]["event"], "workflow_dispatch");

    let first = wait_until(s, run_id, |r| r.status.is_terminal()).await;
    assert_eq!(first.status, RunStatus::Failure, "{first:#?}");
    assert_eq!(job(&first, "flaky").status, JobStatus::Failure);
    assert_eq!(job(&first, "after").status, JobStatus::Skipped);
    assert_eq!(job(&first, "solid").status, JobStatus::Success);

    let retried = s
        .post(
            &format!("/api/v1/runs/{run_id}/retry"),
            &s.admin,
            &json!({}),
        )
        .await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(retried.data()["run_attempt"], 2);
    let second = wait_until(s, run_id, |r| r.status.is_terminal()).await;
    assert_eq!(second.status, RunStatus::Success, "{second:#?}");
    assert_eq!(second.run_attempt, 2);
    // The successful job did not run again; its output still fed `after`.
    assert_eq!(job(&second, "solid").attempts, 1);
    assert_eq!(job(&second, "flaky").attempts, 2);
    assert_eq!(job(&second, "after").status, JobStatus::Success);

    // A run that succeeded cannot be retried; an unknown one is not found.
    let again = s
        .post(
            &format!("/api/v1/runs/{run_id}/retry"),
            &s.admin,
            &json!({}),
        )
        .await;
    again.expect_error(409, "RUN_NOT_RETRYABLE");
    let unknown = s
        .post(
            &format!("/api/v1/runs/{}/retry", RunId::new()),
            &s.admin,
            &json!({}),
        )
        .await;
    unknown.expect_error(404, "RUN_NOT_FOUND");
}

async fn a_running_run_is_cancelled(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let id = project(s, dir.path(), &[(".kiln/workflows/slow.yml", SLOW)]).await;
    let created = s
        .post(&format!("/api/v1/projects/{id}/runs"), &s.admin, &json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let run_id: RunId = created.data()["runs"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_until(s, run_id, |r| {
        r.jobs
            .iter()
            .any(|j| j.key == "sleeper" && j.status == JobStatus::Running)
    })
    .await;
    let started = Instant::now();
    let cancelled = s
        .post(
            &format!("/api/v1/runs/{run_id}/cancel"),
            &s.admin,
            &json!({}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    let run = wait_until(s, run_id, |r| r.status.is_terminal()).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the 30 s step was stopped, not waited for"
    );
    assert_eq!(run.status, RunStatus::Cancelled, "{run:#?}");
    assert_eq!(job(&run, "sleeper").status, JobStatus::Cancelled);
    assert_ne!(job(&run, "later").status, JobStatus::Success);
    let again = s
        .post(
            &format!("/api/v1/runs/{run_id}/cancel"),
            &s.admin,
            &json!({}),
        )
        .await;
    again.expect_error(409, "RUN_NOT_ACTIVE");
}

async fn refused_triggers_store_nothing(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let broken = "on: workflow_dispatch\njobs:\n  a:\n    runs-on: x\n    needs: nope\n    steps: [{run: 'true'}]\n";
    let ok = "on:\n  workflow_dispatch:\n    inputs:\n      n:\n        type: number\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n";
    let good_dir = dir.path().join("good");
    let good = project(s, &good_dir, &[(".kiln/workflows/ok.yml", ok)]).await;
    let bad_dir = dir.path().join("bad");
    let bad = project(s, &bad_dir, &[(".kiln/workflows/broken.yml", broken)]).await;

    let r = s
        .post(
            &format!("/api/v1/projects/{bad}/runs"),
            &s.admin,
            &json!({}),
        )
        .await;
    let e = r.expect_error(422, "WORKFLOW_INVALID");
    let problems = e["details"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["file"] == ".kiln/workflows/broken.yml"
                && p["path"].as_str().unwrap().contains("needs")),
        "{e:#}"
    );
    let r = s
        .post(
            &format!("/api/v1/projects/{good}/runs"),
            &s.admin,
            &json!({ "workflow": "missing" }),
        )
        .await;
    r.expect_error(422, "RUN_REFUSED");
    let r = s
        .post(
            &format!("/api/v1/projects/{good}/runs"),
            &s.admin,
            &json!({ "inputs": { "n": "not a number" } }),
        )
        .await;
    r.expect_error(422, "RUN_REFUSED");
    let r = s
        .post(
            &format!("/api/v1/projects/{good}/runs"),
            &s.admin,
            &json!({ "inputs": { "n": [1] } }),
        )
        .await;
    let e = r.expect_error(422, "VALIDATION_FAILED");
    assert!(e.to_string().contains("inputs.n"), "{e:#}");
    let r = s
        .post(
            &format!("/api/v1/projects/{good}/runs"),
            &s.admin,
            &json!({ "workflow": 3 }),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = s
        .post("/api/v1/projects/no-such/runs", &s.admin, &json!({}))
        .await;
    r.expect_error(404, "PROJECT_NOT_FOUND");
    let stored = s
        .store
        .list_runs(&kiln_store::RunFilter::default())
        .await
        .unwrap();
    assert!(stored.is_empty(), "{stored:#?}");
}

with_engine!(runs_jobs_and_logs_read_back_over_http);

async fn runs_jobs_and_logs_read_back_over_http(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let wf = "on: workflow_dispatch\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo hello-log\n";
    let id = project(s, dir.path(), &[(".kiln/workflows/w.yml", wf)]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = s
            .post(&format!("/api/v1/projects/{id}/runs"), &s.admin, &json!({}))
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        let run_id: RunId = created.data()["runs"][0]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        wait_until(s, run_id, |r| r.status.is_terminal()).await;
        ids.push(run_id);
    }
    // The run, by id and by a prefix, with its jobs and steps.
    let full = s
        .get(&format!("/api/v1/runs/{}", ids[0]), Some(&s.admin))
        .await;
    let run = full.data();
    assert_eq!(run["status"], "success", "{run:#}");
    let job_id = run["jobs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        run["jobs"][0]["steps"].as_array().unwrap().len(),
        1,
        "{run:#}"
    );
    let short = &ids[0].to_string()[..4];
    let by_prefix = s
        .get(&format!("/api/v1/runs/{short}"), Some(&s.admin))
        .await;
    // Three runs made within a millisecond may share 4 characters: either answer is right.
    assert!(matches!(by_prefix.status, 200 | 400), "{}", by_prefix.text);
    s.get(&format!("/api/v1/runs/{}", RunId::new()), Some(&s.admin))
        .await
        .expect_error(404, "RUN_NOT_FOUND");

    // Pages, newest first, with no run twice.
    let page = s
        .get(
            &format!("/api/v1/runs?project={id}&limit=2"),
            Some(&s.admin),
        )
        .await
        .data();
    let first: Vec<String> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(first, [ids[2].to_string(), ids[1].to_string()]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = s
        .get(
            &format!("/api/v1/runs?project={id}&limit=2&cursor={cursor}"),
            Some(&s.admin),
        )
        .await
        .data();
    assert_eq!(rest["runs"][0]["id"], ids[0].to_string());
    assert!(rest["next_cursor"].is_null(), "{rest:#}");
    s.get("/api/v1/runs?limit=0", Some(&s.admin))
        .await
        .expect_error(400, "BAD_REQUEST");
    s.get("/api/v1/runs?status=done", Some(&s.admin))
        .await
        .expect_error(400, "BAD_REQUEST");

    // The job, and its log from an offset.
    let job = s
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&s.admin))
        .await
        .data();
    assert_eq!(job["key"], "a");
    s.get(&format!("/api/v1/jobs/{}", RunId::new()), Some(&s.admin))
        .await
        .expect_error(404, "JOB_NOT_FOUND");
    let log = s
        .get(&format!("/api/v1/logs/{job_id}"), Some(&s.admin))
        .await
        .data();
    assert!(
        log["data"].as_str().unwrap().contains("hello-log"),
        "{log:#}"
    );
    assert_eq!(log["complete"], true);
    let total = log["total"].as_u64().unwrap();
    let tail = s
        .get(&format!("/api/v1/logs/{job_id}?offset=6"), Some(&s.admin))
        .await
        .data();
    assert_eq!(tail["next_offset"], total);
    assert_eq!(tail["data"].as_str().unwrap().len() as u64, total - 6);
    s.get(&format!("/api/v1/logs/{job_id}?offset=x"), Some(&s.admin))
        .await
        .expect_error(400, "BAD_REQUEST");
}

const QUICK: &str = r#"
on: workflow_dispatch
jobs:
  only:
    runs-on: local
    steps:
      - run: echo hello
"#;

/// A token created for one project reads and runs that project only: others' projects,
/// runs, jobs and logs are not found, its run list holds its own runs, and the routes
/// about the whole server are refused.
async fn a_project_token_sees_its_project_only(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let mine = project(
        s,
        &dir.path().join("mine"),
        &[(".kiln/workflows/ci.yml", QUICK)],
    )
    .await;
    let other = project(
        s,
        &dir.path().join("other"),
        &[(".kiln/workflows/ci.yml", QUICK)],
    )
    .await;
    let r = s
        .post(
            "/api/v1/tokens",
            &s.admin,
            &json!({ "name": "mine", "role": "developer", "project": mine }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.data()["token"].as_str().unwrap().to_owned();

    let theirs = s
        .post(
            &format!("/api/v1/projects/{other}/runs"),
            &s.admin,
            &json!({}),
        )
        .await;
    let theirs: RunId = theirs.data()["runs"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let theirs = wait_until(s, theirs, |r| r.status.is_terminal()).await;
    let ours = s
        .post(&format!("/api/v1/projects/{mine}/runs"), &token, &json!({}))
        .await;
    assert_eq!(ours.status, 201, "{}", ours.text);
    let ours: RunId = ours.data()["runs"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ours = wait_until(s, ours, |r| r.status.is_terminal()).await;

    let projects = s.get("/api/v1/projects", Some(&token)).await.data();
    let ids: Vec<&str> = projects["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.as_str()]);
    let runs = s.get("/api/v1/runs", Some(&token)).await.data();
    let listed: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ours.id.to_string()]);
    let filtered = s
        .get(&format!("/api/v1/runs?project={other}"), Some(&token))
        .await
        .data();
    assert_eq!(filtered["runs"], json!([]));
    s.get(&format!("/api/v1/runs/{}", ours.id), Some(&token))
        .await
        .data();

    let job = theirs.jobs[0].id;
    for (path, code) in [
        (format!("/api/v1/projects/{other}"), "PROJECT_NOT_FOUND"),
        (format!("/api/v1/runs/{}", theirs.id), "RUN_NOT_FOUND"),
        (format!("/api/v1/jobs/{job}"), "JOB_NOT_FOUND"),
        (format!("/api/v1/logs/{job}"), "JOB_NOT_FOUND"),
        (format!("/api/v1/logs/{job}/stream"), "JOB_NOT_FOUND"),
    ] {
        s.get(&path, Some(&token)).await.expect_error(404, code);
        // The admin sees it.
        assert_eq!(s.get(&path, Some(&s.admin)).await.status, 200, "{path}");
    }
    for path in [
        format!("/api/v1/projects/{other}/runs"),
        format!("/api/v1/projects/{other}/fetch"),
    ] {
        s.post(&path, &token, &json!({}))
            .await
            .expect_error(404, "PROJECT_NOT_FOUND");
    }
    for path in [
        format!("/api/v1/runs/{}/cancel", theirs.id),
        format!("/api/v1/runs/{}/retry", theirs.id),
    ] {
        s.post(&path, &token, &json!({}))
            .await
            .expect_error(404, "RUN_NOT_FOUND");
    }
    s.get(&format!("/api/v1/events?project={other}"), Some(&token))
        .await
        .expect_error(403, "FORBIDDEN");
    for path in ["/api/v1/queue", "/api/v1/stats", "/api/v1/tokens"] {
        s.get(path, Some(&token))
            .await
            .expect_error(403, "FORBIDDEN");
    }
    s.post(
        "/api/v1/projects",
        &token,
        &json!({ "source": "https://example.com/x.git" }),
    )
    .await
    .expect_error(403, "FORBIDDEN");
}

const PORTS: &str = r#"
name: ports
on: workflow_dispatch
jobs:
  ports:
    runs-on: local
    packages:
      tree: tree
"#;

/// A `packages:` job over the API: one job per package; the failed package's dependent is
/// skipped; a retry (the server plans the tree again) builds the failed package and what
/// waited on it, and reuses the rest from the cache. The history is served by the package API.
async fn a_package_tree_job_runs_its_packages_and_a_retry_builds_only_what_failed(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    // Outside /tmp, which is private in the build sandbox.
    let flags = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let marker = flags.path().join("fixed");
    let flaky = format!(
        "version = \"1\"\ndepends = [\"lib/base\"]\nbuild = 'test -e {}'\n",
        marker.display()
    );
    let id = project(
        s,
        dir.path(),
        &[
            (".kiln/workflows/ports.yml", PORTS),
            (
                "tree/lib/base/kiln-package.toml",
                "version = \"1\"\nbuild = 'echo base > \"$KILN_OUT/base\"'\n",
            ),
            ("tree/app/flaky/kiln-package.toml", &flaky),
            (
                "tree/app/top/kiln-package.toml",
                "version = \"1\"\ndepends = [\"app/flaky\"]\nbuild = 'test -f \"$KILN_DEPS/lib/base/base\"'\n",
            ),
        ],
    )
    .await;
    let created = s
        .post(&format!("/api/v1/projects/{id}/runs"), &s.admin, &json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let run_id: RunId = created.data()["runs"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let first = wait_until(s, run_id, |r| r.status.is_terminal()).await;
    let by_name = |r: &Run| {
        let mut v: Vec<(String, JobStatus)> =
            r.jobs.iter().map(|j| (j.name.clone(), j.status)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(first.status, RunStatus::Failure);
    assert_eq!(
        by_name(&first),
        [
            ("ports (app/flaky)".to_owned(), JobStatus::Failure),
            ("ports (app/top)".to_owned(), JobStatus::Skipped),
            ("ports (lib/base)".to_owned(), JobStatus::Success),
        ]
    );
    let top = s.get("/api/v1/packages/app/top", Some(&s.admin)).await;
    assert_eq!(top.status, 200, "{}", top.text);
    assert_eq!(top.data()["latest"]["status"], "skipped", "{}", top.text);

    std::fs::write(&marker, "").unwrap();
    let retried = s
        .post(
            &format!("/api/v1/runs/{run_id}/retry"),
            &s.admin,
            &json!({}),
        )
        .await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    let second = wait_until(s, run_id, |r| r.status.is_terminal() && r.run_attempt == 2).await;
    assert_eq!(second.status, RunStatus::Success, "{second:#?}");
    assert_eq!(
        by_name(&second),
        [
            ("ports (app/flaky)".to_owned(), JobStatus::Success),
            ("ports (app/top)".to_owned(), JobStatus::Success),
            ("ports (lib/base)".to_owned(), JobStatus::Success),
        ]
    );
    let base = second
        .jobs
        .iter()
        .find(|j| j.name == "ports (lib/base)")
        .unwrap();
    assert_eq!(base.attempts, 1, "the built package did not run again");
    let history = s
        .get("/api/v1/packages/app/flaky/history", Some(&s.admin))
        .await;
    assert_eq!(history.status, 200, "{}", history.text);
    let builds = history.data();
    let statuses: Vec<&str> = builds["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["success", "failure"], "{}", history.text);
}
