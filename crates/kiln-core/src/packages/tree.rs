//! A loaded, valid package tree: interned origins, parsed manifests, resolved dependencies.
//!
//! A [`Tree`] only exists when the whole tree is valid, so nothing downstream (ordering,
//! keys, the executor) has to handle unknown dependencies or cycles. Building one reports
//! every problem at once ([`TreeErrors`]): a tree of sixty thousand packages should not
//! take sixty runs to repair.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use petgraph::Directed;
use petgraph::graph::{Graph as PetGraph, NodeIndex};

use super::graph::{Graph, Selection};
use super::manifest::{
    Dependency, Distfile, MANIFEST_FILE, Manifest, ManifestError, parse_manifest,
};
use super::{PackageId, par};

/// At most this many cycles are listed per group of packages that depend on each other
/// (a strongly connected component): enough to show how a group is tangled, where listing
/// every elementary cycle of a big group could take exponential time and pages of output.
const MAX_CYCLES_PER_GROUP: usize = 32;

/// What a package's manifest says besides its dependencies (those live in [`Graph`], as
/// indices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub version: String,
    pub fetch: Option<String>,
    pub distfiles: Vec<Distfile>,
    pub build: String,
}

/// A valid package tree.
#[derive(Debug)]
pub struct Tree {
    root: Option<PathBuf>,
    /// Sorted; a package's id is its position.
    origins: Vec<Box<str>>,
    index: HashMap<Box<str>, PackageId, BuildHasherDefault<FxHasher>>,
    packages: Vec<Package>,
    graph: Graph,
}

/// Which list of a manifest names a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DependencyKind {
    Depends,
    RunDepends,
}

impl DependencyKind {
    /// The manifest key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Depends => "depends",
            Self::RunDepends => "run-depends",
        }
    }
}

/// One problem that makes a tree invalid.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A folder or manifest that could not be read.
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: io::Error },
    /// A folder name that is not UTF-8 cannot be an origin.
    #[error("{path}: the folder name is not UTF-8, so it cannot be part of an origin")]
    NotUtf8 { path: String },
    /// The same origin given twice to [`Tree::from_manifests`].
    #[error("{origin}: defined more than once")]
    Duplicate { origin: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// `package` names `missing` in `kind`, and the tree has no such package.
    #[error(
        "{file}:{line}: `{package}` names `{missing}` in `{}`, which is not in the tree",
        kind.key()
    )]
    UnknownDependency {
        package: String,
        file: String,
        line: u32,
        kind: DependencyKind,
        missing: String,
    },
    /// A dependency cycle, as the packages along it: each needs the next, the last needs the
    /// first. `run_edges` are the steps along it that come from `run-depends` (a cycle made
    /// only of those is allowed: nothing has to be built before anything else).
    #[error("dependency cycle: {}", CyclePath(path, run_edges))]
    Cycle {
        path: Vec<String>,
        run_edges: Vec<(String, String)>,
    },
    /// A group of packages that depend on each other with more cycles than are listed.
    #[error(
        "dependency cycles: {count} packages depend on each other ({}); only {MAX_CYCLES_PER_GROUP} of their cycles are listed",
        sample(packages)
    )]
    CycleGroup { count: usize, packages: Vec<String> },
}

struct CyclePath<'a>(&'a [String], &'a [(String, String)]);

impl fmt::Display for CyclePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for origin in self.0 {
            write!(f, "{origin} → ")?;
        }
        if let Some(first) = self.0.first() {
            write!(f, "{first}")?;
        }
        if !self.1.is_empty() {
            let steps: Vec<String> = self.1.iter().map(|(a, b)| format!("{a} → {b}")).collect();
            write!(f, " (through run-depends: {})", steps.join(", "))?;
        }
        Ok(())
    }
}

fn sample(packages: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = packages
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if packages.len() > SHOWN {
        s.push_str(&format!(", … {} more", packages.len() - SHOWN));
    }
    s
}

impl TreeError {
    /// The order errors are listed in: read errors, then manifests by file and line, then
    /// unknown dependencies by package, then cycles.
    fn sort_key(&self) -> (u8, &str, u32, &str, &str) {
        match self {
            Self::Io { path, .. } => (0, path, 0, "", ""),
            Self::NotUtf8 { path } => (0, path, 0, "", ""),
            Self::Duplicate { origin } => (1, origin, 0, "", ""),
            Self::Manifest(e) => (1, &e.file, e.line, e.key.as_deref().unwrap_or(""), ""),
            Self::UnknownDependency {
                file,
                line,
                missing,
                ..
            } => (2, file, *line, missing, ""),
            Self::Cycle { path, .. } => (3, path.first().map_or("", String::as_str), 0, "", ""),
            Self::CycleGroup { packages, .. } => {
                (3, packages.first().map_or("", String::as_str), 1, "", "")
            }
        }
    }
}

/// Every problem of an invalid tree, sorted; `Display` prints one per line, as the CLI shows
/// them.
#[derive(Debug)]
pub struct TreeErrors(pub Vec<TreeError>);

impl TreeErrors {
    fn sorted(mut errors: Vec<TreeError>) -> Self {
        errors.sort_by(|a, b| {
            a.sort_key().cmp(&b.sort_key()).then_with(|| match (a, b) {
                (TreeError::Cycle { path: p, .. }, TreeError::Cycle { path: q, .. }) => p.cmp(q),
                _ => std::cmp::Ordering::Equal,
            })
        });
        Self(errors)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, TreeError> {
        self.0.iter()
    }
}

impl fmt::Display for TreeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_lines(f, &self.0)
    }
}

impl std::error::Error for TreeErrors {}

/// Origins asked for that the tree does not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not in the tree: {}", .0.join(", "))]
pub struct UnknownOrigins(pub Vec<String>);

/// One candidate package while loading: its origin and what reading its manifest gave.
enum Parsed {
    Ok(Manifest),
    /// The package exists but its manifest is broken; it stays in the tree as a node without
    /// edges so that packages depending on it are not also reported as "unknown".
    Broken(Vec<TreeError>),
    /// The folder has no manifest: not a package (ports trees keep `Mk/`, `Templates/`…).
    Absent,
}

impl Tree {
    /// Loads `root/*/*/kiln-package.toml`. Hidden folders (`.git`, …) are not packages or
    /// categories, and a folder without a manifest is not a package. Manifests are read and
    /// parsed on all cores; every problem is returned, sorted.
    pub fn load(root: &Path) -> Result<Self, TreeErrors> {
        let io_err = |path: &Path, source| {
            TreeErrors(vec![TreeError::Io {
                path: path.display().to_string(),
                source,
            }])
        };
        let mut errors = Vec::new();
        let mut categories = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| io_err(root, e))? {
            let entry = entry.map_err(|e| io_err(root, e))?;
            if let Some(name) = folder_name(&entry, &mut errors) {
                categories.push(name);
            }
        }
        categories.sort_unstable();

        let listed = par::map(&categories, |category| {
            let dir = root.join(category);
            let mut names = Vec::new();
            let mut errors = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(source) => {
                    errors.push(TreeError::Io {
                        path: category.clone(),
                        source,
                    });
                    return (names, errors);
                }
            };
            for entry in entries {
                match entry {
                    Ok(entry) => {
                        if let Some(name) = folder_name(&entry, &mut errors) {
                            names.push(format!("{category}/{name}"));
                        }
                    }
                    Err(source) => errors.push(TreeError::Io {
                        path: category.clone(),
                        source,
                    }),
                }
            }
            (names, errors)
        });
        let mut candidates = Vec::new();
        for (names, errs) in listed {
            candidates.extend(names);
            errors.extend(errs);
        }
        candidates.sort_unstable();

        let parsed = par::map_with(
            &candidates,
            || String::with_capacity(8192),
            |buf, origin| {
                let file = format!("{origin}/{MANIFEST_FILE}");
                buf.clear();
                // Through `take`: `File::read_to_string` would first ask the file's size (statx
                // and lseek), two system calls per package that the reused buffer makes useless.
                match std::fs::File::open(root.join(&file))
                    .and_then(|f| io::Read::read_to_string(&mut io::Read::take(f, u64::MAX), buf))
                {
                    Ok(_) => match parse_manifest(&file, buf) {
                        Ok(m) => Parsed::Ok(m),
                        Err(es) => {
                            Parsed::Broken(es.into_iter().map(TreeError::Manifest).collect())
                        }
                    },
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound
                            || e.kind() == io::ErrorKind::NotADirectory =>
                    {
                        Parsed::Absent
                    }
                    Err(source) => Parsed::Broken(vec![TreeError::Io { path: file, source }]),
                }
            },
        );

        let mut entries = Vec::with_capacity(candidates.len());
        for (origin, parsed) in candidates.into_iter().zip(parsed) {
            match parsed {
                Parsed::Ok(m) => entries.push((origin, Some(m))),
                Parsed::Broken(es) => {
                    errors.extend(es);
                    entries.push((origin, None));
                }
                Parsed::Absent => {}
            }
        }
        let mut tree = Self::build(entries, errors)?;
        tree.root = Some(root.to_owned());
        Ok(tree)
    }

    /// A tree from manifests already parsed (tests, trees that do not live in a folder).
    /// Origins must be valid ([`super::is_origin`]) and distinct.
    pub fn from_manifests(
        manifests: impl IntoIterator<Item = (String, Manifest)>,
    ) -> Result<Self, TreeErrors> {
        let mut entries: Vec<(String, Option<Manifest>)> =
            manifests.into_iter().map(|(o, m)| (o, Some(m))).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut errors = Vec::new();
        entries.dedup_by(|b, a| {
            let dup = a.0 == b.0;
            if dup {
                errors.push(TreeError::Duplicate {
                    origin: a.0.clone(),
                });
            }
            dup
        });
        Self::build(entries, errors)
    }

    /// Interns `entries` (sorted by origin, distinct), resolves dependencies and validates.
    fn build(
        entries: Vec<(String, Option<Manifest>)>,
        mut errors: Vec<TreeError>,
    ) -> Result<Self, TreeErrors> {
        // A folder name can be anything a file system allows; an origin cannot (it is named
        // in manifests and becomes a folder under `$KILN_DEPS`).
        for (origin, _) in &entries {
            if !super::is_origin(origin) {
                errors.push(TreeError::Manifest(ManifestError {
                    file: format!("{origin}/{MANIFEST_FILE}"),
                    line: 1,
                    key: None,
                    message: format!("`{origin}` is not an origin (\"category/name\", one slash)"),
                }));
            }
        }
        let n = entries.len();
        let mut origins: Vec<Box<str>> = Vec::with_capacity(n);
        let mut index = HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default());
        for (i, (origin, _)) in entries.iter().enumerate() {
            origins.push(origin.as_str().into());
            index.insert(Box::<str>::from(origin.as_str()), PackageId::new(i));
        }

        let mut packages = Vec::with_capacity(n);
        let mut depends = Vec::with_capacity(n);
        let mut run_depends = Vec::with_capacity(n);
        for (origin, manifest) in entries {
            let Some(m) = manifest else {
                // Placeholder for a broken manifest: never seen, since the tree is refused.
                packages.push(Package {
                    version: String::new(),
                    fetch: None,
                    distfiles: Vec::new(),
                    build: String::new(),
                });
                depends.push(Vec::new());
                run_depends.push(Vec::new());
                continue;
            };
            let mut resolve = |deps: &[Dependency], kind: DependencyKind| {
                let mut ids: Vec<PackageId> = Vec::with_capacity(deps.len());
                for d in deps {
                    match index.get(d.origin.as_str()) {
                        Some(&id) => ids.push(id),
                        None => errors.push(TreeError::UnknownDependency {
                            package: origin.clone(),
                            file: format!("{origin}/{MANIFEST_FILE}"),
                            line: d.line,
                            kind,
                            missing: d.origin.clone(),
                        }),
                    }
                }
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            depends.push(resolve(&m.depends, DependencyKind::Depends));
            run_depends.push(resolve(&m.run_depends, DependencyKind::RunDepends));
            packages.push(Package {
                version: m.version,
                fetch: m.fetch,
                distfiles: m.distfiles,
                build: m.build,
            });
        }

        let graph = Graph::from_lists(&depends, &run_depends);
        drop((depends, run_depends));
        errors.extend(find_cycles(&graph, &origins));
        if !errors.is_empty() {
            return Err(TreeErrors::sorted(errors));
        }
        let graph = graph.with_order();
        Ok(Self {
            root: None,
            origins,
            index,
            packages,
            graph,
        })
    }

    /// The folder the tree was loaded from ([`Tree::load`]); `None` for
    /// [`Tree::from_manifests`].
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    pub fn len(&self) -> usize {
        self.origins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Every package, in origin order.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = PackageId> + use<> {
        (0..self.origins.len()).map(PackageId::new)
    }

    pub fn origin(&self, id: PackageId) -> &str {
        &self.origins[id.index()]
    }

    pub fn id(&self, origin: &str) -> Option<PackageId> {
        self.index.get(origin).copied()
    }

    pub fn package(&self, id: PackageId) -> &Package {
        &self.packages[id.index()]
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The named packages with everything they need ([`Graph::select`]); every origin that is
    /// not in the tree is named in the error.
    pub fn select<S: AsRef<str>>(&self, origins: &[S]) -> Result<Selection, UnknownOrigins> {
        let mut roots = Vec::with_capacity(origins.len());
        let mut unknown = Vec::new();
        for o in origins {
            match self.id(o.as_ref()) {
                Some(id) => roots.push(id),
                None => unknown.push(o.as_ref().to_owned()),
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            unknown.dedup();
            return Err(UnknownOrigins(unknown));
        }
        Ok(self.graph.select(&roots))
    }
}

/// A folder entry's name when it is a non-hidden folder (or a link, which the manifest read
/// then follows).
fn folder_name(entry: &std::fs::DirEntry, errors: &mut Vec<TreeError>) -> Option<String> {
    let ty = entry.file_type().ok()?;
    if !(ty.is_dir() || ty.is_symlink()) {
        return None;
    }
    let name = entry.file_name();
    let Some(name) = name.to_str() else {
        errors.push(TreeError::NotUtf8 {
            path: entry.path().display().to_string(),
        });
        return None;
    };
    (!name.starts_with('.')).then(|| name.to_owned())
}

/// Every dependency cycle, found per strongly connected component of the graph of
/// `depends` and `run-depends` edges.
///
/// A component is only a problem when one of its inner edges is a `depends` edge: following
/// it, the package would need itself in its own `$KILN_DEPS`. Packages that only
/// `run-depends` on each other can all be built (nothing needs the other first). For each
/// bad component, cycles are found through its `depends` edges in id order, each the
/// shortest way back (breadth-first, neighbours in id order, so the same tree always gives the
/// same paths), skipping edges an earlier cycle already went through: every listed cycle
/// shows something new, and together they cover every `depends` edge of the group up to
/// [`MAX_CYCLES_PER_GROUP`].
fn find_cycles(graph: &Graph, origins: &[Box<str>]) -> Vec<TreeError> {
    let n = graph.len();
    let mut pg: PetGraph<(), (), Directed, u32> = PetGraph::with_capacity(n, graph.edge_count());
    for _ in 0..n {
        pg.add_node(());
    }
    for i in 0..n {
        let id = PackageId::new(i);
        for &d in graph.depends(id).iter().chain(graph.run_depends(id)) {
            pg.add_edge(NodeIndex::new(i), NodeIndex::new(d.index()), ());
        }
    }
    let name = |id: PackageId| origins[id.index()].to_string();

    let mut errors = Vec::new();
    // Which component each node is in (u32::MAX: none of interest), for the searches.
    let mut comp_of = vec![u32::MAX; n];
    let mut parent = vec![u32::MAX; n];
    for (c, comp) in petgraph::algo::tarjan_scc(&pg).into_iter().enumerate() {
        if comp.len() == 1 {
            let id = PackageId::new(comp[0].index());
            if graph.depends(id).contains(&id) {
                errors.push(TreeError::Cycle {
                    path: vec![name(id)],
                    run_edges: Vec::new(),
                });
            }
            continue;
        }
        let c = u32::try_from(c).expect("fewer than 2^32 components");
        let mut members: Vec<PackageId> = comp.iter().map(|v| PackageId::new(v.index())).collect();
        members.sort_unstable();
        for &m in &members {
            comp_of[m.index()] = c;
        }
        let first_inner_depends = members.iter().find_map(|&u| {
            graph
                .depends(u)
                .iter()
                .find(|v| comp_of[v.index()] == c)
                .map(|&v| (u, v))
        });
        let Some(first_inner_depends) = first_inner_depends else {
            // Only run-depends inside: nothing needs another built first.
            continue;
        };
        // One cycle per back edge of a depth-first search: removing the back edges leaves
        // the group acyclic, so together they show every place the group must be cut, and a
        // group made by one bad edge (the usual mistake) yields about one cycle.
        let mut cycles: Vec<Vec<PackageId>> = Vec::new();
        let mut truncated = false;
        for (u, w) in back_edges(graph, &comp_of, c, members[0]) {
            let cycle = shortest_cycle(graph, &comp_of, c, &mut parent, u, w);
            let has_depends = (0..cycle.len()).any(|i| {
                graph
                    .depends(cycle[i])
                    .binary_search(&cycle[(i + 1) % cycle.len()])
                    .is_ok()
            });
            let cycle = rotate_to_smallest(cycle);
            if !has_depends || cycles.contains(&cycle) {
                continue;
            }
            if cycles.len() == MAX_CYCLES_PER_GROUP {
                truncated = true;
                break;
            }
            cycles.push(cycle);
        }
        if cycles.is_empty() {
            let (u, v) = first_inner_depends;
            cycles.push(rotate_to_smallest(shortest_cycle(
                graph,
                &comp_of,
                c,
                &mut parent,
                u,
                v,
            )));
        }
        for cycle in cycles {
            let run_edges = (0..cycle.len())
                .map(|i| (cycle[i], cycle[(i + 1) % cycle.len()]))
                .filter(|(a, b)| graph.depends(*a).binary_search(b).is_err())
                .map(|(a, b)| (name(a), name(b)))
                .collect();
            errors.push(TreeError::Cycle {
                path: cycle.into_iter().map(name).collect(),
                run_edges,
            });
        }
        if truncated {
            errors.push(TreeError::CycleGroup {
                count: members.len(),
                packages: members.iter().map(|&m| name(m)).collect(),
            });
        }
    }
    errors
}

/// One cycle, one spelling: start at the smallest origin.
fn rotate_to_smallest(mut cycle: Vec<PackageId>) -> Vec<PackageId> {
    let start = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
    cycle.rotate_left(start);
    cycle
}

/// The back edges `(u, w)` (`w` is on the search path to `u`) of an iterative depth-first
/// search of component `c` from `start`, neighbours in id order (`depends` before
/// `run-depends`), so the same tree always gives the same edges.
fn back_edges(
    graph: &Graph,
    comp_of: &[u32],
    c: u32,
    start: PackageId,
) -> Vec<(PackageId, PackageId)> {
    let neighbours = |x: PackageId| {
        graph
            .depends(x)
            .iter()
            .chain(graph.run_depends(x))
            .copied()
            .filter(move |y| comp_of[y.index()] == c)
    };
    // Every member is reachable from `start` inside a strongly connected component.
    let mut on_path = std::collections::HashSet::new();
    let mut done = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![(start, 0usize)];
    on_path.insert(start);
    while let Some(&mut (x, ref mut next)) = stack.last_mut() {
        if let Some(y) = neighbours(x).nth(*next) {
            *next += 1;
            if on_path.contains(&y) {
                out.push((x, y));
            } else if !done.contains(&y) {
                on_path.insert(y);
                stack.push((y, 0));
            }
        } else {
            stack.pop();
            on_path.remove(&x);
            done.insert(x);
        }
    }
    out
}

/// The cycle `u → v → … → u` with the shortest way from `v` back to `u` inside component
/// `c`, as the packages along it starting with `u`.
fn shortest_cycle(
    graph: &Graph,
    comp_of: &[u32],
    c: u32,
    parent: &mut [u32],
    u: PackageId,
    v: PackageId,
) -> Vec<PackageId> {
    if u == v {
        return vec![u];
    }
    let mut queue = std::collections::VecDeque::from([v]);
    let mut seen = vec![v];
    parent[v.index()] = v.0;
    'search: while let Some(x) = queue.pop_front() {
        let mut next: Vec<PackageId> = graph
            .depends(x)
            .iter()
            .chain(graph.run_depends(x))
            .copied()
            .filter(|y| comp_of[y.index()] == c)
            .collect();
        next.sort_unstable();
        next.dedup();
        for y in next {
            if parent[y.index()] != u32::MAX {
                continue;
            }
            parent[y.index()] = x.0;
            seen.push(y);
            if y == u {
                break 'search;
            }
            queue.push_back(y);
        }
    }
    // Parents lead from `u` back to `v`: pred(u), …, v.
    let mut back = Vec::new();
    let mut x = u;
    while x != v {
        x = PackageId(parent[x.index()]);
        back.push(x);
    }
    for s in seen {
        parent[s.index()] = u32::MAX;
    }
    let mut cycle = Vec::with_capacity(back.len() + 1);
    cycle.push(u);
    cycle.extend(back.into_iter().rev());
    cycle
}

/// FxHash (rustc's hasher): origins come from the tree's own folders, not from an attacker,
/// so SipHash's flooding resistance buys nothing here and costs a third of a tree's load.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}
