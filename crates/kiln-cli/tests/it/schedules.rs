//! `kiln schedule list|stop|start` against a real `kiln serve`: the server reads a project's
//! `on.schedule` entries at start-up, lists them with their next fire, stops and starts one,
//! and answers an unknown id with exit 2.

use std::time::{Duration, Instant};

use kiln_testkit::Project;
use serde_json::Value;

use crate::serve::Served;

const LOCAL_PATHS: (&str, &str) = ("KILN__EGRESS__ALLOW_LOCAL_PATHS", "true");

const NIGHTLY: &str = r#"on:
  schedule:
    - cron: "0 3 * * *"
      timezone: Europe/Berlin
jobs:
  a:
    runs-on: x
    steps: [{run: 'true'}]
"#;

#[test]
fn schedules_are_listed_stopped_and_started() {
    let p = Project::new().workflow("nightly.yml", NIGHTLY);
    let s = Served::start(&p, &[LOCAL_PATHS]);
    let admin = s.admin().unwrap();
    let empty = s.call(&p, &admin, &["schedule", "list"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    let root = p.root().to_string_lossy().into_owned();
    let added = s.call(&p, &admin, &["project", "add", &root]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(s.stop(), 0);

    // A restarted server reads every project's schedules at once.
    let s = Served::start(&p, &[LOCAL_PATHS]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let schedule = loop {
        let out = s.call(&p, &admin, &["schedule", "list", "--format", "json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let list: Value = out.json();
        if let Some(first) = list["schedules"].as_array().and_then(|a| a.first()) {
            break first.clone();
        }
        assert!(Instant::now() < deadline, "no schedule listed: {list}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(schedule["cron"], "0 3 * * *");
    assert_eq!(schedule["timezone"], "Europe/Berlin");
    assert_eq!(schedule["state"], "active");
    assert!(schedule["next_fire_at"].is_string());
    let id = schedule["id"].as_str().unwrap();

    let text = s.call(&p, &admin, &["schedule", "list"]);
    assert!(text.stdout.contains(id), "{}", text.stdout);
    assert!(text.stdout.contains("Europe/Berlin"), "{}", text.stdout);

    let stopped = s.call(&p, &admin, &["schedule", "stop", id, "--format", "json"]);
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    assert_eq!(stopped.json()["state"], "stopped");
    let started = s.call(&p, &admin, &["schedule", "start", id]);
    assert_eq!(started.code, 0, "{}", started.stderr);
    assert!(started.stdout.contains("active"), "{}", started.stdout);

    let unknown = s.call(&p, &admin, &["schedule", "stop", "nope"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("SCHEDULE_NOT_FOUND"),
        "{}",
        unknown.stderr
    );
    assert_eq!(s.stop(), 0);
}
