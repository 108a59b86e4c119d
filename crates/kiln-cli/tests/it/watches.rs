//! `kiln watch list|check` against a real `kiln serve` whose poller reads a local
//! PyPI-shaped server (`--watch-pypi-url`): the first poll records the versions it finds
//! without runs, a version published later starts exactly one run with `inputs.version`,
//! an unknown watch is exit 2, a bad registry URL is exit 2 naming the flag.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_testkit::Project;
use serde_json::{Value, json};

use crate::serve::{Served, kiln, run};

/// A registry answering `GET /pypi/demo/json` with the versions in `releases`; anything
/// else is 404. One request per connection.
struct FakePypi {
    url: String,
    releases: Arc<Mutex<Vec<String>>>,
}

impl FakePypi {
    fn start(versions: &[&str]) -> FakePypi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let releases = Arc::new(Mutex::new(
            versions.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>(),
        ));
        let shared = Arc::clone(&releases);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Skip the headers: GETs carry no body.
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if header == "\r\n" || header == "\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if path == "/pypi/demo/json" {
                    let releases: serde_json::Map<String, Value> = shared
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|v| {
                            let file = json!([{
                                "packagetype": "sdist",
                                "url": format!("https://files.example/demo-{v}.tar.gz"),
                            }]);
                            (v.clone(), file)
                        })
                        .collect();
                    ("200 OK", json!({"releases": releases}).to_string())
                } else {
                    ("404 Not Found", "{}".to_owned())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakePypi { url, releases }
    }

    fn publish(&self, version: &str) {
        self.releases.lock().unwrap().push(version.to_owned());
    }
}

const WORKFLOW: &str = r#"on:
  watch:
    - {name: demo-release, source: pypi, package: demo, constraint: ">=1"}
jobs:
  build:
    runs-on: x
    steps:
      - run: echo "building ${{ inputs.version }}"
"#;

/// `kiln serve` polling `pypi` at the fake registry, re-reading projects every second.
fn serve(p: &Project, pypi: &str) -> Served {
    let data_dir = p.data_dir();
    let mut cmd = kiln(
        p,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--watch-pypi-url",
            pypi,
            "--watch-sync-interval",
            "1",
            "--egress-allow-loopback",
            "--egress-allow-local-paths",
        ],
    );
    Served::from_command(&mut cmd)
}

/// The watches `kiln watch list --format json` shows, once `ready` holds for them.
fn wait_for(s: &Served, p: &Project, token: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = s.call(p, token, &["watch", "list", "--format", "json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let watches = out.json()["watches"].as_array().cloned().unwrap();
        if ready(&watches) {
            return watches;
        }
        assert!(
            Instant::now() < deadline,
            "the watches never got there: {watches:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_new_version_on_the_registry_starts_one_run_with_its_version() {
    let pypi = FakePypi::start(&["0.9.0", "1.0.0", "1.1.0"]);
    let p = Project::new().workflow("release.yml", WORKFLOW);
    let s = serve(&p, &pypi.url);
    let admin = s.admin().unwrap();

    let empty = s.call(&p, &admin, &["watch", "list"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert_eq!(empty.stdout.trim(), "no watches");

    let root = p.root().to_string_lossy().into_owned();
    let added = s.call(&p, &admin, &["project", "add", &root, "--name", "demo"]);
    assert_eq!(added.code, 0, "{}", added.stderr);

    // The poller reads the new project within a second and polls its watch at once: the
    // versions already published are recorded, none starts a run.
    let watches = wait_for(&s, &p, &admin, |w| {
        w.len() == 1 && w[0]["state"] == "ok" && w[0]["versions_seen"] == 2
    });
    let w = &watches[0];
    assert_eq!(w["name"], "demo-release");
    assert_eq!(w["project_name"], "demo");
    assert_eq!(w["workflow"], ".kiln/workflows/release.yml");
    assert_eq!(w["source"], "pypi");
    assert_eq!(w["spec"], json!({"kind": "pypi", "package": "demo"}));
    assert_eq!(w["constraint"], ">=1");
    assert_eq!(w["last_error"], Value::Null);
    assert!(w["next_poll_at"].is_string(), "{w:#}");
    for key in ["id", "project", "interval_secs", "failures", "created_at"] {
        assert!(!w[key].is_null(), "{key} in {w:#}");
    }
    let runs = s.call(&p, &admin, &["runs", "--format", "json"]);
    assert_eq!(runs.json()["runs"], json!([]), "a first poll starts no run");

    let text = s.call(&p, &admin, &["watch", "list"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    let line = text.stdout.trim();
    for part in [
        "demo-release",
        "demo/.kiln/workflows/release.yml",
        "pypi",
        "ok",
        "2 seen",
        "next ",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }

    // Nothing new: a check starts nothing.
    let quiet = s.call(
        &p,
        &admin,
        &["watch", "check", "demo-release", "--format", "json"],
    );
    assert_eq!(quiet.code, 0, "{}", quiet.stderr);
    assert_eq!(quiet.json()["new_versions"], json!([]));

    pypi.publish("1.2.0");
    pypi.publish("0.9.5"); // outside the constraint
    let checked = s.call(
        &p,
        &admin,
        &["watch", "check", "demo-release", "--format", "json"],
    );
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    let checked = checked.json();
    assert_eq!(checked["error"], Value::Null);
    let new = checked["new_versions"].as_array().unwrap();
    assert_eq!(new.len(), 1, "{checked:#}");
    assert_eq!(new[0]["version"], "1.2.0");
    assert_eq!(
        new[0]["source_uri"],
        "https://files.example/demo-1.2.0.tar.gz"
    );
    let run_id = new[0]["run"]
        .as_str()
        .expect("the new version started a run");

    let runs = s.call(&p, &admin, &["runs", "--format", "json"]);
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let runs = runs.json()["runs"].as_array().cloned().unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["id"], run_id);
    assert_eq!(runs[0]["event"], "watch");
    assert_eq!(runs[0]["inputs"]["version"], "1.2.0");
    assert_eq!(
        runs[0]["inputs"]["source_uri"],
        "https://files.example/demo-1.2.0.tar.gz"
    );

    // Checking again finds nothing new: still one run.
    let again = s.call(&p, &admin, &["watch", "check", "demo-release"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("no new versions"), "{}", again.stdout);
    let runs = s.call(&p, &admin, &["runs", "--format", "json"]);
    assert_eq!(runs.json()["runs"].as_array().unwrap().len(), 1);
    let listed = wait_for(&s, &p, &admin, |w| w[0]["versions_seen"] == 3);
    assert_eq!(listed[0]["last_run"], run_id);

    let unknown = s.call(&p, &admin, &["watch", "check", "no-such-watch"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("WATCH_NOT_FOUND"),
        "{}",
        unknown.stderr
    );
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_bad_registry_url_is_invalid_input_naming_the_flag() {
    let p = Project::new();
    let data_dir = p.data_dir();
    let out = run(
        &p,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--watch-npm-url",
            "registry.example",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--watch-npm-url"), "{}", out.stderr);
}
