//! Invalid input: exit 2, a report naming file, line and key, nothing run or stored.

use kiln_testkit::Project;

use crate::{bin, run_json};

fn redact(p: &Project, text: &str) -> String {
    text.replace(&p.root().display().to_string(), "[PROJECT]")
}

#[test]
fn a_broken_workflow_exits_2_listing_every_problem() {
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  a:
    runs-on: x
    needs: [nope]
    steps:
      - run: echo ${{ foo.bar }}
  b:
    runs-on: x
    timeout-minutes: soon
    steps:
      - run: echo hi
"#,
    );
    let out = run_json(&p, &[]);
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.is_empty(),
        "nothing is printed on stdout: {}",
        out.stdout
    );
    let err = redact(&p, &out.stderr);
    assert!(err.contains(".kiln/workflows/ci.yml:6:"), "{err}");
    assert!(err.contains("nope"), "{err}");
    assert!(err.contains("foo"), "{err}");
    assert!(err.contains("timeout-minutes"), "{err}");
    assert!(
        !p.data_dir().join("kiln.db").exists(),
        "nothing is stored for invalid input"
    );
}

#[test]
fn a_remote_action_is_refused_before_anything_runs() {
    let p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: touch ran\n      - uses: actions/setup-node@v4\n",
    );
    let out = run_json(&p, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("ci.yml:7"), "{}", out.stderr);
    assert!(
        out.stderr.contains("actions/setup-node@v4"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("run:"), "{}", out.stderr);
}

#[test]
fn bad_flags_and_names_exit_2() {
    let p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: true\n",
    );
    let unknown_flag = p.kiln(bin()).args(["run", "--no-such-flag"]).output();
    assert_eq!(unknown_flag.code, 2);
    let unknown_wf = run_json(&p, &["--workflow", "deploy"]);
    assert_eq!(unknown_wf.code, 2);
    assert!(
        unknown_wf.stderr.contains("deploy"),
        "{}",
        unknown_wf.stderr
    );
    assert!(
        unknown_wf.stderr.contains("ci.yml"),
        "{}",
        unknown_wf.stderr
    );
    let bad_input = run_json(&p, &["--input", "novalue"]);
    assert_eq!(bad_input.code, 2);
    let bad_event_file = run_json(&p, &["--event-file", "/nonexistent/event.json"]);
    assert_eq!(bad_event_file.code, 2);
    let no_event = run_json(&p, &["--event", "release"]);
    assert_eq!(no_event.code, 2);
    assert!(no_event.stderr.contains("release"), "{}", no_event.stderr);
}

#[test]
fn an_unwritable_data_dir_exits_3() {
    let p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: true\n",
    );
    let blocker = p.root().join("not-a-dir");
    std::fs::write(&blocker, "file").unwrap();
    let out = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--data-dir"])
        .args([&blocker])
        .output();
    assert_eq!(out.code, 3, "{}", out.stderr);
}

#[test]
fn dry_run_lists_jobs_in_declaration_order() {
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  test:
    runs-on: x
    strategy:
      matrix:
        os: [ubuntu, macos]
        rust: ["1.75"]
    steps:
      - run: true
  lint:
    name: Lint ${{ github.event_name }}
    needs: test
    runs-on: x
    steps:
      - uses: some/remote-action@v1
"#,
    );
    let out = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--dry-run", "--format", "json"])
        .output();
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_json_snapshot!(out.json(), @r###"
    {
      "jobs": [
        {
          "workflow": ".kiln/workflows/ci.yml",
          "id": "test",
          "name": "test (ubuntu, 1.75)",
          "needs": [],
          "matrix": {
            "os": "ubuntu",
            "rust": "1.75"
          },
          "labels": [
            "x"
          ]
        },
        {
          "workflow": ".kiln/workflows/ci.yml",
          "id": "test",
          "name": "test (macos, 1.75)",
          "needs": [],
          "matrix": {
            "os": "macos",
            "rust": "1.75"
          },
          "labels": [
            "x"
          ]
        },
        {
          "workflow": ".kiln/workflows/ci.yml",
          "id": "lint",
          "name": "Lint push",
          "needs": [
            "test"
          ],
          "matrix": {},
          "labels": [
            "x"
          ]
        }
      ]
    }
    "###);
}
