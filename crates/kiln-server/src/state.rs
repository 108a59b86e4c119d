//! What every handler shares: the store, the server's settings, when it started.
//!
//! [`AppState::new`] is the one place the state is put together, so that whatever the server
//! grows (the engine's handle, the event bus, metrics) is wired there and nowhere else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kiln_engine::Engine;
use kiln_engine::egress::EgressPolicy;
use kiln_store::Store;

use crate::bus::{Bus, LiveConfig};
use crate::fetch::Fetches;
use crate::notify::NotifyConfig;

/// The server's settings, resolved (flags and configuration already merged).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// How clients reach this server (`http://host:port`, no trailing slash); listed in the
    /// OpenAPI document's `servers`.
    pub public_url: String,
    /// How workers reach this replica when several share a database (it drives their jobs'
    /// runs): listed to workers and named in hand-offs. `None`: `public_url`. Set it when
    /// `public_url` is a load balancer's address in front of every replica.
    pub replica_url: Option<String>,
    /// The largest request body the API routes read, in bytes.
    pub body_limit: usize,
    /// The largest artifact a remote worker may upload, in bytes (16 GiB by default).
    pub artifact_body_limit: usize,
    /// The largest webhook body `POST /hooks/{hook_id}` reads, in bytes (25 MB by default:
    /// GitHub caps its payloads there).
    pub hook_body_limit: usize,
    /// How long a processed webhook delivery keeps its body (`None`: for good); the row
    /// stays either way. 30 days by default.
    pub hook_payload_retention: Option<Duration>,
    /// When webhook senders are banned (see `bans.rs`).
    pub bans: crate::bans::BanConfig,
    /// How long one request may take before the server answers `504 TIMEOUT`.
    pub request_timeout: Duration,
    /// What the server's own outbound connections (git fetches of projects) may reach; also
    /// whether projects may be folders or `file://` URLs on the server's disk.
    pub egress: EgressPolicy,
    /// The data dir: git projects are mirrored under `repos/<project id>.git` in it.
    pub data_dir: PathBuf,
    /// Whether `/metrics` answers without a token (DESIGN.md "Security model": open unless
    /// configured otherwise).
    pub metrics_open: bool,
    /// The `--database` URL, for `GET /api/v1/config` only; set it with
    /// [`ServerConfig::with_database`], which keeps it redacted. `None`: the embedded SQLite.
    pub database: Option<String>,
    /// The engine's local worker slots, for `GET /api/v1/config`.
    pub worker_slots: Option<usize>,
    /// The event bus and its live clients (SSE, WebSocket).
    pub live: LiveConfig,
    /// The notifier: outbound notifications to the receivers projects name.
    pub notify: NotifyConfig,
    /// The package tree `GET /api/v1/packages/{category}/{name}/deps` reads (`kiln serve
    /// --tree DIR`); `None`: that route answers `409 PACKAGE_TREE_NOT_CONFIGURED`. Package
    /// history needs no tree: it is in the store.
    pub package_tree: Option<PathBuf>,
}

impl ServerConfig {
    /// How workers reach this replica: [`ServerConfig::replica_url`] or the public URL.
    pub fn worker_url(&self) -> &str {
        self.replica_url.as_deref().unwrap_or(&self.public_url)
    }

    /// The defaults: a 2 MB body limit, a 30 s request timeout, the default egress policy
    /// (public hosts only, no local paths) and `kiln-data` as the data dir.
    pub fn new(public_url: impl Into<String>) -> Self {
        Self {
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            replica_url: None,
            body_limit: 2 * 1024 * 1024,
            hook_body_limit: 25 * 1024 * 1024,
            artifact_body_limit: 16 * 1024 * 1024 * 1024,
            hook_payload_retention: Some(Duration::from_secs(30 * 86_400)),
            bans: crate::bans::BanConfig::default(),
            request_timeout: Duration::from_secs(30),
            egress: EgressPolicy::default(),
            data_dir: PathBuf::from("kiln-data"),
            metrics_open: true,
            database: None,
            worker_slots: None,
            live: LiveConfig::default(),
            notify: NotifyConfig::default(),
            package_tree: None,
        }
    }
}

impl ServerConfig {
    /// The same settings with the database URL `url`, kept with its password as `***`: the
    /// server shows it and never connects with it.
    pub fn with_database(mut self, url: &str) -> Self {
        self.database = Some(kiln_engine::egress::redact_url(url));
        self
    }
}

/// The handlers' shared state; cheap to clone.
/// An [`AppState`] that does not keep it alive.
pub(crate) struct WeakState(std::sync::Weak<Inner>);

impl WeakState {
    pub(crate) fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(|inner| AppState { inner })
    }
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// The engine that runs jobs; `None` for a server that only serves the store (tests).
    engine: Option<Engine>,
    /// The watch poller (`POST /watches/{id}/check` polls through it); `None`: no watches.
    watcher: std::sync::OnceLock<kiln_engine::watch::Watcher>,
    config: ServerConfig,
    started_at: Timestamp,
    /// The git fetches running in the background.
    fetches: Arc<Fetches>,
    /// What live clients read: the outbox, read once for all of them.
    bus: Arc<Bus>,
    /// Failed webhook verifications counted towards bans.
    bans: Arc<crate::bans::Failures>,
    /// Webhook deliveries waiting to be processed.
    hooks: crate::hooks::Queue,
    /// Hook targets and bans, kept for a second (see `lookups.rs`).
    lookups: Arc<crate::lookups::Lookups>,
    /// The package tree `/deps` answers from, kept between requests.
    package_trees: Arc<crate::routes::packages::TreeCache>,
}

impl AppState {
    pub fn new(store: Store, config: ServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                engine: None,
                watcher: std::sync::OnceLock::new(),
                started_at: Timestamp::now(),
                fetches: Arc::default(),
                bus: Arc::new(Bus::new(config.live.clone())),
                bans: Arc::default(),
                hooks: crate::hooks::Queue::default(),
                lookups: Arc::default(),
                package_trees: Arc::default(),
                config,
            }),
        }
    }

    /// The same state with `engine` driving runs.
    pub fn with_engine(self, engine: Engine) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            store: shared.store.clone(),
            engine: None,
            watcher: shared.watcher.clone(),
            config: shared.config.clone(),
            started_at: shared.started_at,
            fetches: shared.fetches.clone(),
            bus: shared.bus.clone(),
            bans: shared.bans.clone(),
            // A queue of its own: one started for the state without an engine has nobody
            // to process it.
            hooks: crate::hooks::Queue::default(),
            lookups: shared.lookups.clone(),
            package_trees: shared.package_trees.clone(),
        });
        Self {
            inner: Arc::new(Inner {
                engine: Some(engine),
                ..inner
            }),
        }
    }

    /// The same state with `watcher` polling watches (the first one set stays).
    pub fn with_watcher(self, watcher: kiln_engine::watch::Watcher) -> Self {
        let _ = self.inner.watcher.set(watcher);
        self
    }

    pub fn watcher(&self) -> Option<&kiln_engine::watch::Watcher> {
        self.inner.watcher.get()
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.inner.engine.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn started_at(&self) -> Timestamp {
        self.inner.started_at
    }

    pub(crate) fn hook_queue(&self) -> &crate::hooks::Queue {
        &self.inner.hooks
    }

    /// A handle that does not keep the state alive (for background tasks that should end
    /// with the server).
    pub(crate) fn downgrade(&self) -> WeakState {
        WeakState(Arc::downgrade(&self.inner))
    }

    pub(crate) fn lookups(&self) -> &crate::lookups::Lookups {
        &self.inner.lookups
    }

    pub(crate) fn bans(&self) -> &crate::bans::Failures {
        &self.inner.bans
    }

    pub(crate) fn bus(&self) -> &Arc<Bus> {
        &self.inner.bus
    }

    pub(crate) fn package_trees(&self) -> &Arc<crate::routes::packages::TreeCache> {
        &self.inner.package_trees
    }

    pub(crate) fn fetches(&self) -> &Fetches {
        &self.inner.fetches
    }
}
