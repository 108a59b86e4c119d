//! Package builds (`kiln build`) on both backends: history, latest and status read back what
//! was recorded; the cache answers successes only, by key; a large batch is one all-or-nothing
//! call; durations and stats; outputs round-trip through the blob store byte for byte, and
//! archives that would write or point outside their folder are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_store::{
    BuildCounts, BuildSessionId, ContentBlob, ExportTable, OutputError, PackageBuild,
    PackageBuildId, PackageBuildStatus, Store, StoreError,
};
use sha2::{Digest as _, Sha256};

use crate::harness::{Harness, at, both_backends};

both_backends!(
    history_latest_and_status_read_back_what_was_recorded,
    the_cache_answers_only_successes_by_key,
    five_thousand_builds_are_recorded_in_one_all_or_nothing_call,
    durations_are_each_origins_last_successful_build,
    stats_count_all_time_and_the_last_finished_session,
    outputs_round_trip_through_the_blob_store,
    malicious_archives_are_refused_and_leave_nothing,
    database_stats_and_export_include_the_package_tables,
);

use PackageBuildStatus::{Cached, Cancelled, Failure, Skipped, Success};

/// A 64-hex digest standing for `name` (a cache key or a blob's digest).
fn hex_of(name: &str) -> String {
    hex::encode(Sha256::digest(name.as_bytes()))
}

/// A build of `origin` with key `key` that finished at `at(finished)` after `ms`.
fn build(
    session: BuildSessionId,
    origin: &str,
    key: &str,
    status: PackageBuildStatus,
    finished: i64,
    ms: u64,
) -> PackageBuild {
    PackageBuild {
        id: PackageBuildId::new(),
        session,
        origin: origin.to_owned(),
        version: "1.0".to_owned(),
        key: hex_of(key),
        status,
        reason: None,
        started_at: at(finished - i64::try_from(ms).unwrap()),
        finished_at: at(finished),
        duration: Duration::from_millis(ms),
        log: None,
        log_tail: String::new(),
        output: status.has_output().then(|| ContentBlob {
            digest: hex_of(&format!("output of {key}")),
            size: 512,
        }),
    }
}

async fn session(s: &Store) -> BuildSessionId {
    s.begin_build_session("ports", 4, at(0)).await.unwrap()
}

async fn history_latest_and_status_read_back_what_was_recorded(h: &Harness) {
    let s = &h.store;
    let sid = session(s).await;
    let log = s
        .blobs()
        .put_content(b"configure\nmake\nerror: boom\n".to_vec())
        .await
        .unwrap();
    let mut failed = build(sid, "devel/foo", "foo-1", Failure, 1_000, 900);
    failed.reason = Some("exit status 2".to_owned());
    failed.log = Some(log.clone());
    failed.log_tail = "make\nerror: boom\0".to_owned();
    let fixed = build(sid, "devel/foo", "foo-2", Success, 2_000, 800);
    let mut skipped = build(sid, "devel/foo", "foo-3", Skipped, 3_000, 0);
    skipped.reason = Some("dependency devel/bar failed".to_owned());
    let bar = build(sid, "devel/bar", "bar-1", Success, 1_500, 100);
    let cancelled = build(sid, "lang/perl5", "perl-1", Cancelled, 2_500, 50);
    // Recorded out of time order (as a batch of what finished): history goes by finish time.
    s.record_package_builds(&[skipped.clone(), failed.clone(), bar.clone()])
        .await
        .unwrap();
    s.record_package_builds(&[fixed.clone(), cancelled.clone()])
        .await
        .unwrap();

    let history = s.package_history("devel/foo", None, 10).await.unwrap();
    let ids: Vec<PackageBuildId> = history.iter().map(|b| b.id).collect();
    assert_eq!(ids, [skipped.id, fixed.id, failed.id]);
    // Everything comes back as it went in, the NUL of the tail excepted.
    let mut want = failed.clone();
    want.log_tail = "make\nerror: boom\u{fffd}".to_owned();
    assert_eq!(history[2], want);
    assert_eq!(history[1], fixed);
    assert_eq!(
        history[0].reason.as_deref(),
        Some("dependency devel/bar failed")
    );
    assert_eq!(
        s.blobs().get_content(&log.digest).await.unwrap(),
        b"configure\nmake\nerror: boom\n"
    );
    // Pages: after the first, the rest.
    let first = s.package_history("devel/foo", None, 1).await.unwrap();
    assert_eq!(first[0].id, skipped.id);
    let rest = s
        .package_history("devel/foo", Some(first[0].id), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|b| b.id).collect::<Vec<_>>(),
        [fixed.id, failed.id]
    );

    assert_eq!(
        s.package_latest("devel/foo").await.unwrap().map(|b| b.id),
        Some(skipped.id)
    );
    assert_eq!(s.package_latest("devel/none").await.unwrap(), None);
    assert_eq!(s.package_build(bar.id).await.unwrap(), Some(bar.clone()));
    assert_eq!(s.package_build(PackageBuildId::new()).await.unwrap(), None);

    // The latest build of every origin, by origin, page by page.
    let all = s.package_status(None, 100).await.unwrap();
    let latest: Vec<(&str, PackageBuildId)> =
        all.iter().map(|b| (b.origin.as_str(), b.id)).collect();
    assert_eq!(
        latest,
        [
            ("devel/bar", bar.id),
            ("devel/foo", skipped.id),
            ("lang/perl5", cancelled.id),
        ]
    );
    let page = s.package_status(None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let next = s.package_status(Some(&page[1].origin), 2).await.unwrap();
    assert_eq!(
        next.iter().map(|b| b.id).collect::<Vec<_>>(),
        [cancelled.id]
    );
}

async fn the_cache_answers_only_successes_by_key(h: &Harness) {
    let s = &h.store;
    let sid = session(s).await;
    let old = build(sid, "devel/a", "a", Success, 1_000, 10);
    let new = build(sid, "devel/a", "a", Success, 2_000, 20);
    s.record_package_builds(&[
        new.clone(),
        old.clone(),
        build(sid, "devel/b", "b", Failure, 1_000, 10),
        build(sid, "devel/c", "c", Skipped, 1_000, 0),
        build(sid, "devel/d", "d", Cancelled, 1_000, 5),
        // A cached build reuses a success; it is not one itself.
        build(sid, "devel/e", "e", Cached, 1_000, 0),
    ])
    .await
    .unwrap();
    let keys: Vec<String> = ["a", "b", "c", "d", "e", "unknown", "a"]
        .iter()
        .map(|k| hex_of(k))
        .collect();
    let cached = s.cached_builds(&keys).await.unwrap();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let hit = &cached[&hex_of("a")];
    // Built twice with one key: the newest success answers.
    assert_eq!(hit.id, new.id);
    assert_eq!(hit.origin, "devel/a");
    assert_eq!(hit.duration, Duration::from_millis(20));
    assert_eq!(Some(&hit.output), new.output.as_ref());
    assert!(s.cached_builds(&[]).await.unwrap().is_empty());
}

async fn five_thousand_builds_are_recorded_in_one_all_or_nothing_call(h: &Harness) {
    let s = &h.store;
    let sid = session(s).await;
    let builds: Vec<PackageBuild> = (0..5_000)
        .map(|i| {
            let status = [Success, Failure, Skipped, Cached][i % 4];
            build(
                sid,
                &format!("cat{}/pkg{i}", i % 7),
                &format!("k{i}"),
                status,
                1_000,
                10,
            )
        })
        .collect();
    // One bad row at the very end (a success without its output) refuses the whole call,
    // rows of earlier statements included.
    let mut bad = builds.clone();
    bad.last_mut().unwrap().status = Success;
    bad.last_mut().unwrap().output = None;
    assert!(matches!(
        s.record_package_builds(&bad).await,
        Err(StoreError::Query { .. })
    ));
    assert!(s.package_status(None, 10).await.unwrap().is_empty());
    // A build of a session that does not exist is refused too.
    let stray = build(BuildSessionId::new(), "devel/x", "x", Failure, 1, 1);
    assert!(s.record_package_builds(&[stray]).await.is_err());

    s.record_package_builds(&builds).await.unwrap();
    let stats = s.package_stats().await.unwrap();
    assert_eq!(stats.all_time.total(), 5_000);
    assert_eq!(stats.all_time.built, 1_250);
    assert_eq!(stats.all_time.cached, 1_250);
    assert_eq!(stats.origins, 5_000);
    let mut origins = 0;
    let mut after: Option<String> = None;
    loop {
        let page = s.package_status(after.as_deref(), 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        origins += page.len();
        after = Some(last.origin.clone());
    }
    assert_eq!(origins, 5_000);
    // All 5,000 keys in one call: the 1,250 successes.
    let keys: Vec<String> = builds.iter().map(|b| b.key.clone()).collect();
    assert_eq!(s.cached_builds(&keys).await.unwrap().len(), 1_250);
}

async fn durations_are_each_origins_last_successful_build(h: &Harness) {
    let s = &h.store;
    let sid = session(s).await;
    let mut builds = vec![
        // The last success counts, not a later failure…
        build(sid, "devel/a", "a1", Success, 1_000, 10_000),
        build(sid, "devel/a", "a2", Failure, 2_000, 5),
        // …and of two successes, the later one.
        build(sid, "devel/b", "b1", Success, 1_000, 10_000),
        build(sid, "devel/b", "b2", Success, 2_000, 20_000),
        // Never successful: unknown.
        build(sid, "devel/c", "c1", Failure, 1_000, 7),
    ];
    // More origins than one query takes.
    for i in 0..2_500 {
        builds.push(build(
            sid,
            &format!("bulk/p{i}"),
            &format!("p{i}"),
            Success,
            1_000,
            i,
        ));
    }
    s.record_package_builds(&builds).await.unwrap();
    let mut origins: Vec<String> = ["devel/a", "devel/b", "devel/c", "devel/none"]
        .iter()
        .map(|o| (*o).to_owned())
        .collect();
    origins.extend((0..2_500).map(|i| format!("bulk/p{i}")));
    let durations = s.package_durations(&origins).await.unwrap();
    assert_eq!(durations.len(), 2 + 2_500);
    assert_eq!(durations["devel/a"], Duration::from_secs(10));
    assert_eq!(durations["devel/b"], Duration::from_secs(20));
    assert!(!durations.contains_key("devel/c"));
    assert!(!durations.contains_key("devel/none"));
    assert_eq!(durations["bulk/p2499"], Duration::from_millis(2_499));
}

async fn stats_count_all_time_and_the_last_finished_session(h: &Harness) {
    let s = &h.store;
    let empty = s.package_stats().await.unwrap();
    assert_eq!(empty.last_session, None);
    assert_eq!((empty.p50_ms, empty.p95_ms), (None, None));

    let first = s.begin_build_session("ports", 2, at(0)).await.unwrap();
    let builds: Vec<PackageBuild> = (1..=20)
        .map(|i| {
            build(
                first,
                &format!("devel/p{i}"),
                &format!("p{i}"),
                Success,
                100_000,
                i * 1_000,
            )
        })
        .chain([
            build(first, "devel/f", "f", Failure, 100_000, 999_999),
            build(first, "devel/s", "s", Skipped, 100_000, 0),
        ])
        .collect();
    s.record_package_builds(&builds).await.unwrap();
    let counts = BuildCounts {
        built: 20,
        failed: 1,
        skipped: 1,
        cached: 0,
        cancelled: 0,
    };
    assert!(
        s.finish_build_session(first, &counts, at(200_000))
            .await
            .unwrap()
    );
    // The first end stands.
    assert!(
        !s.finish_build_session(first, &BuildCounts::default(), at(300_000))
            .await
            .unwrap()
    );
    assert!(
        !s.finish_build_session(BuildSessionId::new(), &counts, at(1))
            .await
            .unwrap()
    );
    // A newer session still running is not "the last session" yet.
    let second = s
        .begin_build_session("ports", 8, at(400_000))
        .await
        .unwrap();
    s.record_package_builds(&[build(second, "devel/p1", "p1", Cached, 400_001, 0)])
        .await
        .unwrap();

    let stats = s.package_stats().await.unwrap();
    let last = stats.last_session.clone().unwrap();
    assert_eq!(last.id, first);
    assert_eq!(last.counts, counts);
    assert_eq!((last.slots, last.tree.as_str()), (2, "ports"));
    assert_eq!(last.finished_at, Some(at(200_000)));
    assert_eq!(
        stats.all_time,
        BuildCounts {
            built: 20,
            failed: 1,
            skipped: 1,
            cached: 1,
            cancelled: 0,
        }
    );
    assert_eq!(stats.origins, 22);
    // Nearest rank over the 20 successes (1 s … 20 s): the 10th and the 19th; the failure's
    // long run does not count.
    assert_eq!((stats.p50_ms, stats.p95_ms), (Some(10_000), Some(19_000)));

    let running = s.build_session(second).await.unwrap().unwrap();
    assert_eq!(running.finished_at, None);
    assert_eq!(running.counts, BuildCounts::default());
    let listed: Vec<BuildSessionId> = s
        .build_sessions(10)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(listed, [second, first]);
    let done = BuildCounts {
        cached: 1,
        ..BuildCounts::default()
    };
    s.finish_build_session(second, &done, at(400_010))
        .await
        .unwrap();
    let stats = s.package_stats().await.unwrap();
    assert_eq!(
        stats.last_session.map(|x| (x.id, x.counts)),
        Some((second, done))
    );
}

/// What a folder holds, for comparing: each path with its kind and content.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { data: Vec<u8>, executable: bool },
    Link(PathBuf),
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    use std::os::unix::fs::PermissionsExt as _;
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_owned();
            let kind = e.file_type();
            let node = if kind.is_symlink() {
                Node::Link(std::fs::read_link(e.path()).unwrap())
            } else if kind.is_dir() {
                Node::Dir
            } else {
                Node::File {
                    data: std::fs::read(e.path()).unwrap(),
                    executable: e.metadata().unwrap().permissions().mode() & 0o111 != 0,
                }
            };
            (rel, node)
        })
        .collect()
}

/// A package output with what real ones hold: nested folders, an empty one, an executable,
/// an empty file, a relative symlink, a name longer than tar's 100 bytes, a larger file.
fn sample_output(root: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let long = format!("usr/share/doc/{}/README", "x".repeat(120));
    for dir in ["usr/bin", "usr/lib", "usr/share/empty"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::create_dir_all(root.join(&long).parent().unwrap()).unwrap();
    std::fs::write(root.join("usr/bin/foo"), b"#!/bin/sh\necho foo\n").unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/foo"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("usr/lib/libfoo.so.1"), vec![7u8; 300_000]).unwrap();
    std::fs::write(root.join("usr/lib/empty"), b"").unwrap();
    std::os::unix::fs::symlink("libfoo.so.1", root.join("usr/lib/libfoo.so")).unwrap();
    std::os::unix::fs::symlink("../lib/libfoo.so.1", root.join("usr/bin/lib")).unwrap();
    std::fs::write(root.join(&long), "héllo").unwrap();
}

async fn outputs_round_trip_through_the_blob_store(h: &Harness) {
    let s = &h.store;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    sample_output(&out);
    let blob = s.store_package_output(&out).await.unwrap();
    assert_eq!(blob.digest.len(), 64);
    assert!(blob.size > 300_000);
    assert!(s.blobs().contains_content(&blob.digest).await.unwrap());

    // The same files made again with other times pack to the same blob.
    let again = work.path().join("again");
    sample_output(&again);
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for entry in walkdir::WalkDir::new(&again) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let f = std::fs::File::options()
                .write(true)
                .open(entry.path())
                .unwrap();
            f.set_modified(old).unwrap();
        }
    }
    assert_eq!(s.store_package_output(&again).await.unwrap(), blob);

    let restored = work.path().join("deps/devel/foo");
    s.restore_package_output(&blob.digest, &restored)
        .await
        .unwrap();
    assert_eq!(snapshot(&restored), snapshot(&out));
    assert!(matches!(
        snapshot(&restored)[Path::new("usr/bin/foo")],
        Node::File {
            executable: true,
            ..
        }
    ));

    // A folder that holds anything is not unpacked into, and keeps what it holds.
    let err = s
        .restore_package_output(&blob.digest, &restored)
        .await
        .unwrap_err();
    assert!(matches!(err, OutputError::NotEmpty { .. }), "{err}");
    assert_eq!(snapshot(&restored), snapshot(&out));

    // An empty output is an archive too.
    let none = work.path().join("none");
    std::fs::create_dir(&none).unwrap();
    let empty = s.store_package_output(&none).await.unwrap();
    let into = work.path().join("none-restored");
    s.restore_package_output(&empty.digest, &into)
        .await
        .unwrap();
    assert!(snapshot(&into).is_empty());

    // A missing blob is the store's error; a damaged one is noticed, and nothing is kept.
    let missing = work.path().join("missing");
    let err = s
        .restore_package_output(&hex_of("nothing"), &missing)
        .await
        .unwrap_err();
    assert!(
        matches!(err, OutputError::Store(StoreError::BlobRead { .. })),
        "{err}"
    );
    let key = kiln_store::blob::content_key(&blob.digest).unwrap();
    let path = h.blob_dir().join(key);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2_000;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let damaged = work.path().join("damaged");
    let err = s
        .restore_package_output(&blob.digest, &damaged)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match its SHA-256"),
        "{err}"
    );
    assert!(snapshot(&damaged).is_empty());

    // An output with a link out of itself is refused when packed, naming the link.
    std::os::unix::fs::symlink("../../../etc/passwd", out.join("usr/lib/passwd")).unwrap();
    let err = s.store_package_output(&out).await.unwrap_err();
    assert!(matches!(err, OutputError::Unpackable { .. }), "{err}");
    assert!(err.to_string().contains("usr/lib/passwd"), "{err}");
    assert!(
        err.to_string().contains("leads out of the package output"),
        "{err}"
    );
}

/// One raw tar entry: its path and link name as bytes, unchecked, as an attacker writes them.
struct Raw<'a> {
    path: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        header.set_entry_type(e.kind);
        header.set_mode(0o644);
        header.set_size(e.data.len() as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(e.data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        path,
        kind: tar::EntryType::Regular,
        link: "",
        data,
    }
}

fn link<'a>(path: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        path,
        kind: tar::EntryType::Symlink,
        link: target,
        data: b"",
    }
}

async fn malicious_archives_are_refused_and_leave_nothing(h: &Harness) {
    let s = &h.store;
    let work = tempfile::tempdir().unwrap();
    // What an escape would write: beside the destination, or at an absolute path below the
    // test's own folder.
    let outside = work.path().join("outside");
    let absolute = format!("{}/abs", work.path().display());
    let cases: Vec<(&str, Vec<Raw<'_>>, &str)> = vec![
        (
            "absolute path",
            vec![file(&absolute, b"x")],
            "is an absolute path",
        ),
        (
            "dot-dot",
            vec![file("a/../../outside", b"x")],
            "climbs out of the folder with `..`",
        ),
        (
            "absolute link",
            vec![link("etc", "/etc")],
            "is a symlink to the absolute path `/etc`",
        ),
        (
            "link climbing out",
            vec![link("up", "../outside")],
            "leads out of the package output",
        ),
        (
            // `d/up` alone stays inside; through it, `..` does not.
            "link through a link",
            vec![
                Raw {
                    path: "d",
                    kind: tar::EntryType::Directory,
                    link: "",
                    data: b"",
                },
                link("d/up", ".."),
                link("esc", "d/up/../outside"),
            ],
            "leads out of the package output",
        ),
        (
            "file written through a link",
            vec![link("lib", "."), file("lib/x", b"x")],
            "lies under the symlink `lib`",
        ),
        (
            "file replacing a link",
            vec![link("x", "y"), file("x", b"x")],
            "appears twice in the archive",
        ),
        (
            "hard link",
            vec![Raw {
                path: "h",
                kind: tar::EntryType::Link,
                link: "etc/passwd",
                data: b"",
            }],
            "is a hard link",
        ),
        (
            "device",
            vec![Raw {
                path: "null",
                kind: tar::EntryType::Char,
                link: "",
                data: b"",
            }],
            "not a file, folder or symlink",
        ),
    ];
    for (name, entries, reason) in cases {
        let blob = s.blobs().put_content(raw_tar(&entries)).await.unwrap();
        let dst = work.path().join("dst").join(name.replace(' ', "-"));
        let err = s
            .restore_package_output(&blob.digest, &dst)
            .await
            .unwrap_err();
        assert!(matches!(err, OutputError::Unsafe { .. }), "{name}: {err}");
        let message = err.to_string();
        assert!(message.contains(reason), "{name}: {message}");
        assert!(
            message.starts_with("failed to unpack a package output: its entry `"),
            "{name}: {message}"
        );
        assert!(snapshot(&dst).is_empty(), "{name}: something was kept");
        assert!(!outside.exists(), "{name}: wrote outside");
        assert!(
            !Path::new(&absolute).exists(),
            "{name}: wrote an absolute path"
        );
    }
    // The same kinds of entries, kept inside, unpack: the checks are not blanket refusals.
    let fine = raw_tar(&[
        Raw {
            path: "d",
            kind: tar::EntryType::Directory,
            link: "",
            data: b"",
        },
        file("./d/x", b"x"),
        link("d/up", ".."),
        link("y", "d/up/d/x"),
    ]);
    let blob = s.blobs().put_content(fine).await.unwrap();
    let dst = work.path().join("fine");
    s.restore_package_output(&blob.digest, &dst).await.unwrap();
    assert_eq!(std::fs::read(dst.join("y")).unwrap(), b"x");
}

async fn database_stats_and_export_include_the_package_tables(h: &Harness) {
    let s = &h.store;
    let sid = session(s).await;
    let mut one = build(sid, "devel/a", "a", Success, 1_000, 10);
    one.log = Some(ContentBlob {
        digest: hex_of("log"),
        size: 3,
    });
    one.reason = Some("built".to_owned());
    s.record_package_builds(&[one.clone(), build(sid, "devel/b", "b", Failure, 1_000, 10)])
        .await
        .unwrap();
    let stats = s.database_stats().await.unwrap();
    let rows: BTreeMap<&str, i64> = stats.tables.iter().map(|t| (t.name, t.rows)).collect();
    assert_eq!(rows["build_sessions"], 1);
    assert_eq!(rows["package_builds"], 2);

    for table in [ExportTable::BuildSessions, ExportTable::PackageBuilds] {
        assert!(ExportTable::ALL.contains(&table));
    }
    let page = s
        .export_page(ExportTable::BuildSessions, None, 10)
        .await
        .unwrap();
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.rows[0]["id"], sid.to_string());
    assert_eq!(page.rows[0]["slots"], 4);
    // Page by page, every row once, every column.
    let first = s
        .export_page(ExportTable::PackageBuilds, None, 1)
        .await
        .unwrap();
    let second = s
        .export_page(ExportTable::PackageBuilds, first.next.as_ref(), 1)
        .await
        .unwrap();
    let last = s
        .export_page(ExportTable::PackageBuilds, second.next.as_ref(), 1)
        .await
        .unwrap();
    assert!(last.rows.is_empty() && last.next.is_none());
    let exported: Vec<_> = first.rows.iter().chain(&second.rows).collect();
    let row = exported
        .iter()
        .find(|r| r["id"] == one.id.to_string())
        .unwrap();
    assert_eq!(row.len(), 15, "{row:?}");
    assert_eq!(row["origin"], "devel/a");
    assert_eq!(row["build_key"], one.key);
    assert_eq!(row["status"], "success");
    assert_eq!(row["log_digest"], hex_of("log"));
    assert_eq!(row["output_digest"], one.output.as_ref().unwrap().digest);
    assert_eq!(row["duration_ms"], 10);
    assert_eq!(row["finished_at"], at(1_000).as_millisecond());
}
