//! The event bus (DESIGN.md "Architecture"): ONE task per server reads the store's gap-safe
//! outbox and hands every event, serialised once, to every live client (SSE, WebSocket, log
//! streams) over a broadcast channel.
//!
//! - The task starts with the first subscriber, after the outbox's head: history is what a
//!   client asks for with `Last-Event-ID` ([`Feed`] replays it from the store, then goes on
//!   with the broadcast, each id once).
//! - It reads again at once when this process wrote (the store's write watch) and every
//!   `poll` anyway, for what other processes write (replicas, `kiln run`).
//! - `log.line` events get their bytes here (the outbox only names them).
//! - `system.load` is made here every `load_interval`; it is not stored and has no id, so a
//!   client that resumes does not get old samples.
//! - A client that falls behind by more than the broadcast buffer (or, for SSE, its own
//!   buffer) is dropped with `CLIENT_TOO_SLOW`: nobody waits for a slow client.
//! - On shutdown (`closing`) every live stream says so and ends, so that the server's
//!   graceful shutdown does not wait for clients that never hang up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use kiln_core::ids::{JobId, ProjectId, RunId};
use kiln_proto::Event;
use kiln_store::{Store, StoreError};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Events read from the outbox per query.
const PAGE: u32 = 1000;

/// How the bus and its clients behave.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// How often the outbox is read when this process did not write.
    pub poll: Duration,
    /// How often `system.load` is sent.
    pub load_interval: Duration,
    /// How many events the broadcast keeps for its slowest reader.
    pub broadcast_buffer: usize,
    /// How many frames one SSE client may have waiting to be sent.
    pub client_buffer: usize,
    /// How often an idle stream sends a keep-alive.
    pub keepalive: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(250),
            load_interval: Duration::from_secs(10),
            broadcast_buffer: 8192,
            client_buffer: 1024,
            keepalive: Duration::from_secs(15),
        }
    }
}

/// One event as live clients get it: what filters look at, and its two encodings made once.
pub(crate) struct Live {
    /// `None` for events that are not stored (`system.load`).
    pub(crate) id: Option<i64>,
    pub(crate) event: Event,
    /// The event's JSON (a WebSocket text frame).
    pub(crate) json: Utf8Bytes,
    /// The whole SSE frame: `id:`, `event:` and `data:` lines.
    pub(crate) sse: Bytes,
}

impl Live {
    pub(crate) fn stored(event: Event) -> Self {
        let json = serde_json::to_string(&event).unwrap_or_default();
        Self {
            id: Some(event.id),
            sse: sse_frame(Some(event.id), &event.kind, &json),
            json: json.into(),
            event,
        }
    }

    /// An event that is not in the outbox (`system.load`): no id.
    fn ephemeral(kind: &str, data: Value) -> Self {
        let event = Event {
            id: 0,
            at: jiff::Timestamp::now(),
            kind: kind.to_owned(),
            project: None,
            run: None,
            job: None,
            data,
        };
        let mut value = serde_json::to_value(&event).unwrap_or_default();
        if let Value::Object(map) = &mut value {
            map.remove("id");
        }
        let json = value.to_string();
        Self {
            id: None,
            sse: sse_frame(None, kind, &json),
            json: json.into(),
            event,
        }
    }
}

/// An SSE frame; `data` is one line of JSON (serde_json never writes raw newlines).
pub(crate) fn sse_frame(id: Option<i64>, kind: &str, data: &str) -> Bytes {
    let mut frame = String::with_capacity(data.len() + kind.len() + 32);
    if let Some(id) = id {
        frame.push_str("id: ");
        frame.push_str(&id.to_string());
        frame.push('\n');
    }
    frame.push_str("event: ");
    frame.push_str(kind);
    frame.push_str("\ndata: ");
    frame.push_str(data);
    frame.push_str("\n\n");
    Bytes::from(frame)
}

/// The frame a stream ends with when the server drops it.
pub(crate) fn sse_error(code: &str, message: &str) -> Bytes {
    let data = json!({ "code": code, "message": message }).to_string();
    sse_frame(None, "error", &data)
}

pub(crate) const TOO_SLOW: &str = "this client fell too far behind the event stream and was dropped; reconnect with \
     Last-Event-ID to resume where it stopped";
pub(crate) const SHUTTING_DOWN: &str =
    "the server is shutting down; reconnect with Last-Event-ID to resume";

/// The bus: the broadcast, the last id it published, and whether its task runs.
pub(crate) struct Bus {
    config: LiveConfig,
    /// The sender and the id of the last stored event sent, changed together: a subscriber
    /// reads both under the lock, so it knows exactly which ids its receiver will get.
    sender: Mutex<(broadcast::Sender<Arc<Live>>, i64)>,
    started: OnceLock<()>,
    closing: CancellationToken,
    clients: AtomicUsize,
}

impl Bus {
    pub(crate) fn new(config: LiveConfig) -> Self {
        let (tx, _) = broadcast::channel(config.broadcast_buffer.max(16));
        Self {
            config,
            sender: Mutex::new((tx, 0)),
            started: OnceLock::new(),
            closing: CancellationToken::new(),
            clients: AtomicUsize::new(0),
        }
    }

    pub(crate) fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// Cancelled when the server shuts down: every live stream ends.
    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// A receiver of everything published from now on, and the id of the last stored event
    /// published before it. Starts the bus's task on first use.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        store: &Store,
    ) -> Result<(broadcast::Receiver<Arc<Live>>, i64), StoreError> {
        if self.started.get().is_none() {
            // The head is read before the task exists, so the first subscriber's position
            // is exact; a second caller racing here reads a head too and the lock decides.
            let head = store.event_head().await?;
            let mut first = false;
            self.started.get_or_init(|| {
                first = true;
            });
            if first {
                self.sender.lock().unwrap_or_else(|p| p.into_inner()).1 = head;
                tokio::spawn(pump(self.clone(), store.clone(), head));
            }
        }
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        Ok((guard.0.subscribe(), guard.1))
    }

    fn publish(&self, live: Live) {
        let mut guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = live.id {
            guard.1 = id;
        }
        // No receivers is not an error: the event is in the outbox for whoever comes.
        let _ = guard.0.send(Arc::new(live));
    }

    /// Counts a live client for as long as the guard lives (reported in `system.load`).
    pub(crate) fn client(self: &Arc<Self>) -> ClientGuard {
        self.clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(self.clone())
    }
}

pub(crate) struct ClientGuard(Arc<Bus>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bus's task: reads the outbox after `cursor` and publishes, until the server closes.
async fn pump(bus: Arc<Bus>, store: Store, mut cursor: i64) {
    let mut writes = store.watch_writes();
    let mut load = tokio::time::interval(bus.config.load_interval);
    load.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    load.tick().await;
    loop {
        writes.borrow_and_update();
        let full = match store.events_after(cursor, PAGE).await {
            Ok(mut events) => {
                let full = events.len() == PAGE as usize;
                if let Err(e) = store.fill_log_lines(&mut events).await {
                    tracing::warn!(error = %e, "could not read the bytes of log events");
                }
                for mut event in events {
                    cursor = event.id;
                    if let Value::Object(data) = &mut event.data {
                        data.remove("blob");
                    }
                    bus.publish(Live::stored(event));
                }
                full
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the event outbox");
                tokio::select! {
                    () = bus.closing.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        if full {
            continue;
        }
        tokio::select! {
            () = bus.closing.cancelled() => return,
            _ = writes.changed() => {}
            () = tokio::time::sleep(bus.config.poll) => {}
            _ = load.tick() => bus.publish(Live::ephemeral("system.load", load_sample(&bus))),
        }
    }
}

/// The machine's load averages, this process's memory and the live clients.
fn load_sample(bus: &Bus) -> Value {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = loadavg.split_whitespace().map(|f| f.parse::<f64>().ok());
    let (load1, load5, load15) = (
        fields.next().flatten(),
        fields.next().flatten(),
        fields.next().flatten(),
    );
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096);
    json!({
        "load1": load1,
        "load5": load5,
        "load15": load15,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "rss_bytes": rss,
        "live_clients": bus.clients.load(Ordering::Relaxed),
    })
}

/// Why a feed ended.
#[derive(Debug)]
pub(crate) enum FeedEnd {
    /// The client fell more than the broadcast buffer behind.
    TooSlow,
    /// The bus stopped (shutdown).
    Closed,
    /// The replay from the outbox failed.
    Store(StoreError),
}

/// One client's events: first those after its `Last-Event-ID` that the bus published before
/// it subscribed (read from the outbox), then the broadcast's, each id once, in id order.
pub(crate) struct Feed {
    store: Store,
    rx: broadcast::Receiver<Arc<Live>>,
    /// Replay (after, up to and including) still to read from the outbox.
    replay: Option<(i64, i64)>,
    queued: VecDeque<Arc<Live>>,
    /// Stored events with ids up to this one were sent already.
    seen: i64,
}

impl Feed {
    /// A feed from now on, or after `last_id` when the client resumes.
    pub(crate) async fn open(
        bus: &Arc<Bus>,
        store: &Store,
        last_id: Option<i64>,
    ) -> Result<Self, StoreError> {
        let (rx, head) = bus.subscribe(store).await?;
        let (replay, seen) = match last_id {
            Some(last) if last < head => (Some((last, head)), last),
            Some(last) => (None, last),
            None => (None, head),
        };
        Ok(Self {
            store: store.clone(),
            rx,
            replay,
            queued: VecDeque::new(),
            seen,
        })
    }

    pub(crate) async fn next(&mut self) -> Result<Arc<Live>, FeedEnd> {
        loop {
            if let Some(live) = self.queued.pop_front() {
                if let Some(id) = live.id {
                    self.seen = id;
                }
                return Ok(live);
            }
            if let Some((after, upto)) = self.replay {
                let mut events = self
                    .store
                    .events_after(after, PAGE)
                    .await
                    .map_err(FeedEnd::Store)?;
                events.retain(|e| e.id <= upto);
                self.store
                    .fill_log_lines(&mut events)
                    .await
                    .map_err(FeedEnd::Store)?;
                match events.last() {
                    Some(last) if last.id < upto => self.replay = Some((last.id, upto)),
                    _ => self.replay = None,
                }
                self.queued.extend(events.into_iter().map(|mut e| {
                    if let Value::Object(data) = &mut e.data {
                        data.remove("blob");
                    }
                    Arc::new(Live::stored(e))
                }));
                continue;
            }
            match self.rx.recv().await {
                Ok(live) => match live.id {
                    Some(id) if id <= self.seen => {}
                    Some(id) => {
                        self.seen = id;
                        return Ok(live);
                    }
                    None => return Ok(live),
                },
                Err(RecvError::Lagged(_)) => return Err(FeedEnd::TooSlow),
                Err(RecvError::Closed) => return Err(FeedEnd::Closed),
            }
        }
    }
}

/// Which events a client wants: type patterns (`run.completed`, `run.*`, `*`), and at most
/// one project, run and job.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub(crate) types: Vec<String>,
    pub(crate) project: Option<ProjectId>,
    pub(crate) run: Option<RunId>,
    pub(crate) job: Option<JobId>,
}

impl Filter {
    pub(crate) fn matches(&self, event: &Event) -> bool {
        let type_ok =
            self.types.is_empty() || self.types.iter().any(|t| type_matches(t, &event.kind));
        // Events of no project (`system.load`) pass the scope filters.
        let scoped = event.project.is_none() && event.run.is_none();
        type_ok
            && (scoped || self.project.is_none_or(|p| event.project == Some(p)))
            && (scoped || self.run.is_none_or(|r| event.run == Some(r)))
            && (scoped || self.job.is_none_or(|j| event.job == Some(j)))
    }
}

/// `pattern` is a type, `*`, or a prefix ending in `.*` (`job.*`).
pub(crate) fn type_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

/// Checks a type pattern a client sent: known shape, not empty.
pub(crate) fn valid_pattern(pattern: &str) -> bool {
    let body = pattern.strip_suffix(".*").unwrap_or(pattern);
    pattern == "*"
        || (!body.is_empty()
            && body
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(type_matches("*", "run.queued"));
        assert!(type_matches("run.*", "run.queued"));
        assert!(!type_matches("run.*", "job.started"));
        assert!(type_matches("job.completed", "job.completed"));
        assert!(!type_matches("job.completed", "job.completed.x"));
        assert!(valid_pattern("log.line"));
        assert!(valid_pattern("job.*"));
        assert!(!valid_pattern(""));
        assert!(!valid_pattern("Run"));
        assert!(!valid_pattern(".*"));
    }

    #[test]
    fn frames() {
        let frame = sse_frame(Some(7), "run.queued", "{\"a\":1}");
        assert_eq!(&frame[..], b"id: 7\nevent: run.queued\ndata: {\"a\":1}\n\n");
        let frame = sse_frame(None, "system.load", "{}");
        assert_eq!(&frame[..], b"event: system.load\ndata: {}\n\n");
    }
}
