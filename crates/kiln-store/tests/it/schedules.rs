//! Schedules: a sync makes the stored entries what the files say (a stopped schedule stays
//! stopped), next fires count from the given time, and a fire is claimed exactly once however
//! many store handles (replicas) race for it.

use jiff::Timestamp;
use kiln_core::ids::RunId;
use kiln_core::workflow::CatchUp;
use kiln_proto::{ScheduleState, ScheduleView};
use kiln_store::{FireKind, ScheduleDef, Store, SyncReport};

use crate::harness::{Harness, both_backends};

both_backends!(
    sync_stop_start_and_remove,
    a_fire_is_claimed_once_and_moves_the_schedule_on,
    two_replicas_racing_claim_a_fire_once,
    a_lost_claim_leaves_the_database_writable_for_another_replica,
    archived_projects_do_not_fire,
);

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn def(workflow: &str, index: u32, cron: &str, zone: &str) -> ScheduleDef {
    ScheduleDef {
        workflow: workflow.to_owned(),
        index,
        cron: cron.to_owned(),
        timezone: zone.to_owned(),
        catch_up: CatchUp::One,
    }
}

async fn one(s: &Store, workflow: &str, index: u32) -> ScheduleView {
    s.list_schedules(None)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.workflow == workflow && v.index == index)
        .unwrap_or_else(|| panic!("no schedule {workflow}[{index}]"))
}

async fn sync_stop_start_and_remove(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("sched", "/tmp/sched").await.unwrap();
    let now = t("2026-03-28T12:00:00Z");
    let defs = vec![
        def("wf/a.yml", 0, "30 2 * * *", "Europe/Berlin"),
        def("wf/a.yml", 1, "*/5 * * * *", "UTC"),
    ];
    let r = s.sync_schedules(p.id, &defs, &[], now).await.unwrap();
    assert_eq!(
        r,
        SyncReport {
            added: 2,
            changed: 0,
            removed: 0
        }
    );

    let list = s.list_schedules(None).await.unwrap();
    assert_eq!(list.len(), 2);
    // Soonest first: every 5 minutes, then the nightly one (in the spring-forward gap, so
    // at 03:00 CEST).
    assert_eq!(list[0].cron, "*/5 * * * *");
    assert_eq!(list[0].next_fire_at, Some(t("2026-03-28T12:05:00Z")));
    assert_eq!(list[1].next_fire_at, Some(t("2026-03-29T01:00:00Z")));
    assert_eq!(list[1].timezone, "Europe/Berlin");
    assert_eq!(list[1].project_name, "sched");
    assert_eq!(list[1].catch_up, "one");
    assert_eq!(list[1].state, ScheduleState::Active);
    let nightly = list[1].clone();
    assert_eq!(
        s.get_schedule(nightly.id).await.unwrap(),
        Some(nightly.clone())
    );
    assert_eq!(
        s.next_schedule_fire().await.unwrap(),
        Some(t("2026-03-28T12:05:00Z"))
    );

    // The same files later: nothing moves (a pending fire is not pushed back).
    let later = t("2026-03-28T13:00:00Z");
    let r = s.sync_schedules(p.id, &defs, &[], later).await.unwrap();
    assert_eq!(r, SyncReport::default());
    assert_eq!(
        one(s, "wf/a.yml", 1).await.next_fire_at,
        Some(t("2026-03-28T12:05:00Z"))
    );

    // Stopped: no next fire, and a sync does not start it again.
    let stopped = s.stop_schedule(nightly.id, later).await.unwrap().unwrap();
    assert_eq!(
        (stopped.state, stopped.next_fire_at),
        (ScheduleState::Stopped, None)
    );
    s.sync_schedules(p.id, &defs, &[], later).await.unwrap();
    let again = one(s, "wf/a.yml", 0).await;
    assert_eq!(
        (again.id, again.state),
        (nightly.id, ScheduleState::Stopped)
    );
    // Listed last, after the active one.
    assert_eq!(s.list_schedules(None).await.unwrap()[1].id, nightly.id);
    // A changed pattern keeps it stopped too.
    let mut changed = defs.clone();
    changed[0].cron = "45 2 * * *".to_owned();
    let r = s.sync_schedules(p.id, &changed, &[], later).await.unwrap();
    assert_eq!(r.changed, 1);
    let again = one(s, "wf/a.yml", 0).await;
    assert_eq!(
        (again.cron.as_str(), again.state),
        ("45 2 * * *", ScheduleState::Stopped)
    );

    // Started: counts from the given time (2026-04-01 02:45 CEST = 00:45Z).
    let started = s
        .start_schedule(nightly.id, t("2026-04-01T00:00:00Z"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(started.state, ScheduleState::Active);
    assert_eq!(started.next_fire_at, Some(t("2026-04-01T00:45:00Z")));

    // catch-up alone changes without moving the next fire.
    changed[0].catch_up = CatchUp::None;
    let r = s.sync_schedules(p.id, &changed, &[], later).await.unwrap();
    assert_eq!(r.changed, 1);
    let again = one(s, "wf/a.yml", 0).await;
    assert_eq!(again.catch_up, "none");
    assert_eq!(again.next_fire_at, Some(t("2026-04-01T00:45:00Z")));

    // A file that could not be read keeps its schedules; one that lost an entry loses it.
    let r = s
        .sync_schedules(p.id, &[], &["wf/a.yml".to_owned()], later)
        .await
        .unwrap();
    assert_eq!(r, SyncReport::default());
    assert_eq!(s.list_schedules(Some(p.id)).await.unwrap().len(), 2);
    let r = s
        .sync_schedules(p.id, &changed[..1], &[], later)
        .await
        .unwrap();
    assert_eq!(r.removed, 1);
    let list = s.list_schedules(Some(p.id)).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, nightly.id);
    // Back in the file: the same id again, counting from now.
    let r = s.sync_schedules(p.id, &changed, &[], later).await.unwrap();
    assert_eq!(r.added, 1);
    assert_eq!(
        one(s, "wf/a.yml", 1).await.next_fire_at,
        Some(t("2026-03-28T13:05:00Z"))
    );
    // Unknown ids.
    let unknown = kiln_proto::ScheduleId::new();
    assert!(s.get_schedule(unknown).await.unwrap().is_none());
    assert!(s.stop_schedule(unknown, later).await.unwrap().is_none());
    assert!(s.start_schedule(unknown, later).await.unwrap().is_none());
}

async fn a_fire_is_claimed_once_and_moves_the_schedule_on(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("claims", "/tmp/claims").await.unwrap();
    let start = t("2026-05-01T10:00:30Z");
    s.sync_schedules(p.id, &[def("wf/m.yml", 0, "* * * * *", "UTC")], &[], start)
        .await
        .unwrap();
    assert!(s.due_schedules(start, 10).await.unwrap().is_empty());
    let now = t("2026-05-01T10:01:00.200Z");
    let due = s.due_schedules(now, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let fire = due[0].next_fire_at.unwrap();
    assert_eq!(fire, t("2026-05-01T10:01:00Z"));
    let next_at = t("2026-05-01T10:02:00Z");
    let next = Some(next_at);
    let id = s
        .claim_fire(due[0].id, fire, next, FireKind::Run, "a", now)
        .await
        .unwrap()
        .expect("the first claim wins");
    // The same fire again (a second tick, a replica that read the due list earlier): lost.
    assert!(
        s.claim_fire(due[0].id, fire, next, FireKind::Run, "b", now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.due_schedules(now, 10).await.unwrap().is_empty());
    let run = RunId::new();
    s.finish_fire(id, Ok(run)).await.unwrap();
    let v = s.get_schedule(due[0].id).await.unwrap().unwrap();
    assert_eq!(
        (v.next_fire_at, v.last_fired_at, v.last_run),
        (next, Some(fire), Some(run))
    );
    let fires = s.list_fires(v.id, 10).await.unwrap();
    assert_eq!(fires.len(), 1);
    assert_eq!(
        (
            fires[0].fire_at,
            fires[0].outcome.as_str(),
            fires[0].run,
            fires[0].claimed_by.as_str()
        ),
        (fire, "started", Some(run), "a")
    );

    // A skipped fire moves the schedule on without counting as fired.
    let now = t("2026-05-01T10:30:00Z");
    let skip = s
        .claim_fire(
            v.id,
            next_at,
            Some(t("2026-05-01T10:31:00Z")),
            FireKind::Skip,
            "a",
            now,
        )
        .await
        .unwrap();
    assert!(skip.is_some());
    let v = s.get_schedule(v.id).await.unwrap().unwrap();
    assert_eq!(v.last_fired_at, Some(fire));
    assert_eq!(s.list_fires(v.id, 10).await.unwrap()[0].outcome, "skipped");

    // A failed start is recorded with its reason.
    let f = s
        .claim_fire(
            v.id,
            t("2026-05-01T10:31:00Z"),
            None,
            FireKind::Run,
            "a",
            now,
        )
        .await
        .unwrap()
        .unwrap();
    s.finish_fire(f, Err("no workflow")).await.unwrap();
    let fires = s.list_fires(v.id, 1).await.unwrap();
    assert_eq!(
        (fires[0].outcome.as_str(), fires[0].error.as_deref()),
        ("failed", Some("no workflow"))
    );

    // A stopped schedule cannot be claimed.
    let p2 = s
        .sync_schedules(p.id, &[def("wf/m.yml", 0, "* * * * *", "UTC")], &[], now)
        .await;
    assert!(p2.is_ok());
    s.stop_schedule(v.id, now).await.unwrap();
    assert!(
        s.claim_fire(
            v.id,
            t("2026-05-01T10:32:00Z"),
            None,
            FireKind::Run,
            "a",
            now
        )
        .await
        .unwrap()
        .is_none()
    );
}

/// The "two replicas" test: two store handles (two pools) on one database race to claim the
/// same fires; each fire is won exactly once.
async fn two_replicas_racing_claim_a_fire_once(h: &Harness) {
    let a = h.store.clone();
    let b = h.reopen().await;
    let p = a.upsert_project("race", "/tmp/race").await.unwrap();
    let defs: Vec<ScheduleDef> = (0..5)
        .map(|i| def("wf/r.yml", i, "* * * * *", "UTC"))
        .collect();
    let start = t("2026-05-01T10:00:30Z");
    a.sync_schedules(p.id, &defs, &[], start).await.unwrap();
    let mut won = 0;
    for minute in 1..=4i64 {
        let now = t("2026-05-01T10:00:00Z")
            .checked_add(jiff::SignedDuration::from_secs(minute * 60 + 1))
            .unwrap();
        // Both replicas read the due list, then race every claim.
        let (due_a, due_b) = tokio::join!(a.due_schedules(now, 10), b.due_schedules(now, 10));
        let (due_a, due_b) = (due_a.unwrap(), due_b.unwrap());
        assert_eq!(due_a.len(), 5);
        assert_eq!(due_b.len(), 5);
        let mut tasks = Vec::new();
        for (store, due, owner) in [(a.clone(), due_a, "a"), (b.clone(), due_b, "b")] {
            for v in due {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let fire = v.next_fire_at.unwrap();
                    let next = fire
                        .checked_add(jiff::SignedDuration::from_secs(60))
                        .unwrap();
                    store
                        .claim_fire(v.id, fire, Some(next), FireKind::Run, owner, now)
                        .await
                        .unwrap()
                        .map(|_| (v.id, fire))
                }));
            }
        }
        let mut winners = Vec::new();
        for t in tasks {
            if let Some(w) = t.await.unwrap() {
                winners.push(w);
            }
        }
        winners.sort();
        let before = winners.len();
        winners.dedup();
        assert_eq!(before, winners.len(), "a fire was won twice");
        assert_eq!(
            winners.len(),
            5,
            "every due fire is won once (minute {minute})"
        );
        won += winners.len();
    }
    assert_eq!(won, 20);
    for v in a.list_schedules(None).await.unwrap() {
        let fires = b.list_fires(v.id, 100).await.unwrap();
        assert_eq!(fires.len(), 4, "one fire a minute for {}", v.index);
    }
}

/// A replica that loses a claim gives its write transaction back at once: before, the lost
/// claim's transaction stayed open on the writer until its next write, holding SQLite's file
/// lock, and the other replica's next write failed with "database is locked" after its busy
/// timeout.
async fn a_lost_claim_leaves_the_database_writable_for_another_replica(h: &Harness) {
    let a = h.store.clone();
    let b = h.reopen().await;
    let p = a.upsert_project("lost", "/tmp/lost").await.unwrap();
    a.sync_schedules(
        p.id,
        &[def("wf/l.yml", 0, "* * * * *", "UTC")],
        &[],
        t("2026-05-01T10:00:30Z"),
    )
    .await
    .unwrap();
    let now = t("2026-05-01T10:01:01Z");
    let due = a.due_schedules(now, 10).await.unwrap();
    let fire = due[0].next_fire_at.unwrap();
    let second = t("2026-05-01T10:02:00Z");
    let next = Some(second);
    assert!(
        b.claim_fire(due[0].id, fire, next, FireKind::Run, "b", now)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        a.claim_fire(due[0].id, fire, next, FireKind::Run, "a", now)
            .await
            .unwrap()
            .is_none(),
        "the fire is b's"
    );
    // b writes again while a stays idle.
    b.upsert_project("after", "/tmp/after").await.unwrap();
    let later = t("2026-05-01T10:02:01Z");
    assert!(
        b.claim_fire(due[0].id, second, None, FireKind::Run, "b", later)
            .await
            .unwrap()
            .is_some()
    );
}

async fn archived_projects_do_not_fire(h: &Harness) {
    let s = &h.store;
    let rec = s.create_project("gone", "/tmp/gone").await.unwrap();
    let id = rec.project.id;
    let start = t("2026-05-01T10:00:30Z");
    s.sync_schedules(id, &[def("wf/g.yml", 0, "* * * * *", "UTC")], &[], start)
        .await
        .unwrap();
    let now = t("2026-05-01T10:05:00Z");
    assert_eq!(s.due_schedules(now, 10).await.unwrap().len(), 1);
    s.archive_project(id).await.unwrap();
    assert!(s.due_schedules(now, 10).await.unwrap().is_empty());
    assert!(s.list_schedules(None).await.unwrap().is_empty());
    assert_eq!(s.next_schedule_fire().await.unwrap(), None);
}
