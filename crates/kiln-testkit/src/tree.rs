//! Synthetic package trees for tests and benchmarks of `kiln build`.
//!
//! The shape imitates a ports tree: ~60 categories of very different sizes, most packages a
//! few levels above the bottom and a thin tail reaching depth ~40, and heavy-tailed fan-in —
//! a handful of base libraries needed by thousands of packages, most packages needed by few
//! or none. Everything follows from the seed (a splitmix64 generator, not `rand`: the
//! sequence must never change under a dependency upgrade, or benchmark trees would drift).
//!
//! The same graph can be written as a tree folder ([`GeneratedTree::write`]) and as a
//! `build.ninja` ([`GeneratedTree::write_ninja`]) so that `kiln build --dry-run` and
//! `ninja -n` plan the same work. Optional cycles make bad input for validation tests;
//! [`GeneratedTree::cycles`] says where they are.
//!
//! This module does not depend on kiln-core: it writes files kiln then has to read, so it
//! cannot share kiln's notion of a manifest by accident.

use std::io::{self, Write};
use std::path::Path;

/// What to generate.
#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub packages: usize,
    pub seed: u64,
    /// Dependency cycles to inject (each a back edge along a chain of 1 to 5 packages).
    pub cycles: usize,
    /// Each build sleeps a duration drawn uniformly from this range (milliseconds) before
    /// running [`TreeSpec::build`], for makespan benchmarks.
    pub sleep_ms: Option<(u32, u32)>,
    /// The build command.
    pub build: String,
    /// The deepest level (the longest dependency chain has `depth + 1` packages).
    pub depth: u32,
}

impl TreeSpec {
    pub fn new(packages: usize, seed: u64) -> Self {
        Self {
            packages,
            seed,
            cycles: 0,
            sleep_ms: None,
            build: "true".to_owned(),
            depth: 40,
        }
    }
}

/// A generated graph: package `i` is `origins[i]`; edges are indices.
#[derive(Clone, Debug)]
pub struct GeneratedTree {
    pub origins: Vec<String>,
    pub versions: Vec<String>,
    pub depends: Vec<Vec<u32>>,
    pub run_depends: Vec<Vec<u32>>,
    /// Each package's sleep before its build command (0 without `sleep_ms`).
    pub sleep_ms: Vec<u32>,
    /// The injected cycles, each as packages `a0 → a1 → … → ak → a0` along `depends`; the
    /// back edge `ak → a0` is the one that was added.
    pub cycles: Vec<Vec<u32>>,
    pub build: String,
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for test data.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// Categories of a ports tree, the first ones biggest (sizes fall off like Zipf's law).
const CATEGORIES: [&str; 60] = [
    "devel",
    "www",
    "textproc",
    "sysutils",
    "net",
    "security",
    "graphics",
    "databases",
    "multimedia",
    "math",
    "science",
    "audio",
    "misc",
    "lang",
    "x11",
    "mail",
    "games",
    "print",
    "editors",
    "net-mgmt",
    "archivers",
    "comms",
    "converters",
    "dns",
    "emulators",
    "finance",
    "ftp",
    "irc",
    "java",
    "net-im",
    "net-p2p",
    "news",
    "ports-mgmt",
    "shells",
    "x11-fonts",
    "x11-toolkits",
    "x11-wm",
    "x11-themes",
    "deskutils",
    "cad",
    "biology",
    "astro",
    "benchmarks",
    "accessibility",
    "x11-drivers",
    "x11-servers",
    "x11-fm",
    "x11-clocks",
    "japanese",
    "chinese",
    "russian",
    "german",
    "french",
    "korean",
    "polish",
    "hungarian",
    "ukrainian",
    "vietnamese",
    "hebrew",
    "arabic",
];

/// Name stems, so origins look like a tree's and sort in no relation to levels.
const STEMS: [&str; 12] = [
    "lib", "py-", "p5-", "rubygem-", "font-", "go-", "rust-", "qt-", "", "", "", "",
];

impl GeneratedTree {
    pub fn generate(spec: &TreeSpec) -> Self {
        let n = spec.packages;
        let mut rng = SplitMix64::new(spec.seed);

        // Level sizes: a bump around level 6 with a long thin tail, at least one package on
        // every level so the deepest chain is `depth` long.
        let depth = spec.depth.max(1) as usize;
        let levels = depth.min(n.saturating_sub(1)) + 1;
        let weights: Vec<f64> = (0..levels)
            .map(|l| {
                let l = l as f64;
                if l == 0.0 {
                    1.5
                } else {
                    l * (-l / 6.0).exp() + 0.02
                }
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let mut sizes: Vec<usize> = weights
            .iter()
            .map(|w| ((w / total) * n as f64).floor().max(1.0) as usize)
            .collect();
        let assigned: usize = sizes.iter().sum();
        if assigned < n {
            sizes[levels.min(7) - 1] += n - assigned;
        } else {
            // Tiny trees: take the excess from the biggest levels.
            let mut excess = assigned - n;
            while excess > 0 {
                let (i, _) = sizes
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, s)| **s)
                    .expect("levels");
                sizes[i] -= 1;
                excess -= 1;
            }
        }
        let mut level_start = Vec::with_capacity(levels + 1);
        let mut acc = 0;
        for s in &sizes {
            level_start.push(acc);
            acc += s;
        }
        level_start.push(acc);
        let level_of = |i: usize| level_start.partition_point(|&s| s <= i) - 1;

        // Popularity: Pareto(α = 1.1) times a factor favouring low levels, so a few base
        // packages collect thousands of dependents.
        let mut cum = Vec::with_capacity(n + 1);
        cum.push(0.0f64);
        for i in 0..n {
            let pareto = (1.0 - rng.unit()).powf(-1.0 / 1.1);
            let lf = 1.0 / (1.0 + level_of(i) as f64).powf(1.5);
            cum.push(cum[i] + pareto * lf);
        }
        let pick_below = |rng: &mut SplitMix64, end: usize| -> u32 {
            let x = rng.unit() * cum[end];
            (cum[1..=end].partition_point(|&c| c <= x)).min(end - 1) as u32
        };

        let mut depends: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut run_depends: Vec<Vec<u32>> = vec![Vec::new(); n];
        for l in 1..levels {
            for i in level_start[l]..level_start[l + 1] {
                let mut deps = Vec::new();
                let prev = level_start[l - 1] + rng.below(sizes[l - 1]);
                deps.push(prev as u32);
                // 1 + geometric extra dependencies, mean about 3.
                let mut extra = 1;
                while extra < 24 && rng.unit() < 0.7 {
                    extra += 1;
                }
                for _ in 0..extra {
                    deps.push(pick_below(&mut rng, level_start[l]));
                }
                deps.sort_unstable();
                deps.dedup();
                depends[i] = deps;
                if rng.unit() < 0.25 {
                    let mut run: Vec<u32> = (0..1 + rng.below(2))
                        .map(|_| pick_below(&mut rng, level_start[l]))
                        .collect();
                    run.sort_unstable();
                    run.dedup();
                    run_depends[i] = run;
                }
            }
        }

        let mut cycles = Vec::new();
        let mut in_cycle = vec![false; n];
        let lowest = level_start[levels.min(3)];
        let mut attempts = 0;
        while cycles.len() < spec.cycles && attempts < spec.cycles * 100 + 100 && lowest < n {
            attempts += 1;
            let x = lowest + rng.below(n - lowest);
            if in_cycle[x] {
                continue;
            }
            let len = rng.below(5);
            let mut path = vec![x as u32];
            let mut at = x;
            for _ in 0..len {
                let next = depends[at][rng.below(depends[at].len())] as usize;
                if in_cycle[next] || path.contains(&(next as u32)) || depends[next].is_empty() {
                    break;
                }
                path.push(next as u32);
                at = next;
            }
            for &p in &path {
                in_cycle[p as usize] = true;
            }
            depends[at].push(x as u32);
            depends[at].sort_unstable();
            depends[at].dedup();
            cycles.push(path);
        }

        // Names: a category by Zipf weight, a stem, the index (unique).
        let zipf: Vec<f64> = (0..CATEGORIES.len())
            .scan(0.0, |acc, r| {
                *acc += 1.0 / (r as f64 + 1.0);
                Some(*acc)
            })
            .collect();
        let mut origins = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut sleep_ms = Vec::with_capacity(n);
        for i in 0..n {
            let x = rng.unit() * zipf[zipf.len() - 1];
            let cat = CATEGORIES[zipf.partition_point(|&c| c <= x).min(CATEGORIES.len() - 1)];
            let stem = STEMS[rng.below(STEMS.len())];
            origins.push(format!("{cat}/{stem}pkg{i}"));
            versions.push(format!(
                "{}.{}.{}",
                rng.below(5),
                rng.below(20),
                rng.below(10)
            ));
            sleep_ms.push(match spec.sleep_ms {
                Some((lo, hi)) if hi > lo => lo + rng.below((hi - lo + 1) as usize) as u32,
                Some((lo, _)) => lo,
                None => 0,
            });
        }

        Self {
            origins,
            versions,
            depends,
            run_depends,
            sleep_ms,
            cycles,
            build: spec.build.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.origins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Package `i`'s `kiln-package.toml`.
    pub fn manifest(&self, i: usize) -> String {
        let list = |ids: &[u32]| {
            ids.iter()
                .map(|&d| toml_string(&self.origins[d as usize]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!("version = {}\n", toml_string(&self.versions[i]));
        s.push_str(&format!("depends = [{}]\n", list(&self.depends[i])));
        if !self.run_depends[i].is_empty() {
            s.push_str(&format!("run-depends = [{}]\n", list(&self.run_depends[i])));
        }
        let build = match self.sleep_ms[i] {
            0 => self.build.clone(),
            ms => format!("sleep {}.{:03} && {}", ms / 1000, ms % 1000, self.build),
        };
        s.push_str(&format!("build = {}\n", toml_string(&build)));
        s
    }

    /// Writes the tree under `dir`: `CATEGORY/NAME/kiln-package.toml` and a `pkg-descr`
    /// (so a package folder holds more than its manifest, as in a ports tree). Several
    /// threads write, since the file system is the slow part.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = self.len().div_ceil(threads).max(1);
        let indices: Vec<usize> = (0..self.len()).collect();
        std::thread::scope(|scope| {
            let workers: Vec<_> = indices
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || -> io::Result<()> {
                        for &i in part {
                            let pkg = dir.join(&self.origins[i]);
                            std::fs::create_dir_all(&pkg)?;
                            std::fs::write(pkg.join("kiln-package.toml"), self.manifest(i))?;
                            std::fs::write(
                                pkg.join("pkg-descr"),
                                format!("Synthetic package {}.\n", self.origins[i]),
                            )?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| io::Error::other("a writer thread panicked"))??;
            }
            Ok(())
        })
    }

    /// What package `i` waits for before it can build: its `depends` and what those reach
    /// over `run-depends` alone (kiln's build-before relation), sorted.
    pub fn wait_for(&self, i: usize) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let mut stack: Vec<u32> = self.depends[i].clone();
        while let Some(x) = stack.pop() {
            if out.contains(&x) {
                continue;
            }
            out.push(x);
            stack.extend(&self.run_depends[x as usize]);
        }
        out.sort_unstable();
        out
    }

    /// Writes the same build-before graph as `dir/build.ninja` (paths relative to `dir`, the
    /// tree's root): one edge per package whose inputs are its folder's files and, as
    /// implicit inputs, the stamps of what it waits for, so `ninja -n` stats and orders
    /// what `kiln build --dry-run` reads and orders. Stamps go under `.ninja-out/`, which
    /// kiln skips as hidden. Refused for a tree with cycles, which ninja would reject too.
    pub fn write_ninja(&self, dir: &Path) -> io::Result<()> {
        if !self.cycles.is_empty() {
            return Err(io::Error::other("a tree with cycles has no build.ninja"));
        }
        let f = std::fs::File::create(dir.join("build.ninja"))?;
        let mut w = io::BufWriter::new(f);
        writeln!(w, "rule pkg\n  command = touch $out\n")?;
        for i in 0..self.len() {
            let o = &self.origins[i];
            write!(
                w,
                "build .ninja-out/{o}.stamp: pkg {o}/kiln-package.toml {o}/pkg-descr"
            )?;
            let waits = self.wait_for(i);
            if !waits.is_empty() {
                write!(w, " |")?;
                for d in waits {
                    write!(w, " .ninja-out/{}.stamp", self.origins[d as usize])?;
                }
            }
            writeln!(w)?;
        }
        w.flush()
    }

    /// The longest chain of packages (levels + 1) and the largest fan-in, for summaries.
    pub fn shape(&self) -> (usize, usize) {
        let n = self.len();
        let mut fan_in = vec![0usize; n];
        for deps in &self.depends {
            for &d in deps {
                fan_in[d as usize] += 1;
            }
        }
        // Generation order is level order, so one pass in index order finds depths (for
        // an acyclic tree; edges added for cycles are ignored).
        let mut depth = vec![0usize; n];
        for i in 0..n {
            depth[i] = self.depends[i]
                .iter()
                .filter(|&&d| (d as usize) < i)
                .map(|&d| depth[d as usize] + 1)
                .max()
                .unwrap_or(0);
        }
        (
            depth.iter().max().map_or(0, |d| d + 1),
            fan_in.into_iter().max().unwrap_or(0),
        )
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_tree() {
        let a = GeneratedTree::generate(&TreeSpec::new(2_000, 5));
        let b = GeneratedTree::generate(&TreeSpec::new(2_000, 5));
        let c = GeneratedTree::generate(&TreeSpec::new(2_000, 6));
        assert_eq!(a.origins, b.origins);
        assert_eq!(a.depends, b.depends);
        assert_eq!(a.run_depends, b.run_depends);
        assert_ne!(a.depends, c.depends);
    }

    /// Tens of thousands of packages: ~60 categories, depth ~40, a few packages needed by
    /// thousands and most by a handful.
    #[test]
    fn the_shape_is_ports_like() {
        let t = GeneratedTree::generate(&TreeSpec::new(30_000, 1));
        let (depth, max_fan_in) = t.shape();
        assert_eq!(depth, 41);
        assert!(max_fan_in > 2_000, "max fan-in {max_fan_in}");
        let mut fan_in = vec![0usize; t.len()];
        for deps in &t.depends {
            for &d in deps {
                fan_in[d as usize] += 1;
            }
        }
        fan_in.sort_unstable();
        let median = fan_in[fan_in.len() / 2];
        assert!(median <= 3, "median fan-in {median}");
        let categories: std::collections::BTreeSet<&str> = t
            .origins
            .iter()
            .filter_map(|o| o.split_once('/').map(|(c, _)| c))
            .collect();
        assert!(categories.len() >= 55, "{} categories", categories.len());
        let unique: std::collections::BTreeSet<&String> = t.origins.iter().collect();
        assert_eq!(unique.len(), t.len());
    }

    #[test]
    fn cycles_are_injected_as_asked_and_recorded() {
        let mut spec = TreeSpec::new(3_000, 2);
        spec.cycles = 4;
        let t = GeneratedTree::generate(&spec);
        assert_eq!(t.cycles.len(), 4);
        for cycle in &t.cycles {
            for (i, &p) in cycle.iter().enumerate() {
                let next = cycle[(i + 1) % cycle.len()];
                assert!(t.depends[p as usize].contains(&next), "{cycle:?}");
            }
        }
        let dir = tempfile::tempdir().expect("temporary folder");
        assert!(
            t.write_ninja(dir.path()).is_err(),
            "ninja cannot take cycles"
        );
    }

    #[test]
    fn manifests_quote_commands_and_sleep() {
        let mut spec = TreeSpec::new(50, 3);
        spec.sleep_ms = Some((1_500, 1_500));
        spec.build = "echo \"hi\" > $KILN_OUT/x".to_owned();
        let t = GeneratedTree::generate(&spec);
        let m = t.manifest(0);
        assert!(
            m.contains("build = \"sleep 1.500 && echo \\\"hi\\\" > $KILN_OUT/x\"\n"),
            "{m}"
        );
        assert!(m.starts_with("version = \""));
    }

    #[test]
    fn ninja_has_one_edge_per_package_with_its_waits() {
        let t = GeneratedTree::generate(&TreeSpec::new(200, 4));
        let dir = tempfile::tempdir().expect("temporary folder");
        t.write_ninja(dir.path()).expect("write");
        let text = std::fs::read_to_string(dir.path().join("build.ninja")).expect("read");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("build ")).count(),
            200
        );
        let last = t.len() - 1;
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("build .ninja-out/{}.stamp:", t.origins[last])))
            .expect("an edge for the last package");
        for d in t.wait_for(last) {
            assert!(line.contains(&format!(".ninja-out/{}.stamp", t.origins[d as usize])));
        }
    }
}
