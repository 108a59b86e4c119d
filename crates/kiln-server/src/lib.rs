//! kiln's HTTP API (DESIGN.md "HTTP API (v1)" and "Security model"): the router, the
//! envelope every answer travels in, API-token auth and roles, and the generated OpenAPI
//! document with its Swagger UI.
//!
//! Layout: [`router`] builds the whole app as a plain function and [`serve`] runs it on a
//! listener the caller bound, until the caller's shutdown future completes. `state` is what
//! handlers share, `error` the one [`ApiError`](error::ApiError) every failure becomes,
//! `envelope` the outermost layer that gives each answer its `meta` and request id, `extract`
//! the JSON extractor whose rejections are envelopes too, `auth` who may call what, `routes`
//! the handlers, `openapi` the document. (tower-http's request-id layer is not used: it
//! passes a caller's id on as it is, and this one is sanitised first.) `fetch` runs the
//! background fetches of git projects' mirrors, `hooks` processes webhook deliveries after
//! `POST /hooks/{hook_id}` has recorded them.
//!
//! Not here: SQL (the store's), deciding what runs (the engine's), anything the CLI prints.

mod auth;
mod bans;
mod bus;
mod envelope;
mod error;
mod extract;
mod fetch;
mod hooks;
mod lookups;
mod metrics;
mod notify;
mod openapi;
mod routes;
mod state;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

pub use bans::BanConfig;
pub use bus::LiveConfig;
pub use fetch::refresh_before_run;
pub use notify::NotifyConfig;
pub use state::{AppState, ServerConfig};

/// The whole HTTP app: API routes behind auth, the open probes, documents and `/metrics`, and
/// the layers every request passes, outermost first: metrics, envelope and request id, trace
/// span, panic catcher, timeout, auth.
pub fn router(state: AppState) -> Router {
    let config = state.config();
    let api = routes::api()
        // One limit, enforced on the body stream itself (and at once from Content-Length);
        // axum's own default would be a second, hidden one.
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(DefaultBodyLimit::disable());
    // Artifacts a worker uploads: as large as builds make them.
    let blobs = routes::blobs()
        .layer(RequestBodyLimitLayer::new(config.artifact_body_limit))
        .layer(DefaultBodyLimit::disable());
    // Webhooks carry big payloads (a push of many commits): their own, larger limit.
    let hooks = routes::hooks()
        .layer(RequestBodyLimitLayer::new(config.hook_body_limit))
        .layer(DefaultBodyLimit::disable())
        // Outermost: a banned sender is answered before its body is read.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bans::guard,
        ));
    // Metrics outermost: every answer is counted with its final status.
    metrics::handle();
    let layers = ServiceBuilder::new()
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn(envelope::envelope))
        .layer(TraceLayer::new_for_http().make_span_with(envelope::span))
        .layer(CatchPanicLayer::custom(error::panicked))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .merge(routes::probes())
        .route("/metrics", axum::routing::get(metrics::scrape))
        .merge(api)
        .merge(blobs)
        .merge(hooks)
        .merge(openapi::docs(&state))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(layers)
        .with_state(state)
}

/// `504 TIMEOUT` for a request not answered within the configured time — but for a worker's
/// artifact upload (`PUT …/blobs/{sha256}`), which takes as long as its bytes take to arrive.
/// (Only the answer's start is timed: a download streams as long as it needs.)
async fn deadline(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let upload = req.method() == axum::http::Method::PUT && req.uri().path().contains("/blobs/");
    if upload {
        return next.run(req).await;
    }
    match tokio::time::timeout(state.config().request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => StatusCode::GATEWAY_TIMEOUT.into_response(),
    }
}

/// Serves [`router`] on `listener` until `shutdown` completes, then lets requests in flight
/// finish (graceful shutdown). Handlers can see the client's address (`ConnectInfo`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Fetches a previous server left unfinished run again (see `fetch.rs`).
    fetch::resume(&state);
    // The embedded store answers webhook deliveries from a journal rather than waiting for
    // SQLite's writer; what a previous server journaled is stored first (see kiln-store's
    // `intake.rs`). Only deliveries this server processes itself are journaled.
    if state.engine().is_some() {
        let dir = state.config().data_dir.join("intake");
        state
            .store()
            .open_intake_journal(&dir)
            .await
            .map_err(std::io::Error::other)?;
    }
    // Webhook deliveries recorded and never processed (see `hooks.rs`).
    hooks::resume(&state);
    // Uploads a previous server was receiving when it stopped (artifacts, package outputs
    // and logs): nothing refers to them. The data dir is this server's alone.
    clear_uploads(&state.config().data_dir.join("uploads")).await;
    // Live streams never end by themselves: they end when shutdown begins, or the graceful
    // shutdown would wait for them forever.
    let closing = state.bus().closing().clone();
    // Outbound notifications from the outbox (see `notify.rs`); ends with the live streams.
    let notifier = notify::spawn(&state, closing.clone());
    // This server in the replicas table, for workers to find (renewed until shutdown).
    let announcer = announce_replica(&state, closing.clone());
    // Workers waiting on this replica hear of jobs other replicas offer (see below).
    let waker = wake_claims_on_offers(&state, closing.clone());
    let shutdown = async move {
        shutdown.await;
        closing.cancel();
    };
    let upkeep = metrics::spawn_upkeep();
    let served = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    upkeep.abort();
    if let Some(notifier) = notifier {
        notifier.abort();
    }
    if let Some(waker) = waker {
        waker.abort();
    }
    if let Some(announcer) = announcer {
        let _ = announcer.await;
    }
    served
}

/// Removes what is left in the uploads folder `dir` (a missing one is fine).
async fn clear_uploads(dir: &std::path::Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        let removed = match entry.file_type().await {
            Ok(t) if t.is_dir() => tokio::fs::remove_dir_all(&path).await,
            _ => tokio::fs::remove_file(&path).await,
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an unfinished upload");
        }
    }
}

/// On PostgreSQL, wakes the claims of remote workers waiting on this replica whenever a job
/// is queued anywhere (the event stream, which other replicas' `NOTIFY` wakes): a job another
/// replica offers is claimable here at once, not at the claim's next look. `None` on SQLite
/// (one server: its dispatcher wakes them itself) or without an engine.
fn wake_claims_on_offers(
    state: &AppState,
    closing: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let engine = state.engine()?.clone();
    if !state.store().is_shared() {
        return None;
    }
    let (bus, store) = (state.bus().clone(), state.store().clone());
    Some(tokio::spawn(async move {
        while !closing.is_cancelled() {
            let mut rx = match bus.subscribe(&store).await {
                Ok((rx, _)) => rx,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the event stream for offered jobs");
                    tokio::select! {
                        () = closing.cancelled() => break,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let live = tokio::select! {
                    () = closing.cancelled() => break,
                    live = rx.recv() => live,
                };
                match live {
                    Ok(live) if live.event.kind == "job.queued" => engine.wake_claims(),
                    Ok(_) => {}
                    // Behind: something may have been offered among what was missed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        engine.wake_claims();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }))
}

/// Notes this server in the replicas table (its engine's owner id, its public URL) every few
/// seconds, and removes it when `closing` ends the loop. `None` without an engine (a server
/// that runs nothing has nothing for workers).
fn announce_replica(
    state: &AppState,
    closing: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let engine = state.engine()?.clone();
    let store = state.store().clone();
    let url = state.config().worker_url().to_owned();
    Some(tokio::spawn(async move {
        let owner = engine.owner().to_owned();
        let every = (engine.lease_ttl() / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
        loop {
            if let Err(e) = store.replica_seen(&owner, &url).await {
                tracing::warn!(error = %e, "cannot note this replica in the store");
            }
            tokio::select! {
                () = closing.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        if let Err(e) = store.replica_gone(&owner).await {
            tracing::warn!(error = %e, "cannot remove this replica from the store");
        }
    }))
}
