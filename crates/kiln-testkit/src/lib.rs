//! Test harness shared by kiln's integration tests: a temporary project folder built with a
//! builder, a runner for the `kiln` binary that captures exit code, stdout and stderr, and an
//! upstream git repository for tests of git projects.
//!
//! Only a dev-dependency. Fixtures written by others (the corpus in `../shared/corpus`) are
//! read by path from [`corpus_dir`], never copied.

pub mod pg;
pub mod s3;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A temporary project with its own data folder, removed on drop.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

impl Project {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kiln-test-")
            .tempdir()
            .expect("create a temporary project folder");
        std::fs::create_dir_all(dir.path().join("project/.kiln/workflows"))
            .expect("create the workflow folder");
        Self { dir }
    }

    /// The project folder.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// The data folder tests pass as `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Add `.kiln/workflows/<name>`.
    pub fn workflow(self, name: &str, yaml: &str) -> Self {
        self.file(&format!(".kiln/workflows/{name}"), yaml)
    }

    /// Add a file (parents are created).
    pub fn file(self, rel: &str, content: &str) -> Self {
        let path = self.root().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent folder");
        }
        std::fs::write(&path, content).expect("write project file");
        self
    }

    /// A `kiln` command in this project's context: `--data-dir` is appended by [`Kiln::run`].
    pub fn kiln(&self, bin: &Path) -> Kiln {
        Kiln {
            cmd: {
                let mut c = Command::new(bin);
                c.current_dir(self.dir.path());
                c.env_remove("KILN_DATABASE");
                c.env_remove("KILN_DATA_DIR");
                c.env("KILN_LOG", "warn");
                c
            },
            data_dir: self.data_dir(),
        }
    }
}

/// A `kiln` invocation.
pub struct Kiln {
    cmd: Command,
    data_dir: PathBuf,
}

/// What a finished `kiln` invocation did.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// stdout parsed as JSON, with the whole output in the panic message when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl Kiln {
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// Add `--data-dir` for this project.
    pub fn with_data_dir(mut self) -> Self {
        self.cmd.arg("--data-dir").arg(&self.data_dir);
        self
    }

    /// The command itself, for tests that need to signal the process.
    pub fn command(self) -> Command {
        self.cmd
    }

    /// Run to the end (at most `limit`), capturing output.
    pub fn output_within(mut self, limit: Duration) -> Outcome {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = self.cmd.spawn().expect("start kiln");
        let id = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out: Output = match rx.recv_timeout(limit) {
            Ok(res) => res.expect("wait for kiln"),
            Err(_) => {
                let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
                panic!("kiln did not finish within {limit:?}");
            }
        };
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run to the end (at most two minutes), capturing output.
    pub fn output(self) -> Outcome {
        self.output_within(Duration::from_secs(120))
    }
}

/// `../shared/corpus` seen from the workspace root, when it is there.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    dir.is_dir().then_some(dir)
}

/// An upstream git repository with a work tree in a temporary folder, for tests of git
/// projects: changed through the git CLI, isolated from the machine's git configuration,
/// with a fixed identity. Removed on drop.
pub struct GitUpstream {
    dir: tempfile::TempDir,
}

impl Default for GitUpstream {
    fn default() -> Self {
        Self::new()
    }
}

impl GitUpstream {
    /// An empty repository whose default branch is `main`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kiln-upstream-")
            .tempdir()
            .expect("create a temporary upstream folder");
        let up = Self { dir };
        up.git(&["init", "--quiet", "-b", "main"]);
        up
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `file://` and the absolute path.
    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Writes `files` (relative path, content), commits everything, returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (rel, content) in files {
            let path = self.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create parent folder");
            }
            std::fs::write(&path, content).expect("write upstream file");
        }
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Runs git in the repository; its stdout, trimmed. Panics with git's stderr on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GIT_") {
                cmd.env_remove(key);
            }
        }
        let out = cmd
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "kiln test")
            .env("GIT_AUTHOR_EMAIL", "test@kiln.invalid")
            .env("GIT_COMMITTER_NAME", "kiln test")
            .env("GIT_COMMITTER_EMAIL", "test@kiln.invalid")
            .arg("-C")
            .arg(self.path())
            .args(args)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}
