//! Git project sources: a bare mirror of a project's repository in the data dir, fetched with
//! the git CLI, from which runs resolve revisions, read workflow files without a checkout,
//! and check out their commit into a job's workspace.
//!
//! Every git process kiln starts here:
//! - has passed the [`EgressPolicy`] first when it touches the network: the URL is checked
//!   before any process runs, and for http(s) the checked addresses are pinned with
//!   `http.curloptResolve` (for `git://` the URL is rewritten to the checked address) so
//!   that a second DNS answer cannot lead git elsewhere. ssh is not pinned: ssh verifies the
//!   host key of the name, and with `BatchMode=yes` an unknown host fails;
//! - allows exactly one transport (`protocol.allow=never` plus `protocol.<scheme>.allow`),
//!   so `ext::` and friends never run, and `file` only for local sources or kiln's own mirror;
//! - follows no HTTP redirect (`http.followRedirects=false`), since a redirect would dodge
//!   the policy;
//! - reads no system or user configuration (`GIT_CONFIG_NOSYSTEM=1`,
//!   `GIT_CONFIG_GLOBAL=/dev/null`, and none of kiln's own `GIT_*` variables but the
//!   `GIT_SSH*` ones), so an `insteadOf` rule or credential helper on the server cannot
//!   change what is fetched; never prompts (`GIT_TERMINAL_PROMPT=0`, ssh in batch mode);
//! - runs in its own process group under a timeout; on timeout (or when the future is
//!   dropped) the whole group is killed, remote helpers and ssh included.
//!
//! Errors carry the command (URLs redacted) and git's stderr with credentials removed.
//!
//! Not here: deciding when to fetch, storing projects, parsing workflows (`kiln-core`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::egress::{self, EgressError, EgressPolicy, Scheme, Target};
use crate::project::WORKFLOW_DIRS;

/// How long a git process that talks to a remote may run.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a git process that only reads or writes local files may run.
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(300);

/// The refs a mirror keeps: every branch and tag, pruned when they go away upstream.
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// How much of git's stderr an error keeps (the end, where git says what went wrong).
const STDERR_KEPT: usize = 4000;

/// Why a source operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URL did not pass the egress policy (or does not parse); no git process ran.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// A file-system call failed.
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// git could not be started or waited for.
    #[error("failed to run `{command}`: {source}")]
    Process {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// git ran and failed; `stderr` is the end of what it said, credentials redacted.
    #[error("failed to run `{command}` ({status}): {stderr}")]
    Git {
        command: String,
        status: String,
        stderr: String,
    },
    /// git ran past its time limit; its process group was killed.
    #[error("failed to finish `{command}` within {} s; its processes were killed", timeout.as_secs())]
    Timeout { command: String, timeout: Duration },
    /// The folder given as a mirror holds something else.
    #[error(
        "failed to use {} as a git mirror: it is neither empty nor a mirror kiln made",
        path.display()
    )]
    NotAMirror { path: PathBuf },
    /// A checkout was asked into a folder that already has files.
    #[error("failed to check out into {}: the folder is not empty", path.display())]
    DestNotEmpty { path: PathBuf },
    /// No branch, tag or commit by that name.
    #[error("failed to resolve `{rev}`: no branch, tag or commit `{rev}` in {url}")]
    UnknownRevision { rev: String, url: String },
    /// An abbreviated commit id that matches several objects.
    #[error(
        "failed to resolve `{rev}`: the abbreviated commit id matches more than one object in {url}; give more digits"
    )]
    AmbiguousRevision { rev: String, url: String },
    /// A revision that is not a plain ref name or commit id (`main~2`, `-x`, `a..b`).
    #[error("failed to resolve `{rev}`: {reason}")]
    BadRevision { rev: String, reason: &'static str },
    /// A workflow file that is not UTF-8.
    #[error("failed to read {path} at {sha}: the file is not UTF-8")]
    NotUtf8 { path: String, sha: String },
    /// git answered something kiln does not understand.
    #[error("failed to understand the output of `{command}`: {reason}")]
    Output { command: String, reason: String },
}

impl SourceError {
    /// Whether the error is about what the user gave (URL, revision, file) rather than
    /// kiln's machine or the remote.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::Egress(_)
                | Self::UnknownRevision { .. }
                | Self::AmbiguousRevision { .. }
                | Self::BadRevision { .. }
                | Self::NotUtf8 { .. }
        )
    }
}

/// A bare mirror of a repository's branches and tags in kiln's data dir.
#[derive(Clone, Debug)]
pub struct GitRepo {
    dir: PathBuf,
    /// The URL it was fetched from, credentials redacted: for messages only.
    url: String,
}

/// How git is told to reach one checked remote.
struct Remote {
    /// What git gets: the URL as given, or for `git://` rewritten to the checked address.
    git_url: String,
    /// The URL as given: its credentials are redacted from git's stderr.
    given: String,
    /// `-c` settings: the one allowed transport, pinned addresses.
    config: Vec<String>,
}

impl Remote {
    fn new(url: &str, target: &Target) -> Self {
        let mut config = Vec::new();
        let mut git_url = url.to_owned();
        match target {
            Target::Local { .. } => config.push("protocol.file.allow=always".to_owned()),
            Target::Remote(ep) => {
                config.push(format!("protocol.{}.allow=always", ep.scheme.as_str()));
                match ep.scheme {
                    Scheme::Https | Scheme::Http if !ep.host_is_ip() => {
                        let addrs: Vec<String> = ep.addrs.iter().map(|a| bracket(*a)).collect();
                        config.push(format!(
                            "http.curloptResolve={}:{}:{}",
                            ep.host,
                            ep.port,
                            addrs.join(",")
                        ));
                    }
                    Scheme::Git if !ep.host_is_ip() => {
                        git_url = pin_git_url(url, bracket(ep.addrs[0]), ep.port);
                    }
                    Scheme::Ssh => {
                        // GIT_SSH_COMMAND, when the operator sets it, still wins over this.
                        config.push("core.sshCommand=ssh -o BatchMode=yes".to_owned());
                    }
                    Scheme::Https | Scheme::Http | Scheme::Git => {}
                }
            }
        }
        Self {
            git_url,
            given: url.to_owned(),
            config,
        }
    }
}

fn bracket(addr: std::net::IpAddr) -> String {
    match addr {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `git://host[:port]/path` with the host replaced by a checked address.
fn pin_git_url(url: &str, addr: String, port: u16) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let path_at = rest.find('/').unwrap_or(rest.len());
    let userinfo = rest[..path_at].rfind('@').map_or("", |at| &rest[..=at]);
    format!(
        "{}{userinfo}{addr}:{port}{}",
        &url[..start],
        &rest[path_at..]
    )
}

impl GitRepo {
    /// Check `url` against `policy`, then mirror its branches and tags into `dir` (created
    /// when missing; a mirror already there is fetched into, pruning what went away) and
    /// record the remote's default branch. Network calls are bounded by [`NETWORK_TIMEOUT`].
    pub async fn fetch(
        url: &str,
        dir: &Path,
        policy: &EgressPolicy,
    ) -> Result<GitRepo, SourceError> {
        Self::fetch_with_timeout(url, dir, policy, NETWORK_TIMEOUT).await
    }

    /// [`GitRepo::fetch`] with another bound on each network call.
    pub async fn fetch_with_timeout(
        url: &str,
        dir: &Path,
        policy: &EgressPolicy,
        timeout: Duration,
    ) -> Result<GitRepo, SourceError> {
        let target = policy.check_url(url).await?;
        Self::fetch_target(url, &target, dir, timeout).await
    }

    /// The part of a fetch after the policy check.
    async fn fetch_target(
        url: &str,
        target: &Target,
        dir: &Path,
        timeout: Duration,
    ) -> Result<GitRepo, SourceError> {
        let remote = Remote::new(url, target);
        let repo = Self::open_or_init(dir, &egress::redact_url(url)).await?;
        let head = Git::new(timeout)
            .git_dir(dir)
            .configs(&remote.config)
            .args(["ls-remote", "--symref"])
            .url(&remote)
            .arg("HEAD")
            .run()
            .await?;
        Git::new(timeout)
            .git_dir(dir)
            .configs(&remote.config)
            .args(["fetch", "--prune", "--no-write-fetch-head"])
            .url(&remote)
            .args(REFSPECS)
            .run()
            .await?;
        if let Some(branch) = remote_head(&head) {
            Git::new(LOCAL_TIMEOUT)
                .git_dir(dir)
                .args(["symbolic-ref", "HEAD", branch])
                .run()
                .await?;
        }
        tracing::debug!(url = %repo.url, dir = %dir.display(), "fetched");
        Ok(repo)
    }

    /// Fetches `refs` (full ref names the provider keeps outside branches and tags, such as
    /// a pull request's `refs/pull/7/head`, which holds a fork's commit) from `url` into the
    /// mirror at `dir`, each under its own name, after the egress check. The mirror's regular
    /// fetch never prunes them (its refspecs cover branches and tags only).
    pub async fn fetch_refs(
        url: &str,
        dir: &Path,
        policy: &EgressPolicy,
        refs: &[String],
    ) -> Result<GitRepo, SourceError> {
        for r in refs {
            check_rev_syntax(r)?;
            if !r.starts_with("refs/")
                || r.starts_with("refs/heads/")
                || r.starts_with("refs/tags/")
            {
                return Err(SourceError::BadRevision {
                    rev: r.clone(),
                    reason: "only refs outside branches and tags are fetched this way",
                });
            }
        }
        let target = policy.check_url(url).await?;
        let remote = Remote::new(url, &target);
        let repo = Self::open_or_init(dir, &egress::redact_url(url)).await?;
        if refs.is_empty() {
            return Ok(repo);
        }
        Git::new(NETWORK_TIMEOUT)
            .git_dir(dir)
            .configs(&remote.config)
            .args(["fetch", "--no-write-fetch-head"])
            .url(&remote)
            .args(refs.iter().map(|r| format!("+{r}:{r}")))
            .run()
            .await?;
        Ok(repo)
    }

    /// An existing mirror made by [`GitRepo::fetch`].
    pub async fn open(dir: &Path) -> Result<GitRepo, SourceError> {
        let (status, stdout, _) = Git::new(LOCAL_TIMEOUT)
            .git_dir(dir)
            .args(["config", "--get", "kiln.url"])
            .output()
            .await?;
        if !status.success() {
            return Err(SourceError::NotAMirror {
                path: dir.to_path_buf(),
            });
        }
        Ok(GitRepo {
            dir: dir.to_path_buf(),
            url: String::from_utf8_lossy(&stdout).trim().to_owned(),
        })
    }

    async fn open_or_init(dir: &Path, shown_url: &str) -> Result<GitRepo, SourceError> {
        let io = |action: &'static str| {
            move |source| SourceError::Io {
                action,
                path: dir.to_path_buf(),
                source,
            }
        };
        let empty = match tokio::fs::read_dir(dir).await {
            Ok(mut entries) => entries
                .next_entry()
                .await
                .map_err(io("list the mirror folder"))?
                .is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(io("create the mirror folder"))?;
                true
            }
            Err(e) => return Err(io("read the mirror folder")(e)),
        };
        if !empty {
            let repo = Self::open(dir).await?;
            if repo.url == shown_url {
                return Ok(repo);
            }
        } else {
            Git::new(LOCAL_TIMEOUT)
                .args(["init", "--quiet", "--bare", "--template="])
                .arg(dir)
                .run()
                .await?;
        }
        Git::new(LOCAL_TIMEOUT)
            .git_dir(dir)
            .args(["config", "kiln.url", shown_url])
            .run()
            .await?;
        Ok(GitRepo {
            dir: dir.to_path_buf(),
            url: shown_url.to_owned(),
        })
    }

    /// The mirror's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL the mirror was last fetched from, credentials redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The commit id a branch, tag or commit names: `main`, `refs/heads/main`, `v1`,
    /// `refs/tags/v1` (annotated tags are peeled to their commit), a full or abbreviated (4+
    /// digits) commit id, or `HEAD` (the default branch). A plain name is looked up as a
    /// branch first, then as a tag, then as a commit id.
    pub async fn resolve(&self, rev: &str) -> Result<String, SourceError> {
        check_rev_syntax(rev)?;
        let mut candidates: Vec<String> = Vec::new();
        if rev.starts_with("refs/") || rev == "HEAD" {
            candidates.push(rev.to_owned());
        } else {
            candidates.push(format!("refs/heads/{rev}"));
            candidates.push(format!("refs/tags/{rev}"));
            if rev.len() >= 4 && is_hex(rev) {
                candidates.push(rev.to_owned());
            }
        }
        let mut input: String = candidates
            .iter()
            .map(|c| format!("{c}^{{commit}}\n"))
            .collect();
        if candidates.last().is_some_and(|c| c == rev) && is_hex(rev) {
            // `abcd^{commit}` says only "missing" when `abcd` is ambiguous; `abcd` says so.
            input.push_str(&format!("{rev}\n"));
        }
        let out = self
            .git()
            .args(["cat-file", "--batch-check"])
            .stdin(input.into_bytes())
            .run()
            .await?;
        let out = String::from_utf8_lossy(&out);
        let mut ambiguous = false;
        for line in out.lines() {
            let mut words = line.split(' ');
            match (words.next(), words.next()) {
                (Some(sha), Some("commit")) => return Ok(sha.to_owned()),
                (_, Some("ambiguous")) => ambiguous = true,
                _ => {}
            }
        }
        if ambiguous {
            return Err(SourceError::AmbiguousRevision {
                rev: rev.to_owned(),
                url: self.url.clone(),
            });
        }
        Err(SourceError::UnknownRevision {
            rev: rev.to_owned(),
            url: self.url.clone(),
        })
    }

    /// The remote's default branch (its `HEAD`) as of the last fetch, e.g. `main`; `None`
    /// when the remote had no branch to point at (an empty repository).
    pub async fn default_branch(&self) -> Result<Option<String>, SourceError> {
        let (status, stdout, _) = self
            .git()
            .args([
                "rev-parse",
                "--symbolic-full-name",
                "--verify",
                "--quiet",
                "HEAD",
            ])
            .output()
            .await?;
        if !status.success() {
            return Ok(None);
        }
        let full = String::from_utf8_lossy(&stdout).trim().to_owned();
        Ok(full.strip_prefix("refs/heads/").map(str::to_owned))
    }

    /// Materialise commit `sha` as a git work tree in `dest` (absent or empty): a `.git`
    /// whose objects borrow the mirror's (an `alternates` file, as `clone --shared` makes),
    /// `origin` pointing at the mirror (so `git fetch --tags origin` works in a step), and
    /// `HEAD` detached at `sha`.
    ///
    /// `git init` + alternates + `checkout` rather than `clone --shared --no-checkout` +
    /// `checkout`: both are correct, this one copies no refs and measured about a third
    /// faster (74 ms against 109 ms a checkout of 500 files and 200 tags).
    ///
    /// The work tree depends on the mirror's objects: it is meant for a job's workspace,
    /// which lives shorter than the mirror. On failure `dest` is left absent or empty.
    pub async fn checkout(&self, sha: &str, dest: &Path) -> Result<(), SourceError> {
        check_sha(sha)?;
        let existed = match tokio::fs::read_dir(dest).await {
            Ok(mut entries) => {
                let first = entries
                    .next_entry()
                    .await
                    .map_err(|source| SourceError::Io {
                        action: "list the checkout folder",
                        path: dest.to_path_buf(),
                        source,
                    })?;
                if first.is_some() {
                    return Err(SourceError::DestNotEmpty {
                        path: dest.to_path_buf(),
                    });
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(SourceError::Io {
                    action: "read the checkout folder",
                    path: dest.to_path_buf(),
                    source,
                });
            }
        };
        let result = self.checkout_into(sha, dest).await;
        if result.is_err() {
            // Leave `dest` as it was found, so that a retry finds it usable.
            let _ = tokio::fs::remove_dir_all(dest).await;
            if existed {
                let _ = tokio::fs::create_dir_all(dest).await;
            }
        }
        result
    }

    async fn checkout_into(&self, sha: &str, dest: &Path) -> Result<(), SourceError> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SourceError::Io {
                action,
                path,
                source,
            }
        };
        let mirror = tokio::fs::canonicalize(&self.dir)
            .await
            .map_err(io("find the mirror folder", &self.dir))?;
        Git::new(LOCAL_TIMEOUT)
            .args(["init", "--quiet", "--template="])
            .arg(dest)
            .run()
            .await?;
        let info = dest.join(".git/objects/info");
        tokio::fs::create_dir_all(&info)
            .await
            .map_err(io("create", &info))?;
        let mut alternates = mirror.join("objects").into_os_string().into_encoded_bytes();
        alternates.push(b'\n');
        let alternates_file = info.join("alternates");
        tokio::fs::write(&alternates_file, alternates)
            .await
            .map_err(io("write", &alternates_file))?;
        if let Some(origin) = mirror.to_str().filter(|p| !p.contains('\n')) {
            let config = dest.join(".git/config");
            let quoted = origin.replace('\\', "\\\\").replace('"', "\\\"");
            let section = format!(
                "[remote \"origin\"]\n\turl = \"{quoted}\"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
            );
            let mut file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&config)
                .await
                .map_err(io("open", &config))?;
            file.write_all(section.as_bytes())
                .await
                .map_err(io("write", &config))?;
        }
        Git::new(LOCAL_TIMEOUT)
            .cwd(dest)
            .config("advice.detachedHead=false")
            .args(["checkout", "--quiet", "--detach", sha, "--"])
            .run()
            .await?;
        Ok(())
    }

    /// The paths that differ between two commits, for push path filters: added, modified,
    /// deleted, and both sides of a rename. `before` all zeros (a new branch) gives every file
    /// of `after`. Non-UTF-8 names are converted lossily.
    pub async fn changed_paths(
        &self,
        before: &str,
        after: &str,
    ) -> Result<Vec<String>, SourceError> {
        check_sha(after)?;
        if !before.is_empty() && before.bytes().all(|b| b == b'0') {
            return self.ls_files(after).await;
        }
        check_sha(before)?;
        let out = self
            .git()
            .args([
                "diff",
                "--name-only",
                "-z",
                "--no-renames",
                before,
                after,
                "--",
            ])
            .run()
            .await?;
        Ok(split_z(&out))
    }

    /// The files a pull request changes: `git diff --name-only base...head`, what `head`
    /// changed since it left `base`'s history (their merge base), whatever `base` did since.
    pub async fn pull_request_paths(
        &self,
        base: &str,
        head: &str,
    ) -> Result<Vec<String>, SourceError> {
        check_sha(base)?;
        check_sha(head)?;
        let span = format!("{base}...{head}");
        let out = self
            .git()
            .args(["diff", "--name-only", "-z", "--no-renames", &span, "--"])
            .run()
            .await?;
        Ok(split_z(&out))
    }

    /// Every file of commit `sha` (submodules as their path), sorted as git sorts them.
    pub async fn ls_files(&self, sha: &str) -> Result<Vec<String>, SourceError> {
        check_sha(sha)?;
        let out = self
            .git()
            .args(["ls-tree", "-r", "-z", "--name-only", sha])
            .run()
            .await?;
        Ok(split_z(&out))
    }

    /// The content of `path` at commit `sha`; `None` when there is no file there (missing,
    /// or a folder).
    pub async fn read_file(&self, sha: &str, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        check_sha(sha)?;
        if path.contains('\n') {
            return Ok(None);
        }
        let mut objects = self.cat_file(format!("{sha}:{path}\n")).await?;
        Ok(match objects.pop() {
            Some(Some((kind, content))) if kind == "blob" => Some(content),
            _ => None,
        })
    }

    /// The workflow files of commit `sha` as (path, contents), sorted by path: the `*.yml` and
    /// `*.yaml` files directly in `.kiln/workflows/` when that folder exists at the commit,
    /// else those in `.github/workflows/` (the rule of [`crate::project::load_project`]).
    /// Symlinks and submodules are skipped; a file that is not UTF-8 is an error.
    pub async fn workflow_files(&self, sha: &str) -> Result<Vec<(String, String)>, SourceError> {
        check_sha(sha)?;
        let mut args: Vec<String> = vec!["ls-tree".into(), "-z".into(), sha.into(), "--".into()];
        args.extend(WORKFLOW_DIRS.iter().map(|d| format!("{d}/")));
        let command = "git ls-tree";
        let listing = self.git().args(&args).run().await?;
        // Entries: "<mode> <type> <oid>\t<path>".
        let mut entries: Vec<(String, String, String, String)> = Vec::new();
        for entry in split_z(&listing) {
            let bad = || SourceError::Output {
                command: command.to_owned(),
                reason: format!("unexpected entry `{entry}`"),
            };
            let (meta, path) = entry.split_once('\t').ok_or_else(bad)?;
            let mut meta = meta.split(' ');
            let (Some(mode), Some(kind), Some(oid)) = (meta.next(), meta.next(), meta.next())
            else {
                return Err(bad());
            };
            entries.push((
                mode.to_owned(),
                kind.to_owned(),
                oid.to_owned(),
                path.to_owned(),
            ));
        }
        let Some(dir) = WORKFLOW_DIRS
            .iter()
            .find(|d| entries.iter().any(|e| e.3.starts_with(&format!("{d}/"))))
        else {
            return Ok(Vec::new());
        };
        let prefix = format!("{dir}/");
        let mut wanted: Vec<(String, String)> = entries
            .into_iter()
            .filter(|(mode, kind, _, path)| {
                kind == "blob"
                    && mode != "120000"
                    && path.starts_with(&prefix)
                    && (path.ends_with(".yml") || path.ends_with(".yaml"))
            })
            .map(|(_, _, oid, path)| (path, oid))
            .collect();
        wanted.sort();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let input: String = wanted.iter().map(|(_, oid)| format!("{oid}\n")).collect();
        let objects = self.cat_file(input).await?;
        if objects.len() != wanted.len() {
            return Err(SourceError::Output {
                command: "git cat-file --batch".to_owned(),
                reason: format!("{} objects for {} asked", objects.len(), wanted.len()),
            });
        }
        let mut files = Vec::with_capacity(wanted.len());
        for ((path, _), object) in wanted.into_iter().zip(objects) {
            let Some((_, content)) = object else {
                return Err(SourceError::Output {
                    command: "git cat-file --batch".to_owned(),
                    reason: format!("the object of {path} is missing"),
                });
            };
            let text = String::from_utf8(content).map_err(|_| SourceError::NotUtf8 {
                path: path.clone(),
                sha: sha.to_owned(),
            })?;
            files.push((path, text));
        }
        Ok(files)
    }

    /// `git cat-file --batch`: one object per line of `input`, `None` where it is missing.
    async fn cat_file(&self, input: String) -> Result<Vec<Option<Object>>, SourceError> {
        let out = self
            .git()
            .args(["cat-file", "--batch"])
            .stdin(input.into_bytes())
            .run()
            .await?;
        parse_batch(&out, "git cat-file --batch")
    }

    fn git(&self) -> Git {
        Git::new(LOCAL_TIMEOUT).git_dir(&self.dir)
    }
}

/// The branch `HEAD` points at in `git ls-remote --symref … HEAD` output.
fn remote_head(out: &[u8]) -> Option<&str> {
    std::str::from_utf8(out).ok()?.lines().find_map(|line| {
        let target = line.strip_prefix("ref: ")?.strip_suffix("\tHEAD")?;
        (target.starts_with("refs/heads/") && check_rev_syntax(target).is_ok()).then_some(target)
    })
}

/// A plain ref name or commit id: nothing git would read as an option or a revision
/// expression (`main~2`, `a..b`, `@{1}`, `:/text`).
fn check_rev_syntax(rev: &str) -> Result<(), SourceError> {
    let bad = |reason| {
        Err(SourceError::BadRevision {
            rev: rev.to_owned(),
            reason,
        })
    };
    if rev.is_empty() {
        return bad("the revision is empty");
    }
    if rev.starts_with('-') || rev.starts_with('/') || rev.ends_with('/') {
        return bad("a revision may not start with `-` or `/`, nor end with `/`");
    }
    if rev.contains("..") || rev.contains("@{") || rev.contains("//") || rev.ends_with(".lock") {
        return bad("a revision may not contain `..`, `@{` or `//`, nor end with `.lock`");
    }
    if rev
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
    {
        return bad(
            "give a branch, tag or commit id: white space and `~ ^ : ? * [ \\` are not allowed",
        );
    }
    Ok(())
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A full commit id (40 hex digits, or 64 in a SHA-256 repository).
fn check_sha(sha: &str) -> Result<(), SourceError> {
    if (sha.len() == 40 || sha.len() == 64) && is_hex(sha) {
        Ok(())
    } else {
        Err(SourceError::BadRevision {
            rev: sha.to_owned(),
            reason: "a full commit id is expected here (resolve the name first)",
        })
    }
}

fn split_z(out: &[u8]) -> Vec<String> {
    out.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// An object's type (`blob`, `tree`, …) and content.
type Object = (String, Vec<u8>);

/// One object per input line of `git cat-file --batch`, `None` for a missing one.
fn parse_batch(out: &[u8], command: &str) -> Result<Vec<Option<Object>>, SourceError> {
    let bad = |reason: &str| SourceError::Output {
        command: command.to_owned(),
        reason: reason.to_owned(),
    };
    let mut objects = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let eol = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| bad("a header line has no end"))?;
        let header = String::from_utf8_lossy(&rest[..eol]).into_owned();
        rest = &rest[eol + 1..];
        let words: Vec<&str> = header.split(' ').collect();
        match words.as_slice() {
            [_, kind, size] if size.bytes().all(|b| b.is_ascii_digit()) => {
                let size: usize = size
                    .parse()
                    .map_err(|_| bad("an object size is too large"))?;
                if rest.len() < size + 1 {
                    return Err(bad("an object is cut short"));
                }
                objects.push(Some(((*kind).to_owned(), rest[..size].to_vec())));
                rest = &rest[size + 1..];
            }
            [.., "missing"] | [.., "ambiguous"] => objects.push(None),
            _ => return Err(bad(&format!("unexpected header `{header}`"))),
        }
    }
    Ok(objects)
}

/// A finished git: exit status, stdout, stderr.
type RawOutput = (std::process::ExitStatus, Vec<u8>, Vec<u8>);

/// One git invocation: isolated from the server's git configuration, in its own process
/// group, bounded in time.
struct Git {
    /// Options before the subcommand (`-c`, `--git-dir`, `-C`).
    pre: Vec<OsString>,
    args: Vec<OsString>,
    /// The command as shown in errors: no `-c` settings, URLs redacted.
    shown: Vec<String>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    /// The URL whose credentials must not appear in errors.
    secret_url: Option<String>,
}

impl Git {
    fn new(timeout: Duration) -> Self {
        let mut git = Self {
            pre: Vec::new(),
            args: Vec::new(),
            shown: vec!["git".to_owned()],
            stdin: None,
            timeout,
            secret_url: None,
        };
        for setting in [
            "protocol.allow=never",
            "http.followRedirects=false",
            "core.hooksPath=/dev/null",
            // Automatic gc/maintenance after a fetch must not detach from the process group
            // (it would escape the timeout's kill).
            "gc.autoDetach=false",
            "maintenance.autoDetach=false",
        ] {
            git = git.config(setting);
        }
        git
    }

    fn config(mut self, setting: &str) -> Self {
        self.pre.push("-c".into());
        self.pre.push(setting.into());
        self
    }

    fn configs(mut self, settings: &[String]) -> Self {
        for s in settings {
            self = self.config(s);
        }
        self
    }

    fn git_dir(mut self, dir: &Path) -> Self {
        let mut opt = OsString::from("--git-dir=");
        opt.push(dir);
        self.shown.push(opt.to_string_lossy().into_owned());
        self.pre.push(opt);
        self
    }

    fn cwd(mut self, dir: &Path) -> Self {
        self.shown.push(format!("-C {}", dir.display()));
        self.pre.push("-C".into());
        self.pre.push(dir.into());
        self
    }

    fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.shown.push(arg.as_ref().to_string_lossy().into_owned());
        self.args.push(arg.as_ref().to_owned());
        self
    }

    fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// The remote's URL as git gets it, shown redacted.
    fn url(mut self, remote: &Remote) -> Self {
        self.shown.push(egress::redact_url(&remote.given));
        self.args.push(remote.git_url.clone().into());
        self.secret_url = Some(remote.given.clone());
        self
    }

    fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(input);
        self
    }

    /// Run to success and return stdout; a non-zero exit is [`SourceError::Git`].
    async fn run(self) -> Result<Vec<u8>, SourceError> {
        let command = self.shown.join(" ");
        let secret_url = self.secret_url.clone();
        let (status, stdout, stderr) = self.output().await?;
        if status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&stderr);
        let stderr = stderr.trim();
        let mut start = stderr.len().saturating_sub(STDERR_KEPT);
        while !stderr.is_char_boundary(start) {
            start += 1;
        }
        let mut stderr = stderr[start..].to_owned();
        if let Some(url) = &secret_url {
            stderr = egress::redact_in(url, &stderr);
        }
        Err(SourceError::Git {
            command,
            status: status.to_string(),
            stderr,
        })
    }

    /// Run to its end (or timeout) and return the exit status, stdout and stderr.
    async fn output(self) -> Result<RawOutput, SourceError> {
        let command = self.shown.join(" ");
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(&self.pre).args(&self.args);
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("GIT_") && !key_str.starts_with("GIT_SSH") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("LC_ALL", "C")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| SourceError::Process {
            command: command.clone(),
            source,
        })?;
        let mut group = GroupGuard(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        );
        let writer = child.stdin.take();
        let mut out_pipe = child.stdout.take();
        let mut err_pipe = child.stderr.take();
        let input = self.stdin;
        let io = async {
            let feed = async {
                if let (Some(mut w), Some(data)) = (writer, input.as_deref()) {
                    // git may exit before reading everything (a failure): that is its answer.
                    let _ = w.write_all(data).await;
                }
            };
            let (_, out, err, status) = tokio::join!(
                feed,
                read_all(out_pipe.as_mut()),
                read_all(err_pipe.as_mut()),
                child.wait()
            );
            Ok::<_, std::io::Error>((status?, out?, err?))
        };
        let finished = tokio::time::timeout(self.timeout, io).await;
        match finished {
            Ok(Ok(result)) => {
                group.disarm();
                Ok(result)
            }
            Ok(Err(source)) => Err(SourceError::Process { command, source }),
            Err(_) => {
                group.kill();
                // Reap it; SIGKILL leaves nothing to wait for but the kernel.
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                tracing::warn!(
                    command,
                    timeout_s = self.timeout.as_secs(),
                    "git timed out; killed its process group"
                );
                Err(SourceError::Timeout {
                    command,
                    timeout: self.timeout,
                })
            }
        }
    }
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<&mut R>,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(p) = pipe {
        p.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// The process group of a git that has not finished: killed when dropped (the caller's
/// future was dropped mid-run) unless disarmed, so remote helpers and ssh go with git.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests;
