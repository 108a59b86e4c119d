//! `kiln serve`: opens the store, binds the listener, makes sure an admin token exists, prints
//! `admin token: …` (only when it made one up) and then `listening on http://HOST:PORT`, and
//! serves until SIGINT or SIGTERM, letting requests in flight finish.
//!
//! The listener is bound before the token is created, so that a port already in use never
//! leaves a token behind that nobody saw; with `--listen 127.0.0.1:0` the printed address
//! is the port actually bound. Not here: any HTTP (kiln-server's).

use std::io::Write;
use std::net::ToSocketAddrs;

use kiln_engine::{Engine, EngineConfig, Recovery};
use kiln_proto::exit;
use kiln_server::{AppState, ServerConfig};
use kiln_store::StoreError;
use tokio::signal::unix::{SignalKind, signal};

use crate::Failure;
use crate::args::{ADMIN_TOKEN_ENV, ServeArgs};
use crate::client::check_http_url;
use crate::output::stdout_line;

pub(crate) async fn serve(a: ServeArgs) -> Result<i32, Failure> {
    if let Err(e) = a.listen.to_socket_addrs() {
        return Err(Failure::invalid(format!(
            "--listen `{}`: expected HOST:PORT ({e})",
            a.listen
        )));
    }
    let public_url = match &a.public_url {
        Some(url) => Some(check_http_url("--public-url", url)?),
        None => None,
    };
    let replica_url = match &a.replica_url {
        Some(url) => Some(check_http_url("--replica-url", url)?),
        None => None,
    };
    let egress = a.egress.policy()?;
    let bans = a.bans.config()?;
    let notify = a.notify.config()?;
    let watch_config = a
        .watch
        .config(std::env::var(crate::watch::GITHUB_TOKEN_ENV).ok())?;
    // Checked now, not at the first `/deps` request: a mistyped path should stop the start.
    let package_tree = match &a.tree {
        Some(dir) if dir.is_dir() => Some(std::path::absolute(dir).map_err(|e| {
            Failure::internal(format!("failed to resolve --tree {}: {e}", dir.display()))
        })?),
        Some(dir) => {
            return Err(Failure::invalid(format!(
                "--tree {}: not a folder (expected a package tree of CATEGORY/NAME/kiln-package.toml)",
                dir.display()
            )));
        }
        None => None,
    };
    let preseed = std::env::var(ADMIN_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty());

    let store = a.store.open().await?;
    if !store.has_secret_keys() {
        // A PostgreSQL store with no key: hooks and receivers could be neither made nor
        // verified, so say so now rather than at the first webhook.
        return Err(Failure::invalid(StoreError::NoSecretKey.to_string()));
    }
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .map_err(|e| Failure::internal(format!("failed to listen on {}: {e}", a.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::internal(format!("failed to read the bound address: {e}")))?;
    let admin = match store.ensure_admin_token(preseed.as_deref()).await {
        Ok(admin) => admin,
        Err(e @ StoreError::BadToken { .. }) => {
            return Err(Failure::invalid(format!("{ADMIN_TOKEN_ENV}: {e}")));
        }
        Err(e) => return Err(e.into()),
    };
    // The engine takes back what this data dir's previous server left leased and drives its
    // unfinished runs on before the server says it listens.
    let data_dir = std::path::absolute(&a.store.data_dir).map_err(|e| {
        Failure::internal(format!(
            "failed to resolve the data dir {}: {e}",
            a.store.data_dir.display()
        ))
    })?;
    let slots = a.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let sandbox = crate::build::detect_sandbox(a.sandbox).await?;
    let artifacts = kiln_store::ArtifactStore::open(a.artifacts.as_deref(), &data_dir)
        .map_err(|e| Failure::invalid(format!("--artifacts: {e}")))?;
    let (engine, recovery) = Engine::start(
        store.clone(),
        EngineConfig {
            slots,
            data_dir: data_dir.clone(),
            max_attempts: 3,
            sandbox,
            fetch_egress: crate::build::fetch_egress(&a.egress)?,
            lease_ttl: std::time::Duration::from_secs(a.lease_ttl),
            artifacts: Some(artifacts),
        },
    )
    .await?;
    // Leases anyone let expire (a killed `kiln run`, a vanished worker) are taken back and
    // their runs driven on here.
    engine.adopt_expired_every(
        std::time::Duration::from_secs(15).min(std::time::Duration::from_secs(a.lease_ttl) / 2),
    );
    if recovery != Recovery::default() {
        tracing::info!(
            expired_leases = recovery.expired_leases,
            resumed = recovery.resumed.len(),
            failed = recovery.failed.len(),
            "recovered the previous server's work"
        );
    }
    let shutdown = shutdown_signal()?;
    let listening = format!("http://{addr}");
    if let Some(token) = admin {
        stdout_line(&format!("admin token: {token}"));
    }
    stdout_line(&format!("listening on {listening}"));
    let _ = std::io::stdout().flush();

    let mut config = ServerConfig::new(public_url.unwrap_or_else(|| listening.clone()));
    config.egress = egress;
    config.replica_url = replica_url;
    config.data_dir = data_dir;
    config.worker_slots = Some(slots);
    config.bans = bans;
    config.notify = notify;
    config.hook_payload_retention = a.bans.payload_retention();
    config.metrics_open = !a.metrics_need_token;
    config.package_tree = package_tree;
    if let Some(url) = &a.store.database {
        config = config.with_database(url);
    }
    tracing::info!(listen = %listening, public_url = %config.public_url, backend = store.backend_name(), "serving");
    // Watches: every project's `on.watch` entries are read now and every
    // `--watch-sync-interval`; due ones are polled (`--watch-concurrency` at a time, through
    // the egress policy) and new versions start runs.
    let watch_config = kiln_engine::watch::WatchConfig {
        egress: config.egress.clone(),
        ..watch_config
    };
    let watcher = kiln_engine::watch::Watcher::new(
        engine.clone(),
        store.clone(),
        config.data_dir.clone(),
        watch_config,
    )
    .map_err(|e| Failure::internal(format!("failed to start the watch poller: {e}")))?;
    watcher.clone().spawn(a.watch.sync_interval());
    let state = AppState::new(store, config)
        .with_engine(engine.clone())
        .with_watcher(watcher);
    // Schedules: every project's `on.schedule` entries are read now and every minute; each
    // due fire is claimed (once across replicas) and started — a git project's mirror
    // fetched first.
    let fetching = state.clone();
    kiln_engine::schedule::Scheduler::new(
        engine.clone(),
        state.store().clone(),
        state.config().data_dir.clone(),
    )
    .with_before_run(std::sync::Arc::new(move |project| {
        let state = fetching.clone();
        Box::pin(async move { kiln_server::refresh_before_run(&state, project).await })
    }))
    .spawn(std::time::Duration::from_secs(60));
    let served = kiln_server::serve(listener, state, shutdown).await;
    // Intake has stopped: let running jobs finish within the grace period, then cancel and
    // record them.
    engine
        .shutdown(std::time::Duration::from_secs(a.shutdown_grace))
        .await?;
    served.map_err(|e| Failure::internal(format!("failed to serve on {listening}: {e}")))?;
    tracing::info!("stopped");
    Ok(exit::OK)
}

/// A future that completes at the first SIGINT or SIGTERM (a stop, not a failure: the exit
/// code stays 0). The handlers are installed here, before the address is printed, so that a
/// signal sent as soon as the server says it listens is never the default (fatal) one.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Failure> {
    let watch = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Failure::internal(format!("failed to watch for {name}: {e}")))
    };
    let mut interrupt = watch(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = watch(SignalKind::terminate(), "SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down: finishing requests in flight");
    })
}
