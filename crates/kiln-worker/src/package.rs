//! A package job on this worker (an instance of a `packages:` job, DESIGN.md "Package trees"):
//! the package is built as `kiln build` builds it, by the same phases (`kiln_exec::package`):
//! a scratch copy of its folder from the job's source, its `$KILN_DEPS` closure laid out from
//! the outputs the server sends (kept here by digest, so the packages many depend on are
//! fetched once), `fetch`, the distfile checks and `build` under the sandbox mode the server
//! builds with. Its `$KILN_OUT` goes back as a tar archive and its log as it is; the server
//! checks, keeps and records them, as it would a build of its own.
//!
//! Unlike the server's pool, a worker has no egress policy: a confined `fetch` phase reaches
//! the network as the worker's own job steps do.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_core::ids::JobStatus;
use kiln_core::packages::Distfile;
use kiln_exec::JobOutcome;
use kiln_exec::package::{
    BUILD_PATH, BuildLog, FetchNetwork, Phases, Stop, blocking, build_env, copy_tree, lay_out_deps,
    machine_facts, run_phases,
};
use kiln_exec::{Confinement, Limits, Sandbox, SandboxMode};
use kiln_proto::workers::{AssignedJob, PackageAssignment, ReportEvent};
use serde_json::Map;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::job::{Context, describe, log_event, unpack_source};

/// Long enough for a large output on a slow link.
const TRANSFER: Duration = Duration::from_secs(3600);

/// The sandboxes this worker detected, one per mode asked for (detection probes bwrap: once).
pub(crate) type Sandboxes = Arc<tokio::sync::Mutex<Vec<(SandboxMode, Result<Sandbox, String>)>>>;

/// Builds the package of `a` in `dir`, reporting its log on `tx` as it comes.
pub(crate) async fn build(
    ctx: &Context,
    a: &AssignedJob,
    pkg: &PackageAssignment,
    dir: &Path,
    tx: &mpsc::UnboundedSender<ReportEvent>,
    cancel: &CancellationToken,
) -> JobOutcome {
    let (tap, mut pieces) = mpsc::unbounded_channel::<Vec<u8>>();
    let forward = {
        let tx = tx.clone();
        async move {
            while let Some(data) = pieces.recv().await {
                let _ = tx.send(log_event(0, data));
            }
        }
    };
    let mut log = BuildLog::new(Some(tap));
    let work = async {
        let ended = steps(ctx, a, pkg, dir, tx, &mut log, cancel).await;
        let (status, error) = match ended {
            Ok(()) => (JobStatus::Success, None),
            Err(stop) => {
                let why = stop.note(&mut log);
                match stop {
                    Stop::Cancelled => (JobStatus::Cancelled, Some(why)),
                    Stop::Failed(_) => (JobStatus::Failure, Some(why)),
                }
            }
        };
        // The log goes up whatever happened (the server keeps it with the build's row).
        let file = dir.join("build.log");
        let sent = match tokio::fs::write(&file, log.data()).await {
            Ok(()) => upload(ctx, a, "log", &file).await,
            Err(e) => Err(format!("cannot write {}: {e}", file.display())),
        };
        if let Err(e) = sent {
            tracing::warn!(job = %a.job, error = %e, "cannot send a package build's log");
        }
        drop(log);
        (status, error)
    };
    let ((status, error), ()) = tokio::join!(work, forward);
    JobOutcome {
        status,
        outputs: Map::new(),
        continue_on_error: false,
        error,
    }
}

/// Everything from the job's source to its uploaded output.
async fn steps(
    ctx: &Context,
    a: &AssignedJob,
    pkg: &PackageAssignment,
    dir: &Path,
    tx: &mpsc::UnboundedSender<ReportEvent>,
    log: &mut BuildLog,
    cancel: &CancellationToken,
) -> Result<(), Stop> {
    let failed = |what: &str, e: String| Stop::Failed(format!("kiln could not {what}: {e}"));
    log.line(&format!("{} {} (key {})", pkg.origin, pkg.version, pkg.key));
    same_machine(pkg)?;
    let distfiles = distfiles(pkg)?;
    let sandbox = sandbox(ctx, &pkg.sandbox).await?;
    if let Some(warning) = sandbox.warning() {
        log.line(warning);
    }
    let workspace = dir.join("workspace");
    tokio::fs::create_dir_all(&workspace)
        .await
        .map_err(|e| failed("make the job's folder", e.to_string()))?;
    unpack_source(ctx, a, &workspace)
        .await
        .map_err(Stop::Failed)?;
    let _ = tx.send(ReportEvent::Started);

    // Through symlinks of the source, neither may lead out of it.
    let tree = inside(&workspace, &workspace.join(&pkg.tree), "tree")?;
    let folder = inside(&workspace, &tree.join(&pkg.origin), "package folder")?;
    let (src, out, deps) = (dir.join("src"), dir.join("out"), dir.join("deps"));
    let (from, to) = (folder, src.clone());
    blocking(move || copy_tree(&from, &to))
        .await
        .map_err(|e| failed("copy the package's folder", e))?;
    tokio::fs::create_dir_all(&out)
        .await
        .map_err(|e| failed("create", format!("{}: {e}", out.display())))?;
    // The cached outputs this build takes stay until they are linked into its `$KILN_DEPS`.
    let digests: Vec<String> = pkg.deps.iter().map(|d| d.output.clone()).collect();
    let pin = ctx.outputs.pin(&digests);
    let mut layout = Vec::with_capacity(pkg.deps.len());
    for dep in &pkg.deps {
        if cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        if !is_relative_inside(&dep.origin) {
            return Err(Stop::Failed(format!(
                "the server sent a dependency origin that is not a relative path: `{}`",
                dep.origin
            )));
        }
        let output = dependency_output(ctx, a, &dep.output).await.map_err(|e| {
            Stop::Failed(format!("the output of the dependency {}: {e}", dep.origin))
        })?;
        layout.push((output, deps.join(&dep.origin)));
    }
    let target = deps.clone();
    blocking(move || lay_out_deps(&target, &layout, None))
        .await
        .map_err(|e| failed("lay out $KILN_DEPS", e))?;
    drop(pin);

    let env = build_env(&src, &out, &deps, &pkg.origin, &pkg.version, &pkg.env);
    let phases = Phases {
        fetch: pkg.fetch.as_deref(),
        distfiles: &distfiles,
        build: &pkg.build,
        src: &src,
        out: &out,
        base: Confinement::new(&src)
            .read_only(&deps)
            .read_only(&tree)
            .hidden(&ctx.work_dir),
        env: &env,
        sandbox: &sandbox,
        limits: Limits::default(),
        fetch_network: FetchNetwork::Host,
    };
    run_phases(&phases, log, cancel).await?;

    log.line("sending the output");
    let archive = dir.join("out.tar");
    let (packed_from, packed_to) = (out.clone(), archive.clone());
    blocking(move || pack(&packed_from, &packed_to))
        .await
        .map_err(|e| failed("pack $KILN_OUT", e))?;
    upload(ctx, a, "output", &archive)
        .await
        .map_err(|e| Stop::Failed(format!("the output in $KILN_OUT was not kept: {e}")))
}

/// `path` resolved (symlinks followed), which must be a folder inside `root`.
fn inside(root: &Path, path: &Path, what: &str) -> Result<PathBuf, Stop> {
    let fail = |why: String| Stop::Failed(format!("the package's {what} {why}"));
    let root = root
        .canonicalize()
        .map_err(|e| fail(format!("cannot be found: {e}")))?;
    let resolved = path
        .canonicalize()
        .map_err(|e| fail(format!("{} cannot be found: {e}", path.display())))?;
    if !resolved.starts_with(&root) || !resolved.is_dir() {
        return Err(fail(format!(
            "{} is not a folder inside the job's source",
            path.display()
        )));
    }
    Ok(resolved)
}

/// Refuses to build where this machine's facts in the key (`os`, `arch`, `sh`) differ from
/// the server's: the output would be kept under a key that does not describe it.
fn same_machine(pkg: &PackageAssignment) -> Result<(), Stop> {
    let path = pkg
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(BUILD_PATH, |(_, v)| v.as_str());
    let mine = machine_facts(path);
    let differ: Vec<String> = pkg
        .machine
        .iter()
        .filter_map(|(name, theirs)| {
            let here = mine
                .iter()
                .find(|(k, _)| k == name)
                .map_or("(unknown)", |(_, v)| v.as_str());
            (here != theirs).then(|| format!("{name} is `{here}` here, `{theirs}` on the server"))
        })
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Stop::Failed(format!(
        "this worker's toolchain differs from the server's, whose key the output would be kept \
         under ({}): give the package job `runs-on` labels of workers like the server",
        differ.join("; ")
    )))
}

/// The manifest's distfiles as the server sent them.
fn distfiles(pkg: &PackageAssignment) -> Result<Vec<Distfile>, Stop> {
    pkg.distfiles
        .iter()
        .map(|d| {
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&d.sha256, &mut sha256).map_err(|_| {
                Stop::Failed(format!(
                    "the server sent a distfile checksum that is not SHA-256 hex: {}",
                    d.name
                ))
            })?;
            Ok(Distfile {
                name: d.name.clone(),
                sha256,
            })
        })
        .collect()
}

/// This worker's sandbox for the server's `mode`, detected once per mode.
async fn sandbox(ctx: &Context, mode: &str) -> Result<Sandbox, Stop> {
    let mode: SandboxMode = mode.parse().map_err(|e| {
        Stop::Failed(format!(
            "the server asked for a sandbox this worker does not know: {e}"
        ))
    })?;
    let mut known = ctx.sandboxes.lock().await;
    if let Some((_, found)) = known.iter().find(|(m, _)| *m == mode) {
        return found.clone().map_err(Stop::Failed);
    }
    let detected = tokio::task::spawn_blocking(move || Sandbox::detect(mode))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| format!("the server builds packages with the sandbox `{mode}`, which this worker cannot give: {e}"));
    known.push((mode, detected.clone()));
    detected.map_err(Stop::Failed)
}

/// The folder holding the output `digest` on this worker: fetched from the server and
/// unpacked the first time a build needs it, kept for the next ones (within the cache's
/// limit: `crate::outputs`).
async fn dependency_output(
    ctx: &Context,
    a: &AssignedJob,
    digest: &str,
) -> Result<PathBuf, String> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{digest}` is not a SHA-256"));
    }
    let outputs = ctx.outputs.dir().to_path_buf();
    let kept = outputs.join(digest);
    let cache = ctx.outputs.clone();
    let known = digest.to_owned();
    if blocking(move || Ok(cache.hit(&known))).await? {
        return Ok(kept);
    }
    let path = format!(
        "/api/v1/worker/{}/jobs/{}/package/deps/{digest}?token={}",
        ctx.worker, a.job, a.token
    );
    let bytes = ctx
        .api
        .get_bytes(&path, TRANSFER)
        .await
        .map_err(|e| format!("cannot fetch it: {}", describe(&e)))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != digest {
        return Err(format!(
            "the server sent bytes that hash to {got}, not {digest}"
        ));
    }
    let partial = outputs.join(format!("{digest}.{}.part", a.job));
    let (into, done) = (partial.clone(), kept.clone());
    let (cache, added) = (ctx.outputs.clone(), digest.to_owned());
    blocking(move || {
        let _ = std::fs::remove_dir_all(&into);
        std::fs::create_dir_all(&into).map_err(|e| format!("{}: {e}", into.display()))?;
        let mut archive = tar::Archive::new(&bytes[..]);
        archive.set_preserve_permissions(true);
        // `unpack` writes nothing outside `into` (entries with `..` or absolute paths are
        // refused); the server refuses outputs with links out of their folder.
        if let Err(e) = archive.unpack(&into) {
            let _ = std::fs::remove_dir_all(&into);
            return Err(format!("cannot unpack it: {e}"));
        }
        // Builds see it through hard links: read-only, so that an unconfined one cannot
        // change what the next build is given.
        read_only(&into);
        // Another build may have kept it meanwhile: theirs is the same.
        if std::fs::rename(&into, &done).is_err() {
            let _ = std::fs::remove_dir_all(&into);
            if !done.is_dir() {
                return Err(format!("cannot keep it at {}", done.display()));
            }
        }
        cache.added(&added);
        Ok(())
    })
    .await?;
    Ok(kept)
}

/// Takes the write bits off every file under `dir`.
fn read_only(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ty) = entry.file_type() else { continue };
        if ty.is_dir() {
            read_only(&entry.path());
        } else if ty.is_file()
            && let Ok(meta) = entry.metadata()
        {
            let mode = meta.permissions().mode() & !0o222;
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode));
        }
    }
}

/// Packs the folder `dir`'s content into the tar file `to` (symlinks as symlinks: the server
/// checks them, and packs the output again its own way).
fn pack(dir: &Path, to: &Path) -> Result<(), String> {
    let file = std::fs::File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| format!("{}: {e}", to.display()))
}

/// Sends the file `file` as the part `part` (`output`, `log`) of the package job `a`.
async fn upload(ctx: &Context, a: &AssignedJob, part: &str, file: &Path) -> Result<(), String> {
    let path = format!(
        "/api/v1/worker/{}/jobs/{}/package/{part}?token={}",
        ctx.worker, a.job, a.token
    );
    ctx.api
        .put_file(&path, file, TRANSFER)
        .await
        .map_err(|e| describe(&e))
}

/// Whether `path` is relative and stays inside the folder it is joined to.
fn is_relative_inside(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(machine: Vec<(String, String)>) -> PackageAssignment {
        PackageAssignment {
            origin: "lib/base".into(),
            version: "1".into(),
            key: "0".repeat(64),
            tree: "tree".into(),
            fetch: None,
            build: "true".into(),
            distfiles: Vec::new(),
            deps: Vec::new(),
            env: Vec::new(),
            machine,
            sandbox: "off".into(),
        }
    }

    #[test]
    fn a_worker_unlike_the_server_refuses_to_build_naming_what_differs() {
        assert!(same_machine(&assignment(machine_facts(BUILD_PATH))).is_ok());
        let mut other = machine_facts(BUILD_PATH);
        other[1].1 = "sparc64".into();
        let Err(Stop::Failed(why)) = same_machine(&assignment(other)) else {
            panic!("a machine of another architecture builds");
        };
        assert!(
            why.contains("arch is") && why.contains("`sparc64` on the server"),
            "{why}"
        );
        assert!(!why.contains("os is"), "{why}");
    }

    #[test]
    fn only_relative_paths_inside_pass() {
        assert!(is_relative_inside("tree"));
        assert!(is_relative_inside("devel/libfoo"));
        assert!(is_relative_inside("./ports"));
        assert!(!is_relative_inside(""));
        assert!(!is_relative_inside("/etc"));
        assert!(!is_relative_inside("../up"));
        assert!(!is_relative_inside("a/../../b"));
    }
}
