//! The client commands of issue 4 against a real `kiln serve`: `kiln runs` (the same text and
//! JSON as the local store's, filters), `kiln logs [-f]` (a finished run, one followed while
//! it runs, over the server and on the local store), `kiln status`; and their exit codes: 2
//! for a 4xx (a bad token, an unknown run), 3 for a server that cannot be reached.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kiln_testkit::{Outcome, Project};
use serde_json::Value;

use crate::run_json;
use crate::serve::{Served, kiln, local, run};

const REG: &str =
    "on: push\njobs:\n  r:\n    runs-on: local\n    steps: [{run: 'echo registered'}]\n";

const QUICK: &str = r#"
name: quick
on: workflow_dispatch
jobs:
  hello:
    runs-on: local
    steps:
      - name: greet
        run: echo "quick ran"
      - run: printf 'no newline at the end'
"#;

const BROKEN: &str = r#"
name: broken
on: workflow_dispatch
jobs:
  oops:
    runs-on: local
    steps:
      - run: echo "about to fail"; exit 3
"#;

/// A first job that prints a line every 400 ms, then a second that only starts after it.
/// What `kiln logs` prints of BROKEN's run over the server.
const OOPS: &str = "=== oops (failure) ===\n##[step 1] Run echo \"about to fail\"; exit 3\n\
     about to fail\nError: Process completed with exit code 3.\n";

const SLOW: &str = r#"
name: slow
on: workflow_dispatch
jobs:
  ticker:
    runs-on: local
    steps:
      - run: for i in 1 2 3 4; do echo "tick $i"; sleep 0.4; done
  after:
    needs: ticker
    runs-on: local
    steps:
      - run: echo "after ran"
"#;

/// A project with the workflows above, registered in its data dir by one local run, and a
/// server on that data dir with its admin token. Answers the project's name too.
fn served() -> (Project, Served, String, String) {
    let p = Project::new()
        .workflow("reg.yml", REG)
        .workflow("quick.yml", QUICK)
        .workflow("broken.yml", BROKEN)
        .workflow("slow.yml", SLOW);
    let reg = run_json(&p, &["--workflow", "reg"]);
    assert_eq!(reg.code, 0, "{}\n{}", reg.stdout, reg.stderr);
    let name = p.root().file_name().unwrap().to_string_lossy().into_owned();
    let s = Served::start(&p, &[]);
    let admin = s.admin().unwrap();
    (p, s, admin, name)
}

/// `kiln trigger NAME --workflow WF` (with `--wait` when `wait`): the run's id.
fn trigger(s: &Served, p: &Project, token: &str, name: &str, wf: &str, wait: bool) -> String {
    let mut args = vec!["trigger", name, "--workflow", wf, "--format", "json"];
    if wait {
        args.push("--wait");
    }
    let out = s.call(p, token, &args);
    let json = out.json();
    let run = if wait { &json } else { &json["runs"][0] };
    run["id"].as_str().unwrap().to_owned()
}

fn ids(out: &Outcome) -> Vec<String> {
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn runs_over_the_server_print_what_the_local_store_prints_and_filter() {
    let (p, s, admin, name) = served();
    let quick = trigger(&s, &p, &admin, &name, "quick", true);
    let broken = trigger(&s, &p, &admin, &name, "broken", true);

    let remote = s.call(&p, &admin, &["runs", "--format", "json"]);
    assert_eq!(remote.code, 0, "{}", remote.stderr);
    let json = remote.json();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["runs"], "{json:#}");
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{json:#}");
    assert_eq!(runs[0]["id"], broken.as_str(), "newest first");
    assert_eq!(runs[0]["status"], "failure");
    assert_eq!(runs[1]["id"], quick.as_str());
    for key in [
        "id",
        "project",
        "workflow",
        "run_number",
        "run_attempt",
        "status",
        "event",
        "ref",
        "sha",
        "created_at",
        "started_at",
        "finished_at",
        "jobs",
    ] {
        assert!(runs[0].get(key).is_some(), "no {key} in {:#}", runs[0]);
    }
    // The same store read both ways: the same JSON, the same table.
    let offline = local(&p, &["runs", "--format", "json"]);
    assert_eq!(offline.json(), json);
    let text = s.call(&p, &admin, &["runs"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert_eq!(text.stdout, local(&p, &["runs"]).stdout);
    assert!(text.stdout.starts_with(&broken), "{}", text.stdout);
    assert!(text.stdout.contains("failure"), "{}", text.stdout);

    // Filters, remote and local alike.
    let cases: [(&[&str], Vec<String>); 6] = [
        (&["--status", "failure"], vec![broken.clone()]),
        (&["--workflow", "quick"], vec![quick.clone()]),
        (
            &["--workflow", ".kiln/workflows/broken.yml"],
            vec![broken.clone()],
        ),
        (
            &["--project", &name, "--limit", "2"],
            vec![broken.clone(), quick.clone()],
        ),
        (&["--project", "no-such-project"], vec![]),
        (&["--status", "success", "--workflow", "broken"], vec![]),
    ];
    for (filter, want) in cases {
        let mut args = vec!["runs", "--format", "json"];
        args.extend(filter);
        assert_eq!(ids(&s.call(&p, &admin, &args)), want, "remote {filter:?}");
        assert_eq!(ids(&local(&p, &args)), want, "local {filter:?}");
    }
    assert_eq!(
        ids(&s.call(&p, &admin, &["runs", "--format", "json", "--limit", "0"])).len(),
        3,
        "--limit 0 is all"
    );
    let none = s.call(&p, &admin, &["runs", "--status", "cancelled"]);
    assert_eq!(none.stdout.trim(), "no runs match");
    let bad = s.call(&p, &admin, &["runs", "--status", "finished"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--status"), "{}", bad.stderr);
    assert_eq!(s.stop(), 0);
}

#[test]
fn logs_of_a_finished_run_over_the_server() {
    let (p, s, admin, name) = served();
    let quick = trigger(&s, &p, &admin, &name, "quick", true);
    let broken = trigger(&s, &p, &admin, &name, "broken", true);

    let out = s.call(&p, &admin, &["logs", &quick]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "=== hello (success) ===\n##[step 1] greet\nquick ran\n\
         ##[step 2] Run printf 'no newline at the end'\nno newline at the end\n"
    );
    // The local store says the same, with where each step begins.
    let offline = local(&p, &["logs", &quick]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    assert_eq!(offline.stdout, out.stdout);

    // A prefix of the run, a job by key, name or id prefix.
    let broken_run = local_run(&p, &broken);
    let oops_id = broken_run["jobs"][0]["id"].as_str().unwrap().to_owned();
    for job in ["oops", &oops_id[..30]] {
        let one = s.call(&p, &admin, &["logs", &broken[..13], job]);
        assert_eq!(one.code, 0, "{job}: {}", one.stderr);
        assert_eq!(one.stdout, OOPS);
    }
    // Following a run that has ended prints it all and answers its verdict.
    let followed = s.call(&p, &admin, &["logs", "-f", &broken]);
    assert_eq!(followed.code, 1, "{}", followed.stderr);
    assert_eq!(followed.stdout, OOPS);
    assert!(followed.stderr.contains("failure"), "{}", followed.stderr);

    // Unknown runs and jobs are invalid input.
    let unknown = s.call(&p, &admin, &["logs", "0123456789ab"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("RUN_NOT_FOUND"),
        "{}",
        unknown.stderr
    );
    assert!(
        unknown.stderr.contains("0123456789ab"),
        "{}",
        unknown.stderr
    );
    assert!(unknown.stdout.is_empty());
    let no_job = s.call(&p, &admin, &["logs", &quick, "nope"]);
    assert_eq!(no_job.code, 2, "{}", no_job.stderr);
    assert!(no_job.stderr.contains("hello"), "{}", no_job.stderr);
    let offline = local(&p, &["logs", "0123456789ab"]);
    assert_eq!(offline.code, 2, "{}", offline.stderr);
    assert!(offline.stderr.contains("no run"), "{}", offline.stderr);
    assert_eq!(s.stop(), 0);
}

/// A run of the local store, with its jobs, read with `kiln logs`' own source: the store.
fn local_run(p: &Project, id: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = kiln_store::Store::open_sqlite(&p.data_dir()).await.unwrap();
        let run = store.get_run(id.parse().unwrap()).await.unwrap().unwrap();
        serde_json::to_value(run).unwrap()
    })
}

/// A `kiln logs -f` started in the background: its stdout lines with when each came.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<(Instant, String)>,
    /// Lines taken from `lines` already.
    seen: Vec<(Instant, String)>,
}

impl Follower {
    fn start(p: &Project, args: &[&str]) -> Follower {
        let mut child = kiln(p, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln logs -f");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 30 s) until it has printed `line`.
    fn wait_for(&mut self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.seen.iter().any(|(_, l)| l == line) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(got) => self.seen.push(got),
                Err(_) => panic!("no line `{line}` in {:#?}", self.seen),
            }
        }
    }

    /// Its exit code and every line, once it has ended (within 30 s).
    fn finish(mut self) -> (i32, Instant, Vec<(Instant, String)>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "kiln logs -f did not end");
            thread::sleep(Duration::from_millis(20));
        };
        let ended = Instant::now();
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.lines.iter());
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = err.read_to_string(&mut stderr);
        }
        (code, ended, lines, stderr)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn logs_follow_prints_lines_as_they_come_and_ends_with_the_run() {
    let (p, s, admin, name) = served();
    let slow = trigger(&s, &p, &admin, &name, "slow", false);
    let data_dir = p.data_dir();
    // Over the server, and on the store the server writes to, at the same time.
    let remote = Follower::start(
        &p,
        &[
            "logs", "--follow", &slow, "--server", &s.url, "--token", &admin,
        ],
    );
    let offline = Follower::start(
        &p,
        &[
            "logs",
            "-f",
            &slow,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    );
    for (how, follower) in [("remote", remote), ("local", offline)] {
        let (code, ended, lines, stderr) = follower.finish();
        assert_eq!(code, 0, "{how}: {stderr}");
        let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        let ticks: Vec<&str> = text
            .iter()
            .copied()
            .filter(|l| l.starts_with("tick "))
            .collect();
        assert_eq!(
            ticks,
            ["tick 1", "tick 2", "tick 3", "tick 4"],
            "{how}: {text:#?}"
        );
        assert!(text[0].starts_with("=== ticker ("), "{how}: {text:#?}");
        // The job that started later was picked up, after the first one's lines.
        let after = text.iter().position(|l| *l == "after ran");
        let last_tick = text.iter().position(|l| *l == "tick 4");
        assert!(after > last_tick, "{how}: {text:#?}");
        assert!(
            text.iter().any(|l| l.starts_with("=== after (")),
            "{how}: {text:#?}"
        );
        // Lines came while the run went on, not all at its end.
        let first = lines.iter().find(|(_, l)| l == "tick 1").unwrap().0;
        let fourth = lines.iter().find(|(_, l)| l == "tick 4").unwrap().0;
        assert!(
            fourth.duration_since(first) >= Duration::from_millis(700),
            "{how}: the ticks came {:?} apart",
            fourth.duration_since(first)
        );
        assert!(
            ended.duration_since(first) >= Duration::from_millis(700),
            "{how}"
        );
        assert!(stderr.contains("success"), "{how}: {stderr}");
    }
    // Once it has ended, following prints what `kiln logs` prints.
    let all = s.call(&p, &admin, &["logs", &slow]);
    assert_eq!(
        all.stdout,
        "=== ticker (success) ===\n\
         ##[step 1] Run for i in 1 2 3 4; do echo \"tick $i\"; sleep 0.4; done\n\
         tick 1\ntick 2\ntick 3\ntick 4\n\
         === after (success) ===\n##[step 1] Run echo \"after ran\"\nafter ran\n"
    );
    assert_eq!(
        s.call(&p, &admin, &["logs", "-f", &slow]).stdout,
        all.stdout
    );
    assert_eq!(s.stop(), 0);
}

#[test]
fn logs_follow_waits_for_a_server_that_restarts() {
    let (p, s, admin, name) = served();
    let slow = trigger(&s, &p, &admin, &name, "slow", false);
    let mut follower = Follower::start(
        &p,
        &["logs", "-f", &slow, "--server", &s.url, "--token", &admin],
    );
    follower.wait_for("tick 1");
    // kill -9, then a new server on the same address: it takes the job back and runs it again.
    let listen = s.url.trim_start_matches("http://").to_owned();
    let pid = s.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(s);
    thread::sleep(Duration::from_millis(500));
    let data_dir = p.data_dir();
    let mut cmd = kiln(
        &p,
        &[
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    );
    let s = Served::from_command(&mut cmd);
    let (code, _, lines, stderr) = follower.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("trying again"), "{stderr}");
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    let again = text
        .iter()
        .position(|l| l.starts_with("=== ticker (") && l.ends_with(", attempt 2) ==="))
        .unwrap_or_else(|| panic!("{text:#?}"));
    assert_eq!(
        text[again + 1..]
            .iter()
            .filter(|l| l.starts_with("tick "))
            .count(),
        4,
        "{text:#?}"
    );
    assert_eq!(text.last(), Some(&"after ran"), "{text:#?}");
    assert_eq!(s.stop(), 0);
}

#[test]
fn status_says_the_server_is_up() {
    let p = Project::new();
    let s = Served::start(&p, &[]);
    let admin = s.admin().unwrap();
    let json = s.call(&p, &admin, &["status", "--format", "json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let data = json.json();
    assert_eq!(data["status"], "ok", "{data:#}");
    assert_eq!(data["backend"], "sqlite", "{data:#}");
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"), "{data:#}");
    assert!(data["started_at"].is_string(), "{data:#}");

    let text = s.call(&p, &admin, &["status"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.starts_with(&format!("{}: ok\n", s.url)),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("sqlite"), "{}", text.stdout);

    // The server in the environment, as scripts pass it.
    let out = kiln(&p, &["status"])
        .env("KILN_SERVER", &s.url)
        .env("KILN_TOKEN", &admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without a server there is nothing to ask.
    let none = run(&p, &["status"]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("KILN_SERVER"), "{}", none.stderr);
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_bad_token_is_exit_2_and_an_unreachable_server_exit_3() {
    let p = Project::new();
    let s = Served::start(&p, &[]);
    let commands: [&[&str]; 3] = [&["runs"], &["logs", "0123456789ab"], &["status"]];
    for args in commands {
        let refused = s.call(&p, "kiln_not-a-token", args);
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("UNAUTHORIZED"),
            "{args:?}: {}",
            refused.stderr
        );
        assert!(refused.stdout.is_empty(), "{args:?}: {}", refused.stdout);

        // Nothing listens on port 1.
        let mut all = args.to_vec();
        all.extend(["--server", "http://127.0.0.1:1", "--token", "t"]);
        let unreachable = run(&p, &all);
        assert_eq!(unreachable.code, 3, "{args:?}: {}", unreachable.stderr);
        assert!(
            unreachable.stderr.contains("127.0.0.1:1"),
            "{args:?}: {}",
            unreachable.stderr
        );
    }
    assert_eq!(s.stop(), 0);
}
