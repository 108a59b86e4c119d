//! Outbound notifications as the API shows them (`/api/v1/projects/{id}/receivers`,
//! `/api/v1/projects/{id}/notifications`, `kiln receiver …`): the receivers a project names,
//! which event types they want, and each delivery with its attempts.
//!
//! A receiver gets a JSON `POST` signed like kiln's generic webhook (`X-Kiln-Signature:
//! sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, `X-Kiln-Timestamp`,
//! `X-Kiln-Delivery`, plus `X-Kiln-Event: <type>`), so one kiln can notify another.
//!
//! The event filter is pure and lives here ([`check_event_patterns`], [`pattern_matches`]) so
//! that the server, the CLI and the tests agree on it. Not here: sending, storing, claiming.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use kiln_core::ids::{ProjectId, RunId};
use serde::{Deserialize, Serialize};

kiln_core::typed_id!(
    /// A notification receiver's id.
    ReceiverId
);
kiln_core::typed_id!(
    /// One notification delivery's id (one per receiver and event; its `X-Kiln-Delivery`).
    NotificationId
);

/// The event types a receiver may ask for. `log.line`, `worker.*` and `system.load` are not
/// among them: they are live-stream material, far too many to `POST` one by one.
pub const NOTIFIABLE_EVENTS: &[&str] = &[
    "run.pending",
    "run.queued",
    "run.started",
    "run.waiting",
    "run.resumed",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "job.queued",
    "job.waiting",
    "job.started",
    "job.completed",
    "job.failed",
    "job.skipped",
];

/// Whether `pattern` (an event type, `run.*`, `job.*` or `*`) takes events of type `kind`.
pub fn pattern_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" {
        return NOTIFIABLE_EVENTS.contains(&kind);
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            kind.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
                && NOTIFIABLE_EVENTS.contains(&kind)
        }
        None => pattern == kind,
    }
}

/// Whether any of `patterns` takes events of type `kind`.
pub fn patterns_match(patterns: &[String], kind: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, kind))
}

/// Checks a receiver's event filter: at least one pattern, each a notifiable event type
/// ([`NOTIFIABLE_EVENTS`]), `run.*`, `job.*` or `*`. The message names the first bad one.
pub fn check_event_patterns(patterns: &[String]) -> Result<(), String> {
    if patterns.is_empty() {
        return Err("name at least one event type, such as `run.completed` or `run.*`".to_owned());
    }
    for p in patterns {
        let known =
            p == "*" || p == "run.*" || p == "job.*" || NOTIFIABLE_EVENTS.contains(&p.as_str());
        if !known {
            return Err(format!(
                "unknown event pattern `{p}`; expected one of {}, `run.*`, `job.*` or `*`",
                NOTIFIABLE_EVENTS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The body of `POST /api/v1/projects/{id}/receivers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewReceiver {
    /// An `http://` or `https://` URL the egress policy allows. Never fetched while it is
    /// being registered.
    pub url: String,
    /// Event types or patterns: `run.completed`, `run.failed`, `run.*`, `job.*`, `*`.
    pub events: Vec<String>,
    /// The signing secret (at least 16 characters); drawn at random when left out.
    #[serde(default)]
    pub secret: Option<String>,
}

/// One receiver of a project's notifications.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReceiverView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: ReceiverId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub project: ProjectId,
    pub url: String,
    pub events: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// The signing secret: only in the answer that created the receiver, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `GET /api/v1/projects/{id}/receivers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReceiverList {
    pub receivers: Vec<ReceiverView>,
}

/// Where a notification delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NotificationStatus {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Every attempt failed; `POST /api/v1/notifications/{id}/retry` tries again.
    Failed,
    /// Its receiver was removed before it was delivered.
    Cancelled,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for NotificationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotificationStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(format!("unknown notification status `{other}`")),
        }
    }
}

/// One attempt to deliver a notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    /// 1, 2, … in the order they were made.
    pub attempt: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub duration_ms: u64,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed without an answer (connect error, timeout, egress refusal).
    pub error: Option<String>,
}

/// One notification: an event sent (or to be sent) to one receiver, with its attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: NotificationId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub receiver: ReceiverId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub project: ProjectId,
    /// The outbox id of the event.
    pub event_id: i64,
    /// The event's type (`X-Kiln-Event`).
    pub event_type: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub run: Option<RunId>,
    pub status: NotificationStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub next_attempt_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
    /// Oldest first.
    pub attempts: Vec<AttemptView>,
}

/// `GET /api/v1/projects/{id}/notifications`: newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationList {
    pub notifications: Vec<NotificationView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_their_types_only() {
        assert!(pattern_matches("run.completed", "run.completed"));
        assert!(!pattern_matches("run.completed", "run.failed"));
        assert!(pattern_matches("run.*", "run.failed"));
        assert!(!pattern_matches("run.*", "job.failed"));
        assert!(!pattern_matches("run.*", "runner.x"));
        assert!(pattern_matches("*", "job.started"));
        assert!(!pattern_matches("*", "log.line"));
        assert!(!pattern_matches("job.*", "log.line"));
    }

    #[test]
    fn unknown_patterns_are_named() {
        assert!(check_event_patterns(&["run.completed".into(), "run.*".into()]).is_ok());
        let e = check_event_patterns(&["run.complete".into()]).unwrap_err();
        assert!(e.contains("`run.complete`"), "{e}");
        assert!(check_event_patterns(&["log.line".into()]).is_err());
        assert!(check_event_patterns(&["log.*".into()]).is_err());
        assert!(check_event_patterns(&[]).is_err());
    }
}
