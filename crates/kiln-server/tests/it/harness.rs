//! Starts the real server for one test, on SQLite (a temporary data folder) or PostgreSQL (a
//! fresh schema), and talks to it over HTTP with reqwest.

use std::net::SocketAddr;

use kiln_core::ids::RunId;
use kiln_engine::egress::EgressPolicy;
use kiln_server::{AppState, LiveConfig, ServerConfig};
use kiln_store::Store;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A change to a test server's settings.
type Tweak = Box<dyn FnOnce(&mut ServerConfig) + Send>;

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A base PostgreSQL URL that accepts connections: `KILN_TEST_DATABASE_URL`, else the
/// shared test database as `postgres` or as `root`.
async fn pg_base_url() -> String {
    if let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") {
        return url;
    }
    for url in [DEFAULT_PG, "postgres://root@127.0.0.1:5432/test"] {
        if PgConnection::connect(url).await.is_ok() {
            return url.to_owned();
        }
    }
    panic!("PostgreSQL is not reachable at {DEFAULT_PG} (as `postgres` or `root`)");
}

/// Drops a test's schema. A background task of the stopped server (a webhook being
/// processed, a notifier's claim) may still hold locks in it, and PostgreSQL may then pick the
/// drop as a deadlock's victim: it is tried again.
pub(crate) async fn drop_schema(base: &str, schema: &str) {
    for attempt in 1..=10 {
        let mut conn = PgConnection::connect(base).await.unwrap();
        let done = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        match done {
            Ok(_) => return,
            Err(e) if attempt < 10 => {
                tracing::warn!(%schema, error = %e, "dropping the test schema again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot drop the test schema {schema}: {e}"),
        }
    }
}

async fn pg_exec(base: &str, sql: String) {
    let mut conn = PgConnection::connect(base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// A store in a fresh schema of the test database, with the folder for its blobs and the
/// (base URL, schema) to drop at the end.
async fn pg_store() -> (Store, tempfile::TempDir, (String, String)) {
    let base = pg_base_url().await;
    let schema = format!("srv_{}", uuid::Uuid::new_v4().simple());
    pg_exec(&base, format!("CREATE SCHEMA {schema}")).await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}schema={schema}");
    let dir = tempfile::tempdir().unwrap();
    kiln_store::SecretKeys::generate()
        .unwrap()
        .write_file(&dir.path().join(kiln_store::secrets::KEY_FILE_NAME))
        .unwrap();
    let store = Store::open_postgres(&url, dir.path()).await.unwrap();
    (store, dir, (base, schema))
}

/// One running server and what a test needs to talk to it.
/// A fresh store on PostgreSQL (its schema) or SQLite, in a temporary data dir.
async fn any_store(postgres: bool) -> (Store, tempfile::TempDir, Option<(String, String)>) {
    if postgres {
        let (store, dir, pg) = pg_store().await;
        (store, dir, Some(pg))
    } else {
        let dir = tempfile::tempdir().unwrap();
        (Store::open_sqlite(dir.path()).await.unwrap(), dir, None)
    }
}

pub(crate) struct Server {
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    pub(crate) addr: SocketAddr,
    /// The admin token the empty store was given.
    pub(crate) admin: String,
    pub(crate) store: Store,
    pub(crate) backend: &'static str,
    /// The engine, when the server has one (tests that drive the schedule runner use it).
    pub(crate) engine: Option<kiln_engine::Engine>,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// (base URL, schema) of a PostgreSQL test, dropped by [`Server::stop`].
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// What the server answered.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) text: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    /// `data` of a success envelope (checked to be one).
    pub(crate) fn data(&self) -> Value {
        let v = self.json();
        assert_eq!(v["status"], "success", "{} {v:#}", self.status);
        v["data"].clone()
    }

    /// `error` of an error envelope (checked to be one, with its `meta`).
    pub(crate) fn error(&self) -> Value {
        let v = self.json();
        assert_eq!(v["status"], "error", "{} {v:#}", self.status);
        assert!(v["meta"]["request_id"].is_string(), "{v:#}");
        assert!(v["meta"]["timestamp"].is_string(), "{v:#}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v:#}"
        );
        v["error"].clone()
    }

    /// Asserts the status and the error code; returns the error.
    #[track_caller]
    pub(crate) fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        let e = self.error();
        assert_eq!(e["code"], code, "{e:#}");
        e
    }

    /// Asserts `422 VALIDATION_FAILED` naming `field` (in `details` and the message).
    #[track_caller]
    pub(crate) fn expect_invalid(&self, field: &str) -> Value {
        let e = self.expect_error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["fields"][0]["field"], field, "{e:#}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("`{field}`")), "{e:#}");
        e
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Server {
    pub(crate) async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        Self::start(store, dir, None).await
    }

    pub(crate) async fn postgres() -> Self {
        let (store, dir, pg) = pg_store().await;
        Self::start(store, dir, Some(pg)).await
    }

    /// A server on SQLite whose engine runs jobs (two slots, its data dir the test's).
    pub(crate) async fn sqlite_with_engine() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        Self::start_with(store, dir, None, true).await
    }

    /// A server on PostgreSQL whose engine runs jobs.
    pub(crate) async fn postgres_with_engine() -> Self {
        let (store, dir, pg) = pg_store().await;
        Self::start_with(store, dir, Some(pg), true).await
    }

    /// A server on SQLite whose outbound connections follow `egress`, with an engine or not.
    pub(crate) async fn sqlite_with(engine: bool, egress: EgressPolicy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        Self::start_configured(store, dir, None, engine, egress).await
    }

    /// A server on SQLite with an engine, started on the data folder `dir` as an earlier
    /// process left it (the store in it is opened anew; it must hold no admin token yet).
    pub(crate) async fn sqlite_on(dir: tempfile::TempDir, egress: EgressPolicy) -> Self {
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        Self::start_configured(store, dir, None, true, egress).await
    }

    /// A server on PostgreSQL whose outbound connections follow `egress`, with an engine or
    /// not.
    pub(crate) async fn postgres_with(engine: bool, egress: EgressPolicy) -> Self {
        let (store, dir, pg) = pg_store().await;
        Self::start_configured(store, dir, Some(pg), engine, egress).await
    }

    async fn start(store: Store, dir: tempfile::TempDir, pg: Option<(String, String)>) -> Self {
        Self::start_with(store, dir, pg, false).await
    }

    async fn start_with(
        store: Store,
        dir: tempfile::TempDir,
        pg: Option<(String, String)>,
        engine: bool,
    ) -> Self {
        Self::start_configured(store, dir, pg, engine, EgressPolicy::default()).await
    }

    /// A server with these live settings (event bus, SSE and WebSocket clients), with an
    /// engine or not, on PostgreSQL or SQLite.
    pub(crate) async fn with_live(postgres: bool, engine: bool, live: LiveConfig) -> Self {
        Self::with_config(postgres, engine, move |c| c.live = live).await
    }

    /// A server whose settings `tweak` changes, with an engine or not, on PostgreSQL or
    /// SQLite.
    pub(crate) async fn with_config(
        postgres: bool,
        engine: bool,
        tweak: impl FnOnce(&mut ServerConfig) + Send + 'static,
    ) -> Self {
        let (store, dir, pg) = any_store(postgres).await;
        let tweak: Tweak = Box::new(tweak);
        Self::start_full(
            store,
            dir,
            pg,
            engine,
            EgressPolicy::default(),
            Some(tweak),
            None,
            None,
        )
        .await
    }

    /// A server with an engine whose jobs keep artifacts in `artifacts` (`None`: the data
    /// dir's folder).
    pub(crate) async fn with_artifacts(
        postgres: bool,
        artifacts: Option<kiln_store::ArtifactStore>,
    ) -> Self {
        let (store, dir, pg) = any_store(postgres).await;
        let policy = EgressPolicy::default();
        Self::start_full(store, dir, pg, true, policy, None, None, artifacts).await
    }

    /// [`Server::for_remote_workers`] with `tweak` applied to its configuration.
    pub(crate) async fn for_remote_workers_with(
        postgres: bool,
        lease_ttl: std::time::Duration,
        tweak: impl FnOnce(&mut ServerConfig) + Send + 'static,
    ) -> Self {
        let (store, dir, pg) = any_store(postgres).await;
        let policy = EgressPolicy::default();
        let tweak: Tweak = Box::new(tweak);
        Self::start_full(
            store,
            dir,
            pg,
            true,
            policy,
            Some(tweak),
            Some((0, lease_ttl)),
            None,
        )
        .await
    }

    /// A server with an engine that runs no job itself (`--workers 0`): remote workers run
    /// them, under leases of `lease_ttl`.
    pub(crate) async fn for_remote_workers(postgres: bool, lease_ttl: std::time::Duration) -> Self {
        Self::for_remote_workers_with(postgres, lease_ttl, |_| {}).await
    }

    async fn start_configured(
        store: Store,
        dir: tempfile::TempDir,
        pg: Option<(String, String)>,
        engine: bool,
        egress: EgressPolicy,
    ) -> Self {
        Self::start_full(store, dir, pg, engine, egress, None, None, None).await
    }

    /// The server's data dir is the test's temporary folder.
    #[expect(
        clippy::too_many_arguments,
        reason = "every way a test server differs, given once by the constructors above"
    )]
    async fn start_full(
        store: Store,
        dir: tempfile::TempDir,
        pg: Option<(String, String)>,
        engine: bool,
        egress: EgressPolicy,
        tweak: Option<Tweak>,
        pool: Option<(usize, std::time::Duration)>,
        artifacts: Option<kiln_store::ArtifactStore>,
    ) -> Self {
        // reqwest is built with rustls and no provider of its own: use ring, as the CLI does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let admin = store
            .ensure_admin_token(None)
            .await
            .unwrap()
            .expect("an empty store gets an admin token");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let mut config = ServerConfig::new(&base);
        config.data_dir = dir.path().to_owned();
        config.egress = egress;
        if let Some(tweak) = tweak {
            tweak(&mut config);
        }
        let mut state = AppState::new(store.clone(), config);
        let mut kept_engine = None;
        if engine {
            let (slots, lease_ttl) = pool.unwrap_or((2, kiln_engine::dispatch::LEASE_TTL));
            let config = kiln_engine::EngineConfig {
                slots,
                data_dir: dir.path().to_owned(),
                max_attempts: 3,
                sandbox: sandbox(),
                fetch_egress: None,
                lease_ttl,
                artifacts,
            };
            let (engine, _) = kiln_engine::Engine::start(store.clone(), config)
                .await
                .unwrap();
            if let Some((_, ttl)) = pool {
                engine.adopt_expired_every(ttl / 2);
            }
            kept_engine = Some(engine.clone());
            state = state.with_engine(engine);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(kiln_server::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            addr,
            admin,
            backend: store.backend_name(),
            engine: kept_engine,
            store,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
            pg,
            _dir: dir,
        }
    }

    /// The server's data dir.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub(crate) async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("the server answers");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        Reply {
            status,
            headers,
            text,
        }
    }

    /// `GET path` with `token` (none when `None`).
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.request(reqwest::Method::GET, path);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// `POST path` with a JSON body, as `token`.
    /// `POST /api/v1/worker/register` of a worker `name` with `labels` and `slots`, under
    /// `token`: the registration as answered (201 asserted).
    pub(crate) async fn register_worker(
        &self,
        token: &str,
        name: &str,
        labels: &[&str],
        slots: u32,
    ) -> Value {
        let r = self
            .post(
                "/api/v1/worker/register",
                token,
                &json!({"name": name, "labels": labels, "slots": slots, "protocol": kiln_proto::workers::PROTOCOL, "version": "test"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.data()
    }

    /// `POST /api/v1/projects/{project}/runs` of `workflow`, as the admin: its id when
    /// created (201), or a failed assertion showing the answer.
    pub(crate) async fn start_workflow(&self, project: &str, workflow: &str) -> RunId {
        let r = self
            .post(
                &format!("/api/v1/projects/{project}/runs"),
                &self.admin,
                &json!({ "workflow": workflow }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.data()["runs"][0]["id"].as_str().unwrap().parse().unwrap()
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(
            self.request(reqwest::Method::POST, path)
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    /// `POST path` with raw bytes under `Content-Type: application/json`, as the admin.
    pub(crate) async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.send(
            self.request(reqwest::Method::POST, path)
                .bearer_auth(&self.admin)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// Sends `request` (a whole HTTP/1.1 request) on a connection of its own and reads the
    /// answer. The server may answer (`413`) and close before it has read a body over its
    /// limit, which is its right: a failed write is no error here, where an HTTP client may
    /// report its unfinished upload's broken pipe instead of the answer.
    pub(crate) async fn send_over_socket(&self, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let _ = conn.write_all(request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            conn.read_to_end(&mut answer),
        )
        .await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// `POST path` with `body` (JSON, with a `Content-Length`) and `headers` over a socket of
    /// its own (see [`Server::send_over_socket`]); the answer as text.
    pub(crate) async fn post_over_socket(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> String {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.send_over_socket(&bytes).await
    }

    /// Creates a token through the API as the admin; returns its plaintext.
    pub(crate) async fn token(&self, role: &str) -> String {
        let r = self
            .post(
                "/api/v1/tokens",
                &self.admin,
                &serde_json::json!({ "name": format!("{role} test"), "role": role }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.data()["token"].as_str().unwrap().to_owned()
    }

    /// Shuts the server down gracefully (it must end cleanly) and drops the test's schema.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("the server stops within 10 s of its shutdown signal");
            ended.unwrap().expect("serve ends without an error");
        }
        if let Some((base, schema)) = self.pg.take() {
            drop_schema(&base, &schema).await;
        }
    }
}

/// Generates `mod name { sqlite, postgres }` tests running `async fn name(&Server)`.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let s = $crate::harness::Server::sqlite().await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let s = $crate::harness::Server::postgres().await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}
pub(crate) use both_backends;

/// What confines the servers' `packages:` jobs: bubblewrap where it runs here (`.ci/run`
/// installs it), else nothing; probed once.
fn sandbox() -> kiln_engine::packages::Sandbox {
    use kiln_engine::packages::{Sandbox, SandboxMode};
    static SANDBOX: std::sync::OnceLock<Sandbox> = std::sync::OnceLock::new();
    SANDBOX
        .get_or_init(|| Sandbox::detect(SandboxMode::Auto).unwrap_or_else(|_| Sandbox::off()))
        .clone()
}
