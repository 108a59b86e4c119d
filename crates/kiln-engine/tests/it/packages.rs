//! The package builder (issue 6): small trees written to a temporary folder, built for real
//! on SQLite. Failure propagation, cancellation, the one-change rebuild set, restored
//! dependency outputs, distfile checks and sandbox containment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_engine::packages::{
    BuildError, BuildEvent, BuildOptions, BuildPlan, BuildReport, build, plan,
};
use kiln_exec::{Limits, Sandbox, SandboxMode};
use kiln_store::{PackageBuild, PackageBuildStatus, Store};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A tree folder and a data folder in one temporary folder.
struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kiln-pkg-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("tree")).expect("tree folder");
        let store = Store::open_sqlite(&dir.path().join("data"))
            .await
            .expect("open the store");
        Self { dir, store }
    }

    fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch folder outside the tree and the data folder.
    fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).expect("scratch folder");
        p
    }

    /// Writes `origin`'s manifest: `version = "1"`, `depends`, `build`, and `extra` lines.
    fn package(&self, origin: &str, depends: &[&str], build: &str, extra: &str) -> &Self {
        let deps: Vec<String> = depends.iter().map(|d| format!("{d:?}")).collect();
        let manifest = format!(
            "version = \"1\"\ndepends = [{}]\nbuild = '''{build}'''\n{extra}",
            deps.join(", ")
        );
        self.file(origin, "kiln-package.toml", &manifest)
    }

    fn file(&self, origin: &str, rel: &str, content: &str) -> &Self {
        let path = self.tree().join(origin).join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    fn options(&self) -> BuildOptions {
        let mut o = BuildOptions::new(self.tree(), self.data());
        o.slots = 2;
        o.limits = Limits {
            grace: Duration::from_millis(500),
            drain: Duration::from_millis(500),
            after_kill: Duration::from_secs(1),
        };
        o
    }

    async fn plan(&self, opts: &BuildOptions) -> BuildPlan {
        plan(&self.store, opts).await.expect("plan")
    }

    /// Plans and builds with `opts`; the report and every event.
    async fn build(&self, opts: &BuildOptions) -> (BuildReport, Vec<BuildEvent>) {
        build_with_events(self.store.clone(), self.plan(opts).await, opts.clone()).await
    }

    async fn latest(&self, origin: &str) -> PackageBuild {
        self.store
            .package_latest(origin)
            .await
            .expect("history")
            .unwrap_or_else(|| panic!("no build of {origin} recorded"))
    }

    async fn log(&self, b: &PackageBuild) -> String {
        let blob = b.log.as_ref().expect("a log");
        let bytes = self.store.blobs().get_content(&blob.digest).await.unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Builds `p`; the report and every event.
async fn build_with_events(
    store: Store,
    p: BuildPlan,
    opts: BuildOptions,
) -> (BuildReport, Vec<BuildEvent>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let report = build(&store, p, &opts, tx, CancellationToken::new())
        .await
        .expect("build");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (report, events)
}

/// Origins of a plan that will be built, sorted.
fn to_build(p: &BuildPlan) -> Vec<String> {
    p.packages()
        .filter(|x| x.cached.is_none())
        .map(|x| x.origin.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_skips_its_dependents_naming_it_and_the_rest_is_built() {
    let f = Fixture::new().await;
    f.package("base/ok", &[], "echo ok > \"$KILN_OUT/ok\"", "")
        .package("base/bad", &[], "echo about to fail; exit 3", "")
        .package("mid/needs-bad", &["base/bad", "base/ok"], "true", "")
        .package("top/needs-mid", &["mid/needs-bad"], "true", "")
        .package(
            "other/fine",
            &["base/ok"],
            "test -f \"$KILN_DEPS/base/ok/ok\"",
            "",
        );
    let (report, events) = f.build(&f.options()).await;

    assert!(!report.cancelled);
    assert_eq!(
        (
            report.counts.built,
            report.counts.failed,
            report.counts.skipped
        ),
        (2, 1, 2),
        "{report:?}"
    );
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].origin, "base/bad");
    assert!(
        report.failures[0].log_tail.contains("about to fail"),
        "{:?}",
        report.failures[0]
    );
    assert_eq!(
        report.failures[0].reason.as_deref(),
        Some("the build phase exited with status 3")
    );

    for origin in ["mid/needs-bad", "top/needs-mid"] {
        let b = f.latest(origin).await;
        assert_eq!(b.status, PackageBuildStatus::Skipped, "{origin}");
        assert_eq!(b.reason.as_deref(), Some("dependency base/bad failed"));
        assert!(b.output.is_none());
    }
    for origin in ["base/ok", "other/fine"] {
        let b = f.latest(origin).await;
        assert_eq!(b.status, PackageBuildStatus::Success, "{origin}: {b:?}");
        assert!(b.output.is_some());
    }
    let bad = f.latest("base/bad").await;
    assert_eq!(bad.status, PackageBuildStatus::Failure);
    assert!(f.log(&bad).await.contains("about to fail"));

    let session = f
        .store
        .build_session(report.session)
        .await
        .unwrap()
        .expect("session");
    assert_eq!(session.counts, report.counts);
    assert!(session.finished_at.is_some());
    let skipped_events = events
        .iter()
        .filter(|e| {
            matches!(e, BuildEvent::Finished { status: PackageBuildStatus::Skipped, reason: Some(r), .. } if r == "dependency base/bad failed")
        })
        .count();
    assert_eq!(skipped_events, 2, "{events:?}");
    // The work area is gone; the tree holds only what was written to it.
    assert!(
        std::fs::read_dir(f.data().join("work/packages"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(!f.tree().join("base/ok/ok").exists());
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is dead for this purpose: it runs nothing and holds no pipe.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_kills_running_builds_with_their_group_and_records_them_cancelled() {
    let f = Fixture::new().await;
    let marker = f.scratch().join("sleeper.pid");
    f.package(
        "slow/sleeper",
        &[],
        &format!("sleep 300 & echo $! > {}; wait", marker.display()),
        "",
    )
    .package("slow/after", &["slow/sleeper"], "true", "");
    let opts = f.options();
    let p = f.plan(&opts).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let store = f.store.clone();
    let task = {
        let cancel = cancel.clone();
        let opts = opts.clone();
        tokio::spawn(async move { build(&store, p, &opts, tx, cancel).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        if let Ok(s) = std::fs::read_to_string(&marker)
            && let Ok(pid) = s.trim().parse()
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(pid_alive(pid));
    let asked = std::time::Instant::now();
    cancel.cancel();
    let report = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the build stops")
        .unwrap()
        .expect("build");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(report.cancelled);
    assert_eq!(report.counts.cancelled, 2, "{report:?}");
    assert_eq!(report.counts.built + report.counts.failed, 0);
    let sleeper = f.latest("slow/sleeper").await;
    assert_eq!(sleeper.status, PackageBuildStatus::Cancelled);
    assert_eq!(
        sleeper.reason.as_deref(),
        Some("stopped: the build was cancelled")
    );
    let after = f.latest("slow/after").await;
    assert_eq!(after.status, PackageBuildStatus::Cancelled);
    assert_eq!(
        after.reason.as_deref(),
        Some("not started: the build was cancelled")
    );
    // The background `sleep` was in the build's process group: it is gone too.
    let gone = std::time::Instant::now() + Duration::from_secs(3);
    while pid_alive(pid) && std::time::Instant::now() < gone {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !pid_alive(pid),
        "the build's background process {pid} survived"
    );
}

/// Whether a process whose command line holds `tag` runs (a zombie does not count).
fn process_with(tag: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            return false;
        };
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(tag))
            && pid_alive(pid)
    })
}

/// base/slow runs until the test lets it end (then fails when `fail`); top/app needs it.
/// Returns the build's task, once top/app is seen prepared — its shell started, waiting —
/// while base/slow still runs, and the file that lets base/slow end.
async fn with_app_prepared_while_its_dependency_runs(
    f: &Fixture,
    opts: &BuildOptions,
    fail: bool,
    app: &str,
) -> (
    tokio::task::JoinHandle<(BuildReport, Vec<BuildEvent>)>,
    PathBuf,
) {
    // In the tree: a sandboxed build sees it (not the host's temporary folder).
    let go = f.tree().join(".go");
    let end = if fail {
        "exit 3"
    } else {
        "echo built > \"$KILN_OUT/file\""
    };
    f.package(
        "base/slow",
        &[],
        &format!(
            "while [ ! -e {} ]; do sleep 0.02; done; {end}",
            go.display()
        ),
        "",
    )
    .package("top/app", &["base/slow"], app, "");
    let task = tokio::spawn(build_with_events(
        f.store.clone(),
        f.plan(opts).await,
        opts.clone(),
    ));
    let tag = app.rsplit('#').next().expect("a tag").trim();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !process_with(tag) {
        assert!(
            std::time::Instant::now() < deadline,
            "top/app was never prepared while base/slow ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!go.exists(), "base/slow still runs");
    (task, go)
}

/// One slot, two packages prepared together: the one that waits for the slot starts, in its
/// history, when it gets it — its duration (the next build's weight for it) is its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_package_waiting_for_a_slot_starts_in_its_history_when_it_gets_one() {
    let f = Fixture::new().await;
    f.package("a/one", &[], "sleep 0.5", "")
        .package("b/two", &[], "sleep 0.5", "");
    let mut opts = f.options();
    opts.slots = 1;
    let (report, _) = f.build(&opts).await;
    assert_eq!(report.counts.built, 2, "{report:?}");
    let (one, two) = (f.latest("a/one").await, f.latest("b/two").await);
    let (first, second) = if one.started_at <= two.started_at {
        (one, two)
    } else {
        (two, one)
    };
    assert!(
        first.started_at.duration_until(second.started_at)
            >= jiff::SignedDuration::from_millis(500),
        "the second started while the first held the slot: {first:?} {second:?}"
    );
    for b in [&first, &second] {
        assert!(
            b.duration >= Duration::from_millis(500)
                && jiff::SignedDuration::try_from(b.duration).unwrap()
                    <= b.started_at.duration_until(b.finished_at)
                        + jiff::SignedDuration::from_millis(2),
            "{b:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_package_is_prepared_while_its_last_dependency_runs_and_then_sees_its_output() {
    let mut sandboxes = vec![Sandbox::off()];
    sandboxes.extend(confining_sandbox());
    for sandbox in sandboxes {
        let f = Fixture::new().await;
        let mut opts = f.options();
        opts.sandbox = sandbox;
        let tag = format!("kiln-prepared-{}", uuid::Uuid::new_v4().simple());
        let app = format!("cat \"$KILN_DEPS/base/slow/file\" # {tag}");
        let (task, go) = with_app_prepared_while_its_dependency_runs(&f, &opts, false, &app).await;
        std::fs::write(&go, "").unwrap();
        let (report, _) = task.await.unwrap();
        assert_eq!(
            report.counts.built,
            2,
            "{:?}: {report:?}",
            opts.sandbox.mode()
        );
        let app = f.latest("top/app").await;
        // Its history holds its own build, not its wait for base/slow.
        let slow = f.latest("base/slow").await;
        assert!(
            app.started_at >= slow.finished_at,
            "{:?}: {app:?} {slow:?}",
            opts.sandbox.mode()
        );
        assert!(
            f.log(&app).await.contains("\nbuilt\n"),
            "{:?}: the last dependency's output is in $KILN_DEPS: {}",
            opts.sandbox.mode(),
            f.log(&app).await
        );
        assert!(!process_with(&tag));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_package_prepared_while_its_dependency_runs_is_skipped_unrun_when_that_fails() {
    let f = Fixture::new().await;
    let ran = f.scratch().join("ran");
    let tag = format!("kiln-prepared-{}", uuid::Uuid::new_v4().simple());
    let app = format!("touch {} # {tag}", ran.display());
    let (task, go) =
        with_app_prepared_while_its_dependency_runs(&f, &f.options(), true, &app).await;
    std::fs::write(&go, "").unwrap();
    let (report, events) = task.await.unwrap();
    assert_eq!(
        (
            report.counts.failed,
            report.counts.skipped,
            report.counts.cancelled
        ),
        (1, 1, 0),
        "{report:?}"
    );
    let app = f.latest("top/app").await;
    assert_eq!(app.status, PackageBuildStatus::Skipped);
    assert_eq!(app.reason.as_deref(), Some("dependency base/slow failed"));
    let reported: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, BuildEvent::Finished { origin, .. } if origin == "top/app"))
        .collect();
    assert_eq!(reported.len(), 1, "reported once: {reported:?}");
    assert!(!ran.exists(), "its command never ran");
    assert!(!process_with(&tag), "its waiting shell is gone");
    // One row per package in the session: the prepared one is not also recorded cancelled.
    let history = f.store.package_history("top/app", None, 10).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
}

/// a/base ← b/lib ← c/app; a/base ← d/other; e/alone. Each output names the package and
/// copies what it saw of its dependencies.
const CHAIN_BUILD: &str = "mkdir -p \"$KILN_OUT/share\"; echo \"$KILN_PACKAGE $KILN_VERSION\" > \"$KILN_OUT/share/name\"; \
                 (cd \"$KILN_DEPS\" && find . | sort) > \"$KILN_OUT/share/deps\"; \
                 for d in \"$KILN_DEPS\"/*/*; do [ -e \"$d\" ] && cat \"$d/share/name\" >> \"$KILN_OUT/share/seen\"; done; true";

fn chain(f: &Fixture) {
    let build = CHAIN_BUILD;
    f.package("a/base", &[], build, "")
        .package("b/lib", &["a/base"], build, "")
        .package("c/app", &["b/lib"], build, "")
        .package("d/other", &["a/base"], build, "")
        .package("e/alone", &[], build, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_is_all_cached_and_one_changed_file_rebuilds_exactly_its_dependents() {
    let f = Fixture::new().await;
    chain(&f);
    let opts = f.options();
    let (first, _) = f.build(&opts).await;
    assert_eq!(first.counts.built, 5, "{first:?}");

    let again = f.plan(&opts).await;
    assert_eq!((again.total(), again.to_build(), again.cached()), (5, 0, 5));
    let (second, _) = f.build(&opts).await;
    assert_eq!(
        (second.counts.built, second.counts.cached),
        (0, 5),
        "{second:?}"
    );
    // No-op rebuilds show in history.
    let base = f.latest("a/base").await;
    assert_eq!(base.status, PackageBuildStatus::Cached);
    assert!(base.output.is_some());
    assert_eq!(
        f.store
            .package_history("a/base", None, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    f.file("b/lib", "patches/fix.diff", "a change\n");
    let changed = f.plan(&opts).await;
    assert_eq!(to_build(&changed), ["b/lib", "c/app"]);
    let (third, _) = f.build(&opts).await;
    assert_eq!(
        (third.counts.built, third.counts.cached),
        (2, 3),
        "{third:?}"
    );
    assert_eq!(f.latest("b/lib").await.status, PackageBuildStatus::Success);
    assert_eq!(f.latest("d/other").await.status, PackageBuildStatus::Cached);

    // Named origins select them with what they need.
    let mut some = opts.clone();
    some.origins = vec!["c/app".to_owned()];
    let named = f.plan(&some).await;
    let origins: Vec<&str> = named.packages().map(|p| p.origin).collect();
    assert_eq!(origins, ["a/base", "b/lib", "c/app"]);
}

/// A work area left by a build that never ended (kiln killed, the machine down) is removed by
/// the next build; one a live build holds, or one being made, is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_work_area_left_by_a_killed_build_is_removed_by_the_next_and_a_live_one_is_kept() {
    let f = Fixture::new().await;
    f.package("a/one", &[], "true", "");
    let sessions = f.data().join("work/packages");
    // Left by a killed build: its lock file there, unlocked. And one from a kiln that did
    // not lock work areas yet.
    let stale = sessions.join("01-killed");
    std::fs::create_dir_all(stale.join("a/one/src")).unwrap();
    std::fs::write(stale.join(".lock"), "").unwrap();
    std::fs::write(stale.join("a/one/src/object.o"), "x").unwrap();
    let unlocked = sessions.join("02-older-kiln");
    std::fs::create_dir_all(unlocked.join("deps/0/a/one")).unwrap();
    // Held by a live build (this test holds its lock), and one a build is making.
    let live = sessions.join("03-live");
    std::fs::create_dir_all(&live).unwrap();
    let lock = std::fs::File::create(live.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let making = sessions.join(".new-04");
    std::fs::create_dir_all(&making).unwrap();

    let (report, _) = f.build(&f.options()).await;
    assert_eq!(report.counts.built, 1, "{report:?}");
    let mut left: Vec<String> = std::fs::read_dir(&sessions)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    // The build's own area went too, as always.
    assert_eq!(left, [".new-04", "03-live"]);
    drop(lock);
}

/// Once every package is started with its `$KILN_DEPS` laid out, the outputs kept for
/// dependents and the spare folders are removed while the last builds still run, not after
/// them: `side/last` runs from the start, waits for `top/app` (laid out from `base/lib`'s
/// kept output) to run, then for the kept outputs and spares to leave the work area
/// (unsandboxed, it sees the work area itself); were they removed only after the last build,
/// it would never end.
#[tokio::test(flavor = "multi_thread")]
async fn kept_outputs_go_while_the_last_builds_run_once_nothing_is_left_to_lay_out() {
    let f = Fixture::new().await;
    let app_ran = f.scratch().join("app-ran");
    f.package("base/lib", &[], "echo built > \"$KILN_OUT/file\"", "")
        .package(
            "top/app",
            &["base/lib"],
            &format!(
                "grep -q built \"$KILN_DEPS/base/lib/file\" && touch {}",
                app_ran.display()
            ),
            "",
        )
        .package(
            "side/last",
            &[],
            &format!(
                r#"w="$KILN_DEPS/../.."
            n=0; until [ -e {} ]; do n=$((n+1)); [ $n -lt 400 ] || {{ echo app never ran; exit 7; }}; sleep 0.05; done
            n=0; while [ -e "$w/outputs" ] || [ -e "$w/spare-deps" ]; do n=$((n+1)); [ $n -lt 400 ] || {{ echo still there; ls "$w"; exit 8; }}; sleep 0.05; done
            echo cleared"#,
                app_ran.display()
            ),
            "",
        );
    let (report, _) = f.build(&f.options()).await;
    let last = f.latest("side/last").await;
    assert_eq!(
        (report.counts.built, report.counts.failed),
        (3, 0),
        "{report:?}\n{}",
        f.log(&last).await
    );
    assert!(f.log(&last).await.contains("\ncleared\n"));
    let left = std::fs::read_dir(f.data().join("work/packages"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the work area is gone");

    // A dependent of a cached package still finds its output restored and laid out.
    f.file("top/app", "README", "changed\n");
    let (again, _) = f.build(&f.options()).await;
    assert_eq!(
        (again.counts.built, again.counts.cached),
        (1, 2),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dependent_of_cached_packages_sees_their_restored_outputs_in_kiln_deps() {
    dependent_of_cached_packages(None).await;
}

/// The same in the sandbox, where `$KILN_DEPS` is made of read-only binds: the closure's
/// outputs as folders, and no other package's output (e/alone, d/other) anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandboxed_dependent_sees_exactly_its_closure_in_kiln_deps() {
    let Some(sandbox) = confining_sandbox() else {
        return;
    };
    dependent_of_cached_packages(Some(sandbox)).await;
}

async fn dependent_of_cached_packages(sandbox: Option<Sandbox>) {
    let f = Fixture::new().await;
    chain(&f);
    let mut opts = f.options();
    if let Some(s) = sandbox {
        opts.sandbox = s;
        // Nothing of the session's outputs is reachable beside the closure.
        f.package(
            "c/app",
            &["b/lib"],
            &format!(
                "{CHAIN_BUILD}; if grep -rqs 'e/alon[e] 1' \"$KILN_DEPS/../../..\" /tmp; then echo saw e/alone; exit 9; fi; \
                 if echo x > \"$KILN_DEPS/b/lib/share/name\" 2>/dev/null; then echo wrote a dependency; exit 8; fi"
            ),
            "",
        );
    }
    let (first, _) = f.build(&opts).await;
    let app = f.latest("c/app").await;
    assert_eq!(first.counts.built, 5, "{first:?}\n{}", f.log(&app).await);

    // Only c/app changes: a/base and b/lib are cached and come from the blob store.
    f.file("c/app", "README", "changed\n");
    let changed = f.plan(&opts).await;
    assert_eq!(to_build(&changed), ["c/app"]);
    let (second, _) = f.build(&opts).await;
    assert_eq!(
        (second.counts.built, second.counts.cached),
        (1, 4),
        "{second:?}"
    );

    let app = f.latest("c/app").await;
    assert_eq!(app.status, PackageBuildStatus::Success, "{app:?}");
    let out = f.scratch().join("app-out");
    f.store
        .restore_package_output(&app.output.unwrap().digest, &out)
        .await
        .unwrap();
    // Its $KILN_DEPS: the whole closure (b/lib and, through it, a/base), nothing else.
    let deps = std::fs::read_to_string(out.join("share/deps")).unwrap();
    assert_eq!(
        deps.lines().collect::<Vec<_>>(),
        [
            ".",
            "./a",
            "./a/base",
            "./a/base/share",
            "./a/base/share/deps",
            "./a/base/share/name",
            "./b",
            "./b/lib",
            "./b/lib/share",
            "./b/lib/share/deps",
            "./b/lib/share/name",
            "./b/lib/share/seen",
        ]
    );
    let seen = std::fs::read_to_string(out.join("share/seen")).unwrap();
    assert_eq!(seen, "a/base 1\nb/lib 1\n");
}

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn distfiles_are_checked_after_fetch_and_a_mismatch_or_missing_file_fails_the_package() {
    let f = Fixture::new().await;
    let fetch = "fetch = 'printf hello > src.tar'\n";
    f.package(
        "dist/good",
        &[],
        "cp src.tar \"$KILN_OUT/\"",
        &format!(
            "{fetch}distfiles = {{ \"src.tar\" = \"sha256:{}\" }}\n",
            sha256("hello")
        ),
    )
    .package(
        "dist/bad",
        &[],
        "echo should not run",
        &format!(
            "{fetch}distfiles = {{ \"src.tar\" = \"sha256:{}\" }}\n",
            sha256("hello!")
        ),
    )
    .package(
        "dist/missing",
        &[],
        "echo should not run",
        &format!(
            "{fetch}distfiles = {{ \"other.tar\" = \"sha256:{}\" }}\n",
            sha256("x")
        ),
    );
    let (report, _) = f.build(&f.options()).await;
    assert_eq!(
        (report.counts.built, report.counts.failed),
        (1, 2),
        "{report:?}"
    );

    let bad = f.latest("dist/bad").await;
    assert_eq!(bad.status, PackageBuildStatus::Failure);
    let reason = bad.reason.clone().unwrap();
    assert!(
        reason.starts_with("distfile src.tar: checksum mismatch: expected sha256:")
            && reason.ends_with(&format!("got sha256:{}", sha256("hello"))),
        "{reason}"
    );
    assert!(!f.log(&bad).await.contains("should not run"));
    let missing = f.latest("dist/missing").await;
    assert_eq!(
        missing.reason.as_deref(),
        Some("distfile other.tar: missing after the fetch phase")
    );
    assert_eq!(
        f.latest("dist/good").await.status,
        PackageBuildStatus::Success
    );
    // The fetch ran in the scratch copy: the tree has no `src.tar`.
    assert!(!f.tree().join("dist/good/src.tar").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_trees_and_unknown_origins_are_refused_before_anything_runs() {
    let f = Fixture::new().await;
    f.package("a/one", &["a/two"], "true", "")
        .package("a/two", &["a/one"], "true", "");
    let err = plan(&f.store, &f.options()).await.err().expect("a cycle");
    assert!(err.is_user_error());
    assert!(matches!(err, BuildError::Invalid(_)));
    assert_eq!(err.to_string(), "dependency cycle: a/one → a/two → a/one");

    let g = Fixture::new().await;
    g.package("a/one", &[], "true", "");
    let mut opts = g.options();
    opts.origins = vec!["a/one".into(), "no/such".into()];
    let err = plan(&g.store, &opts).await.err().expect("unknown origin");
    assert!(err.is_user_error());
    assert_eq!(err.to_string(), "not in the tree: no/such");
    assert!(g.store.build_sessions(10).await.unwrap().is_empty());
}

/// The detected sandbox, or `None` (after saying why) where bubblewrap cannot run.
#[expect(clippy::print_stderr, reason = "say why the test checked nothing")]
fn confining_sandbox() -> Option<Sandbox> {
    match Sandbox::detect(SandboxMode::Require) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipped: bubblewrap cannot run here: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandboxed_build_cannot_write_the_tree_or_kilns_data_or_reach_the_network() {
    let Some(sandbox) = confining_sandbox() else {
        return;
    };
    let f = Fixture::new().await;
    let manifest = f.tree().join("box/probe/kiln-package.toml");
    let outside = f.scratch().join("escaped");
    let db = f.data().join("kiln.db");
    // Each check exits non-zero when the sandbox let it through, so the build only
    // succeeds when all held.
    let build = format!(
        "if echo hacked >> {manifest} 2>/dev/null; then echo 'wrote the tree'; exit 10; fi
         if echo x > {outside} 2>/dev/null; then echo 'wrote outside'; exit 11; fi
         if [ -e {db} ]; then echo 'saw the database'; exit 12; fi
         ifaces=$(awk 'NR > 2 {{ print $1 }}' /proc/net/dev | tr -d '\\n')
         if [ \"$ifaces\" != lo: ]; then echo \"network: $ifaces\"; exit 13; fi
         echo scratch > here.txt
         echo ok > \"$KILN_OUT/ok\"",
        manifest = path(&manifest),
        outside = path(&outside),
        db = path(&db),
    );
    f.package("box/probe", &[], &build, "");
    let before = std::fs::read_to_string(&manifest).unwrap();
    let mut opts = f.options();
    opts.sandbox = sandbox;
    let (report, _) = f.build(&opts).await;
    let probe = f.latest("box/probe").await;
    assert_eq!(
        probe.status,
        PackageBuildStatus::Success,
        "{report:?}\n{}",
        f.log(&probe).await
    );
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), before);
    assert!(!outside.exists());

    // The same probe unconfined does get through (so the checks above can fail).
    let g = Fixture::new().await;
    let manifest = g.tree().join("box/probe/kiln-package.toml");
    g.package(
        "box/probe",
        &[],
        &format!(
            "if echo '# hacked' >> {m} 2>/dev/null; then echo 'wrote the tree'; exit 10; fi",
            m = path(&manifest)
        ),
        "",
    );
    g.build(&g.options()).await;
    let probe = g.latest("box/probe").await;
    assert_eq!(probe.status, PackageBuildStatus::Failure);
    assert_eq!(
        probe.reason.as_deref(),
        Some("the build phase exited with status 10")
    );
}

/// A path quoted for `sh`.
fn path(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn builds_see_only_the_keyed_environment_and_the_toolchain_label_is_in_every_key() {
    let f = Fixture::new().await;
    // nextest and cargo set CARGO_* for the test process; a build must not inherit them.
    f.package(
        "env/probe",
        &[],
        "test -z \"${CARGO_MANIFEST_DIR:-}\" || { echo leaked; exit 20; }
         test \"$KILN_TEST_CC\" = clang || { echo \"CC=$KILN_TEST_CC\"; exit 21; }
         test \"$KILN_PACKAGE $KILN_VERSION\" = 'env/probe 1' || exit 22
         test \"$PATH\" = /usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin || exit 23
         test \"$HOME\" = \"$PWD\" || exit 24",
        "",
    );
    let mut opts = f.options();
    opts.toolchain
        .env
        .push(("KILN_TEST_CC".to_owned(), "clang".to_owned()));
    let (report, _) = f.build(&opts).await;
    let probe = f.latest("env/probe").await;
    assert_eq!(
        probe.status,
        PackageBuildStatus::Success,
        "{report:?}\n{}",
        f.log(&probe).await
    );

    let keys = |p: &BuildPlan| p.packages().map(|x| x.key).collect::<Vec<_>>();
    let mut a = f.options();
    a.toolchain = kiln_engine::packages::Toolchain::detect(Some("gcc-13"), &[]);
    let mut b = f.options();
    b.toolchain = kiln_engine::packages::Toolchain::detect(Some("gcc-14"), &[]);
    let (ka, kb) = (keys(&f.plan(&a).await), keys(&f.plan(&b).await));
    assert_eq!(
        ka,
        keys(&f.plan(&a).await),
        "the same toolchain, the same keys"
    );
    assert_ne!(ka, kb);
}
