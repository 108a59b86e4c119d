//! A project on disk: its workflow files, its file tree and its revision.
//!
//! This is the I/O around `kiln-core`'s pure parser: find the workflow folder (`.kiln/workflows`,
//! or `.github/workflows` when a project has no `.kiln/workflows`, so that a repository can try
//! kiln without moving files), read and parse every file, and snapshot the project's files so
//! that each job gets a fresh copy of the same tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use kiln_core::workflow::{Diagnostic, Diagnostics, Pos, Severity, Workflow, parse_workflow};
use sha2::{Digest, Sha256};

use crate::EngineError;

/// The folders searched for workflows, in order; the first that exists wins.
pub const WORKFLOW_DIRS: [&str; 2] = [".kiln/workflows", ".github/workflows"];

/// A project folder with its parsed workflows.
#[derive(Debug)]
pub struct LocalProject {
    pub root: PathBuf,
    /// The folder the workflows came from (relative, e.g. `.kiln/workflows`).
    pub workflow_dir: &'static str,
    pub workflows: Vec<Workflow>,
}

/// Read and parse every workflow of the project at `root`.
///
/// Every file is parsed even when an earlier one fails, so that one report lists every
/// problem; any error makes the whole load fail with [`EngineError::Invalid`].
pub fn load_project(root: &Path) -> Result<LocalProject, EngineError> {
    let meta = fs::metadata(root).map_err(|source| EngineError::Io {
        action: "read the project folder",
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(EngineError::Usage(format!(
            "{} is not a folder: kiln run takes a project folder",
            root.display()
        )));
    }
    let Some(workflow_dir) = WORKFLOW_DIRS.into_iter().find(|d| root.join(d).is_dir()) else {
        return Err(EngineError::Usage(format!(
            "no workflows in {}: put workflow files in .kiln/workflows/ (or .github/workflows/)",
            root.display()
        )));
    };
    let dir = root.join(workflow_dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|source| EngineError::Io {
            action: "list the workflow folder",
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yml") | Some("yaml")
                )
        })
        .collect();
    files.sort();

    let mut workflows = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let name = format!(
            "{workflow_dir}/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let source = match fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                problems.push(Diagnostic {
                    severity: Severity::Error,
                    file: name,
                    pos: Pos { line: 1, column: 1 },
                    path: String::new(),
                    message: format!("cannot read the file: {e}"),
                });
                continue;
            }
        };
        match parse_workflow(&name, &source) {
            Ok(wf) => workflows.push(wf),
            Err(d) => problems.extend(d.0),
        }
    }
    if problems.iter().any(|d| d.severity == Severity::Error) {
        return Err(EngineError::Invalid(Diagnostics(problems)));
    }
    Ok(LocalProject {
        root: root.to_path_buf(),
        workflow_dir,
        workflows,
    })
}

impl LocalProject {
    /// The workflows a `kiln run` should start: the one named by `selector` (file name, stem,
    /// path or `name:`, case-insensitive for names), or every workflow `event` triggers.
    pub fn select(
        &self,
        selector: Option<&str>,
        event: &str,
    ) -> Result<Vec<&Workflow>, EngineError> {
        if let Some(sel) = selector {
            let found: Vec<&Workflow> = self
                .workflows
                .iter()
                .filter(|wf| workflow_matches(wf, sel))
                .collect();
            if found.is_empty() {
                let known: Vec<String> = self
                    .workflows
                    .iter()
                    .map(|wf| file_name(&wf.file).to_owned())
                    .collect();
                return Err(EngineError::Usage(format!(
                    "no workflow named `{sel}` in {}/{}; there are: {}",
                    self.root.display(),
                    self.workflow_dir,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            return Ok(found);
        }
        let found: Vec<&Workflow> = self
            .workflows
            .iter()
            .filter(|wf| kiln_core::plan::triggered_by(wf, event))
            .collect();
        if found.is_empty() {
            return Err(EngineError::Usage(format!(
                "no workflow in {}/{} is triggered by the event `{event}`; name one with --workflow or pick another --event",
                self.root.display(),
                self.workflow_dir
            )));
        }
        Ok(found)
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn workflow_matches(wf: &Workflow, sel: &str) -> bool {
    let name = file_name(&wf.file);
    let stem = name
        .strip_suffix(".yml")
        .or_else(|| name.strip_suffix(".yaml"))
        .unwrap_or(name);
    wf.file == sel
        || name == sel
        || stem == sel
        || wf
            .name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(sel))
}

/// The files that make up a job's workspace, relative to the project root.
///
/// For a git work tree: tracked files and untracked files that are not ignored, plus `.git`
/// (DESIGN.md "Workflow files"); for a plain folder: every file.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub root: PathBuf,
    /// Every file (or symlink) to copy, relative to `root`, `.git/…` included for a work tree.
    pub files: Vec<PathBuf>,
    /// Empty folders to make: git needs `.git/refs/…` and `.git/objects/…` to exist even when
    /// they hold nothing (packed refs, objects borrowed from a mirror).
    pub dirs: Vec<PathBuf>,
}

/// What a plain folder or a git work tree says about its revision.
#[derive(Debug, Clone)]
pub struct Revision {
    /// The commit, or for a plain folder the SHA-256 of its file tree.
    pub sha: String,
    /// `refs/heads/<branch>` of a git work tree; `refs/heads/main` otherwise.
    pub git_ref: String,
}

/// Take the file list of the project and compute its revision. Files under any of `exclude`
/// (absolute paths, such as kiln's own data folder inside the project) are left out.
pub fn snapshot(root: &Path, exclude: &[PathBuf]) -> Result<(Snapshot, Revision), EngineError> {
    let git = root.join(".git").exists() && git_available();
    let files = if git {
        git_files(root)?
    } else {
        let mut out = Vec::new();
        walk(root, Path::new(""), &mut out).map_err(|source| EngineError::Io {
            action: "list the project's files",
            path: root.to_path_buf(),
            source,
        })?;
        out.sort();
        out
    };
    let mut files: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| {
            let abs = root.join(f);
            !exclude.iter().any(|x| abs.starts_with(x))
        })
        .collect();
    let mut dirs = Vec::new();
    if git {
        let mut git_files = Vec::new();
        walk_all(root, Path::new(".git"), &mut git_files, &mut dirs).map_err(|source| {
            EngineError::Io {
                action: "list the files of",
                path: root.join(".git"),
                source,
            }
        })?;
        files.extend(git_files);
    }
    let revision = if git {
        let sha = git_out(root, &["rev-parse", "HEAD"]).unwrap_or_else(|| tree_hash(root, &files));
        let git_ref = git_out(root, &["symbolic-ref", "-q", "HEAD"])
            .unwrap_or_else(|| "refs/heads/main".to_owned());
        Revision { sha, git_ref }
    } else {
        Revision {
            sha: tree_hash(root, &files),
            git_ref: "refs/heads/main".to_owned(),
        }
    };
    Ok((
        Snapshot {
            root: root.to_path_buf(),
            files,
            dirs,
        },
        revision,
    ))
}

fn git_available() -> bool {
    Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn git_out(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn git_files(root: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .map_err(|source| EngineError::Io {
            action: "run `git ls-files` in",
            path: root.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(EngineError::Io {
            action: "run `git ls-files` in",
            path: root.to_path_buf(),
            source: io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        });
    }
    let mut files: Vec<PathBuf> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
        // A tracked file deleted in the work tree is not part of "the working tree as it is".
        .filter(|p| root.join(p).symlink_metadata().is_ok())
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Every file below `root/rel` (for `.git`, which `git ls-files` does not list).
/// Every file under `rel`, and the folders that hold none (`empty`).
fn walk_all(
    root: &Path,
    rel: &Path,
    out: &mut Vec<PathBuf>,
    empty: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let mut any = false;
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        any = true;
        let path = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            walk_all(root, &path, out, empty)?;
        } else {
            out.push(path);
        }
    }
    if !any {
        empty.push(rel.to_path_buf());
    }
    Ok(())
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        // kiln's own data folder inside a project is never part of the project.
        if rel.as_os_str().is_empty() && (name == "kiln-data" || name == ".git") {
            continue;
        }
        let path = rel.join(&name);
        let ty = entry.file_type()?;
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// SHA-256 over the sorted (path, content) pairs of the tree: a stable stand-in for a commit
/// id when the project is not a git repository.
fn tree_hash(root: &Path, files: &[PathBuf]) -> String {
    let mut sorted: BTreeMap<String, &PathBuf> = BTreeMap::new();
    for f in files {
        sorted.insert(f.to_string_lossy().into_owned(), f);
    }
    let mut h = Sha256::new();
    for (name, f) in sorted {
        h.update(name.as_bytes());
        h.update([0]);
        if let Ok(bytes) = fs::read(root.join(f)) {
            h.update(Sha256::digest(&bytes));
        }
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// What a workspace slot last received from a snapshot, per file: where it was copied from
/// (that file's size and modification time then) and the size and modification time the
/// copy had right after kiln wrote it. A file is copied again when either side changed — a
/// job touched the copy, or the next job's snapshot (another project, another commit) has
/// a different file there.
pub type Written = HashMap<PathBuf, Copied>;

/// One file as [`Written`] remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    from: PathBuf,
    from_len: u64,
    from_mtime: SystemTime,
    len: u64,
    mtime: SystemTime,
}

impl Snapshot {
    /// Copy the snapshot into `dest` (which must exist and be empty).
    pub fn materialize(&self, dest: &Path) -> io::Result<()> {
        let mut written = Written::new();
        self.refresh(dest, &mut written)
    }

    /// Make `dest` hold exactly the snapshot again, as a fresh copy would.
    ///
    /// A workspace folder is reused from job to job (one per slot) because creating and
    /// deleting thousands of inodes per second is what a file system does worst (ext4 scans
    /// for recently deleted inodes at every allocation). So: anything the last job added is
    /// removed, and every snapshot file is rewritten in place unless it still has the size and
    /// modification time it had right after kiln last wrote it — the same stat-based check git
    /// uses for its index.
    /// The snapshot as a tar archive (what a remote worker unpacks as the job's workspace):
    /// its folders, then its files and symbolic links (as links), with their modes.
    pub fn to_tar(&self) -> io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Deterministic);
        for d in &self.dirs {
            tar.append_dir(d, self.root.join(d))?;
        }
        for rel in &self.files {
            tar.append_path_with_name(self.root.join(rel), rel)?;
        }
        tar.into_inner()
    }

    pub fn refresh(&self, dest: &Path, written: &mut Written) -> io::Result<()> {
        fs::create_dir_all(dest)?;
        let wanted: HashSet<&Path> = self.files.iter().map(PathBuf::as_path).collect();
        let mut dirs: HashSet<&Path> = HashSet::new();
        for f in self.files.iter().chain(&self.dirs) {
            let mut p = f.parent();
            while let Some(d) = p {
                if d.as_os_str().is_empty() || !dirs.insert(d) {
                    break;
                }
                p = d.parent();
            }
        }
        for d in &self.dirs {
            dirs.insert(d.as_path());
        }
        prune(dest, Path::new(""), &wanted, &dirs, written)?;
        for d in &self.dirs {
            fs::create_dir_all(dest.join(d))?;
        }
        let mut made: HashSet<PathBuf> = HashSet::new();
        for rel in &self.files {
            let from = self.root.join(rel);
            let to = dest.join(rel);
            if let Some(parent) = to.parent()
                && !made.contains(parent)
            {
                fs::create_dir_all(parent)?;
                made.insert(parent.to_path_buf());
            }
            let src = from.symlink_metadata()?;
            let current = to.symlink_metadata().ok();
            if src.file_type().is_symlink() {
                if current.is_some() {
                    remove_any(&to)?;
                }
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
                written.remove(rel);
                continue;
            }
            if src.is_dir() {
                // A submodule or nested repository shows up as a folder: copy it whole.
                if current.is_some() {
                    remove_any(&to)?;
                }
                copy_dir(&from, &to)?;
                written.remove(rel);
                continue;
            }
            match &current {
                Some(m) if m.is_file() => {
                    let unchanged = written.get(rel).is_some_and(|c| {
                        m.len() == c.len
                            && m.modified().ok() == Some(c.mtime)
                            && c.from == from
                            && src.len() == c.from_len
                            && src.modified().ok() == Some(c.from_mtime)
                    });
                    if unchanged {
                        continue;
                    }
                }
                Some(_) => remove_any(&to)?,
                None => {}
            }
            fs::copy(&from, &to)?;
            let after = to.metadata()?;
            if let (Ok(mtime), Ok(from_mtime)) = (after.modified(), src.modified()) {
                written.insert(
                    rel.clone(),
                    Copied {
                        from,
                        from_len: src.len(),
                        from_mtime,
                        len: after.len(),
                        mtime,
                    },
                );
            }
        }
        Ok(())
    }
}

/// Remove from `dest` everything that is neither a snapshot file nor a folder holding one.
fn prune(
    dest: &Path,
    rel: &Path,
    wanted: &HashSet<&Path>,
    dirs: &HashSet<&Path>,
    written: &mut Written,
) -> io::Result<()> {
    let dir = dest.join(rel);
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let path = rel.join(entry.file_name());
        let ty = entry.file_type()?;
        if ty.is_dir() {
            if dirs.contains(path.as_path()) {
                prune(dest, &path, wanted, dirs, written)?;
            } else {
                fs::remove_dir_all(entry.path())?;
                written.retain(|k, _| !k.starts_with(&path));
            }
        } else if !wanted.contains(path.as_path()) {
            fs::remove_file(entry.path())?;
            written.remove(&path);
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    let meta = path.symlink_metadata()?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let dst = to.join(entry.file_name());
        if ty.is_dir() {
            copy_dir(&entry.path(), &dst)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &dst)?;
        } else {
            fs::copy(entry.path(), &dst)?;
        }
    }
    Ok(())
}

/// A git project's mirror in the engine's data dir and the commit its default branch is at;
/// `None` when it has not been fetched yet or has no commits.
pub(crate) async fn default_head(
    data_dir: &Path,
    project: &kiln_proto::Project,
) -> Result<Option<(crate::source::GitRepo, String)>, EngineError> {
    let mirror = data_dir.join("repos").join(format!("{}.git", project.id));
    if !mirror.exists() {
        return Ok(None);
    }
    let src = |e| EngineError::Source(Box::new(e));
    let repo = crate::source::GitRepo::open(&mirror).await.map_err(src)?;
    let Some(branch) = repo.default_branch().await.map_err(src)? else {
        return Ok(None);
    };
    let sha = repo.resolve(&branch).await.map_err(src)?;
    Ok(Some((repo, sha)))
}

/// A project's workflows as they are now (see [`current_workflow_files`]), parsed, and the
/// files that could not be read or parsed — whose stored schedules and watches a sync keeps
/// as they were. `None`: nothing to read yet (a mirror not fetched).
pub(crate) async fn current_workflows(
    data_dir: &Path,
    project: &kiln_proto::Project,
) -> Result<Option<(Vec<Workflow>, Vec<String>)>, EngineError> {
    let Some(files) = current_workflow_files(data_dir, project).await? else {
        return Ok(None);
    };
    let mut parsed = Vec::new();
    let mut unreadable = Vec::new();
    for (file, source) in files {
        match source.map(|s| parse_workflow(&file, &s)) {
            Some(Ok(wf)) => parsed.push(wf),
            Some(Err(d)) => {
                tracing::debug!(project = %project.name, file, problems = %d, "a workflow does not parse; what it declared stays as it was");
                unreadable.push(file);
            }
            None => unreadable.push(file),
        }
    }
    Ok(Some((parsed, unreadable)))
}

/// `(file, contents)` of a project's workflows as they are now — a folder as it is, a git
/// project's at its default branch — or `None` when there is nothing to read yet (a mirror
/// not fetched). `None` contents: a file that cannot be read.
pub(crate) async fn current_workflow_files(
    data_dir: &Path,
    project: &kiln_proto::Project,
) -> Result<Option<Vec<(String, Option<String>)>>, EngineError> {
    let path = Path::new(&project.source);
    if path.is_absolute() {
        let root = path.to_path_buf();
        return tokio::task::spawn_blocking(move || Ok(Some(folder_workflows(&root))))
            .await
            .map_err(|e| EngineError::Usage(format!("failed to read a project: {e}")))?;
    }
    let Some((repo, sha)) = default_head(data_dir, project).await? else {
        return Ok(None);
    };
    let files = repo
        .workflow_files(&sha)
        .await
        .map_err(|e| EngineError::Source(Box::new(e)))?;
    Ok(Some(files.into_iter().map(|(f, s)| (f, Some(s))).collect()))
}

/// The workflow files of a project folder, named as [`load_project`] names
/// them (`.kiln/workflows/x.yml`); `None` contents for a file that cannot be read.
pub(crate) fn folder_workflows(root: &Path) -> Vec<(String, Option<String>)> {
    let Some(dir) = WORKFLOW_DIRS.into_iter().find(|d| root.join(d).is_dir()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yml") | Some("yaml")
                )
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = format!(
                "{dir}/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            );
            (name, std::fs::read_to_string(&p).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_folder_snapshot_skips_kiln_data_and_hashes_content() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("src")).unwrap();
        fs::create_dir_all(dir.path().join("kiln-data")).unwrap();
        fs::write(dir.path().join("src/a.txt"), "a").unwrap();
        fs::write(dir.path().join("kiln-data/kiln.db"), "x").unwrap();
        let (snap, rev) = snapshot(dir.path(), &[]).unwrap();
        assert_eq!(snap.files, vec![PathBuf::from("src/a.txt")]);
        assert_eq!(rev.sha.len(), 64);
        fs::write(dir.path().join("src/a.txt"), "b").unwrap();
        let (_, rev2) = snapshot(dir.path(), &[]).unwrap();
        assert_ne!(
            rev.sha, rev2.sha,
            "a content change must change the tree hash"
        );

        let dest = tempfile::tempdir().unwrap();
        snap.materialize(dest.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dest.path().join("src/a.txt")).unwrap(),
            "b"
        );
    }

    #[test]
    fn a_reused_workspace_takes_another_snapshot_s_files() {
        // Two checkouts of one file at different commits (same size): the slot that held
        // the first must get the second's content.
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        fs::write(one.path().join("file.txt"), "content1").unwrap();
        fs::write(two.path().join("file.txt"), "content2").unwrap();
        let (a, _) = snapshot(one.path(), &[]).unwrap();
        let (b, _) = snapshot(two.path(), &[]).unwrap();
        let ws = tempfile::tempdir().unwrap();
        let mut written = Written::new();
        a.refresh(ws.path(), &mut written).unwrap();
        b.refresh(ws.path(), &mut written).unwrap();
        assert_eq!(
            fs::read_to_string(ws.path().join("file.txt")).unwrap(),
            "content2"
        );
        // And a change to the same source file is picked up too.
        fs::write(two.path().join("file.txt"), "content3").unwrap();
        b.refresh(ws.path(), &mut written).unwrap();
        assert_eq!(
            fs::read_to_string(ws.path().join("file.txt")).unwrap(),
            "content3"
        );
    }

    #[test]
    fn a_git_work_tree_s_empty_folders_are_kept() {
        if !git_available() {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .args(args)
                .current_dir(src.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .unwrap();
            assert!(
                ok.status.success(),
                "{}",
                String::from_utf8_lossy(&ok.stderr)
            );
        };
        git(&["init", "-q", "-b", "main"]);
        fs::write(src.path().join("f.txt"), "x").unwrap();
        git(&["add", "f.txt"]);
        git(&[
            "-c",
            "user.name=k",
            "-c",
            "user.email=k@k",
            "commit",
            "-qm",
            "one",
        ]);
        // Packed refs leave refs/heads empty; git still needs the folder.
        git(&["pack-refs", "--all"]);
        let (snap, _) = snapshot(src.path(), &[]).unwrap();
        assert!(
            snap.dirs.iter().any(|d| d == Path::new(".git/refs/heads")),
            "{:?}",
            snap.dirs
        );
        let ws = tempfile::tempdir().unwrap();
        snap.materialize(ws.path()).unwrap();
        let out = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(ws.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn refresh_restores_a_reused_workspace_to_the_snapshot() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("a/b")).unwrap();
        fs::write(src.path().join("a/b/keep.txt"), "original").unwrap();
        fs::write(src.path().join("top.txt"), "top").unwrap();
        let (snap, _) = snapshot(src.path(), &[]).unwrap();

        let ws = tempfile::tempdir().unwrap();
        let mut written = Written::new();
        snap.refresh(ws.path(), &mut written).unwrap();
        // What a job might do: change a file (same size), add files and folders, replace a
        // file by a folder, delete a file.
        fs::write(ws.path().join("a/b/keep.txt"), "CHANGED!").unwrap();
        fs::write(ws.path().join("a/new.txt"), "new").unwrap();
        fs::create_dir_all(ws.path().join("target/debug")).unwrap();
        fs::write(ws.path().join("target/debug/out"), "x").unwrap();
        fs::remove_file(ws.path().join("top.txt")).unwrap();
        fs::create_dir_all(ws.path().join("top.txt")).unwrap();

        snap.refresh(ws.path(), &mut written).unwrap();
        assert_eq!(
            fs::read_to_string(ws.path().join("a/b/keep.txt")).unwrap(),
            "original"
        );
        assert_eq!(
            fs::read_to_string(ws.path().join("top.txt")).unwrap(),
            "top"
        );
        assert!(!ws.path().join("a/new.txt").exists());
        assert!(!ws.path().join("target").exists());
        let mut left = Vec::new();
        walk_all(ws.path(), Path::new(""), &mut left, &mut Vec::new()).unwrap();
        left.sort();
        assert_eq!(
            left,
            vec![PathBuf::from("a/b/keep.txt"), PathBuf::from("top.txt")]
        );
    }
}
