//! Package trees: a folder of `CATEGORY/NAME/kiln-package.toml` (DESIGN.md "Package trees"),
//! loaded, validated, ordered and keyed.
//!
//! This is the model `kiln build` plans with; it runs nothing. Unlike the rest of kiln-core it
//! reads files — a tree is tens of thousands of folders, and loading and hashing them in
//! parallel is the part that must be fast — but only through [`Tree::load`],
//! [`hash_folder`] and [`compute_keys`]; everything else is a plain function over values:
//! [`parse_manifest`] takes `&str`, [`Tree::from_manifests`] builds a tree from parsed
//! manifests, and [`Graph`] answers ordering questions over `u32` indices.
//!
//! Layout:
//! - [`parse_manifest`] — one `kiln-package.toml`, every problem with file, line and key.
//! - [`Tree`] — loading a folder, interning origins, resolving dependencies, and validation:
//!   unknown dependencies and every dependency cycle, all reported at once ([`TreeErrors`]).
//! - [`Graph`] — the compact graph: `$KILN_DEPS` closures ([`DepsWalker`]), selections,
//!   topological order, critical-path priorities.
//! - [`compute_keys`] — the cache key scheme ([`KEY_SCHEME_VERSION`]).
//! - [`Schedule`] — the ready queue as a state machine: the next package to start, what a
//!   finished one makes ready, what a failed one skips.
//!
//! A build uses them in this order: [`Tree::load`] (on [`TreeErrors`], print them and exit
//! 2); [`Tree::select`] for named origins or [`Graph::select_all`]; [`compute_keys`] with a
//! [`toolchain_fingerprint`], then the store says which keys are built already;
//! [`Graph::priorities`] weighted by each package's last duration (1 when unknown);
//! [`Schedule::new`], then [`Schedule::start_next`] whenever a slot is free and
//! [`Schedule::finish`] when a build ends (a cached package is finished at once). A build's
//! `$KILN_DEPS/<origin>/` folders are [`DepsWalker::kiln_deps`] of it.
//!
//! Not here: running builds, slots, processes, time, the store's history: the executor
//! owns those and asks this module what to do next.

mod graph;
mod key;
mod manifest;
mod par;
mod schedule;
mod tree;

#[cfg(test)]
mod tests;

pub use graph::{DepsWalker, Graph, Selection};
pub use key::{
    FolderDigest, KEY_SCHEME_VERSION, Key, KeyError, KeyErrors, Keys, compute_keys, hash_folder,
    package_keys, toolchain_fingerprint,
};
pub use manifest::{
    Dependency, Distfile, MANIFEST_FILE, Manifest, ManifestError, is_origin, parse_manifest,
};
pub use schedule::{Outcome, Schedule, State};
pub use tree::{DependencyKind, Package, Tree, TreeError, TreeErrors, UnknownOrigins};

/// A package of one [`Tree`]: an index into it. Packages are numbered in origin order, so
/// sorting ids sorts by origin; ids of one tree mean nothing in another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId(u32);

impl PackageId {
    /// The position of this package in the tree's vectors (and in [`Keys`], priorities…).
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub(crate) fn new(index: usize) -> Self {
        Self(u32::try_from(index).expect("a tree holds fewer than 2^32 packages"))
    }
}

/// Writes `items` one a line (the error lists' `Display`).
fn write_lines<T: std::fmt::Display>(
    f: &mut std::fmt::Formatter<'_>,
    items: &[T],
) -> std::fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}
