//! Live routes: `GET /api/v1/events` (SSE), `GET /api/v1/ws` (WebSocket) and
//! `GET /api/v1/logs/{job}/stream` (SSE). All three read the event bus (`bus.rs`); none
//! holds the engine up: a client that cannot keep up is dropped with `CLIENT_TOO_SLOW`.
//!
//! An SSE client's frames go through a bounded channel filled by its own task, so a client
//! whose connection stops draining is found out by its task (the channel is full) rather
//! than by nobody. The stream's last frame says why it ended (`event: error` with a code).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kiln_core::ids::{JobId, ProjectId, RunId};
use kiln_store::Store;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::auth::Caller;
use crate::bus::{self, Feed, FeedEnd, Filter, Live};
use crate::error::ApiError;
use crate::state::AppState;

fn bad_param(name: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("query parameter `{name}`: {message}"))
        .with_details(json!({ "parameter": name }))
}

/// `Last-Event-ID` (what EventSource sends on reconnect), else `?after=`.
fn last_event_id(
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Option<i64>, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let text = v.to_str().unwrap_or_default().trim();
        if text.is_empty() {
            return Ok(None);
        }
        return text.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "header `Last-Event-ID`: `{text}` is not an event id this server gave"
            ))
            .with_details(json!({ "header": "Last-Event-ID" }))
        });
    }
    q.get("after")
        .map(|a| {
            a.parse::<i64>()
                .map_err(|_| bad_param("after", format!("`{a}` is not an event id")))
        })
        .transpose()
}

/// A project given by id or name; a scoped token sees its own project only.
async fn resolve_project(
    store: &Store,
    given: Option<&str>,
    caller: Option<&Caller>,
) -> Result<Option<ProjectId>, ApiError> {
    let scope = caller.and_then(|c| c.0.project);
    let Some(given) = given else {
        return Ok(scope);
    };
    let found = match given.parse::<ProjectId>() {
        Ok(id) => store.get_project(id).await?,
        Err(_) => store.find_project(given).await?,
    };
    let project = found.ok_or_else(|| {
        ApiError::not_found("PROJECT_NOT_FOUND", format!("no project `{given}`"))
            .with_details(json!({ "parameter": "project" }))
    })?;
    if scope.is_some_and(|s| s != project.id) {
        return Err(ApiError::forbidden(format!(
            "this token is limited to another project than `{given}`"
        )));
    }
    Ok(Some(project.id))
}

fn parse_types(raw: Option<&String>) -> Result<Vec<String>, ApiError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let types: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = types.iter().find(|t| !bus::valid_pattern(t)) {
        return Err(bad_param(
            "types",
            format!("`{bad}` is not an event type or a pattern such as `run.*`"),
        ));
    }
    Ok(types)
}

/// The answer of an SSE route: its frames come from `rx`, then `last` if set.
fn sse_response(rx: mpsc::Receiver<Bytes>, last: Arc<Mutex<Option<Bytes>>>) -> Response {
    let stream = futures_util::stream::unfold((rx, Some(last)), |(mut rx, last)| async move {
        match rx.recv().await {
            Some(frame) => Some((Ok::<_, Infallible>(coalesce(frame, &mut rx)), (rx, last))),
            None => {
                let words = last?.lock().unwrap_or_else(|p| p.into_inner()).take()?;
                Some((Ok(words), (rx, None)))
            }
        }
    });
    let mut res = Body::from_stream(stream).into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// `first` and the frames already waiting behind it, as one write (up to 64 KiB): a client
/// that is sent many small frames costs one chunk and one syscall per batch, not per frame.
fn coalesce(first: Bytes, rx: &mut mpsc::Receiver<Bytes>) -> Bytes {
    const BATCH: usize = 64 * 1024;
    if first.len() >= BATCH {
        return first;
    }
    let Ok(second) = rx.try_recv() else {
        return first;
    };
    let mut buf = Vec::with_capacity(BATCH.max(first.len() + second.len()));
    buf.extend_from_slice(&first);
    buf.extend_from_slice(&second);
    while buf.len() < BATCH {
        match rx.try_recv() {
            Ok(next) => buf.extend_from_slice(&next),
            Err(_) => break,
        }
    }
    Bytes::from(buf)
}

/// One Server-Sent Events frame, as the OpenAPI document describes a stream's items.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct SseFrame {
    /// The event's id (events) or the log offset after the frame (log streams); absent for
    /// frames that are not stored (`system.load`, `error`, `end`).
    id: Option<String>,
    /// The frame's type: an event type, `log`, `end` or `error`.
    event: String,
    /// One line of JSON.
    data: String,
}

/// The sending half of an SSE client: bounded, and the frame to end with.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    last: Arc<Mutex<Option<Bytes>>>,
}

enum Sent {
    Ok,
    /// The client's buffer is full: it is too slow.
    Full,
    /// The client went away.
    Gone,
}

impl Sink {
    fn new(capacity: usize) -> (Self, mpsc::Receiver<Bytes>, Arc<Mutex<Option<Bytes>>>) {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        let last = Arc::new(Mutex::new(None));
        (
            Self {
                tx,
                last: last.clone(),
            },
            rx,
            last,
        )
    }

    fn send(&self, frame: Bytes) -> Sent {
        match self.tx.try_send(frame) {
            Ok(()) => Sent::Ok,
            Err(TrySendError::Full(_)) => Sent::Full,
            Err(TrySendError::Closed(_)) => Sent::Gone,
        }
    }

    /// Ends the stream with `frame` (after what is already buffered).
    fn finish(self, frame: Bytes) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(frame);
    }
}

/// The stream of events (SSE): `run.*`, `job.*`, `log.line`, `system.load`, … as DESIGN.md
/// lists them. Each frame's `id` is the event's id; reconnect with `Last-Event-ID` (or
/// `?after=`) to get what was missed, each event once. `types` filters by type (comma list,
/// `run.*` patterns), `project` (id or name), `run` and `job` by what the event is about.
/// A client that falls behind gets `event: error` with `CLIENT_TOO_SLOW` and the stream ends.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "live",
    security(("bearer" = [])),
    params(
        ("types" = Option<String>, Query, description = "Event types or patterns, comma separated (`run.*,log.line`)"),
        ("project" = Option<String>, Query, description = "Only events of this project (id or name)"),
        ("run" = Option<String>, Query, description = "Only events of this run"),
        ("job" = Option<String>, Query, description = "Only events of this job"),
        ("after" = Option<i64>, Query, description = "Start after this event id (as `Last-Event-ID` does)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id")
    ),
    responses(
        (status = 200, description = "`text/event-stream` of events: each frame's `data` is the event's JSON (`id`, `at`, `type`, `project`, `run`, `job`, `data`)", content_type = "text/event-stream", body = SseFrame),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`PROJECT_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = caller.map(|Extension(c)| c);
    let filter = Filter {
        types: parse_types(q.get("types"))?,
        project: resolve_project(
            state.store(),
            q.get("project").map(String::as_str),
            caller.as_ref(),
        )
        .await?,
        run: parse_id::<RunId>(&q, "run")?,
        job: parse_id::<JobId>(&q, "job")?,
    };
    let last = last_event_id(&headers, &q)?;
    let bus = state.bus().clone();
    let feed = Feed::open(&bus, state.store(), last).await?;
    let (sink, rx, words) = Sink::new(bus.config().client_buffer);
    let guard = bus.client();
    tokio::spawn(async move {
        let _guard = guard;
        let mut feed = feed;
        drive(bus, &mut feed, sink, move |live| {
            filter.matches(&live.event).then(|| live.sse.clone())
        })
        .await;
    });
    Ok(sse_response(rx, words))
}

fn parse_id<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| bad_param(name, format!("`{v}` is not a {name} id")))
        })
        .transpose()
}

/// The loop every SSE stream shares: events, keep-alives, shutdown, slow clients.
async fn drive(
    bus: Arc<bus::Bus>,
    feed: &mut Feed,
    sink: Sink,
    mut render: impl FnMut(&Live) -> Option<Bytes> + Send,
) {
    let mut keepalive = tokio::time::interval(bus.config().keepalive);
    keepalive.tick().await;
    let too_slow = || bus::sse_error("CLIENT_TOO_SLOW", bus::TOO_SLOW);
    loop {
        let frame = tokio::select! {
            () = bus.closing().cancelled() => {
                sink.finish(bus::sse_error("SERVER_SHUTTING_DOWN", bus::SHUTTING_DOWN));
                return;
            }
            () = sink.tx.closed() => return,
            _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            next = feed.next() => match next {
                Ok(live) => match render(&live) {
                    Some(frame) => frame,
                    None => continue,
                },
                Err(FeedEnd::TooSlow) => {
                    sink.finish(too_slow());
                    return;
                }
                Err(FeedEnd::Closed) => {
                    sink.finish(bus::sse_error("SERVER_SHUTTING_DOWN", bus::SHUTTING_DOWN));
                    return;
                }
                Err(FeedEnd::Store(e)) => {
                    tracing::warn!(error = %e, "could not replay events");
                    sink.finish(bus::sse_error("INTERNAL", "could not read the event outbox"));
                    return;
                }
            },
        };
        match sink.send(frame) {
            Sent::Ok => {}
            Sent::Gone => return,
            Sent::Full => {
                tracing::info!("dropped an event-stream client that fell behind");
                // What is buffered still goes out, then the reason.
                sink.finish(too_slow());
                return;
            }
        }
    }
}

/// A job's log as it is written (SSE): each frame is `event: log` with
/// `{"offset","step"?,"text"}` and `id` = the offset after it (send it back as
/// `Last-Event-ID`, or `?offset=`, to resume); when the job ends, `event: end` with its
/// status and the stream closes. A job that has ended gives its whole log and `end` at once.
#[utoipa::path(
    get,
    path = "/api/v1/logs/{job}/stream",
    tag = "runs",
    security(("bearer" = [])),
    params(
        ("job" = String, Path, description = "The job's id"),
        ("offset" = Option<u64>, Query, description = "Start at this byte of the log"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume at this byte of the log")
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `log` frames (`data`: `{\"offset\",\"step\",\"text\"}`), then one `end` (`{\"status\",\"offset\"}`), or `error` (`{\"code\",\"message\"}`)", content_type = "text/event-stream", body = SseFrame),
        (status = 400, description = "`BAD_REQUEST` naming the parameter", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`FORBIDDEN`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`JOB_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn log_stream(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("JOB_NOT_FOUND", format!("no job `{id}`"));
    let job_id: JobId = id.parse().map_err(|_| not_found())?;
    let mut offset: u64 = match headers.get("last-event-id") {
        Some(v) => v.to_str().unwrap_or_default().trim().parse().map_err(|_| {
            ApiError::bad_request("header `Last-Event-ID`: not a log offset this server gave")
                .with_details(json!({ "header": "Last-Event-ID" }))
        })?,
        None => match q.get("offset") {
            Some(o) => o
                .parse()
                .map_err(|_| bad_param("offset", format!("`{o}` is not a byte offset")))?,
            None => 0,
        },
    };
    let store = state.store().clone();
    // Subscribe before reading: whatever is written after the read arrives as an event.
    let bus = state.bus().clone();
    let mut feed = Feed::open(&bus, &store, None).await?;
    let job = crate::routes::runs_read::visible_job(&state, &caller, job_id)
        .await?
        .ok_or_else(not_found)?;
    let (sink, rx, words) = Sink::new(bus.config().client_buffer);
    let guard = bus.client();
    tokio::spawn(async move {
        let _guard = guard;
        // What is stored already.
        match catch_up(&store, job_id, &mut offset, &sink).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(frame) => return sink.finish(frame),
        }
        if job.status.is_terminal() {
            return sink.finish(end_frame(job.status.as_str(), offset));
        }
        follow_log(&bus, &store, &mut feed, job_id, offset, sink).await;
    });
    Ok(sse_response(rx, words))
}

/// Follows a running job's log from `offset` until the job ends.
async fn follow_log(
    bus: &Arc<bus::Bus>,
    store: &Store,
    feed: &mut Feed,
    job: JobId,
    mut offset: u64,
    sink: Sink,
) {
    let mut keepalive = tokio::time::interval(bus.config().keepalive);
    keepalive.tick().await;
    let too_slow = || bus::sse_error("CLIENT_TOO_SLOW", bus::TOO_SLOW);
    loop {
        let frame = tokio::select! {
            () = bus.closing().cancelled() => {
                return sink.finish(bus::sse_error("SERVER_SHUTTING_DOWN", bus::SHUTTING_DOWN));
            }
            () = sink.tx.closed() => return,
            _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            next = feed.next() => match next {
                Ok(live) if live.event.job == Some(job) => {
                    let data = &live.event.data;
                    match live.event.kind.as_str() {
                        "log.line" => {
                            let at = data["offset"].as_u64().unwrap_or(0);
                            let length = data["length"].as_u64().unwrap_or(0);
                            match data["text"].as_str() {
                                _ if at + length <= offset => continue,
                                // The usual case: the next bytes, carried by the event.
                                Some(text) if at == offset => {
                                    offset += length;
                                    log_frame(at, data["step"].as_u64(), text, offset)
                                }
                                // A gap (or bytes the bus could not read): from the store.
                                _ => match catch_up(store, job, &mut offset, &sink).await {
                                    Ok(true) => continue,
                                    Ok(false) => return,
                                    Err(frame) => return sink.finish(frame),
                                },
                            }
                        }
                        "job.completed" => {
                            // Whatever the events did not bring, then the end.
                            match catch_up(store, job, &mut offset, &sink).await {
                                Ok(true) => {}
                                Ok(false) => return,
                                Err(frame) => return sink.finish(frame),
                            }
                            let status = data["status"].as_str().unwrap_or("unknown");
                            return sink.finish(end_frame(status, offset));
                        }
                        _ => continue,
                    }
                }
                Ok(_) => continue,
                Err(FeedEnd::TooSlow) => return sink.finish(too_slow()),
                Err(FeedEnd::Closed) => {
                    return sink.finish(bus::sse_error("SERVER_SHUTTING_DOWN", bus::SHUTTING_DOWN));
                }
                Err(FeedEnd::Store(e)) => {
                    tracing::warn!(error = %e, "could not follow a log");
                    return sink.finish(bus::sse_error("INTERNAL", "could not read the event outbox"));
                }
            },
        };
        match sink.send(frame) {
            Sent::Ok => {}
            Sent::Gone => return,
            Sent::Full => return sink.finish(too_slow()),
        }
    }
}

fn log_frame(at: u64, step: Option<u64>, text: &str, next: u64) -> Bytes {
    let data = json!({ "offset": at, "step": step, "text": text }).to_string();
    bus::sse_frame(i64::try_from(next).ok(), "log", &data)
}

fn end_frame(status: &str, offset: u64) -> Bytes {
    let data = json!({ "status": status, "offset": offset }).to_string();
    bus::sse_frame(None, "end", &data)
}

/// Sends the stored log from `offset` to its current end. `Ok(false)`: the client left.
async fn catch_up(store: &Store, job: JobId, offset: &mut u64, sink: &Sink) -> Result<bool, Bytes> {
    loop {
        let slice = store
            .read_log(job, *offset, 256 * 1024)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "could not read a log");
                bus::sse_error("INTERNAL", "could not read the log")
            })?;
        if slice.data.is_empty() {
            return Ok(true);
        }
        let at = *offset;
        *offset = slice.next_offset;
        let text = String::from_utf8_lossy(&slice.data);
        match sink.send(log_frame(at, None, &text, *offset)) {
            Sent::Ok => {}
            Sent::Gone => return Ok(false),
            Sent::Full => return Err(bus::sse_error("CLIENT_TOO_SLOW", bus::TOO_SLOW)),
        }
    }
}

/// A message a WebSocket client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMessage {
    /// Receive events matching `types` (patterns) of `projects` (ids or names); both
    /// optional (all). `id` names the subscription, for `unsubscribe`.
    Subscribe {
        id: Option<String>,
        #[serde(default)]
        types: Vec<String>,
        #[serde(default)]
        projects: Vec<String>,
    },
    Unsubscribe {
        id: String,
    },
}

/// One WebSocket subscription.
struct Subscription {
    id: String,
    types: Vec<String>,
    /// Empty: every project the token may see.
    projects: Vec<ProjectId>,
}

impl Subscription {
    fn matches(&self, live: &Live) -> bool {
        let e = &live.event;
        (self.types.is_empty() || self.types.iter().any(|t| bus::type_matches(t, &e.kind)))
            && (self.projects.is_empty()
                || e.project.is_none()
                || e.project.is_some_and(|p| self.projects.contains(&p)))
    }
}

/// Events over a WebSocket. Send `{"action":"subscribe","id":"s1","types":["run.*"],
/// "projects":["web"]}` to receive events (each a text frame: the event's JSON, as in SSE
/// `data`), `{"action":"unsubscribe","id":"s1"}` to stop; each is answered
/// (`{"action":"subscribed","id":…}`, `{"action":"unsubscribed",…}` or `{"action":"error",
/// "code","message"}`). A client that falls behind is closed with code 1008 and reason
/// `CLIENT_TOO_SLOW`; on shutdown, 1001.
#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "live",
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`UNAUTHORIZED`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn ws(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade
        .map_err(|e| ApiError::bad_request(format!("this route speaks WebSocket only: {e}")))?;
    let caller = caller.map(|Extension(c)| c);
    let bus = state.bus().clone();
    let feed = Feed::open(&bus, state.store(), None).await?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _guard = bus.client();
        ws_session(state, bus, feed, socket, caller).await;
    }))
}

const WS_SEND_TIMEOUT: Duration = Duration::from_secs(10);

async fn ws_session(
    state: AppState,
    bus: Arc<bus::Bus>,
    mut feed: Feed,
    mut socket: WebSocket,
    caller: Option<Caller>,
) {
    let mut subs: Vec<Subscription> = Vec::new();
    let mut ping = tokio::time::interval(bus.config().keepalive);
    ping.tick().await;
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    loop {
        let out: Message = tokio::select! {
            () = bus.closing().cancelled() => {
                let _ = tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(close(1001, "SERVER_SHUTTING_DOWN"))).await;
                return;
            }
            _ = ping.tick() => Message::Ping(Bytes::new()),
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(text))) => {
                    let answer = handle_message(&state, &mut subs, caller.as_ref(), text.as_str()).await;
                    Message::Text(answer.to_string().into())
                }
                Some(Ok(Message::Binary(_))) => Message::Text(json!({
                    "action": "error",
                    "code": "BAD_MESSAGE",
                    "message": "send JSON text frames",
                }).to_string().into()),
                Some(Ok(_)) => continue,
            },
            next = feed.next() => match next {
                Ok(live) => {
                    if !subs.iter().any(|s| s.matches(&live)) {
                        continue;
                    }
                    Message::Text(live.json.clone())
                }
                Err(FeedEnd::TooSlow) => {
                    let _ = tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(close(1008, "CLIENT_TOO_SLOW: fell too far behind the event stream"))).await;
                    return;
                }
                Err(FeedEnd::Closed) => {
                    let _ = tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(close(1001, "SERVER_SHUTTING_DOWN"))).await;
                    return;
                }
                Err(FeedEnd::Store(e)) => {
                    tracing::warn!(error = %e, "websocket feed failed");
                    let _ = tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(close(1011, "INTERNAL"))).await;
                    return;
                }
            },
        };
        // A client that does not read within the timeout is as good as gone.
        match tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

async fn handle_message(
    state: &AppState,
    subs: &mut Vec<Subscription>,
    caller: Option<&Caller>,
    text: &str,
) -> Value {
    let error = |code: &str, message: String| json!({ "action": "error", "code": code, "message": message });
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return error(
                "BAD_MESSAGE",
                format!(
                    "{e}; send {{\"action\":\"subscribe\",\"types\":[…],\"projects\":[…]}} or {{\"action\":\"unsubscribe\",\"id\":…}}"
                ),
            );
        }
    };
    match message {
        ClientMessage::Subscribe {
            id,
            types,
            projects,
        } => {
            if let Some(bad) = types.iter().find(|t| !bus::valid_pattern(t)) {
                return error(
                    "BAD_MESSAGE",
                    format!("types: `{bad}` is not an event type or a pattern such as `run.*`"),
                );
            }
            let mut ids = Vec::new();
            for p in &projects {
                match resolve_project(state.store(), Some(p), caller).await {
                    Ok(Some(id)) => ids.push(id),
                    Ok(None) => {}
                    Err(e) => {
                        let body = e.body();
                        return error(&body.code, format!("projects: {}", body.message));
                    }
                }
            }
            if ids.is_empty()
                && let Some(scope) = caller.and_then(|c| c.0.project)
            {
                ids.push(scope);
            }
            let id = id.unwrap_or_else(|| (subs.len() + 1).to_string());
            subs.retain(|s| s.id != id);
            subs.push(Subscription {
                id: id.clone(),
                types,
                projects: ids,
            });
            json!({ "action": "subscribed", "id": id })
        }
        ClientMessage::Unsubscribe { id } => {
            let before = subs.len();
            subs.retain(|s| s.id != id);
            if subs.len() == before {
                return error("SUBSCRIPTION_NOT_FOUND", format!("no subscription `{id}`"));
            }
            json!({ "action": "unsubscribed", "id": id })
        }
    }
}
