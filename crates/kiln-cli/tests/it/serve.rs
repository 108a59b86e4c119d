//! `kiln serve` as a real process, and `kiln token` against it and offline: the admin token
//! printed once before the address, preseeded with `KILN_ADMIN_TOKEN`, made offline; the
//! exit codes of client commands (2 for a 4xx, 3 for an unreachable server).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_testkit::{Outcome, Project};

use crate::bin;

/// Variables of kiln's client and server that the test's own environment must not leak in.
const CLIENT_ENV: [&str; 3] = ["KILN_SERVER", "KILN_TOKEN", "KILN_ADMIN_TOKEN"];

/// A `kiln` command in `p`'s folder with a clean environment.
pub(crate) fn kiln(p: &Project, args: &[&str]) -> Command {
    let mut cmd = p.kiln(bin()).args(args).command();
    for var in CLIENT_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs a `kiln` command to the end.
pub(crate) fn run(p: &Project, args: &[&str]) -> Outcome {
    let out = kiln(p, args)
        .stdin(Stdio::null())
        .output()
        .expect("run kiln");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kiln <args…> --data-dir <p's data dir>`: offline, on the local store.
pub(crate) fn local(p: &Project, args: &[&str]) -> Outcome {
    let data_dir = p.data_dir();
    let mut all = args.to_vec();
    all.extend(["--data-dir", data_dir.to_str().unwrap()]);
    run(p, &all)
}

/// `kiln serve --listen <listen> --data-dir <p's data dir>`, not started yet.
fn serve_command(p: &Project, listen: &str) -> Command {
    let data_dir = p.data_dir();
    kiln(
        p,
        &[
            "serve",
            "--listen",
            listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    )
}

/// A running `kiln serve`, killed on drop if the test did not stop it.
pub(crate) struct Served {
    pub(crate) child: Child,
    /// What it printed on stdout up to and including `listening on …`.
    pub(crate) lines: Vec<String>,
    pub(crate) url: String,
}

impl Served {
    /// `kiln serve --listen 127.0.0.1:0 --data-dir <p's data dir>` with `env` set.
    pub(crate) fn start(p: &Project, env: &[(&str, &str)]) -> Served {
        let mut cmd = serve_command(p, "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Served::from_command(&mut cmd)
    }

    /// Starts `cmd` (a `kiln serve …`) and waits for its `listening on` line.
    pub(crate) fn from_command(cmd: &mut Command) -> Served {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut served = Served {
            child,
            lines: Vec::new(),
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with("listening on ");
                    served.lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => panic!(
                    "kiln serve printed no `listening on` line; stdout so far: {:?}",
                    served.lines
                ),
            }
        }
        let last = served.lines.last().unwrap();
        served.url = last.trim_start_matches("listening on ").to_owned();
        served
    }

    /// `kiln <args…> --server <its url> --token <token>`.
    pub(crate) fn call(&self, p: &Project, token: &str, args: &[&str]) -> Outcome {
        let mut all = args.to_vec();
        all.extend(["--server", self.url.as_str(), "--token", token]);
        run(p, &all)
    }

    /// The token of an `admin token:` line, if it printed one.
    pub(crate) fn admin(&self) -> Option<String> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix("admin token: "))
            .map(str::to_owned)
    }

    /// SIGTERM, then the exit code (it must stop within 10 s).
    pub(crate) fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "kiln serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_admin_token_comes_first_and_drives_the_token_commands() {
    let p = Project::new();
    let s = Served::start(&p, &[]);
    assert_eq!(s.lines.len(), 2, "{:?}", s.lines);
    let admin = s.admin().expect("the first start prints an admin token");
    assert!(
        s.lines[0].starts_with("admin token: kiln_"),
        "{:?}",
        s.lines
    );
    assert!(s.url.starts_with("http://127.0.0.1:"), "{}", s.url);
    assert!(
        !s.url.ends_with(":0"),
        "the bound port is printed: {}",
        s.url
    );

    let created = s.call(
        &p,
        &admin,
        &[
            "token", "create", "--name", "reader", "--role", "viewer", "--format", "json",
        ],
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    let created = created.json();
    let keys: Vec<_> = created.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["id", "name", "role", "token"]);
    assert_eq!(created["role"], "viewer");
    let viewer = created["token"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();

    // The server and token in the environment, as scripts pass them.
    let mut list = kiln(&p, &["token", "list", "--format", "json"]);
    list.env("KILN_SERVER", &s.url).env("KILN_TOKEN", &admin);
    let out = list.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2, "{listed:#}");

    // A 4xx from the server: exit 2 with its code and message.
    let refused = s.call(&p, viewer, &["token", "list"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("FORBIDDEN"), "{}", refused.stderr);
    assert!(refused.stdout.is_empty());

    let revoked = s.call(&p, &admin, &["token", "revoke", id]);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert!(revoked.stdout.contains("revoked"), "{}", revoked.stdout);
    let gone = s.call(&p, viewer, &["token", "list"]);
    assert_eq!(gone.code, 2);
    assert!(gone.stderr.contains("UNAUTHORIZED"), "{}", gone.stderr);
    let other_id = id.replace(|c: char| c.is_ascii_digit(), "0");
    let unknown = s.call(&p, &admin, &["token", "revoke", &other_id]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("TOKEN_NOT_FOUND"),
        "{}",
        unknown.stderr
    );

    assert_eq!(s.stop(), 0, "SIGTERM is a graceful stop");
}

#[test]
fn a_second_start_prints_no_token_and_the_first_still_works() {
    let p = Project::new();
    let first = Served::start(&p, &[]);
    let admin = first.admin().unwrap();
    assert_eq!(first.stop(), 0);

    let second = Served::start(&p, &[]);
    assert_eq!(second.lines.len(), 1, "{:?}", second.lines);
    assert!(second.admin().is_none());
    let listed = second.call(&p, &admin, &["token", "list"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(listed.stdout.contains("admin"), "{}", listed.stdout);
}

#[test]
fn kiln_admin_token_preseeds_the_admin_token() {
    let p = Project::new();
    let short = serve_command(&p, "127.0.0.1:0")
        .env("KILN_ADMIN_TOKEN", "too-short")
        .output()
        .unwrap();
    assert_eq!(short.status.code(), Some(2));
    assert!(short.stdout.is_empty());
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(
        err.contains("KILN_ADMIN_TOKEN") && err.contains("32"),
        "{err}"
    );

    let preseed = "operator-chosen-admin-token-0123456789";
    let s = Served::start(&p, &[("KILN_ADMIN_TOKEN", preseed)]);
    assert!(s.admin().is_none(), "the operator knows it: {:?}", s.lines);
    let listed = s.call(&p, preseed, &["token", "list"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
}

#[test]
fn tokens_are_made_offline_before_the_first_start() {
    let p = Project::new();
    let made = local(
        &p,
        &[
            "token",
            "create",
            "--name",
            "bootstrap",
            "--role",
            "admin",
            "--format",
            "json",
        ],
    );
    assert_eq!(made.code, 0, "{}", made.stderr);
    let token = made.json()["token"].as_str().unwrap().to_owned();

    let text = local(
        &p,
        &["token", "create", "--name", "ci", "--role", "developer"],
    );
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.trim().starts_with("kiln_"),
        "the secret alone: {}",
        text.stdout
    );
    assert!(text.stderr.contains("only time"), "{}", text.stderr);

    let listed = local(&p, &["token", "list", "--format", "json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json()["tokens"].as_array().unwrap().len(), 2);
    let bad = local(&p, &["token", "revoke", "nope"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let empty = local(&p, &["token", "create", "--name", " ", "--role", "viewer"]);
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    assert!(empty.stderr.contains("--name"), "{}", empty.stderr);

    // The store holds tokens already: no admin token is made, the offline one works.
    let s = Served::start(&p, &[]);
    assert!(s.admin().is_none(), "{:?}", s.lines);
    let status = s.call(&p, &token, &["token", "list"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
}

#[test]
fn client_and_server_failures_have_their_exit_codes() {
    let p = Project::new();
    // Nothing listens on port 1: unreachable is exit 3.
    let unreachable = run(&p, &["token", "list", "--server", "http://127.0.0.1:1"]);
    assert_eq!(unreachable.code, 3, "{}", unreachable.stderr);
    assert!(
        unreachable.stderr.contains("127.0.0.1:1"),
        "{}",
        unreachable.stderr
    );
    let not_a_url = run(&p, &["token", "list", "--server", "127.0.0.1:1"]);
    assert_eq!(not_a_url.code, 2, "{}", not_a_url.stderr);

    let bad_role = local(&p, &["token", "create", "--name", "x", "--role", "root"]);
    assert_eq!(bad_role.code, 2);
    assert!(bad_role.stderr.contains("viewer"), "{}", bad_role.stderr);

    let bad_listen = serve_command(&p, "nonsense").output().unwrap();
    assert_eq!(bad_listen.status.code(), Some(2));
    let not_a_count = local(&p, &["serve", "--workers", "-1"]);
    assert_eq!(not_a_count.code, 2, "{}", not_a_count.stderr);

    // A port already taken: kiln could not work, and no token was made that nobody saw.
    let s = Served::start(&p, &[]);
    let other = Project::new();
    let taken = serve_command(&other, s.url.trim_start_matches("http://"))
        .output()
        .unwrap();
    assert_eq!(taken.status.code(), Some(3));
    assert!(taken.stdout.is_empty());
    let after = local(&other, &["token", "list", "--format", "json"]);
    assert_eq!(after.json()["tokens"], serde_json::json!([]));

    // Without a token the server's 401 says how to send one.
    let anonymous = run(&p, &["token", "list", "--server", &s.url]);
    assert_eq!(anonymous.code, 2);
    assert!(
        anonymous.stderr.contains("KILN_TOKEN"),
        "{}",
        anonymous.stderr
    );
}

/// `GET path` over a plain socket, with `token` if given: (status, body).
fn http_get(url: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn metrics_may_need_a_token_and_config_shows_the_pool() {
    let p = Project::new();
    let open = Served::start(&p, &[]);
    let admin = open.admin().unwrap();
    let (status, body) = http_get(&open.url, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&open.url, "/api/v1/config", Some(&admin));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"worker_slots\":"), "{body}");
    assert!(!body.contains("\"worker_slots\":null"), "{body}");
    assert_eq!(open.stop(), 0);

    let closed = Served::start(&p, &[("KILN__METRICS__NEED_TOKEN", "true")]);
    let (status, body) = http_get(&closed.url, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_get(&closed.url, "/metrics", Some(&admin));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("kiln_queue_depth"), "{body}");
    assert_eq!(closed.stop(), 0);
}

/// `kiln serve --sandbox require` where bubblewrap cannot run: it refuses to start (exit 3,
/// saying why) instead of building packages unconfined.
#[test]
fn serve_with_a_required_sandbox_refuses_to_start_without_bubblewrap() {
    let p = Project::new();
    let out = p
        .kiln(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--sandbox", "require"])
        .env("PATH", &crate::path_without_tools(&p))
        .with_data_dir()
        .output();
    crate::assert_sandbox_refused(&out);
    assert!(!out.stdout.contains("listening"), "{}", out.stdout);
}

/// What a server was receiving when it was killed (an artifact, a package output being
/// checked) is removed at its next start: nothing refers to it.
#[test]
fn unfinished_uploads_are_removed_at_start() {
    let p = Project::new();
    let uploads = p.data_dir().join("uploads");
    std::fs::create_dir_all(uploads.join("output-0190/lib")).unwrap();
    std::fs::write(uploads.join("output-0190/lib/half"), "half").unwrap();
    std::fs::write(uploads.join("0190.part"), "half an upload").unwrap();
    let s = Served::start(&p, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&uploads).unwrap().next().is_some() {
        assert!(Instant::now() < deadline, "uploads left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.stop(), 0);
}
