//! Confining a build's processes with bubblewrap (`bwrap`): its own namespaces, the whole
//! file system read-only except the folders it is meant to write, a private `/tmp`, and no
//! network unless the phase needs it (a package's `fetch` may, its `build` never).
//!
//! The sandbox only rewrites *what* is started: [`Sandbox::wrap`] turns `program args…` into
//! `bwrap <flags and mounts> -- program args…`. Spawning, process groups, log capture and
//! killing stay where they are (`process`): the wrapped command is spawned like any other.
//! That works because of how bwrap ends: the outer `bwrap` stays in the group kiln created,
//! and with `--die-with-parent` the processes inside are SIGKILLed when it dies, and with
//! `--unshare-pid` every process in the sandbox dies with the sandbox's first process. So
//! TERM to the group ends the whole sandbox, background processes included — at once, without
//! the grace a bare process gets (bwrap does not forward signals inside).
//!
//! `--die-with-parent` watches the *thread* that spawned bwrap. Spawn the wrapped command from
//! a thread that outlives it (tokio's worker threads do; `spawn_blocking` threads exit after
//! idling and would take the sandbox with them).
//!
//! Whether bwrap can work is only known by trying: it may be installed but unable to create
//! namespaces (a container without the privileges, `kernel.unprivileged_userns_clone=0`, a
//! masked `/proc`). [`Sandbox::detect`] therefore runs the same kind of command once, at
//! start-up, and the configured [`SandboxMode`] decides what happens when it fails.
//!
//! Not here: which folders a build gets (the caller describes them in a [`Confinement`]),
//! the egress policy itself (a `fetch` phase reaches the network only through a proxy that
//! checks it, outside the sandbox: [`Confinement::egress`], [`crate::relay`]), landlock as a
//! second layer.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the start-up probe may take: bwrap starting `true` takes milliseconds; a probe
/// that hangs must not hang kiln's start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags every sandboxed command gets, probe included.
///
/// - `--unshare-all`: new user, mount, pid, network, ipc, uts and cgroup namespaces (the
///   network one is given back with `--share-net` where [`Network::Allowed`]).
/// - `--die-with-parent`: the sandbox dies when kiln (or the outer bwrap) does, so a killed or
///   crashed kiln leaves no build running.
/// - `--new-session`: the sandboxed command cannot reach kiln's terminal (`TIOCSTI` input
///   injection, CVE-2017-5226).
const BASE_FLAGS: [&str; 3] = ["--unshare-all", "--die-with-parent", "--new-session"];

/// What to do about sandboxing, from configuration (`--sandbox auto|require|off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// Sandbox when bwrap works here; otherwise run unsandboxed and warn loudly.
    #[default]
    Auto,
    /// Sandbox, or refuse to start: for servers whose builds must never run unconfined.
    Require,
    /// Never sandbox (bwrap is not even looked for).
    Off,
}

impl SandboxMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Require => "require",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox mode that is not `auto`, `require` or `off`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown sandbox mode `{0}`: expected `auto`, `require` or `off`")]
pub struct ParseSandboxModeError(pub String);

impl FromStr for SandboxMode {
    type Err = ParseSandboxModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "require" => Ok(Self::Require),
            "off" => Ok(Self::Off),
            other => Err(ParseSandboxModeError(other.to_owned())),
        }
    }
}

/// Why the sandbox cannot be used, or a command cannot be confined as asked.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No `bwrap` on kiln's `PATH`.
    #[error("bubblewrap is not installed: no `bwrap` on PATH (install the `bubblewrap` package)")]
    NotOnPath,
    /// No executable at the bwrap path kiln was given.
    #[error("bubblewrap is not installed: no executable `{}`", .0.display())]
    NotInstalled(PathBuf),
    /// bwrap exists but could not be started at all.
    #[error("cannot start `{}` to probe it: {source}", .program.display())]
    ProbeSpawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// bwrap started but could not build a sandbox; its own message says why.
    #[error(
        "`{}` cannot create a sandbox here ({status}): {}; are user namespaces forbidden (a container without privileges, kernel.unprivileged_userns_clone=0)?",
        .program.display(),
        if .stderr.is_empty() { "no message" } else { .stderr.as_str() }
    )]
    ProbeFailed {
        program: PathBuf,
        status: ExitStatus,
        /// bwrap's standard error, trimmed.
        stderr: String,
    },
    /// The probe did not finish (it was killed).
    #[error("`{}` did not finish its probe within {after:?}", .program.display())]
    ProbeTimedOut { program: PathBuf, after: Duration },
    /// A folder to bind into the sandbox does not exist or cannot be resolved.
    #[error("cannot bind {} into the sandbox: {source}", .path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a sandboxed command may use the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own with only a loopback interface: nothing outside, not
    /// even the host's `127.0.0.1`. A package's `build` phase.
    #[default]
    Denied,
    /// The host's network (`--share-net`). A package's `fetch` phase; what it may reach is the
    /// egress policy's business, not the sandbox's.
    Allowed,
}

/// Which folders a sandboxed command may see and write, and whether it has the network.
///
/// Everything else of the host's file system is visible read-only (compilers, headers, shared
/// libraries, home directories) so that builds work without listing what they read; `/tmp` is
/// a fresh private tmpfs, `/dev` a minimal one, `/proc` the sandbox's own.
///
/// Nested folders are fine in any combination: mounts are made shallowest first, so a deeper
/// folder's mount wins over its parent's whatever their kinds (a writable `$KILN_OUT` inside a
/// read-only folder stays writable, a scratch folder inside a hidden one stays visible). A
/// folder listed twice gets the more restrictive of its kinds: hidden over read-only over
/// writable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    workdir: PathBuf,
    writable: Vec<PathBuf>,
    read_only: Vec<PathBuf>,
    hidden: Vec<PathBuf>,
    network: Network,
    /// The egress proxy's socket and the relay program (`Confinement::egress`).
    egress: Option<(PathBuf, PathBuf)>,
}

impl Confinement {
    /// A confinement whose working directory is `workdir` (writable; for a package, the
    /// scratch copy of its folder), without the network.
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        Self {
            workdir: workdir.into(),
            writable: Vec::new(),
            read_only: Vec::new(),
            hidden: Vec::new(),
            network: Network::Denied,
            egress: None,
        }
    }

    /// Lets the command write `path` too (for a package, `$KILN_OUT`).
    #[must_use]
    pub fn writable(mut self, path: impl Into<PathBuf>) -> Self {
        self.writable.push(path.into());
        self
    }

    /// Binds `path` read-only: needed for folders that would otherwise be hidden (anything
    /// under `/tmp`, which is private in the sandbox) and for read-only folders inside
    /// writable ones. For a package: the tree and `$KILN_DEPS`.
    #[must_use]
    pub fn read_only(mut self, path: impl Into<PathBuf>) -> Self {
        self.read_only.push(path.into());
        self
    }

    /// Covers `path` with an empty tmpfs: for what the read-only root would otherwise let a
    /// build read, such as kiln's own data folder (its database, its secrets key) or a home
    /// directory's credentials. Folders bound inside it stay visible.
    #[must_use]
    pub fn hidden(mut self, path: impl Into<PathBuf>) -> Self {
        self.hidden.push(path.into());
        self
    }

    /// Sets whether the command has the network.
    #[must_use]
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Gives the command the network only through the egress proxy listening on the Unix
    /// socket `socket`: a network namespace of its own, that socket bound in, and `relay` (a
    /// `kiln` binary, for its [`crate::relay`]) started first to carry connections from
    /// `127.0.0.1` to it, with the proxy variables set for the command. Only when sandboxed:
    /// an unconfined command has the host's network whatever this says.
    #[must_use]
    pub fn egress(mut self, socket: impl Into<PathBuf>, relay: impl Into<PathBuf>) -> Self {
        self.network = Network::Denied;
        self.egress = Some((socket.into(), relay.into()));
        self
    }

    /// The working directory the command starts in.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Every path resolved to its canonical form: bwrap wants absolute, existing paths, and
    /// binding a path through a symlink would bind somewhere else than the caller meant.
    fn resolved(&self) -> Result<Self, SandboxError> {
        let resolve = |p: &PathBuf| {
            std::fs::canonicalize(p).map_err(|source| SandboxError::Bind {
                path: p.clone(),
                source,
            })
        };
        Ok(Self {
            workdir: resolve(&self.workdir)?,
            writable: self
                .writable
                .iter()
                .map(resolve)
                .collect::<Result<_, _>>()?,
            read_only: self
                .read_only
                .iter()
                .map(resolve)
                .collect::<Result<_, _>>()?,
            hidden: self.hidden.iter().map(resolve).collect::<Result<_, _>>()?,
            network: self.network,
            egress: match &self.egress {
                Some((socket, relay)) => Some((resolve(socket)?, resolve(relay)?)),
                None => None,
            },
        })
    }
}

/// One bwrap mount, by its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mount<'a> {
    ReadOnly(&'a Path),
    Writable(&'a Path),
    Dev(&'a Path),
    Proc(&'a Path),
    Tmpfs(&'a Path),
}

impl<'a> Mount<'a> {
    fn path(self) -> &'a Path {
        match self {
            Self::ReadOnly(p)
            | Self::Writable(p)
            | Self::Dev(p)
            | Self::Proc(p)
            | Self::Tmpfs(p) => p,
        }
    }

    fn push_args(self, args: &mut Vec<OsString>) {
        let (flag, bind) = match self {
            Self::ReadOnly(_) => ("--ro-bind", true),
            Self::Writable(_) => ("--bind", true),
            Self::Dev(_) => ("--dev", false),
            Self::Proc(_) => ("--proc", false),
            Self::Tmpfs(_) => ("--tmpfs", false),
        };
        args.push(flag.into());
        if bind {
            args.push(self.path().into());
        }
        args.push(self.path().into());
    }
}

/// The host's root read-only and fresh `/dev`, `/proc` and `/tmp`: what every sandbox starts
/// from, the probe included.
fn base_mounts() -> [Mount<'static>; 4] {
    [
        Mount::ReadOnly(Path::new("/")),
        Mount::Dev(Path::new("/dev")),
        Mount::Proc(Path::new("/proc")),
        Mount::Tmpfs(Path::new("/tmp")),
    ]
}

impl Confinement {
    /// The mounts besides the base ones, in the order that settles ties at the same path:
    /// writable, then read-only, then hidden, so that the safer reading of a contradiction
    /// wins.
    fn mounts(&self) -> Vec<Mount<'_>> {
        let mut mounts =
            Vec::with_capacity(1 + self.writable.len() + self.read_only.len() + self.hidden.len());
        mounts.push(Mount::Writable(&self.workdir));
        mounts.extend(self.writable.iter().map(|p| Mount::Writable(p)));
        mounts.extend(self.read_only.iter().map(|p| Mount::ReadOnly(p)));
        mounts.extend(self.hidden.iter().map(|p| Mount::Tmpfs(p)));
        if let Some((socket, relay)) = &self.egress {
            mounts.push(Mount::Writable(socket));
            mounts.push(Mount::ReadOnly(relay));
        }
        mounts
    }
}

/// bwrap's arguments up to and including `--`. Pure: paths are used as they are (the caller
/// resolved them).
fn bwrap_args<'a>(
    network: Network,
    extra: impl IntoIterator<Item = Mount<'a>>,
    chdir: &Path,
) -> Vec<OsString> {
    let mut mounts: Vec<Mount<'a>> = base_mounts().to_vec();
    for m in extra {
        if !mounts.contains(&m) {
            mounts.push(m);
        }
    }
    // bwrap mounts in argument order and a later mount covers an earlier one at or above its
    // path, so parents must come first. A stable sort by depth does that and keeps the order
    // given among mounts of the same depth.
    mounts.sort_by_key(|m| m.path().components().count());

    let mut args: Vec<OsString> = Vec::with_capacity(8 + 3 * mounts.len());
    args.push(BASE_FLAGS[0].into());
    if network == Network::Allowed {
        args.push("--share-net".into());
    }
    args.extend(BASE_FLAGS[1..].iter().map(OsString::from));
    for m in mounts {
        m.push_args(&mut args);
    }
    args.push("--chdir".into());
    args.push(chdir.into());
    args.push("--".into());
    args
}

/// [`bwrap_args`] for a confinement.
fn confinement_args(c: &Confinement) -> Vec<OsString> {
    bwrap_args(c.network, c.mounts(), &c.workdir)
}

/// A command ready to spawn: `bwrap … -- program args…`, or `program args…` unchanged when
/// not sandboxed. The caller adds environment (bwrap passes it through), standard streams,
/// working directory and process group as for any other command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl WrappedCommand {
    /// A [`Command`] with this program and these arguments and nothing else set.
    /// (`tokio::process::Command` converts from it.)
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd
    }
}

/// The result of detection: confine commands with bwrap, or run them as they are.
///
/// Detect once at start-up and share the value; [`Sandbox::warning`] is then printed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The bwrap that passed the probe; `None` when commands run unsandboxed.
    bwrap: Option<PathBuf>,
    warning: Option<String>,
    /// The mode it was detected with (a remote worker building for this one detects its own
    /// sandbox with it).
    mode: SandboxMode,
}

impl Sandbox {
    /// A sandbox that confines nothing (what [`SandboxMode::Off`] gives).
    pub fn off() -> Self {
        Self {
            bwrap: None,
            warning: None,
            mode: SandboxMode::Off,
        }
    }

    /// The mode this sandbox was detected with.
    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// Finds `bwrap` on kiln's own `PATH` and probes it, then applies `mode`.
    ///
    /// Blocks while the probe runs (milliseconds normally, at most ten seconds): call it at
    /// start-up, not per build.
    pub fn detect(mode: SandboxMode) -> Result<Self, SandboxError> {
        if mode == SandboxMode::Off {
            return Ok(Self::off());
        }
        match find_on_path("bwrap") {
            Some(bwrap) => Self::detect_with(mode, &bwrap),
            None => Self::decide(mode, Err(SandboxError::NotOnPath)),
        }
    }

    /// [`Sandbox::detect`] with the bwrap at `bwrap` instead of the one on `PATH`: for a
    /// configured path, and for tests that need bwrap missing or broken.
    pub fn detect_with(mode: SandboxMode, bwrap: &Path) -> Result<Self, SandboxError> {
        if mode == SandboxMode::Off {
            return Ok(Self::off());
        }
        let probed = if is_executable(bwrap) {
            probe(bwrap).map(|()| bwrap.to_path_buf())
        } else {
            Err(SandboxError::NotInstalled(bwrap.to_path_buf()))
        };
        Self::decide(mode, probed)
    }

    fn decide(
        mode: SandboxMode,
        probed: Result<PathBuf, SandboxError>,
    ) -> Result<Self, SandboxError> {
        match (probed, mode) {
            (_, SandboxMode::Off) => Ok(Self::off()),
            (Ok(bwrap), _) => {
                tracing::debug!(bwrap = %bwrap.display(), "builds run sandboxed");
                Ok(Self {
                    bwrap: Some(bwrap),
                    warning: None,
                    mode,
                })
            }
            (Err(e), SandboxMode::Require) => Err(e),
            (Err(e), SandboxMode::Auto) => Ok(Self {
                bwrap: None,
                mode,
                warning: Some(format!(
                    "WARNING: builds run WITHOUT A SANDBOX: {e}. They can write anywhere kiln \
                     can and reach the network in every phase. Make bubblewrap work here, or \
                     set the sandbox mode to `require` to refuse to start without it, or to \
                     `off` to run unsandboxed without this warning."
                )),
            }),
        }
    }

    /// Whether commands are confined.
    pub fn is_confined(&self) -> bool {
        self.bwrap.is_some()
    }

    /// The bwrap that confines commands, when they are.
    pub fn bwrap(&self) -> Option<&Path> {
        self.bwrap.as_deref()
    }

    /// In [`SandboxMode::Auto`] when bwrap cannot be used: a loud message for the operator,
    /// naming why. The library does not print it; the caller does, once.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// `program args…` confined as `confinement` says; unchanged when not sandboxed.
    ///
    /// Fails when a folder of `confinement` does not exist (only when sandboxed: unconfined
    /// commands need no binds).
    pub fn wrap<I, S>(
        &self,
        confinement: &Confinement,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Result<WrappedCommand, SandboxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args = args.into_iter().map(|a| a.as_ref().to_owned());
        let Some(bwrap) = &self.bwrap else {
            return Ok(WrappedCommand {
                program: program.as_ref().to_owned(),
                args: args.collect(),
            });
        };
        let confinement = confinement.resolved()?;
        let mut all = confinement_args(&confinement);
        if let Some((socket, relay)) = &confinement.egress {
            all.extend([
                relay.clone().into_os_string(),
                crate::relay::RELAY_ARG.into(),
                socket.clone().into_os_string(),
                "--".into(),
            ]);
        }
        all.push(program.as_ref().to_owned());
        all.extend(args);
        Ok(WrappedCommand {
            program: bwrap.clone().into_os_string(),
            args: all,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` in kiln's own `PATH`, as an absolute path: the wrapped command then does not
/// depend on the `PATH` a step sets for itself.
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// Runs `true` in a sandbox shaped like the real ones (every namespace, a bind, `/proc`,
/// `/dev`, a tmpfs), because each of those can be what a container forbids.
fn probe(bwrap: &Path) -> Result<(), SandboxError> {
    let mut args = bwrap_args(Network::Denied, [], Path::new("/"));
    args.push("true".into());
    let fail = |source| SandboxError::ProbeSpawn {
        program: bwrap.to_path_buf(),
        source,
    };
    let mut child = Command::new(bwrap)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    // bwrap's message is read in a thread so that a chatty failure cannot block it while we
    // wait; the wait polls so that it can be bounded and the child killed while still ours.
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            let _ = tx.send(text);
        });
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(fail)? {
            break status;
        }
        if started.elapsed() >= PROBE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::ProbeTimedOut {
                program: bwrap.to_path_buf(),
                after: PROBE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    // Everything in the sandbox died with bwrap (`--die-with-parent`), so the pipe is closed
    // or about to be; the bound is for the unforeseen.
    let stderr = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    Err(SandboxError::ProbeFailed {
        program: bwrap.to_path_buf(),
        status,
        stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().expect("utf-8")).collect()
    }

    #[test]
    fn modes_parse_and_print_their_configuration_spelling() {
        for mode in [SandboxMode::Auto, SandboxMode::Require, SandboxMode::Off] {
            assert_eq!(mode.to_string().parse::<SandboxMode>(), Ok(mode));
        }
        let err = "Require".parse::<SandboxMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown sandbox mode `Require`: expected `auto`, `require` or `off`"
        );
        assert!("".parse::<SandboxMode>().is_err());
        assert_eq!(SandboxMode::default(), SandboxMode::Auto);
    }

    #[test]
    fn a_package_build_gets_the_documented_argv() {
        let c = Confinement::new("/b/scratch")
            .writable("/b/out")
            .read_only("/b/deps")
            .read_only("/tree");
        assert_eq!(
            strings(&confinement_args(&c)).join(" "),
            "--unshare-all --die-with-parent --new-session \
             --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --ro-bind /tree /tree \
             --bind /b/scratch /b/scratch --bind /b/out /b/out --ro-bind /b/deps /b/deps \
             --chdir /b/scratch --"
        );
        let fetch = strings(&confinement_args(&c.clone().network(Network::Allowed))).join(" ");
        assert!(
            fetch.starts_with("--unshare-all --share-net --die-with-parent --new-session "),
            "{fetch}"
        );
        // Through the egress proxy: no host network, the socket and the relay bound in.
        let proxied = c
            .network(Network::Allowed)
            .egress("/tmp/kiln-egress-1.sock", "/usr/bin/kiln");
        let args = strings(&confinement_args(&proxied)).join(" ");
        assert!(!args.contains("--share-net"), "{args}");
        assert!(
            args.contains("--bind /tmp/kiln-egress-1.sock /tmp/kiln-egress-1.sock")
                && args.contains("--ro-bind /usr/bin/kiln /usr/bin/kiln"),
            "{args}"
        );
    }

    #[test]
    fn deeper_mounts_come_later_whatever_their_kind_and_the_stricter_kind_wins_a_tie() {
        // A writable output inside the read-only tree, a read-only folder inside the writable
        // scratch, the same folder asked two ways, a work folder inside a hidden data folder.
        let c = Confinement::new("/s")
            .read_only("/s/ro")
            .read_only("/t")
            .writable("/t/out")
            .writable("/both")
            .read_only("/both")
            .writable("/s")
            .hidden("/data")
            .writable("/data/work");
        assert_eq!(
            strings(&confinement_args(&c)).join(" "),
            "--unshare-all --die-with-parent --new-session \
             --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp \
             --bind /s /s --bind /both /both --ro-bind /t /t --ro-bind /both /both \
             --tmpfs /data --bind /t/out /t/out --bind /data/work /data/work \
             --ro-bind /s/ro /s/ro --chdir /s --"
        );
    }

    #[test]
    fn unsandboxed_commands_are_left_as_they_are_and_need_no_folders() {
        let c = Confinement::new("/does/not/exist");
        let w = Sandbox::off()
            .wrap(&c, "make", ["-j2", "all"])
            .expect("wrap");
        assert_eq!(
            w,
            WrappedCommand {
                program: "make".into(),
                args: vec!["-j2".into(), "all".into()],
            }
        );
    }

    #[test]
    fn a_sandboxed_command_needs_its_folders_to_exist() {
        let s = Sandbox {
            bwrap: Some("/usr/bin/bwrap".into()),
            warning: None,
            mode: SandboxMode::Require,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("out");
        let err = s
            .wrap(
                &Confinement::new(dir.path()).writable(&missing),
                "true",
                [""; 0],
            )
            .unwrap_err();
        assert!(
            matches!(&err, SandboxError::Bind { path, .. } if *path == missing),
            "{err:?}"
        );
        let w = s
            .wrap(&Confinement::new(dir.path()), "sh", ["-c", "exit 0"])
            .expect("wrap");
        assert_eq!(w.program, "/usr/bin/bwrap");
        assert_eq!(
            strings(&w.args[w.args.len() - 4..]),
            ["--", "sh", "-c", "exit 0"]
        );
    }

    /// The sandbox with bwrap, or `None` (after saying why) where bwrap cannot run.
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

    /// Runs `script` confined to `dir` through the same spawning and killing as steps.
    async fn run_confined(
        sandbox: &Sandbox,
        dir: &Path,
        script: &str,
        timeout: Duration,
    ) -> (crate::process::Ended, Duration, String) {
        use crate::process::{self, Limits, ProcessSpec};

        let w = sandbox
            .wrap(&Confinement::new(dir), "sh", ["-c", script])
            .expect("wrap");
        let program = w.program.to_str().expect("utf-8").to_owned();
        let spec = ProcessSpec {
            program: &program,
            args: w
                .args
                .iter()
                .map(|a| a.to_str().expect("utf-8").to_owned())
                .collect(),
            env: std::env::vars_os().collect(),
            dir,
            gate: None,
        };
        // Long grace and after-kill waits: ending quickly proves nothing needed them.
        let limits = Limits {
            grace: Duration::from_secs(20),
            drain: Duration::from_secs(20),
            after_kill: Duration::from_secs(20),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let mut masker = crate::Masker::new(&[]);
        let started = std::time::Instant::now();
        let result = {
            let mut sink = crate::logs::LogSink::new(0, &tx, &mut masker);
            let r = process::run(
                spec,
                tokio::time::Instant::now() + timeout,
                None,
                limits,
                &mut sink,
            )
            .await
            .expect("spawn");
            sink.flush().await;
            r
        };
        let took = started.elapsed();
        drop(tx);
        let mut log = Vec::new();
        while let Some(ev) = rx.recv().await {
            if let crate::ExecEvent::Log { data, .. } = ev {
                log.extend(data);
            }
        }
        assert_eq!(
            result.leftover_group, None,
            "the sandbox left its group alive"
        );
        (
            result.ended,
            took,
            String::from_utf8_lossy(&log).into_owned(),
        )
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
    }

    #[tokio::test]
    async fn killing_the_group_on_timeout_ends_everything_in_the_sandbox() {
        let Some(sandbox) = confining_sandbox() else {
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let tick = dir.path().join("tick");
        // A background writer in its own session would escape a plain killpg; the sandbox's
        // pid namespace must take it down with the rest, and with it the log pipe.
        let script = "(while :; do echo >> tick; sleep 0.05; done) & \
                      trap '' TERM; echo started; sleep 300";
        let (ended, took, log) =
            run_confined(&sandbox, dir.path(), script, Duration::from_secs(1)).await;
        assert!(
            matches!(ended, crate::process::Ended::TimedOut),
            "{ended:?}"
        );
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert_eq!(log, "started\n");
        let n = lines(&tick);
        assert!(n > 0, "the background writer never ran");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            lines(&tick),
            n,
            "the background writer outlived the sandbox"
        );
    }

    #[tokio::test]
    async fn a_background_process_ends_with_its_sandboxed_step() {
        let Some(sandbox) = confining_sandbox() else {
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let tick = dir.path().join("tick");
        // Unconfined, this writer would hold the log pipe until the drain limit (20 s here).
        let script = "(while :; do echo >> tick; sleep 0.05; done) & sleep 0.3; echo done";
        let (ended, took, log) =
            run_confined(&sandbox, dir.path(), script, Duration::from_secs(60)).await;
        assert!(
            matches!(ended, crate::process::Ended::Exited(st) if st.success()),
            "{ended:?}"
        );
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert_eq!(log, "done\n");
        let n = lines(&tick);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            lines(&tick),
            n,
            "the background writer outlived the sandbox"
        );
    }
}
