//! Outbound notifications end to end, on SQLite and PostgreSQL: a receiver server on
//! 127.0.0.1 that checks every signature, runs whose events are delivered once per matching
//! receiver, retries with backoff until a 2xx, a restart that sends nothing again, the filter,
//! the refusals at registration, and two notifiers on one PostgreSQL schema that never send one
//! delivery twice.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit as _, Mac as _};
use kiln_core::ids::RunStatus;
use kiln_engine::egress::EgressPolicy;
use kiln_server::{AppState, NotifyConfig, ServerConfig};
use kiln_store::Store;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const OK_WORKFLOW: &str = r#"
name: ok
on: workflow_dispatch
jobs:
  build:
    runs-on: local
    steps:
      - run: echo built
"#;

// ---------------------------------------------------------------------------------------
// The receiver: answers from a script of statuses (then 200), checks signatures.

#[derive(Clone, Debug)]
struct Received {
    delivery: String,
    event: String,
    body: Value,
    signature_ok: bool,
}

#[derive(Default)]
struct ReceiverState {
    secret: Mutex<String>,
    script: Mutex<VecDeque<u16>>,
    got: Mutex<Vec<Received>>,
    delay: Mutex<Duration>,
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}/hook"),
            state,
            task,
        }
    }

    fn got(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let secret = state.secret.lock().unwrap().clone();
    let timestamp = h("x-kiln-timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let signature = h("x-kiln-signature");
    let signature_ok = signature
        .strip_prefix("sha256=")
        .and_then(|s| hex::decode(s).ok())
        .is_some_and(|sig| mac.verify_slice(&sig).is_ok());
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (jiff::Timestamp::now().as_second() - t).abs() <= 300);
    state.got.lock().unwrap().push(Received {
        delivery: h("x-kiln-delivery"),
        event: h("x-kiln-event"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signature_ok: signature_ok && fresh,
    });
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let code = state.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(code).unwrap()
}

// ---------------------------------------------------------------------------------------
// A server of our own: loopback allowed, quick notifier settings.

enum Db {
    Sqlite,
    Postgres,
}

struct Backing {
    store: Store,
    dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

async fn pg_base() -> String {
    if let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") {
        return url;
    }
    "postgres://postgres@127.0.0.1:5432/test".to_owned()
}

async fn pg_exec(base: &str, sql: String) {
    use sqlx::Connection as _;
    let mut conn = sqlx::postgres::PgConnection::connect(base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
}

impl Backing {
    async fn new(db: Db) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match db {
            Db::Sqlite => Self {
                store: Store::open_sqlite(dir.path()).await.unwrap(),
                dir,
                pg: None,
            },
            Db::Postgres => {
                let base = pg_base().await;
                let schema = format!("ntf_{}", uuid::Uuid::new_v4().simple());
                pg_exec(&base, format!("CREATE SCHEMA {schema}")).await;
                kiln_store::SecretKeys::generate()
                    .unwrap()
                    .write_file(&dir.path().join(kiln_store::secrets::KEY_FILE_NAME))
                    .unwrap();
                let store = Store::open_postgres(&Self::url(&base, &schema), dir.path())
                    .await
                    .unwrap();
                Self {
                    store,
                    dir,
                    pg: Some((base, schema)),
                }
            }
        }
    }

    fn url(base: &str, schema: &str) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}schema={schema}")
    }

    /// Another handle on the same database (what a second replica opens).
    async fn open_again(&self) -> Store {
        match &self.pg {
            None => Store::open_sqlite(self.dir.path()).await.unwrap(),
            Some((base, schema)) => Store::open_postgres(&Self::url(base, schema), self.dir.path())
                .await
                .unwrap(),
        }
    }

    async fn drop_schema(self) {
        if let Some((base, schema)) = &self.pg {
            crate::harness::drop_schema(base, schema).await;
        }
    }
}

fn quick() -> NotifyConfig {
    NotifyConfig {
        poll: Duration::from_millis(50),
        backoff: vec![Duration::from_millis(100)],
        max_attempts: 4,
        timeout: Duration::from_secs(5),
        lease: Duration::from_secs(30),
        batch: 4,
        ..NotifyConfig::default()
    }
}

struct Srv {
    base: String,
    admin: String,
    store: Store,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    engine: Option<kiln_engine::Engine>,
}

impl Srv {
    async fn start(
        store: Store,
        data_dir: &std::path::Path,
        engine: bool,
        notify: NotifyConfig,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let admin = match store.ensure_admin_token(None).await.unwrap() {
            Some(t) => t,
            None => {
                store
                    .create_token("admin again", kiln_proto::Role::Admin, None)
                    .await
                    .unwrap()
                    .1
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = ServerConfig::new(&base);
        config.data_dir = data_dir.to_owned();
        let mut egress = EgressPolicy::default();
        egress.allow_loopback = true;
        config.egress = egress;
        config.notify = notify;
        let mut state = AppState::new(store.clone(), config);
        let mut kept = None;
        if engine {
            let (e, _) = kiln_engine::Engine::start(
                store.clone(),
                kiln_engine::EngineConfig {
                    slots: 2,
                    data_dir: data_dir.to_owned(),
                    max_attempts: 3,
                    sandbox: kiln_engine::packages::Sandbox::off(),
                    fetch_egress: None,
                    lease_ttl: kiln_engine::dispatch::LEASE_TTL,
                    artifacts: None,
                },
            )
            .await
            .unwrap();
            kept = Some(e.clone());
            state = state.with_engine(e);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(kiln_server::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            admin,
            store,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
            engine: kept,
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
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn stop(mut self) {
        if let Some(e) = &self.engine {
            let _ = e.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
    }
}

/// A project folder with one workflow, registered in the store; returns (id, name).
async fn project(s: &Srv, dir: &std::path::Path) -> (String, String) {
    let path = dir.join("proj/.kiln/workflows/ok.yml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, OK_WORKFLOW).unwrap();
    let name = format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let p = s
        .store
        .upsert_project(&name, &dir.join("proj").to_string_lossy())
        .await
        .unwrap();
    (p.id.to_string(), name)
}

async fn add_receiver(s: &Srv, project: &str, url: &str, events: &[&str]) -> Value {
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{project}/receivers"),
            &s.admin,
            Some(json!({ "url": url, "events": events })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["data"].clone()
}

async fn run_to_end(s: &Srv, project: &str) -> String {
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{project}/runs"),
            &s.admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["runs"][0]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = s.store.get_run(id.parse().unwrap()).await.unwrap().unwrap();
        if run.status.is_terminal() {
            assert_eq!(run.status, RunStatus::Success);
            return id;
        }
        assert!(Instant::now() < deadline, "run stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn notifications(s: &Srv, project: &str) -> Vec<Value> {
    let (status, body) = s
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/projects/{project}/notifications"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["notifications"].as_array().unwrap().clone()
}

macro_rules! both {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::Db::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::Db::Postgres).await;
                }
            }
        )+
    };
}

both!(
    a_run_notifies_each_matching_receiver_once,
    failures_are_retried_until_delivered_and_a_restart_sends_nothing_again,
    refused_receivers_store_nothing,
);

async fn a_run_notifies_each_matching_receiver_once(db: Db) {
    let b = Backing::new(db).await;
    let s = Srv::start(b.store.clone(), b.dir.path(), true, quick()).await;
    let (pid, name) = project(&s, b.dir.path()).await;
    let completed = Receiver::start().await;
    let failed = Receiver::start().await;
    let all = Receiver::start().await;
    for (r, events) in [
        (&completed, &["run.completed"][..]),
        (&failed, &["run.failed"][..]),
        (&all, &["run.*"][..]),
    ] {
        let created = add_receiver(&s, &pid, &r.url, events).await;
        *r.state.secret.lock().unwrap() = created["secret"].as_str().unwrap().to_owned();
    }
    let run = run_to_end(&s, &pid).await;
    wait_for("run.completed", || completed.got().len() == 1).await;
    wait_for("every run event", || {
        all.got().iter().any(|g| g.event == "run.completed")
    })
    .await;
    // Time for duplicates to show, if there were any.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let got = completed.got();
    assert_eq!(got.len(), 1, "{got:?}");
    let g = &got[0];
    assert!(g.signature_ok, "the signature verifies");
    assert_eq!(g.event, "run.completed");
    assert_eq!(g.body["delivery_id"], g.delivery.as_str());
    assert_eq!(g.body["event"]["type"], "run.completed");
    assert_eq!(g.body["event"]["run"], run.as_str());
    assert_eq!(g.body["project"]["id"], pid.as_str());
    assert_eq!(g.body["project"]["name"], name.as_str());
    assert_eq!(g.body["run"]["status"], "success");
    assert_eq!(
        g.body["run"]["url"],
        format!("{}/api/v1/runs/{run}", s.base)
    );
    assert!(g.body["run"].get("jobs").is_none());
    assert!(failed.got().is_empty(), "a successful run does not fail");
    let all_got = all.got();
    assert!(
        all_got
            .iter()
            .all(|g| g.signature_ok && g.event.starts_with("run."))
    );
    let mut ids: Vec<&str> = all_got.iter().map(|g| g.delivery.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all_got.len(), "each delivery once");
    let mut kinds: Vec<&str> = all_got.iter().map(|g| g.event.as_str()).collect();
    kinds.sort_unstable();
    assert!(
        kinds.contains(&"run.queued") && kinds.contains(&"run.started"),
        "{kinds:?}"
    );

    let listed = notifications(&s, &pid).await;
    assert_eq!(listed.len(), 1 + all_got.len());
    for n in &listed {
        assert_eq!(n["status"], "delivered", "{n}");
        assert_eq!(n["attempts"].as_array().unwrap().len(), 1);
        assert_eq!(n["attempts"][0]["status_code"], 200);
    }
    s.stop().await;
    b.drop_schema().await;
}

async fn failures_are_retried_until_delivered_and_a_restart_sends_nothing_again(db: Db) {
    let b = Backing::new(db).await;
    let s = Srv::start(b.store.clone(), b.dir.path(), true, quick()).await;
    let (pid, _) = project(&s, b.dir.path()).await;
    let r = Receiver::start().await;
    r.state.script.lock().unwrap().extend([500, 500]);
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{pid}/receivers"),
            &s.admin,
            Some(json!({ "url": r.url, "events": ["run.completed"], "secret": "a-chosen-secret-of-length-32...." })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["secret"], "a-chosen-secret-of-length-32....");
    *r.state.secret.lock().unwrap() = "a-chosen-secret-of-length-32....".to_owned();
    // A listing never shows the secret.
    let (_, list) = s
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/projects/{pid}/receivers"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(list["data"]["receivers"].as_array().unwrap().len(), 1);
    assert!(list["data"]["receivers"][0].get("secret").is_none());

    run_to_end(&s, &pid).await;
    wait_for("three attempts", || r.got().len() == 3).await;
    let got = r.got();
    assert!(
        got.iter()
            .all(|g| g.signature_ok && g.delivery == got[0].delivery)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = notifications(&s, &pid).await;
        if listed.first().is_some_and(|n| n["status"] == "delivered") {
            break listed;
        }
        assert!(Instant::now() < deadline, "never delivered: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let codes: Vec<&Value> = listed[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(200)]);
    s.stop().await;

    // A new server on the same store: nothing delivered is sent again.
    let store = b.open_again().await;
    let s2 = Srv::start(store, b.dir.path(), true, quick()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(r.got().len(), 3, "a restart re-sends nothing");
    // A person retries the delivery: sent once more.
    let nid = listed[0]["id"].as_str().unwrap().to_owned();
    let (status, body) = s2
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/notifications/{nid}/retry"),
            &s2.admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "pending");
    wait_for("the retried delivery", || r.got().len() == 4).await;
    // Removing the receiver: further runs send it nothing.
    let rid = list["data"]["receivers"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = s2
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/projects/{pid}/receivers/{rid}"),
            &s2.admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s2
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/projects/{pid}/receivers/{rid}"),
            &s2.admin,
            None,
        )
        .await;
    assert_eq!(status, 404);
    run_to_end(&s2, &pid).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.got().len(), 4);
    s2.stop().await;
    b.drop_schema().await;
}

async fn refused_receivers_store_nothing(db: Db) {
    let b = Backing::new(db).await;
    let s = Srv::start(b.store.clone(), b.dir.path(), false, quick()).await;
    let (pid, _) = project(&s, b.dir.path()).await;
    let path = format!("/api/v1/projects/{pid}/receivers");
    for (body, field) in [
        (
            json!({ "url": "ftp://example.com/x", "events": ["run.completed"] }),
            "url",
        ),
        (
            json!({ "url": "not a url", "events": ["run.completed"] }),
            "url",
        ),
        (
            json!({ "url": "http://169.254.169.254/latest", "events": ["run.completed"] }),
            "url",
        ),
        (
            json!({ "url": "http://10.1.2.3/hook", "events": ["run.completed"] }),
            "url",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/x", "events": ["run.done"] }),
            "events",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/x", "events": [] }),
            "events",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/x", "events": ["run.*"], "secret": "short" }),
            "secret",
        ),
    ] {
        let (status, answer) = s
            .call(reqwest::Method::POST, &path, &s.admin, Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], "VALIDATION_FAILED");
        assert_eq!(
            answer["error"]["details"]["fields"][0]["field"], field,
            "{answer}"
        );
    }
    // A viewer lists but does not add; unknown things are not found.
    let (_, viewer) = s
        .store
        .create_token("viewer", kiln_proto::Role::Viewer, None)
        .await
        .unwrap();
    let (status, _) = s
        .call(
            reqwest::Method::POST,
            &path,
            &viewer,
            Some(json!({ "url": "http://127.0.0.1:9/x", "events": ["run.*"] })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, list) = s.call(reqwest::Method::GET, &path, &viewer, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        list["data"]["receivers"],
        json!([]),
        "nothing stored on refusal"
    );
    let (status, _) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/notifications/{}/retry", uuid::Uuid::now_v7()),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/projects/nope/notifications",
            &s.admin,
            None,
        )
        .await;
    assert_eq!(status, 404);
    s.stop().await;
    b.drop_schema().await;
}

/// Two servers (two notifiers) on one PostgreSQL schema, racing over the same deliveries:
/// each is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notifiers_on_one_postgres_schema_never_double_send() {
    let b = Backing::new(Db::Postgres).await;
    let one = Srv::start(b.store.clone(), b.dir.path(), false, quick()).await;
    let other_store = b.open_again().await;
    let two = Srv::start(other_store, b.dir.path(), false, quick()).await;
    let (pid, _) = project(&one, b.dir.path()).await;
    let r = Receiver::start().await;
    *r.state.delay.lock().unwrap() = Duration::from_millis(20);
    let created = add_receiver(&one, &pid, &r.url, &["run.queued"]).await;
    *r.state.secret.lock().unwrap() = created["secret"].as_str().unwrap().to_owned();
    const RUNS: usize = 30;
    for i in 0..RUNS {
        let run = kiln_store::NewRun {
            id: kiln_core::ids::RunId::new(),
            project: pid.parse().unwrap(),
            workflow: format!("w{i}.yml"),
            workflow_name: "w".to_owned(),
            event: "push".to_owned(),
            git_ref: "refs/heads/main".to_owned(),
            sha: "0".repeat(40),
            inputs: serde_json::Map::new(),
            status: RunStatus::Queued,
            jobs: Vec::new(),
            at: jiff::Timestamp::now(),
            driver: None,
            context: Default::default(),
        };
        // Half through each replica's store handle.
        let store = if i % 2 == 0 { &one.store } else { &two.store };
        store.create_run(run).await.unwrap();
    }
    wait_for("every run.queued", || r.got().len() >= RUNS).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = r.got();
    let mut per: HashMap<&str, usize> = HashMap::new();
    for g in &got {
        assert!(g.signature_ok);
        *per.entry(g.delivery.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), RUNS, "one delivery per event");
    assert!(per.values().all(|&n| n == 1), "never sent twice: {per:?}");
    let listed = notifications(&one, &pid).await;
    assert_eq!(listed.len(), RUNS);
    assert!(
        listed
            .iter()
            .all(|n| n["attempts"].as_array().unwrap().len() == 1)
    );
    one.stop().await;
    two.stop().await;
    b.drop_schema().await;
}
