//! `/api/v1/projects` over HTTP on SQLite and PostgreSQL: folder projects, git projects
//! fetched in the background (from `file://` upstreams built with the git CLI), the egress
//! policy's refusals, unique names, roles, bad bodies, and removal — refused while a run is
//! unfinished, an archive otherwise that keeps the run readable. Every refusal stores nothing.
//! With an engine: a git project runs at the commit its fetch found, and an archived one not
//! at all.

use std::time::{Duration, Instant};

use kiln_core::ids::{JobStatus, RunStatus};
use kiln_engine::egress::EgressPolicy;
use kiln_store::{NewJob, NewRun, Op};
use kiln_testkit::GitUpstream;
use serde_json::{Map, Value, json};

use crate::harness::Server;

/// `mod name { sqlite, postgres }` tests running `async fn name(&Server)` on a server whose
/// egress policy is `policy()`, without an engine (runs the tests create stay as they are) or
/// with one (`engine` first).
macro_rules! with_policy {
    ($policy:ident: $($name:ident),+ $(,)?) => {
        with_policy!(@ false, $policy: $($name),+);
    };
    (engine $policy:ident: $($name:ident),+ $(,)?) => {
        with_policy!(@ true, $policy: $($name),+);
    };
    (@ $engine:expr, $policy:ident: $($name:ident),+) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let policy = super::$policy();
                    let s = $crate::harness::Server::sqlite_with($engine, policy).await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let policy = super::$policy();
                    let s = $crate::harness::Server::postgres_with($engine, policy).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}

with_policy!(engine local: a_git_project_runs_at_its_fetched_commit);

with_policy!(
    local: a_folder_project_is_added_shown_listed_and_changed,
    a_git_project_is_fetched_after_the_answer_and_on_request,
    a_failed_fetch_is_shown_on_the_project,
    names_are_unique,
    roles_decide_who_adds_what,
    bad_bodies_are_refused_naming_the_field,
    removing_waits_for_runs_then_archives,
);

with_policy!(defaults: the_default_policy_refuses_local_and_internal_sources);

/// What the tests that need local sources run with: folders, `file://` and loopback.
fn local() -> EgressPolicy {
    let mut policy = EgressPolicy::default();
    policy.allow_local_paths = true;
    policy.allow_loopback = true;
    policy
}

fn defaults() -> EgressPolicy {
    EgressPolicy::default()
}

impl Server {
    async fn patch(&self, path: &str, token: &str, body: &Value) -> crate::harness::Reply {
        self.send(
            self.request(reqwest::Method::PATCH, path)
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    async fn delete(&self, path: &str, token: &str) -> crate::harness::Reply {
        self.send(
            self.request(reqwest::Method::DELETE, path)
                .bearer_auth(token),
        )
        .await
    }

    /// The names of the listed projects.
    async fn project_names(&self) -> Vec<String> {
        let r = self.get("/api/v1/projects", Some(&self.admin)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.data()["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `GET` the project until its fetch is no longer pending (at most 60 s).
    async fn fetched(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = self
                .get(&format!("/api/v1/projects/{id}"), Some(&self.admin))
                .await
                .data();
            if p["fetch_status"] != "pending" {
                return p;
            }
            assert!(Instant::now() < deadline, "the fetch never ended: {p:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A folder in a temporary dir: (its guard, its absolute path).
fn folder(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::create_dir_all(&path).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

async fn a_folder_project_is_added_shown_listed_and_changed(s: &Server) {
    let (_guard, path) = folder("website");
    let r = s
        .post("/api/v1/projects", &s.admin, &json!({ "source": path }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mut p = r.data();
    // The webhook secret is shown at creation only.
    assert_eq!(p["secret"].as_str().unwrap().len(), 64);
    p.as_object_mut().unwrap().remove("secret");
    assert_eq!(p["name"], "website", "the folder's name by default");
    assert_eq!((&p["kind"], &p["source"]), (&json!("path"), &json!(path)));
    assert_eq!(p["fetch_status"], "none");
    assert_eq!(p["archived_at"], Value::Null);
    let hook_id = p["hook_id"].as_str().unwrap();
    assert_eq!(p["hook_url"], format!("{}/hooks/{hook_id}", s.base));
    let id = p["id"].as_str().unwrap().to_owned();

    let by_id = s
        .get(&format!("/api/v1/projects/{id}"), Some(&s.admin))
        .await;
    assert_eq!(by_id.data(), p);
    let by_name = s.get("/api/v1/projects/website", Some(&s.admin)).await;
    assert_eq!(by_name.data(), p);
    assert_eq!(s.project_names().await, ["website"]);
    // It is the project the rest of the server knows.
    let stored = s.store.find_project("website").await.unwrap().unwrap();
    assert_eq!(stored.id.to_string(), id);

    let renamed = s
        .patch(
            &format!("/api/v1/projects/{id}"),
            &s.admin,
            &json!({ "name": "site" }),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    let renamed = renamed.data();
    assert_eq!(renamed["name"], "site");
    assert_eq!(
        renamed["hook_id"], p["hook_id"],
        "the hook id never changes"
    );
    assert!(renamed["updated_at"].is_string());

    // Refused changes leave it as it is.
    let missing = s
        .patch(
            "/api/v1/projects/site",
            &s.admin,
            &json!({ "source": format!("{path}-gone") }),
        )
        .await;
    let e = missing.expect_invalid("source");
    assert!(
        e["message"].as_str().unwrap().contains("no folder"),
        "{e:#}"
    );
    let nothing = s.patch("/api/v1/projects/site", &s.admin, &json!({})).await;
    nothing.expect_invalid(".");
    let unknown = s
        .patch(
            "/api/v1/projects/site",
            &s.admin,
            &json!({ "colour": "red" }),
        )
        .await;
    unknown.expect_invalid("colour");
    let now = s.get("/api/v1/projects/site", Some(&s.admin)).await.data();
    assert_eq!(now, renamed);

    for r in [
        s.get("/api/v1/projects/nope", Some(&s.admin)).await,
        s.patch("/api/v1/projects/nope", &s.admin, &json!({ "name": "x" }))
            .await,
        s.delete(
            &format!("/api/v1/projects/{}", uuid::Uuid::now_v7()),
            &s.admin,
        )
        .await,
        s.post("/api/v1/projects/nope/fetch", &s.admin, &json!({}))
            .await,
    ] {
        r.expect_error(404, "PROJECT_NOT_FOUND");
    }
    // A folder has nothing to fetch.
    s.post(
        &format!("/api/v1/projects/{id}/fetch"),
        &s.admin,
        &json!({}),
    )
    .await
    .expect_error(409, "PROJECT_NOT_GIT");
}

async fn a_git_project_is_fetched_after_the_answer_and_on_request(s: &Server) {
    let up = GitUpstream::new();
    let first = up.commit(
        &[(".kiln/workflows/ci.yml", "on: push\njobs: {}\n")],
        "first",
    );
    let url = format!("{}/", up.url());
    let r = s
        .post(
            "/api/v1/projects",
            &s.admin,
            &json!({ "source": url, "name": "upstream" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let p = r.data();
    assert_eq!(
        (&p["kind"], &p["name"]),
        (&json!("git"), &json!("upstream"))
    );
    // The answer comes before any fetch.
    assert_eq!(p["fetch_status"], "pending");
    assert_eq!(
        (&p["head_sha"], &p["fetched_at"]),
        (&Value::Null, &Value::Null)
    );
    let id = p["id"].as_str().unwrap().to_owned();

    let done = s.fetched(&id).await;
    assert_eq!(done["fetch_status"], "ok", "{done:#}");
    assert_eq!(done["head_sha"], first);
    assert_eq!(done["default_branch"], "main");
    assert_eq!(done["fetch_error"], Value::Null);

    let second = up.commit(&[("README", "two")], "second");
    let again = s
        .post(
            &format!("/api/v1/projects/{id}/fetch"),
            &s.admin,
            &json!({}),
        )
        .await;
    assert_eq!(again.status, 202, "{}", again.text);
    let done = s.fetched(&id).await;
    assert_eq!(done["fetch_status"], "ok", "{done:#}");
    assert_eq!(done["head_sha"], second);

    // A developer may ask for a fetch too; a viewer may not.
    let developer = s.token("developer").await;
    let r = s
        .post(
            &format!("/api/v1/projects/{id}/fetch"),
            &developer,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let viewer = s.token("viewer").await;
    s.post(&format!("/api/v1/projects/{id}/fetch"), &viewer, &json!({}))
        .await
        .expect_error(403, "FORBIDDEN");
    s.fetched(&id).await;
}

/// The workspace holds the fetched commit's files; `GITHUB_SHA` names that commit.
const CHECK: &str = r#"
on: workflow_dispatch
jobs:
  check:
    runs-on: local
    steps:
      - run: test "$(cat marker)" = two && echo "sha=$GITHUB_SHA"
"#;

async fn a_git_project_runs_at_its_fetched_commit(s: &Server) {
    let up = GitUpstream::new();
    up.commit(
        &[(".kiln/workflows/ci.yml", CHECK), ("marker", "one")],
        "one",
    );
    let head = up.commit(&[("marker", "two")], "two");
    let r = s
        .post("/api/v1/projects", &s.admin, &json!({ "source": up.url() }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.data()["id"].as_str().unwrap().to_owned();
    let fetched = s.fetched(&id).await;
    assert_eq!(fetched["head_sha"], head, "{fetched:#}");

    let created = s
        .post(&format!("/api/v1/projects/{id}/runs"), &s.admin, &json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let run = &created.data()["runs"][0];
    assert_eq!(run["sha"], head);
    let run_id = run["id"].as_str().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let r = s.store.get_run(run_id).await.unwrap().unwrap();
        if r.status.is_terminal() {
            break r;
        }
        assert!(Instant::now() < deadline, "the run never ended: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = s.store.read_log(done.jobs[0].id, 0, 1 << 20).await.unwrap();
    let log = String::from_utf8_lossy(&log.data);
    assert_eq!(done.status, RunStatus::Success, "{log}");
    assert!(log.contains(&format!("sha={head}")), "{log}");

    // Pushed since the last fetch: a trigger fetches first, so it runs the new commit.
    let pushed = up.commit(&[("marker", "three")], "three");
    let created = s
        .post(&format!("/api/v1/projects/{id}/runs"), &s.admin, &json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.data()["runs"][0]["sha"], pushed);
    let run_id: kiln_core::ids::RunId = created.data()["runs"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // An upstream that is gone: the trigger says so, and nothing more is stored.
    std::fs::remove_dir_all(up.path().join(".git")).unwrap();
    let before = s.store.list_runs(&Default::default()).await.unwrap().len();
    let refused = s
        .post(&format!("/api/v1/projects/{id}/runs"), &s.admin, &json!({}))
        .await;
    let e = refused.expect_error(409, "PROJECT_FETCH_FAILED");
    assert!(
        e["message"].as_str().unwrap().contains("could not fetch"),
        "{e:#}"
    );
    let after = s.store.list_runs(&Default::default()).await.unwrap().len();
    assert_eq!(before, after);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s
        .store
        .get_run(run_id)
        .await
        .unwrap()
        .unwrap()
        .status
        .is_terminal()
    {
        assert!(Instant::now() < deadline, "the second run never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_failed_fetch_is_shown_on_the_project(s: &Server) {
    let (_guard, path) = folder("not-a-repo");
    let r = s
        .post(
            "/api/v1/projects",
            &s.admin,
            &json!({ "source": format!("file://{path}") }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.data()["name"], "not-a-repo");
    let done = s.fetched(&id).await;
    assert_eq!(done["fetch_status"], "failed", "{done:#}");
    let error = done["fetch_error"].as_str().unwrap();
    assert!(error.starts_with("failed to "), "{error}");
    assert!(error.contains("not-a-repo"), "{error}");
    assert!(
        error.contains("<data dir>/repos/") && !error.contains("--git-dir=/"),
        "the server's own paths are not shown: {error}"
    );
    assert_eq!(done["head_sha"], Value::Null);
}

async fn names_are_unique(s: &Server) {
    let (_a, one) = folder("one");
    let (_b, two) = folder("two");
    let first = s
        .post(
            "/api/v1/projects",
            &s.admin,
            &json!({ "source": one, "name": "app" }),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let dup = s
        .post(
            "/api/v1/projects",
            &s.admin,
            &json!({ "source": two, "name": "app" }),
        )
        .await;
    let e = dup.expect_error(409, "PROJECT_EXISTS");
    assert_eq!(e["details"]["name"], "app");
    assert_eq!(s.project_names().await, ["app"]);

    let other = s
        .post("/api/v1/projects", &s.admin, &json!({ "source": two }))
        .await;
    assert_eq!(other.status, 201, "{}", other.text);
    s.patch("/api/v1/projects/two", &s.admin, &json!({ "name": "app" }))
        .await
        .expect_error(409, "PROJECT_EXISTS");
    assert_eq!(s.project_names().await, ["app", "two"]);
}

async fn roles_decide_who_adds_what(s: &Server) {
    let (_guard, path) = folder("secret-stuff");
    let up = GitUpstream::new();
    up.commit(&[("a", "a")], "a");
    let viewer = s.token("viewer").await;
    let developer = s.token("developer").await;
    let maintainer = s.token("maintainer").await;

    let git = json!({ "source": "https://127.0.0.1:9/org/tool.git" });
    s.post("/api/v1/projects", &viewer, &git)
        .await
        .expect_error(403, "FORBIDDEN");
    s.post("/api/v1/projects", &developer, &git)
        .await
        .expect_error(403, "FORBIDDEN");
    // A path on the server is an admin's to register, as a folder or as a file:// URL.
    let e = s
        .post("/api/v1/projects", &maintainer, &json!({ "source": path }))
        .await
        .expect_error(403, "FORBIDDEN");
    assert!(e["message"].as_str().unwrap().contains("admin"), "{e:#}");
    s.post(
        "/api/v1/projects",
        &maintainer,
        &json!({ "source": up.url() }),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    assert!(s.project_names().await.is_empty(), "nothing was stored");

    // A maintainer adds a network repository; anyone may read it.
    let added = s.post("/api/v1/projects", &maintainer, &git).await;
    assert_eq!(added.status, 201, "{}", added.text);
    assert_eq!(added.data()["name"], "tool");
    let listed = s.get("/api/v1/projects", Some(&viewer)).await;
    assert_eq!(listed.data()["projects"][0]["name"], "tool");
    s.patch("/api/v1/projects/tool", &developer, &json!({ "name": "t" }))
        .await
        .expect_error(403, "FORBIDDEN");
    s.delete("/api/v1/projects/tool", &developer)
        .await
        .expect_error(403, "FORBIDDEN");
    // Nothing listens on port 9: the background fetch fails and says so.
    let done = s.fetched(added.data()["id"].as_str().unwrap()).await;
    assert_eq!(done["fetch_status"], "failed", "{done:#}");
}

async fn bad_bodies_are_refused_naming_the_field(s: &Server) {
    let malformed = s.post_raw("/api/v1/projects", "{\"source\": ").await;
    malformed.expect_error(400, "MALFORMED_JSON");
    for (body, field) in [
        (json!({ "source": 5 }), "source"),
        (json!({ "name": "x" }), "source"),
        (json!({ "source": "/tmp", "name": 3 }), "name"),
        (json!({ "source": "/tmp", "colour": "red" }), "colour"),
        (json!({ "source": "" }), "source"),
        (json!({ "source": "/tmp", "name": "a b" }), "name"),
        (json!({ "source": "/tmp", "name": ".hidden" }), "name"),
        (json!({ "source": "relative/dir" }), "source"),
        (json!({ "source": "/" }), "name"),
    ] {
        s.post("/api/v1/projects", &s.admin, &body)
            .await
            .expect_invalid(field);
    }
    // A folder whose name is no project name needs one given.
    let (_guard, spaced) = folder("my project");
    s.post("/api/v1/projects", &s.admin, &json!({ "source": spaced }))
        .await
        .expect_invalid("name");
    let named = s
        .post(
            "/api/v1/projects",
            &s.admin,
            &json!({ "source": spaced, "name": "mine" }),
        )
        .await;
    assert_eq!(named.status, 201, "{}", named.text);
    assert_eq!(s.project_names().await, ["mine"]);
}

async fn removing_waits_for_runs_then_archives(s: &Server) {
    let (_guard, path) = folder("service");
    let added = s
        .post("/api/v1/projects", &s.admin, &json!({ "source": path }))
        .await;
    assert_eq!(added.status, 201, "{}", added.text);
    let mut project = added.data();
    // Shown at creation only.
    project.as_object_mut().unwrap().remove("secret");
    let id = project["id"].as_str().unwrap().to_owned();
    let run = s
        .store
        .create_run(NewRun {
            id: kiln_core::ids::RunId::new(),
            project: id.parse().unwrap(),
            workflow: ".kiln/workflows/ci.yml".to_owned(),
            workflow_name: "ci".to_owned(),
            event: "push".to_owned(),
            git_ref: "refs/heads/main".to_owned(),
            sha: "0".repeat(40),
            inputs: Map::new(),
            status: RunStatus::Queued,
            jobs: vec![NewJob {
                id: kiln_core::ids::JobId::new(),
                key: "build".to_owned(),
                name: "build".to_owned(),
                matrix: Map::new(),
                needs: Vec::new(),
                status: JobStatus::Queued,
                max_attempts: 1,
                labels: Vec::new(),
            }],
            at: jiff::Timestamp::now(),
            driver: None,
            context: Default::default(),
        })
        .await
        .unwrap();

    let maintainer = s.token("maintainer").await;
    let busy = s
        .delete(&format!("/api/v1/projects/{id}"), &maintainer)
        .await;
    let e = busy.expect_error(409, "PROJECT_BUSY");
    assert_eq!(e["details"]["active_runs"], 1);
    let still = s.get("/api/v1/projects/service", Some(&s.admin)).await;
    assert_eq!(still.data(), project, "a refused removal changes nothing");

    let now = jiff::Timestamp::now();
    s.store
        .commit(vec![
            Op::SetJobStatus {
                job: run.jobs[0].id,
                status: JobStatus::Cancelled,
                at: now,
            },
            Op::SetRunStatus {
                run: run.id,
                status: RunStatus::Cancelled,
                at: now,
            },
        ])
        .await
        .unwrap();
    let removed = s
        .delete(&format!("/api/v1/projects/{id}"), &maintainer)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text);
    let removed = removed.data();
    assert!(removed["archived_at"].is_string(), "{removed:#}");
    assert!(s.project_names().await.is_empty(), "left out of the list");
    // Still readable, with its run and the run's jobs.
    let shown = s
        .get(&format!("/api/v1/projects/{id}"), Some(&s.admin))
        .await;
    assert_eq!(shown.data(), removed);
    let kept = s
        .store
        .get_run(run.id)
        .await
        .unwrap()
        .expect("the run stays");
    assert_eq!((kept.status, kept.jobs.len()), (RunStatus::Cancelled, 1));

    // Removing again changes nothing; it can no longer be changed or fetched; its name is
    // still taken.
    let again = s.delete(&format!("/api/v1/projects/{id}"), &s.admin).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.data()["archived_at"], removed["archived_at"]);
    s.patch(
        &format!("/api/v1/projects/{id}"),
        &s.admin,
        &json!({ "name": "svc" }),
    )
    .await
    .expect_error(409, "PROJECT_ARCHIVED");
    s.post(
        &format!("/api/v1/projects/{id}/fetch"),
        &s.admin,
        &json!({}),
    )
    .await
    .expect_error(409, "PROJECT_ARCHIVED");
    let e = s
        .post("/api/v1/projects", &s.admin, &json!({ "source": path }))
        .await
        .expect_error(409, "PROJECT_EXISTS");
    assert!(e["message"].as_str().unwrap().contains("archived"), "{e:#}");
    let shown = s
        .get(&format!("/api/v1/projects/{id}"), Some(&s.admin))
        .await;
    assert_eq!(shown.data(), removed);
}

async fn the_default_policy_refuses_local_and_internal_sources(s: &Server) {
    let up = GitUpstream::new();
    up.commit(&[("a", "a")], "a");
    let (_guard, path) = folder("here");
    for source in [
        up.url(),
        path.clone(),
        "https://127.0.0.1/org/repo.git".to_owned(),
        "https://localhost/org/repo.git".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "https://10.1.2.3/org/repo.git".to_owned(),
        "git@192.168.1.1:org/repo.git".to_owned(),
        "ext::sh -c touch% /tmp/pwned".to_owned(),
        "ftp://example.com/repo.git".to_owned(),
        "https://user:hunter2secret@127.0.0.1/org/repo.git".to_owned(),
    ] {
        let r = s
            .post("/api/v1/projects", &s.admin, &json!({ "source": source }))
            .await;
        r.expect_invalid("source");
        assert!(
            !r.text.contains("hunter2secret"),
            "credentials are never echoed: {}",
            r.text
        );
    }
    assert!(s.project_names().await.is_empty(), "nothing was stored");
    assert!(s.store.list_projects(true).await.unwrap().is_empty());
}

mod an_archived_project_is_not_run {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let s = crate::harness::Server::sqlite_with_engine().await;
        super::an_archived_project_is_not_run(&s).await;
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let s = crate::harness::Server::postgres_with_engine().await;
        super::an_archived_project_is_not_run(&s).await;
        s.stop().await;
    }
}

async fn an_archived_project_is_not_run(s: &Server) {
    let (_guard, path) = folder("old");
    std::fs::create_dir_all(format!("{path}/.kiln/workflows")).unwrap();
    std::fs::write(
        format!("{path}/.kiln/workflows/ci.yml"),
        "on: workflow_dispatch\njobs:\n  a:\n    runs-on: local\n    steps: [{run: 'true'}]\n",
    )
    .unwrap();
    let p = s.store.create_project("old", &path).await.unwrap();
    let archived = s.store.archive_project(p.project.id).await.unwrap();
    assert!(matches!(archived, Some(kiln_store::Archived::Done(_))));
    for id in [p.project.id.to_string(), "old".to_owned()] {
        s.post(&format!("/api/v1/projects/{id}/runs"), &s.admin, &json!({}))
            .await
            .expect_error(409, "PROJECT_ARCHIVED");
    }
    let runs = s
        .store
        .list_runs(&kiln_store::RunFilter::default())
        .await
        .unwrap();
    assert!(runs.is_empty(), "nothing ran: {runs:?}");
}
