//! `kiln project …` against a real `kiln serve`: a folder added by a relative path (made
//! absolute by the CLI) answering its id, name and absolute webhook URL; a `file://` git
//! project fetched by the server; list, show, update, remove; and the exit codes (2 for what
//! the server refuses, 3 when it cannot be reached).

use std::time::{Duration, Instant};

use kiln_testkit::{GitUpstream, Project};
use serde_json::Value;

use crate::serve::{Served, run};

/// Folders and `file://` sources are refused unless the server allows local paths.
const LOCAL_PATHS: (&str, &str) = ("KILN__EGRESS__ALLOW_LOCAL_PATHS", "true");

#[test]
fn a_folder_project_is_added_listed_changed_and_removed() {
    let p = Project::new();
    let s = Served::start(&p, &[LOCAL_PATHS]);
    let admin = s.admin().unwrap();

    // `project` is relative to the command's folder, p's temporary root.
    let added = s.call(
        &p,
        &admin,
        &["project", "add", "project", "--format", "json"],
    );
    assert_eq!(added.code, 0, "{}", added.stderr);
    let added = added.json();
    let keys: Vec<_> = added.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["id", "name", "hook_url", "secret"]);
    assert_eq!(added["name"], "project");
    assert_eq!(
        added["secret"].as_str().unwrap().len(),
        64,
        "drawn: {added:#}"
    );
    let hook_url = added["hook_url"].as_str().unwrap();
    assert!(
        hook_url.starts_with(&format!("{}/hooks/", s.url)),
        "an absolute webhook URL on the server: {hook_url}"
    );

    let shown = s.call(
        &p,
        &admin,
        &["project", "show", "project", "--format", "json"],
    );
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let shown = shown.json();
    assert!(shown.get("secret").is_none(), "shown once only: {shown:#}");
    assert_eq!(shown["provider"], "github");
    assert_eq!(shown["id"], added["id"]);
    assert_eq!(shown["hook_url"], added["hook_url"]);
    assert_eq!(shown["kind"], "path");
    let root = p.root().canonicalize().unwrap();
    assert_eq!(shown["source"], root.to_str().unwrap(), "sent absolute");

    let rotated = s.call(
        &p,
        &admin,
        &[
            "project",
            "rotate-hook",
            "project",
            "--secret",
            "a-chosen-secret-of-some-length",
            "--new-url",
            "--format",
            "json",
        ],
    );
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let rotated = rotated.json();
    assert_eq!(rotated["secret"], "a-chosen-secret-of-some-length");
    assert_ne!(rotated["hook_url"], added["hook_url"], "a new URL");

    let text = s.call(&p, &admin, &["project", "list"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("project"), "{}", text.stdout);

    let again = s.call(&p, &admin, &["project", "add", "project"]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("PROJECT_EXISTS"), "{}", again.stderr);

    let id = added["id"].as_str().unwrap();
    let renamed = s.call(
        &p,
        &admin,
        &[
            "project", "update", id, "--name", "renamed", "--format", "json",
        ],
    );
    assert_eq!(renamed.code, 0, "{}", renamed.stderr);
    assert_eq!(renamed.json()["name"], "renamed");

    let removed = s.call(&p, &admin, &["project", "remove", "renamed"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let listed = s.call(&p, &admin, &["project", "list", "--format", "json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json()["projects"], Value::Array(Vec::new()));
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_git_project_is_fetched_by_the_server() {
    let p = Project::new();
    let up = GitUpstream::new();
    let head = up.commit(&[("README", "hello")], "first");
    let s = Served::start(&p, &[LOCAL_PATHS]);
    let admin = s.admin().unwrap();

    let added = s.call(
        &p,
        &admin,
        &[
            "project",
            "add",
            &up.url(),
            "--name",
            "up",
            "--format",
            "json",
        ],
    );
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert!(
        added.json()["hook_url"]
            .as_str()
            .unwrap()
            .starts_with(&s.url)
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let out = s.call(&p, &admin, &["project", "show", "up", "--format", "json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v = out.json();
        if v["fetch_status"] != "pending" {
            break v;
        }
        assert!(Instant::now() < deadline, "never fetched: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(shown["fetch_status"], "ok", "{shown:#}");
    assert_eq!(shown["head_sha"], head);
    assert_eq!(shown["default_branch"], "main");
    let again = s.call(&p, &admin, &["project", "fetch", "up"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(s.stop(), 0);
}

#[test]
fn refusals_exit_2_and_an_unreachable_server_exits_3() {
    let p = Project::new();
    // The default egress policy: no folders, no loopback.
    let s = Served::start(&p, &[]);
    let admin = s.admin().unwrap();

    let folder = s.call(&p, &admin, &["project", "add", "project"]);
    assert_eq!(folder.code, 2, "{}", folder.stderr);
    assert!(
        folder.stderr.contains("VALIDATION_FAILED"),
        "{}",
        folder.stderr
    );
    let loopback = s.call(
        &p,
        &admin,
        &["project", "add", "https://127.0.0.1/org/app.git"],
    );
    assert_eq!(loopback.code, 2, "{}", loopback.stderr);
    assert!(loopback.stderr.contains("loopback"), "{}", loopback.stderr);
    let unknown = s.call(&p, &admin, &["project", "show", "nope"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("PROJECT_NOT_FOUND"),
        "{}",
        unknown.stderr
    );
    let nothing = s.call(&p, &admin, &["project", "update", "nope"]);
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
    let listed = s.call(&p, &admin, &["project", "list", "--format", "json"]);
    assert_eq!(listed.json()["projects"], Value::Array(Vec::new()));

    let no_server = run(&p, &["project", "list"]);
    assert_eq!(no_server.code, 2, "{}", no_server.stderr);
    assert!(
        no_server.stderr.contains("--server"),
        "{}",
        no_server.stderr
    );
    assert_eq!(s.stop(), 0);

    let gone = run(
        &p,
        &[
            "project",
            "add",
            "https://example.com/app.git",
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "x",
        ],
    );
    assert_eq!(gone.code, 3, "{}", gone.stderr);
}
