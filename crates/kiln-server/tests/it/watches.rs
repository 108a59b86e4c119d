//! `GET /api/v1/watches` and `POST /api/v1/watches/{id}/check` on SQLite and PostgreSQL: a
//! server with a watch poller pointed at a local PyPI-shaped registry. The first check records
//! the versions found without runs; a version published later starts one run with
//! `inputs.version`; who may check; a project-scoped token sees its project's watches only;
//! a server without a poller answers 409.
//!
//! The harness's servers carry no poller, so these tests start their own, as `kiln serve` does.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jiff::Timestamp;
use kiln_engine::egress::EgressPolicy;
use kiln_engine::watch::{Registries, WatchConfig, Watcher};
use kiln_server::{AppState, ServerConfig};
use kiln_store::Store;
use serde_json::{Value, json};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tokio::sync::oneshot;

use crate::harness::Server;

type Releases = Arc<Mutex<Vec<String>>>;

/// A registry answering `GET /pypi/demo/json` with the versions in the list; its base URL.
async fn fake_pypi(releases: Releases) -> String {
    async fn demo(State(r): State<Releases>) -> axum::Json<Value> {
        let releases: serde_json::Map<String, Value> = r
            .lock()
            .unwrap()
            .iter()
            .map(|v| {
                let files = json!([{"packagetype": "sdist", "url": format!("https://f.example/demo-{v}.tar.gz")}]);
                (v.clone(), files)
            })
            .collect();
        axum::Json(json!({ "releases": releases }))
    }
    let app = Router::new()
        .route("/pypi/demo/json", get(demo))
        .with_state(releases);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn egress() -> EgressPolicy {
    let mut e = EgressPolicy::default();
    e.allow_loopback = true;
    e.allow_local_paths = true;
    e
}

/// A server with an engine and a watch poller (polled by the test, not in the background).
struct Polled {
    base: String,
    admin: String,
    watcher: Watcher,
    engine: kiln_engine::Engine,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn pg_base() -> String {
    if let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") {
        return url;
    }
    for url in [PG, "postgres://root@127.0.0.1:5432/test"] {
        if PgConnection::connect(url).await.is_ok() {
            return url.to_owned();
        }
    }
    panic!("PostgreSQL is not reachable at {PG}");
}

async fn pg_exec(base: &str, sql: String) {
    let mut conn = PgConnection::connect(base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

impl Polled {
    async fn start(postgres: bool, pypi: &str) -> Polled {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (store, pg) = if postgres {
            let base = pg_base().await;
            let schema = format!("watch_{}", uuid::Uuid::new_v4().simple());
            pg_exec(&base, format!("CREATE SCHEMA {schema}")).await;
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}schema={schema}");
            kiln_store::SecretKeys::generate()
                .unwrap()
                .write_file(&dir.path().join(kiln_store::secrets::KEY_FILE_NAME))
                .unwrap();
            let store = Store::open_postgres(&url, dir.path()).await.unwrap();
            (store, Some((base, schema)))
        } else {
            (Store::open_sqlite(dir.path()).await.unwrap(), None)
        };
        let admin = store.ensure_admin_token(None).await.unwrap().unwrap();
        let (engine, _) = kiln_engine::Engine::start(
            store.clone(),
            kiln_engine::EngineConfig {
                slots: 2,
                data_dir: dir.path().to_owned(),
                max_attempts: 3,
                sandbox: kiln_engine::packages::Sandbox::off(),
                fetch_egress: None,
                lease_ttl: kiln_engine::dispatch::LEASE_TTL,
                artifacts: None,
            },
        )
        .await
        .unwrap();
        let watcher = Watcher::new(
            engine.clone(),
            store.clone(),
            dir.path(),
            WatchConfig {
                registries: Registries {
                    pypi: pypi.to_owned(),
                    ..Registries::default()
                },
                egress: egress(),
                ..WatchConfig::default()
            },
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = ServerConfig::new(&base);
        config.data_dir = dir.path().to_owned();
        config.egress = egress();
        let state = AppState::new(store, config)
            .with_engine(engine.clone())
            .with_watcher(watcher.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(kiln_server::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Polled {
            base,
            admin,
            watcher,
            engine,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task,
            pg,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// A token with `role`, limited to `project` if given.
    async fn token(&self, role: &str, project: Option<&str>) -> String {
        let (status, v) = self
            .post(
                "/api/v1/tokens",
                &self.admin,
                json!({"name": format!("{role} test"), "role": role, "project": project}),
            )
            .await;
        assert_eq!(status, 201, "{v:#}");
        v["data"]["token"].as_str().unwrap().to_owned()
    }

    /// A folder project with these workflow files; its id.
    async fn project(&self, name: &str, files: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap().keep();
        for (file, text) in files {
            let path = dir.join(".kiln/workflows").join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let (status, v) = self
            .post(
                "/api/v1/projects",
                &self.admin,
                json!({"source": dir, "name": name}),
            )
            .await;
        assert_eq!(status, 201, "{v:#}");
        v["data"]["id"].as_str().unwrap().to_owned()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.task).await;
        self.engine
            .shutdown(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        if let Some((base, schema)) = self.pg.take() {
            crate::harness::drop_schema(&base, &schema).await;
        }
    }
}

const WORKFLOW: &str = r#"on:
  watch:
    - {name: demo-release, source: pypi, package: demo}
jobs:
  build:
    runs-on: x
    steps:
      - run: echo "${{ inputs.version }}"
"#;

async fn watches_are_listed_and_checked(postgres: bool) {
    let releases: Releases = Arc::new(Mutex::new(vec!["1.0.0".into(), "1.1.0".into()]));
    let pypi = fake_pypi(releases.clone()).await;
    let s = Polled::start(postgres, &pypi).await;
    let pid = s.project("demo", &[("release.yml", WORKFLOW)]).await;
    let other = s.project("other", &[]).await;
    s.watcher.sync_all(Timestamp::now()).await.unwrap();

    let (status, v) = s.get("/api/v1/watches", &s.admin).await;
    assert_eq!(status, 200, "{v:#}");
    let watches = v["data"]["watches"].as_array().unwrap();
    assert_eq!(watches.len(), 1, "{v:#}");
    let w = &watches[0];
    assert_eq!(w["name"], "demo-release");
    assert_eq!(w["project"], pid.as_str());
    assert_eq!(w["state"], "new");
    assert_eq!(w["versions_seen"], 0);
    let id = w["id"].as_str().unwrap().to_owned();

    // Readers list; only maintainers and admins check.
    let viewer = s.token("viewer", None).await;
    let (status, _) = s.get("/api/v1/watches", &viewer).await;
    assert_eq!(status, 200);
    let (status, v) = s
        .post("/api/v1/watches/demo-release/check", &viewer, json!({}))
        .await;
    assert_eq!(status, 403, "{v:#}");

    // The first check records what is there, quietly.
    let maintainer = s.token("maintainer", None).await;
    let (status, v) = s
        .post("/api/v1/watches/demo-release/check", &maintainer, json!({}))
        .await;
    assert_eq!(status, 200, "{v:#}");
    let first = &v["data"];
    assert_eq!(first["error"], Value::Null);
    let seen: Vec<_> = first["new_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["run"], Value::Null, "{n:#}");
            n["version"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(seen.len(), 2, "{first:#}");
    assert_eq!(first["watch"]["state"], "ok");
    assert_eq!(first["watch"]["versions_seen"], 2);

    // A new version starts one run, with its version and where it came from.
    releases.lock().unwrap().push("1.2.0".into());
    let (status, v) = s
        .post(&format!("/api/v1/watches/{id}/check"), &s.admin, json!({}))
        .await;
    assert_eq!(status, 200, "{v:#}");
    let new = v["data"]["new_versions"].as_array().unwrap();
    assert_eq!(new.len(), 1, "{v:#}");
    assert_eq!(new[0]["version"], "1.2.0");
    let run = new[0]["run"].as_str().expect("a run started").to_owned();
    let (_, runs) = s.get("/api/v1/runs", &s.admin).await;
    let runs = runs["data"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["id"], run.as_str());
    assert_eq!(runs[0]["event"], "watch");
    assert_eq!(runs[0]["inputs"]["version"], "1.2.0");
    assert_eq!(
        runs[0]["inputs"]["source_uri"],
        "https://f.example/demo-1.2.0.tar.gz"
    );

    // Again: nothing new.
    let (_, v) = s
        .post(&format!("/api/v1/watches/{id}/check"), &s.admin, json!({}))
        .await;
    assert_eq!(v["data"]["new_versions"], json!([]));
    assert_eq!(v["data"]["watch"]["last_run"], run.as_str());

    // A token of another project neither sees nor checks the watch.
    let scoped = s.token("maintainer", Some(&other)).await;
    let (_, v) = s.get("/api/v1/watches", &scoped).await;
    assert_eq!(v["data"]["watches"], json!([]));
    for name in ["demo-release", id.as_str()] {
        let (status, v) = s
            .post(&format!("/api/v1/watches/{name}/check"), &scoped, json!({}))
            .await;
        assert_eq!(status, 404, "{v:#}");
        assert_eq!(v["error"]["code"], "WATCH_NOT_FOUND");
    }
    let (status, v) = s
        .post("/api/v1/watches/nope/check", &s.admin, json!({}))
        .await;
    assert_eq!(status, 404, "{v:#}");
    assert_eq!(v["error"]["code"], "WATCH_NOT_FOUND");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_listed_and_checked_sqlite() {
    watches_are_listed_and_checked(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_listed_and_checked_postgres() {
    watches_are_listed_and_checked(true).await;
}

/// A server that polls no watches lists them but refuses to check one: 409.
async fn without_a_poller(postgres: bool) {
    let s = Server::with_config(postgres, true, |c| c.egress = egress()).await;
    let r = s.get("/api/v1/watches", None).await;
    r.expect_error(401, "UNAUTHORIZED");
    let r = s
        .post(
            "/api/v1/watches/00000000-0000-0000-0000-000000000000/check",
            &s.admin,
            &json!({}),
        )
        .await;
    r.expect_error(404, "WATCH_NOT_FOUND");

    // The watch is in the store (another replica's poller synced it), not polled here.
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::create_dir_all(dir.join(".kiln/workflows")).unwrap();
    std::fs::write(dir.join(".kiln/workflows/release.yml"), WORKFLOW).unwrap();
    let r = s
        .post(
            "/api/v1/projects",
            &s.admin,
            &json!({"source": dir, "name": "demo"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let elsewhere = Watcher::new(
        s.engine.clone().unwrap(),
        s.store.clone(),
        s.data_dir(),
        WatchConfig::default(),
    )
    .unwrap();
    elsewhere.sync_all(Timestamp::now()).await.unwrap();
    let r = s.get("/api/v1/watches", Some(&s.admin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.data()["watches"][0]["name"], "demo-release");
    let r = s
        .post("/api/v1/watches/demo-release/check", &s.admin, &json!({}))
        .await;
    r.expect_error(409, "WATCHES_UNAVAILABLE");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_poller_sqlite() {
    without_a_poller(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_poller_postgres() {
    without_a_poller(true).await;
}
