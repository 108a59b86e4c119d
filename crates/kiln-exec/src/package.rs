//! One package build's commands (DESIGN.md "Package trees"), wherever it runs — `kiln
//! build`, the server's pool, a remote worker: the `fetch` phase, the distfile checks, and the
//! network-less `build` phase, each `sh -ec COMMAND` under the [`Sandbox`] with a fixed
//! environment ([`build_env`]), their output into a bounded [`BuildLog`]; and the folder work
//! around them: the scratch copy ([`copy_tree`]) and the `$KILN_DEPS` layout
//! ([`lay_out_deps`]).
//!
//! Not here: keys, the blob store, history (the engine and the store), the egress proxy that
//! a confined `fetch` reaches the network through (the caller starts it and passes its socket
//! in [`FetchNetwork::Relay`]).

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_core::packages::Distfile;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::process::Gate;
use crate::sandbox::{Confinement, Network, Sandbox};
use crate::{CommandEnd, CommandSpec, ExecEvent, Limits};

/// A package's turn to run its commands (a free slot, and whatever must be ready before: the
/// last dependencies laid out): see [`run_phases_after`]. An error fails the build with it as
/// the reason, nothing of its commands run.
pub type Turn<'t> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 't>>;

/// The `PATH` every build gets, whatever kiln's own: a build must not change with the shell
/// kiln was started from, and its key does not cover kiln's `PATH`. Name `PATH` among the
/// toolchain's variables to pass (and key) kiln's own instead.
pub const BUILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// At most this much of one build's log is kept (a runaway build must not exhaust memory);
/// the rest is dropped with a note.
pub const MAX_LOG: usize = 64 * 1024 * 1024;

/// Where a confined `fetch` phase reaches the network.
#[derive(Clone, Copy, Debug)]
pub enum FetchNetwork<'a> {
    /// The host's network (unconfined builds, or no egress policy).
    Host,
    /// Only through an egress proxy listening on the Unix socket `socket`, which `relay` (the
    /// kiln binary, `kiln __egress-relay`) carries connections to from inside.
    Relay { socket: &'a Path, relay: &'a Path },
}

/// One package's commands and where they run.
pub struct Phases<'a> {
    pub fetch: Option<&'a str>,
    pub distfiles: &'a [Distfile],
    pub build: &'a str,
    /// The scratch copy of the package's folder: both phases run here, and may write here.
    pub src: &'a Path,
    /// `$KILN_OUT`: writable in `build` only.
    pub out: &'a Path,
    /// What both phases see of the host besides `src` (read-only folders, hidden ones).
    pub base: Confinement,
    /// The whole environment ([`build_env`]).
    pub env: &'a [(OsString, OsString)],
    pub sandbox: &'a Sandbox,
    pub limits: Limits,
    pub fetch_network: FetchNetwork<'a>,
}

/// The facts of this machine that a package's key holds and that a machine building for
/// another must share: `os`, `arch`, and `sh` (the path and SHA-256 of the `sh` found on
/// `path`, links followed).
pub fn machine_facts(path: &str) -> Vec<(String, String)> {
    let sh = std::env::split_paths(path)
        .map(|dir| dir.join("sh"))
        .find_map(|candidate| {
            let bytes = std::fs::read(&candidate).ok()?;
            Some(format!(
                "{} sha256:{}",
                candidate.display(),
                hex::encode(Sha256::digest(&bytes))
            ))
        })
        .unwrap_or_else(|| "(not found)".to_owned());
    vec![
        ("os".to_owned(), std::env::consts::OS.to_owned()),
        ("arch".to_owned(), std::env::consts::ARCH.to_owned()),
        ("sh".to_owned(), sh),
    ]
}

/// A build's environment: [`BUILD_PATH`], `HOME` = `src`, `TMPDIR`, the four `KILN_*`
/// variables, then the toolchain's variables (one named `PATH` replaces the default).
pub fn build_env(
    src: &Path,
    out: &Path,
    deps: &Path,
    origin: &str,
    version: &str,
    toolchain: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), BUILD_PATH.into()),
        ("HOME".into(), src.into()),
        ("TMPDIR".into(), "/tmp".into()),
        ("KILN_PACKAGE".into(), origin.into()),
        ("KILN_VERSION".into(), version.into()),
        ("KILN_OUT".into(), out.into()),
        ("KILN_DEPS".into(), deps.into()),
    ];
    env.retain(|(k, _)| !toolchain.iter().any(|(n, _)| k == n.as_str()));
    env.extend(toolchain.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

/// Runs the file work `f` on the blocking pool (a build's folder work touches thousands of
/// files); a panic in it comes back as its error.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
}

/// Runs `fetch` (when there is one), checks the distfiles, and runs `build`: the first that
/// fails ends the build.
pub async fn run_phases(
    p: &Phases<'_>,
    log: &mut BuildLog,
    cancel: &CancellationToken,
) -> Result<(), Stop> {
    run_phases_after(p, log, cancel, None).await
}

/// [`run_phases`], the commands waiting for `turn` (when given) to resolve. The first
/// phase's sandbox is made and its shell started meanwhile, and its script let in when the
/// turn comes (`process::Gate::SHELL`): bubblewrap's few milliseconds of namespaces and
/// mounts, and the shell's start, are spent before the turn, not in it.
pub async fn run_phases_after(
    p: &Phases<'_>,
    log: &mut BuildLog,
    cancel: &CancellationToken,
    mut turn: Option<Turn<'_>>,
) -> Result<(), Stop> {
    if let Some(fetch) = p.fetch {
        log.line(&format!("fetch: {fetch}"));
        let confinement = match p.fetch_network {
            FetchNetwork::Relay { socket, relay } => p.base.clone().egress(socket, relay),
            FetchNetwork::Host => p.base.clone().network(Network::Allowed),
        };
        phase(p, "fetch", fetch, &confinement, log, cancel, turn.take()).await?;
    }
    if !p.distfiles.is_empty() {
        log.line("checking distfiles");
        let files = p.distfiles.to_vec();
        let at = p.src.to_owned();
        let problems = tokio::task::spawn_blocking(move || check_distfiles(&at, &files))
            .await
            .map_err(|e| Stop::Failed(format!("kiln could not check the distfiles: {e}")))?;
        if !problems.is_empty() {
            for problem in &problems {
                log.line(problem);
            }
            return Err(Stop::Failed(problems.join("; ")));
        }
    }
    log.line(&format!("build: {}", p.build));
    let confinement = p.base.clone().writable(p.out).network(Network::Denied);
    phase(p, "build", p.build, &confinement, log, cancel, turn.take()).await
}

/// One package's log: kiln's own lines and both phases' output, in order, bounded.
#[derive(Default)]
pub struct BuildLog {
    data: Vec<u8>,
    truncated: bool,
    /// Where each piece also goes as it comes (a workflow job's live log).
    tap: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl BuildLog {
    /// A log whose pieces also go to `tap` as they come.
    pub fn new(tap: Option<mpsc::UnboundedSender<Vec<u8>>>) -> Self {
        Self {
            tap,
            ..Self::default()
        }
    }

    /// Appends output as it came (cut, with a note, past 64 MiB).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.truncated {
            return;
        }
        if self.data.len() + bytes.len() > MAX_LOG {
            let start = self.data.len();
            let room = MAX_LOG - start;
            self.data.extend_from_slice(&bytes[..room]);
            self.data
                .extend_from_slice(b"\n==> kiln: the log was cut here: it exceeded 64 MiB\n");
            self.truncated = true;
            if let Some(tap) = &self.tap {
                let _ = tap.send(self.data[start..].to_vec());
            }
            return;
        }
        self.data.extend_from_slice(bytes);
        if let Some(tap) = &self.tap {
            let _ = tap.send(bytes.to_vec());
        }
    }

    /// Appends one line of kiln's own, as `==> text`.
    pub fn line(&mut self, text: &str) {
        self.push(format!("==> {text}\n").as_bytes());
    }

    /// Everything logged so far.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

/// How a phase or a preparation step ended when it did not succeed.
#[derive(Debug)]
pub enum Stop {
    Failed(String),
    Cancelled,
}

impl Stop {
    /// Logs how the build stopped and answers the reason its history gives (the same on
    /// every builder: `kiln build`, a server's pool, a remote worker).
    pub fn note(&self, log: &mut BuildLog) -> String {
        match self {
            Stop::Failed(why) => {
                log.line(&format!("error: {why}"));
                why.clone()
            }
            Stop::Cancelled => {
                log.line("cancelled: its processes were stopped");
                "stopped: the build was cancelled".to_owned()
            }
        }
    }
}

/// Runs one phase's command confined, its output into the log.
async fn phase(
    p: &Phases<'_>,
    name: &str,
    command: &str,
    confinement: &Confinement,
    log: &mut BuildLog,
    cancel: &CancellationToken,
    turn: Option<Turn<'_>>,
) -> Result<(), Stop> {
    if cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    // Started ahead of its turn, sandboxed or not: the sandbox is made and the shell started
    // while it waits, so only the script itself runs in the slot (`Gate::SHELL`).
    let refused: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let gate = turn.map(|turn| Gate {
        open: Box::pin(async {
            match turn.await {
                Ok(()) => true,
                Err(why) => {
                    *refused.lock().expect("refusal lock") = Some(why);
                    false
                }
            }
        }),
    });
    let script = match &gate {
        Some(_) => std::borrow::Cow::Owned(format!("{}{command}", Gate::SHELL)),
        None => std::borrow::Cow::Borrowed(command),
    };
    let wrapped = p
        .sandbox
        .wrap(confinement, "sh", ["-ec", &*script])
        .map_err(|e| Stop::Failed(format!("kiln could not confine the {name} phase: {e}")))?;
    let spec = CommandSpec {
        program: wrapped.program.to_string_lossy().into_owned(),
        args: wrapped
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        env: p.env.to_vec(),
        dir: p.src.to_owned(),
    };
    let (tx, mut rx) = mpsc::channel::<ExecEvent>(64);
    // No deadline: a manifest has no timeout, and Ctrl-C ends a build that hangs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    let limits = p.limits;
    let run = async move {
        let tx = tx;
        crate::command::run_gated(&spec, gate, deadline, cancel, limits, &tx).await
    };
    let collect = async {
        while let Some(ev) = rx.recv().await {
            if let ExecEvent::Log { data, .. } = ev {
                log.push(&data);
            }
        }
    };
    let (ended, ()) = tokio::join!(run, collect);
    if let Some(why) = refused.lock().expect("refusal lock").take()
        && !cancel.is_cancelled()
    {
        return Err(Stop::Failed(why));
    }
    match ended {
        Err(e) => Err(Stop::Failed(format!(
            "the {name} phase could not start: {e}"
        ))),
        Ok(CommandEnd::Exited(status)) if status.success() => Ok(()),
        Ok(CommandEnd::Exited(status)) => {
            use std::os::unix::process::ExitStatusExt;
            Err(Stop::Failed(match (status.code(), status.signal()) {
                (Some(code), _) => format!("the {name} phase exited with status {code}"),
                (None, Some(sig)) => format!("the {name} phase was killed by signal {sig}"),
                _ => format!("the {name} phase failed"),
            }))
        }
        Ok(CommandEnd::Cancelled) => Err(Stop::Cancelled),
        Ok(CommandEnd::TimedOut) => Err(Stop::Failed(format!("the {name} phase timed out"))),
    }
}

/// Every distfile that is missing or does not match its checksum, described.
pub fn check_distfiles(dir: &Path, files: &[Distfile]) -> Vec<String> {
    let mut problems = Vec::new();
    for f in files {
        let path = dir.join(&f.name);
        let expected = hex::encode(f.sha256);
        match sha256_of(&path) {
            Ok(got) if got == expected => {}
            Ok(got) => problems.push(format!(
                "distfile {}: checksum mismatch: expected sha256:{expected}, got sha256:{got}",
                f.name
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(format!(
                "distfile {}: missing after the fetch phase",
                f.name
            )),
            Err(e) => problems.push(format!("distfile {}: cannot read: {e}", f.name)),
        }
    }
    problems
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Copies the folder `from` to `to` (created): files with their executable bit, folders, and
/// symbolic links as links.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    mirror(from, to, &|src, dst| std::fs::copy(src, dst).map(|_| ()))
}

/// Makes the folder `deps` hold exactly `layout` (`(output, deps/<category>/<name>)`, sorted
/// by origin), changing only what differs from what it holds: `deps` is a reused folder
/// (the engine reuses its `deps` folders from build to build), and consecutive builds' closures share most packages (those
/// thousands depend on). A build costs a folder made and removed per package that changed,
/// not per package of its closure: ext4 makes folders ever slower as more were deleted
/// recently, and a fresh layout per build made that the slowest part of a large build.
/// With `spares`, not even that: what leaves goes to the spares and what comes is taken from
/// them where they hold it ([`SpareDeps`]).
/// Anything else found in `deps` (a stray file) is removed.
pub fn lay_out_deps(
    deps: &Path,
    layout: &[(PathBuf, PathBuf)],
    spares: Option<&SpareDeps>,
) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(deps).map_err(|e| err(deps, e))?;
    let wanted: std::collections::HashSet<&Path> =
        layout.iter().map(|(_, l)| l.as_path()).collect();
    let mut present: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for category in std::fs::read_dir(deps).map_err(|e| err(deps, e))? {
        let category = category.map_err(|e| err(deps, e))?;
        let cpath = category.path();
        if !category.file_type().map_err(|e| err(&cpath, e))?.is_dir() {
            std::fs::remove_file(&cpath).map_err(|e| err(&cpath, e))?;
            continue;
        }
        let mut kept = 0usize;
        for entry in std::fs::read_dir(&cpath).map_err(|e| err(&cpath, e))? {
            let entry = entry.map_err(|e| err(&cpath, e))?;
            let path = entry.path();
            if wanted.contains(path.as_path()) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                present.insert(path);
                kept += 1;
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let origin = path.strip_prefix(deps).unwrap_or(&path).to_owned();
                if spares.is_none_or(|s| !s.keep(Some(origin), &path)) {
                    std::fs::remove_dir_all(&path).map_err(|e| err(&path, e))?;
                }
            } else {
                std::fs::remove_file(&path).map_err(|e| err(&path, e))?;
            }
        }
        if kept == 0 && spares.is_none_or(|s| !s.keep(None, &cpath)) {
            std::fs::remove_dir(&cpath).map_err(|e| err(&cpath, e))?;
        }
    }
    let missing: Vec<(PathBuf, PathBuf)> = layout
        .iter()
        .filter(|(_, link)| !present.contains(link))
        .cloned()
        .collect();
    link_deps(deps, &missing, spares)
}

/// Adds `layout` (`(output, deps/<category>/<name>)`) to the `$KILN_DEPS` folder `deps` that
/// [`lay_out_deps`] made without them (the dependencies a build started ahead waited for),
/// from `spares` where they hold them.
pub fn link_deps(
    deps: &Path,
    layout: &[(PathBuf, PathBuf)],
    spares: Option<&SpareDeps>,
) -> Result<(), String> {
    for (output, link) in layout {
        if let Some(spares) = spares {
            if let Ok(origin) = link.strip_prefix(deps)
                && spares.place(origin, link)
            {
                continue;
            }
            // Where this fails, `link_tree` makes the folders itself.
            let _ = spares.make_dir(link);
        }
        link_tree(output, link)?;
    }
    Ok(())
}

/// How many empty folders [`SpareDeps`] keeps at most: a build folder holding a large
/// source tree would otherwise leave a spare per folder of it.
pub const MAX_EMPTY_SPARES: usize = 10_000;

/// Dependency folders taken out of reused `$KILN_DEPS` folders, kept whole for the next
/// `$KILN_DEPS` folder that needs the same dependency, and emptied folders (categories, a
/// finished build's folders: [`SpareDeps::recycle`]), made the next folder needed. Moving a
/// folder in is a rename; laying it out again made a folder, a new inode. On ext4 without a journal (these build machines' root file system) every new
/// inode is searched for past each inode deleted in the last 30 seconds (the kernel's
/// `recently_deleted`), so the folders made and removed for dependencies were most of
/// `kiln build`'s CPU there, and grew with every build.
///
/// One set serves the `$KILN_DEPS` folders of one session, in which an origin always lays
/// out the same output: a spare is known by its origin only. They wait in their own folder,
/// on the same file system as the `$KILN_DEPS` folders, until the session's work area goes.
pub struct SpareDeps {
    dir: PathBuf,
    inner: std::sync::Mutex<Spares>,
}

#[derive(Default)]
struct Spares {
    by_origin: std::collections::HashMap<PathBuf, Vec<PathBuf>>,
    empty: Vec<PathBuf>,
    named: u64,
    /// [`SpareDeps::close`]d: nothing is kept any more.
    closed: bool,
}

impl SpareDeps {
    /// Spares kept in `dir` (made when the first is kept).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            inner: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the folder `path` in: the dependency `origin`'s, or an emptied folder (`None`). Whether it moved (if not, the caller removes it).
    fn keep(&self, origin: Option<PathBuf>, path: &Path) -> bool {
        let name = {
            let mut inner = self.lock();
            if inner.closed {
                return false;
            }
            inner.named += 1;
            self.dir.join(inner.named.to_string())
        };
        let moved = std::fs::rename(path, &name).or_else(|e| {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
            std::fs::create_dir_all(&self.dir)?;
            std::fs::rename(path, &name)
        });
        if moved.is_err() {
            return false;
        }
        let mut inner = self.lock();
        match origin {
            Some(origin) => inner.by_origin.entry(origin).or_default().push(name),
            None => inner.empty.push(name),
        }
        true
    }

    /// Moves a spare of the dependency `origin` to `link` (its category folder made by
    /// [`SpareDeps::make_dir`] when missing). Whether one was there to move.
    fn place(&self, origin: &Path, link: &Path) -> bool {
        let Some(spare) = self.lock().by_origin.get_mut(origin).and_then(Vec::pop) else {
            return false;
        };
        let category = link.parent().unwrap_or(link);
        if self.make_dir(category).is_ok() && std::fs::rename(&spare, link).is_ok() {
            return true;
        }
        let _ = std::fs::remove_dir_all(&spare);
        false
    }

    /// Makes the folder `path` and its missing parents, from the empty spares while there
    /// are some: a dependency's folder and its category, a package's build folder, its
    /// scratch copy's root, its `$KILN_OUT`.
    pub fn make_dir(&self, path: &Path) -> std::io::Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.make_dir(parent)?;
        }
        if let Some(empty) = self.lock().empty.pop()
            && std::fs::rename(&empty, path).is_ok()
        {
            return Ok(());
        }
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            made => made,
        }
    }

    /// Keeps nothing from now on (the folders offered are left to their callers to remove)
    /// and moves the spares' folder aside: the path to remove it from, if there was one.
    /// For when no more folders will be laid out, so that the spares can go beside the
    /// last builds rather than after them.
    pub fn close(&self) -> std::io::Result<Option<PathBuf>> {
        {
            let mut inner = self.lock();
            inner.closed = true;
            inner.by_origin.clear();
            inner.empty.clear();
        }
        let mut gone = self.dir.clone().into_os_string();
        gone.push(".closed");
        let gone = PathBuf::from(gone);
        match std::fs::rename(&self.dir, &gone) {
            Ok(()) => Ok(Some(gone)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the folder `dir` as `remove_dir_all` would, except that it and the folders in
    /// it become empty spares (up to [`MAX_EMPTY_SPARES`]): only their files go.
    pub fn recycle(&self, dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                self.recycle(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        if self.lock().empty.len() >= MAX_EMPTY_SPARES || !self.keep(None, dir) {
            std::fs::remove_dir(dir)?;
        }
        Ok(())
    }
}

/// Lays out `from` at `to` (created) with hard links to its files (copies where the file
/// system cannot link): a dependency's output costs a link per file per dependent instead of
/// its bytes. On failure nothing is left at `to`: a reused `$KILN_DEPS` folder keeps the
/// dependency folders it finds, so a half-made one would be taken for whole by a later build.
fn link_tree(from: &Path, to: &Path) -> Result<(), String> {
    mirror(from, to, &|src, dst| {
        std::fs::hard_link(src, dst).or_else(|_| std::fs::copy(src, dst).map(|_| ()))
    })
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(to);
    })
}

fn mirror(
    from: &Path,
    to: &Path,
    file: &dyn Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<(), String> {
    let fail = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
    std::fs::create_dir_all(to).map_err(|e| fail(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| fail(from, e))? {
        let entry = entry.map_err(|e| fail(from, e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry.file_type().map_err(|e| fail(&src, e))?;
        if ty.is_dir() {
            mirror(&src, &dst, file)?;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| fail(&src, e))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| fail(&dst, e))?;
        } else if ty.is_file() {
            file(&src, &dst).map_err(|e| fail(&dst, e))?;
        } else {
            return Err(format!(
                "{}: not a file, folder or symbolic link",
                src.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Every file under `dir`, relative, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_reused_deps_folder_is_made_to_hold_exactly_the_new_closure() {
        let root = tempfile::tempdir().unwrap();
        let outputs = root.path().join("outputs");
        for origin in ["a/one", "a/two", "b/three"] {
            write(&outputs.join(origin).join("lib/file"), origin);
        }
        let deps = root.path().join("deps");
        let layout = |origins: &[&str]| -> Vec<(PathBuf, PathBuf)> {
            origins
                .iter()
                .map(|o| (outputs.join(o), deps.join(o)))
                .collect()
        };
        lay_out_deps(&deps, &layout(&["a/one", "b/three"]), None).unwrap();
        assert_eq!(files(&deps), ["a/one/lib/file", "b/three/lib/file"]);

        // A stray file at each level, and an origin no longer wanted: all go; the kept one
        // is not remade (a marker inside it survives).
        write(&deps.join("stray"), "x");
        write(&deps.join("a/stray"), "x");
        write(&deps.join("a/one/marker"), "kept");
        lay_out_deps(&deps, &layout(&["a/one", "a/two"]), None).unwrap();
        assert_eq!(
            files(&deps),
            ["a/one/lib/file", "a/one/marker", "a/two/lib/file"]
        );
        assert!(!deps.join("b").exists(), "an emptied category goes");
        assert_eq!(
            std::fs::read_to_string(deps.join("a/two/lib/file")).unwrap(),
            "a/two"
        );

        lay_out_deps(&deps, &[], None).unwrap();
        assert_eq!(files(&deps), Vec::<String>::new());
    }

    /// What one `$KILN_DEPS` folder sheds, another takes whole: the same folder (its inode),
    /// moved, not made again; its category folder is a spare one too.
    #[test]
    fn a_shed_dependency_folder_is_moved_to_the_next_folder_that_needs_it() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let outputs = root.path().join("outputs");
        for origin in ["a/one", "b/two", "c/three"] {
            write(&outputs.join(origin).join("lib/file"), origin);
        }
        let spares = SpareDeps::new(root.path().join("spares"));
        let (first, second) = (root.path().join("deps/0"), root.path().join("deps/1"));
        let layout = |deps: &Path, origins: &[&str]| -> Vec<(PathBuf, PathBuf)> {
            origins
                .iter()
                .map(|o| (outputs.join(o), deps.join(o)))
                .collect()
        };
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        lay_out_deps(&first, &layout(&first, &["a/one", "b/two"]), Some(&spares)).unwrap();
        let (one, category_a) = (ino(&first.join("a/one")), ino(&first.join("a")));
        let category_b = ino(&first.join("b"));
        // `first` sheds a/one and its emptied category a; b/two stays.
        lay_out_deps(
            &first,
            &layout(&first, &["b/two", "c/three"]),
            Some(&spares),
        )
        .unwrap();
        assert_eq!(files(&first), ["b/two/lib/file", "c/three/lib/file"]);
        assert_eq!(
            ino(&first.join("b")),
            category_b,
            "a kept folder is not remade"
        );
        assert_eq!(
            ino(&first.join("c")),
            category_a,
            "the emptied category folder made the new one"
        );
        // `second` takes a/one as it was: the same folder.
        lay_out_deps(&second, &layout(&second, &["a/one"]), Some(&spares)).unwrap();
        assert_eq!(files(&second), ["a/one/lib/file"]);
        assert_eq!(ino(&second.join("a/one")), one, "moved, not laid out again");
        let second_a = ino(&second.join("a"));
        assert_eq!(
            std::fs::read_to_string(second.join("a/one/lib/file")).unwrap(),
            "a/one"
        );
        // A second taker finds no spare left and lays it out as before; so does a pre-started
        // build's late dependency.
        let third = root.path().join("deps/2");
        lay_out_deps(&third, &layout(&third, &["a/one"]), Some(&spares)).unwrap();
        assert_eq!(files(&third), ["a/one/lib/file"]);
        assert_ne!(ino(&third.join("a/one")), one);
        // What has no spare of its own is laid out in spare empty folders: `second` sheds
        // a/one and its category; b/two's category in `third` is that category folder.
        lay_out_deps(&second, &[], Some(&spares)).unwrap();
        link_deps(
            &third,
            &layout(&third, &["b/two", "a/one"])[..1],
            Some(&spares),
        )
        .unwrap();
        assert_eq!(files(&third), ["a/one/lib/file", "b/two/lib/file"]);
        assert_eq!(ino(&third.join("b")), second_a);
        assert_eq!(files(&second), Vec::<String>::new());
    }

    /// A finished build's folder goes as `remove_dir_all` would, its folders kept as spares
    /// that make the next build's folders.
    #[test]
    fn a_recycled_build_folder_makes_the_next_builds_folders() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let spares = SpareDeps::new(root.path().join("spares"));
        let done = root.path().join("work/a/one");
        write(&done.join("src/files/patch.diff"), "x");
        write(&done.join("src/Makefile"), "x");
        std::os::unix::fs::symlink("/etc", done.join("src/link")).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let mut made: Vec<u64> = [&done, &done.join("src"), &done.join("src/files")]
            .iter()
            .map(|p| ino(p))
            .collect();
        spares.recycle(&done).unwrap();
        assert!(!done.exists());
        assert!(
            root.path().join("work/a").is_dir(),
            "only the folder itself goes"
        );

        let next = root.path().join("work/b/two");
        spares.make_dir(&next.join("src")).unwrap();
        spares.make_dir(&next.join("out")).unwrap();
        let mut reused: Vec<u64> = [&next, &next.join("src"), &next.join("out")]
            .iter()
            .map(|p| ino(p))
            .collect();
        assert!(files(&next).is_empty());
        // `work/b` was made from a spare too, so one of the three is new.
        reused.push(ino(&root.path().join("work/b")));
        made.sort_unstable();
        reused.sort_unstable();
        assert!(
            made.iter().all(|i| reused.contains(i)),
            "{made:?} {reused:?}"
        );
        // An existing folder is left as it is.
        spares.make_dir(&next.join("src")).unwrap();
    }

    /// Closed spares move their folder aside whole and keep nothing more: a build folder
    /// recycled afterwards is removed, and folders are made new.
    #[test]
    fn closed_spares_are_moved_aside_and_keep_nothing_more() {
        let root = tempfile::tempdir().unwrap();
        let spares = SpareDeps::new(root.path().join("spares"));
        let done = root.path().join("work/a/one");
        write(&done.join("src/Makefile"), "x");
        spares.recycle(&done).unwrap();
        let aside = spares.close().unwrap().expect("the spares had a folder");
        assert!(!root.path().join("spares").exists());
        assert_eq!(std::fs::read_dir(&aside).unwrap().count(), 2, "one, src");

        let later = root.path().join("work/b/two");
        write(&later.join("out/lib.a"), "x");
        spares.recycle(&later).unwrap();
        assert!(!later.exists());
        assert!(!root.path().join("spares").exists(), "nothing kept");
        spares.make_dir(&root.path().join("work/c/three")).unwrap();
        assert!(root.path().join("work/c/three").is_dir());
        assert_eq!(spares.close().unwrap(), None, "nothing left to move aside");
    }

    /// A dependency folder that could not be laid out whole is not left behind, for a later
    /// build of the same folder to take as done.
    #[test]
    fn a_failed_layout_leaves_no_half_made_dependency_folder() {
        let root = tempfile::tempdir().unwrap();
        let outputs = root.path().join("outputs");
        write(&outputs.join("a/one/lib/file"), "a/one");
        let deps = root.path().join("deps");
        let missing = vec![(outputs.join("a/gone"), deps.join("a/one"))];
        let e = lay_out_deps(&deps, &missing, None).unwrap_err();
        assert!(e.contains("a/gone"), "{e}");
        assert!(!deps.join("a/one").exists());
        let e = link_deps(&deps, &missing, None).unwrap_err();
        assert!(e.contains("a/gone"), "{e}");
        assert!(!deps.join("a/one").exists());
        lay_out_deps(&deps, &[(outputs.join("a/one"), deps.join("a/one"))], None).unwrap();
        assert_eq!(files(&deps), ["a/one/lib/file"]);
    }

    /// A package folder with its `out`, for phases that write `marker` into `$KILN_OUT`.
    struct Gated {
        _root: tempfile::TempDir,
        src: PathBuf,
        out: PathBuf,
        env: Vec<(OsString, OsString)>,
    }

    fn gated_package() -> Gated {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        let out = root.path().join("out");
        let deps = root.path().join("deps");
        for d in [&src, &out, &deps] {
            std::fs::create_dir_all(d).unwrap();
        }
        let env = build_env(&src, &out, &deps, "a/one", "1.0", &[]);
        Gated {
            _root: root,
            src,
            out,
            env,
        }
    }

    async fn phases_after(
        sandbox: &Sandbox,
        g: &Gated,
        turn: Turn<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let mut log = BuildLog::default();
        gated_build(
            sandbox,
            g,
            "touch \"$KILN_OUT/marker\"",
            &mut log,
            turn,
            cancel,
        )
        .await
    }

    async fn gated_build(
        sandbox: &Sandbox,
        g: &Gated,
        build: &str,
        log: &mut BuildLog,
        turn: Turn<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let phases = Phases {
            fetch: None,
            distfiles: &[],
            build,
            src: &g.src,
            out: &g.out,
            base: Confinement::new(&g.src),
            env: &g.env,
            sandbox,
            limits: Limits::default(),
            fetch_network: FetchNetwork::Host,
        };
        run_phases_after(&phases, log, cancel, Some(turn)).await
    }

    /// Both ways a build waits for its turn: unconfined (its shell started) and sandboxed
    /// (the sandbox made too), the script held at the gate.
    #[expect(
        clippy::print_stderr,
        reason = "say why the sandboxed case was not checked"
    )]
    fn sandboxes() -> Vec<Sandbox> {
        let mut all = vec![Sandbox::off()];
        match Sandbox::detect(crate::SandboxMode::Require) {
            Ok(s) => all.push(s),
            Err(e) => eprintln!("sandboxed case skipped: bubblewrap cannot run here: {e}"),
        }
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_runs_its_commands_only_when_its_turn_comes() {
        for sandbox in sandboxes() {
            let g = gated_package();
            let (open, opened) = tokio::sync::oneshot::channel::<()>();
            let turn: Turn<'_> = Box::pin(async move {
                let _ = opened.await;
                Ok(())
            });
            let cancel = CancellationToken::new();
            let marker = g.out.join("marker");
            let watch = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(
                    !marker.exists(),
                    "{:?}: the command ran before its turn",
                    sandbox.mode()
                );
                open.send(()).unwrap();
            };
            let (ran, ()) = tokio::join!(phases_after(&sandbox, &g, turn, &cancel), watch);
            ran.unwrap_or_else(|e| panic!("{:?}: {e:?}", sandbox.mode()));
            assert!(
                marker.exists(),
                "{:?}: the command ran once let in",
                sandbox.mode()
            );
        }
    }

    /// Whatever was made ahead is gone without having run the command (it would have
    /// written `marker`).
    async fn never_ran(sandbox: &Sandbox, g: &Gated) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!g.out.join("marker").exists(), "{:?}", sandbox.mode());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_cancelled_while_it_waits_for_its_turn_never_runs() {
        for sandbox in sandboxes() {
            let g = gated_package();
            let turn: Turn<'_> = Box::pin(std::future::pending());
            let cancel = CancellationToken::new();
            let stop = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                cancel.cancel();
            };
            let (ran, ()) = tokio::join!(phases_after(&sandbox, &g, turn, &cancel), stop);
            assert!(
                matches!(ran, Err(Stop::Cancelled)),
                "{:?}: {ran:?}",
                sandbox.mode()
            );
            never_ran(&sandbox, &g).await;
        }
    }

    /// What the turn waited for failed (a dependency's output could not be laid out): the
    /// build fails with that reason, and its command never ran.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turn_that_fails_fails_the_build_before_its_command_runs() {
        for sandbox in sandboxes() {
            let g = gated_package();
            let turn: Turn<'_> = Box::pin(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err("kiln could not lay out $KILN_DEPS: disk full".to_owned())
            });
            let cancel = CancellationToken::new();
            let ran = phases_after(&sandbox, &g, turn, &cancel).await;
            assert!(
                matches!(&ran, Err(Stop::Failed(why)) if why == "kiln could not lay out $KILN_DEPS: disk full"),
                "{:?}: {ran:?}",
                sandbox.mode()
            );
            never_ran(&sandbox, &g).await;
        }
    }

    /// The gate is a line put before the script: the script still sees its own line numbers
    /// and no descriptor of the gate's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gated_script_keeps_its_line_numbers_and_sees_no_gate() {
        for sandbox in sandboxes() {
            let g = gated_package();
            let mut log = BuildLog::default();
            let cancel = CancellationToken::new();
            let ran = gated_build(
                &sandbox,
                &g,
                "if read -r line; then echo read \"$line\"; exit 9; fi\nkiln_no_such_command_here",
                &mut log,
                Box::pin(async { Ok(()) }),
                &cancel,
            )
            .await;
            let text = String::from_utf8_lossy(log.data()).into_owned();
            assert!(
                matches!(&ran, Err(Stop::Failed(why)) if why.contains("status 127")),
                "{:?}: {ran:?}\n{text}",
                sandbox.mode()
            );
            assert!(
                text.contains("2: kiln_no_such_command_here"),
                "{:?}: {text}",
                sandbox.mode()
            );
        }
    }
}
