//! `kiln receiver add|list|remove` against a real `kiln serve`: the secret is printed once,
//! listings never show it, a bad pattern or URL is exit 2 naming the field.

use kiln_testkit::Project;
use serde_json::Value;

use crate::serve::Served;

const ENV: &[(&str, &str)] = &[
    ("KILN__EGRESS__ALLOW_LOCAL_PATHS", "true"),
    ("KILN__EGRESS__ALLOW_LOOPBACK", "true"),
];

/// Adds `p` as project `app` and a receiver of `events` at port 9 (discard: it refuses every
/// connection): the project's id and the receiver as `receiver add` printed it.
fn project_with_receiver(s: &Served, p: &Project, admin: &str, events: &str) -> (String, Value) {
    let root = p.root().to_string_lossy().into_owned();
    let added = s.call(
        p,
        admin,
        &["project", "add", &root, "--name", "app", "--format", "json"],
    );
    assert_eq!(added.code, 0, "{}", added.stderr);
    let pid = added.json()["id"].as_str().unwrap().to_owned();
    let r = s.call(
        p,
        admin,
        &[
            "receiver",
            "add",
            &pid,
            "http://127.0.0.1:9/hook",
            "--events",
            events,
            "--format",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    (pid, r.json())
}

#[test]
fn receivers_are_added_listed_and_removed() {
    let p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    let s = Served::start(&p, ENV);
    let admin = s.admin().unwrap();
    let (pid, r) = project_with_receiver(&s, &p, &admin, "run.completed,run.failed");
    assert_eq!(
        r["events"],
        serde_json::json!(["run.completed", "run.failed"])
    );
    assert_eq!(
        r["secret"].as_str().unwrap().len(),
        64,
        "a drawn secret, shown once"
    );
    let rid = r["id"].as_str().unwrap().to_owned();

    let text = s.call(&p, &admin, &["receiver", "list", &pid]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains(&rid), "{}", text.stdout);
    assert!(!text.stdout.contains(r["secret"].as_str().unwrap()));

    let bad = s.call(
        &p,
        &admin,
        &[
            "receiver",
            "add",
            &pid,
            "http://127.0.0.1:9/hook",
            "--events",
            "run.done",
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("VALIDATION_FAILED") && bad.stderr.contains("run.done"),
        "{}",
        bad.stderr
    );
    let refused = s.call(
        &p,
        &admin,
        &[
            "receiver",
            "add",
            &pid,
            "http://169.254.169.254/",
            "--events",
            "run.*",
        ],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);

    let removed = s.call(&p, &admin, &["receiver", "remove", &pid, &rid]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let empty = s.call(&p, &admin, &["receiver", "list", &pid, "--format", "json"]);
    assert_eq!(empty.json()["receivers"], serde_json::json!([]));
    let again = s.call(&p, &admin, &["receiver", "remove", &pid, &rid]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert_eq!(s.stop(), 0);
}

/// `kiln serve --notify-*` (here through their `KILN__NOTIFY__*` variables) set how hard the
/// notifier tries: with 2 attempts a second apart, a receiver that refuses connections has
/// its notification `failed` after exactly 2 attempts. A zero is exit 2 naming the flag.
#[test]
fn the_notifier_s_attempts_and_backoff_come_from_serve_flags() {
    let p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    let bad = crate::serve::run(
        &p,
        &["serve", "--listen", "127.0.0.1:0", "--notify-attempts", "0"],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--notify-attempts"), "{}", bad.stderr);
    let bad = crate::serve::run(
        &p,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--notify-backoff",
            "5,0",
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--notify-backoff"), "{}", bad.stderr);

    let mut env = ENV.to_vec();
    env.extend([
        ("KILN__NOTIFY__ATTEMPTS", "2"),
        ("KILN__NOTIFY__BACKOFF", "1"),
        ("KILN__NOTIFY__TIMEOUT", "2"),
    ]);
    let s = Served::start(&p, &env);
    let admin = s.admin().unwrap();
    let (pid, _) = project_with_receiver(&s, &p, &admin, "run.completed");
    let run = s.call(
        &p,
        &admin,
        &[
            "trigger",
            "app",
            "--workflow",
            "ci",
            "--wait",
            "--format",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(kiln_store::Store::open_sqlite(&p.data_dir()))
        .unwrap();
    let project: kiln_core::ids::ProjectId = pid.parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let failed = loop {
        let list = rt.block_on(store.list_notifications(project, 10)).unwrap();
        if let Some(n) = list
            .into_iter()
            .find(|n| n.status == kiln_proto::NotificationStatus::Failed)
        {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the notification did not fail after 2 attempts"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(failed.attempts.len(), 2, "{failed:#?}");
    assert_eq!(s.stop(), 0);
}
