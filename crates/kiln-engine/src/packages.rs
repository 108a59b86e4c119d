//! The package builder behind `kiln build` (DESIGN.md "Package trees"): plan a tree — load
//! and validate it, key every selected package, ask the store which keys are built already —
//! then build what is left on N slots, highest remaining critical path first, recording every
//! package's build in the store's history.
//!
//! The decisions are kiln-core's ([`kiln_core::packages`]: validation, keys, the ready queue
//! [`Schedule`]); this module is the loop around them that does I/O. One dispatcher (the body
//! of [`build`]) owns the schedule and the rows waiting to be recorded; each running package
//! is one task (`execute`) that owns its folders and its processes and returns how it ended.
//!
//! A package's build, in its own folder under the session's work area
//! (`<data dir>/work/packages/<session>/<category>/<name>/`):
//! - `src/`: a copy of the package's folder (the tree itself is never written to), where both
//!   phases run;
//! - `out/`: `$KILN_OUT`, empty at the start; on success packed into the blob store
//!   ([`Store::store_package_output`]) and kept for this session's dependents;
//! - `$KILN_DEPS`: one of the session's `deps/<n>/` folders (reused from build to build, only
//!   what differs changed: [`lay_out_deps`]; a dependency's folder one of them sheds waits in
//!   `spare-deps/` and is moved whole to the next that needs it: [`SpareDeps`]) holding
//!   `<origin>/` for each package of its
//!   `$KILN_DEPS` closure, hard-linked from the session's `outputs/` (a dependency built now,
//!   or a cached one restored from the blob store once per session, when a dependent first
//!   needs it).
//!
//! Phases run under the [`Sandbox`]: `fetch` with the network, then every `distfiles` entry is
//! checked against its SHA-256, then `build` without the network; `src/` (and in `build`,
//! `out/`) writable, `deps/` and the tree read-only, kiln's data folder hidden. Commands run as
//! `sh -ec COMMAND` with a fixed environment ([`BUILD_PATH`], `HOME` = `src/`, the four
//! `KILN_*` variables and the toolchain's variables): whatever a build sees of kiln's
//! environment is in its key.
//!
//! Not here: validation rules and keys (kiln-core), SQL and blobs (kiln-store), spawning and
//! killing processes (kiln-exec), printing (kiln-cli).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kiln_core::packages::{
    DepsWalker, Key, KeyErrors, Keys, Outcome, PackageId, Schedule, Selection, State, Tree,
    TreeErrors, UnknownOrigins, compute_keys, toolchain_fingerprint,
};
use kiln_exec::Confinement;
use kiln_exec::package::{
    BuildLog, FetchNetwork, Phases, SpareDeps, Stop, blocking, build_env, copy_tree, lay_out_deps,
    link_deps, machine_facts,
};
/// The sandbox and process limits a build is configured with (in [`BuildOptions`]).
pub use kiln_exec::{Limits, Sandbox, SandboxError, SandboxMode};
pub use workflow::{PackagePreview, PackageSet, WorkflowPackages, plan_workflow, preview_workflow};

mod slots;
mod workflow;
use kiln_store::packages::log_tail;
use kiln_store::{
    BuildCounts, BuildSessionId, CachedBuild, ContentBlob, PackageBuild, PackageBuildId,
    PackageBuildStatus, Store, StoreError,
};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use kiln_exec::package::BUILD_PATH;

/// How many packages beyond the slots `kiln build` prepares ahead (folder copied, `$KILN_DEPS`
/// laid out) while the slots are busy. More would let low-priority packages queue for a
/// slot ahead of critical ones that become ready meanwhile (measured: 2 or 4 ahead made the
/// 8-slot makespan benchmark 6% and 16% longer, 1 ahead 2% shorter than none).
///
/// Counted among the packages that have not yet given back their slot: one whose commands
/// have ended is storing its output and log, and must not hold up the preparation of the
/// next (counting it left a slot idle whenever two builds ended within a few milliseconds).
const PREPARED_AHEAD: usize = 1;

/// Rows waiting to be recorded are written when this many have gathered…
const FLUSH_ROWS: usize = 1000;
/// …or when the oldest has waited this long: history stays current during a long build
/// without a commit per package.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The log tail kept with each build for summaries.
pub(crate) const TAIL_LINES: usize = 30;
pub(crate) const TAIL_BYTES: usize = 8 * 1024;

/// Why a plan or a build could not be made. Messages read after "failed to …" where they are
/// kiln's own trouble; user errors ([`BuildError::is_user_error`]) name the file, package or
/// origin at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The tree is invalid (malformed manifests, unknown dependencies, cycles): nothing built.
    #[error("{0}")]
    Invalid(TreeErrors),
    /// Origins asked for that the tree does not have: nothing built.
    #[error("{0}")]
    UnknownOrigins(UnknownOrigins),
    /// A package folder that cannot be hashed (unreadable, or holding a socket or FIFO).
    #[error("{0}")]
    Unhashable(KeyErrors),
    /// The request itself is unusable (zero slots, …).
    #[error("{0}")]
    Usage(String),
    #[error("failed to use the store: {0}")]
    Store(#[from] StoreError),
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// Whether the error is the user's input (exit 2) rather than kiln's (exit 3).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::Invalid(_) | Self::UnknownOrigins(_) | Self::Unhashable(_) | Self::Usage(_)
        )
    }
}

/// The toolchain fingerprint's parts (part 5 of a key, [`kiln_core::packages`] key scheme)
/// and the variables builds get from kiln's environment.
///
/// What goes in: the operating system and architecture kiln was built for; the `sh` that runs
/// every command, as the SHA-256 of its binary (dash has no `--version`; the digest catches
/// any upgrade); the value of `KILN_TOOLCHAIN` (a free label: bump it to rebuild everything,
/// e.g. after a compiler upgrade kiln cannot see); and each configured variable's value. The
/// configured variables (`CC`, `CFLAGS`, …) are also passed to builds, so what a build reads
/// from kiln's environment is always in its key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Toolchain {
    /// Named facts, in any order ([`toolchain_fingerprint`] sorts them).
    pub facts: Vec<(String, String)>,
    /// Variables passed to every build.
    pub env: Vec<(String, String)>,
}

impl Toolchain {
    /// The facts of this machine: `label` is `KILN_TOOLCHAIN`'s value; `env` the names of the
    /// variables to pass and key, read from kiln's own environment (unset ones are keyed as
    /// unset and not passed). Reads the `sh` binary found on [`BUILD_PATH`] (or on kiln's
    /// `PATH` when `PATH` is configured).
    pub fn detect(label: Option<&str>, env: &[String]) -> Self {
        let mut facts = vec![(
            "KILN_TOOLCHAIN".to_owned(),
            label.unwrap_or_default().to_owned(),
        )];
        let mut passed = Vec::new();
        for name in env {
            match std::env::var(name) {
                Ok(value) => {
                    facts.push((format!("env:{name}"), value.clone()));
                    passed.push((name.clone(), value));
                }
                Err(_) => facts.push((format!("env:{name}"), "(unset)".to_owned())),
            }
        }
        let path = passed
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(BUILD_PATH, |(_, v)| v.as_str());
        facts.extend(machine_facts(path));
        Self { facts, env: passed }
    }

    /// The facts a machine building for this one must share (see
    /// [`kiln_exec::package::machine_facts`]).
    pub fn machine(&self) -> Vec<(String, String)> {
        self.facts
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "os" | "arch" | "sh"))
            .cloned()
            .collect()
    }

    fn fingerprint(&self) -> Vec<u8> {
        toolchain_fingerprint(self.facts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// What a build is asked to do.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The tree's folder.
    pub tree: PathBuf,
    /// The origins asked for (with everything they need); empty: the whole tree.
    pub origins: Vec<String>,
    /// How many packages build at once.
    pub slots: usize,
    /// kiln's data folder: the work area is under it, and builds never see the rest of it.
    pub data_dir: PathBuf,
    /// Detected once by the caller ([`Sandbox::detect`]).
    pub sandbox: Sandbox,
    pub toolchain: Toolchain,
    /// How a cancelled build's processes are ended.
    pub limits: Limits,
    /// The `fetch` phase's way out when sandboxed: only through the egress proxy, which
    /// checks this policy. `None`: the phase has the host's network (the policy is not
    /// enforced), as it has anyway when builds are not sandboxed.
    pub fetch_egress: Option<FetchEgress>,
}

/// How a sandboxed `fetch` phase reaches the network: the policy its egress proxy checks,
/// and the `kiln` binary whose relay carries the phase's connections to it
/// (`kiln_exec::relay`).
#[derive(Clone, Debug)]
pub struct FetchEgress {
    pub policy: crate::egress::EgressPolicy,
    /// A `kiln` executable (the running one: `std::env::current_exe()`).
    pub relay: PathBuf,
}

impl BuildOptions {
    /// Options with the defaults for everything but where the tree and the data are: all
    /// packages, one slot per core, no sandbox, this machine's toolchain without extras.
    pub fn new(tree: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            tree: tree.into(),
            origins: Vec::new(),
            slots: std::thread::available_parallelism().map_or(2, |n| n.get()),
            data_dir: data_dir.into(),
            sandbox: Sandbox::off(),
            toolchain: Toolchain::detect(None, &[]),
            limits: Limits::default(),
            fetch_egress: None,
        }
    }
}

/// A planned build: the valid tree, what is selected, every selected package's key and the
/// stored build each cached one reuses.
pub struct BuildPlan {
    tree: Arc<Tree>,
    root: PathBuf,
    selection: Selection,
    keys: Keys,
    cached: HashMap<PackageId, CachedBuild>,
}

/// One package of a plan, for printing.
#[derive(Clone, Copy, Debug)]
pub struct PlannedPackage<'a> {
    pub origin: &'a str,
    pub version: &'a str,
    pub key: Key,
    /// The stored successful build with the same key; `None`: it will be built.
    pub cached: Option<&'a CachedBuild>,
}

impl BuildPlan {
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// How many packages are selected.
    pub fn total(&self) -> usize {
        self.selection.len()
    }

    /// How many will be built (not cached).
    pub fn to_build(&self) -> usize {
        self.total() - self.cached.len()
    }

    /// How many have a stored build with their key.
    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    /// Every selected package, in origin order.
    pub fn packages(&self) -> impl ExactSizeIterator<Item = PlannedPackage<'_>> + '_ {
        self.selection.ids().iter().map(|&p| self.planned(p))
    }

    fn planned(&self, p: PackageId) -> PlannedPackage<'_> {
        PlannedPackage {
            origin: self.tree.origin(p),
            version: &self.tree.package(p).version,
            key: self.key(p),
            cached: self.cached.get(&p),
        }
    }

    fn key(&self, p: PackageId) -> Key {
        *self.keys.get(p).expect("every selected package is keyed")
    }

    /// The history row of a package that did not build in `session` (skipped, cancelled,
    /// cached): no duration, log or output.
    fn unbuilt_row(
        &self,
        session: BuildSessionId,
        p: PackageId,
        status: PackageBuildStatus,
        reason: Option<String>,
    ) -> PackageBuild {
        let now = Timestamp::now();
        PackageBuild {
            id: PackageBuildId::new(),
            session,
            origin: self.tree.origin(p).to_owned(),
            version: self.tree.package(p).version.clone(),
            key: self.key(p).to_hex(),
            status,
            reason,
            started_at: now,
            finished_at: now,
            duration: Duration::ZERO,
            log: None,
            log_tail: String::new(),
            output: None,
        }
    }

    /// The `cached` row of `p` in `session`, naming the build it reuses, with that build's
    /// output; `None` when `p` is not cached.
    fn cached_row(&self, session: BuildSessionId, p: PackageId) -> Option<PackageBuild> {
        let c = self.cached.get(&p)?;
        let mut row = self.unbuilt_row(
            session,
            p,
            PackageBuildStatus::Cached,
            Some(format!(
                "same key as build {} of {}",
                c.id,
                c.finished_at.strftime("%Y-%m-%d %H:%M:%SZ")
            )),
        );
        row.output = Some(c.output.clone());
        Some(row)
    }
}

/// A validated, selected and keyed tree, before the store is asked which keys are built
/// ([`Prepared::lookup`]). Split from [`plan`] so that a caller can refuse an invalid tree
/// before it opens (and so creates) a store.
pub struct Prepared {
    tree: Tree,
    root: PathBuf,
    selection: Selection,
    keys: Keys,
}

/// Loads and validates the tree, selects the asked origins with what they need and keys them.
/// Reads the tree only.
pub async fn prepare(opts: &BuildOptions) -> Result<Prepared, BuildError> {
    let root = opts.tree.clone();
    let origins = opts.origins.clone();
    let fingerprint = opts.toolchain.fingerprint();
    // Loading and hashing use every core themselves; off the async threads.
    tokio::task::spawn_blocking(move || {
        let tree = Tree::load(&root).map_err(BuildError::Invalid)?;
        let selection = if origins.is_empty() {
            tree.graph().select_all()
        } else {
            tree.select(&origins).map_err(BuildError::UnknownOrigins)?
        };
        let keys =
            compute_keys(&tree, &root, &selection, &fingerprint).map_err(BuildError::Unhashable)?;
        Ok(Prepared {
            tree,
            root,
            selection,
            keys,
        })
    })
    .await
    .map_err(|e| BuildError::Usage(format!("the planning task failed: {e}")))?
}

impl Prepared {
    /// Looks every selected key up in the store (one batched call): each package will be
    /// built, or is cached.
    pub async fn lookup(self, store: &Store) -> Result<BuildPlan, BuildError> {
        let hex: Vec<String> = self
            .selection
            .ids()
            .iter()
            .map(|&p| {
                self.keys
                    .get(p)
                    .expect("selected packages are keyed")
                    .to_hex()
            })
            .collect();
        let mut found = store.cached_builds(&hex).await?;
        let mut cached = HashMap::with_capacity(found.len());
        for (&p, key) in self.selection.ids().iter().zip(&hex) {
            if let Some(build) = found.remove(key) {
                cached.insert(p, build);
            }
        }
        Ok(BuildPlan {
            tree: Arc::new(self.tree),
            root: self.root,
            selection: self.selection,
            keys: self.keys,
            cached,
        })
    }
}

/// [`prepare`] then [`Prepared::lookup`]: the whole plan. Touches nothing but the store's
/// reads.
pub async fn plan(store: &Store, opts: &BuildOptions) -> Result<BuildPlan, BuildError> {
    prepare(opts).await?.lookup(store).await
}

/// What a build reports while it runs, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum BuildEvent {
    /// The session began.
    Began {
        session: BuildSessionId,
        total: usize,
        to_build: usize,
        cached: usize,
        slots: usize,
        /// The sum of the last durations of the packages to build that have one…
        expected_work: Duration,
        /// …and how many of them have one (for an ETA that extrapolates the rest).
        with_history: usize,
    },
    /// A package started building.
    Started {
        origin: String,
        /// Its last successful build's duration.
        expected: Option<Duration>,
    },
    /// A package ended: built, failed, cached, skipped (the reason names the failed
    /// dependency) or cancelled.
    Finished {
        origin: String,
        status: PackageBuildStatus,
        duration: Duration,
        reason: Option<String>,
    },
}

/// A failed package, for the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedPackage {
    pub origin: String,
    pub reason: Option<String>,
    pub log_tail: String,
    pub log: Option<ContentBlob>,
}

/// How a build went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildReport {
    pub session: BuildSessionId,
    pub counts: BuildCounts,
    /// Whether it was stopped by the cancel token.
    pub cancelled: bool,
    /// The failed packages, in the order they failed.
    pub failures: Vec<FailedPackage>,
    pub elapsed: Duration,
}

/// What the package tasks share: read-only but for the outputs, each filled once.
struct Shared {
    store: Store,
    tree: Arc<Tree>,
    root: PathBuf,
    work: PathBuf,
    data_dir: PathBuf,
    sandbox: Sandbox,
    fetch_egress: Option<FetchEgress>,
    env: Vec<(String, String)>,
    /// This machine's facts in the keys (a remote worker must share them).
    machine: Vec<(String, String)>,
    limits: Limits,
    /// Per package: the folder holding its output in this session, filled when it is built
    /// or, for a cached one, restored the first time a dependent needs it.
    outputs: Vec<OnceCell<PathBuf>>,
    /// Per package: the output blob of its cached build.
    cached_output: Vec<Option<String>>,
    /// Per package: the output blob of its build in this session, here or on a remote
    /// worker.
    built_output: Vec<std::sync::OnceLock<String>>,
    /// Held while a package's commands run (`kiln build`'s slots): its folder is prepared
    /// before and its output stored after, so a slot never waits for kiln's own file work.
    /// `None` where the caller bounds whole builds itself (a workflow's package jobs).
    slots: Option<Arc<slots::Slots>>,
    /// Where `Started` is reported, once a package holds a slot.
    progress: Option<mpsc::UnboundedSender<BuildEvent>>,
    /// Where a package is reported once it holds a slot, and once its commands have ended
    /// and the slot is free again (`kiln build` prepares the next one then:
    /// [`PREPARED_AHEAD`]).
    slot_events: Option<mpsc::UnboundedSender<(PackageId, SlotEvent)>>,
    /// `$KILN_DEPS` folders not in use, each left as its last build laid it out.
    deps_pool: std::sync::Mutex<Vec<DepsDir>>,
    /// What those folders shed, for the next that needs it ([`SpareDeps`]).
    spare_deps: Arc<SpareDeps>,
    deps_made: std::sync::atomic::AtomicUsize,
    /// Packages of `kiln build` not started yet (`usize::MAX` where the caller does not
    /// count them): once the free `$KILN_DEPS` folders outnumber them, a folder given back
    /// is removed at once, beside the last builds, instead of when they are all over.
    unstarted: std::sync::atomic::AtomicUsize,
    /// Those removals, awaited before the work area goes.
    clearing: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// `kiln build`'s packages started whose `$KILN_DEPS` is not laid out in full yet
    /// ([`LayoutTicket`]). Once none is, and none is left to start, nothing reads the kept
    /// outputs or the spares again: they are removed beside the last builds
    /// ([`Shared::layouts_over`]) instead of after them, when the work area goes.
    laying_out: std::sync::atomic::AtomicUsize,
    /// Set once they are being removed: an output built since is not kept.
    layouts_over: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// A `$KILN_DEPS` folder for a build whose closure is `closure` (sorted): of the free
    /// ones, the one whose last layout differs least from it (the fewest folders to make
    /// and remove), or a new path under the work area. Give it back with
    /// [`Shared::give_back_deps`].
    fn take_deps(&self, closure: &[PackageId]) -> DepsDir {
        let mut pool = self.deps_pool.lock().expect("pool lock");
        let best = pool
            .iter()
            .enumerate()
            .min_by_key(|(_, d)| sorted_difference(&d.laid_out, closure))
            .map(|(i, _)| i);
        if let Some(i) = best {
            return pool.swap_remove(i);
        }
        let n = self
            .deps_made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        DepsDir {
            path: self.work.join("deps").join(n.to_string()),
            laid_out: Vec::new(),
        }
    }

    /// The digest of `p`'s output: its cached build's, or its build's in this session.
    fn output_digest(&self, p: PackageId) -> Option<&str> {
        self.cached_output[p.index()]
            .as_deref()
            .or_else(|| self.built_output[p.index()].get().map(String::as_str))
    }

    fn give_back_deps(&self, deps: DepsDir) {
        let mut pool = self.deps_pool.lock().expect("pool lock");
        if pool.len() < self.unstarted.load(std::sync::atomic::Ordering::Relaxed) {
            pool.push(deps);
            return;
        }
        drop(pool);
        self.remove_beside(deps.path, "a $KILN_DEPS folder");
    }

    /// Removes the folder `path` (`what`, for a warning) on the blocking pool, beside the
    /// builds going on; [`Shared::cleared`] waits for it.
    fn remove_beside(&self, path: PathBuf, what: &'static str) {
        self.beside(path, what, |p| std::fs::remove_dir_all(p));
    }

    /// Removes a package's build folder `dir` like [`Shared::remove_beside`], its folders
    /// kept as spares for the next builds' ([`SpareDeps::recycle`]; removed outright where
    /// that fails).
    fn recycle_beside(&self, dir: PathBuf) {
        let spares = self.spare_deps.clone();
        self.beside(dir, "a package's build folder", move |p| {
            spares.recycle(p).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Err(e),
                _ => std::fs::remove_dir_all(p),
            })
        });
    }

    fn beside(
        &self,
        path: PathBuf,
        what: &'static str,
        remove: impl FnOnce(&Path) -> std::io::Result<()> + Send + 'static,
    ) {
        let removed = tokio::task::spawn_blocking(move || {
            if let Err(e) = remove(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove {what}");
            }
        });
        self.clearing.lock().expect("clearing lock").push(removed);
    }

    /// One package's layout is whole (or will never be): once no package is left to lay
    /// out or to start, the kept outputs and the spares go.
    fn laid_out(&self) {
        use std::sync::atomic::Ordering;
        let _ = self
            .laying_out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.layouts_over_if_none_left();
    }

    /// [`Shared::layouts_over`] once no package is left to start or to lay out.
    fn layouts_over_if_none_left(&self) {
        use std::sync::atomic::Ordering;
        if self.unstarted.load(Ordering::Acquire) == 0
            && self.laying_out.load(Ordering::Acquire) == 0
        {
            self.layouts_over();
        }
    }

    /// Removes the kept outputs and the spare folders beside the builds still running, once
    /// (see [`Shared::laying_out`]). Both are moved aside first, so that what a build still
    /// running puts back (an output it keeps, a folder it gives back) lands in a new folder,
    /// removed with the work area.
    fn layouts_over(&self) {
        if self
            .layouts_over
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let outputs = self.work.join("outputs");
        let aside = self.work.join("outputs.over");
        match std::fs::rename(&outputs, &aside) {
            Ok(()) => self.remove_beside(aside, "the kept outputs"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %outputs.display(), error = %e, "cannot move the kept outputs aside");
            }
        }
        match self.spare_deps.close() {
            Ok(Some(aside)) => self.remove_beside(aside, "the spare folders"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot move the spare folders aside"),
        }
    }

    /// Waits for the folders being removed (`$KILN_DEPS` folders, build folders).
    async fn cleared(&self) {
        let removals = std::mem::take(&mut *self.clearing.lock().expect("clearing lock"));
        for removal in removals {
            let _ = removal.await;
        }
    }
}

/// A reusable `$KILN_DEPS` folder and the closure its last build laid out (sorted; a guess
/// for choosing among folders: [`lay_out_deps`] checks what is really there).
struct DepsDir {
    path: PathBuf,
    laid_out: Vec<PackageId>,
}

/// How many elements are in one of the sorted lists `a` and `b` but not the other.
fn sorted_difference<T: Ord>(a: &[T], b: &[T]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                n += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                n += 1;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    n + (a.len() - i) + (b.len() - j)
}

/// One package to build.
struct Job {
    id: PackageId,
    key: String,
    deps: Vec<PackageId>,
    /// Started ahead, while some of what it needs still runs
    /// ([`Schedule::pre_start_next`]): those of `deps` not built yet (sorted), and the signal
    /// that they are. Its folder is copied, its sandbox made and the rest of `$KILN_DEPS` laid
    /// out meanwhile; these are laid out when the signal comes, then it waits for a slot.
    pending: Option<Pending>,
    /// Its last successful build's duration (for the `Started` event).
    expected: Option<Duration>,
    /// Its remaining critical path: the order in which waiting packages get slots.
    priority: u64,
}

/// The dispatcher's handles on a pre-started package's task: the signal that what it needs
/// is built, and its own stop (it is skipped if one of them fails).
struct Early {
    /// Sent the moment they are: where its history's start is, until it takes a slot.
    built: tokio::sync::oneshot::Sender<(Timestamp, std::time::Instant)>,
    cancel: CancellationToken,
}

/// What a pre-started package waits for.
struct Pending {
    deps: Vec<PackageId>,
    built: tokio::sync::oneshot::Receiver<(Timestamp, std::time::Instant)>,
}

/// What [`Shared::slot_events`] reports of a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotEvent {
    Taken,
    Released,
}

/// How one package's task ended.
pub(crate) struct Done {
    pub(crate) id: PackageId,
    pub(crate) status: PackageBuildStatus,
    pub(crate) reason: Option<String>,
    pub(crate) started_at: Timestamp,
    pub(crate) finished_at: Timestamp,
    pub(crate) duration: Duration,
    pub(crate) log: Option<ContentBlob>,
    pub(crate) log_tail: String,
    pub(crate) output: Option<ContentBlob>,
}

/// Builds `plan`: every package not cached, `opts.slots` at a time, highest remaining
/// critical path first (weighted by each package's last successful duration, 1 ms when
/// unknown, 0 for cached ones). A failed package's dependents are skipped naming it, the rest
/// goes on. When `cancel` fires, running builds are ended (their process groups killed) and
/// recorded `cancelled` with everything not started. Every package gets a row in the store's
/// history — cached and skipped ones too — written in batches, and the session its counts.
///
/// An error means kiln itself failed (the store, the work area); running builds are ended
/// first.
pub async fn build(
    store: &Store,
    plan: BuildPlan,
    opts: &BuildOptions,
    progress: mpsc::UnboundedSender<BuildEvent>,
    cancel: CancellationToken,
) -> Result<BuildReport, BuildError> {
    if opts.slots == 0 {
        return Err(BuildError::Usage("at least one slot is needed".to_owned()));
    }
    let began = std::time::Instant::now();
    let (session, work, lock) = begin_session(store, &plan, opts).await?;
    let sessions = work.parent().unwrap_or(&work).to_owned();
    let stale = tokio::task::spawn_blocking(move || remove_stale_work_areas(&sessions));
    let result = dispatch(store, &plan, opts, session, &work, progress, cancel).await;
    if let Err(e) = tokio::fs::remove_dir_all(&work).await {
        tracing::warn!(path = %work.display(), error = %e, "cannot remove a build's work area");
    }
    drop(lock);
    let _ = stale.await;
    let (counts, cancelled, failures) = result?;
    store
        .finish_build_session(session, &counts, Timestamp::now())
        .await?;
    Ok(BuildReport {
        session,
        counts,
        cancelled,
        failures,
        elapsed: began.elapsed(),
    })
}

/// The file in a session's work area that the session holds locked while it lasts.
const WORK_LOCK: &str = ".lock";

/// Begins a build session for `plan` and makes its work area
/// (`<data dir>/work/packages/<session>`), with [`WORK_LOCK`] in it locked (the lock is
/// held as long as the returned file): [`remove_stale_work_areas`] tells a live session's
/// work area from one left behind by it. The area is made under a dot-name and renamed into
/// place once locked, so no other kiln ever sees it unlocked.
async fn begin_session(
    store: &Store,
    plan: &BuildPlan,
    opts: &BuildOptions,
) -> Result<(BuildSessionId, PathBuf, std::fs::File), BuildError> {
    let session = store
        .begin_build_session(
            &plan.root.display().to_string(),
            u32::try_from(opts.slots).unwrap_or(u32::MAX),
            Timestamp::now(),
        )
        .await?;
    let sessions = opts.data_dir.join("work").join("packages");
    let work = sessions.join(session.to_string());
    let making = sessions.join(format!(".new-{session}"));
    create_dir(&making).await?;
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Io {
            action,
            path,
            source,
        }
    };
    let lock_path = making.join(WORK_LOCK);
    let lock = std::fs::File::create(&lock_path).map_err(io("create the file", &lock_path))?;
    lock.try_lock()
        .map_err(std::io::Error::from)
        .map_err(io("lock the file", &lock_path))?;
    std::fs::rename(&making, &work).map_err(io("rename the folder", &making))?;
    Ok((session, work, lock))
}

/// Removes the work areas in `sessions` that no session holds ([`begin_session`]): a build
/// that ended without removing its own (kiln killed, the machine down) left its scratch
/// copies and outputs there, and nothing else would ever remove them. A live session's area
/// is locked and kept; so is one still being made (a dot-name without its lock file yet).
fn remove_stale_work_areas(sessions: &Path) {
    let Ok(entries) = std::fs::read_dir(sessions) else {
        return;
    };
    for entry in entries.flatten() {
        let area = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let being_made = entry.file_name().to_string_lossy().starts_with('.');
        let held = match std::fs::File::open(area.join(WORK_LOCK)) {
            // Locked by nobody: its session is over. The lock is held while it goes, so a
            // second kiln cleaning up too skips it.
            Ok(file) => match file.try_lock() {
                Ok(()) => Some(file),
                Err(_) => continue,
            },
            // A session of a kiln before work areas were locked, or one whose removal was
            // interrupted after its lock file went.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !being_made => None,
            Err(_) => continue,
        };
        match std::fs::remove_dir_all(&area) {
            Ok(()) => {
                tracing::info!(path = %area.display(), "removed a work area left by an earlier build")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %area.display(), error = %e, "cannot remove a work area left by an earlier build")
            }
        }
        drop(held);
    }
}

/// What building `plan` starts from: the last durations of the packages to build, every
/// package's critical-path priority (weighted by those durations, 1 ms when unknown, 0 for
/// cached ones), and the state its package tasks share.
struct Start {
    durations: HashMap<String, Duration>,
    priorities: Vec<u64>,
    shared: Arc<Shared>,
}

async fn start(
    store: &Store,
    plan: &BuildPlan,
    opts: &BuildOptions,
    work: &Path,
) -> Result<Start, BuildError> {
    let tree = &plan.tree;
    let to_build: Vec<String> = plan
        .selection
        .ids()
        .iter()
        .filter(|p| !plan.cached.contains_key(p))
        .map(|&p| tree.origin(p).to_owned())
        .collect();
    let durations = store.package_durations(&to_build).await?;
    let priorities = tree.graph().priorities(&plan.selection, |p| {
        if plan.cached.contains_key(&p) {
            0
        } else {
            durations.get(tree.origin(p)).map_or(1, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
            })
        }
    });
    let mut cached_output = vec![None; tree.len()];
    for (p, c) in &plan.cached {
        cached_output[p.index()] = Some(c.output.digest.clone());
    }
    let shared = Arc::new(Shared {
        store: store.clone(),
        tree: plan.tree.clone(),
        root: plan.root.clone(),
        work: work.to_owned(),
        data_dir: opts.data_dir.clone(),
        sandbox: opts.sandbox.clone(),
        fetch_egress: opts.fetch_egress.clone(),
        env: opts.toolchain.env.clone(),
        machine: opts.toolchain.machine(),
        limits: opts.limits,
        outputs: (0..tree.len()).map(|_| OnceCell::new()).collect(),
        cached_output,
        built_output: (0..tree.len())
            .map(|_| std::sync::OnceLock::new())
            .collect(),
        deps_pool: std::sync::Mutex::new(Vec::new()),
        spare_deps: Arc::new(SpareDeps::new(work.join("spare-deps"))),
        deps_made: std::sync::atomic::AtomicUsize::new(0),
        unstarted: std::sync::atomic::AtomicUsize::new(usize::MAX),
        clearing: std::sync::Mutex::new(Vec::new()),
        laying_out: std::sync::atomic::AtomicUsize::new(0),
        layouts_over: std::sync::atomic::AtomicBool::new(false),
        slots: None,
        progress: None,
        slot_events: None,
    });
    Ok(Start {
        durations,
        priorities,
        shared,
    })
}

/// The dispatcher: owns the schedule, starts package tasks, records what ends.
async fn dispatch(
    store: &Store,
    plan: &BuildPlan,
    opts: &BuildOptions,
    session: BuildSessionId,
    work: &Path,
    progress: mpsc::UnboundedSender<BuildEvent>,
    cancel: CancellationToken,
) -> Result<(BuildCounts, bool, Vec<FailedPackage>), BuildError> {
    let tree = &plan.tree;
    let graph = tree.graph();
    let Start {
        durations,
        priorities,
        mut shared,
    } = start(store, plan, opts, work).await?;
    let (slot_tx, mut slot_events) = mpsc::unbounded_channel();
    {
        let s = Arc::get_mut(&mut shared).expect("not shared yet");
        s.slots = Some(slots::Slots::new(opts.slots));
        s.progress = Some(progress.clone());
        s.slot_events = Some(slot_tx);
        s.unstarted = std::sync::atomic::AtomicUsize::new(plan.to_build());
    }
    // A package's build, needing `deps` (and with `pending` the part of them still running).
    let new_job =
        |p: PackageId, deps: Vec<PackageId>, pending: Option<Pending>, priority: u64| Job {
            id: p,
            key: plan.key(p).to_hex(),
            deps,
            pending,
            expected: durations.get(tree.origin(p)).copied(),
            priority,
        };
    let _ = progress.send(BuildEvent::Began {
        session,
        total: plan.total(),
        to_build: plan.to_build(),
        cached: plan.cached(),
        slots: opts.slots,
        expected_work: durations.values().sum(),
        with_history: durations.len(),
    });

    let mut schedule = Schedule::new(graph, &plan.selection, priorities);
    let mut walker = DepsWalker::new(graph);
    // Package tasks stop on this; it also fires when the dispatcher gives up on an error.
    let stop = cancel.child_token();
    let mut running: JoinSet<Done> = JoinSet::new();
    let mut task_of: HashMap<tokio::task::Id, PackageId> = HashMap::new();
    // Started and not yet past their commands: preparing, waiting for a slot, or in one.
    let mut before_release: HashSet<PackageId> = HashSet::new();
    // Of those, the ones without a slot yet, with their priorities.
    let mut unslotted: HashMap<PackageId, u64> = HashMap::new();
    // Pre-started and waiting for what they need to be built (not in the two above yet).
    let mut early: HashMap<PackageId, Early> = HashMap::new();
    let mut ledger = Ledger {
        progress: progress.clone(),
        rows: Vec::new(),
        counts: BuildCounts::default(),
        recorded: vec![false; tree.len()],
    };
    let mut oldest_row: Option<tokio::time::Instant> = None;
    let mut failures = Vec::new();
    let mut cancelled = false;

    let row = |p: PackageId, status: PackageBuildStatus, reason: Option<String>| {
        plan.unbuilt_row(session, p, status, reason)
    };

    let outcome: Result<(), BuildError> = async {
        loop {
            // One package more than slots is prepared ahead (`Shared::slots`), so a slot that
            // frees finds the next build's folder ready. A package that became ready since
            // and comes before every prepared one is prepared too: slots go by priority, so
            // it takes the first slot that frees once it is prepared (one that frees while it
            // is still being prepared goes to a waiting package).
            loop {
                while !cancelled
                    && (before_release.len() < opts.slots + PREPARED_AHEAD
                        || schedule.next_priority().is_some_and(|next| {
                            unslotted.values().max().is_some_and(|&m| next > m)
                        }))
                {
                    let Some(p) = schedule.start_next() else {
                        break;
                    };
                    if let Some(b) = plan.cached_row(session, p) {
                        schedule.finish(p, Outcome::Cached);
                        ledger.record(p, b);
                        continue;
                    }
                    let job = new_job(p, walker.kiln_deps(p).to_vec(), None, schedule.priority(p));
                    unslotted.insert(p, job.priority);
                    spawn_job(&shared, &mut running, &mut task_of, job, stop.clone());
                    before_release.insert(p);
                }
                // Packages whose needs all run are started ahead, at most one per slot: their
                // folder copied and sandbox made while the last of what they need still runs.
                while !cancelled && early.len() < opts.slots {
                    let Some(p) = schedule.pre_start_next() else {
                        break;
                    };
                    if plan.cached.contains_key(&p) {
                        // Nothing to prepare: recorded as cached once released.
                        continue;
                    }
                    let deps = walker.kiln_deps(p).to_vec();
                    let later = deps
                        .iter()
                        .copied()
                        .filter(|&d| !matches!(schedule.state(d), State::Finished(_)))
                        .collect();
                    let (built, waits) = tokio::sync::oneshot::channel();
                    let token = stop.child_token();
                    let pending = Pending {
                        deps: later,
                        built: waits,
                    };
                    let job = new_job(p, deps, Some(pending), schedule.priority(p));
                    spawn_job(&shared, &mut running, &mut task_of, job, token.clone());
                    early.insert(
                        p,
                        Early {
                            built,
                            cancel: token,
                        },
                    );
                }
                let released = schedule.take_released();
                if released.is_empty() {
                    break;
                }
                for r in released {
                    if let Some(b) = plan.cached_row(session, r) {
                        schedule.finish(r, Outcome::Cached);
                        ledger.record(r, b);
                        continue;
                    }
                    if let Some(task) = early.remove(&r) {
                        let _ = task
                            .built
                            .send((Timestamp::now(), std::time::Instant::now()));
                        unslotted.insert(r, schedule.priority(r));
                        before_release.insert(r);
                    }
                }
            }
            if ledger.rows.len() >= FLUSH_ROWS {
                flush(store, &mut ledger.rows, &mut oldest_row).await?;
            }
            if !ledger.rows.is_empty() && oldest_row.is_none() {
                oldest_row = Some(tokio::time::Instant::now());
            }
            if running.is_empty() {
                break;
            }
            let flush_at = oldest_row.map(|t| t + FLUSH_EVERY);
            tokio::select! {
                Some((p, event)) = slot_events.recv() => {
                    unslotted.remove(&p);
                    if event == SlotEvent::Released {
                        before_release.remove(&p);
                    }
                }
                joined = running.join_next_with_id() => {
                    let Some(joined) = joined else { continue };
                    let done = match joined {
                        Ok((id, done)) => {
                            task_of.remove(&id);
                            done
                        }
                        Err(e) => {
                            let p = task_of.remove(&e.id()).expect("every task is mapped");
                            let now = Timestamp::now();
                            Done {
                                id: p,
                                status: PackageBuildStatus::Failure,
                                reason: Some(format!("kiln's build task failed: {e}")),
                                started_at: now,
                                finished_at: now,
                                duration: Duration::ZERO,
                                log: None,
                                log_tail: String::new(),
                                output: None,
                            }
                        }
                    };
                    let p = done.id;
                    before_release.remove(&p);
                    unslotted.remove(&p);
                    early.remove(&p);
                    if ledger.recorded[p.index()] {
                        // Pre-started, then skipped: its row is written.
                        continue;
                    }
                    if schedule.state(p) == State::PreStarted
                        && done.status == PackageBuildStatus::Cancelled
                    {
                        // Cancelled before its turn: recorded as not started with the rest.
                        continue;
                    }
                    let b = PackageBuild {
                        id: PackageBuildId::new(),
                        session,
                        origin: tree.origin(p).to_owned(),
                        version: tree.package(p).version.clone(),
                        key: plan.key(p).to_hex(),
                        status: done.status,
                        reason: done.reason,
                        started_at: done.started_at,
                        finished_at: done.finished_at,
                        duration: done.duration,
                        log: done.log,
                        log_tail: done.log_tail,
                        output: done.output,
                    };
                    let status = b.status;
                    let failed = (status == PackageBuildStatus::Failure).then(|| FailedPackage {
                        origin: b.origin.clone(),
                        reason: b.reason.clone(),
                        log_tail: b.log_tail.clone(),
                        log: b.log.clone(),
                    });
                    ledger.record(p, b);
                    match (status, failed) {
                        (PackageBuildStatus::Success, _) => {
                            schedule.finish(p, Outcome::Built);
                        }
                        (PackageBuildStatus::Failure, Some(failed)) => {
                            let cause = failed.origin.clone();
                            failures.push(failed);
                            let skipped = schedule.finish(p, Outcome::Failed);
                            // Pre-started ones are stopped; the others never started: no
                            // `$KILN_DEPS` folder is kept for them.
                            let mut never_started = 0;
                            for s in &skipped {
                                match early.remove(s) {
                                    Some(task) => task.cancel.cancel(),
                                    None => never_started += 1,
                                }
                            }
                            let _ = shared.unstarted.fetch_update(
                                std::sync::atomic::Ordering::Relaxed,
                                std::sync::atomic::Ordering::Relaxed,
                                |n| Some(n.saturating_sub(never_started)),
                            );
                            shared.layouts_over_if_none_left();
                            for s in skipped {
                                let skipped = row(
                                    s,
                                    PackageBuildStatus::Skipped,
                                    Some(format!("dependency {cause} failed")),
                                );
                                ledger.record(s, skipped);
                            }
                        }
                        // Left `Running` in the schedule: nothing after it may start.
                        _ => {}
                    }
                }
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    flush(store, &mut ledger.rows, &mut oldest_row).await?;
                }
            }
        }
        if cancel.is_cancelled() {
            cancelled = true;
        }
        if cancelled {
            let left: Vec<PackageId> = schedule
                .unfinished()
                .filter(|p| !ledger.recorded[p.index()])
                .collect();
            for p in left {
                let why = match schedule.state(p) {
                    State::Running => "stopped: the build was cancelled",
                    _ => "not started: the build was cancelled",
                };
                let b = row(p, PackageBuildStatus::Cancelled, Some(why.to_owned()));
                ledger.record(p, b);
            }
        }
        flush(store, &mut ledger.rows, &mut oldest_row).await
    }
    .await;
    if outcome.is_err() {
        // Give up cleanly: end what runs before the work area goes.
        stop.cancel();
        while running.join_next().await.is_some() {}
    }
    shared.cleared().await;
    outcome?;
    Ok((ledger.counts, cancelled, failures))
}

/// Starts `job`'s task (stopped by `cancel`), one package fewer not started.
fn spawn_job(
    shared: &Arc<Shared>,
    running: &mut JoinSet<Done>,
    task_of: &mut HashMap<tokio::task::Id, PackageId>,
    job: Job,
    cancel: CancellationToken,
) {
    let p = job.id;
    // Counted as laying out before it stops counting as unstarted: the two are never both
    // zero while its layout is still to come.
    shared
        .laying_out
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let _ = shared.unstarted.fetch_update(
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Acquire,
        |n| n.checked_sub(1),
    );
    let handle = running.spawn(execute(shared.clone(), job, cancel, None));
    task_of.insert(handle.id(), p);
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a build has recorded: the rows not written yet, its counts, and which packages have
/// a row.
struct Ledger {
    progress: mpsc::UnboundedSender<BuildEvent>,
    rows: Vec<PackageBuild>,
    counts: BuildCounts,
    recorded: Vec<bool>,
}

impl Ledger {
    /// `p` ended as `b`: reported, counted, and written with the next batch.
    fn record(&mut self, p: PackageId, b: PackageBuild) {
        let _ = self.progress.send(BuildEvent::Finished {
            origin: b.origin.clone(),
            status: b.status,
            duration: b.duration,
            reason: b.reason.clone(),
        });
        self.counts.add(b.status, 1);
        self.recorded[p.index()] = true;
        self.rows.push(b);
    }
}

/// Records the rows gathered so far in one transaction.
async fn flush(
    store: &Store,
    rows: &mut Vec<PackageBuild>,
    oldest: &mut Option<tokio::time::Instant>,
) -> Result<(), BuildError> {
    *oldest = None;
    if rows.is_empty() {
        return Ok(());
    }
    store.record_package_builds(rows).await?;
    rows.clear();
    Ok(())
}

async fn create_dir(path: &Path) -> Result<(), BuildError> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(|source| BuildError::Io {
            action: "create the folder",
            path: path.to_owned(),
            source,
        })
}

/// One package's build from its scratch copy to its stored output; never fails itself:
/// kiln's own trouble while preparing or storing fails the package with the reason.
async fn execute(
    shared: Arc<Shared>,
    mut job: Job,
    cancel: CancellationToken,
    tap: Option<mpsc::UnboundedSender<Vec<u8>>>,
) -> Done {
    // Reset when a pre-started package's dependencies are built and when the package gets
    // its slot: its history's start and duration are its own build's, not the wait for
    // theirs or for a slot.
    let mut began = (Timestamp::now(), std::time::Instant::now());
    let mut log = BuildLog::new(tap);
    let origin = shared.tree.origin(job.id).to_owned();
    let dir = shared.work.join(&origin);
    log.line(&format!(
        "{origin} {} (key {})",
        shared.tree.package(job.id).version,
        job.key
    ));
    let mut deps = shared.take_deps(&job.deps);
    let result = run_phases(
        &shared, &mut job, &dir, &deps.path, &mut log, &cancel, &mut began,
    )
    .await;
    // Whatever the build did, the next one makes the folder right again.
    deps.laid_out.clone_from(&job.deps);
    shared.give_back_deps(deps);
    // After the folder is back: the package this lets start may take it.
    if let Some(events) = &shared.slot_events {
        let _ = events.send((job.id, SlotEvent::Released));
    }
    let ended = match result {
        Ok(()) => finish_output(&shared, &job, &dir)
            .await
            .map_err(Stop::Failed),
        Err(stop) => Err(stop),
    };
    let mut output = None;
    let (status, reason) = match ended {
        Ok(blob) => {
            output = Some(blob);
            (PackageBuildStatus::Success, None)
        }
        // Ended as cancelled though nobody cancelled it (kiln lost its process): a failure,
        // so that what waits for it is skipped rather than waiting for ever.
        Err(Stop::Cancelled) if !cancel.is_cancelled() => {
            let why =
                Stop::Failed("kiln lost track of the build's process".to_owned()).note(&mut log);
            (PackageBuildStatus::Failure, Some(why))
        }
        Err(stop) => {
            let why = stop.note(&mut log);
            match stop {
                Stop::Cancelled => (PackageBuildStatus::Cancelled, Some(why)),
                Stop::Failed(_) => (PackageBuildStatus::Failure, Some(why)),
            }
        }
    };
    let (started_at, clock) = began;
    let duration = clock.elapsed();
    if shared.slots.is_some() {
        // `kiln build`: not on the way to the packages waiting for this one.
        shared.recycle_beside(dir);
    } else if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove a package's build folder");
    }
    let tail = log_tail(log.data(), TAIL_LINES, TAIL_BYTES);
    let (log_blob, status, reason) = match shared.store.blobs().put_content(log.into_data()).await {
        Ok(blob) => (Some(blob), status, reason),
        // A build whose log cannot be kept has no history worth trusting.
        Err(e) if status == PackageBuildStatus::Success => (
            None,
            PackageBuildStatus::Failure,
            Some(format!("failed to store the build's log: {e}")),
        ),
        Err(e) => {
            tracing::warn!(origin, error = %e, "cannot store a failed build's log");
            (None, status, reason)
        }
    };
    let output = if status == PackageBuildStatus::Success {
        output
    } else {
        None
    };
    Done {
        id: job.id,
        status,
        reason,
        started_at,
        finished_at: Timestamp::now(),
        duration,
        log: log_blob,
        log_tail: tail,
        output,
    }
}

/// The egress proxy of one package's `fetch` phase, on a Unix socket of its own
/// (`crate::egress::proxy`).
struct EgressProxy {
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
    refused: mpsc::UnboundedReceiver<String>,
}

impl EgressProxy {
    fn start(egress: &FetchEgress) -> Result<Self, String> {
        // In the host's temporary folder: a socket's path must be short (108 bytes), and the
        // sandbox binds it in by name whatever covers its folder there.
        let socket = std::env::temp_dir().join(format!(
            "kiln-egress-{}.sock",
            uuid::Uuid::new_v4().simple()
        ));
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let (tx, refused) = mpsc::unbounded_channel();
        let task = tokio::spawn(crate::egress::proxy::serve(
            listener,
            egress.policy.clone(),
            tx,
        ));
        Ok(Self {
            socket,
            task,
            refused,
        })
    }

    /// Stops the proxy; the lines to log for what it refused.
    fn finish(mut self) -> Vec<String> {
        self.task.abort();
        let mut lines = Vec::new();
        while let Ok(line) = self.refused.try_recv() {
            lines.push(line);
        }
        lines
    }
}

impl Drop for EgressProxy {
    /// Also when the build is dropped mid-phase (cancelled): no proxy outlives its phase.
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Prepares the package's folders and runs `fetch`, the distfile checks and `build`.
async fn run_phases(
    shared: &Shared,
    job: &mut Job,
    dir: &Path,
    deps_dir: &Path,
    log: &mut BuildLog,
    cancel: &CancellationToken,
    began: &mut (Timestamp, std::time::Instant),
) -> Result<(), Stop> {
    let origin = shared.tree.origin(job.id);
    let pkg = shared.tree.package(job.id);
    let src = dir.join("src");
    let out = dir.join("out");
    let deps = deps_dir.to_owned();
    let prepare = |what: &str, e: String| Stop::Failed(format!("kiln could not {what}: {e}"));
    let layout_ticket = LayoutTicket::new(shared);

    let from = shared.root.join(origin);
    let (to, spares) = (src.clone(), shared.spare_deps.clone());
    blocking(move || {
        spares
            .make_dir(&to)
            .map_err(|e| format!("{}: {e}", to.display()))?;
        copy_tree(&from, &to)
    })
    .await
    .map_err(|e| prepare("copy the package's folder", e))?;
    shared
        .spare_deps
        .make_dir(&out)
        .map_err(|e| prepare("create", format!("{}: {e}", out.display())))?;
    // Outputs first (a cached one may have to be restored), then the whole layout in one
    // trip to the blocking pool: a closure can hold thousands of packages, and a trip per
    // package cost more than the links themselves. A pre-started package's dependencies
    // still running are laid out on its turn.
    let pending = job.pending.take();
    let later: &[PackageId] = pending.as_ref().map_or(&[], |p| &p.deps);
    let mut layout = Vec::with_capacity(job.deps.len());
    for &d in &job.deps {
        if cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        if later.binary_search(&d).is_ok() {
            continue;
        }
        let from = dependency_output(shared, d).await.map_err(Stop::Failed)?;
        layout.push((from, deps.join(shared.tree.origin(d))));
    }
    let (target, spares) = (deps.clone(), shared.spare_deps.clone());
    blocking(move || lay_out_deps(&target, &layout, Some(&spares)))
        .await
        .map_err(|e| prepare("lay out $KILN_DEPS", e))?;
    if pending.is_none() {
        layout_ticket.done();
    }

    let env = build_env(&src, &out, &deps, origin, &pkg.version, &shared.env);
    let base = Confinement::new(&src)
        .read_only(&deps)
        .read_only(&shared.root)
        .hidden(&shared.data_dir);
    // A slot for the commands (released when this returns, before the output is stored),
    // taken as the phases' turn, after a pre-started package's last dependencies are built
    // and laid out: a sandbox is made while the package waits for them.
    let mut slot = None;
    let turn: Option<kiln_exec::package::Turn<'_>> = (shared.slots.is_some() || pending.is_some())
        .then(|| {
            let turn = async {
                if let Some(Pending { deps: later, built }) = pending {
                    *began = built
                        .await
                        .map_err(|_| "kiln stopped waiting for the packages it needs".to_owned())?;
                    let mut layout = Vec::with_capacity(later.len());
                    for d in later {
                        let from = dependency_output(shared, d).await?;
                        layout.push((from, deps.join(shared.tree.origin(d))));
                    }
                    let (target, spares) = (deps.clone(), shared.spare_deps.clone());
                    blocking(move || link_deps(&target, &layout, Some(&spares)))
                        .await
                        .map_err(|e| format!("kiln could not lay out $KILN_DEPS: {e}"))?;
                    layout_ticket.done();
                }
                if let Some(slots) = &shared.slots {
                    slot = Some(slots.acquire(job.priority).await);
                    // Its build starts with its slot: the history's start and duration (the
                    // next build's critical-path weight) leave out the wait for it.
                    *began = (Timestamp::now(), std::time::Instant::now());
                    if let Some(events) = &shared.slot_events {
                        let _ = events.send((job.id, SlotEvent::Taken));
                    }
                    if let Some(progress) = &shared.progress {
                        let _ = progress.send(BuildEvent::Started {
                            origin: origin.to_owned(),
                            expected: job.expected,
                        });
                    }
                }
                Ok(())
            };
            Box::pin(turn) as kiln_exec::package::Turn<'_>
        });
    let proxy = match &shared.fetch_egress {
        Some(egress) if pkg.fetch.is_some() && shared.sandbox.is_confined() => Some(
            EgressProxy::start(egress)
                .map_err(|e| prepare("start the fetch phase's egress proxy", e))?,
        ),
        _ => None,
    };
    let fetch_network = match (&proxy, &shared.fetch_egress) {
        (Some(p), Some(egress)) => FetchNetwork::Relay {
            socket: &p.socket,
            relay: &egress.relay,
        },
        _ => FetchNetwork::Host,
    };
    let phases = Phases {
        fetch: pkg.fetch.as_deref(),
        distfiles: &pkg.distfiles,
        build: &pkg.build,
        src: &src,
        out: &out,
        base,
        env: &env,
        sandbox: &shared.sandbox,
        limits: shared.limits,
        fetch_network,
    };
    let ran = kiln_exec::package::run_phases_after(&phases, log, cancel, turn).await;
    drop(slot);
    if let Some(proxy) = proxy {
        for line in proxy.finish() {
            log.line(&line);
        }
    }
    ran
}

/// A started `kiln build` package's part in [`Shared::laying_out`]: done once its
/// `$KILN_DEPS` is laid out in full, or when its build ends without (failed, cancelled).
/// Inert where there are no slots (a workflow's package jobs keep their outputs).
struct LayoutTicket<'a> {
    shared: &'a Shared,
    done: std::sync::atomic::AtomicBool,
}

impl<'a> LayoutTicket<'a> {
    fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            done: std::sync::atomic::AtomicBool::new(shared.slots.is_none()),
        }
    }

    fn done(&self) {
        if !self.done.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.shared.laid_out();
        }
    }
}

impl Drop for LayoutTicket<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// Packs a successful build's `$KILN_OUT` into the blob store and keeps it as this session's
/// copy for dependents (unless no dependent will lay it out any more: [`Shared::layouts_over`]).
async fn finish_output(shared: &Shared, job: &Job, dir: &Path) -> Result<ContentBlob, String> {
    let out = dir.join("out");
    let blob = shared
        .store
        .store_package_output(&out)
        .await
        .map_err(|e| format!("the output in $KILN_OUT cannot be stored: {e}"))?;
    let _ = shared.built_output[job.id.index()].set(blob.digest.clone());
    if shared
        .layouts_over
        .load(std::sync::atomic::Ordering::Acquire)
    {
        // Removed with the build's folder.
        return Ok(blob);
    }
    let kept = shared.work.join("outputs").join(shared.tree.origin(job.id));
    if let Some(parent) = kept.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("kiln could not create {}: {e}", parent.display()))?;
    }
    match tokio::fs::rename(&out, &kept).await {
        Ok(()) => {
            let _ = shared.outputs[job.id.index()].set(kept);
        }
        // The kept outputs were moved aside between the check above and the rename (their
        // folder made, then gone): no dependent needs this one either.
        Err(_)
            if shared
                .layouts_over
                .load(std::sync::atomic::Ordering::Acquire) => {}
        Err(e) => {
            return Err(format!(
                "kiln could not keep the output at {}: {e}",
                kept.display()
            ));
        }
    }
    Ok(blob)
}

/// The folder holding dependency `d`'s output in this session: built now, or its cached
/// build's output restored from the blob store (once, whoever asks first).
async fn dependency_output(shared: &Shared, d: PackageId) -> Result<PathBuf, String> {
    let origin = shared.tree.origin(d);
    shared.outputs[d.index()]
        .get_or_try_init(|| async {
            let Some(digest) = shared.output_digest(d) else {
                return Err(format!(
                    "kiln has no output of the dependency {origin} (it was not built)"
                ));
            };
            let dst = shared.work.join("outputs").join(origin);
            shared
                .store
                .restore_package_output(digest, &dst)
                .await
                .map_err(|e| {
                    format!("the stored output of the dependency {origin} cannot be restored: {e}")
                })?;
            Ok(dst)
        })
        .await
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_difference_counts_what_is_in_one_list_only() {
        assert_eq!(sorted_difference(&[1, 2, 3], &[2, 3, 4, 5]), 3);
        assert_eq!(sorted_difference(&[], &[7]), 1);
        assert_eq!(sorted_difference(&[1, 9], &[1, 9]), 0);
    }
}
