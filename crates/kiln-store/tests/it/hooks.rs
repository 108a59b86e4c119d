//! Project webhooks as the store keeps them: a provider and a secret per project, rotation of
//! the hook id and secret, and deliveries recorded once per provider delivery id, then marked
//! processed (with their runs), ignored or failed.

use kiln_core::ids::RunId;
use kiln_proto::{DeliveryStatus, HookProvider};
use kiln_store::{
    DeliveryClaim, DeliveryOutcome, HookChange, NewDelivery, Recorded, generate_secret,
};

use crate::harness::{Harness, both_backends, new_run};

both_backends!(
    hooks_are_found_by_id_and_rotated,
    deliveries_are_recorded_once_and_finished,
    one_processor_claims_a_delivery,
    a_delivery_recorded_claimed_is_the_receivers,
    a_batch_is_claimed_and_finished_in_one_go,
    runs_of_a_batch_are_created_all_or_none,
    old_payloads_are_pruned_once_processed,
    a_large_payload_is_stored_compressed_and_read_back_whole,
    a_run_reads_its_event_from_the_delivery_that_started_it,
);

async fn hooks_are_found_by_id_and_rotated(h: &Harness) {
    let s = &h.store;
    let p = s
        .create_project("web", "https://example.invalid/org/web.git")
        .await
        .unwrap();
    assert_eq!(p.provider, HookProvider::Github, "the default provider");
    let target = s.hook_target(&p.project.hook_id).await.unwrap().unwrap();
    assert_eq!(target.project, p.project.id);
    assert_eq!(target.secret, None, "no secret until one is set");
    assert!(s.hook_target("nope").await.unwrap().is_none());

    let secret = generate_secret().unwrap();
    let set = s
        .set_hook(
            p.project.id,
            &HookChange {
                provider: Some(HookProvider::Gitlab),
                new_hook_id: false,
                secret: Some(secret.clone()),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.hook_id, p.project.hook_id);
    assert_eq!(set.provider, HookProvider::Gitlab);
    assert_eq!(set.secret.as_deref(), Some(secret.as_str()));
    let record = s.project_record(p.project.id).await.unwrap().unwrap();
    assert_eq!(record.provider, HookProvider::Gitlab);

    // A new hook id: the old URL finds nothing, the secret stays.
    let rotated = s
        .set_hook(
            p.project.id,
            &HookChange {
                new_hook_id: true,
                ..HookChange::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_ne!(rotated.hook_id, p.project.hook_id);
    assert!(s.hook_target(&p.project.hook_id).await.unwrap().is_none());
    let target = s.hook_target(&rotated.hook_id).await.unwrap().unwrap();
    assert_eq!(target.secret.as_deref(), Some(secret.as_str()));
    assert_eq!(target.provider, HookProvider::Gitlab);
}

async fn deliveries_are_recorded_once_and_finished(h: &Harness) {
    let s = &h.store;
    let p = s.create_project("app", "/srv/app").await.unwrap();
    let pid = p.project.id;
    let new = |delivery: &str, status| NewDelivery {
        project: pid,
        provider: HookProvider::Github,
        delivery: delivery.to_owned(),
        event: "push".to_owned(),
        status,
        reason: None,
        payload: br#"{"ref":"refs/heads/main"}"#.to_vec(),
        claim: None,
    };
    let Recorded::New(first) = s
        .record_delivery(&new("d-1", DeliveryStatus::Accepted))
        .await
        .unwrap()
    else {
        panic!("a new delivery id is new")
    };
    assert_eq!(first.status, DeliveryStatus::Accepted);
    assert_eq!((first.size, first.processed_at), (25, None));
    assert_eq!(
        s.delivery_payload(&first.id).await.unwrap().unwrap(),
        br#"{"ref":"refs/heads/main"}"#
    );
    let pending = s.accepted_deliveries(10).await.unwrap();
    assert_eq!(pending.len(), 1);

    let Recorded::Duplicate(again) = s
        .record_delivery(&new("d-1", DeliveryStatus::Accepted))
        .await
        .unwrap()
    else {
        panic!("the same delivery id is a duplicate")
    };
    assert_eq!(again.id, first.id);

    let run = RunId::new();
    let outcome = DeliveryOutcome {
        status: DeliveryStatus::Processed,
        reason: None,
        runs: vec![run],
    };
    assert!(s.finish_delivery(&first.id, &outcome).await.unwrap());
    assert!(
        !s.finish_delivery(&first.id, &outcome).await.unwrap(),
        "finished once"
    );
    let done = s.get_delivery(&first.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.runs.clone()),
        (DeliveryStatus::Processed, vec![run])
    );
    assert!(done.processed_at.is_some());
    assert!(s.accepted_deliveries(10).await.unwrap().is_empty());
    let Recorded::Duplicate(again) = s
        .record_delivery(&new("d-1", DeliveryStatus::Accepted))
        .await
        .unwrap()
    else {
        panic!("still a duplicate")
    };
    assert_eq!(
        again.runs,
        vec![run],
        "a duplicate tells the first one's runs"
    );

    // Recorded already finished (a malformed body), with its reason; newest first.
    let mut failed = new("d-2", DeliveryStatus::Failed);
    failed.reason = Some("x".repeat(10_000));
    let Recorded::New(second) = s.record_delivery(&failed).await.unwrap() else {
        panic!("new")
    };
    assert_eq!(second.status, DeliveryStatus::Failed);
    assert!(second.processed_at.is_some());
    assert_eq!(second.reason.as_deref().map(str::len), Some(4096));
    let listed = s.list_deliveries(pid, 10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, [second.id.as_str(), first.id.as_str()]);
    assert_eq!(s.list_deliveries(pid, 1).await.unwrap().len(), 1);
    // Another project may use the same delivery id.
    let other = s.create_project("other", "/srv/other").await.unwrap();
    let mut elsewhere = new("d-1", DeliveryStatus::Accepted);
    elsewhere.project = other.project.id;
    assert!(matches!(
        s.record_delivery(&elsewhere).await.unwrap(),
        Recorded::New(_)
    ));
}

/// Servers racing for an accepted delivery: one claim wins; the others get it only when that
/// claim expires, or — for a restarted server — when the claim was its own earlier process's.
async fn one_processor_claims_a_delivery(h: &Harness) {
    let s = &h.store;
    let p = s.create_project("app", "/srv/app").await.unwrap();
    let Recorded::New(d) = s
        .record_delivery(&NewDelivery {
            project: p.project.id,
            provider: HookProvider::Github,
            delivery: "d-1".to_owned(),
            event: "push".to_owned(),
            status: DeliveryStatus::Accepted,
            reason: None,
            payload: b"{}".to_vec(),
            claim: None,
        })
        .await
        .unwrap()
    else {
        panic!("new")
    };
    assert!(claims(s, &d.id, "a/1", 0).await);
    // Another server, and the same server's same process: the claim is live.
    assert!(!claims(s, &d.id, "b/1", 10).await);
    assert!(!claims(s, &d.id, "a/1", 10).await);
    // Server a restarted (a new process): its earlier claim is dead at once.
    assert!(claims(s, &d.id, "a/2", 20).await);
    // Expired: anyone may take it.
    assert!(claims(s, &d.id, "b/1", 700).await);
    // Finished: nobody claims it any more.
    s.finish_delivery(
        &d.id,
        &DeliveryOutcome {
            status: DeliveryStatus::Processed,
            reason: None,
            runs: Vec::new(),
        },
    )
    .await
    .unwrap();
    assert!(!claims(s, &d.id, "c/1", 2000).await);
}

/// A delivery recorded under its receiver's claim (handed straight to that server's own
/// processor) is the receiver's: another server waits for the claim to expire, and the same
/// server restarted takes it over at once.
async fn a_delivery_recorded_claimed_is_the_receivers(h: &Harness) {
    let s = &h.store;
    let p = s.create_project("app", "/srv/app").await.unwrap();
    let t = |secs: i64| jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap();
    let record = |delivery: &str| NewDelivery {
        project: p.project.id,
        provider: HookProvider::Github,
        delivery: delivery.to_owned(),
        event: "push".to_owned(),
        status: DeliveryStatus::Accepted,
        reason: None,
        payload: b"{}".to_vec(),
        claim: Some(DeliveryClaim {
            owner: "a/1".to_owned(),
            until: t(600),
        }),
    };
    let Recorded::New(d) = s.record_delivery(&record("d-1")).await.unwrap() else {
        panic!("new")
    };
    assert!(
        !claims(s, &d.id, "b/1", 10).await,
        "another server took a delivery its receiver is processing"
    );
    assert!(!claims(s, &d.id, "a/1", 10).await);
    assert!(
        claims(s, &d.id, "a/2", 20).await,
        "the restarted receiver did not take its earlier process's delivery over"
    );
    let Recorded::New(e) = s.record_delivery(&record("d-2")).await.unwrap() else {
        panic!("new")
    };
    assert!(
        claims(s, &e.id, "b/1", 601).await,
        "an expired claim still held the delivery"
    );
}

/// Whether server `owner` (`server/process`) claims delivery `id` at `at` seconds past a fixed
/// time, for 600 s.
async fn claims(s: &kiln_store::Store, id: &str, owner: &str, at: i64) -> bool {
    let t = |secs: i64| jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap();
    let stale = format!("{}/", owner.split('/').next().unwrap_or(owner));
    s.claim_delivery(id, owner, &stale, t(at), t(at + 600))
        .await
        .unwrap()
}

/// A burst of deliveries is claimed (with payloads, in the order asked) and finished in one
/// transaction each; what is claimed elsewhere or finished is left out.
async fn a_batch_is_claimed_and_finished_in_one_go(h: &Harness) {
    let s = &h.store;
    let p = s.create_project("burst", "/srv/burst").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let Recorded::New(d) = s
            .record_delivery(&NewDelivery {
                project: p.project.id,
                provider: HookProvider::Github,
                delivery: format!("burst-{i}"),
                event: "push".to_owned(),
                status: DeliveryStatus::Accepted,
                reason: None,
                payload: format!("{{\"n\":{i}}}").into_bytes(),
                claim: None,
            })
            .await
            .unwrap()
        else {
            panic!("new")
        };
        ids.push(d.id);
    }
    let t = |secs: i64| jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap();
    // One of them is another server's already.
    assert!(
        s.claim_delivery(&ids[1], "b/1", "b/", t(0), t(600))
            .await
            .unwrap()
    );
    let mut asked = ids.clone();
    asked.push("no-such-delivery".to_owned());
    let claimed = s
        .claim_deliveries(&asked, "a/1", "a/", t(1), t(601))
        .await
        .unwrap();
    let got: Vec<(&str, &[u8])> = claimed
        .iter()
        .map(|(d, payload)| (d.id.as_str(), payload.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ids[0].as_str(), b"{\"n\":0}".as_slice()),
            (ids[2].as_str(), b"{\"n\":2}".as_slice())
        ]
    );
    let run = RunId::new();
    let done = vec![
        (
            ids[0].clone(),
            DeliveryOutcome {
                status: DeliveryStatus::Processed,
                reason: None,
                runs: vec![run],
            },
        ),
        (
            ids[2].clone(),
            DeliveryOutcome {
                status: DeliveryStatus::Ignored,
                reason: Some("no workflow runs on this event".to_owned()),
                runs: Vec::new(),
            },
        ),
    ];
    assert_eq!(s.finish_deliveries(&done).await.unwrap(), vec![true, true]);
    assert_eq!(
        s.finish_deliveries(&done).await.unwrap(),
        vec![false, false],
        "finished once"
    );
    let first = s.get_delivery(&ids[0]).await.unwrap().unwrap();
    assert_eq!(first.status, DeliveryStatus::Processed);
    assert_eq!(first.runs, vec![run]);
    let third = s.get_delivery(&ids[2]).await.unwrap().unwrap();
    assert_eq!(third.status, DeliveryStatus::Ignored);
    let second = s.get_delivery(&ids[1]).await.unwrap().unwrap();
    assert_eq!(second.status, DeliveryStatus::Accepted, "b's to finish");
}

/// Runs created together are numbered in order and committed together: when one of them
/// cannot be created (its project is gone), none is.
async fn runs_of_a_batch_are_created_all_or_none(h: &Harness) {
    let s = &h.store;
    let p = s.create_project("many", "/srv/many").await.unwrap();
    let id = p.project.id;
    let runs = s
        .create_runs(vec![
            new_run(id, "ci.yml", Vec::new()),
            new_run(id, "ci.yml", Vec::new()),
            new_run(id, "other.yml", Vec::new()),
        ])
        .await
        .unwrap();
    let numbers: Vec<i64> = runs.iter().map(|r| r.run_number).collect();
    assert_eq!(numbers, vec![1, 2, 1]);
    let missing = kiln_core::ids::ProjectId::new();
    let refused = s
        .create_runs(vec![
            new_run(id, "ci.yml", Vec::new()),
            new_run(missing, "ci.yml", Vec::new()),
        ])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let listed = s
        .list_runs(&kiln_store::RunFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 3, "nothing of the refused batch was kept");
}

/// Old bodies go once their deliveries are done with; waiting deliveries and recent ones
/// keep theirs, and every row stays listed with its size.
async fn old_payloads_are_pruned_once_processed(h: &Harness) {
    let s = &h.store;
    let p = s.create_project("prune", "/srv/prune").await.unwrap();
    let mut ids = Vec::new();
    for (i, status) in [
        DeliveryStatus::Accepted,
        DeliveryStatus::Ignored,
        DeliveryStatus::Failed,
    ]
    .into_iter()
    .enumerate()
    {
        let Recorded::New(d) = s
            .record_delivery(&NewDelivery {
                project: p.project.id,
                provider: HookProvider::Github,
                delivery: format!("prune-{i}"),
                event: "push".to_owned(),
                status,
                reason: None,
                payload: b"{\"big\":true}".to_vec(),
                claim: None,
            })
            .await
            .unwrap()
        else {
            panic!("new")
        };
        ids.push(d.id);
    }
    let long_ago = jiff::Timestamp::from_second(1_000_000_000).unwrap();
    assert_eq!(
        s.prune_delivery_payloads(long_ago).await.unwrap(),
        0,
        "all recent"
    );
    let later = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(60))
        .unwrap();
    assert_eq!(s.prune_delivery_payloads(later).await.unwrap(), 2);
    assert_eq!(s.prune_delivery_payloads(later).await.unwrap(), 0, "once");
    let payload = |id: String| async move { s.delivery_payload(&id).await.unwrap().unwrap() };
    assert_eq!(
        payload(ids[0].clone()).await,
        b"{\"big\":true}",
        "still waiting"
    );
    assert!(payload(ids[1].clone()).await.is_empty());
    assert!(payload(ids[2].clone()).await.is_empty());
    let listed = s.list_deliveries(p.project.id, 10).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|d| d.size == 12), "sizes stay");
}

async fn a_large_payload_is_stored_compressed_and_read_back_whole(h: &Harness) {
    let s = &h.store;
    let p = s.create_project("big", "/srv/big").await.unwrap();
    let commits: Vec<String> = (0..60)
        .map(|i| format!(r#"{{"id":"{i:040}","message":"change {i}","added":["src/{i}.rs"]}}"#))
        .collect();
    let payload = format!(
        r#"{{"ref":"refs/heads/main","commits":[{}]}}"#,
        commits.join(",")
    );
    let Recorded::New(d) = s
        .record_delivery(&NewDelivery {
            project: p.project.id,
            provider: HookProvider::Github,
            delivery: "big-1".to_owned(),
            event: "push".to_owned(),
            status: DeliveryStatus::Accepted,
            reason: None,
            payload: payload.clone().into_bytes(),
            claim: None,
        })
        .await
        .unwrap()
    else {
        panic!("new")
    };
    assert_eq!(
        d.size,
        i64::try_from(payload.len()).unwrap(),
        "the size received"
    );
    assert_eq!(
        s.delivery_payload(&d.id).await.unwrap().unwrap(),
        payload.as_bytes()
    );
    let now = jiff::Timestamp::now();
    let until = now
        .checked_add(jiff::SignedDuration::from_secs(60))
        .unwrap();
    let claimed = s
        .claim_deliveries(std::slice::from_ref(&d.id), "me/1", "me/", now, until)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].1,
        payload.as_bytes(),
        "claimed with the whole payload"
    );
}

/// A run started by a webhook delivery stores the delivery's id, not a copy of its body,
/// and reads the body back as its `github.event`; the body then outlives the retention
/// that drops the bodies of deliveries that started nothing.
async fn a_run_reads_its_event_from_the_delivery_that_started_it(h: &Harness) {
    let s = &h.store;
    let p = s.create_project("ref", "/srv/ref").await.unwrap();
    let commits: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"id":"{i:040}","message":"change {i}"}}"#))
        .collect();
    // Whitespace and key order as the sender wrote them.
    let body = format!(
        "{{ \"ref\": \"refs/heads/main\",\n  \"commits\": [{}] }}",
        commits.join(",")
    );
    let record = |delivery: &'static str, status| NewDelivery {
        project: p.project.id,
        provider: HookProvider::Github,
        delivery: delivery.to_owned(),
        event: "push".to_owned(),
        status,
        reason: None,
        payload: body.clone().into_bytes(),
        claim: None,
    };
    let Recorded::New(started) = s
        .record_delivery(&record("ref-1", DeliveryStatus::Accepted))
        .await
        .unwrap()
    else {
        panic!("new")
    };
    let Recorded::New(ignored) = s
        .record_delivery(&record("ref-2", DeliveryStatus::Ignored))
        .await
        .unwrap()
    else {
        panic!("new")
    };
    let mut new = new_run(p.project.id, "ci.yml", Vec::new());
    new.context.payload =
        Some(kiln_store::PayloadText::of_json_text(&body).of_delivery(&started.id));
    new.context
        .github
        .insert("actor".to_owned(), serde_json::json!("octocat"));
    let run = s.create_run(new).await.unwrap();
    s.finish_deliveries(&[(
        started.id.clone(),
        DeliveryOutcome {
            status: DeliveryStatus::Processed,
            reason: None,
            runs: vec![run.id],
        },
    )])
    .await
    .unwrap();

    let read = |id| async move { s.run_context(id).await.unwrap().unwrap() };
    let context = read(run.id).await;
    assert_eq!(
        context.payload.as_ref().unwrap().as_str(),
        body,
        "byte for byte"
    );
    assert_eq!(context.github["actor"], "octocat");
    // Stored as the delivery's id: the run's exported context holds no copy of the body.
    let page = s
        .export_page(kiln_store::ExportTable::Runs, None, 10)
        .await
        .unwrap();
    let stored = serde_json::to_string(&page.rows[0]["context"]).unwrap();
    assert!(stored.contains(&started.id), "{stored}");
    assert!(!stored.contains("change 1"), "{stored}");

    // A run made from that context (a re-run) refers to the same body.
    let mut again = new_run(p.project.id, "ci.yml", Vec::new());
    again.context = context;
    let again = s.create_run(again).await.unwrap();
    assert_eq!(read(again.id).await.payload.unwrap().as_str(), body);

    // Past the retention, only the body that started nothing goes.
    let later = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(60))
        .unwrap();
    assert_eq!(s.prune_delivery_payloads(later).await.unwrap(), 1);
    assert!(
        s.delivery_payload(&ignored.id)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.delivery_payload(&started.id).await.unwrap().unwrap(),
        body.as_bytes()
    );
    assert_eq!(read(run.id).await.payload.unwrap().as_str(), body);
}
