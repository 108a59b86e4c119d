//! Cache keys: a package is `cached` when its key matches a stored successful build.
//!
//! A key is SHA-256 (lowercase hex when shown) over, in this order, each field
//! length-prefixed so that no two different inputs give the same byte stream:
//! 1. the scheme tag and [`KEY_SCHEME_VERSION`];
//! 2. the origin and version;
//! 3. the package folder's digest ([`hash_folder`]): every entry under
//!    `CATEGORY/NAME/`, the manifest included, nothing skipped (a stray editor backup
//!    changes the key: the build's scratch copy would contain it too);
//! 4. the manifest's meaning: `depends`, `run-depends`, `distfiles`, and the commands
//!    `fetch` and `build` — in the manifest file already, hashed again as parsed so that a
//!    key covers them by name whatever the folder digest may one day leave out;
//! 5. the toolchain fingerprint the caller gives (configured environment, tool versions);
//! 6. the keys of the packages it waits for ([`Graph::wait_for`]: its `depends` and what
//!    those reach over `run-depends`), sorted by origin.
//!
//! 6 covers the keys of everything in `$KILN_DEPS` without listing them: `$KILN_DEPS` is the
//! packages waited for plus their own `$KILN_DEPS`, which their keys cover in turn (a Merkle
//! tree over the build-before graph). Listing the closure itself would give the same
//! invalidations at the cost of its size — 42 million entries, over a gigabyte hashed, for a
//! generated 60,000-package tree, against 270,000 this way. So a change anywhere below a
//! package changes its key: changing one file of one package changes exactly that package's
//! key and those of the packages that have it in their `$KILN_DEPS`, transitively. Bump
//! [`KEY_SCHEME_VERSION`] whenever what goes into a key changes, so old stored builds stop
//! matching instead of matching wrongly.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[cfg(doc)]
use super::graph::Graph;
use super::graph::Selection;
use super::tree::Tree;
use super::{PackageId, par};

/// The version of the key scheme described in this module's documentation.
pub const KEY_SCHEME_VERSION: u32 = 1;

/// A package's cache key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lowercase hex, as stored and shown.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads a key back from [`Key::to_hex`]'s form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_hex())
    }
}

/// SHA-256 over a package folder's entries ([`hash_folder`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FolderDigest(pub [u8; 32]);

/// A folder entry that could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A socket, FIFO or device: a build's scratch copy could not hold it, so refusing beats
    /// silently leaving it out of the key.
    #[error("{}: not a file, folder or symbolic link", path.display())]
    Unsupported { path: PathBuf },
}

/// Every folder that could not be hashed, one per line.
#[derive(Debug)]
pub struct KeyErrors(pub Vec<KeyError>);

impl fmt::Display for KeyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_lines(f, &self.0)
    }
}

impl std::error::Error for KeyErrors {}

/// The keys of a selection, by [`PackageId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys(Vec<Option<Key>>);

impl Keys {
    /// `None` for a package outside the selection the keys were computed for.
    pub fn get(&self, p: PackageId) -> Option<&Key> {
        self.0.get(p.index()).and_then(Option::as_ref)
    }
}

/// A toolchain fingerprint from named parts — configured environment variables, tool
/// versions — in any order: sorted by name and length-prefixed, so the same settings always
/// give the same bytes (an environment's iteration order must not change every key).
pub fn toolchain_fingerprint<'a>(parts: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut parts: Vec<(&str, &str)> = parts.into_iter().collect();
    parts.sort_unstable();
    let mut out = Vec::new();
    for (name, value) in parts {
        for s in [name, value] {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Feeds one length-prefixed field.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Hashes everything under `dir`: each entry's path relative to `dir` (with `/`), its kind
/// (folder, file, executable file, symbolic link) and its content (a link's target, which is
/// not followed), in byte order of the paths, so the digest depends on nothing but the
/// folder's content — not on mtimes, owners or the order the file system lists entries.
pub fn hash_folder(dir: &Path) -> Result<FolderDigest, KeyError> {
    let mut entries = Vec::new();
    collect(dir, &[], &mut entries)?;
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    for (rel, kind) in entries {
        let path = dir.join(std::ffi::OsStr::from_bytes(&rel));
        match kind {
            Kind::Dir => {
                h.update(b"d");
                field(&mut h, &rel);
            }
            Kind::Link => {
                let target = std::fs::read_link(&path).map_err(|source| KeyError::Io {
                    path: path.clone(),
                    source,
                })?;
                h.update(b"l");
                field(&mut h, &rel);
                field(&mut h, target.as_os_str().as_encoded_bytes());
            }
            Kind::File => {
                let io_err = |source| KeyError::Io {
                    path: path.clone(),
                    source,
                };
                let mut f = std::fs::File::open(&path).map_err(io_err)?;
                let meta = f.metadata().map_err(io_err)?;
                let exec = meta.permissions().mode() & 0o111 != 0;
                buf.clear();
                buf.reserve(usize::try_from(meta.len()).unwrap_or(0));
                // Through `take`: `File::read_to_end` would ask the size again (statx and
                // lseek), two more system calls per file for a size already known.
                (&mut f)
                    .take(u64::MAX)
                    .read_to_end(&mut buf)
                    .map_err(io_err)?;
                h.update(if exec { b"x" } else { b"f" });
                field(&mut h, &rel);
                field(&mut h, &buf);
            }
        }
    }
    Ok(FolderDigest(h.finalize().into()))
}

enum Kind {
    Dir,
    File,
    Link,
}

/// Byte paths relative to the folder, `/`-separated, with their kind.
fn collect(dir: &Path, prefix: &[u8], out: &mut Vec<(Vec<u8>, Kind)>) -> Result<(), KeyError> {
    let io_err = |source| KeyError::Io {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let ty = entry.file_type().map_err(|source| KeyError::Io {
            path: entry.path(),
            source,
        })?;
        let mut rel = prefix.to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(entry.file_name().as_encoded_bytes());
        if ty.is_dir() {
            collect(&entry.path(), &rel, out)?;
            out.push((rel, Kind::Dir));
        } else if ty.is_file() {
            out.push((rel, Kind::File));
        } else if ty.is_symlink() {
            out.push((rel, Kind::Link));
        } else {
            return Err(KeyError::Unsupported { path: entry.path() });
        }
    }
    Ok(())
}

/// Keys of the selected packages from their folder digests (`folders[id.index()]`; entries
/// outside the selection are not read). Pure: no file is touched. Levels of the graph are
/// keyed one after another, the packages of one level in parallel.
pub fn package_keys(
    tree: &Tree,
    selection: &Selection,
    folders: &[FolderDigest],
    toolchain: &[u8],
) -> Keys {
    let graph = tree.graph();
    let mut keys: Vec<Option<Key>> = vec![None; tree.len()];
    let mut todo = Vec::new();
    for level in graph.levels() {
        todo.clear();
        todo.extend(level.iter().copied().filter(|&p| selection.contains(p)));
        let done = par::map(&todo, |&p| {
            let mut h = Sha256::new();
            h.update(b"kiln package key\0");
            h.update(KEY_SCHEME_VERSION.to_le_bytes());
            field(&mut h, tree.origin(p).as_bytes());
            let pkg = tree.package(p);
            field(&mut h, pkg.version.as_bytes());
            field(&mut h, &folders[p.index()].0);
            for list in [graph.depends(p), graph.run_depends(p)] {
                h.update((list.len() as u64).to_le_bytes());
                for &d in list {
                    field(&mut h, tree.origin(d).as_bytes());
                }
            }
            h.update((pkg.distfiles.len() as u64).to_le_bytes());
            for d in &pkg.distfiles {
                field(&mut h, d.name.as_bytes());
                h.update(d.sha256);
            }
            match &pkg.fetch {
                Some(fetch) => {
                    h.update([1]);
                    field(&mut h, fetch.as_bytes());
                }
                None => h.update([0]),
            }
            field(&mut h, pkg.build.as_bytes());
            field(&mut h, toolchain);
            let waits = graph.wait_for(p);
            h.update((waits.len() as u64).to_le_bytes());
            for &d in waits {
                // A key covers its origin (field 2), so the key alone names the package.
                let key = keys[d.index()]
                    .expect("a dependency is selected and keyed at an earlier level");
                h.update(key.0);
            }
            Key(h.finalize().into())
        });
        for (&p, key) in todo.iter().zip(done) {
            keys[p.index()] = Some(key);
        }
    }
    Keys(keys)
}

/// Hashes the selected packages' folders under `root` (in parallel) and computes their keys
/// ([`package_keys`]). Every folder that cannot be hashed is reported.
pub fn compute_keys(
    tree: &Tree,
    root: &Path,
    selection: &Selection,
    toolchain: &[u8],
) -> Result<Keys, KeyErrors> {
    let hashed = par::map_with(selection.ids(), PathBuf::new, |path, &p| {
        path.clear();
        path.push(root);
        path.push(tree.origin(p));
        hash_folder(path)
    });
    let mut folders = vec![FolderDigest::default(); tree.len()];
    let mut errors = Vec::new();
    for (&p, r) in selection.ids().iter().zip(hashed) {
        match r {
            Ok(d) => folders[p.index()] = d,
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(KeyErrors(errors));
    }
    Ok(package_keys(tree, selection, &folders, toolchain))
}
