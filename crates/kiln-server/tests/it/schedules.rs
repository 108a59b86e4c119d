//! `/api/v1/schedules` on SQLite and PostgreSQL: the listing with next fires, stop and start
//! (maintainer or admin; stopped survives a re-read of the files), and a `* * * * *`
//! schedule that fires through the server's engine when the schedule runner is ticked with a
//! given time (no test waits a real minute).

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kiln_core::ids::{RunId, RunStatus};
use kiln_engine::schedule::{FireOutcome, Scheduler};
use kiln_proto::Role;
use serde_json::{Value, json};

use crate::harness::Server;

macro_rules! with_engine {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let s = $crate::harness::Server::sqlite_with_engine().await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let s = $crate::harness::Server::postgres_with_engine().await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}

with_engine!(schedules_are_listed_stopped_started_and_fire);

const WORKFLOW: &str = r#"name: nightly
on:
  schedule:
    - cron: "* * * * *"
    - cron: "30 2 * * *"
      timezone: Europe/Berlin
      catch-up: none
jobs:
  a:
    runs-on: local
    steps:
      - run: test "${{ github.event.schedule }}" = "* * * * *"
"#;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

async fn wait_run(s: &Server, run: RunId) -> RunStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = s.store.get_run(run).await.unwrap().unwrap();
        if r.status.is_terminal() {
            return r.status;
        }
        assert!(Instant::now() < deadline, "run stuck: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn by_cron<'a>(list: &'a Value, cron: &str) -> &'a Value {
    list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["cron"] == cron)
        .unwrap_or_else(|| panic!("no schedule {cron} in {list:#}"))
}

async fn schedules_are_listed_stopped_started_and_fire(s: &Server) {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join(".kiln/workflows")).unwrap();
    std::fs::write(src.path().join(".kiln/workflows/nightly.yml"), WORKFLOW).unwrap();
    let project = s
        .store
        .upsert_project("sched", &src.path().to_string_lossy())
        .await
        .unwrap();
    let other = s
        .store
        .upsert_project("other", "/tmp/kiln-no-such-folder")
        .await
        .unwrap();
    let engine = s.engine.clone().expect("a server with an engine");
    let scheduler = Scheduler::new(engine, s.store.clone(), s.data_dir());
    let t0 = t("2026-03-28T12:00:30Z");
    scheduler.sync_all(t0).await.unwrap();

    let list = s.get("/api/v1/schedules", Some(&s.admin)).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let data = list.data();
    assert_eq!(data["schedules"].as_array().unwrap().len(), 2);
    let minutely = by_cron(&data, "* * * * *").clone();
    assert_eq!(minutely["workflow"], ".kiln/workflows/nightly.yml");
    assert_eq!(minutely["index"], 0);
    assert_eq!(minutely["timezone"], "UTC");
    assert_eq!(minutely["catch_up"], "one");
    assert_eq!(minutely["state"], "active");
    assert_eq!(minutely["project"], project.id.to_string());
    assert_eq!(minutely["project_name"], "sched");
    assert_eq!(minutely["next_fire_at"], "2026-03-28T12:01:00Z");
    let nightly = by_cron(&data, "30 2 * * *").clone();
    assert_eq!(nightly["timezone"], "Europe/Berlin");
    assert_eq!(nightly["catch_up"], "none");
    // 02:30 does not happen on 2026-03-29 in Berlin: the first instant after the gap.
    assert_eq!(nightly["next_fire_at"], "2026-03-29T01:00:00Z");
    let id = nightly["id"].as_str().unwrap().to_owned();

    // Reading is for every token; stopping for maintainers and admins.
    let (_, viewer) = s.store.create_token("v", Role::Viewer, None).await.unwrap();
    assert_eq!(s.get("/api/v1/schedules", Some(&viewer)).await.status, 200);
    s.post(&format!("/api/v1/schedules/{id}/stop"), &viewer, &json!({}))
        .await
        .expect_error(403, "FORBIDDEN");
    // A token of another project neither sees nor stops them.
    let (_, foreign) = s
        .store
        .create_token("f", Role::Maintainer, Some(other.id))
        .await
        .unwrap();
    let seen = s.get("/api/v1/schedules", Some(&foreign)).await.data();
    assert_eq!(seen["schedules"], json!([]));
    s.post(
        &format!("/api/v1/schedules/{id}/stop"),
        &foreign,
        &json!({}),
    )
    .await
    .expect_error(404, "SCHEDULE_NOT_FOUND");

    let (_, maintainer) = s
        .store
        .create_token("m", Role::Maintainer, Some(project.id))
        .await
        .unwrap();
    let stopped = s
        .post(
            &format!("/api/v1/schedules/{id}/stop"),
            &maintainer,
            &json!({}),
        )
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text);
    assert_eq!(stopped.data()["state"], "stopped");
    assert_eq!(stopped.data()["next_fire_at"], Value::Null);
    // The files are read again: still stopped, listed last.
    scheduler.sync_all(t0).await.unwrap();
    let data = s.get("/api/v1/schedules", Some(&s.admin)).await.data();
    assert_eq!(by_cron(&data, "30 2 * * *")["state"], "stopped");
    assert_eq!(data["schedules"][1]["id"], id.as_str());
    let started = s
        .post(
            &format!("/api/v1/schedules/{id}/start"),
            &s.admin,
            &json!({}),
        )
        .await;
    assert_eq!(started.status, 200, "{}", started.text);
    assert_eq!(started.data()["state"], "active");
    assert!(started.data()["next_fire_at"].is_string());

    for bad in [uuid::Uuid::now_v7().to_string(), "nope".to_owned()] {
        s.post(
            &format!("/api/v1/schedules/{bad}/start"),
            &s.admin,
            &json!({}),
        )
        .await
        .expect_error(404, "SCHEDULE_NOT_FOUND");
    }

    // The minute comes: one run, event `schedule`, github.event.schedule the pattern.
    let fired = scheduler
        .tick(t0.checked_add(SignedDuration::from_secs(31)).unwrap())
        .await
        .unwrap();
    assert_eq!(fired.len(), 1, "{fired:?}");
    let FireOutcome::Started(run) = fired[0].outcome.clone() else {
        panic!("expected a run, got {fired:?}");
    };
    let shown = s
        .get(&format!("/api/v1/runs/{run}"), Some(&s.admin))
        .await
        .data();
    assert_eq!(shown["event"], "schedule");
    assert_eq!(shown["workflow"], ".kiln/workflows/nightly.yml");
    assert_eq!(wait_run(s, run).await, RunStatus::Success);
    let data = s.get("/api/v1/schedules", Some(&s.admin)).await.data();
    let minutely = by_cron(&data, "* * * * *");
    assert_eq!(minutely["last_fired_at"], "2026-03-28T12:01:00Z");
    assert_eq!(minutely["last_run"], run.to_string());
    assert_eq!(minutely["next_fire_at"], "2026-03-28T12:02:00Z");
    // A second replica ticking at the same time finds nothing to do.
    let again = scheduler
        .tick(t0.checked_add(SignedDuration::from_secs(31)).unwrap())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}
