//! `kiln build`: build a package tree here (DESIGN.md "Package trees"), `--dry-run` for the
//! plan, and `kiln build status` / `kiln build history ORIGIN` to read what the store kept.
//!
//! The builder is `kiln_engine::packages`; this file turns flags into [`BuildOptions`], shows
//! progress (a bar with counts, running packages and an ETA on a TTY, plain lines otherwise),
//! prints the summary with each failed package's log tail, and maps the outcome to the
//! documented exit codes: 0 all built or cached, 1 a package failed (or was skipped because
//! one did), 2 an invalid tree or unknown origin (nothing built), 3 kiln could not work (the
//! store, a required sandbox), 130 Ctrl-C.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use indexmap::IndexMap;
use kiln_engine::packages::{
    BuildError, BuildEvent, BuildOptions, BuildPlan, BuildReport, Sandbox, SandboxMode, Toolchain,
    build, prepare,
};
use kiln_proto::exit;
use kiln_store::{PackageBuild, PackageBuildStatus};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Failure;
use crate::args::{Format, StoreArgs};
use crate::local::{cancel_on_ctrl_c, open_store};
use crate::output::{Live, Report, consume, print_json, stderr_line, stdout_line};

/// `kiln build [OPTIONS] [ORIGIN…]`, or one of its subcommands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BuildArgs {
    #[command(subcommand)]
    command: Option<BuildCommand>,
    #[command(flatten)]
    run: BuildRunArgs,
}

#[derive(Debug, Subcommand)]
enum BuildCommand {
    /// The latest build of every package ever built, by origin.
    Status(BuildStatusArgs),
    /// Every build of one package, newest first: time, key, status, duration, log.
    History(BuildHistoryArgs),
}

#[derive(Debug, Args)]
struct BuildRunArgs {
    /// Build only these origins (`CATEGORY/NAME`) and what they need (default: every package).
    #[arg(value_name = "ORIGIN")]
    origins: Vec<String>,
    /// The tree: a folder of `CATEGORY/NAME/kiln-package.toml`.
    #[arg(long, default_value = ".", value_name = "DIR")]
    tree: PathBuf,
    /// How many packages build at once (default: the number of cores).
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    /// Print the plan (what would be built, what is cached) and build nothing.
    #[arg(long)]
    dry_run: bool,
    /// Confine builds with bubblewrap: `auto` when it works here (warning loudly when not),
    /// `require` (refuse to build without it), `off`.
    #[arg(long, default_value = "auto", value_name = "auto|require|off")]
    sandbox: SandboxMode,
    /// What sandboxed `fetch` phases may reach: they have no network but an HTTP proxy
    /// (`http_proxy`, `https_proxy`) that checks this policy.
    #[command(flatten)]
    egress: crate::args::EgressArgs,
    /// A label in every package's key (`KILN_TOOLCHAIN`): change it to rebuild everything,
    /// e.g. after a compiler upgrade.
    #[arg(long, env = "KILN_TOOLCHAIN", value_name = "LABEL")]
    toolchain: Option<String>,
    /// Environment variables passed to builds and keyed (`CC,CFLAGS`; `KILN_TOOLCHAIN_ENV`).
    /// Builds get no other variable of kiln's environment; `PATH` is a fixed default unless
    /// named here.
    #[arg(
        long = "toolchain-env",
        env = "KILN_TOOLCHAIN_ENV",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    toolchain_env: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct BuildStatusArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct BuildHistoryArgs {
    /// The package's origin (`CATEGORY/NAME`).
    #[arg(value_name = "ORIGIN")]
    origin: String,
    /// At most this many builds.
    #[arg(long, default_value_t = 20, value_name = "N")]
    limit: u32,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    store: StoreArgs,
}

impl From<BuildError> for Failure {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Invalid(errors) => Failure::invalid(format!(
                "the package tree is invalid ({} problem{}); nothing was built:\n{errors}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            )),
            e if e.is_user_error() => Failure::invalid(e.to_string()),
            e => Failure::internal(e.to_string()),
        }
    }
}

pub(crate) async fn build_command(a: BuildArgs) -> Result<i32, Failure> {
    match a.command {
        Some(BuildCommand::Status(s)) => status(s).await,
        Some(BuildCommand::History(h)) => history(h).await,
        None => run(a.run).await,
    }
}

async fn run(a: BuildRunArgs) -> Result<i32, Failure> {
    let slots = match a.jobs {
        Some(0) => return Err(Failure::invalid("--jobs must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let data_dir = absolute(&a.store.data_dir);
    let mut opts = BuildOptions::new(absolute(&a.tree), data_dir);
    opts.origins = a.origins.clone();
    opts.slots = slots;
    opts.toolchain = Toolchain::detect(a.toolchain.as_deref(), &a.toolchain_env);

    // The sandbox is probed (a bwrap run) while the tree is read and planned; its verdict is
    // heard only after them, so a bad tree is still reported first.
    let probe = (!a.dry_run).then(|| probe_sandbox(a.sandbox));
    // The tree is checked before the store is opened: invalid input leaves nothing behind.
    let prepared = prepare(&opts).await?;
    let store = open_store(&a.store).await?;
    let plan = prepared.lookup(&store).await?;
    // Only a dry run has no probe.
    let Some(probe) = probe else {
        print_plan(&plan, a.format);
        return Ok(exit::OK);
    };
    opts.sandbox = sandbox_probed(probe).await?;
    opts.fetch_egress = fetch_egress(&a.egress)?;

    let (cancel, ctrl_c) = cancel_on_ctrl_c();
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(consume(Reporter::new(a.format == Format::Text), rx));
    let result = build(&store, plan, &opts, tx, cancel).await;
    ctrl_c.abort();
    let _ = reporter.await;
    let report = result?;
    print_report(&report, &opts.data_dir, a.format);
    Ok(if report.cancelled {
        exit::CANCELLED
    } else if report.counts.failed > 0 || report.counts.skipped > 0 {
        exit::FAILED
    } else {
        exit::OK
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `--dry-run`: the counts, and every package with its status-to-be and key.
fn print_plan(plan: &BuildPlan, format: Format) {
    match format {
        Format::Json => {
            // Typed and borrowed rather than `json!`: a 60,000-package plan as a `Value`
            // tree costs hundreds of megabytes.
            #[derive(Serialize)]
            struct Plan<'a> {
                total: usize,
                build: usize,
                cached: usize,
                packages: Vec<Planned<'a>>,
            }
            #[derive(Serialize)]
            struct Planned<'a> {
                origin: &'a str,
                version: &'a str,
                status: &'static str,
                key: String,
            }
            print_json(&Plan {
                total: plan.total(),
                build: plan.to_build(),
                cached: plan.cached(),
                packages: plan
                    .packages()
                    .map(|p| Planned {
                        origin: p.origin,
                        version: p.version,
                        status: if p.cached.is_some() {
                            "cached"
                        } else {
                            "build"
                        },
                        key: p.key.to_hex(),
                    })
                    .collect(),
            });
        }
        Format::Text => {
            for p in plan.packages().filter(|p| p.cached.is_none()) {
                stdout_line(&format!("build   {} {}", p.origin, p.version));
            }
            stdout_line(&format!(
                "{} to build, {} cached, {} in total",
                plan.to_build(),
                plan.cached(),
                plan.total()
            ));
        }
    }
}

/// The end of a build: counts, and each failed package's log tail.
fn print_report(report: &BuildReport, data_dir: &Path, format: Format) {
    let c = &report.counts;
    match format {
        Format::Json => {
            let failures: Vec<Value> = report
                .failures
                .iter()
                .map(|f| {
                    json!({
                        "origin": f.origin,
                        "reason": f.reason,
                        "log_tail": f.log_tail,
                        "log": f.log.as_ref().map(|b| json!({"digest": b.digest, "size": b.size})),
                    })
                })
                .collect();
            print_json(&json!({
                "session": report.session.to_string(),
                "total": c.total(),
                "built": c.built,
                "failed": c.failed,
                "skipped": c.skipped,
                "cached": c.cached,
                "cancelled": c.cancelled,
                "interrupted": report.cancelled,
                "elapsed_ms": u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
                "failures": failures,
            }));
        }
        Format::Text => {
            for f in &report.failures {
                stdout_line(&format!(
                    "\n--- {} failed{}: last lines of its log ---",
                    f.origin,
                    f.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ));
                if f.log_tail.is_empty() {
                    stdout_line("  (no output)");
                }
                for line in f.log_tail.lines() {
                    stdout_line(&format!("  {line}"));
                }
                if let Some(path) = f.log.as_ref().and_then(|b| blob_file(data_dir, &b.digest)) {
                    stdout_line(&format!("  whole log: {path}"));
                }
            }
            stdout_line(&format!(
                "\n{}: {} built, {} failed, {} skipped, {} cached{} of {} in {} (session {})",
                if report.cancelled {
                    "cancelled"
                } else if c.failed + c.skipped > 0 {
                    "failed"
                } else {
                    "done"
                },
                c.built,
                c.failed,
                c.skipped,
                c.cached,
                if c.cancelled > 0 {
                    format!(", {} cancelled", c.cancelled)
                } else {
                    String::new()
                },
                c.total(),
                secs(report.elapsed),
                report.session
            ));
        }
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// Live progress: on a TTY a bar with the counts, the running packages and an ETA from
/// history; otherwise one line per started, failed, skipped or cancelled package (cached
/// ones only in the final counts: a no-op rebuild of a big tree would print thousands).
struct Reporter {
    live: Live,
    total: usize,
    slots: usize,
    built: usize,
    failed: usize,
    skipped: usize,
    cached: usize,
    cancelled: usize,
    running: IndexMap<String, (Instant, Option<Duration>)>,
    /// Expected work not started yet (ETA), and the guess for packages without history.
    pending_work: Duration,
    guess: Option<Duration>,
}

impl Report<BuildEvent> for Reporter {
    fn on(&mut self, e: BuildEvent) {
        self.on_event(e);
    }

    fn refresh(&self) {
        self.redraw();
    }

    fn live(&mut self) -> &mut Live {
        &mut self.live
    }
}

impl Reporter {
    fn new(enabled: bool) -> Self {
        Self {
            live: Live::new(enabled),
            total: 0,
            slots: 1,
            built: 0,
            failed: 0,
            skipped: 0,
            cached: 0,
            cancelled: 0,
            running: IndexMap::new(),
            pending_work: Duration::ZERO,
            guess: None,
        }
    }

    fn line(&self, text: &str) {
        self.live.line(text);
    }

    fn on_event(&mut self, e: BuildEvent) {
        match e {
            BuildEvent::Began {
                total,
                to_build,
                cached,
                slots,
                expected_work,
                with_history,
                ..
            } => {
                self.total = total;
                self.slots = slots.max(1);
                if with_history > 0 {
                    let avg = expected_work / u32::try_from(with_history).unwrap_or(u32::MAX);
                    self.guess = Some(avg);
                    let unknown = u32::try_from(to_build - with_history).unwrap_or(u32::MAX);
                    self.pending_work = expected_work + avg * unknown;
                }
                self.line(&format!(
                    "{total} packages: {to_build} to build, {cached} cached, {slots} at a time"
                ));
            }
            BuildEvent::Started { origin, expected } => {
                let expected = expected.or(self.guess);
                if let Some(d) = expected {
                    self.pending_work = self.pending_work.saturating_sub(d);
                }
                if self.live.bar().is_none() {
                    self.line(&format!("{origin}: started"));
                }
                self.running.insert(origin, (Instant::now(), expected));
            }
            BuildEvent::Finished {
                origin,
                status,
                duration,
                reason,
            } => {
                self.running.shift_remove(&origin);
                match status {
                    PackageBuildStatus::Success => self.built += 1,
                    PackageBuildStatus::Failure => self.failed += 1,
                    PackageBuildStatus::Skipped => self.skipped += 1,
                    PackageBuildStatus::Cached => self.cached += 1,
                    PackageBuildStatus::Cancelled => self.cancelled += 1,
                }
                let why = reason.map(|r| format!(" — {r}")).unwrap_or_default();
                match status {
                    PackageBuildStatus::Cached => {}
                    PackageBuildStatus::Success if self.live.bar().is_some() => {}
                    PackageBuildStatus::Success | PackageBuildStatus::Failure => {
                        self.line(&format!("{origin}: {status} in {}{why}", secs(duration)))
                    }
                    _ => self.line(&format!("{origin}: {status}{why}")),
                }
            }
        }
        self.refresh();
    }

    fn done(&self) -> usize {
        self.built + self.failed + self.skipped + self.cached + self.cancelled
    }

    /// Work left (not started, and the rest of what runs) spread over the slots.
    fn eta(&self) -> Option<Duration> {
        self.guess?;
        let running: Duration = self
            .running
            .values()
            .filter_map(|(t, d)| d.map(|d| d.saturating_sub(t.elapsed())))
            .sum();
        Some((self.pending_work + running) / u32::try_from(self.slots).unwrap_or(1))
    }

    fn redraw(&self) {
        let Some(bar) = self.live.bar() else { return };
        bar.set_length(self.total as u64);
        bar.set_position(self.done() as u64);
        let mut msg = format!(
            "built {} failed {} skipped {} cached {} remaining {}",
            self.built,
            self.failed,
            self.skipped,
            self.cached,
            self.total.saturating_sub(self.done())
        );
        if let Some(eta) = self.eta() {
            msg.push_str(&format!(" ETA {}", secs(eta)));
        }
        if !self.running.is_empty() {
            let running: Vec<String> = self
                .running
                .iter()
                .map(|(o, (t, _))| format!("{o} {}", secs(t.elapsed())))
                .collect();
            msg.push_str(&format!(" | {}", running.join(", ")));
        }
        bar.set_message(msg);
    }
}

/// A recorded build as `status` and `history` print it in JSON: the API's shape
/// (`/api/v1/packages/…/history`), with `log_path` — where the whole log is on this machine
/// — instead of its URL.
fn build_json(b: &PackageBuild, data_dir: &Path) -> Value {
    let blob = |c: &Option<kiln_store::ContentBlob>| {
        c.as_ref()
            .map(|c| json!({"digest": c.digest, "size": c.size}))
    };
    json!({
        "id": b.id.to_string(),
        "session": b.session.to_string(),
        "origin": b.origin,
        "version": b.version,
        "key": b.key,
        "status": b.status.as_str(),
        "reason": b.reason,
        "started_at": b.started_at,
        "finished_at": b.finished_at,
        "duration_ms": u64::try_from(b.duration.as_millis()).unwrap_or(u64::MAX),
        "log": blob(&b.log),
        "log_path": b.log.as_ref().and_then(|l| blob_file(data_dir, &l.digest)),
        "log_tail": b.log_tail,
        "output": blob(&b.output),
    })
}

/// The file of a content-addressed blob in the data folder's blob store.
fn blob_file(data_dir: &Path, digest: &str) -> Option<String> {
    let key = kiln_store::blob::content_key(digest).ok()?;
    Some(
        absolute(&data_dir.join("blobs").join(key))
            .display()
            .to_string(),
    )
}

async fn status(a: BuildStatusArgs) -> Result<i32, Failure> {
    let store = open_store(&a.store).await?;
    let mut latest = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.package_status(after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.origin.clone());
        let full = page.len() == 1000;
        latest.extend(page);
        if !full {
            break;
        }
    }
    match a.format {
        Format::Json => {
            let packages: Vec<Value> = latest
                .iter()
                .map(|b| build_json(b, &a.store.data_dir))
                .collect();
            print_json(&json!({ "packages": packages }));
        }
        Format::Text => {
            if latest.is_empty() {
                stdout_line("no package builds yet");
                return Ok(exit::OK);
            }
            let width = latest
                .iter()
                .map(|b| b.origin.len())
                .max()
                .unwrap_or(6)
                .max(6);
            stdout_line(&format!(
                "{:<width$}  {:<10}  {:<9}  {:>8}  {:<20}  KEY",
                "ORIGIN", "VERSION", "STATUS", "TIME", "FINISHED"
            ));
            let mut by_status: HashMap<&str, usize> = HashMap::new();
            for b in &latest {
                *by_status.entry(b.status.as_str()).or_default() += 1;
                stdout_line(&format!(
                    "{:<width$}  {:<10}  {:<9}  {:>8}  {:<20}  {}",
                    b.origin,
                    b.version,
                    b.status.as_str(),
                    secs(b.duration),
                    b.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
                    &b.key[..12.min(b.key.len())]
                ));
            }
            let counts: Vec<String> = PackageBuildStatus::ALL
                .iter()
                .filter_map(|s| by_status.get(s.as_str()).map(|n| format!("{n} {s}")))
                .collect();
            stdout_line(&format!("{} packages: {}", latest.len(), counts.join(", ")));
        }
    }
    Ok(exit::OK)
}

async fn history(a: BuildHistoryArgs) -> Result<i32, Failure> {
    if !kiln_core::packages::is_origin(&a.origin) {
        return Err(Failure::invalid(format!(
            "`{}` is not an origin (\"category/name\", one slash)",
            a.origin
        )));
    }
    let store = open_store(&a.store).await?;
    let limit = if a.limit == 0 { u32::MAX } else { a.limit };
    let builds = store.package_history(&a.origin, None, limit).await?;
    match a.format {
        Format::Json => {
            let builds: Vec<Value> = builds
                .iter()
                .map(|b| build_json(b, &a.store.data_dir))
                .collect();
            print_json(&json!({ "origin": a.origin, "builds": builds }));
        }
        Format::Text => {
            if builds.is_empty() {
                stdout_line(&format!("no builds of {} yet", a.origin));
                return Ok(exit::OK);
            }
            for b in &builds {
                stdout_line(&format!(
                    "{}  {:<9}  {:>8}  {}  key {}{}",
                    b.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
                    b.status.as_str(),
                    secs(b.duration),
                    b.version,
                    b.key,
                    b.reason
                        .as_deref()
                        .map(|r| format!("  ({r})"))
                        .unwrap_or_default()
                ));
                if let Some(path) = b
                    .log
                    .as_ref()
                    .and_then(|l| blob_file(&a.store.data_dir, &l.digest))
                {
                    stdout_line(&format!("    log: {path}"));
                }
                if b.status == PackageBuildStatus::Failure {
                    for line in b
                        .log_tail
                        .lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .iter()
                        .rev()
                    {
                        stdout_line(&format!("    | {line}"));
                    }
                }
            }
        }
    }
    Ok(exit::OK)
}

/// How sandboxed `fetch` phases reach the network: through a proxy checking the policy of
/// `egress`, relayed into the sandbox by this very binary.
pub(crate) fn fetch_egress(
    egress: &crate::args::EgressArgs,
) -> Result<Option<kiln_engine::packages::FetchEgress>, Failure> {
    let policy = egress.policy()?;
    let relay = std::env::current_exe().map_err(|e| {
        Failure::internal(format!(
            "failed to find kiln's own executable for the fetch phase's relay: {e}"
        ))
    })?;
    Ok(Some(kiln_engine::packages::FetchEgress { policy, relay }))
}

/// The sandbox of `--sandbox MODE`, probed off the async threads; `auto`'s warning, when
/// builds cannot be confined here, is printed once on stderr. `require` without a working
/// bubblewrap: exit 3 naming why.
pub(crate) async fn detect_sandbox(mode: SandboxMode) -> Result<Sandbox, Failure> {
    sandbox_probed(probe_sandbox(mode)).await
}

/// Starts probing the sandbox of `--sandbox MODE` on the blocking pool.
fn probe_sandbox(
    mode: SandboxMode,
) -> tokio::task::JoinHandle<Result<Sandbox, kiln_exec::SandboxError>> {
    tokio::task::spawn_blocking(move || Sandbox::detect(mode))
}

/// The sandbox [`probe_sandbox`] found, as [`detect_sandbox`] answers.
async fn sandbox_probed(
    probe: tokio::task::JoinHandle<Result<Sandbox, kiln_exec::SandboxError>>,
) -> Result<Sandbox, Failure> {
    let sandbox = probe
        .await
        .map_err(|e| Failure::internal(format!("failed to detect the sandbox: {e}")))?
        .map_err(|e| {
            Failure::internal(format!(
                "--sandbox require: builds cannot be sandboxed here: {e}"
            ))
        })?;
    if let Some(warning) = sandbox.warning() {
        stderr_line(warning);
    }
    Ok(sandbox)
}
