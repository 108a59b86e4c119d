//! Webhook bans: made, found for their hook (or every hook) while in force, listed, lifted.

use kiln_proto::Ban;

use crate::harness::{Harness, at, both_backends};

both_backends!(a_ban_keeps_its_address_out_until_it_ends_or_is_lifted);

fn ban(id: &str, address: &str, hook: Option<&str>, from: i64, until: i64) -> Ban {
    Ban {
        id: id.to_owned(),
        address: address.to_owned(),
        hook_id: hook.map(str::to_owned),
        reason: "3 failed verifications within 60 s".to_owned(),
        failures: 3,
        created_at: at(from),
        expires_at: at(until),
        lifted_at: None,
    }
}

async fn a_ban_keeps_its_address_out_until_it_ends_or_is_lifted(h: &Harness) {
    let s = &h.store;
    assert!(s.list_bans(true, at(0)).await.unwrap().is_empty());
    s.add_ban(&ban("b1", "192.0.2.1", Some("hook-a"), 0, 1000))
        .await
        .unwrap();
    s.add_ban(&ban("b2", "192.0.2.2", None, 10, 2000))
        .await
        .unwrap();
    // b1: hook a only, until 1000.
    let found = s.active_ban("192.0.2.1", "hook-a", at(500)).await.unwrap();
    assert_eq!(found.unwrap().id, "b1");
    assert!(
        s.active_ban("192.0.2.1", "hook-b", at(500))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.active_ban("192.0.2.1", "hook-a", at(1000))
            .await
            .unwrap()
            .is_none()
    );
    // b2: every hook.
    assert!(
        s.active_ban("192.0.2.2", "anything", at(500))
            .await
            .unwrap()
            .is_some()
    );
    // Listing: in force (newest first), or all.
    let now: Vec<String> = s
        .list_bans(false, at(1500))
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(now, ["b2"]);
    let all: Vec<String> = s
        .list_bans(true, at(1500))
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(all, ["b2", "b1"]);
    // Lifting ends it at once; a second lift keeps the first time; unknown ids are None.
    let lifted = s.lift_ban("b2", at(600)).await.unwrap().unwrap();
    assert_eq!(lifted.lifted_at, Some(at(600)));
    let again = s.lift_ban("b2", at(700)).await.unwrap().unwrap();
    assert_eq!(again.lifted_at, Some(at(600)));
    assert!(s.lift_ban("nope", at(700)).await.unwrap().is_none());
    assert!(
        s.active_ban("192.0.2.2", "anything", at(800))
            .await
            .unwrap()
            .is_none()
    );
}
