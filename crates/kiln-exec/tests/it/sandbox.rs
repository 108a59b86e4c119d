//! The sandbox for real: a package build laid out as kiln lays it out (a tree, a scratch copy
//! of the package's folder, `$KILN_OUT`, `$KILN_DEPS`) and run under bwrap, judged by what
//! reached the host's file system and network. Each denial is paired with the same command
//! succeeding where it should, so that a test cannot pass because the command was broken.
//!
//! Where bwrap cannot run (not installed, namespaces forbidden) the containment tests say why
//! and check nothing; the detection tests run everywhere.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_exec::{Confinement, Network, Sandbox, SandboxError, SandboxMode};

/// The sandbox with bwrap, or `None` (after saying why) where bwrap cannot run.
#[expect(clippy::print_stderr, reason = "say why the test checked nothing")]
fn confining_sandbox() -> Option<Sandbox> {
    match Sandbox::detect(SandboxMode::Require) {
        Ok(s) => {
            assert!(s.is_confined());
            assert_eq!(s.warning(), None);
            Some(s)
        }
        Err(e) => {
            eprintln!("skipped: bubblewrap cannot run here: {e}");
            None
        }
    }
}

/// A package build's folders, as the builder prepares them.
struct Build {
    _dir: tempfile::TempDir,
    /// Outside `/tmp` (which is private in the sandbox), so that it stays visible read-only
    /// and a failed write there is the sandbox's refusal, not a missing folder.
    _elsewhere_dir: tempfile::TempDir,
    tree: PathBuf,
    scratch: PathBuf,
    out: PathBuf,
    deps: PathBuf,
    elsewhere: PathBuf,
}

impl Build {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let tree = dir.path().join("tree");
        let package = tree.join("devel/foo");
        let scratch = dir.path().join("scratch");
        let out = dir.path().join("out");
        let deps = dir.path().join("deps");
        for d in [&package, &scratch, &out, &deps.join("lang/bar")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(package.join("kiln-package.toml"), "version = \"1\"\n").expect("write");
        std::fs::write(scratch.join("kiln-package.toml"), "version = \"1\"\n").expect("write");
        std::fs::write(deps.join("lang/bar/lib.txt"), "from bar\n").expect("write");
        let elsewhere_dir =
            tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir outside /tmp");
        let elsewhere = elsewhere_dir.path().to_path_buf();
        std::fs::write(elsewhere.join("readable"), "visible\n").expect("write");
        Self {
            _dir: dir,
            _elsewhere_dir: elsewhere_dir,
            tree,
            scratch,
            out,
            deps,
            elsewhere,
        }
    }

    fn confinement(&self, network: Network) -> Confinement {
        Confinement::new(&self.scratch)
            .writable(&self.out)
            .read_only(&self.deps)
            .read_only(&self.tree)
            .network(network)
    }

    /// Runs `program args…` as a build would: wrapped, in the scratch copy, with the
    /// package's environment.
    fn run<I, S>(&self, sandbox: &Sandbox, network: Network, program: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        sandbox
            .wrap(&self.confinement(network), program, args)
            .expect("wrap")
            .command()
            .current_dir(&self.scratch)
            .env("KILN_PACKAGE", "devel/foo")
            .env("KILN_OUT", &self.out)
            .env("KILN_DEPS", &self.deps)
            .output()
            .expect("spawn")
    }

    fn sh(&self, sandbox: &Sandbox, script: &str) -> Output {
        self.run(sandbox, Network::Denied, "sh", ["-c", script])
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn a_build_writes_its_scratch_copy_and_kiln_out_and_reads_its_deps() {
    let Some(sandbox) = confining_sandbox() else {
        return;
    };
    let b = Build::new();
    let private_tmp = format!("/tmp/kiln-sandbox-test-{}", std::process::id());
    let o = b.sh(
        &sandbox,
        &format!(
            "set -e
             test \"$(pwd)\" = {scratch}
             cat kiln-package.toml > copied
             cat \"$KILN_DEPS/lang/bar/lib.txt\" > \"$KILN_OUT/result\"
             echo scratch > {private_tmp}
             cat {private_tmp} >> \"$KILN_OUT/result\"",
            scratch = quote(&std::fs::canonicalize(&b.scratch).expect("canonical")),
        ),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(b.out.join("result")).expect("result"),
        "from bar\nscratch\n"
    );
    assert_eq!(
        std::fs::read_to_string(b.scratch.join("copied")).expect("copied"),
        "version = \"1\"\n"
    );
    // The sandbox's /tmp was its own.
    assert!(!Path::new(&private_tmp).exists());
}

#[test]
fn a_build_cannot_write_the_tree_its_deps_or_anything_else() {
    let Some(sandbox) = confining_sandbox() else {
        return;
    };
    let b = Build::new();
    // Visible, so that the refusals below are about writing.
    let o = b.sh(
        &sandbox,
        &format!("cat {}", quote(&b.elsewhere.join("readable"))),
    );
    assert!(
        o.status.success(),
        "{} is not visible in the sandbox (is the target folder under /tmp?): {}",
        b.elsewhere.display(),
        stderr(&o)
    );
    assert_eq!(o.stdout, b"visible\n");

    let targets = [
        b.tree.join("devel/foo/new"),
        b.tree.join("devel/foo/kiln-package.toml"),
        b.deps.join("lang/bar/new"),
        b.elsewhere.join("new"),
        b.elsewhere.join("readable"),
    ];
    for target in &targets {
        let before = std::fs::read(target).ok();
        let o = b.sh(&sandbox, &format!("echo written > {}", quote(target)));
        assert!(!o.status.success(), "{} was writable", target.display());
        assert!(
            stderr(&o).contains("Read-only file system"),
            "{}: {}",
            target.display(),
            stderr(&o)
        );
        assert_eq!(std::fs::read(target).ok(), before, "{}", target.display());
    }

    // The same commands unconfined do write: the refusals above were the sandbox's.
    let o = b.sh(
        &Sandbox::off(),
        &format!("echo written > {}", quote(&b.elsewhere.join("new"))),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(b.elsewhere.join("new").exists());
}

#[test]
fn a_hidden_folder_is_empty_but_what_is_bound_inside_it_stays() {
    let Some(sandbox) = confining_sandbox() else {
        return;
    };
    // Like kiln's data folder: a secret beside the build's own work folder.
    let b = Build::new();
    let work = b.elsewhere.join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let secret = quote(&b.elsewhere.join("readable"));
    let run = |confinement: Confinement| {
        sandbox
            .wrap(
                &confinement,
                "sh",
                ["-c", &format!("echo ok > made; cat {secret}")],
            )
            .expect("wrap")
            .command()
            .current_dir(&work)
            .output()
            .expect("spawn")
    };

    let o = run(Confinement::new(&work));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"visible\n");

    std::fs::remove_file(work.join("made")).expect("rm");
    let o = run(Confinement::new(&work).hidden(&b.elsewhere));
    assert!(!o.status.success(), "the hidden file was read");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(stderr(&o).contains("No such file"), "{}", stderr(&o));
    assert!(
        work.join("made").exists(),
        "the work folder was not writable"
    );
}

/// Whether a connection is waiting on `listener` (connections complete into its backlog
/// before the connecting command exits, so there is no need to wait).
fn accepted(listener: &TcpListener) -> bool {
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn a_build_cannot_reach_the_network_but_a_fetch_can() {
    let Some(sandbox) = confining_sandbox() else {
        return;
    };
    let b = Build::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let connect = format!("echo hello > /dev/tcp/127.0.0.1/{port}");

    let o = b.run(&Sandbox::off(), Network::Denied, "bash", ["-c", &connect]);
    assert!(o.status.success(), "unsandboxed: {}", stderr(&o));
    assert!(accepted(&listener), "unsandboxed connection not seen");

    let o = b.run(&sandbox, Network::Denied, "bash", ["-c", &connect]);
    assert!(
        !o.status.success(),
        "the build phase reached the host's network"
    );
    assert!(!accepted(&listener), "the build phase reached the listener");

    let o = b.run(&sandbox, Network::Allowed, "bash", ["-c", &connect]);
    assert!(o.status.success(), "fetch phase: {}", stderr(&o));
    assert!(accepted(&listener), "fetch phase connection not seen");
}

#[test]
fn require_refuses_a_missing_bwrap_and_auto_warns_naming_why() {
    let missing = Path::new("/nonexistent/kiln-test/bwrap");
    let err = Sandbox::detect_with(SandboxMode::Require, missing).unwrap_err();
    assert!(
        matches!(&err, SandboxError::NotInstalled(p) if p == missing),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/nonexistent/kiln-test/bwrap"),
        "{err}"
    );

    let auto = Sandbox::detect_with(SandboxMode::Auto, missing).expect("auto never refuses");
    assert!(!auto.is_confined());
    let warning = auto.warning().expect("a warning");
    assert!(warning.contains("WITHOUT A SANDBOX"), "{warning}");
    assert!(
        warning.contains("/nonexistent/kiln-test/bwrap"),
        "{warning}"
    );

    // Off neither looks nor warns, and commands run as they are.
    let off = Sandbox::detect_with(SandboxMode::Off, missing).expect("off");
    assert_eq!(off, Sandbox::off());
    assert_eq!(off.warning(), None);
}

#[test]
fn a_bwrap_that_cannot_create_namespaces_is_reported_with_its_own_message() {
    use std::os::unix::fs::PermissionsExt;

    // What bwrap says in a container that forbids user namespaces.
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("bwrap");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n",
    )
    .expect("write");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let err = Sandbox::detect_with(SandboxMode::Require, &fake).unwrap_err();
    assert!(matches!(err, SandboxError::ProbeFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("No permissions to create new namespace"),
        "{text}"
    );
    assert!(text.contains("exit status: 1"), "{text}");

    let auto = Sandbox::detect_with(SandboxMode::Auto, &fake).expect("auto");
    assert!(!auto.is_confined());
    assert!(
        auto.warning()
            .is_some_and(|w| w.contains("No permissions to create new namespace")),
        "{auto:?}"
    );
}

#[test]
fn a_working_bwrap_passes_the_probe_under_every_mode() {
    let Some(sandbox) = confining_sandbox() else {
        return;
    };
    let bwrap = sandbox.bwrap().expect("bwrap");
    assert!(bwrap.is_absolute(), "{}", bwrap.display());
    let auto = Sandbox::detect_with(SandboxMode::Auto, bwrap).expect("auto");
    assert_eq!(
        (auto.bwrap(), auto.warning(), auto.mode()),
        (sandbox.bwrap(), None, SandboxMode::Auto)
    );
    assert_eq!(
        Sandbox::detect_with(SandboxMode::Off, bwrap).expect("off"),
        Sandbox::off()
    );
}
