//! The schedule runner against a real SQLite store and engine, driven with a given clock: a
//! `* * * * *` schedule fires without waiting a real minute, a restart does not fire again,
//! and missed fires follow `catch-up:`.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kiln_core::ids::RunStatus;
use kiln_proto::ScheduleState;
use kiln_store::Store;

use super::{FireOutcome, Scheduler};
use crate::{Engine, EngineConfig};

/// The job fails unless the run's `github.event.schedule` is the pattern.
const EVERY_MINUTE: &str = r#"on:
  schedule:
    - cron: "* * * * *"
jobs:
  a:
    runs-on: x
    steps:
      - run: test "${{ github.event_name }}/${{ github.event.schedule }}" = "schedule/* * * * *"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    src: std::path::PathBuf,
    data: std::path::PathBuf,
    store: Store,
    engine: Engine,
}

impl Fixture {
    async fn new(workflow: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join(".kiln/workflows")).unwrap();
        std::fs::write(src.join(".kiln/workflows/cron.yml"), workflow).unwrap();
        let data = dir.path().join("data");
        let store = Store::open_sqlite(&data).await.unwrap();
        store
            .upsert_project("p", &src.to_string_lossy())
            .await
            .unwrap();
        let engine = start(&store, &data).await;
        Fixture {
            _dir: dir,
            src,
            data,
            store,
            engine,
        }
    }

    fn scheduler(&self) -> Scheduler {
        Scheduler::new(self.engine.clone(), self.store.clone(), &self.data)
    }
}

async fn start(store: &Store, data: &std::path::Path) -> Engine {
    Engine::start(
        store.clone(),
        EngineConfig {
            slots: 1,
            data_dir: data.to_path_buf(),
            max_attempts: 1,
            sandbox: crate::packages::Sandbox::off(),
            fetch_egress: None,
            lease_ttl: crate::dispatch::LEASE_TTL,
            artifacts: None,
        },
    )
    .await
    .unwrap()
    .0
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn plus(at: Timestamp, secs: i64) -> Timestamp {
    at.checked_add(SignedDuration::from_secs(secs)).unwrap()
}

async fn wait_terminal(store: &Store, run: kiln_core::ids::RunId) -> RunStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = store.get_run(run).await.unwrap().unwrap();
        if r.status.is_terminal() {
            return r.status;
        }
        assert!(Instant::now() < deadline, "run {run} did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_minute_schedule_fires_once_and_not_again_after_a_restart() {
    let f = Fixture::new(EVERY_MINUTE).await;
    let s = f.scheduler();
    let t0 = t("2026-05-01T10:00:30Z");
    s.sync_all(t0).await.unwrap();
    let list = f.store.list_schedules(None).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].workflow, ".kiln/workflows/cron.yml");
    assert_eq!(list[0].next_fire_at, Some(t("2026-05-01T10:01:00Z")));

    // Nothing is due before the minute.
    assert!(s.tick(plus(t0, 20)).await.unwrap().is_empty());
    let fired = s.tick(t("2026-05-01T10:01:00.500Z")).await.unwrap();
    assert_eq!(fired.len(), 1);
    let FireOutcome::Started(run) = fired[0].outcome.clone() else {
        panic!("expected a started run, got {fired:?}");
    };
    assert_eq!(fired[0].fire_at, t("2026-05-01T10:01:00Z"));
    let stored = f.store.get_run(run).await.unwrap().unwrap();
    assert_eq!(stored.event, "schedule");
    assert_eq!(stored.workflow, ".kiln/workflows/cron.yml");
    // The step checks github.event.schedule.
    assert_eq!(wait_terminal(&f.store, run).await, RunStatus::Success);
    let v = f.store.get_schedule(list[0].id).await.unwrap().unwrap();
    assert_eq!(v.next_fire_at, Some(t("2026-05-01T10:02:00Z")));
    assert_eq!(v.last_run, Some(run));

    // The same tick again, and a restarted server's (a new engine and scheduler on the same
    // store, a periodic re-sync included): the fire is not run twice.
    assert!(
        s.tick(t("2026-05-01T10:01:00.500Z"))
            .await
            .unwrap()
            .is_empty()
    );
    f.engine.shutdown(Duration::from_secs(5)).await.unwrap();
    let engine = start(&f.store, &f.data).await;
    let s2 = Scheduler::new(engine.clone(), f.store.clone(), &f.data);
    s2.sync_all(t("2026-05-01T10:01:10Z")).await.unwrap();
    assert!(s2.tick(t("2026-05-01T10:01:10Z")).await.unwrap().is_empty());
    let fires = f.store.list_fires(list[0].id, 10).await.unwrap();
    assert_eq!(fires.len(), 1);
    // The next minute fires on the new server.
    let fired = s2.tick(t("2026-05-01T10:02:01Z")).await.unwrap();
    assert!(
        matches!(fired[0].outcome, FireOutcome::Started(_)),
        "{fired:?}"
    );
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_fires_run_once_or_not_at_all() {
    let both = r#"on:
  schedule:
    - cron: "*/5 * * * *"
    - cron: "*/5 * * * *"
      catch-up: none
jobs:
  a:
    runs-on: x
    steps: [{run: 'true'}]
"#;
    let f = Fixture::new(both).await;
    let s = f.scheduler();
    let t0 = t("2026-05-01T10:00:30Z");
    s.sync_all(t0).await.unwrap();
    // The server was down for an hour: twelve fires missed.
    let back = t("2026-05-01T11:02:00Z");
    let fired = s.tick(back).await.unwrap();
    assert_eq!(fired.len(), 2, "{fired:?}");
    let mut started = 0;
    let mut skipped = 0;
    for fire in &fired {
        assert_eq!(fire.fire_at, t("2026-05-01T10:05:00Z"));
        match &fire.outcome {
            FireOutcome::Started(run) => {
                started += 1;
                wait_terminal(&f.store, *run).await;
            }
            FireOutcome::Skipped => skipped += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((started, skipped), (1, 1));
    // Both moved on past now; nothing else is due.
    for v in f.store.list_schedules(None).await.unwrap() {
        assert_eq!(v.next_fire_at, Some(t("2026-05-01T11:05:00Z")));
    }
    assert!(s.tick(back).await.unwrap().is_empty());
    // On time, both run.
    let fired = s.tick(t("2026-05-01T11:05:02Z")).await.unwrap();
    assert!(
        fired
            .iter()
            .all(|f| matches!(f.outcome, FireOutcome::Started(_))),
        "{fired:?}"
    );
    for fire in fired {
        if let FireOutcome::Started(run) = fire.outcome {
            wait_terminal(&f.store, run).await;
        }
    }
    f.engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_schedules_stay_stopped_and_removed_entries_go() {
    let f = Fixture::new(EVERY_MINUTE).await;
    let s = f.scheduler();
    let t0 = t("2026-05-01T10:00:30Z");
    s.sync_all(t0).await.unwrap();
    let id = f.store.list_schedules(None).await.unwrap()[0].id;
    f.store.stop_schedule(id, t0).await.unwrap();
    s.sync_all(plus(t0, 60)).await.unwrap();
    let v = f.store.get_schedule(id).await.unwrap().unwrap();
    assert_eq!(v.state, ScheduleState::Stopped);
    assert!(s.tick(plus(t0, 120)).await.unwrap().is_empty());

    // A broken edit keeps the schedule; removing the entry removes it.
    let file = f.src.join(".kiln/workflows/cron.yml");
    std::fs::write(&file, "on: [push\n").unwrap();
    s.sync_all(plus(t0, 180)).await.unwrap();
    assert_eq!(f.store.list_schedules(None).await.unwrap().len(), 1);
    std::fs::write(
        &file,
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    )
    .unwrap();
    s.sync_all(plus(t0, 240)).await.unwrap();
    assert!(f.store.list_schedules(None).await.unwrap().is_empty());
    f.engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The hook a server gives (it fetches a git project's mirror there) runs before each
/// scheduled run, with the run's project, and only for fires that run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_before_run_hook_runs_before_each_scheduled_run() {
    let f = Fixture::new(EVERY_MINUTE).await;
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    let s = f
        .scheduler()
        .with_before_run(std::sync::Arc::new(move |project| {
            let seen = seen.clone();
            Box::pin(async move {
                seen.lock().unwrap().push(project);
            })
        }));
    let t0 = t("2026-05-01T10:00:30Z");
    s.sync_all(t0).await.unwrap();
    assert!(s.tick(plus(t0, 20)).await.unwrap().is_empty());
    assert!(calls.lock().unwrap().is_empty(), "nothing was due");
    let fired = s.tick(t("2026-05-01T10:01:00.500Z")).await.unwrap();
    let FireOutcome::Started(run) = fired[0].outcome.clone() else {
        panic!("expected a started run, got {fired:?}");
    };
    let project = f.store.get_run(run).await.unwrap().unwrap().project;
    assert_eq!(*calls.lock().unwrap(), vec![project]);
    assert_eq!(wait_terminal(&f.store, run).await, RunStatus::Success);
}
