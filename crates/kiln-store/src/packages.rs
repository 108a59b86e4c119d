//! Package builds as the store keeps them (DESIGN.md "Package trees"): every build of every
//! package, grouped by the `kiln build` invocation (session) that made it, and each
//! successful build's output as a content-addressed tar in the blob store.
//!
//! Three readers shape it. The cache: `kiln build` computes every package's key and asks
//! which keys have a successful build ([`crate::Store::cached_builds`], a few queries for a
//! whole tree, not one per package); a hit's output is restored from the blob store where a
//! dependent needs it ([`crate::Store::restore_package_output`]). The scheduler: each
//! origin's last successful duration weighs its critical path
//! ([`crate::Store::package_durations`]). People: `kiln build status`/`history` and the API's
//! `/packages` routes read the latest build of every origin and each origin's history.
//!
//! Rows are only ever inserted, and a whole batch of builds in one transaction
//! ([`crate::Store::record_package_builds`]): a 60,000-package tree must not cost 60,000
//! commits. Outputs are packed deterministically ([`pack_output`]: sorted entries, zeroed
//! times and owners), so an unchanged output is the same blob, and unpacked defensively
//! ([`unpack_output`]: absolute paths, `..`, links out of the folder and special files are
//! refused, never skipped), since a restored output lands inside other packages' builds.
//! Not here: computing keys (`kiln_core`), deciding what to build or run (the engine).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use crate::blob::ContentBlob;
use crate::error::StoreError;

kiln_core::typed_id!(
    /// One `kiln build` invocation (or one workflow job building a tree): the builds it
    /// recorded share it.
    BuildSessionId
);

kiln_core::typed_id!(
    /// One recorded package build.
    PackageBuildId
);

/// How a package build ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackageBuildStatus {
    /// Built; its output is stored.
    Success,
    Failure,
    /// Not run because a dependency failed (the build's `reason` names it).
    Skipped,
    /// Stopped (Ctrl-C) or never started because the session was stopped.
    Cancelled,
    /// Not run: a successful build with the same key exists and its output was reused.
    Cached,
}

impl PackageBuildStatus {
    pub const ALL: [PackageBuildStatus; 5] = [
        PackageBuildStatus::Success,
        PackageBuildStatus::Failure,
        PackageBuildStatus::Skipped,
        PackageBuildStatus::Cancelled,
        PackageBuildStatus::Cached,
    ];

    /// The stored (and displayed) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageBuildStatus::Success => "success",
            PackageBuildStatus::Failure => "failure",
            PackageBuildStatus::Skipped => "skipped",
            PackageBuildStatus::Cancelled => "cancelled",
            PackageBuildStatus::Cached => "cached",
        }
    }

    /// Whether a build in this status has an output (the store refuses one without).
    pub fn has_output(self) -> bool {
        matches!(
            self,
            PackageBuildStatus::Success | PackageBuildStatus::Cached
        )
    }
}

impl std::fmt::Display for PackageBuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PackageBuildStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a package build status"))
    }
}

/// One package build: what [`crate::Store::record_package_builds`] records and what the
/// history reads back (times to the millisecond).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageBuild {
    /// Chosen by the caller (`PackageBuildId::new()`), so it can name the build at once.
    pub id: PackageBuildId,
    /// From [`crate::Store::begin_build_session`].
    pub session: BuildSessionId,
    /// `CATEGORY/NAME`.
    pub origin: String,
    pub version: String,
    /// The package's cache key, SHA-256 in lowercase hex.
    pub key: String,
    pub status: PackageBuildStatus,
    /// Why it ended so, for people: `dependency devel/foo failed`, `exit status 2`, the
    /// build it was cached from…
    pub reason: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// How long the build ran (zero for skipped and cached builds): the scheduler's weight.
    pub duration: Duration,
    /// The build's whole log, content-addressed ([`crate::BlobStore::put_content`]).
    pub log: Option<ContentBlob>,
    /// The log's last lines ([`log_tail`]), shown in summaries without reading the blob.
    pub log_tail: String,
    /// The packed `$KILN_OUT` ([`crate::Store::store_package_output`]): present exactly
    /// when the status is `success` or `cached`.
    pub output: Option<ContentBlob>,
}

/// A successful build whose output a package with the same key can reuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedBuild {
    pub id: PackageBuildId,
    pub origin: String,
    pub version: String,
    pub finished_at: Timestamp,
    pub duration: Duration,
    pub output: ContentBlob,
}

/// How many packages a session (or the whole history) built, failed, skipped, found cached
/// and cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildCounts {
    pub built: i64,
    pub failed: i64,
    pub skipped: i64,
    pub cached: i64,
    pub cancelled: i64,
}

impl BuildCounts {
    /// Every package counted.
    pub fn total(&self) -> i64 {
        self.built + self.failed + self.skipped + self.cached + self.cancelled
    }

    /// Counts `n` more of `status`.
    pub fn add(&mut self, status: PackageBuildStatus, n: i64) {
        match status {
            PackageBuildStatus::Success => self.built += n,
            PackageBuildStatus::Failure => self.failed += n,
            PackageBuildStatus::Skipped => self.skipped += n,
            PackageBuildStatus::Cached => self.cached += n,
            PackageBuildStatus::Cancelled => self.cancelled += n,
        }
    }
}

/// One `kiln build` invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSession {
    pub id: BuildSessionId,
    /// The tree's folder, as the builder named it.
    pub tree: String,
    /// How many builds it ran at once.
    pub slots: u32,
    pub started_at: Timestamp,
    /// `None` while it runs — or for good, when its process died.
    pub finished_at: Option<Timestamp>,
    /// What [`crate::Store::finish_build_session`] reported; zeros until then.
    pub counts: BuildCounts,
}

/// Package figures for `/api/v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackageStats {
    /// The newest finished session (by start), with the counts it reported: what the last
    /// `kiln build` did.
    pub last_session: Option<BuildSession>,
    /// Every build ever recorded, by status (all time, all sessions).
    pub all_time: BuildCounts,
    /// Origins with at least one recorded build.
    pub origins: i64,
    /// Median and 95th percentile of the duration of every successful build ever recorded,
    /// nearest-rank, in milliseconds; `None` before the first success.
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

/// Why a package output could not be packed, stored, restored or unpacked. Messages read as
/// "failed to …". [`OutputError::Unsafe`] is an archive that must not be trusted; the others
/// are infrastructure (a missing or damaged blob, a full disk).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to pack {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to pack {}: {reason}", path.display())]
    Unpackable { path: PathBuf, reason: String },
    #[error("failed to read a package output archive: {source}")]
    Archive { source: std::io::Error },
    #[error("failed to unpack a package output into {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to unpack a package output into {}: the folder is not empty", path.display())]
    NotEmpty { path: PathBuf },
    #[error("failed to unpack a package output: its entry `{}` {reason}; nothing of it is kept", entry.display())]
    Unsafe { entry: PathBuf, reason: String },
}

/// Symlinks followed while checking where one leads, before it counts as a loop (Linux's
/// own limit).
const MAX_LINK_HOPS: usize = 40;

/// Packs the folder `dir` (not itself, its content) into a tar written to `out`, the same
/// bytes for the same files every time: entries in name order, depth first; times, owners
/// and modes zeroed but for the executable bit (0o755 or 0o644); symlinks kept as symlinks.
/// Refuses what [`unpack_output`] would refuse, so that a bad output fails the build that
/// made it rather than every build that needs it: a symlink that leads out of `dir`
/// (absolute, or climbing out with `..`, through other symlinks too) and anything that is
/// not a file, folder or symlink.
pub fn pack_output(dir: &Path, out: &mut dyn Write) -> Result<(), OutputError> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let entry = entry.map_err(|e| OutputError::Read {
            path: e.path().unwrap_or(dir).to_owned(),
            source: e.into(),
        })?;
        let path = entry.path();
        let read = |source| OutputError::Read {
            path: path.to_owned(),
            source,
        };
        let rel = path.strip_prefix(dir).unwrap_or(path);
        let kind = entry.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            tar.append_data(&mut header, rel, std::io::empty())
                .map_err(read)?;
        } else if kind.is_file() {
            let file = std::fs::File::open(path).map_err(read)?;
            let meta = file.metadata().map_err(read)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if is_executable(&meta) { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            let exact = Exact {
                inner: file.take(meta.len()),
                left: meta.len(),
            };
            tar.append_data(&mut header, rel, exact).map_err(read)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(path).map_err(read)?;
            if let Some(reason) = link_escapes(dir, rel, &target).map_err(read)? {
                return Err(OutputError::Unpackable {
                    path: path.to_owned(),
                    reason: format!("it is a symlink to `{}`, {reason}", target.display()),
                });
            }
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            tar.append_link(&mut header, rel, &target).map_err(read)?;
        } else {
            return Err(OutputError::Unpackable {
                path: path.to_owned(),
                reason: "it is not a file, folder or symlink (a package output holds only \
                         those)"
                    .to_owned(),
            });
        }
    }
    tar.into_inner().map_err(|source| OutputError::Read {
        path: dir.to_owned(),
        source,
    })?;
    Ok(())
}

/// Unpacks a package output archive into `dst`, which must be missing (it is created) or an
/// empty folder. Every entry is checked before anything is written for it, and the archive
/// is refused ([`OutputError::Unsafe`]) — not partly skipped — when an entry has an absolute
/// path or `..`, appears twice, lies under a symlink, is a hard link or a special file, or is
/// a symlink that leads out of `dst`. Modes are 0o755 or 0o644 by the executable bit; times
/// and owners are not restored. On an error `dst` may hold part of the archive: callers
/// going through [`crate::Store::restore_package_output`] get it emptied again.
pub fn unpack_output(archive: &mut dyn Read, dst: &Path) -> Result<(), OutputError> {
    prepare_destination(dst)?;
    let write = |path: &Path| {
        let path = path.to_owned();
        move |source| OutputError::Write { path, source }
    };
    let archive_err = |source| OutputError::Archive { source };
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        let raw = entry.path().map_err(archive_err)?.into_owned();
        let kind = entry.header().entry_type();
        let unsafe_entry = |reason: &str| OutputError::Unsafe {
            entry: raw.clone(),
            reason: reason.to_owned(),
        };
        let Some(rel) = relative_entry(&raw).map_err(&unsafe_entry)? else {
            // `./` itself: the destination is that folder.
            if kind.is_dir() {
                continue;
            }
            return Err(unsafe_entry("has an empty path"));
        };
        create_parents(dst, &rel).map_err(|e| match e {
            Parents::Io(path, source) => OutputError::Write { path, source },
            Parents::Unsafe(reason) => unsafe_entry(&reason),
        })?;
        let target = dst.join(&rel);
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() && kind.is_dir() => continue,
            Ok(_) => return Err(unsafe_entry("appears twice in the archive")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write(&target)(e)),
        }
        let executable = entry.header().mode().map_err(archive_err)? & 0o111 != 0;
        match kind {
            tar::EntryType::Directory => {
                std::fs::create_dir(&target).map_err(write(&target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut file = create_file(&target, executable).map_err(write(&target))?;
                std::io::copy(&mut entry, &mut file).map_err(archive_err)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(archive_err)?
                    .ok_or_else(|| unsafe_entry("is a symlink without a target"))?
                    .into_owned();
                if link.has_root() {
                    return Err(unsafe_entry(&format!(
                        "is a symlink to the absolute path `{}`",
                        link.display()
                    )));
                }
                symlink(&link, &target).map_err(write(&target))?;
                links.push((rel, link));
            }
            tar::EntryType::Link => return Err(unsafe_entry("is a hard link")),
            other => {
                return Err(unsafe_entry(&format!(
                    "is a {other:?} entry, not a file, folder or symlink"
                )));
            }
        }
    }
    // Links are checked once all are in place: where one leads can depend on another that
    // comes later in the archive.
    for (rel, link) in links {
        if let Some(reason) = link_escapes(dst, &rel, &link).map_err(write(&dst.join(&rel)))? {
            return Err(OutputError::Unsafe {
                entry: rel,
                reason: format!("is a symlink to `{}`, {reason}", link.display()),
            });
        }
    }
    Ok(())
}

/// The last `max_lines` lines of a log (at most `max_bytes` bytes of them, cut at a line or
/// character boundary), as text: what a summary shows of a failed build.
pub fn log_tail(log: &[u8], max_lines: usize, max_bytes: usize) -> String {
    let text = log.strip_suffix(b"\n").unwrap_or(log);
    // Where the kept lines begin, and where the next line to keep ends.
    let mut begin = text.len();
    let mut end = text.len();
    let mut cut = false;
    for _ in 0..max_lines {
        let start = text[..end]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if text.len() - start > max_bytes {
            // Even the last line is longer than the budget: its end, from a character
            // boundary.
            cut = begin == text.len();
            break;
        }
        begin = start;
        if start == 0 {
            break;
        }
        end = start - 1;
    }
    if cut {
        begin = text.len() - max_bytes.min(text.len());
        while text.get(begin).is_some_and(|b| b & 0xc0 == 0x80) {
            begin += 1;
        }
    }
    String::from_utf8_lossy(&text[begin..]).into_owned()
}

/// Reads exactly `left` bytes from `inner` or fails: a file that shrinks while it is packed
/// must not yield an archive whose header promises more bytes than follow it.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was packed",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

#[cfg(unix)]
fn create_file(path: &Path, executable: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(path)
}

#[cfg(not(unix))]
fn create_file(path: &Path, _executable: bool) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn symlink(link: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(link, at)
}

#[cfg(not(unix))]
fn symlink(_link: &Path, _at: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "package outputs with symlinks unpack on Unix only",
    ))
}

/// Creates `dst` when missing; refuses one that holds anything.
pub(crate) fn prepare_destination(dst: &Path) -> Result<(), OutputError> {
    std::fs::create_dir_all(dst).map_err(|source| OutputError::Write {
        path: dst.to_owned(),
        source,
    })?;
    let mut entries = std::fs::read_dir(dst).map_err(|source| OutputError::Write {
        path: dst.to_owned(),
        source,
    })?;
    if entries.next().is_some() {
        return Err(OutputError::NotEmpty {
            path: dst.to_owned(),
        });
    }
    Ok(())
}

/// Empties `dst` again after a failed unpack (it was empty before).
pub(crate) fn empty_destination(dst: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dst)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// An archive entry's path as plain names below the destination; `None` for `.` alone.
fn relative_entry(path: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => rel.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("climbs out of the folder with `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

enum Parents {
    Io(PathBuf, std::io::Error),
    Unsafe(String),
}

/// Makes sure every folder above `rel` in `dst` is a real folder, creating missing ones: an
/// entry is never written through a symlink, wherever that symlink points.
fn create_parents(dst: &Path, rel: &Path) -> Result<(), Parents> {
    let mut at = dst.to_owned();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for name in parent.components() {
        at.push(name);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Parents::Unsafe(format!(
                    "lies under the symlink `{}`",
                    at.strip_prefix(dst).unwrap_or(&at).display()
                )));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Parents::Unsafe(format!(
                    "lies under `{}`, which is not a folder",
                    at.strip_prefix(dst).unwrap_or(&at).display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(|e| Parents::Io(at.clone(), e))?;
            }
            Err(e) => return Err(Parents::Io(at.clone(), e)),
        }
    }
    Ok(())
}

/// Why the symlink `rel` (below `root`, with real folders above it) pointing at `target`
/// leads out of `root` when followed — through the symlinks it meets on the way, as the
/// kernel would follow them — or `None` when it stays inside. A dangling link stays inside
/// when the path it names does.
fn link_escapes(root: &Path, rel: &Path, target: &Path) -> std::io::Result<Option<&'static str>> {
    if target.has_root() {
        return Ok(Some("an absolute path"));
    }
    // Where resolution stands, as names below `root`; and what is left to follow, last
    // component first, so that a link met on the way is spliced in by pushing its target.
    let mut at: Vec<OsString> = rel
        .parent()
        .map(|p| p.iter().map(OsString::from).collect())
        .unwrap_or_default();
    let mut pending: Vec<OsString> = Vec::new();
    let push_reversed = |pending: &mut Vec<OsString>, path: &Path| -> Option<&'static str> {
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::Prefix(_) => return Some("an absolute path"),
                Component::CurDir => {}
                Component::ParentDir => parts.push(OsString::from("..")),
                Component::Normal(name) => parts.push(name.to_owned()),
            }
        }
        pending.extend(parts.into_iter().rev());
        None
    };
    if let Some(reason) = push_reversed(&mut pending, target) {
        return Ok(Some(reason));
    }
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if at.pop().is_none() {
                return Ok(Some("which leads out of the package output"));
            }
            continue;
        }
        let mut here = root.to_owned();
        here.extend(&at);
        here.push(&name);
        match std::fs::symlink_metadata(&here) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Ok(Some("which loops through symlinks"));
                }
                let next = std::fs::read_link(&here)?;
                if let Some(reason) = push_reversed(&mut pending, &next) {
                    return Ok(Some(reason));
                }
            }
            Ok(_) => at.push(name),
            // Nothing there: the rest of the path names nothing that could be a link.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => at.push(name),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_their_spelling() {
        for status in PackageBuildStatus::ALL {
            assert_eq!(status.as_str().parse::<PackageBuildStatus>(), Ok(status));
        }
        assert!("built".parse::<PackageBuildStatus>().is_err());
        let mut counts = BuildCounts::default();
        for (i, status) in PackageBuildStatus::ALL.into_iter().enumerate() {
            counts.add(status, i as i64 + 1);
        }
        assert_eq!(
            counts,
            BuildCounts {
                built: 1,
                failed: 2,
                skipped: 3,
                cancelled: 4,
                cached: 5,
            }
        );
        assert_eq!(counts.total(), 15);
    }

    #[test]
    fn the_tail_keeps_the_last_lines_within_the_byte_budget() {
        let log = b"one\ntwo\nthree\nfour\n";
        assert_eq!(log_tail(log, 2, 100), "three\nfour");
        assert_eq!(log_tail(log, 10, 100), "one\ntwo\nthree\nfour");
        assert_eq!(log_tail(log, 10, 10), "three\nfour");
        assert_eq!(log_tail(b"", 3, 10), "");
        assert_eq!(log_tail(b"no newline", 3, 100), "no newline");
        // One line longer than the budget: its end.
        assert_eq!(log_tail(b"a\n0123456789", 3, 4), "6789");
        // A cut inside a character drops the broken half.
        assert_eq!(log_tail("xé".as_bytes(), 1, 1), "");
        // An empty last line is a line.
        assert_eq!(log_tail(b"a\n\n", 1, 10), "");
        assert_eq!(log_tail(b"a\n\n", 2, 10), "a\n");
    }

    #[test]
    fn entry_paths_must_stay_below_the_folder() {
        assert_eq!(
            relative_entry(Path::new("./a/b")),
            Ok(Some(PathBuf::from("a/b")))
        );
        assert_eq!(relative_entry(Path::new("./")), Ok(None));
        assert!(relative_entry(Path::new("/etc/passwd")).is_err());
        assert!(relative_entry(Path::new("a/../../b")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn links_are_followed_through_other_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        // `d/up` leads to the root: inside. Through it, `..` leads out even though the
        // path `d/up/..` reads as `d`.
        std::os::unix::fs::symlink("..", root.join("d/up")).unwrap();
        let check = |rel: &str, target: &str| {
            link_escapes(root, Path::new(rel), Path::new(target)).unwrap()
        };
        assert_eq!(check("d/up", ".."), None);
        assert!(check("l", "d/up/..").is_some());
        assert_eq!(check("l", "d/e/../up/d"), None);
        assert_eq!(check("d/e/l", "../../x/y"), None);
        assert!(check("d/e/l", "../../../x").is_some());
        assert!(check("l", "/etc").is_some());
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(check("l", "loop1"), Some("which loops through symlinks"));
    }
}
