//! Watches: a sync makes the stored entries what the files say, a poll is claimed by one
//! poller, and a recorded version is claimed for a run exactly once — also from a second
//! store handle (a restart or a replica).

use jiff::Timestamp;
use kiln_core::ids::RunId;
use kiln_proto::WatchState;
use kiln_store::{NewVersion, PollRecord, WatchDef, WatchSyncReport};

use crate::harness::{Harness, both_backends};

both_backends!(
    watches_sync_and_disable,
    a_version_is_claimed_once_across_handles,
    a_poll_is_claimed_once_and_errors_count,
);

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn def(name: &str, package: &str) -> WatchDef {
    WatchDef {
        workflow: ".kiln/workflows/w.yml".to_owned(),
        name: name.to_owned(),
        source: format!(r#"{{"kind":"pypi","package":"{package}"}}"#),
        constraint: Some(">=1".to_owned()),
        filter: None,
        known_versions: None,
        interval_secs: 3600,
    }
}

fn v(version: &str, trigger: bool) -> NewVersion {
    NewVersion {
        version: version.to_owned(),
        source_uri: None,
        trigger,
    }
}

async fn watches_sync_and_disable(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("w", "/tmp/w").await.unwrap();
    let now = t("2026-03-28T12:00:00Z");
    let r = s
        .sync_watches(p.id, &[def("a", "x"), def("b", "y")], &[], now)
        .await
        .unwrap();
    assert_eq!(
        r,
        WatchSyncReport {
            added: 2,
            changed: 0,
            removed: 0
        }
    );
    let list = s.list_watches(None).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].name, "a");
    assert_eq!(list[0].source, "pypi");
    assert_eq!(list[0].state, WatchState::New);
    assert_eq!(list[0].next_poll_at, Some(now));
    // Same again: nothing changes. Then b changes and a leaves its file.
    let r = s
        .sync_watches(p.id, &[def("a", "x"), def("b", "y")], &[], now)
        .await
        .unwrap();
    assert_eq!(r, WatchSyncReport::default());
    let r = s
        .sync_watches(p.id, &[def("b", "z")], &[], now)
        .await
        .unwrap();
    assert_eq!(
        r,
        WatchSyncReport {
            added: 0,
            changed: 1,
            removed: 1
        }
    );
    let list = s.list_watches(Some(p.id)).await.unwrap();
    assert_eq!(list[0].state, WatchState::Disabled);
    assert_eq!(list[0].next_poll_at, None);
    assert_eq!(list[1].spec["package"], "z");
    assert_eq!(s.due_watches(now, 10).await.unwrap().len(), 1);
}

async fn a_version_is_claimed_once_across_handles(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("w", "/tmp/w").await.unwrap();
    let now = t("2026-03-28T12:00:00Z");
    s.sync_watches(p.id, &[def("a", "x")], &[], now)
        .await
        .unwrap();
    let w = s.due_watches(now, 10).await.unwrap().remove(0);
    let poll = PollRecord {
        etag: Some("\"e1\"".to_owned()),
        versions: vec![v("1.0", false), v("1.1", true)],
        next_poll_at: t("2026-03-28T13:00:00Z"),
        now,
    };
    let claimed = s.record_poll(w.id, &poll).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].version, "1.1");
    // The same poll recorded again (a restart, another replica) claims nothing.
    let other = h.reopen().await;
    assert!(other.record_poll(w.id, &poll).await.unwrap().is_empty());
    let run = RunId::new();
    other
        .finish_watch_version(w.id, claimed[0].id, Ok(run))
        .await
        .unwrap();
    let view = s.get_watch(w.id).await.unwrap().unwrap();
    assert_eq!(view.state, WatchState::Ok);
    assert_eq!(view.versions_seen, 2);
    assert_eq!(view.last_run, Some(run));
    let row = s.watch_row(w.id).await.unwrap().unwrap();
    assert!(row.polled);
    assert_eq!(row.etag.as_deref(), Some("\"e1\""));
    let mut seen = s.seen_versions(w.id).await.unwrap();
    seen.sort();
    assert_eq!(seen, ["1.0", "1.1"]);
    let versions = s.list_watch_versions(w.id).await.unwrap();
    assert_eq!(versions[1].outcome, "started");
    assert_eq!(versions[0].outcome, "seen");
}

async fn a_poll_is_claimed_once_and_errors_count(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("w", "/tmp/w").await.unwrap();
    let now = t("2026-03-28T12:00:00Z");
    s.sync_watches(p.id, &[def("a", "x")], &[], now)
        .await
        .unwrap();
    let w = s.due_watches(now, 10).await.unwrap().remove(0);
    let lease = t("2026-03-28T12:05:00Z");
    let other = h.reopen().await;
    assert!(s.claim_watch(w.id, w.next_poll_at, lease).await.unwrap());
    assert!(
        !other
            .claim_watch(w.id, w.next_poll_at, lease)
            .await
            .unwrap()
    );
    assert!(s.due_watches(now, 10).await.unwrap().is_empty());
    let retry = t("2026-03-28T12:01:00Z");
    s.record_poll_error(w.id, "boom", retry, now).await.unwrap();
    s.record_poll_error(w.id, "boom again", retry, now)
        .await
        .unwrap();
    let view = s.get_watch(w.id).await.unwrap().unwrap();
    assert_eq!(view.state, WatchState::Failing);
    assert_eq!(view.failures, 2);
    assert_eq!(view.last_error.as_deref(), Some("boom again"));
    assert_eq!(s.next_watch_poll().await.unwrap(), Some(retry));
}
