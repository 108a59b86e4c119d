//! The compact dependency graph of a tree: edge lists in flat vectors indexed by
//! [`PackageId`], and the questions a build asks of it.
//!
//! Three relations matter, and they differ:
//! - `depends(p)` and `run_depends(p)`: what the manifest says.
//! - `$KILN_DEPS` of `p` ([`DepsWalker::kiln_deps`]): everything reachable from `depends(p)`
//!   over both kinds of edge. `p`'s own `run-depends` are not in it: those are for whoever
//!   depends on `p`.
//! - `wait_for(p)`: what must be built before `p` can start — `depends(p)` and whatever
//!   those reach over `run-depends` edges alone. Everything else in `$KILN_DEPS` is already
//!   built before one of these. This is the graph the executor's ready queue and the
//!   topological order use; it is small (about one entry per `depends`) where `$KILN_DEPS`
//!   can hold thousands.
//!
//! Why flat vectors and not petgraph: a 60,000-package tree is walked many times per plan
//! (closures for keys, priorities), and `u32` offsets into one `Vec` keep that in cache and
//! allocation-free. petgraph is used where it pays: strongly connected components for cycle
//! reports ([`super::Tree`]).

use super::PackageId;

/// Edge lists of all nodes in two flat vectors (compressed sparse rows).
#[derive(Clone, Debug, Default)]
pub(super) struct Csr {
    /// `offsets[i]..offsets[i + 1]` are node `i`'s edges in `targets`.
    offsets: Vec<u32>,
    targets: Vec<PackageId>,
}

impl Csr {
    fn from_lists(lists: &[Vec<PackageId>]) -> Self {
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        let mut targets = Vec::with_capacity(lists.iter().map(Vec::len).sum());
        offsets.push(0);
        for l in lists {
            targets.extend_from_slice(l);
            offsets.push(u32::try_from(targets.len()).expect("fewer than 2^32 edges"));
        }
        Self { offsets, targets }
    }

    /// The reverse relation, each list sorted.
    fn reversed(&self) -> Self {
        let n = self.offsets.len().saturating_sub(1);
        let mut counts = vec![0u32; n + 1];
        for t in &self.targets {
            counts[t.index() + 1] += 1;
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let offsets = counts.clone();
        let mut fill = counts;
        let mut targets = vec![PackageId(0); self.targets.len()];
        // Sources are visited in id order, so every reversed list comes out sorted.
        for src in 0..n {
            for t in self.get(src) {
                let slot = &mut fill[t.index()];
                targets[*slot as usize] = PackageId::new(src);
                *slot += 1;
            }
        }
        Self { offsets, targets }
    }

    pub(super) fn get(&self, i: usize) -> &[PackageId] {
        &self.targets[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// The dependency graph of a valid tree, with its topological order.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    depends: Csr,
    run_depends: Csr,
    wait_for: Csr,
    waiters: Csr,
    /// Every package, dependencies first, grouped by level (see [`Graph::levels`]).
    order: Vec<PackageId>,
    /// `order[level_starts[l]..level_starts[l + 1]]` is level `l`.
    level_starts: Vec<u32>,
}

impl Graph {
    /// The manifest relations only (sorted, distinct lists); [`Graph::with_order`] completes
    /// the graph once it is known to have no cycle.
    pub(super) fn from_lists(depends: &[Vec<PackageId>], run_depends: &[Vec<PackageId>]) -> Self {
        Self {
            depends: Csr::from_lists(depends),
            run_depends: Csr::from_lists(run_depends),
            ..Self::default()
        }
    }

    /// Adds the build-before relation, its reverse and the topological order. The graph must
    /// have no cycle through a `depends` edge (the tree checked that).
    pub(super) fn with_order(mut self) -> Self {
        let n = self.len();
        let mut stamp = vec![u32::MAX; n];
        let mut stack = Vec::new();
        let mut lists = Vec::with_capacity(n);
        for i in 0..n {
            let mut out: Vec<PackageId> = Vec::new();
            let mark = u32::try_from(i).expect("fewer than 2^32 packages");
            for &d in self.depends.get(i) {
                if stamp[d.index()] != mark {
                    stamp[d.index()] = mark;
                    stack.push(d);
                }
            }
            while let Some(x) = stack.pop() {
                out.push(x);
                for &r in self.run_depends.get(x.index()) {
                    if stamp[r.index()] != mark {
                        stamp[r.index()] = mark;
                        stack.push(r);
                    }
                }
            }
            out.sort_unstable();
            lists.push(out);
        }
        self.wait_for = Csr::from_lists(&lists);
        drop(lists);
        self.waiters = self.wait_for.reversed();

        // Kahn's algorithm; a package's level is one more than its deepest wait.
        let mut remaining: Vec<u32> = (0..n)
            .map(|i| u32::try_from(self.wait_for.get(i).len()).unwrap_or(u32::MAX))
            .collect();
        let mut level = vec![0u32; n];
        let mut queue: Vec<PackageId> = (0..n)
            .filter(|&i| remaining[i] == 0)
            .map(PackageId::new)
            .collect();
        let mut head = 0;
        while head < queue.len() {
            let p = queue[head];
            head += 1;
            for &w in self.waiters.get(p.index()) {
                level[w.index()] = level[w.index()].max(level[p.index()] + 1);
                remaining[w.index()] -= 1;
                if remaining[w.index()] == 0 {
                    queue.push(w);
                }
            }
        }
        assert_eq!(queue.len(), n, "the tree was validated to have no cycle");

        // Counting sort by level, ids ascending within a level.
        let levels = level.iter().max().map_or(0, |&m| m as usize + 1);
        let mut starts = vec![0u32; levels + 1];
        for &l in &level {
            starts[l as usize + 1] += 1;
        }
        for l in 0..levels {
            starts[l + 1] += starts[l];
        }
        let mut fill = starts.clone();
        let mut order = vec![PackageId(0); n];
        for (i, &l) in level.iter().enumerate() {
            order[fill[l as usize] as usize] = PackageId::new(i);
            fill[l as usize] += 1;
        }
        self.order = order;
        self.level_starts = starts;
        self
    }

    pub fn len(&self) -> usize {
        self.depends.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `depends` plus `run-depends` edges.
    pub fn edge_count(&self) -> usize {
        self.depends.targets.len() + self.run_depends.targets.len()
    }

    /// The manifest's `depends`, resolved, sorted by origin, without repeats.
    pub fn depends(&self, p: PackageId) -> &[PackageId] {
        self.depends.get(p.index())
    }

    /// The manifest's `run-depends`, resolved, sorted by origin, without repeats.
    pub fn run_depends(&self, p: PackageId) -> &[PackageId] {
        self.run_depends.get(p.index())
    }

    /// What must be built before `p` starts: its `depends` and what they reach over
    /// `run-depends` alone (sorted). The rest of `$KILN_DEPS` comes before these.
    pub fn wait_for(&self, p: PackageId) -> &[PackageId] {
        self.wait_for.get(p.index())
    }

    /// The packages that wait for `p` ([`Graph::wait_for`] reversed, sorted): what a failed
    /// `p` skips, transitively.
    pub fn waiters(&self, p: PackageId) -> &[PackageId] {
        self.waiters.get(p.index())
    }

    /// The whole [`Graph::waiters`] relation, for a [`super::Schedule`] to own a copy.
    pub(super) fn waiters_csr(&self) -> &Csr {
        &self.waiters
    }

    /// Every package, each after everything it waits for; levels in turn, ids ascending in
    /// each.
    pub fn order(&self) -> &[PackageId] {
        &self.order
    }

    /// The topological order cut into levels: level 0 waits for nothing, a package of level
    /// `l` waits for at least one of level `l - 1` and none of a later level, so the packages
    /// of one level can be handled in parallel once earlier levels are done. The number of
    /// levels is the tree's depth.
    pub fn levels(&self) -> impl ExactSizeIterator<Item = &[PackageId]> {
        self.level_starts
            .windows(2)
            .map(|w| &self.order[w[0] as usize..w[1] as usize])
    }

    /// Everything: the selection of a whole-tree build.
    pub fn select_all(&self) -> Selection {
        Selection {
            members: (0..self.len()).map(PackageId::new).collect(),
            mask: vec![true; self.len()],
        }
    }

    /// `roots` with everything they need: their `$KILN_DEPS` and their own `run-depends`
    /// (with what those need), since a package is only usable with its run-time
    /// dependencies — as `poudriere bulk` builds them for a named port.
    pub fn select(&self, roots: &[PackageId]) -> Selection {
        let mut mask = vec![false; self.len()];
        let mut stack: Vec<PackageId> = Vec::new();
        for &r in roots {
            if !mask[r.index()] {
                mask[r.index()] = true;
                stack.push(r);
            }
        }
        while let Some(x) = stack.pop() {
            for &d in self.depends(x).iter().chain(self.run_depends(x)) {
                if !mask[d.index()] {
                    mask[d.index()] = true;
                    stack.push(d);
                }
            }
        }
        let members = (0..self.len())
            .filter(|&i| mask[i])
            .map(PackageId::new)
            .collect();
        Selection { members, mask }
    }

    /// Critical-path priorities: for each selected package, its own weight plus the heaviest
    /// chain of selected packages waiting on it — how much work at least remains once it
    /// starts. The ready queue runs the highest first, so long chains start early and the
    /// build's makespan approaches its critical path. `weight` is a package's expected
    /// duration (kiln uses the last duration from history, 1 when unknown). Unselected
    /// packages get 0.
    pub fn priorities(
        &self,
        selection: &Selection,
        mut weight: impl FnMut(PackageId) -> u64,
    ) -> Vec<u64> {
        let mut prio = vec![0u64; self.len()];
        for &p in self.order.iter().rev() {
            if !selection.contains(p) {
                continue;
            }
            let after = self
                .waiters(p)
                .iter()
                .map(|w| prio[w.index()])
                .max()
                .unwrap_or(0);
            prio[p.index()] = weight(p).saturating_add(after);
        }
        prio
    }
}

/// A set of packages closed under what they need ([`Graph::select`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    members: Vec<PackageId>,
    mask: Vec<bool>,
}

impl Selection {
    pub fn contains(&self, p: PackageId) -> bool {
        self.mask.get(p.index()).copied().unwrap_or(false)
    }

    /// The members in id (origin) order.
    pub fn ids(&self) -> &[PackageId] {
        &self.members
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members in `graph`'s topological order.
    pub fn in_order(&self, graph: &Graph) -> Vec<PackageId> {
        graph
            .order()
            .iter()
            .copied()
            .filter(|&p| self.contains(p))
            .collect()
    }
}

/// Computes `$KILN_DEPS` closures one after another with one scratch array, so a walk costs
/// the size of its closure and allocates nothing once warm.
pub struct DepsWalker<'g> {
    graph: &'g Graph,
    stamp: Vec<u32>,
    epoch: u32,
    stack: Vec<PackageId>,
    out: Vec<PackageId>,
}

impl<'g> DepsWalker<'g> {
    pub fn new(graph: &'g Graph) -> Self {
        Self {
            graph,
            stamp: vec![0; graph.len()],
            epoch: 0,
            stack: Vec::new(),
            out: Vec::new(),
        }
    }

    /// `$KILN_DEPS` of `p`: everything reachable from `depends(p)` over `depends` and
    /// `run-depends` edges, sorted by origin. The slice is valid until the next call.
    pub fn kiln_deps(&mut self, p: PackageId) -> &[PackageId] {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamp.fill(0);
            self.epoch = 1;
        }
        let e = self.epoch;
        self.out.clear();
        for &d in self.graph.depends(p) {
            if self.stamp[d.index()] != e {
                self.stamp[d.index()] = e;
                self.stack.push(d);
            }
        }
        while let Some(x) = self.stack.pop() {
            self.out.push(x);
            for &d in self
                .graph
                .depends(x)
                .iter()
                .chain(self.graph.run_depends(x))
            {
                if self.stamp[d.index()] != e {
                    self.stamp[d.index()] = e;
                    self.stack.push(d);
                }
            }
        }
        self.out.sort_unstable();
        &self.out
    }
}
