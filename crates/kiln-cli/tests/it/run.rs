//! Runs that succeed, fail, time out, get cancelled.

use std::time::{Duration, Instant};

use kiln_testkit::Project;

use crate::{bin, job, run_json};

#[test]
fn the_bundled_example_runs_green() {
    let p = Project::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let out = p
        .kiln(bin())
        .args(["run"])
        .args([&example])
        .args(["--format", "json"])
        .with_data_dir()
        .output();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let run = out.json();
    assert_eq!(run["status"], "success");
    assert_eq!(run["run_number"], 1);
    assert_eq!(run["run_attempt"], 1);
    // setup + 3 test instances + 2 dynamic build instances + report
    assert_eq!(run["jobs"].as_array().unwrap().len(), 7, "{run:#}");
    assert_eq!(job(&run, "build (linux)")["status"], "success");
    assert_eq!(job(&run, "test (sh, small)")["matrix"]["shell"], "sh");
}

#[test]
fn outputs_cross_jobs_and_exit_code_follows_failure() {
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  produce:
    runs-on: any
    outputs:
      value: ${{ steps.s.outputs.v }}
      multi: ${{ steps.s.outputs.m }}
    steps:
      - id: s
        run: |
          echo "v=forty two" >> "$GITHUB_OUTPUT"
          {
            echo "m<<EOF"
            echo "line 1"
            echo "line 2"
            echo "EOF"
          } >> "$GITHUB_OUTPUT"
  consume:
    needs: produce
    runs-on: any
    steps:
      - run: test "${{ needs.produce.outputs.value }}" = "forty two"
      - run: test "$(printf '%s' "${{ needs.produce.outputs.multi }}" | wc -l)" = 1
      - run: exit 3
      - if: failure()
        id: after
        run: echo "recovered=yes" >> "$GITHUB_OUTPUT"
      - if: success()
        run: echo never
  cleanup:
    needs: consume
    if: always()
    runs-on: any
    steps:
      - run: echo "consume was ${{ needs.consume.result }}"
  skipped:
    needs: consume
    runs-on: any
    steps:
      - run: echo never
"#,
    );
    let out = run_json(&p, &[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let run = out.json();
    assert_eq!(run["status"], "failure");
    assert_eq!(job(&run, "produce")["outputs"]["value"], "forty two");
    assert_eq!(job(&run, "produce")["outputs"]["multi"], "line 1\nline 2");
    let consume = job(&run, "consume");
    assert_eq!(consume["status"], "failure");
    let steps = consume["steps"].as_array().unwrap();
    assert_eq!(steps[0]["status"], "success");
    assert_eq!(steps[2]["status"], "failure");
    assert_eq!(
        steps[3]["status"], "success",
        "if: failure() runs after a failure"
    );
    assert_eq!(steps[3]["outputs"]["recovered"], "yes");
    assert_eq!(steps[4]["status"], "skipped");
    assert_eq!(job(&run, "cleanup")["status"], "success");
    assert_eq!(job(&run, "skipped")["status"], "skipped");

    // The log of the always() job saw the failed result.
    let logs = p
        .kiln(bin())
        .args(["logs", run["id"].as_str().unwrap(), "cleanup"])
        .with_data_dir()
        .output();
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(
        logs.stdout.contains("consume was failure"),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stdout
            .contains("=== cleanup (success) ===\n##[step 1] Run echo \"consume was"),
        "{}",
        logs.stdout
    );
}

#[test]
fn continue_on_error_keeps_the_run_green() {
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  flaky:
    runs-on: any
    continue-on-error: true
    steps:
      - run: exit 1
  steps:
    runs-on: any
    steps:
      - id: bad
        continue-on-error: ${{ 1 == 1 }}
        run: exit 7
      - run: test "${{ steps.bad.outcome }}/${{ steps.bad.conclusion }}" = "failure/success"
"#,
    );
    let out = run_json(&p, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let run = out.json();
    assert_eq!(run["status"], "success");
    assert_eq!(job(&run, "flaky")["status"], "failure");
    assert_eq!(job(&run, "steps")["status"], "success");
}

#[test]
fn dynamic_matrix_from_needs_outputs() {
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  plan:
    runs-on: any
    outputs:
      matrix: ${{ steps.m.outputs.matrix }}
    steps:
      - id: m
        run: echo 'matrix={"os":["a","b","c"],"include":[{"os":"c","extra":"x"}]}' >> "$GITHUB_OUTPUT"
  work:
    needs: plan
    runs-on: any
    strategy:
      matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}
    steps:
      - run: echo "os=${{ matrix.os }} extra=${{ matrix.extra }}"
"#,
    );
    let dry = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--dry-run", "--format", "json"])
        .output();
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let plan = dry.json();
    assert_eq!(plan["jobs"][1]["id"], "work");
    assert!(plan["jobs"][1]["matrix"].is_null(), "{plan:#}");
    assert_eq!(plan["jobs"][0]["matrix"], serde_json::json!({}));

    let out = run_json(&p, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let run = out.json();
    let names: Vec<&str> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plan", "work (a)", "work (b)", "work (c, x)"]);
    assert_eq!(job(&run, "work (c, x)")["matrix"]["extra"], "x");
}

#[test]
fn secrets_are_masked_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("secrets.env");
    std::fs::write(&env_file, "FILE_SECRET=from-the-file-42\n").unwrap();
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  leak:
    runs-on: any
    steps:
      - env:
          T: ${{ secrets.TOKEN }}
        run: |
          echo "token is $T"
          echo "file secret is ${{ secrets.FILE_SECRET }}"
"#,
    );
    let out = run_json(
        &p,
        &[
            "--secret",
            "TOKEN=hunter2-very-secret",
            "--secret-file",
            env_file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let run = out.json();
    let logs = p
        .kiln(bin())
        .args(["logs", run["id"].as_str().unwrap()])
        .with_data_dir()
        .output();
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(logs.stdout.contains("token is ***"), "{}", logs.stdout);
    assert!(
        logs.stdout.contains("file secret is ***"),
        "{}",
        logs.stdout
    );
    assert!(!logs.stdout.contains("hunter2"), "{}", logs.stdout);
    assert!(!logs.stdout.contains("from-the-file-42"), "{}", logs.stdout);
}

fn sleepers(marker: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_timeout_kills_the_grandchild_holding_the_pipe() {
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  slow:
    runs-on: any
    steps:
      - timeout-minutes: 0.03
        run: |
          sleep 317 &
          sleep 317
"#,
    );
    let started = Instant::now();
    let out = run_json(&p, &[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the job hung on the grandchild's pipe"
    );
    let run = out.json();
    assert_eq!(job(&run, "slow")["status"], "timed_out");
    assert_eq!(job(&run, "slow")["steps"][0]["status"], "timed_out");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sleepers("sleep 317"), 0, "a sleeper survived the timeout");
}

#[test]
fn sigint_cancels_and_exits_130() {
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  long:
    runs-on: any
    steps:
      - run: |
          echo started
          sleep 323
  after:
    needs: long
    runs-on: any
    steps:
      - run: echo never
"#,
    );
    let mut cmd = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--format", "json"])
        .with_data_dir()
        .command();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sleepers("sleep 323") == 0 {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(run["status"], "cancelled");
    assert_eq!(job(&run, "long")["status"], "cancelled");
    assert_eq!(job(&run, "after")["status"], "cancelled");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sleepers("sleep 323"), 0);

    // The store says the same afterwards.
    let runs = p
        .kiln(bin())
        .args(["runs", "--format", "json"])
        .with_data_dir()
        .output();
    assert_eq!(runs.json()["runs"][0]["status"], "cancelled");
}

#[test]
fn run_numbers_count_up_and_runs_lists_them() {
    let p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo $GITHUB_RUN_NUMBER\n",
    );
    for _ in 0..2 {
        assert_eq!(run_json(&p, &[]).code, 0);
    }
    let runs = p
        .kiln(bin())
        .args(["runs", "--format", "json"])
        .with_data_dir()
        .output();
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let list = runs.json();
    assert_eq!(list["runs"][0]["run_number"], 2);
    assert_eq!(list["runs"][1]["run_number"], 1);
}

#[test]
fn github_workflows_folder_is_used_when_there_is_no_kiln_folder() {
    let p = Project::new().file(
        ".github/workflows/gh.yml",
        "on: [push]\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n      - run: test -f marker.txt && test \"$CI\" = true && test -n \"$GITHUB_SHA\"\n",
    )
    .file("marker.txt", "x");
    std::fs::remove_dir_all(p.root().join(".kiln")).unwrap();
    let out = run_json(&p, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.json()["workflow"], ".github/workflows/gh.yml");
}

#[test]
fn inputs_are_typed_by_their_declaration() {
    let p = Project::new().workflow(
        "d.yml",
        r#"
on:
  workflow_dispatch:
    inputs:
      debug:
        type: boolean
        default: false
      level:
        type: choice
        options: [low, high]
        default: low
jobs:
  a:
    runs-on: x
    steps:
      - run: test "${{ inputs.debug == true }}/${{ inputs.level }}" = "true/high"
"#,
    );
    let out = run_json(
        &p,
        &[
            "-e",
            "workflow_dispatch",
            "-i",
            "debug=true",
            "-i",
            "level=high",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let bad = run_json(&p, &["-e", "workflow_dispatch", "-i", "level=medium"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("level"), "{}", bad.stderr);
}

#[test]
fn each_job_gets_a_fresh_copy_even_on_a_reused_slot() {
    let p = Project::new()
        .workflow(
            "ci.yml",
            r#"
on: push
jobs:
  dirty:
    runs-on: any
    steps:
      - run: |
          for f in "$GITHUB_OUTPUT" "$GITHUB_ENV" "$GITHUB_PATH" "$GITHUB_STEP_SUMMARY"; do
            test -f "$f" && test ! -s "$f"
          done
          echo changed > data.txt
          echo junk > leak.txt
          mkdir -p build && touch build/out
          echo "stale=1" >> "$GITHUB_OUTPUT"
  check:
    needs: dirty
    runs-on: any
    steps:
      - run: |
          test "$(cat data.txt)" = original
          test ! -e leak.txt
          test ! -e build
          test -f "$GITHUB_OUTPUT" && test ! -s "$GITHUB_OUTPUT"
"#,
        )
        .file("data.txt", "original\n");
    let out = run_json(&p, &["--jobs", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        std::fs::read_to_string(p.root().join("data.txt")).unwrap(),
        "original\n"
    );
}

#[test]
fn a_reused_temp_folder_never_leaks_a_longer_script_or_old_files() {
    // The same step number in the same folder: the second job's shorter script is written
    // over the first one's in place, and must not keep its tail.
    let padding = "#".repeat(300);
    let wf = format!(
        r#"
on: push
jobs:
  long:
    runs-on: any
    steps:
      - run: |
          echo long
          echo kept > "$RUNNER_TEMP/mine"
          # {padding}
          echo "x=1" >> "$GITHUB_OUTPUT"
  short:
    needs: long
    runs-on: any
    steps:
      - run: echo short
      - run: |
          test ! -s "$RUNNER_TEMP/mine"
          test ! -s "$GITHUB_OUTPUT"
"#
    );
    let p = Project::new().workflow("ci.yml", &wf);
    let out = run_json(&p, &["--jobs", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

#[test]
fn fail_fast_cancels_matrix_siblings_and_max_parallel_bounds_them() {
    let lock_dir = tempfile::tempdir().unwrap();
    let lock = lock_dir.path().join("lock");
    let p = Project::new().workflow(
        "ci.yml",
        &r#"
on: push
jobs:
  fast:
    runs-on: x
    strategy:
      matrix:
        n: [1, 2, 3]
    steps:
      - run: |
          if [ "${{ matrix.n }}" = 1 ]; then exit 1; fi
          sleep 331
  serial:
    runs-on: x
    strategy:
      fail-fast: false
      max-parallel: 1
      matrix:
        n: [1, 2, 3]
    steps:
      - run: |
          mkdir "LOCK" || { echo "two instances ran at once"; exit 1; }
          sleep 0.3
          rmdir "LOCK"
"#
        .replace("LOCK", lock.to_str().unwrap()),
    );
    let started = Instant::now();
    let out = run_json(&p, &["--jobs", "4"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "fail-fast did not cancel the sleepers"
    );
    let run = out.json();
    assert_eq!(job(&run, "fast (1)")["status"], "failure");
    assert_eq!(job(&run, "fast (2)")["status"], "cancelled");
    assert_eq!(job(&run, "fast (3)")["status"], "cancelled");
    for n in 1..=3 {
        assert_eq!(
            job(&run, &format!("serial ({n})"))["status"],
            "success",
            "{run:#}"
        );
    }
    assert_eq!(sleepers("sleep 331"), 0);
}

#[test]
fn the_event_file_is_the_payload_jobs_see() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"ref": "refs/heads/feature", "custom": {"x": 42}}"#,
    )
    .unwrap();
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: [push]
jobs:
  a:
    runs-on: x
    steps:
      - run: |
          test "${{ github.event.custom.x }}" = 42
          test "$GITHUB_REF" = refs/heads/feature
          test "${{ github.ref_name }}" = feature
          grep -q '"x":42' "$GITHUB_EVENT_PATH"
  b:
    runs-on: x
    steps:
      - run: grep -q '"x":42' "$GITHUB_EVENT_PATH"
"#,
    );
    let out = run_json(&p, &["--event-file", event.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.json()["ref"], "refs/heads/feature");

    std::fs::write(&event, "{not json").unwrap();
    let bad = run_json(&p, &["--event-file", event.to_str().unwrap()]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("line 1"), "{}", bad.stderr);
}

#[test]
fn jobs_of_a_big_project_are_not_prepared_ahead() {
    // Every job prepared ahead holds a copy of its project: past 2,000 files, a job is only
    // leased when a slot is free for it.
    let mut p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n  b:\n    runs-on: x\n    steps: [{run: 'true'}]\n  c:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    for i in 0..2_050 {
        p = p.file(&format!("src/f{i}.txt"), "x");
    }
    let out = run_json(&p, &["--jobs", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = rt.block_on(async {
        let store = kiln_store::Store::open_sqlite(&p.data_dir()).await.unwrap();
        store.events_after(0, 10_000).await.unwrap()
    });
    // Leases and completions alternate: never two jobs leased at once.
    let mut held = 0;
    for e in &events {
        match e.kind.as_str() {
            "job.leased" => {
                held += 1;
                assert_eq!(held, 1, "two leases at once: {events:#?}");
            }
            "job.completed" => held -= 1,
            _ => {}
        }
    }
}

/// `kiln run` keeps artifacts in its data dir: a later job downloads what an earlier one
/// uploaded, and the bytes are stored once by their SHA-256.
#[test]
fn artifacts_pass_between_jobs_of_a_local_run() {
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  make:
    runs-on: any
    steps:
      - run: mkdir -p out && printf built > out/app.bin
      - uses: actions/upload-artifact@v4
        with:
          name: app
          path: out/app.bin
  use:
    needs: make
    runs-on: any
    steps:
      - uses: actions/download-artifact@v4
        with:
          name: app
          path: got
      - run: test "$(cat got/app.bin)" = built
"#,
    );
    let out = run_json(&p, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.json()["status"], "success");
    let blobs: Vec<_> = walk(&p.data_dir().join("artifacts"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    assert!(blobs[0].to_string_lossy().contains("sha256"), "{blobs:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
