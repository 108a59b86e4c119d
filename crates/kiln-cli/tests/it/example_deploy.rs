//! `examples/deploy` as its README runs it, against the real binary and the example's own
//! files (read by path, never copied): `deployer.py` started on a free port, `kiln serve` with
//! `--egress-allow-loopback --egress-allow-local-paths`, the folder added as a project, a
//! receiver on the deployer's `/notify`, `kiln trigger --wait --format json`. The run succeeds,
//! the deploy job's output is the deployer's job link, the deployer logged the deployment, and
//! it received a correctly signed `run.completed` for the run. A signed push with a wrong
//! secret is refused, and one to another branch than main starts nothing.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_testkit::Project;
use serde_json::Value;

use crate::serve::{Served, kiln};

const HOOK_SECRET: &str = "demo-hook-secret-0123";
const NOTIFY_SECRET: &str = "demo-notify-secret-0123";

/// The example's folder in this repository.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/deploy")
        .canonicalize()
        .expect("examples/deploy exists")
}

/// `python3 examples/deploy/deployer.py 0 --secret … --dir …`, killed on drop.
struct Deployer {
    child: Child,
    /// `http://127.0.0.1:PORT`, from its `deployer listening on` line.
    url: String,
}

impl Deployer {
    fn start(dir: &Path) -> Deployer {
        let mut child = Command::new("python3")
            .arg(example().join("deployer.py"))
            .args(["0", "--secret", NOTIFY_SECRET, "--dir"])
            .arg(dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 examples/deploy/deployer.py");
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
        let mut deployer = Deployer {
            child,
            url: String::new(),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the deployer prints `deployer listening on URL`");
        deployer.url = line
            .strip_prefix("deployer listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        deployer
    }
}

impl Drop for Deployer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `METHOD url` (plain `http://host:port/path`) with headers and a body: the status and body.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!(
        "{method} /{path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    (status, body.to_owned())
}

fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http("GET", url, headers, "")
}

/// A push to `git_ref` on the project's hook, signed as the README signs it (generic scheme)
/// with `secret`: the status and body.
fn push(hook_url: &str, git_ref: &str, secret: &str, delivery: &str) -> (u16, String) {
    let body = format!(
        r#"{{"ref":"{git_ref}","after":"0000000000000000000000000000000000000001","repository":{{"full_name":"demo/greet"}}}}"#
    );
    let timestamp = unix_now().to_string();
    let signature = kiln_signature(secret, &timestamp, &body);
    http(
        "POST",
        hook_url,
        &[
            ("Content-Type", "application/json"),
            ("X-Kiln-Timestamp", &timestamp),
            ("X-Kiln-Signature", &signature),
            ("X-Kiln-Delivery", delivery),
            ("X-Kiln-Event", "push"),
        ],
        &body,
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The JSON lines of `path`; none while it does not exist.
fn json_lines(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, computed apart from the
/// deployer's own check (Python's `hmac`, fed from here).
fn kiln_signature(secret: &str, timestamp: &str, body: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib, hmac, sys; key, msg = sys.argv[1], sys.stdin.buffer.read(); \
             print('sha256=' + hmac.new(key.encode(), msg, hashlib.sha256).hexdigest())",
            secret,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{timestamp}.{body}").as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3 computes the HMAC");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_deploy_example_builds_deploys_and_notifies() {
    let started = Instant::now();
    let example = example();
    let p = Project::new();
    let scratch = p.data_dir().with_file_name("example");
    let deployer_dir = scratch.join("deployer");
    let artifact_dir = scratch.join("artifacts");

    // 1. The server, with the README's flags.
    let data_dir = p.data_dir();
    let mut serve = kiln(
        &p,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--egress-allow-loopback",
            "--egress-allow-local-paths",
        ],
    );
    let s = Served::from_command(&mut serve);
    let admin = s.admin().expect("a first start prints the admin token");

    // 2. The deployer, on a port of its choosing.
    let d = Deployer::start(&deployer_dir);

    // 3. The project (the example's folder, used as it is) and its receiver.
    let added = s.call(
        &p,
        &admin,
        &[
            "project",
            "add",
            example.to_str().unwrap(),
            "--name",
            "deploy-demo",
            "--provider",
            "generic",
            "--secret",
            HOOK_SECRET,
            "--format",
            "json",
        ],
    );
    assert_eq!(added.code, 0, "{}", added.stderr);
    let hook_url = added.json()["hook_url"].as_str().unwrap().to_owned();
    let notify_url = format!("{}/notify", d.url);
    let receiver = s.call(
        &p,
        &admin,
        &[
            "receiver",
            "add",
            "deploy-demo",
            &notify_url,
            "--events",
            "run.completed",
            "--secret",
            NOTIFY_SECRET,
        ],
    );
    assert_eq!(receiver.code, 0, "{}", receiver.stderr);

    // 4. A manual run, pointed at this deployer and a private artifact folder.
    let deployer_input = format!("deployer_url={}/deploy", d.url);
    let artifact_input = format!("artifact_dir={}", artifact_dir.display());
    let triggered = s.call(
        &p,
        &admin,
        &[
            "trigger",
            "deploy-demo",
            "--wait",
            "--format",
            "json",
            "--input",
            &deployer_input,
            "--input",
            &artifact_input,
        ],
    );
    assert_eq!(
        triggered.code, 0,
        "{}\n{}",
        triggered.stdout, triggered.stderr
    );
    let run = triggered.json();
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["workflow_name"], "deploy", "{run:#}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let build = crate::job(&run, "build");
    let deploy = crate::job(&run, "deploy");
    let version = std::fs::read_to_string(example.join("VERSION")).unwrap();
    let artifact = format!("greet-{}.tar.gz", version.trim());
    assert_eq!(build["outputs"]["artifact"], artifact.as_str(), "{build:#}");
    let sha256 = build["outputs"]["sha256"].as_str().unwrap().to_owned();
    assert!(
        sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()),
        "{build:#}"
    );
    assert!(
        artifact_dir.join(&run_id).join(&artifact).is_file(),
        "the build job left the tarball in the artifact folder"
    );
    let job_url = format!("{}/jobs/1", d.url);
    assert_eq!(deploy["outputs"]["job_url"], job_url.as_str(), "{deploy:#}");

    // 5. The deployer logged the deployment, and shows it at the job link.
    let deployments = json_lines(&deployer_dir.join("deployments.jsonl"));
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    let logged = &deployments[0];
    assert_eq!(logged["artifact"], artifact.as_str(), "{logged}");
    assert_eq!(logged["sha256"], sha256.as_str(), "{logged}");
    assert_eq!(logged["run_id"], run_id.as_str(), "{logged}");
    assert_eq!(logged["job_url"], job_url.as_str(), "{logged}");
    let logs = s.call(&p, &admin, &["logs", &run_id, "deploy"]);
    assert!(
        logs.stdout
            .contains(&format!("deployed greet {}: {job_url}", version.trim())),
        "{}",
        logs.stdout
    );

    // 6. The signed run.completed arrives within a few seconds, and says the run succeeded.
    let notifications = deployer_dir.join("notifications.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let note = loop {
        if let Some(n) = json_lines(&notifications)
            .into_iter()
            .find(|n| n["event"] == "run.completed")
        {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no run.completed notification within 10 s; the deployer has {:?}",
            json_lines(&notifications)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let body = note["body"].as_str().unwrap();
    let timestamp = note["timestamp"].as_str().unwrap();
    assert_eq!(
        note["signature"].as_str().unwrap(),
        kiln_signature(NOTIFY_SECRET, timestamp, body),
        "kiln signs HMAC-SHA256(secret, timestamp + \".\" + body)"
    );
    assert_ne!(
        note["signature"].as_str().unwrap(),
        kiln_signature("another-secret-0123", timestamp, body)
    );
    let age = unix_now() - timestamp.parse::<i64>().unwrap();
    assert!(
        (0..=300).contains(&age),
        "timestamp {timestamp} is {age} s old"
    );
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["event"]["type"], "run.completed", "{payload:#}");
    assert_eq!(payload["run"]["id"], run_id.as_str(), "{payload:#}");
    assert_eq!(payload["run"]["status"], "success", "{payload:#}");
    assert_eq!(payload["project"]["name"], "deploy-demo", "{payload:#}");
    assert_eq!(note["delivery"], payload["delivery_id"], "{note}");

    let (status, shown) = get(&job_url, &[]);
    assert_eq!(status, 200, "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["sha256"], sha256.as_str(), "{shown}");
    assert_eq!(shown["run_status"], "success", "{shown}");

    // kiln recorded the delivery as delivered (it may record it just after the answer).
    let path = format!("{}/api/v1/projects/deploy-demo/notifications", s.url);
    let auth = format!("Bearer {admin}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, listed) = get(&path, &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{listed}");
        let listed: Value = serde_json::from_str(&listed).unwrap();
        let list = listed["data"]["notifications"].as_array().unwrap().clone();
        assert_eq!(list.len(), 1, "{listed:#}");
        if list[0]["status"] == "delivered" {
            assert_eq!(list[0]["event_type"], "run.completed");
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {listed:#}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The README's other way in, a signed push: a wrong secret is refused, and a push to a
    // branch other than main is recorded but starts nothing. (A push to main would deploy to
    // the default http://127.0.0.1:8099, which a test cannot own; the trigger above ran the
    // same workflow.)
    let (status, refused) = push(&hook_url, "refs/heads/main", "not-the-secret-0123", "d-1");
    assert_eq!(status, 401, "{refused}");
    assert!(refused.contains("SIGNATURE_INVALID"), "{refused}");
    let (status, accepted) = push(&hook_url, "refs/heads/feature", HOOK_SECRET, "d-2");
    assert_eq!(status, 202, "{accepted}");
    let accepted: Value = serde_json::from_str(&accepted).unwrap();
    let delivery = accepted["data"]["delivery_id"].as_str().unwrap();
    let path = format!("{}/api/v1/deliveries/{delivery}", s.url);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, shown) = get(&path, &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{shown}");
        let shown: Value = serde_json::from_str(&shown).unwrap();
        if shown["data"]["status"] != "accepted" {
            assert_eq!(shown["data"]["status"], "ignored", "{shown:#}");
            assert!(
                shown["data"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("branch `feature`"),
                "{shown:#}"
            );
            assert_eq!(shown["data"]["runs"], serde_json::json!([]), "{shown:#}");
            break;
        }
        assert!(Instant::now() < deadline, "not processed: {shown:#}");
        std::thread::sleep(Duration::from_millis(100));
    }

    assert_eq!(s.stop(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the example took {:?}",
        started.elapsed()
    );
}
