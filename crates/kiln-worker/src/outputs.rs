//! The dependency outputs a worker keeps (`<work dir>/outputs/<digest>/`, fetched once from
//! the server, read-only), bounded in size: when a new one takes the total past the limit,
//! the least recently used ones go, never one a build is laying out. Builds see outputs
//! through hard links (`kiln_exec::package::lay_out_deps`), so a build whose `$KILN_DEPS`
//! is laid out keeps what it was given even when the cached folder goes.
//!
//! After a restart the folders already there are counted once, their last use taken from
//! their modification time (which each use sets).
//!
//! An evicted folder is first renamed (under the cache's lock) to a name that is no digest,
//! then removed: a build looking for it meanwhile finds it gone and fetches it again, and
//! never links from a half-removed folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The outputs kept and what they weigh.
pub(crate) struct OutputCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Whether the folders found at start have been counted.
    loaded: bool,
    entries: HashMap<String, Entry>,
    total: u64,
    /// Increases with every use: the order of last use (and names evicted folders).
    clock: u64,
    /// Digests a build is laying out, with how many builds are.
    pinned: HashMap<String, usize>,
}

struct Entry {
    size: u64,
    used: u64,
}

/// Keeps digests from being evicted while a build lays them out.
pub(crate) struct Pin {
    cache: Arc<OutputCache>,
    digests: Vec<String>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        for d in &self.digests {
            if let Some(n) = state.pinned.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    state.pinned.remove(d);
                }
            }
        }
    }
}

impl OutputCache {
    /// The cache in `dir` (`<work dir>/outputs`), at most `limit` bytes of outputs besides
    /// those in use.
    pub(crate) fn new(dir: PathBuf, limit: u64) -> Arc<Self> {
        Arc::new(Self {
            dir,
            limit,
            state: Mutex::new(State::default()),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `digests` until the pin is dropped.
    pub(crate) fn pin(self: &Arc<Self>, digests: &[String]) -> Pin {
        let mut state = self.lock();
        for d in digests {
            *state.pinned.entry(d.clone()).or_default() += 1;
        }
        Pin {
            cache: self.clone(),
            digests: digests.to_vec(),
        }
    }

    /// Counts the folders a previous run of the worker left, once (blocking: call it from
    /// the blocking pool).
    fn load(&self) {
        if self.lock().loaded {
            return;
        }
        let mut found: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.contains(EVICTED) {
                    // Evicted by a run that stopped before removing it.
                    let _ = std::fs::remove_dir_all(entry.path());
                    continue;
                }
                if !is_digest(&name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                found.push((modified, name, size_of(&entry.path())));
            }
        }
        found.sort();
        let mut state = self.lock();
        if state.loaded {
            return;
        }
        state.loaded = true;
        for (_, digest, size) in found {
            state.clock += 1;
            let used = state.clock;
            if state.entries.insert(digest, Entry { size, used }).is_none() {
                state.total += size;
            }
        }
    }

    /// Whether `digest` is kept; if so, it counts as used now. Pin it first: a kept output
    /// not pinned may be evicted as soon as this returns.
    pub(crate) fn hit(&self, digest: &str) -> bool {
        self.load();
        let path = self.dir.join(digest);
        let mut state = self.lock();
        // Under the lock: eviction renames folders away under it too.
        if !path.is_dir() {
            return false;
        }
        touch(&path);
        state.clock += 1;
        let now = state.clock;
        // Not counted yet: kept by a build of this process that is about to count it.
        if let Some(e) = state.entries.get_mut(digest) {
            e.used = now;
        }
        true
    }

    /// `digest` was just kept: counts it, then removes the least recently used outputs
    /// nobody is laying out until the total is within the limit (the newest always stays).
    /// Blocking.
    pub(crate) fn added(&self, digest: &str) {
        self.load();
        let size = size_of(&self.dir.join(digest));
        let victims = {
            let mut state = self.lock();
            state.clock += 1;
            let used = state.clock;
            if let Some(old) = state
                .entries
                .insert(digest.to_owned(), Entry { size, used })
            {
                state.total -= old.size;
            }
            state.total += size;
            let mut order: Vec<(u64, String)> = state
                .entries
                .iter()
                .filter(|(d, _)| d.as_str() != digest && !state.pinned.contains_key(*d))
                .map(|(d, e)| (e.used, d.clone()))
                .collect();
            order.sort();
            let mut victims = Vec::new();
            for (_, d) in order {
                if state.total <= self.limit {
                    break;
                }
                if let Some(e) = state.entries.remove(&d) {
                    state.total -= e.size;
                    state.clock += 1;
                    let gone = self.dir.join(format!("{d}{EVICTED}{}", state.clock));
                    match std::fs::rename(self.dir.join(&d), &gone) {
                        Ok(()) => victims.push(gone),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(output = %d, error = %e, "cannot evict a cached output")
                        }
                    }
                }
            }
            victims
        };
        for path in victims {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an evicted output");
            }
        }
    }
}

/// In the name of an evicted folder being removed.
const EVICTED: &str = ".evicted.";

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bytes of the files under `dir` (links and folders count nothing).
fn size_of(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Marks the folder used now, for the order after a restart (best effort).
fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(cache: &OutputCache, digest: &str, bytes: usize) {
        let d = cache.dir().join(digest);
        std::fs::create_dir_all(d.join("lib")).unwrap();
        std::fs::write(d.join("lib/file"), vec![b'x'; bytes]).unwrap();
        cache.added(digest);
    }

    fn digest(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn kept(cache: &OutputCache) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn past_the_limit_the_least_recently_used_unpinned_outputs_go() {
        let root = tempfile::tempdir().unwrap();
        let cache = OutputCache::new(root.path().join("outputs"), 250);
        let (a, b, c, d) = (digest(1), digest(2), digest(3), digest(4));
        keep(&cache, &a, 100);
        keep(&cache, &b, 100);
        assert_eq!(kept(&cache), [a.clone(), b.clone()]);
        // `a` used again, `b` being laid out: `c` takes the total past 250; `b` is the least
        // recently used, but pinned, so `a` goes.
        assert!(cache.hit(&a));
        let pin = cache.pin(std::slice::from_ref(&b));
        keep(&cache, &c, 100);
        assert_eq!(kept(&cache), [b.clone(), c.clone()], "a went: b is pinned");
        drop(pin);
        // Unpinned, `b` is now the least recently used.
        keep(&cache, &d, 100);
        assert_eq!(kept(&cache), [c.clone(), d.clone()]);
        // An output larger than the limit stays while it is the newest.
        let e = digest(5);
        keep(&cache, &e, 1000);
        assert_eq!(kept(&cache), std::slice::from_ref(&e));
        assert!(!cache.hit(&a), "an evicted output is fetched again");
    }

    #[test]
    fn a_restarted_worker_counts_what_it_kept_before() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("outputs");
        let (a, b, c) = (digest(1), digest(2), digest(3));
        {
            let first = OutputCache::new(dir.clone(), 1000);
            keep(&first, &a, 100);
            std::thread::sleep(std::time::Duration::from_millis(20));
            keep(&first, &b, 100);
        }
        // Something that is not an output is left alone; an eviction a stopped run did not
        // finish is finished.
        std::fs::create_dir_all(dir.join(format!("{a}.job.part"))).unwrap();
        std::fs::create_dir_all(dir.join(format!("{c}{EVICTED}7/lib"))).unwrap();
        let again = OutputCache::new(dir, 250);
        keep(&again, &c, 100);
        assert_eq!(
            kept(&again),
            [format!("{a}.job.part"), b.clone(), c.clone()],
            "a and b were counted, and a, used least recently, went"
        );
    }
}
