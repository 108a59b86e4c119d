//! The watch poller against a real SQLite store and engine and a local HTTP server that
//! answers in each registry's shape: every source kind, the ETag 304 path, a first poll
//! that starts nothing, one run per new version (also after a restart), backoff on errors,
//! egress refusal, and 1,000 watches polled with bounded concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::{SignedDuration, Timestamp};
use kiln_core::watch::WatchSource;
use kiln_proto::{WatchState, WatchView};
use kiln_store::{RunFilter, Store, WatchDef};
use serde_json::json;
use tokio::sync::Mutex;

use super::{Registries, WatchConfig, Watcher, backoff, extract};
use crate::egress::EgressPolicy;
use crate::{Engine, EngineConfig};

#[derive(Default)]
struct Upstream {
    releases: Mutex<Vec<String>>,
    hits: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

type S = Arc<Upstream>;

async fn releases(State(s): State<S>, headers: HeaderMap) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let list = s.releases.lock().await.clone();
    let etag = format!("\"r{}\"", list.len());
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let body: Vec<_> = list
        .iter()
        .rev()
        .map(|v| json!({"tag_name": v, "draft": false, "tarball_url": format!("https://x.example/{v}.tar.gz")}))
        .chain([json!({"tag_name": "v9.9.9", "draft": true})])
        .collect();
    ([("etag", etag)], axum::Json(body)).into_response()
}

async fn slow(State(s): State<S>) -> Response {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    axum::Json(json!({"versions": ["1.0.0"]})).into_response()
}

fn app(s: S) -> Router {
    Router::new()
        .route("/repos/madler/zlib/releases", get(releases))
        .route(
            "/repos/o/r/tags",
            get(|| async { axum::Json(json!([{"name": "v2.0", "tarball_url": "https://t/v2.0"}, {"name": "v1.0"}])) }),
        )
        .route(
            "/pypi/requests/json",
            get(|| async {
                axum::Json(json!({"releases": {
                    "2.31.0": [{"packagetype": "bdist_wheel", "url": "https://f/w.whl"}, {"packagetype": "sdist", "url": "https://f/requests-2.31.0.tar.gz"}],
                    "2.32.0": [{"packagetype": "sdist", "url": "https://f/requests-2.32.0.tar.gz"}],
                    "2.30.0": [{"packagetype": "sdist", "url": "https://f/old", "yanked": true}]
                }}))
            }),
        )
        .route(
            "/{pkg}",
            get(|UrlPath(pkg): UrlPath<String>| async move {
                axum::Json(json!({"name": pkg, "versions": {
                    "1.0.0": {"dist": {"tarball": "https://n/1.0.0.tgz"}},
                    "1.1.0": {"dist": {"tarball": "https://n/1.1.0.tgz"}}
                }}))
            }),
        )
        .route(
            "/api/v1/crates/serde",
            get(|| async {
                axum::Json(json!({"versions": [
                    {"num": "1.0.200", "dl_path": "/api/v1/crates/serde/1.0.200/download", "yanked": false},
                    {"num": "1.0.199", "yanked": true}
                ]}))
            }),
        )
        .route(
            "/page",
            get(|| async { "<a href='foo-1.2.tar.gz'>foo-1.2.tar.gz</a> <a href='foo-1.3.tar.gz'>x</a>" }),
        )
        .route(
            "/api.json",
            get(|| async { axum::Json(json!({"data": {"versions": ["3.0", "3.1"]}})) }),
        )
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/slow", get(slow))
        .with_state(s)
}

async fn serve(s: S) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(s)).await.unwrap() });
    format!("http://{addr}")
}

fn workflow(base: &str) -> String {
    format!(
        r#"on:
  watch:
    - name: zlib
      source: github-releases
      repository: madler/zlib
      constraint: ">=1.3, <2"
    - {{name: tags, source: github-tags, repository: o/r, known-versions: known.txt}}
    - {{name: requests, source: pypi, package: requests, known-versions: known.txt}}
    - {{name: leftpad, source: npm, package: left-pad, known-versions: known.txt}}
    - {{name: serde, source: crates, package: serde, known-versions: known.txt}}
    - name: page
      source: url
      url: {base}/page
      regex: 'foo-([0-9.]+)\.tar\.gz'
      known-versions: known.txt
    - name: api
      source: url
      url: {base}/api.json
      json-pointer: /data/versions
      known-versions: known.txt
    - name: scan
      source: command
      command: printf '5.0\n5.1\n'
      known-versions: known.txt
jobs:
  a:
    runs-on: x
    steps:
      - run: echo "${{{{ inputs.version }}}}"
"#
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    store: Store,
    engine: Engine,
    base: String,
    upstream: S,
}

impl Fixture {
    async fn new() -> Self {
        let upstream = S::default();
        upstream
            .releases
            .lock()
            .await
            .extend(["v1.2.13".to_owned(), "v1.3".to_owned()]);
        let base = serve(upstream.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join(".kiln/workflows")).unwrap();
        std::fs::write(src.join(".kiln/workflows/w.yml"), workflow(&base)).unwrap();
        std::fs::write(
            src.join("known.txt"),
            "v1.0\n2.31.0\n1.0.0\n1.2\n3.0\n5.0\n",
        )
        .unwrap();
        let data = dir.path().join("data");
        let store = Store::open_sqlite(&data).await.unwrap();
        store
            .upsert_project("p", &src.to_string_lossy())
            .await
            .unwrap();
        let engine = start(&store, &data).await;
        Fixture {
            _dir: dir,
            data,
            store,
            engine,
            base,
            upstream,
        }
    }

    fn config(&self) -> WatchConfig {
        let mut egress = EgressPolicy::default();
        egress.allow_loopback = true;
        WatchConfig {
            registries: Registries {
                github: self.base.clone(),
                pypi: self.base.clone(),
                npm: self.base.clone(),
                crates: self.base.clone(),
            },
            egress,
            ..WatchConfig::default()
        }
    }

    fn watcher(&self) -> Watcher {
        Watcher::new(
            self.engine.clone(),
            self.store.clone(),
            &self.data,
            self.config(),
        )
        .unwrap()
    }

    async fn watch(&self, name: &str) -> WatchView {
        self.store
            .list_watches(None)
            .await
            .unwrap()
            .into_iter()
            .find(|w| w.name == name)
            .unwrap()
    }

    async fn runs(&self) -> Vec<kiln_proto::Run> {
        self.store.list_runs(&RunFilter::default()).await.unwrap()
    }
}

async fn start(store: &Store, data: &std::path::Path) -> Engine {
    Engine::start(
        store.clone(),
        EngineConfig {
            slots: 1,
            data_dir: data.to_path_buf(),
            max_attempts: 1,
            sandbox: crate::packages::Sandbox::off(),
            fetch_egress: None,
            lease_ttl: crate::dispatch::LEASE_TTL,
            artifacts: None,
        },
    )
    .await
    .unwrap()
    .0
}

fn later(hours: i64) -> Timestamp {
    Timestamp::now()
        .checked_add(SignedDuration::from_hours(hours))
        .unwrap()
}

#[tokio::test]
async fn every_source_kind_against_a_local_server() {
    let f = Fixture::new().await;
    let w = f.watcher();
    let p = f.store.find_project("p").await.unwrap().unwrap();
    let r = w.sync_project(&p, Timestamp::now()).await.unwrap();
    assert_eq!(r.added, 8);
    let done = w.tick(Timestamp::now()).await.unwrap();
    assert_eq!(done.len(), 8);
    for o in &done {
        assert_eq!(o.error, None, "{o:?}");
    }
    // With known-versions, what is not in the file starts a run from the first poll on.
    let mut started: Vec<(String, Option<String>)> = done
        .iter()
        .flat_map(|o| o.new_versions.iter())
        .filter(|v| v.run.is_some())
        .map(|v| (v.version.clone(), v.source_uri.clone()))
        .collect();
    started.sort();
    assert_eq!(
        started,
        [
            (
                "1.0.200".to_owned(),
                Some(format!("{}/api/v1/crates/serde/1.0.200/download", f.base))
            ),
            ("1.1.0".to_owned(), Some("https://n/1.1.0.tgz".to_owned())),
            ("1.3".to_owned(), None),
            (
                "2.32.0".to_owned(),
                Some("https://f/requests-2.32.0.tar.gz".to_owned())
            ),
            ("3.1".to_owned(), None),
            ("5.1".to_owned(), None),
            ("v2.0".to_owned(), Some("https://t/v2.0".to_owned())),
        ]
    );
    // zlib has no known-versions: its first poll is quiet, within its constraint.
    let zlib = f.watch("zlib").await;
    assert_eq!(zlib.state, WatchState::Ok);
    assert_eq!(zlib.versions_seen, 1);
    let runs = f.runs().await;
    assert_eq!(runs.len(), 7);
    assert!(runs.iter().all(|r| r.event == "watch"));
    let run = runs
        .iter()
        .find(|r| r.inputs["version"] == "2.32.0")
        .unwrap();
    assert_eq!(run.inputs["source_uri"], "https://f/requests-2.32.0.tar.gz");
}

#[tokio::test]
async fn etag_304_new_version_once_and_no_retrigger_after_restart() {
    let f = Fixture::new().await;
    let w = f.watcher();
    let p = f.store.find_project("p").await.unwrap().unwrap();
    w.sync_project(&p, Timestamp::now()).await.unwrap();
    let zlib = f.watch("zlib").await.id;
    let first = w.check(zlib).await.unwrap().unwrap();
    assert_eq!(first.error, None);
    assert!(first.new_versions.iter().all(|v| v.run.is_none()));
    assert_eq!(f.runs().await.len(), 0, "a first poll starts nothing");
    // Unchanged upstream: 304, nothing read.
    let again = w.check(zlib).await.unwrap().unwrap();
    assert!(again.not_modified);
    assert!(again.new_versions.is_empty());
    // A new release within the constraint starts one run; one outside it does not.
    f.upstream
        .releases
        .lock()
        .await
        .extend(["v1.3.1".to_owned(), "v2.0.0".to_owned()]);
    let new = w.check(zlib).await.unwrap().unwrap();
    assert_eq!(new.new_versions.len(), 1);
    assert_eq!(new.new_versions[0].version, "v1.3.1");
    let run = new.new_versions[0].run.unwrap();
    let runs = f.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, run);
    assert_eq!(runs[0].inputs["version"], "v1.3.1");
    assert_eq!(
        runs[0].inputs["source_uri"],
        "https://x.example/v1.3.1.tar.gz"
    );
    // A restart: a new store handle on the same database, a new engine and poller, and the
    // ETag forgotten by the upstream (it answers in full): nothing starts again.
    f.engine.shutdown(Duration::from_secs(5)).await.unwrap();
    let store = Store::open_sqlite(&f.data).await.unwrap();
    let engine = start(&store, &f.data).await;
    let w2 = Watcher::new(engine, store.clone(), &f.data, f.config()).unwrap();
    f.upstream.releases.lock().await.push("v0.1".to_owned());
    let after = w2.check(zlib).await.unwrap().unwrap();
    assert_eq!(after.error, None);
    assert!(!after.not_modified);
    assert!(after.new_versions.is_empty(), "{after:?}");
    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, run);
}

#[tokio::test]
async fn a_failing_source_backs_off_and_others_go_on() {
    let f = Fixture::new().await;
    let w = f.watcher();
    let p = f.store.find_project("p").await.unwrap().unwrap();
    let src = |url: &str| {
        serde_json::to_string(&WatchSource::Url {
            url: url.to_owned(),
            regex: Some(".+".to_owned()),
            json_pointer: None,
        })
        .unwrap()
    };
    let def = |name: &str, url: &str| WatchDef {
        workflow: ".kiln/workflows/w.yml".to_owned(),
        name: name.to_owned(),
        source: src(url),
        constraint: None,
        filter: None,
        known_versions: None,
        interval_secs: 3600,
    };
    let keep = vec![];
    f.store
        .sync_watches(
            p.id,
            &[
                def("bad", &format!("{}/fail", f.base)),
                def("good", &format!("{}/page", f.base)),
            ],
            &keep,
            Timestamp::now(),
        )
        .await
        .unwrap();
    let before = Timestamp::now();
    let done = w.tick(before).await.unwrap();
    assert_eq!(done.len(), 2);
    let bad = f.watch("bad").await;
    assert_eq!(bad.state, WatchState::Failing);
    assert_eq!(bad.failures, 1);
    assert!(
        bad.last_error.as_deref().unwrap().contains("500"),
        "{bad:?}"
    );
    let wait = bad.next_poll_at.unwrap().duration_since(before);
    assert!(
        wait >= SignedDuration::from_secs(60) && wait < SignedDuration::from_secs(70),
        "{wait:?}"
    );
    assert_eq!(f.watch("good").await.state, WatchState::Ok);
    // The next failure waits twice as long; the cap holds.
    w.tick(later(1)).await.unwrap();
    assert_eq!(f.watch("bad").await.failures, 2);
    assert_eq!(backoff(2), Duration::from_secs(120));
    assert_eq!(backoff(30), super::BACKOFF_MAX);
}

#[tokio::test]
async fn egress_policy_refuses_loopback_by_default() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.egress = EgressPolicy::default();
    let w = Watcher::new(f.engine.clone(), f.store.clone(), &f.data, config).unwrap();
    let p = f.store.find_project("p").await.unwrap().unwrap();
    w.sync_project(&p, Timestamp::now()).await.unwrap();
    let zlib = f.watch("zlib").await.id;
    let check = w.check(zlib).await.unwrap().unwrap();
    let err = check.error.unwrap();
    assert!(err.contains("egress policy refuses"), "{err}");
    assert_eq!(
        f.upstream.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
}

#[tokio::test]
async fn a_thousand_watches_poll_with_bounded_concurrency() {
    let f = Fixture::new().await;
    let w = f.watcher();
    let p = f.store.find_project("p").await.unwrap().unwrap();
    let source = serde_json::to_string(&WatchSource::Url {
        url: format!("{}/slow", f.base),
        regex: None,
        json_pointer: Some("/versions".to_owned()),
    })
    .unwrap();
    let defs: Vec<WatchDef> = (0..1000)
        .map(|i| WatchDef {
            workflow: ".kiln/workflows/w.yml".to_owned(),
            name: format!("w{i}"),
            source: source.clone(),
            constraint: None,
            filter: None,
            known_versions: None,
            interval_secs: 3600,
        })
        .collect();
    f.store
        .sync_watches(p.id, &defs, &[], Timestamp::now())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let done = w.tick(Timestamp::now()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(done.len(), 1000);
    assert!(done.iter().all(|o| o.error.is_none()));
    let max = f.upstream.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=16).contains(&max), "max in flight {max}");
    // Next polls spread over the interval's jitter (up to 6 minutes), not one instant.
    let list = f.store.list_watches(Some(p.id)).await.unwrap();
    let nexts: std::collections::HashSet<_> = list.iter().filter_map(|w| w.next_poll_at).collect();
    assert!(nexts.len() > 900, "{}", nexts.len());
    // 1,000 polls of 5 ms each, 16 at a time, take about 0.3 s of waiting: a round is bound
    // by the concurrency, not by one core.
    assert!(took < Duration::from_secs(30), "a round took {took:?}");
    tracing::info!(?took, max, "1,000 watches polled");
}

#[test]
fn registry_shapes_without_a_server() {
    let reg = Registries::default();
    let found = extract(
        &WatchSource::Crates {
            package: "x".to_owned(),
        },
        &reg,
        br#"{"versions": [{"num": "0.1.0"}]}"#,
    )
    .unwrap();
    assert_eq!(
        found[0].source_uri.as_deref(),
        Some("https://crates.io/api/v1/crates/x/0.1.0/download")
    );
    let err = extract(
        &WatchSource::Url {
            url: String::new(),
            regex: None,
            json_pointer: Some("/a".to_owned()),
        },
        &reg,
        br#"{"a": {"b": 1}}"#,
    )
    .unwrap_err();
    assert!(err.contains("neither a string nor a list"), "{err}");
}
