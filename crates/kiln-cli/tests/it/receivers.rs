//! `kiln receiver add|list|remove` against a real `kiln serve`: the secret is printed once,
//! listings never show it, a bad pattern or URL is exit 2 naming the field.

use kiln_testkit::Project;
use serde_json::Value;

use crate::serve::Served;

const ENV: &[(&str, &str)] = &[
    ("KILN__EGRESS__ALLOW_LOCAL_PATHS", "true"),
    ("KILN__EGRESS__ALLOW_LOOPBACK", "true"),
];

#[test]
fn receivers_are_added_listed_and_removed() {
    let p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    let s = Served::start(&p, ENV);
    let admin = s.admin().unwrap();
    let root = p.root().to_string_lossy().into_owned();
    let added = s.call(&p, &admin, &["project", "add", &root, "--format", "json"]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    let project: Value = added.json();
    let pid = project["id"].as_str().unwrap().to_owned();

    let r = s.call(
        &p,
        &admin,
        &[
            "receiver",
            "add",
            &pid,
            "http://127.0.0.1:9/hook",
            "--events",
            "run.completed,run.failed",
            "--format",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r: Value = r.json();
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
