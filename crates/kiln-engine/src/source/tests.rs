//! Real repositories built with the git CLI in temp dirs, fetched over `file://`, `git://`
//! (a `git daemon` on loopback) and dumb HTTP (python's `http.server` on loopback).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::Instant;

use tempfile::TempDir;

use super::*;
use crate::egress::Endpoint;

/// A git command isolated from the machine's configuration, with a fixed identity.
fn git_cmd() -> Command {
    let mut cmd = Command::new("git");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "kiln test")
        .env("GIT_AUTHOR_EMAIL", "test@kiln.invalid")
        .env("GIT_COMMITTER_NAME", "kiln test")
        .env("GIT_COMMITTER_EMAIL", "test@kiln.invalid");
    cmd
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("git runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An upstream repository with a work tree, changed through the git CLI.
struct Upstream {
    dir: TempDir,
}

impl Upstream {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let up = Self { dir };
        up.git(&["init", "--quiet", "-b", "main"]);
        up
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    fn git(&self, args: &[&str]) -> String {
        let mut cmd = git_cmd();
        cmd.arg("-C").arg(self.path()).args(args);
        run(cmd)
    }

    /// Write (or with `None`, delete) files, commit everything, return the commit id.
    fn commit(&self, files: &[(&str, Option<&[u8]>)], message: &str) -> String {
        for (name, content) in files {
            let path = self.path().join(name);
            match content {
                Some(bytes) => {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, bytes).unwrap();
                }
                None => std::fs::remove_file(&path).unwrap(),
            }
        }
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

fn local_policy() -> EgressPolicy {
    let mut policy = EgressPolicy::default();
    policy.allow_local_paths = true;
    policy
}

fn loopback_policy() -> EgressPolicy {
    let mut policy = EgressPolicy::default();
    policy.allow_loopback = true;
    policy
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process killed when the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `upstream` cloned bare into `root/name.git`, with the files dumb HTTP serves.
fn bare_copy(upstream: &Upstream, root: &Path, name: &str) -> PathBuf {
    let bare = root.join(format!("{name}.git"));
    let mut cmd = git_cmd();
    cmd.args(["clone", "--quiet", "--bare"])
        .arg(upstream.path())
        .arg(&bare);
    run(cmd);
    let mut cmd = git_cmd();
    cmd.arg("--git-dir").arg(&bare).arg("update-server-info");
    run(cmd);
    bare
}

fn assert_user_unknown(err: SourceError, rev: &str) {
    let msg = err.to_string();
    assert!(
        matches!(&err, SourceError::UnknownRevision { rev: r, .. } if r == rev),
        "{err:?}"
    );
    assert!(
        msg.contains(&format!("no branch, tag or commit `{rev}` in ")),
        "{msg}"
    );
}

#[tokio::test]
async fn fetch_mirrors_branches_and_tags_and_resolves_every_kind_of_name() {
    let up = Upstream::new();
    let c1 = up.commit(&[("a.txt", Some(b"one"))], "one");
    up.git(&["tag", "v1"]);
    up.git(&["checkout", "--quiet", "-b", "feature"]);
    let c2 = up.commit(&[("b.txt", Some(b"two"))], "two");
    up.git(&["tag", "-a", "-m", "annotated", "v2"]);
    up.git(&["checkout", "--quiet", "main"]);

    let mirror = tempfile::tempdir().unwrap();
    let dir = mirror.path().join("projects/p1.git");
    let repo = GitRepo::fetch(&up.url(), &dir, &local_policy())
        .await
        .unwrap();
    assert_eq!(repo.url(), up.url());
    assert_eq!(repo.dir(), dir);
    for (rev, want) in [
        ("main", &c1),
        ("refs/heads/main", &c1),
        ("feature", &c2),
        ("v1", &c1),
        ("refs/tags/v1", &c1),
        // Annotated tags are peeled to their commit.
        ("v2", &c2),
        ("refs/tags/v2", &c2),
        (c1.as_str(), &c1),
        (&c2[..7], &c2),
        (&c2[..4], &c2),
        ("HEAD", &c1),
    ] {
        assert_eq!(&repo.resolve(rev).await.unwrap(), want, "{rev}");
    }
    assert_eq!(
        repo.default_branch().await.unwrap().as_deref(),
        Some("main")
    );

    // Unknown names and not-quite-names.
    for rev in ["nope", "refs/heads/nope", "refs/tags/feature", "deadbeef"] {
        assert_user_unknown(repo.resolve(rev).await.unwrap_err(), rev);
    }
    for rev in [
        "main~1", "main^", "-x", "a..b", "main@{1}", ":/one", "", "a b",
    ] {
        let err = repo.resolve(rev).await.unwrap_err();
        assert!(
            matches!(err, SourceError::BadRevision { .. }),
            "{rev}: {err:?}"
        );
        assert!(err.is_user_error());
    }
    // A tree is not a commit.
    let tree = up.git(&["rev-parse", "main^{tree}"]);
    assert_user_unknown(repo.resolve(&tree).await.unwrap_err(), &tree);

    // `open` finds the same mirror.
    let opened = GitRepo::open(&dir).await.unwrap();
    assert_eq!(opened.url(), up.url());
    assert_eq!(opened.resolve("v2").await.unwrap(), c2);
}

#[tokio::test]
async fn a_second_fetch_picks_up_new_commits_prunes_deleted_refs_and_follows_head() {
    let up = Upstream::new();
    up.commit(&[("a.txt", Some(b"one"))], "one");
    up.git(&["branch", "gone"]);
    up.git(&["tag", "old"]);
    let mirror = tempfile::tempdir().unwrap();
    let dir = mirror.path().join("m.git");
    let repo = GitRepo::fetch(&up.url(), &dir, &local_policy())
        .await
        .unwrap();
    assert!(repo.resolve("gone").await.is_ok());

    let c2 = up.commit(&[("a.txt", Some(b"two"))], "two");
    up.git(&["branch", "-D", "gone"]);
    up.git(&["tag", "-d", "old"]);
    up.git(&["checkout", "--quiet", "-b", "trunk"]);
    let repo = GitRepo::fetch(&up.url(), &dir, &local_policy())
        .await
        .unwrap();
    assert_eq!(repo.resolve("main").await.unwrap(), c2);
    assert_user_unknown(repo.resolve("gone").await.unwrap_err(), "gone");
    assert_user_unknown(repo.resolve("old").await.unwrap_err(), "old");
    assert_eq!(
        repo.default_branch().await.unwrap().as_deref(),
        Some("trunk")
    );
}

#[tokio::test]
async fn an_empty_remote_has_no_default_branch() {
    let up = Upstream::new();
    let mirror = tempfile::tempdir().unwrap();
    let repo = GitRepo::fetch(&up.url(), mirror.path(), &local_policy())
        .await
        .unwrap();
    assert_eq!(repo.default_branch().await.unwrap(), None);
    assert_user_unknown(repo.resolve("main").await.unwrap_err(), "main");
}

#[tokio::test]
async fn a_folder_that_is_not_a_mirror_is_refused() {
    let up = Upstream::new();
    up.commit(&[("a.txt", Some(b"one"))], "one");
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("precious.txt"), "keep").unwrap();
    let err = GitRepo::fetch(&up.url(), other.path(), &local_policy())
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::NotAMirror { .. }), "{err:?}");
    assert_eq!(
        std::fs::read_to_string(other.path().join("precious.txt")).unwrap(),
        "keep"
    );
    // A work tree's repository is not a mirror kiln made either.
    let err = GitRepo::open(&up.path().join(".git")).await.unwrap_err();
    assert!(matches!(err, SourceError::NotAMirror { .. }), "{err:?}");
    let err = GitRepo::open(other.path()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("neither empty nor a mirror kiln made")
    );
}

#[tokio::test]
async fn an_abbreviated_id_shared_by_two_commits_is_ambiguous() {
    // 1,500 commits made by fast-import with fixed dates, so their ids (and the collision
    // of their first four digits) are the same on every run.
    let up = Upstream::new();
    let mut stream = String::new();
    for i in 0..1500 {
        let message = format!("c{i}");
        stream.push_str(&format!(
            "commit refs/heads/many\ncommitter k <k@kiln.invalid> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + i,
            message.len(),
        ));
        // Each commit continues the branch fast-import is building: no `from` needed.
        stream.push('\n');
    }
    let mut cmd = git_cmd();
    cmd.arg("-C")
        .arg(up.path())
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let ids = up.git(&["rev-list", "many"]);
    let mut seen = std::collections::HashMap::new();
    let prefix = ids
        .lines()
        .find_map(|id| {
            seen.insert(id[..4].to_owned(), ())
                .map(|()| id[..4].to_owned())
        })
        .expect("1,500 commits share a four-digit prefix somewhere");

    let mirror = tempfile::tempdir().unwrap();
    let repo = GitRepo::fetch(&up.url(), mirror.path(), &local_policy())
        .await
        .unwrap();
    let err = repo.resolve(&prefix).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::AmbiguousRevision { rev, .. } if *rev == prefix),
        "{err:?}"
    );
    assert!(err.to_string().contains("give more digits"));
}

#[tokio::test]
async fn checkout_materialises_the_commit_as_a_work_tree() {
    let up = Upstream::new();
    let c1 = up.commit(
        &[
            ("README.md", Some(b"first")),
            ("src/lib.rs", Some(b"fn a() {}")),
        ],
        "one",
    );
    let c2 = up.commit(
        &[("README.md", Some(b"second")), ("src/lib.rs", None)],
        "two",
    );
    let mirror = tempfile::tempdir().unwrap();
    let repo = GitRepo::fetch(&up.url(), mirror.path(), &local_policy())
        .await
        .unwrap();

    let ws = tempfile::tempdir().unwrap();
    let dest = ws.path().join("job1/workspace");
    repo.checkout(&c1, &dest).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.join("README.md")).unwrap(),
        "first"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("src/lib.rs")).unwrap(),
        "fn a() {}"
    );
    let in_dest = |args: &[&str]| {
        let mut cmd = git_cmd();
        cmd.arg("-C").arg(&dest).args(args);
        run(cmd)
    };
    assert_eq!(in_dest(&["rev-parse", "HEAD"]), c1);
    assert_eq!(in_dest(&["status", "--porcelain"]), "");
    assert_eq!(in_dest(&["log", "--format=%s"]), "one");
    // Steps can reach branches and tags through `origin`, the mirror.
    in_dest(&["fetch", "--quiet", "origin"]);
    assert_eq!(in_dest(&["rev-parse", "origin/main"]), c2);

    // An existing empty folder is fine; a non-empty one is refused.
    let dest2 = ws.path().join("job2");
    std::fs::create_dir(&dest2).unwrap();
    repo.checkout(&c2, &dest2).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dest2.join("README.md")).unwrap(),
        "second"
    );
    assert!(!dest2.join("src/lib.rs").exists());
    let err = repo.checkout(&c1, &dest2).await.unwrap_err();
    assert!(matches!(err, SourceError::DestNotEmpty { .. }), "{err:?}");

    // Only full ids; an unknown one fails and leaves the folder as it was.
    let err = repo
        .checkout("main", &ws.path().join("j3"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::BadRevision { .. }), "{err:?}");
    let dest4 = ws.path().join("j4");
    std::fs::create_dir(&dest4).unwrap();
    let unknown = "0123456789012345678901234567890123456789";
    let err = repo.checkout(unknown, &dest4).await.unwrap_err();
    assert!(matches!(err, SourceError::Git { .. }), "{err:?}");
    assert_eq!(std::fs::read_dir(&dest4).unwrap().count(), 0);
    let err = repo
        .checkout(unknown, &ws.path().join("j5"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Git { .. }), "{err:?}");
    assert!(!ws.path().join("j5").exists());
}

#[tokio::test]
async fn changed_paths_ls_files_and_read_file_work_without_a_checkout() {
    let up = Upstream::new();
    let c1 = up.commit(
        &[
            ("keep.txt", Some(b"same")),
            ("edit.txt", Some(b"v1")),
            ("old/name.txt", Some(b"moved content that is long enough")),
            ("delete.txt", Some(b"bye")),
        ],
        "one",
    );
    std::fs::create_dir_all(up.path().join("new")).unwrap();
    up.git(&["mv", "old/name.txt", "new/name.txt"]);
    let c2 = up.commit(
        &[
            ("edit.txt", Some(b"v2")),
            ("delete.txt", None),
            ("added.txt", Some(b"hi")),
        ],
        "two",
    );
    let mirror = tempfile::tempdir().unwrap();
    let repo = GitRepo::fetch(&up.url(), mirror.path(), &local_policy())
        .await
        .unwrap();

    assert_eq!(
        repo.changed_paths(&c1, &c2).await.unwrap(),
        vec![
            "added.txt",
            "delete.txt",
            "edit.txt",
            "new/name.txt",
            "old/name.txt"
        ]
    );
    assert_eq!(
        repo.changed_paths(&c2, &c2).await.unwrap(),
        Vec::<String>::new()
    );
    let zero = "0".repeat(40);
    assert_eq!(
        repo.changed_paths(&zero, &c1).await.unwrap(),
        vec!["delete.txt", "edit.txt", "keep.txt", "old/name.txt"]
    );
    assert_eq!(
        repo.ls_files(&c2).await.unwrap(),
        vec!["added.txt", "edit.txt", "keep.txt", "new/name.txt"]
    );
    assert!(matches!(
        repo.changed_paths("main", &c2).await,
        Err(SourceError::BadRevision { .. })
    ));

    assert_eq!(
        repo.read_file(&c1, "edit.txt").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(
        repo.read_file(&c2, "edit.txt").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(repo.read_file(&c2, "delete.txt").await.unwrap(), None);
    assert_eq!(repo.read_file(&c2, "new").await.unwrap(), None, "a folder");
    assert_eq!(repo.read_file(&c2, "no\nsuch").await.unwrap(), None);
}

#[tokio::test]
async fn workflow_files_prefer_the_kiln_folder_when_it_exists_at_the_commit() {
    let up = Upstream::new();
    let gh_only = up.commit(
        &[
            (".github/workflows/ci.yml", Some(b"name: gh ci\n")),
            (".github/workflows/notes.md", Some(b"not a workflow")),
        ],
        "github only",
    );
    let both = up.commit(
        &[
            (".kiln/workflows/build.yaml", Some(b"name: build\n")),
            (".kiln/workflows/a.yml", Some(b"name: a\n")),
            (".kiln/workflows/nested/deep.yml", Some(b"name: deep\n")),
            (".kiln/workflows/README", Some(b"docs")),
        ],
        "kiln too",
    );
    std::os::unix::fs::symlink("a.yml", up.path().join(".kiln/workflows/link.yml")).unwrap();
    let with_link = up.commit(&[], "a symlink");
    let kiln_without_yaml = up.commit(
        &[
            (".kiln/workflows/build.yaml", None),
            (".kiln/workflows/a.yml", None),
            (".kiln/workflows/link.yml", None),
            (".kiln/workflows/nested/deep.yml", None),
        ],
        "only a README left in .kiln/workflows",
    );
    let none = up.commit(
        &[
            (".kiln/workflows/README", None),
            (".github/workflows/ci.yml", None),
            (".github/workflows/notes.md", None),
        ],
        "no workflows",
    );
    let not_utf8 = up.commit(&[(".kiln/workflows/bad.yml", Some(b"name: \xff\n"))], "bad");

    let mirror = tempfile::tempdir().unwrap();
    let repo = GitRepo::fetch(&up.url(), mirror.path(), &local_policy())
        .await
        .unwrap();
    let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
            .collect()
    };
    assert_eq!(
        repo.workflow_files(&gh_only).await.unwrap(),
        owned(&[(".github/workflows/ci.yml", "name: gh ci\n")])
    );
    let kiln = owned(&[
        (".kiln/workflows/a.yml", "name: a\n"),
        (".kiln/workflows/build.yaml", "name: build\n"),
    ]);
    assert_eq!(repo.workflow_files(&both).await.unwrap(), kiln);
    assert_eq!(repo.workflow_files(&with_link).await.unwrap(), kiln);
    // The folder exists (it has a README), so .github/workflows is not looked at.
    assert_eq!(
        repo.workflow_files(&kiln_without_yaml).await.unwrap(),
        Vec::new()
    );
    assert_eq!(repo.workflow_files(&none).await.unwrap(), Vec::new());
    let err = repo.workflow_files(&not_utf8).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::NotUtf8 { path, .. } if path == ".kiln/workflows/bad.yml"),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_policy_refuses_before_any_git_process_runs() {
    let up = Upstream::new();
    up.commit(&[("a.txt", Some(b"one"))], "one");
    let mirror = tempfile::tempdir().unwrap();
    let dir = mirror.path().join("m.git");
    for url in [
        up.url(),
        up.path().display().to_string(),
        "https://127.0.0.1/r.git".to_owned(),
        "http://localhost:9/r.git".to_owned(),
        "ext::sh -c touch% /tmp/kiln-pwned".to_owned(),
    ] {
        let err = GitRepo::fetch(&url, &dir, &EgressPolicy::default())
            .await
            .unwrap_err();
        assert!(matches!(err, SourceError::Egress(_)), "{url}: {err:?}");
        assert!(err.is_user_error());
        assert!(!dir.exists(), "{url}: the mirror folder was created");
    }
}

#[tokio::test]
async fn a_failing_fetch_reports_git_stderr_without_credentials() {
    let mirror = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://kiln:s3cretpassw0rd@127.0.0.1:{port}/r.git");
    let err = GitRepo::fetch(&url, &mirror.path().join("m"), &loopback_policy())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SourceError::Git { .. }), "{err:?}");
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(
        msg.contains(&format!("http://***@127.0.0.1:{port}/r.git")),
        "{msg}"
    );
    assert!(msg.contains("connect"), "git's stderr is missing: {msg}");

    let missing = tempfile::tempdir().unwrap();
    let url = format!("file://{}/nothing-here", missing.path().display());
    let err = GitRepo::fetch(&url, &mirror.path().join("m2"), &local_policy())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SourceError::Git { .. }), "{err:?}");
    assert!(msg.contains("nothing-here"), "{msg}");
    assert!(
        msg.contains("does not appear to be a git repository")
            || msg.contains("not a git repository"),
        "{msg}"
    );
}

#[tokio::test]
async fn git_daemon_on_loopback_is_refused_by_default_and_fetched_when_allowed() {
    let up = Upstream::new();
    let c1 = up.commit(&[("a.txt", Some(b"over git://"))], "one");
    let served = tempfile::tempdir().unwrap();
    bare_copy(&up, served.path(), "r");
    let port = free_port();
    let log_path = served.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = git_cmd();
    cmd.arg("daemon")
        .arg("--export-all")
        .arg("--verbose")
        .arg("--reuseaddr")
        .arg(format!("--base-path={}", served.path().display()))
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let _daemon = Server(cmd.spawn().expect("git daemon starts"));
    wait_listening(port);
    let connections = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .matches("Connection from")
            .count()
    };
    let before = connections();

    let url = format!("git://127.0.0.1:{port}/r.git");
    let mirror = tempfile::tempdir().unwrap();
    let dir = mirror.path().join("m.git");
    let err = GitRepo::fetch(&url, &dir, &EgressPolicy::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SourceError::Egress(EgressError::Refused {
                reason: crate::egress::Refusal::Range(crate::egress::AddressClass::Loopback),
                ..
            })
        ),
        "{err:?}"
    );
    assert!(!dir.exists());

    let repo = GitRepo::fetch(&url, &dir, &loopback_policy())
        .await
        .unwrap();
    assert_eq!(repo.resolve("main").await.unwrap(), c1);
    assert_eq!(
        repo.default_branch().await.unwrap().as_deref(),
        Some("main")
    );
    // The refused attempt never connected; the allowed one did.
    let until = Instant::now() + Duration::from_secs(5);
    while connections() == before && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        connections() > before,
        "the allowed fetch reached the daemon"
    );

    // A host name is pinned to the address that was checked (`localhost` → loopback).
    let by_name = format!("git://localhost:{port}/r.git");
    let repo = GitRepo::fetch(&by_name, &mirror.path().join("n.git"), &loopback_policy())
        .await
        .unwrap();
    assert_eq!(repo.resolve("main").await.unwrap(), c1);
}

/// python's `http.server` serving bare repositories over dumb HTTP on a free port.
fn dumb_http(root: &Path) -> (Server, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 starts");
    let server = Server(child);
    wait_listening(port);
    (server, port)
}

#[tokio::test]
async fn http_addresses_are_pinned_to_the_checked_ones() {
    let up = Upstream::new();
    let c1 = up.commit(&[("a.txt", Some(b"over http"))], "one");
    let served = tempfile::tempdir().unwrap();
    bare_copy(&up, served.path(), "r");
    let (_server, port) = dumb_http(served.path());
    let mirror = tempfile::tempdir().unwrap();

    // Through the public API: `localhost` resolves to loopback, which the policy admits.
    let url = format!("http://localhost:{port}/r.git");
    let repo = GitRepo::fetch(&url, &mirror.path().join("a"), &loopback_policy())
        .await
        .unwrap();
    assert_eq!(repo.resolve("main").await.unwrap(), c1);

    // A name no resolver knows reaches the server only through the pinned address.
    let url = format!("http://kiln-pinned.invalid:{port}/r.git");
    let target = Target::Remote(Endpoint {
        scheme: Scheme::Http,
        host: "kiln-pinned.invalid".to_owned(),
        port,
        addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    });
    let repo = GitRepo::fetch_target(&url, &target, &mirror.path().join("b"), NETWORK_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(repo.resolve("main").await.unwrap(), c1);
}

#[tokio::test]
async fn http_redirects_are_not_followed() {
    let up = Upstream::new();
    up.commit(&[("a.txt", Some(b"x"))], "one");
    let served = tempfile::tempdir().unwrap();
    bare_copy(&up, served.path(), "r");
    let (_server, good) = dumb_http(served.path());

    // A server that redirects every request to the real one.
    let redirector = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = redirector.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in redirector.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{good}/r.git/info/refs?service=git-upload-pack\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
        }
    });
    let mirror = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{bad}/r.git");
    let err = GitRepo::fetch(&url, &mirror.path().join("m"), &loopback_policy())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SourceError::Git { stderr, .. } if stderr.contains("302")),
        "{err:?}"
    );
    // The same repository straight from the server works.
    let url = format!("http://127.0.0.1:{good}/r.git");
    GitRepo::fetch(&url, &mirror.path().join("m2"), &loopback_policy())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_git_that_hangs_is_killed_with_its_process_group_at_the_timeout() {
    // Accepts connections (the kernel does) and never answers. Over http git runs
    // `git-remote-http` as a child: killing git alone would leave that one waiting.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/kiln-hang-{port}.git");
    let mirror = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = GitRepo::fetch_with_timeout(
        &url,
        &mirror.path().join("m"),
        &loopback_policy(),
        Duration::from_millis(700),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SourceError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains("killed"));
    let left = Command::new("pgrep")
        .args(["-f", &format!("kiln-hang-{port}")])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "git processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    drop(silent);
}

#[test]
fn pin_git_url_replaces_only_the_host() {
    assert_eq!(
        pin_git_url("git://example.com/r.git", "192.0.2.1".to_owned(), 9418),
        "git://192.0.2.1:9418/r.git"
    );
    assert_eq!(
        pin_git_url(
            "git://u@example.com:9000/a/b",
            "[2001:db8::1]".to_owned(),
            9000
        ),
        "git://u@[2001:db8::1]:9000/a/b"
    );
}

#[test]
fn batch_output_is_parsed_with_binary_content_and_missing_objects() {
    let out = b"abc blob 3\na\nb\nx:y missing\ndef tree 0\n\n";
    let objects = parse_batch(out, "git cat-file --batch").unwrap();
    assert_eq!(
        objects,
        vec![
            Some(("blob".to_owned(), b"a\nb".to_vec())),
            None,
            Some(("tree".to_owned(), Vec::new())),
        ]
    );
    assert!(parse_batch(b"abc blob 10\nshort\n", "c").is_err());
    assert!(parse_batch(b"what is this\n", "c").is_err());
}
