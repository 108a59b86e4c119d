//! Outbound notifications as the store keeps them: receivers, deliveries recorded once per
//! (receiver, event) with the cursor moved in the same transaction, claims that two senders
//! never hold at once, attempts recorded only by the current claim, retries.

use std::time::Duration;

use kiln_proto::{NotificationId, NotificationStatus};
use kiln_store::{AfterAttempt, AttemptRecord, NewNotification, Store};

use crate::harness::{Harness, at, both_backends, new_run};

both_backends!(
    receivers_are_listed_and_removed,
    deliveries_are_recorded_once_and_claimed_by_one,
);

async fn receivers_are_listed_and_removed(h: &Harness) {
    let s = &h.store;
    let p = s
        .create_project("web", "https://example.invalid/web.git")
        .await
        .unwrap();
    let pid = p.project.id;
    let events = vec!["run.completed".to_owned(), "run.*".to_owned()];
    let r = s
        .create_receiver(
            pid,
            "https://hooks.example.com/x",
            &events,
            "0123456789abcdef",
        )
        .await
        .unwrap();
    assert_eq!(r.secret.as_deref(), Some("0123456789abcdef"));
    let list = s.list_receivers(pid).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, r.id);
    assert_eq!(list[0].events, events);
    assert_eq!(list[0].secret, None, "a listing never shows the secret");
    let active = s.active_receivers().await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].project, pid);

    let other = s
        .create_project("api", "https://example.invalid/api.git")
        .await
        .unwrap();
    assert!(
        !s.remove_receiver(other.project.id, r.id).await.unwrap(),
        "not its receiver"
    );
    assert!(s.remove_receiver(pid, r.id).await.unwrap());
    assert!(!s.remove_receiver(pid, r.id).await.unwrap(), "removed once");
    assert!(s.list_receivers(pid).await.unwrap().is_empty());
    assert!(s.active_receivers().await.unwrap().is_empty());
}

fn new_notification(s: &kiln_store::ReceiverTarget, event_id: i64) -> NewNotification {
    NewNotification {
        id: NotificationId::new(),
        receiver: s.id,
        project: s.project,
        event_id,
        event_type: "run.completed".to_owned(),
        run: None,
        payload: format!("{{\"event\":{event_id}}}"),
        due_at: at(0),
    }
}

fn attempt(code: u16) -> AttemptRecord {
    AttemptRecord {
        at: at(10),
        duration_ms: 3,
        status_code: Some(code),
        error: None,
    }
}

async fn deliveries_are_recorded_once_and_claimed_by_one(h: &Harness) {
    let s: &Store = &h.store;
    let p = s
        .create_project("web", "https://example.invalid/web.git")
        .await
        .unwrap();
    let pid = p.project.id;
    s.create_run(new_run(pid, "ci.yml", Vec::new()))
        .await
        .unwrap();
    // On PostgreSQL the run's events show once every older transaction of the cluster has
    // ended (other tests run beside this one): wait for them, so the head is stable.
    let mut head = s.event_head().await.unwrap();
    for _ in 0..200 {
        if head > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        head = s.event_head().await.unwrap();
    }
    assert!(head > 0, "the run's events never showed");
    assert_eq!(s.notifier_cursor("n", head).await.unwrap(), head);
    assert_eq!(
        s.notifier_cursor("n", 0).await.unwrap(),
        head,
        "a cursor starts once"
    );
    s.create_receiver(
        pid,
        "https://h.example.com/",
        &["run.*".to_owned()],
        "0123456789abcdef",
    )
    .await
    .unwrap();
    let target = s.active_receivers().await.unwrap().remove(0);
    assert_eq!(target.from_event, head);

    let first = [
        new_notification(&target, head + 1),
        new_notification(&target, head + 2),
    ];
    assert_eq!(
        s.record_notifications("n", head + 2, &first).await.unwrap(),
        2
    );
    assert_eq!(s.notifier_cursor("n", 0).await.unwrap(), head + 2);
    // Read again (a restart, another replica): nothing new, the cursor never goes back.
    let again = [new_notification(&target, head + 1)];
    assert_eq!(
        s.record_notifications("n", head + 1, &again).await.unwrap(),
        0
    );
    assert_eq!(s.notifier_cursor("n", 0).await.unwrap(), head + 2);

    // Two senders: each due delivery goes to one of them.
    let now = at(1);
    let lease = Duration::from_secs(60);
    let (a, b) = tokio::join!(
        s.claim_notifications("a", now, lease, 10),
        s.claim_notifications("b", now, lease, 10)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 2, "{a:?} {b:?}");
    assert!(
        s.claim_notifications("c", now, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (owner, claimed) = if a.is_empty() { ("b", &b) } else { ("a", &a) };
    let one = &claimed[0];
    assert_eq!(one.tries, 0);
    assert_eq!(one.url, "https://h.example.com/");

    // A stale token records nothing; the current one does.
    assert!(
        !s.finish_notification_attempt(
            one.id,
            owner,
            one.token + 1,
            &attempt(500),
            AfterAttempt::Failed
        )
        .await
        .unwrap()
    );
    let retry_at = at(5_000);
    assert!(
        s.finish_notification_attempt(
            one.id,
            owner,
            one.token,
            &attempt(500),
            AfterAttempt::RetryAt(retry_at)
        )
        .await
        .unwrap()
    );
    assert!(
        s.claim_notifications("c", at(2), lease, 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.id != one.id),
        "not due yet"
    );
    // An expired claim is taken over.
    let later = at(120_000);
    let taken = s.claim_notifications("c", later, lease, 10).await.unwrap();
    assert_eq!(
        taken.len(),
        2,
        "the retry is due and the other claim expired"
    );
    let again = taken.iter().find(|c| c.id == one.id).unwrap();
    assert_eq!(again.tries, 1);
    assert!(
        s.finish_notification_attempt(
            again.id,
            "c",
            again.token,
            &attempt(200),
            AfterAttempt::Delivered
        )
        .await
        .unwrap()
    );
    // The first claimant of the other delivery lost it.
    let other = taken.iter().find(|c| c.id != one.id).unwrap();
    let first_owner_token = a.iter().chain(&b).find(|c| c.id == other.id).unwrap().token;
    assert!(
        !s.finish_notification_attempt(
            other.id,
            if a.iter().any(|c| c.id == other.id) {
                "a"
            } else {
                "b"
            },
            first_owner_token,
            &attempt(200),
            AfterAttempt::Delivered
        )
        .await
        .unwrap()
    );

    let list = s.list_notifications(pid, 50).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].event_id, head + 2, "newest first");
    let done = s.get_notification(one.id).await.unwrap().unwrap();
    assert_eq!(done.status, NotificationStatus::Delivered);
    assert_eq!(done.attempts.len(), 2);
    assert_eq!(done.attempts[0].status_code, Some(500));
    assert_eq!(done.attempts[1].attempt, 2);

    // A person retries a delivered one: pending, due now, backoff from zero.
    assert!(s.retry_notification(one.id, later).await.unwrap());
    assert!(
        !s.retry_notification(one.id, later).await.unwrap(),
        "already pending"
    );
    let c = s.claim_notifications("d", later, lease, 10).await.unwrap();
    let c = c.iter().find(|c| c.id == one.id).unwrap();
    assert_eq!(c.tries, 0);
    // Removing the receiver cancels what is pending.
    let rid = done.receiver;
    assert!(s.remove_receiver(pid, rid).await.unwrap());
    let cancelled = s.get_notification(one.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, NotificationStatus::Cancelled);
    assert!(
        !s.finish_notification_attempt(c.id, "d", c.token, &attempt(200), AfterAttempt::Delivered)
            .await
            .unwrap()
    );
}
