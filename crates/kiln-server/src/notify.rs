//! Outbound notifications (DESIGN.md "Events": one event stream feeds SSE, WebSocket and
//! notifications): ONE notifier task per server turns the outbox's events into signed `POST`s
//! to the receivers projects name, at least once.
//!
//! Each round it
//! 1. reads the events after its cursor (stored: `Store::notifier_cursor`), matches them with
//!    the active receivers ([`kiln_proto::notifications::patterns_match`]), and records one
//!    delivery per (receiver, event) — its body fixed there — together with the cursor's new
//!    place, in one transaction: a crash before that re-reads the same events, and the unique
//!    (receiver, event) pair makes that harmless;
//! 2. claims due deliveries (a lease with a fencing token, so that replicas sharing a
//!    database never send one attempt at once) and sends them; every attempt is recorded with
//!    its status code or error and duration; a 2xx delivers, anything else is tried again
//!    after the next backoff step ([`NotifyConfig::backoff`]) until
//!    [`NotifyConfig::max_attempts`], then the delivery is `failed`.
//!
//! Every request passes the egress policy first: the host is resolved, every address checked,
//! and the connection pinned to the checked addresses (a second lookup could answer
//! otherwise). Redirects are not followed; each attempt has a timeout. The signature is the
//! generic webhook's (`X-Kiln-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." +
//! body)>`, `X-Kiln-Timestamp`, `X-Kiln-Delivery`), plus `X-Kiln-Event: <type>`, so one kiln
//! can notify another.
//!
//! Not here: SQL and the claim's atomicity (the store's), receivers' registration (the route's).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use kiln_core::ids::{ProjectId, RunId};
use kiln_engine::egress::EgressPolicy;
use kiln_proto::notifications::patterns_match;
use kiln_proto::{Event, NotificationId};
use kiln_store::{
    AfterAttempt, AttemptRecord, ClaimedNotification, NewNotification, ReceiverTarget, Store,
    StoreError,
};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// The cursor's name in the store: one for the whole deployment (replicas share it).
const CURSOR: &str = "notifications";
/// Events read from the outbox per query.
const PAGE: u32 = 500;
/// The longest error text an attempt keeps.
const MAX_ERROR: usize = 500;

/// How the notifier behaves.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// Whether the server runs a notifier at all.
    pub enabled: bool,
    /// How often the outbox and the due deliveries are looked at when nothing woke it.
    pub poll: Duration,
    /// The wait after the 1st, 2nd, … failed attempt; the last step repeats.
    pub backoff: Vec<Duration>,
    /// Attempts before a delivery is `failed`.
    pub max_attempts: u32,
    /// How long one attempt may take in all.
    pub timeout: Duration,
    /// How long a claim holds; longer than `timeout`, so that a live sender never loses it.
    pub lease: Duration,
    /// Deliveries claimed (and sent concurrently) per round.
    pub batch: u32,
}

impl Default for NotifyConfig {
    /// 5 s, 30 s, 2 min, 10 min, 1 h between attempts; six attempts; 10 s each.
    fn default() -> Self {
        Self {
            enabled: true,
            poll: Duration::from_secs(1),
            backoff: [5, 30, 120, 600, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_attempts: 6,
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            batch: 16,
        }
    }
}

impl NotifyConfig {
    /// What becomes of a delivery after an attempt that `ok` or not, when `tries` attempts
    /// (this one included) have been made since it was created or retried by a person.
    pub(crate) fn after(&self, ok: bool, tries: u32, now: Timestamp) -> AfterAttempt {
        if ok {
            return AfterAttempt::Delivered;
        }
        if tries >= self.max_attempts {
            return AfterAttempt::Failed;
        }
        let step = usize::try_from(tries.saturating_sub(1)).unwrap_or(usize::MAX);
        let wait = self
            .backoff
            .get(step)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(60));
        let wait = jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::MAX);
        AfterAttempt::RetryAt(now.checked_add(wait).unwrap_or(Timestamp::MAX))
    }
}

/// Starts the server's notifier; it ends when `closing` is cancelled.
pub(crate) fn spawn(state: &AppState, closing: CancellationToken) -> Option<JoinHandle<()>> {
    let config = state.config().notify.clone();
    if !config.enabled {
        return None;
    }
    // reqwest carries rustls without a provider of its own; Err: one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let notifier = Notifier {
        store: state.store().clone(),
        egress: state.config().egress.clone(),
        public_url: state.config().public_url.clone(),
        owner: format!("notifier-{}", uuid::Uuid::now_v7()),
        config,
    };
    Some(tokio::spawn(notifier.run(closing)))
}

/// How long a round waits after a write for more to come.
const GATHER: Duration = Duration::from_millis(100);
/// How often the stored cursor moves when there is nothing to record.
const PERSIST_EVERY: Duration = Duration::from_secs(5);

/// Where the notifier has read to, and when it last stored that.
struct Cursor {
    at: Option<i64>,
    persisted: std::time::Instant,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            at: None,
            persisted: std::time::Instant::now(),
        }
    }
}

struct Notifier {
    store: Store,
    egress: EgressPolicy,
    public_url: String,
    /// This notifier's claims carry this name.
    owner: String,
    config: NotifyConfig,
}

impl Notifier {
    async fn run(self, closing: CancellationToken) {
        let mut writes = self.store.watch_writes();
        let mut cursor = Cursor::default();
        loop {
            if let Err(e) = self.round(&mut cursor).await {
                tracing::warn!(error = %e, "notifier round failed; trying again");
            }
            tokio::select! {
                () = closing.cancelled() => break,
                _ = writes.changed() => {
                    // A busy server writes thousands of times a second: gather what comes
                    // in the next moment into one round rather than a round per write.
                    tokio::select! {
                        () = closing.cancelled() => break,
                        () = tokio::time::sleep(GATHER) => {}
                    }
                    writes.borrow_and_update();
                }
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }

    async fn round(&self, cursor: &mut Cursor) -> Result<(), StoreError> {
        let after = match cursor.at {
            Some(c) => c,
            None => {
                let head = self.store.event_head().await?;
                let c = self.store.notifier_cursor(CURSOR, head).await?;
                cursor.at = Some(c);
                c
            }
        };
        let at = self.scan(after, cursor).await?;
        cursor.at = Some(at);
        self.send_due().await
    }

    /// Records the deliveries of every event after `after`; returns the new cursor. The
    /// stored cursor moves with every delivery recorded, and otherwise at most every
    /// [`PERSIST_EVERY`]: re-reading events after a restart records nothing twice (a
    /// delivery is unique per receiver and event), so a write per round buys nothing.
    async fn scan(&self, mut after: i64, cursor: &mut Cursor) -> Result<i64, StoreError> {
        loop {
            let events = self.store.events_after(after, PAGE).await?;
            let Some(last) = events.last().map(|e| e.id) else {
                return Ok(after);
            };
            let receivers = self.store.active_receivers().await?;
            let mut new = Vec::new();
            let mut context = Context::default();
            for event in &events {
                for r in receivers.iter().filter(|r| wants(r, event)) {
                    let id = NotificationId::new();
                    let payload = self.payload(id, event, &mut context).await?;
                    new.push(NewNotification {
                        id,
                        receiver: r.id,
                        project: r.project,
                        event_id: event.id,
                        event_type: event.kind.clone(),
                        run: event.run,
                        payload,
                        due_at: Timestamp::now(),
                    });
                }
            }
            if !new.is_empty() || cursor.persisted.elapsed() >= PERSIST_EVERY {
                let made = self.store.record_notifications(CURSOR, last, &new).await?;
                if made > 0 {
                    tracing::debug!(made, upto = last, "notifications recorded");
                }
                cursor.persisted = std::time::Instant::now();
            }
            after = last;
            if events.len() < PAGE as usize {
                return Ok(after);
            }
        }
    }

    /// The body of one delivery: `{"delivery_id","event","project":{"id","name"},"run"}`.
    async fn payload(
        &self,
        id: NotificationId,
        event: &Event,
        context: &mut Context,
    ) -> Result<String, StoreError> {
        let project = match event.project {
            Some(p) => context.project(&self.store, p).await?,
            None => Value::Null,
        };
        let run = match event.run {
            Some(r) => context.run(&self.store, r, &self.public_url).await?,
            None => Value::Null,
        };
        Ok(json!({
            "delivery_id": id,
            "event": event,
            "project": project,
            "run": run,
        })
        .to_string())
    }

    async fn send_due(&self) -> Result<(), StoreError> {
        loop {
            let claimed = self
                .store
                .claim_notifications(
                    &self.owner,
                    Timestamp::now(),
                    self.config.lease,
                    self.config.batch,
                )
                .await?;
            let full = claimed.len() >= self.config.batch as usize;
            if claimed.is_empty() {
                return Ok(());
            }
            let mut sends = JoinSet::new();
            for c in claimed {
                let egress = self.egress.clone();
                let timeout = self.config.timeout;
                sends.spawn(async move {
                    let attempt = send(&egress, timeout, &c).await;
                    (c, attempt)
                });
            }
            while let Some(done) = sends.join_next().await {
                let Ok((c, attempt)) = done else { continue };
                let ok = attempt.status_code.is_some_and(|s| (200..300).contains(&s));
                let after = self.config.after(ok, c.tries + 1, attempt.at);
                let recorded = self
                    .store
                    .finish_notification_attempt(c.id, &self.owner, c.token, &attempt, after)
                    .await?;
                tracing::info!(
                    delivery = %c.id,
                    receiver = %c.receiver,
                    event = %c.event_type,
                    status = ?attempt.status_code,
                    error = attempt.error.as_deref().unwrap_or(""),
                    ?after,
                    recorded,
                    "notification attempt"
                );
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// Whether receiver `r` gets `event`.
fn wants(r: &ReceiverTarget, event: &Event) -> bool {
    event.id > r.from_event
        && event.project == Some(r.project)
        && patterns_match(&r.events, &event.kind)
}

/// Projects and runs read once per scan.
#[derive(Default)]
struct Context {
    projects: HashMap<ProjectId, Value>,
    runs: HashMap<RunId, Value>,
}

impl Context {
    async fn project(&mut self, store: &Store, id: ProjectId) -> Result<Value, StoreError> {
        if let Some(v) = self.projects.get(&id) {
            return Ok(v.clone());
        }
        let v = match store.get_project(id).await? {
            Some(p) => json!({ "id": p.id, "name": p.name }),
            None => json!({ "id": id, "name": null }),
        };
        self.projects.insert(id, v.clone());
        Ok(v)
    }

    async fn run(
        &mut self,
        store: &Store,
        id: RunId,
        public_url: &str,
    ) -> Result<Value, StoreError> {
        if let Some(v) = self.runs.get(&id) {
            return Ok(v.clone());
        }
        let v = match store.get_run(id).await? {
            Some(run) => run_summary(&run, public_url),
            None => Value::Null,
        };
        self.runs.insert(id, v.clone());
        Ok(v)
    }
}

/// A run as the API shows it, without its jobs, with `url`: where the API serves it.
pub(crate) fn run_summary(run: &kiln_proto::Run, public_url: &str) -> Value {
    let mut v = serde_json::to_value(run).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.remove("jobs");
        map.insert(
            "url".to_owned(),
            format!("{public_url}/api/v1/runs/{}", run.id).into(),
        );
    }
    v
}

/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`: the generic hook's signature.
pub(crate) fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why a receiver URL cannot be used, as a person reads it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UrlError {
    #[error("is not a URL: {0}")]
    Parse(String),
    #[error("must be an http:// or https:// URL")]
    Scheme,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("names no host")]
    NoHost,
    #[error("{0}")]
    Egress(#[from] kiln_engine::egress::EgressError),
}

/// Parses a receiver URL: http(s), a host, no credentials.
pub(crate) fn parse_url(url: &str) -> Result<reqwest::Url, UrlError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| UrlError::Parse(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    Ok(parsed)
}

/// Parses `url` and checks it against the egress policy (resolving its host); returns the
/// host (an IPv6 address without brackets) and the socket addresses to connect to.
pub(crate) async fn check_url(
    egress: &EgressPolicy,
    url: &str,
) -> Result<(reqwest::Url, String, Vec<SocketAddr>), UrlError> {
    let parsed = parse_url(url)?;
    let host = parsed
        .host_str()
        .ok_or(UrlError::NoHost)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs = egress.check_host(&host, port).await?;
    let addrs = addrs
        .into_iter()
        .map(|a| SocketAddr::new(a, port))
        .collect();
    Ok((parsed, host, addrs))
}

/// One attempt: check, sign, `POST`, no redirects, within `timeout`.
async fn send(egress: &EgressPolicy, timeout: Duration, c: &ClaimedNotification) -> AttemptRecord {
    let at = Timestamp::now();
    let started = Instant::now();
    let result = post(egress, timeout, c).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status_code, error) = match result {
        Ok(code) => (Some(code), None),
        Err(e) => {
            let mut e = e;
            if e.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
            (None, Some(e))
        }
    };
    AttemptRecord {
        at,
        duration_ms,
        status_code,
        error,
    }
}

async fn post(
    egress: &EgressPolicy,
    timeout: Duration,
    c: &ClaimedNotification,
) -> Result<u16, String> {
    let (url, host, addrs) = check_url(egress, &c.url)
        .await
        .map_err(|e| format!("the receiver URL {e}"))?;
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
    if host.parse::<std::net::IpAddr>().is_err() {
        // Connect to the addresses that were checked, not to what a second lookup says.
        builder = builder.resolve_to_addrs(&host, &addrs);
    }
    let client = builder
        .build()
        .map_err(|e| format!("failed to set up the HTTP client: {e}"))?;
    let timestamp = Timestamp::now().as_second().to_string();
    let body = c.payload.clone().into_bytes();
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-kiln-signature", signature(&c.secret, &timestamp, &body))
        .header("x-kiln-timestamp", &timestamp)
        .header("x-kiln-delivery", c.id.to_string())
        .header("x-kiln-event", &c.event_type)
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e.without_url()))?;
    Ok(res.status().as_u16())
}

/// A reqwest error with its causes, as one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_steps_then_gives_up() {
        let c = NotifyConfig::default();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(c.after(true, 3, now), AfterAttempt::Delivered);
        let wait = |tries| match c.after(false, tries, now) {
            AfterAttempt::RetryAt(t) => t.as_second() - now.as_second(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            [wait(1), wait(2), wait(3), wait(4), wait(5)],
            [5, 30, 120, 600, 3600]
        );
        assert_eq!(c.after(false, 6, now), AfterAttempt::Failed);
    }

    #[test]
    fn signature_is_the_generic_hooks() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently.
        let sig = signature("secret", "1700000000", b"{}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), 7 + 64);
        assert_ne!(sig, signature("secret", "1700000001", b"{}"));
    }

    #[test]
    fn only_http_urls_without_credentials() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(matches!(
            parse_url("ftp://example.com/"),
            Err(UrlError::Scheme)
        ));
        assert!(matches!(
            parse_url("file:///etc/passwd"),
            Err(UrlError::Scheme)
        ));
        assert!(matches!(
            parse_url("https://u:p@example.com/"),
            Err(UrlError::Credentials)
        ));
        assert!(matches!(parse_url("not a url"), Err(UrlError::Parse(_))));
    }
}
