//! The embedded store's webhook intake journal: deliveries answered from it are recorded once
//! per provider delivery id, read back as stored by every read, and stored by the next server
//! when the one that journaled them died first.

use std::path::Path;

use kiln_core::ids::ProjectId;
use kiln_proto::{DeliveryStatus, HookProvider};
use kiln_store::{DeliveryClaim, NewDelivery, Recorded, Store};

use crate::harness::Harness;

fn delivery(project: ProjectId, id: &str, status: DeliveryStatus, claimed: bool) -> NewDelivery {
    NewDelivery {
        project,
        provider: HookProvider::Github,
        delivery: id.to_owned(),
        event: "push".to_owned(),
        status,
        reason: None,
        payload: format!(
            r#"{{"ref":"refs/heads/main","delivery":"{id}","pad":"{}"}}"#,
            "x".repeat(2000)
        )
        .into_bytes(),
        claim: claimed.then(|| DeliveryClaim {
            owner: "engine/serve-1".to_owned(),
            until: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600),
        }),
    }
}

fn new(r: Recorded) -> kiln_proto::DeliveryView {
    match r {
        Recorded::New(d) => d,
        Recorded::Duplicate(d) => panic!("a new delivery was taken for a duplicate of {}", d.id),
    }
}

fn duplicate(r: Recorded) -> kiln_proto::DeliveryView {
    match r {
        Recorded::Duplicate(d) => d,
        Recorded::New(d) => panic!("a delivery seen before was recorded again as {}", d.id),
    }
}

/// A project for the deliveries.
async fn app(s: &Store) -> ProjectId {
    s.create_project("app", "/srv/app")
        .await
        .unwrap()
        .project
        .id
}

/// An embedded store with its intake journal open (in `intake/` of its folder).
async fn journaled() -> Harness {
    let h = Harness::sqlite().await;
    assert!(
        h.store
            .open_intake_journal(&h.dir.path().join("intake"))
            .await
            .unwrap()
    );
    h
}

/// Bytes in the journal files of `dir`.
fn journaled_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("intake-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_deliveries_are_recorded_once_and_read_back_stored() {
    let h = Harness::sqlite().await;
    let s = &h.store;
    let journal = h.dir.path().join("intake");
    assert!(s.open_intake_journal(&journal).await.unwrap());
    assert!(
        !s.open_intake_journal(&journal).await.unwrap(),
        "a journal opened twice"
    );
    let other = h.reopen().await;
    assert!(
        !other.open_intake_journal(&journal).await.unwrap(),
        "a second store took the journal another holds"
    );
    let p = app(s).await;

    let first = new(s
        .record_delivery(&delivery(p, "d-1", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    assert_eq!(first.status, DeliveryStatus::Accepted);
    assert!(journaled_bytes(&journal) > 0, "nothing was journaled");
    // Not stored yet, and still a duplicate: for a redelivery, and for a ping with its id.
    let again = duplicate(
        s.record_delivery(&delivery(p, "d-1", DeliveryStatus::Accepted, true))
            .await
            .unwrap(),
    );
    assert_eq!(again.id, first.id);
    let ping = duplicate(
        s.record_delivery(&delivery(p, "d-1", DeliveryStatus::Ignored, false))
            .await
            .unwrap(),
    );
    assert_eq!(ping.id, first.id);
    // Another store (a CLI on the same data dir) reads what is stored, nothing more.
    assert!(other.get_delivery(&first.id).await.unwrap().is_none());

    // Every read stores what is journaled first.
    let read = s.get_delivery(&first.id).await.unwrap().unwrap();
    assert_eq!(read, first);
    assert_eq!(
        journaled_bytes(&journal),
        0,
        "the stored deliveries stayed journaled"
    );
    assert!(other.get_delivery(&first.id).await.unwrap().is_some());
    let body = delivery(p, "d-1", DeliveryStatus::Accepted, true).payload;
    assert_eq!(s.delivery_payload(&first.id).await.unwrap().unwrap(), body);
    // Stored as claimed: another server cannot take it, nor is it left for the sweep.
    let now = jiff::Timestamp::now();
    let later = now + jiff::SignedDuration::from_secs(60);
    let ids = [first.id.clone()];
    assert!(
        other
            .claim_deliveries(&ids, "b/1", "b/", now, later)
            .await
            .unwrap()
            .is_empty()
    );
    let again = duplicate(
        s.record_delivery(&delivery(p, "d-1", DeliveryStatus::Accepted, true))
            .await
            .unwrap(),
    );
    assert_eq!(again.id, first.id);

    // Deliveries this process does not process itself go straight to the database.
    let direct = new(s
        .record_delivery(&delivery(p, "d-2", DeliveryStatus::Accepted, false))
        .await
        .unwrap());
    assert!(other.get_delivery(&direct.id).await.unwrap().is_some());
    assert_eq!(journaled_bytes(&journal), 0);
    let listed = s.list_deliveries(p, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    h.cleanup().await;
}

/// A delivery journaled here whose provider id another process (a second server on the
/// same data, writing the database straight) records before the journal is stored: that
/// one is kept, and the processor is told once that the journaled one was dropped, so
/// that it starts no runs for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_delivery_recorded_first_by_another_process_is_reported_dropped() {
    let h = journaled().await;
    let s = &h.store;
    let other = h.reopen().await;
    let p = app(s).await;
    let journaled = new(s
        .record_delivery(&delivery(p, "d-1", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    let kept = new(s
        .record_delivery(&delivery(p, "d-2", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    // The other process has no journal: it records into the database at once.
    let theirs = new(other
        .record_delivery(&delivery(p, "d-1", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    assert!(
        !s.dropped_from_intake(&journaled.id),
        "asked before the store"
    );
    s.flush_intake().await.unwrap();
    assert!(s.dropped_from_intake(&journaled.id));
    assert!(!s.dropped_from_intake(&journaled.id), "answered twice");
    assert!(!s.dropped_from_intake(&kept.id));
    assert!(!other.dropped_from_intake(&theirs.id));
    // What is stored: theirs for d-1, ours for d-2.
    assert!(s.get_delivery(&journaled.id).await.unwrap().is_none());
    assert_eq!(
        s.get_delivery(&theirs.id).await.unwrap().unwrap().delivery,
        "d-1"
    );
    assert!(s.get_delivery(&kept.id).await.unwrap().is_some());
    h.cleanup().await;
}

/// The journal answers a new delivery id without looking in the database: it knows every
/// id recorded before it opened and since. A delivery recorded before is still answered as
/// the duplicate it is; one that another process records straight into the database after
/// the journal opened is answered as new and then dropped, starting nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_recorded_before_the_journal_opened_are_still_duplicates() {
    let h = Harness::sqlite().await;
    let s = &h.store;
    let p = app(s).await;
    // No journal yet: recorded straight into the database.
    let before = new(s
        .record_delivery(&delivery(p, "d-0", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    let ping = new(s
        .record_delivery(&delivery(p, "ping-0", DeliveryStatus::Ignored, false))
        .await
        .unwrap());
    assert!(
        s.open_intake_journal(&h.dir.path().join("intake"))
            .await
            .unwrap()
    );
    for (id, first) in [("d-0", &before), ("ping-0", &ping)] {
        let again = duplicate(
            s.record_delivery(&delivery(p, id, DeliveryStatus::Accepted, true))
                .await
                .unwrap(),
        );
        assert_eq!(again.id, first.id);
    }
    // Recorded here since (journaled, or straight): known too.
    let direct = new(s
        .record_delivery(&delivery(p, "ping-1", DeliveryStatus::Ignored, false))
        .await
        .unwrap());
    let journaled = new(s
        .record_delivery(&delivery(p, "d-1", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    s.flush_intake().await.unwrap();
    for (id, first) in [("ping-1", &direct), ("d-1", &journaled)] {
        let again = duplicate(
            s.record_delivery(&delivery(p, id, DeliveryStatus::Accepted, true))
                .await
                .unwrap(),
        );
        assert_eq!(again.id, first.id);
    }
    // Another process's, recorded after the journal opened.
    let other = h.reopen().await;
    let theirs = new(other
        .record_delivery(&delivery(p, "d-2", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    let ours = new(s
        .record_delivery(&delivery(p, "d-2", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    s.flush_intake().await.unwrap();
    assert!(s.dropped_from_intake(&ours.id));
    assert_eq!(
        s.get_delivery(&theirs.id).await.unwrap().unwrap().delivery,
        "d-2"
    );
    h.cleanup().await;
}

/// Many requests with the same few delivery ids at once, while the processor stores what
/// is journaled: exactly one delivery per id, and every duplicate names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redeliveries_record_one_delivery_per_id() {
    let h = Harness::sqlite().await;
    let s = h.store.clone();
    assert!(
        s.open_intake_journal(&h.dir.path().join("intake"))
            .await
            .unwrap()
    );
    let p = app(&s).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..160 {
        let s = s.clone();
        tasks.spawn(async move {
            let id = format!("d-{}", i % 8);
            // Some come as pings, recorded straight into the database.
            let (status, claimed) = if i % 5 == 0 {
                (DeliveryStatus::Ignored, false)
            } else {
                (DeliveryStatus::Accepted, true)
            };
            let r = s
                .record_delivery(&delivery(p, &id, status, claimed))
                .await
                .unwrap();
            if i % 7 == 0 {
                s.flush_intake().await.unwrap();
            }
            (id, r)
        });
    }
    let mut firsts = std::collections::HashMap::new();
    let mut seen = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (id, r) = done.unwrap();
        match r {
            Recorded::New(d) => {
                assert!(
                    firsts.insert(id.clone(), d.id).is_none(),
                    "{id} recorded twice"
                );
            }
            Recorded::Duplicate(d) => seen.push((id, d.id)),
        }
    }
    assert_eq!(firsts.len(), 8);
    for (id, first) in seen {
        assert_eq!(
            firsts[&id], first,
            "a duplicate of {id} names another delivery"
        );
    }
    let stored = s.list_deliveries(p, 100).await.unwrap();
    assert_eq!(stored.len(), 8);
    for d in stored {
        assert_eq!(firsts[&d.delivery], d.id);
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_stores_what_the_journal_held() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("intake");
    let (p, answered) = {
        let s = Store::open_sqlite(dir.path()).await.unwrap();
        assert!(s.open_intake_journal(&journal).await.unwrap());
        let p = app(&s).await;
        let mut answered = Vec::new();
        for id in ["d-1", "d-2", "d-3"] {
            answered.push(new(s
                .record_delivery(&delivery(p, id, DeliveryStatus::Accepted, true))
                .await
                .unwrap()));
        }
        // The process dies before storing them, the last record half written.
        (p, answered)
    };
    let file = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();

    let s = Store::open_sqlite(dir.path()).await.unwrap();
    assert!(
        s.accepted_deliveries(10).await.unwrap().is_empty(),
        "read before the journal was opened"
    );
    assert!(s.open_intake_journal(&journal).await.unwrap());
    let waiting = s.accepted_deliveries(10).await.unwrap();
    assert_eq!(
        waiting,
        answered[..2].to_vec(),
        "the whole records, as answered; not the one cut short"
    );
    for d in &answered[..2] {
        let body = delivery(p, &d.delivery, DeliveryStatus::Accepted, true).payload;
        assert_eq!(s.delivery_payload(&d.id).await.unwrap().unwrap(), body);
    }
    assert_eq!(journaled_bytes(&journal), 0, "the journal read back stayed");
    // The one cut short was never answered: its redelivery is new.
    new(s
        .record_delivery(&delivery(p, "d-3", DeliveryStatus::Accepted, true))
        .await
        .unwrap());
    // And an earlier one is a duplicate of what the journal held.
    let again = duplicate(
        s.record_delivery(&delivery(p, "d-1", DeliveryStatus::Accepted, true))
            .await
            .unwrap(),
    );
    assert_eq!(again.id, answered[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_keep_no_journal() {
    let h = Harness::postgres().await;
    assert!(
        !h.store
            .open_intake_journal(&h.dir.path().join("intake"))
            .await
            .unwrap()
    );
    assert!(!h.dir.path().join("intake").exists());
    h.cleanup().await;
}

/// A journaled delivery's body comes back packed as the journal packed it: it unpacks to the
/// body, and as packed JSON it is the body's text. One LZ4 does not shrink comes back as it
/// came, with no packed JSON; one recorded straight (not claimed) comes back without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_delivery_hands_back_its_body_packed_once() {
    let h = journaled().await;
    let s = &h.store;
    let project = app(s).await;

    let json = delivery(project, "d-json", DeliveryStatus::Accepted, true);
    let (recorded, body) = s.record_delivery_packed(&json).await.unwrap();
    new(recorded);
    let body = body.expect("a journaled delivery hands back its body");
    assert_eq!(body.unpack().unwrap(), json.payload);
    let packed = body.json().expect("JSON text shrinks");
    assert_eq!(packed.text().as_bytes(), json.payload.as_slice());

    // Bytes LZ4 cannot shrink.
    let mut noise = delivery(project, "d-noise", DeliveryStatus::Accepted, true);
    let mut x: u32 = 12345;
    noise.payload = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect();
    let (recorded, body) = s.record_delivery_packed(&noise).await.unwrap();
    new(recorded);
    let body = body.expect("a journaled delivery hands back its body");
    assert_eq!(body.unpack().unwrap(), noise.payload);
    assert!(
        body.json().is_none(),
        "bytes that did not shrink are not packed JSON"
    );

    // Not claimed: recorded straight, nothing packed to hand back; a duplicate neither.
    let straight = delivery(project, "d-straight", DeliveryStatus::Accepted, false);
    let (recorded, body) = s.record_delivery_packed(&straight).await.unwrap();
    new(recorded);
    assert!(body.is_none());
    let (recorded, body) = s.record_delivery_packed(&json).await.unwrap();
    duplicate(recorded);
    assert!(body.is_none());
    h.cleanup().await;
}
