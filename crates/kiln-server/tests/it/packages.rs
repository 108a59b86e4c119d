//! `/api/v1/packages…` and the `packages` figures of `/api/v1/stats`: history seeded through
//! the store as `kiln build` records it, then read back over HTTP — shapes, pages, the log,
//! 404 and 400 envelopes, who may call — and `/deps` against a small tree written to a
//! temporary folder, changed and broken while the server runs.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use kiln_store::{
    BuildCounts, BuildSessionId, ContentBlob, PackageBuild, PackageBuildId, PackageBuildStatus,
    Store,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::harness::{Server, both_backends};

both_backends!(
    the_latest_build_of_every_origin_is_listed_by_pages,
    an_origin_shows_its_latest_build_status_and_history,
    a_build_log_is_served_as_text,
    unknown_origins_builds_and_logs_are_404,
    malformed_origins_and_parameters_are_400_naming_them,
    only_tokens_for_the_whole_server_may_read_packages,
    stats_count_package_builds,
    deps_without_a_tree_say_how_to_configure_one,
);

use PackageBuildStatus::{Cached, Failure, Skipped, Success};

const LOG: &[u8] = b"configure\nmake\nerror: boom\n";

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap()
}

fn hex_of(name: &str) -> String {
    hex::encode(Sha256::digest(name.as_bytes()))
}

/// A build of `origin` that finished at `at(finished)` after `ms`.
fn build(
    session: BuildSessionId,
    origin: &str,
    status: PackageBuildStatus,
    finished: i64,
    ms: u64,
) -> PackageBuild {
    PackageBuild {
        id: PackageBuildId::new(),
        session,
        origin: origin.to_owned(),
        version: "1.0".to_owned(),
        key: hex_of(&format!("{origin} {finished}")),
        status,
        reason: None,
        started_at: at(finished - i64::try_from(ms).unwrap()),
        finished_at: at(finished),
        duration: Duration::from_millis(ms),
        log: None,
        log_tail: String::new(),
        output: status.has_output().then(|| ContentBlob {
            digest: hex_of(&format!("output of {origin} {finished}")),
            size: 512,
        }),
    }
}

/// What [`seed`] recorded, newest first per origin.
struct Seeded {
    session: BuildSessionId,
    /// devel/gmake: cached (3000), success (2000, 800 ms), failure (1000, 900 ms, logged).
    gmake: [PackageBuild; 3],
    /// lang/perl5: success (1500, 100 ms).
    perl: PackageBuild,
    /// www/nginx: skipped (2500).
    nginx: PackageBuild,
}

/// One finished session: three origins, five builds, the failed one with a stored log.
async fn seed(store: &Store) -> Seeded {
    let session = store.begin_build_session("ports", 2, at(0)).await.unwrap();
    let log = store.blobs().put_content(LOG.to_vec()).await.unwrap();
    let mut failed = build(session, "devel/gmake", Failure, 1_000, 900);
    failed.reason = Some("exit status 2".to_owned());
    failed.log = Some(log);
    failed.log_tail = "make\nerror: boom".to_owned();
    let fixed = build(session, "devel/gmake", Success, 2_000, 800);
    let mut cached = build(session, "devel/gmake", Cached, 3_000, 0);
    cached.reason = Some(format!("cached from build {}", fixed.id));
    let perl = build(session, "lang/perl5", Success, 1_500, 100);
    let mut nginx = build(session, "www/nginx", Skipped, 2_500, 0);
    nginx.reason = Some("dependency devel/gmake failed".to_owned());
    store
        .record_package_builds(&[
            failed.clone(),
            fixed.clone(),
            cached.clone(),
            perl.clone(),
            nginx.clone(),
        ])
        .await
        .unwrap();
    let counts = BuildCounts {
        built: 2,
        failed: 1,
        skipped: 1,
        cached: 1,
        cancelled: 0,
    };
    assert!(
        store
            .finish_build_session(session, &counts, at(4_000))
            .await
            .unwrap()
    );
    Seeded {
        session,
        gmake: [cached, fixed, failed],
        perl,
        nginx,
    }
}

/// Checks that `view` is `build` as the API shows it, every field.
#[track_caller]
fn assert_build(view: &Value, build: &PackageBuild) {
    let keys: Vec<&str> = view
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = [
        "duration_ms",
        "finished_at",
        "id",
        "key",
        "log",
        "log_tail",
        "log_url",
        "origin",
        "output",
        "reason",
        "session",
        "started_at",
        "status",
        "version",
    ];
    want.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, want, "{view:#}");
    assert_eq!(view["id"], build.id.to_string());
    assert_eq!(view["session"], build.session.to_string());
    assert_eq!(view["origin"], build.origin);
    assert_eq!(view["version"], build.version);
    assert_eq!(view["key"], build.key);
    assert_eq!(view["status"], build.status.as_str());
    assert_eq!(view["reason"], json!(build.reason));
    let started: Timestamp = view["started_at"].as_str().unwrap().parse().unwrap();
    let finished: Timestamp = view["finished_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((started, finished), (build.started_at, build.finished_at));
    assert_eq!(
        view["duration_ms"],
        u64::try_from(build.duration.as_millis()).unwrap()
    );
    assert_eq!(view["log_tail"], build.log_tail);
    match &build.log {
        Some(log) => {
            assert_eq!(
                view["log"],
                json!({ "digest": log.digest, "size": log.size })
            );
            let (category, name) = build.origin.split_once('/').unwrap();
            assert_eq!(
                view["log_url"],
                format!("/api/v1/packages/{category}/{name}/builds/{}/log", build.id)
            );
        }
        None => assert_eq!(
            (&view["log"], &view["log_url"]),
            (&Value::Null, &Value::Null)
        ),
    }
    match &build.output {
        Some(o) => assert_eq!(
            view["output"],
            json!({ "digest": o.digest, "size": o.size })
        ),
        None => assert_eq!(view["output"], Value::Null),
    }
}

async fn the_latest_build_of_every_origin_is_listed_by_pages(s: &Server) {
    let empty = s.get("/api/v1/packages", Some(&s.admin)).await.data();
    assert_eq!(empty, json!({ "packages": [], "next_cursor": null }));

    let seeded = seed(&s.store).await;
    let all = s.get("/api/v1/packages", Some(&s.admin)).await.data();
    let origins: Vec<&str> = all["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["origin"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["devel/gmake", "lang/perl5", "www/nginx"]);
    assert_eq!(all["next_cursor"], Value::Null);
    assert_build(&all["packages"][0]["latest"], &seeded.gmake[0]);
    assert_build(&all["packages"][1]["latest"], &seeded.perl);
    assert_build(&all["packages"][2]["latest"], &seeded.nginx);

    let first = s
        .get("/api/v1/packages?limit=2", Some(&s.admin))
        .await
        .data();
    assert_eq!(first["packages"].as_array().unwrap().len(), 2);
    assert_eq!(first["next_cursor"], "lang/perl5");
    let rest = s
        .get(
            "/api/v1/packages?limit=2&cursor=lang%2Fperl5",
            Some(&s.admin),
        )
        .await
        .data();
    assert_eq!(rest["packages"][0]["origin"], "www/nginx");
    assert_eq!(rest["packages"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    // Exactly a page: no cursor to a page that would be empty.
    let exact = s
        .get("/api/v1/packages?limit=3", Some(&s.admin))
        .await
        .data();
    assert_eq!(exact["next_cursor"], Value::Null);
}

async fn an_origin_shows_its_latest_build_status_and_history(s: &Server) {
    let seeded = seed(&s.store).await;
    let viewer = s.token("viewer").await;
    let [cached, fixed, failed] = &seeded.gmake;

    let shown = s
        .get("/api/v1/packages/devel/gmake", Some(&viewer))
        .await
        .data();
    assert_eq!(shown["origin"], "devel/gmake");
    assert_eq!(shown.as_object().unwrap().len(), 2, "{shown:#}");
    assert_build(&shown["latest"], cached);

    let status = s
        .get("/api/v1/packages/devel/gmake/status", Some(&viewer))
        .await
        .data();
    assert_eq!(
        status,
        json!({
            "origin": "devel/gmake",
            "status": "cached",
            "version": "1.0",
            "key": cached.key,
            "reason": cached.reason,
            "finished_at": status["finished_at"],
            "build": cached.id.to_string(),
        })
    );
    let finished: Timestamp = status["finished_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(finished, cached.finished_at);

    let all = s
        .get("/api/v1/packages/devel/gmake/history", Some(&viewer))
        .await
        .data();
    assert_eq!(all["origin"], "devel/gmake");
    assert_eq!(all["next_before"], Value::Null);
    let builds = all["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 3);
    for (view, build) in builds.iter().zip([cached, fixed, failed]) {
        assert_build(view, build);
    }

    // Newest first, page by page.
    let page = s
        .get(
            "/api/v1/packages/devel/gmake/history?limit=2",
            Some(&viewer),
        )
        .await
        .data();
    let ids: Vec<&str> = page["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [cached.id.to_string(), fixed.id.to_string()]);
    assert_eq!(page["next_before"], fixed.id.to_string());
    let older = s
        .get(
            &format!(
                "/api/v1/packages/devel/gmake/history?limit=2&before={}",
                fixed.id
            ),
            Some(&viewer),
        )
        .await
        .data();
    assert_eq!(older["builds"].as_array().unwrap().len(), 1);
    assert_build(&older["builds"][0], failed);
    assert_eq!(older["next_before"], Value::Null);
    // Before the oldest: an empty last page, not a 404 (the origin exists).
    let past = s
        .get(
            &format!("/api/v1/packages/devel/gmake/history?before={}", failed.id),
            Some(&viewer),
        )
        .await
        .data();
    assert_eq!(past["builds"], json!([]));
    assert_eq!(past["next_before"], Value::Null);
}

async fn a_build_log_is_served_as_text(s: &Server) {
    let seeded = seed(&s.store).await;
    let viewer = s.token("viewer").await;
    let failed = &seeded.gmake[2];
    let shown = s
        .get("/api/v1/packages/devel/gmake/history", Some(&viewer))
        .await
        .data();
    let url = shown["builds"][2]["log_url"].as_str().unwrap().to_owned();
    let r = s.get(&url, Some(&viewer)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text.as_bytes(), LOG);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-kiln-log-skipped"), Some("0"));
    assert!(r.header("x-request-id").is_some());

    // A build without a log, and a log whose blob is gone.
    let none = s
        .get(
            &format!("/api/v1/packages/www/nginx/builds/{}/log", seeded.nginx.id),
            Some(&viewer),
        )
        .await;
    let e = none.expect_error(404, "LOG_NOT_FOUND");
    assert!(e["message"].as_str().unwrap().contains("no log"), "{e:#}");
    let digest = &failed.log.as_ref().unwrap().digest;
    let blob = s
        .data_dir()
        .join("blobs/sha256")
        .join(&digest[..2])
        .join(digest);
    std::fs::remove_file(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
    let gone = s.get(&url, Some(&viewer)).await;
    let e = gone.expect_error(404, "LOG_NOT_FOUND");
    assert!(
        e["message"].as_str().unwrap().contains("no longer stored"),
        "{e:#}"
    );
}

async fn unknown_origins_builds_and_logs_are_404(s: &Server) {
    let seeded = seed(&s.store).await;
    for path in [
        "/api/v1/packages/devel/none",
        "/api/v1/packages/devel/none/status",
        "/api/v1/packages/devel/none/history",
    ] {
        let e = s
            .get(path, Some(&s.admin))
            .await
            .expect_error(404, "PACKAGE_NOT_FOUND");
        assert!(
            e["message"].as_str().unwrap().contains("`devel/none`"),
            "{path}: {e:#}"
        );
    }
    // A build that exists, asked for under another origin, is not found there.
    for path in [
        format!(
            "/api/v1/packages/devel/gmake/builds/{}/log",
            PackageBuildId::new()
        ),
        format!("/api/v1/packages/devel/gmake/builds/{}/log", seeded.perl.id),
    ] {
        s.get(&path, Some(&s.admin))
            .await
            .expect_error(404, "PACKAGE_BUILD_NOT_FOUND");
    }
    // Three segments are no origin and no route.
    s.get("/api/v1/packages/a/b/c", Some(&s.admin))
        .await
        .expect_error(404, "NOT_FOUND");
}

/// Asserts `400 BAD_REQUEST` naming `parameter` (in the message and `details`).
#[track_caller]
fn expect_bad(r: &crate::harness::Reply, parameter: &str) {
    let e = r.expect_error(400, "BAD_REQUEST");
    assert_eq!(e["details"]["parameter"], parameter, "{e:#}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("`{parameter}`")),
        "{e:#}"
    );
}

async fn malformed_origins_and_parameters_are_400_naming_them(s: &Server) {
    let seeded = seed(&s.store).await;
    for path in [
        "/api/v1/packages/devel/g%20make",
        "/api/v1/packages/devel%09x/gmake/status",
        "/api/v1/packages/devel/a%2Fb/history",
        "/api/v1/packages/devel/x%01/deps",
    ] {
        expect_bad(&s.get(path, Some(&s.admin)).await, "origin");
    }
    for (path, parameter) in [
        ("/api/v1/packages?limit=0", "limit"),
        ("/api/v1/packages?limit=501", "limit"),
        ("/api/v1/packages?limit=x", "limit"),
        ("/api/v1/packages?cursor=nope", "cursor"),
        ("/api/v1/packages/devel/gmake/history?limit=0", "limit"),
        ("/api/v1/packages/devel/gmake/history?before=nope", "before"),
        ("/api/v1/packages/devel/gmake/builds/nope/log", "id"),
    ] {
        expect_bad(&s.get(path, Some(&s.admin)).await, parameter);
    }
    // A build of another origin is no place to page from.
    let other = format!(
        "/api/v1/packages/devel/gmake/history?before={}",
        seeded.perl.id
    );
    expect_bad(&s.get(&other, Some(&s.admin)).await, "before");
}

async fn only_tokens_for_the_whole_server_may_read_packages(s: &Server) {
    let seeded = seed(&s.store).await;
    let log = format!(
        "/api/v1/packages/devel/gmake/builds/{}/log",
        seeded.gmake[2].id
    );
    let paths = [
        "/api/v1/packages",
        "/api/v1/packages/devel/gmake",
        "/api/v1/packages/devel/gmake/status",
        "/api/v1/packages/devel/gmake/history",
        "/api/v1/packages/devel/gmake/deps",
        log.as_str(),
    ];
    let project = s.store.upsert_project("demo", "/src/demo").await.unwrap();
    let r = s
        .post(
            "/api/v1/tokens",
            &s.admin,
            &json!({ "name": "scoped", "role": "admin", "project": project.id }),
        )
        .await;
    let scoped = r.data()["token"].as_str().unwrap().to_owned();
    let worker = s.token("worker").await;
    let viewer = s.token("viewer").await;
    for path in paths {
        s.get(path, None).await.expect_error(401, "UNAUTHORIZED");
        s.get(path, Some("not-a-token"))
            .await
            .expect_error(401, "UNAUTHORIZED");
        s.get(path, Some(&worker))
            .await
            .expect_error(403, "FORBIDDEN");
        let e = s
            .get(path, Some(&scoped))
            .await
            .expect_error(403, "FORBIDDEN");
        assert!(
            e["message"].as_str().unwrap().contains("whole server"),
            "{path}: {e:#}"
        );
        // A viewer reads (`/deps` answers that no tree is configured: not a refusal).
        let r = s.get(path, Some(&viewer)).await;
        if path.ends_with("/deps") {
            r.expect_error(409, "PACKAGE_TREE_NOT_CONFIGURED");
        } else {
            assert_eq!(r.status, 200, "{path}: {}", r.text);
        }
        // Reading only: nothing else is routed.
        let post = s.post(path, &s.admin, &json!({})).await;
        post.expect_error(405, "METHOD_NOT_ALLOWED");
    }
}

async fn stats_count_package_builds(s: &Server) {
    let before = s.get("/api/v1/stats", Some(&s.admin)).await.data();
    assert_eq!(
        before["packages"],
        json!({
            "all_time": { "built": 0, "failed": 0, "skipped": 0, "cached": 0, "cancelled": 0 },
            "last_session": null,
            "origins": 0,
            "build_time_p50_seconds": null,
            "build_time_p95_seconds": null,
        })
    );

    let seeded = seed(&s.store).await;
    // A session still running is not the last finished one, and its builds count all time.
    let running = s
        .store
        .begin_build_session("ports", 8, at(5_000))
        .await
        .unwrap();
    let extra = build(running, "lang/perl5", Failure, 6_000, 50);
    s.store.record_package_builds(&[extra]).await.unwrap();

    let viewer = s.token("viewer").await;
    let packages = s.get("/api/v1/stats", Some(&viewer)).await.data()["packages"].clone();
    assert_eq!(
        packages["all_time"],
        json!({ "built": 2, "failed": 2, "skipped": 1, "cached": 1, "cancelled": 0 })
    );
    assert_eq!(packages["origins"], 3);
    // Successful builds took 100 and 800 ms: nearest-rank p50 100 ms, p95 800 ms.
    assert_eq!(packages["build_time_p50_seconds"], 0.1);
    assert_eq!(packages["build_time_p95_seconds"], 0.8);
    let last = &packages["last_session"];
    assert_eq!(last["id"], seeded.session.to_string());
    assert_eq!(last["tree"], "ports");
    assert_eq!(last["slots"], 2);
    assert_eq!(
        last["counts"],
        json!({ "built": 2, "failed": 1, "skipped": 1, "cached": 1, "cancelled": 0 })
    );
    let finished: Timestamp = last["finished_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(finished, at(4_000));
}

async fn deps_without_a_tree_say_how_to_configure_one(s: &Server) {
    let e = s
        .get("/api/v1/packages/devel/gmake/deps", Some(&s.admin))
        .await
        .expect_error(409, "PACKAGE_TREE_NOT_CONFIGURED");
    assert!(e["message"].as_str().unwrap().contains("--tree"), "{e:#}");
}

/// Writes `root/origin/kiln-package.toml`.
fn package(root: &Path, origin: &str, depends: &[&str], run_depends: &[&str]) {
    let dir = root.join(origin);
    std::fs::create_dir_all(&dir).unwrap();
    let list = |l: &[&str]| {
        l.iter()
            .map(|o| format!("\"{o}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        dir.join("kiln-package.toml"),
        format!(
            "version = \"2.{}\"\ndepends = [{}]\nrun-depends = [{}]\nbuild = \"true\"\n",
            origin.len(),
            list(depends),
            list(run_depends)
        ),
    )
    .unwrap();
}

/// `/deps` reads the configured tree: the manifests' lists, who names a package, who waits
/// for it (through `run-depends` too) and its `$KILN_DEPS`; a change to the tree shows at
/// the next request, and a broken tree is a 409 listing its problems.
async fn deps_follow_the_tree(s: &Server, tree: &Path) {
    let deps = |origin: &str| {
        let path = format!("/api/v1/packages/{origin}/deps");
        async move { s.get(&path, Some(&s.admin)).await }
    };
    let perl = deps("lang/perl5").await.data();
    assert_eq!(
        perl,
        json!({
            "origin": "lang/perl5",
            "version": "2.10",
            "depends": ["devel/gmake"],
            "run_depends": ["devel/libiconv"],
            "dependents": ["www/nginx"],
            "waiters": ["www/nginx"],
            "kiln_deps": ["devel/gmake"],
        })
    );
    let nginx = deps("www/nginx").await.data();
    assert_eq!(
        nginx["kiln_deps"],
        json!(["devel/gmake", "devel/libiconv", "lang/perl5"])
    );
    assert_eq!(nginx["dependents"], json!([]));
    // libiconv is named by perl5 alone, but nginx waits for it: perl5 is usable only with
    // its run-depends.
    let iconv = deps("devel/libiconv").await.data();
    assert_eq!(iconv["dependents"], json!(["lang/perl5"]));
    assert_eq!(iconv["waiters"], json!(["www/nginx"]));
    // Not built is fine; not in the tree is not.
    let e = deps("devel/none")
        .await
        .expect_error(404, "PACKAGE_NOT_FOUND");
    assert!(e["message"].as_str().unwrap().contains("tree"), "{e:#}");

    // A new package shows at once.
    package(tree, "devel/bison", &["devel/gmake"], &[]);
    let gmake = deps("devel/gmake").await.data();
    assert_eq!(gmake["dependents"], json!(["devel/bison", "lang/perl5"]));

    // A broken tree: every request says so, with its problems, until it is repaired.
    package(tree, "www/site", &["www/missing"], &[]);
    let r = deps("devel/gmake").await;
    let e = r.expect_error(409, "PACKAGE_TREE_INVALID");
    assert_eq!(e["details"]["count"], 1, "{e:#}");
    assert!(
        e["details"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("www/missing"),
        "{e:#}"
    );
    std::fs::remove_dir_all(tree.join("www/site")).unwrap();
    assert_eq!(deps("devel/gmake").await.status, 200);
}

fn sample_tree() -> tempfile::TempDir {
    let tree = tempfile::tempdir().unwrap();
    package(tree.path(), "devel/gmake", &[], &[]);
    package(tree.path(), "devel/libiconv", &[], &[]);
    package(
        tree.path(),
        "lang/perl5",
        &["devel/gmake"],
        &["devel/libiconv"],
    );
    package(tree.path(), "www/nginx", &["lang/perl5"], &[]);
    // Not packages: a hidden folder and a folder without a manifest.
    std::fs::create_dir_all(tree.path().join(".git/refs")).unwrap();
    std::fs::create_dir_all(tree.path().join("Mk/Uses")).unwrap();
    tree
}

mod deps_follow_the_tree {
    use crate::harness::Server;

    async fn with_tree(postgres: bool) {
        let tree = super::sample_tree();
        let root = tree.path().to_owned();
        let s = Server::with_config(postgres, false, move |c| c.package_tree = Some(root)).await;
        super::deps_follow_the_tree(&s, tree.path()).await;
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        with_tree(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        with_tree(true).await;
    }
}
