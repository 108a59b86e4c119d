//! `jobs.<id>.packages` (DESIGN.md "Workflow syntax", kiln extensions): a workflow job that
//! builds a package tree as one job per package, wired by the packages' dependencies.
//!
//! The tree is planned when the run is created ([`plan_workflow`]): loaded and validated from
//! the run's files, keyed, and looked up in the store, exactly as `kiln build` plans it. The
//! dispatcher then makes one job per package to build (cached ones get none), drives them
//! through a kiln-core [`Schedule`] (a package's job is queued when everything it waits for
//! succeeded; a failure skips what waits on it), and runs each with [`PackageSet::build`],
//! the same build `kiln build` runs: scratch copy, `fetch`, distfile checks, sandboxed
//! `build`, output into the blob store, a row in the package history. So `kiln build
//! history`, the package API and the cache see workflow builds and `kiln build` alike.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use kiln_core::packages::{DepsWalker, PackageId, Schedule, Tree};
use kiln_core::workflow::Workflow;
use kiln_store::{BuildCounts, BuildSessionId, PackageBuild, PackageBuildId, PackageBuildStatus};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    BuildError, BuildOptions, BuildPlan, Done, FetchEgress, Job, Sandbox, Shared, Start,
    begin_session, execute, plan, remove_stale_work_areas, start,
};
use kiln_store::Store;

/// The `packages:` jobs of one run, by job key.
pub type WorkflowPackages = Arc<HashMap<String, Arc<PackageSet>>>;

/// One `packages:` job's planned tree: what its package jobs build and share.
pub struct PackageSet {
    shared: Arc<Shared>,
    /// The tree's folder in the run's files, relative (`jobs.<id>.packages.tree`).
    tree_dir: String,
    plan: BuildPlan,
    session: BuildSessionId,
    /// Critical-path priority per package (weighted by the last durations).
    priorities: Vec<u64>,
    /// What happened to each selected package, for the session's counts and the rows of
    /// packages that got no build of their own (cached, skipped, never started).
    book: Mutex<Book>,
    /// Holds the work area's lock while the run lasts: no build takes it for one left
    /// behind (`remove_stale_work_areas`).
    _lock: std::fs::File,
}

#[derive(Default)]
struct Book {
    counts: BuildCounts,
    /// Packages with a row already (built, failed, cancelled while running).
    recorded: HashSet<PackageId>,
    /// Rows recorded when the set is closed.
    pending: Vec<PackageBuild>,
    closed: bool,
}

/// Plans every `packages:` job of `wf` from the run's files at `root`: the tree validated,
/// keyed and looked up in the store, a build session begun for each. Errors name the job.
pub async fn plan_workflow(
    store: &Store,
    wf: &Workflow,
    root: &Path,
    data_dir: &Path,
    sandbox: &Sandbox,
    fetch_egress: Option<&FetchEgress>,
) -> Result<WorkflowPackages, BuildError> {
    let mut out = HashMap::new();
    for (key, planned, opts) in plan_jobs(store, wf, root, data_dir, sandbox, fetch_egress).await? {
        let tree_dir = wf
            .jobs
            .get(&key)
            .and_then(|j| j.packages.as_ref())
            .map(|p| p.tree.clone())
            .unwrap_or_default();
        out.insert(
            key,
            Arc::new(PackageSet::begin(store, planned, &opts, tree_dir).await?),
        );
    }
    Ok(Arc::new(out))
}

/// What a run of `wf` would build for each `packages:` job, by job key: the jobs its
/// packages would get (`(origin, version)`, origin order) and how many are cached. Reads the
/// tree and the store only (`kiln run --dry-run`).
pub async fn preview_workflow(
    store: &Store,
    wf: &Workflow,
    root: &Path,
    data_dir: &Path,
) -> Result<HashMap<String, PackagePreview>, BuildError> {
    let mut out = HashMap::new();
    for (key, planned, _) in plan_jobs(store, wf, root, data_dir, &Sandbox::off(), None).await? {
        let jobs = planned
            .packages()
            .filter(|p| p.cached.is_none())
            .map(|p| (p.origin.to_owned(), p.version.to_owned()))
            .collect();
        out.insert(
            key,
            PackagePreview {
                jobs,
                cached: planned.cached(),
            },
        );
    }
    Ok(out)
}

/// One `packages:` job as a dry run shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackagePreview {
    /// `(origin, version)` of each package that would get a job.
    pub jobs: Vec<(String, String)>,
    /// Packages with a stored build of their key (no job).
    pub cached: usize,
}

/// Each `packages:` job's plan with the options it was made with; errors name the job.
async fn plan_jobs(
    store: &Store,
    wf: &Workflow,
    root: &Path,
    data_dir: &Path,
    sandbox: &Sandbox,
    fetch_egress: Option<&FetchEgress>,
) -> Result<Vec<(String, BuildPlan, BuildOptions)>, BuildError> {
    let mut out = Vec::new();
    for (key, job) in &wf.jobs {
        let Some(spec) = &job.packages else { continue };
        let at = |e: BuildError| {
            let what = format!(
                "{}:{}: jobs.{key}.packages (tree `{}`)",
                wf.file, spec.pos.line, spec.tree
            );
            match e {
                BuildError::Invalid(errs) => BuildError::Usage(format!("{what}:\n{errs}")),
                BuildError::UnknownOrigins(u) => BuildError::Usage(format!("{what}: {u}")),
                BuildError::Unhashable(errs) => BuildError::Usage(format!("{what}:\n{errs}")),
                BuildError::Usage(m) => BuildError::Usage(format!("{what}: {m}")),
                other => other,
            }
        };
        let tree_dir = root.join(&spec.tree);
        if !tree_dir.is_dir() {
            return Err(at(BuildError::Usage(
                "no such folder in the project".to_owned(),
            )));
        }
        let mut opts = BuildOptions::new(&tree_dir, data_dir);
        opts.origins = spec.origins.clone();
        opts.sandbox = sandbox.clone();
        opts.fetch_egress = fetch_egress.cloned();
        if let Some(slots) = spec.slots {
            opts.slots = slots as usize;
        }
        let planned = plan(store, &opts).await.map_err(at)?;
        out.push((key.clone(), planned, opts));
    }
    Ok(out)
}

impl PackageSet {
    async fn begin(
        store: &Store,
        plan: BuildPlan,
        opts: &BuildOptions,
        tree_dir: String,
    ) -> Result<Self, BuildError> {
        let (session, work, lock) = begin_session(store, &plan, opts).await?;
        let sessions = work.parent().unwrap_or(&work).to_owned();
        tokio::task::spawn_blocking(move || remove_stale_work_areas(&sessions));
        let Start {
            priorities, shared, ..
        } = start(store, &plan, opts, &work).await?;
        Ok(Self {
            shared,
            tree_dir,
            plan,
            session,
            priorities,
            book: Mutex::new(Book::default()),
            _lock: lock,
        })
    }

    pub fn tree(&self) -> &Tree {
        &self.plan.tree
    }

    /// The packages that get a job (selected and not cached), in origin order, with the
    /// matrix each job shows: `{"package": origin, "version": version}`.
    pub fn to_build(&self) -> Vec<(PackageId, Map<String, Value>)> {
        self.plan
            .selection
            .ids()
            .iter()
            .filter(|p| !self.plan.cached.contains_key(p))
            .map(|&p| {
                let mut m = Map::new();
                m.insert("package".into(), self.tree().origin(p).into());
                m.insert(
                    "version".into(),
                    self.tree().package(p).version.clone().into(),
                );
                (p, m)
            })
            .collect()
    }

    /// Whether `p` has a stored successful build with its key (it gets no job).
    pub fn is_cached(&self, p: PackageId) -> bool {
        self.plan.cached.contains_key(&p)
    }

    /// The package a job's matrix names.
    pub fn package_of(&self, matrix: &Map<String, Value>) -> Option<PackageId> {
        matrix
            .get("package")
            .and_then(Value::as_str)
            .and_then(|o| self.tree().id(o))
    }

    /// A new ready queue over the selection: the dispatcher's, one per run and key.
    pub fn schedule(&self) -> Schedule {
        Schedule::new(
            self.tree().graph(),
            &self.plan.selection,
            self.priorities.clone(),
        )
    }

    /// The package's critical-path priority, for the dispatcher's ready queue.
    pub fn priority(&self, p: PackageId) -> u64 {
        self.priorities[p.index()]
    }

    /// Notes a cached package (it has no job): its row is recorded when the set closes.
    pub fn note_cached(&self, p: PackageId) {
        if let Some(row) = self.plan.cached_row(self.session, p) {
            self.note(row);
        }
    }

    /// Notes a package skipped because `cause` failed.
    pub fn note_skipped(&self, p: PackageId, cause: PackageId) {
        let why = format!("dependency {} failed", self.tree().origin(cause));
        self.note(self.row(p, PackageBuildStatus::Skipped, Some(why)));
    }

    fn note(&self, row: PackageBuild) {
        let mut book = self.book.lock().expect("book lock");
        let Some(p) = self.tree().id(&row.origin) else {
            return;
        };
        if book.recorded.insert(p) {
            book.counts.add(row.status, 1);
            book.pending.push(row);
        }
    }

    fn row(
        &self,
        p: PackageId,
        status: PackageBuildStatus,
        reason: Option<String>,
    ) -> PackageBuild {
        self.plan.unbuilt_row(self.session, p, status, reason)
    }

    /// Builds package `p` as a job: its log lines go to `log` as they come, its row into the
    /// history. The outcome's outputs are `key` and, on success, `output` (the digest of its
    /// packed `$KILN_OUT`).
    pub async fn build(
        &self,
        p: PackageId,
        cancel: CancellationToken,
        log: mpsc::UnboundedSender<Vec<u8>>,
    ) -> (PackageBuildStatus, Map<String, Value>, Option<String>) {
        if let Some(w) = self.shared.sandbox.warning() {
            let _ = log.send(format!("==> {w}\n").into_bytes());
        }
        let deps = DepsWalker::new(self.tree().graph()).kiln_deps(p).to_vec();
        let key = self.plan.key(p).to_hex();
        let job = Job {
            id: p,
            key: key.clone(),
            deps,
            pending: None,
            expected: None,
            // Slots are `kiln build`'s: a workflow's package jobs take none.
            priority: 0,
        };
        let done = execute(self.shared.clone(), job, cancel, Some(log)).await;
        self.record(p, done).await
    }

    /// Records the build of `p` that ended as `done` (here, or on a remote worker) in the
    /// history: the job's status, outputs (`key`, and `output` on success) and failure reason.
    pub(crate) async fn record(
        &self,
        p: PackageId,
        done: Done,
    ) -> (PackageBuildStatus, Map<String, Value>, Option<String>) {
        let key = self.plan.key(p).to_hex();
        let outputs = self.outputs_of(p, done.output.as_ref());
        let built = done.output.as_ref().map(|o| o.digest.clone());
        let row = PackageBuild {
            id: PackageBuildId::new(),
            session: self.session,
            origin: self.tree().origin(p).to_owned(),
            version: self.tree().package(p).version.clone(),
            key,
            status: done.status,
            reason: done.reason.clone(),
            started_at: done.started_at,
            finished_at: done.finished_at,
            duration: done.duration,
            log: done.log,
            log_tail: done.log_tail,
            output: done.output,
        };
        let mut status = done.status;
        let mut reason = done.reason;
        if let Err(e) = self
            .shared
            .store
            .record_package_builds(std::slice::from_ref(&row))
            .await
        {
            status = PackageBuildStatus::Failure;
            reason = Some(format!("kiln could not record the build: {e}"));
        }
        // Dependents use it once it is recorded (a local build's output is kept by now).
        if let Some(digest) = built.filter(|_| status == PackageBuildStatus::Success) {
            self.note_output(p, &digest);
        }
        {
            let mut book = self.book.lock().expect("book lock");
            if book.recorded.insert(p) {
                book.counts.add(status, 1);
            }
        }
        (status, outputs, reason)
    }

    /// A package job's outputs: `key`, and `output` (the digest of its packed `$KILN_OUT`)
    /// when it built one.
    pub(crate) fn outputs_of(
        &self,
        p: PackageId,
        output: Option<&kiln_store::ContentBlob>,
    ) -> Map<String, Value> {
        let mut outputs = Map::new();
        outputs.insert("key".into(), self.plan.key(p).to_hex().into());
        if let Some(out) = output {
            outputs.insert("output".into(), out.digest.clone().into());
        }
        outputs
    }

    /// Notes that `p` was built in this session with the output `digest` (on a remote
    /// worker): its dependents may use it from now on.
    pub(crate) fn note_output(&self, p: PackageId, digest: &str) {
        let _ = self.shared.built_output[p.index()].set(digest.to_owned());
    }

    /// What a remote worker needs to build `p` as this set would (`None` while a package of
    /// its `$KILN_DEPS` closure has no output: it cannot be built yet).
    pub fn assignment(&self, p: PackageId) -> Option<kiln_proto::workers::PackageAssignment> {
        use kiln_proto::workers::{PackageAssignment, PackageDep, PackageDistfile};
        let tree = self.tree();
        let pkg = tree.package(p);
        let deps = DepsWalker::new(tree.graph())
            .kiln_deps(p)
            .iter()
            .map(|&d| {
                Some(PackageDep {
                    origin: tree.origin(d).to_owned(),
                    output: self.shared.output_digest(d)?.to_owned(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(PackageAssignment {
            origin: tree.origin(p).to_owned(),
            version: pkg.version.clone(),
            key: self.plan.key(p).to_hex(),
            tree: self.tree_dir.clone(),
            fetch: pkg.fetch.clone(),
            build: pkg.build.clone(),
            distfiles: pkg
                .distfiles
                .iter()
                .map(|d| PackageDistfile {
                    name: d.name.clone(),
                    sha256: hex::encode(d.sha256),
                })
                .collect(),
            deps,
            env: self.shared.env.clone(),
            machine: self.shared.machine.clone(),
            // A server that confines its builds has them confined on workers too (a worker
            // that cannot fails the package, saying so); one that cannot lets workers confine
            // where they can.
            sandbox: if self.shared.sandbox.is_confined() {
                kiln_exec::SandboxMode::Require.as_str().to_owned()
            } else {
                self.shared.sandbox.mode().as_str().to_owned()
            },
        })
    }

    /// Whether `digest` is the output of a package of `p`'s `$KILN_DEPS` closure (what a
    /// worker building `p` may fetch).
    pub fn is_dependency_output(&self, p: PackageId, digest: &str) -> bool {
        DepsWalker::new(self.tree().graph())
            .kiln_deps(p)
            .iter()
            .any(|&d| self.shared.output_digest(d) == Some(digest))
    }

    /// Ends the set once its run has ended: the rows of packages without a build of their
    /// own (cached, skipped, and — after a cancel — never started), the session's counts,
    /// and the work area removed. Later calls do nothing.
    pub async fn close(&self) {
        let (rows, counts) = {
            let mut book = self.book.lock().expect("book lock");
            if book.closed {
                return;
            }
            book.closed = true;
            let mut rows = std::mem::take(&mut book.pending);
            for &p in self.plan.selection.ids() {
                if !book.recorded.contains(&p) {
                    let row = self.row(
                        p,
                        PackageBuildStatus::Cancelled,
                        Some("not started: the run ended first".to_owned()),
                    );
                    book.counts.add(row.status, 1);
                    rows.push(row);
                }
            }
            (rows, book.counts)
        };
        let store = &self.shared.store;
        if let Err(e) = store.record_package_builds(&rows).await {
            tracing::warn!(error = %e, "cannot record a package job's history rows");
        }
        if let Err(e) = store
            .finish_build_session(self.session, &counts, Timestamp::now())
            .await
        {
            tracing::warn!(error = %e, "cannot finish a package job's build session");
        }
        if let Err(e) = tokio::fs::remove_dir_all(&self.shared.work).await {
            tracing::warn!(path = %self.shared.work.display(), error = %e, "cannot remove a package job's work area");
        }
    }
}
