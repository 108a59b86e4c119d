//! Outbound notifications as the store keeps them: receivers, one delivery row per
//! (receiver, event) that matched, every attempt, and how far the notifier has read the
//! outbox.
//!
//! At least once, never twice at a time:
//! - the notifier reads events after its stored cursor and records the deliveries of those
//!   events and the cursor's new place in ONE transaction ([`crate::Store::record_notifications`]);
//!   the unique (receiver, event) pair makes reading the same events again (a restart, a
//!   second replica) harmless;
//! - a sender claims a due delivery with one conditional `UPDATE` that sets `claimed_by`,
//!   `claim_expires_at` and a new `claim_token` only while no live claim exists, so two
//!   replicas never send the same attempt at once; the attempt is recorded only by the holder
//!   of the current token ([`crate::Store::finish_notification_attempt`]). A sender that dies
//!   holding a claim leaves it to expire, and the delivery is sent again: at least once.
//!
//! Deciding which events match, what the body is, the backoff and sending are the server's
//! (`kiln_server::notify`).

use jiff::Timestamp;
use kiln_core::ids::{ProjectId, RunId};
use kiln_proto::{NotificationId, ReceiverId};

/// What the notifier needs of an active receiver to decide which events it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverTarget {
    pub id: ReceiverId,
    pub project: ProjectId,
    /// Event patterns (`run.completed`, `run.*`).
    pub events: Vec<String>,
    /// Only events with larger ids are its (the outbox head when it was created).
    pub from_event: i64,
}

/// A delivery to record: one event for one receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNotification {
    pub id: NotificationId,
    pub receiver: ReceiverId,
    pub project: ProjectId,
    pub event_id: i64,
    pub event_type: String,
    pub run: Option<RunId>,
    /// The JSON body every attempt sends.
    pub payload: String,
    /// When the first attempt is due.
    pub due_at: Timestamp,
}

/// A delivery a sender has claimed, with what sending it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedNotification {
    pub id: NotificationId,
    pub receiver: ReceiverId,
    pub url: String,
    pub secret: String,
    pub event_type: String,
    pub payload: String,
    /// Attempts since the delivery was made or last retried by a person (backoff counts these).
    pub tries: u32,
    /// The claim's fencing token: only it may record this attempt.
    pub token: i64,
}

/// How one attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: Timestamp,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// What becomes of a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterAttempt {
    Delivered,
    /// Try again at this time.
    RetryAt(Timestamp),
    /// No attempts left.
    Failed,
}
