use super::*;

fn manifest(depends: &[&str], run_depends: &[&str]) -> Manifest {
    let dep = |o: &&str| Dependency {
        origin: (*o).to_owned(),
        line: 2,
    };
    Manifest {
        version: "1.0".to_owned(),
        depends: depends.iter().map(dep).collect(),
        run_depends: run_depends.iter().map(dep).collect(),
        fetch: None,
        distfiles: Vec::new(),
        build: "make".to_owned(),
    }
}

/// A tree from `(origin, depends, run-depends)`.
fn tree(spec: &[(&str, &[&str], &[&str])]) -> Result<Tree, TreeErrors> {
    Tree::from_manifests(
        spec.iter()
            .map(|(o, d, r)| ((*o).to_owned(), manifest(d, r))),
    )
}

fn origins(t: &Tree, ids: &[PackageId]) -> Vec<String> {
    ids.iter().map(|&p| t.origin(p).to_owned()).collect()
}

fn id(t: &Tree, o: &str) -> PackageId {
    t.id(o).unwrap_or_else(|| panic!("{o} is in the tree"))
}

#[test]
fn manifest_with_every_key() {
    let src = r#"
version = "2.4.1"
depends = ["devel/gmake", "lang/perl5"]
run-depends = ["lang/perl5"]
fetch = "curl -LO https://example.org/foo-2.4.1.tar.gz"
distfiles = { "foo-2.4.1.tar.gz" = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }
build = '''make install DESTDIR="$KILN_OUT"'''
"#;
    let m = parse_manifest("x/y/kiln-package.toml", src).expect("valid");
    assert_eq!(m.version, "2.4.1");
    assert_eq!(
        m.depends,
        vec![
            Dependency {
                origin: "devel/gmake".into(),
                line: 3
            },
            Dependency {
                origin: "lang/perl5".into(),
                line: 3
            }
        ]
    );
    assert_eq!(m.run_depends[0].origin, "lang/perl5");
    assert_eq!(
        m.fetch.as_deref(),
        Some("curl -LO https://example.org/foo-2.4.1.tar.gz")
    );
    assert_eq!(m.distfiles.len(), 1);
    assert_eq!(m.distfiles[0].name, "foo-2.4.1.tar.gz");
    assert_eq!(m.distfiles[0].sha256[0], 0x9f);
    assert_eq!(m.build, "make install DESTDIR=\"$KILN_OUT\"");
}

#[test]
fn minimal_manifest_and_table_syntax() {
    let m = parse_manifest(
        "f",
        "version = \"1\"\nbuild = \"true\"\n[distfiles]\n\"a.tgz\" = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n",
    )
    .expect("valid");
    assert!(m.depends.is_empty() && m.run_depends.is_empty() && m.fetch.is_none());
    assert_eq!(m.distfiles[0].name, "a.tgz");
}

#[test]
fn every_problem_of_a_manifest_is_reported_with_line_and_key() {
    let src = "version = 3\ndepends = [\"devel/a\", \"nope\", 4]\ncolour = \"red\"\ndistfiles = { \"../x\" = \"sha256:00\", \"b\" = \"md5:1\" }\n";
    let errors = parse_manifest("cat/pkg/kiln-package.toml", src).expect_err("invalid");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "cat/pkg/kiln-package.toml:1: `build`: missing (every manifest needs `version` and `build`)",
            "cat/pkg/kiln-package.toml:1: `version`: must be a string, not integer",
            "cat/pkg/kiln-package.toml:2: `depends[1]`: `nope` is not an origin (\"category/name\", one slash)",
            "cat/pkg/kiln-package.toml:2: `depends[2]`: must be an origin string, not integer",
            "cat/pkg/kiln-package.toml:3: `colour`: unknown key (a manifest has version, depends, run-depends, fetch, distfiles, build)",
            "cat/pkg/kiln-package.toml:4: `distfiles.\"../x\"`: a distfile is a plain file name (no `/`, not `.` or `..`)",
            "cat/pkg/kiln-package.toml:4: `distfiles.\"b\"`: must be \"sha256:\" followed by 64 lowercase hex digits",
        ]
    );
}

#[test]
fn a_syntax_error_is_reported_alone_with_its_line() {
    let errors =
        parse_manifest("f", "version = \"1\"\nbuild = \"x\"\ndepends = [\n").expect_err("invalid");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, None);
    assert!(errors[0].line >= 3, "{}", errors[0]);
}

#[test]
fn origins_have_exactly_one_slash() {
    for ok in ["devel/gmake", "x11-fonts/font-a", "a/b"] {
        assert!(is_origin(ok), "{ok}");
    }
    for bad in ["devel", "a/b/c", "/b", "a/", "../b", "a/..", "a b/c", ""] {
        assert!(!is_origin(bad), "{bad}");
    }
}

#[test]
fn ids_follow_origin_order_and_dependencies_resolve() {
    let t = tree(&[
        ("z/app", &["a/lib", "m/tool", "a/lib"], &[]),
        ("a/lib", &[], &[]),
        ("m/tool", &[], &["a/lib"]),
    ])
    .expect("valid");
    assert_eq!(
        origins(&t, &t.ids().collect::<Vec<_>>()),
        ["a/lib", "m/tool", "z/app"]
    );
    let app = id(&t, "z/app");
    // Repeats collapse; lists are sorted by origin.
    assert_eq!(origins(&t, t.graph().depends(app)), ["a/lib", "m/tool"]);
    assert_eq!(
        origins(&t, t.graph().run_depends(id(&t, "m/tool"))),
        ["a/lib"]
    );
    assert_eq!(t.package(app).build, "make");
}

/// `$KILN_DEPS` is the closure of `depends` and of their `run-depends`, without the
/// package's own `run-depends`; `wait_for` is the smaller build-before relation.
#[test]
fn kiln_deps_closure_and_wait_for() {
    let t = tree(&[
        ("a/app", &["b/lib"], &["r/own-runtime"]),
        ("b/lib", &["c/base"], &["d/runtime"]),
        ("c/base", &[], &[]),
        ("d/runtime", &["e/deep"], &["f/runtime2"]),
        ("e/deep", &[], &[]),
        ("f/runtime2", &[], &[]),
        ("r/own-runtime", &[], &[]),
    ])
    .expect("valid");
    let g = t.graph();
    let mut w = DepsWalker::new(g);
    let app = id(&t, "a/app");
    assert_eq!(
        origins(&t, w.kiln_deps(app)),
        ["b/lib", "c/base", "d/runtime", "e/deep", "f/runtime2"]
    );
    assert_eq!(origins(&t, w.kiln_deps(id(&t, "b/lib"))), ["c/base"]);
    assert_eq!(
        origins(&t, w.kiln_deps(id(&t, "c/base"))),
        Vec::<String>::new()
    );
    // app waits for lib and for what lib needs at run time; the rest comes before those.
    assert_eq!(
        origins(&t, g.wait_for(app)),
        ["b/lib", "d/runtime", "f/runtime2"]
    );
    assert_eq!(origins(&t, g.waiters(id(&t, "d/runtime"))), ["a/app"]);

    // Every package comes after what it waits for, levels hold no edge inside them.
    let pos: Vec<usize> = {
        let mut pos = vec![0; t.len()];
        for (i, p) in g.order().iter().enumerate() {
            pos[p.index()] = i;
        }
        pos
    };
    for p in t.ids() {
        for &d in g.wait_for(p) {
            assert!(
                pos[d.index()] < pos[p.index()],
                "{} before {}",
                t.origin(d),
                t.origin(p)
            );
        }
    }
    let levels: Vec<Vec<String>> = g.levels().map(|l| origins(&t, l)).collect();
    assert_eq!(
        levels,
        [
            vec!["c/base", "e/deep", "f/runtime2", "r/own-runtime"],
            vec!["b/lib", "d/runtime"],
            vec!["a/app"],
        ]
    );
}

#[test]
fn selection_takes_what_the_named_packages_need() {
    let t = tree(&[
        ("a/app", &["b/lib"], &["r/runtime"]),
        ("b/lib", &["c/base"], &[]),
        ("c/base", &[], &[]),
        ("r/runtime", &["c/base"], &[]),
        ("u/unrelated", &["c/base"], &[]),
    ])
    .expect("valid");
    let sel = t.select(&["a/app"]).expect("known");
    assert_eq!(
        origins(&t, sel.ids()),
        ["a/app", "b/lib", "c/base", "r/runtime"]
    );
    assert!(!sel.contains(id(&t, "u/unrelated")));
    assert_eq!(
        origins(&t, &sel.in_order(t.graph()))[0],
        "c/base",
        "dependencies first"
    );
    assert_eq!(
        t.select(&["a/app", "x/nope", "b/nope"]),
        Err(UnknownOrigins(vec!["b/nope".into(), "x/nope".into()]))
    );
    assert_eq!(t.graph().select_all().len(), 5);
}

#[test]
fn critical_path_priorities() {
    // base ← lib ← app (a chain of three) and base ← tool (short); durations weigh.
    let t = tree(&[
        ("a/app", &["b/lib"], &[]),
        ("b/lib", &["c/base"], &[]),
        ("c/base", &[], &[]),
        ("t/tool", &["c/base"], &[]),
        ("x/slow", &[], &[]),
    ])
    .expect("valid");
    let weight = |p: PackageId| match t.origin(p) {
        "x/slow" => 100,
        "t/tool" => 7,
        _ => 1,
    };
    let all = t.graph().select_all();
    let prio = t.graph().priorities(&all, weight);
    let of = |o: &str| prio[id(&t, o).index()];
    assert_eq!(of("a/app"), 1);
    assert_eq!(of("b/lib"), 2);
    assert_eq!(of("t/tool"), 7);
    // base heads both chains: 1 + max(lib chain 2, tool 7).
    assert_eq!(of("c/base"), 8);
    assert_eq!(of("x/slow"), 100);

    // Outside the selection nothing counts.
    let sel = t.select(&["b/lib"]).expect("known");
    let prio = t.graph().priorities(&sel, weight);
    assert_eq!(prio[id(&t, "c/base").index()], 2);
    assert_eq!(prio[id(&t, "t/tool").index()], 0);
}

fn keys_with(t: &Tree, folders: &[FolderDigest], toolchain: &[u8]) -> Keys {
    package_keys(t, &t.graph().select_all(), folders, toolchain)
}

/// Changing one package's folder changes exactly its key and the keys of the packages that
/// have it in their `$KILN_DEPS` (also through `run-depends`).
#[test]
fn one_folder_change_changes_exactly_its_dependents_keys() {
    let t = tree(&[
        ("a/app", &["b/lib"], &[]),
        ("b/lib", &["c/base"], &["d/runtime"]),
        ("c/base", &[], &[]),
        ("d/runtime", &[], &[]),
        ("e/other", &["c/base"], &[]),
        ("f/user-of-runtime", &["d/runtime"], &[]),
        ("g/alone", &[], &[]),
    ])
    .expect("valid");
    let folders: Vec<FolderDigest> = (0..t.len())
        .map(|i| FolderDigest([u8::try_from(i).expect("small"); 32]))
        .collect();
    let before = keys_with(&t, &folders, b"cc 14");
    let mut changed = folders.clone();
    changed[id(&t, "d/runtime").index()].0[0] ^= 1;
    let after = keys_with(&t, &changed, b"cc 14");
    let differ: Vec<&str> = t
        .ids()
        .filter(|&p| before.get(p) != after.get(p))
        .map(|p| t.origin(p))
        .collect();
    // b/lib only run-depends on d/runtime: its own build does not see it, its dependents do.
    assert_eq!(differ, ["a/app", "d/runtime", "f/user-of-runtime"]);

    // The toolchain fingerprint is part of every key.
    let other = keys_with(&t, &folders, b"cc 15");
    assert!(t.ids().all(|p| before.get(p) != other.get(p)));
    // Same input, same keys; keys are lowercase hex.
    assert_eq!(before, keys_with(&t, &folders, b"cc 14"));
    let hex = before.get(id(&t, "a/app")).expect("keyed").to_hex();
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(Key::from_hex(&hex).as_ref(), before.get(id(&t, "a/app")));
}

#[test]
fn commands_and_manifest_fields_are_in_the_key() {
    let base = || {
        vec![
            ("a/app".to_owned(), manifest(&["b/lib"], &[])),
            ("b/lib".to_owned(), manifest(&[], &[])),
        ]
    };
    let key_of_app = |ms: Vec<(String, Manifest)>| {
        let t = Tree::from_manifests(ms).expect("valid");
        let folders = vec![FolderDigest::default(); t.len()];
        *keys_with(&t, &folders, b"")
            .get(id(&t, "a/app"))
            .expect("keyed")
    };
    let reference = key_of_app(base());
    let mut changed = base();
    changed[1].1.build = "make -j4".into();
    assert_ne!(
        key_of_app(changed),
        reference,
        "a dependency's build command"
    );
    let mut changed = base();
    changed[0].1.fetch = Some("curl x".into());
    assert_ne!(key_of_app(changed), reference, "fetch");
    let mut changed = base();
    changed[0].1.version = "1.1".into();
    assert_ne!(key_of_app(changed), reference, "version");
    let mut changed = base();
    changed[0].1.distfiles.push(Distfile {
        name: "a.tgz".into(),
        sha256: [0; 32],
    });
    assert_ne!(key_of_app(changed), reference, "distfiles");
}

#[test]
fn only_selected_packages_are_keyed() {
    let t = tree(&[
        ("a/app", &["b/lib"], &[]),
        ("b/lib", &[], &[]),
        ("c/x", &[], &[]),
    ])
    .expect("valid");
    let sel = t.select(&["a/app"]).expect("known");
    let keys = package_keys(&t, &sel, &[FolderDigest::default(); 3], b"");
    assert!(keys.get(id(&t, "a/app")).is_some() && keys.get(id(&t, "b/lib")).is_some());
    assert!(keys.get(id(&t, "c/x")).is_none());
}

#[test]
fn parallel_map_keeps_input_order() {
    let items: Vec<u32> = (0..10_000).collect();
    let out = par::map(&items, |&x| x * 2);
    assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    assert!(par::map(&[] as &[u32], |&x| x).is_empty());
}

/// A group with more cycles than are worth listing: the first ones, then one line naming the
/// whole group.
#[test]
fn a_tangled_group_lists_some_cycles_and_names_the_group() {
    let leaves: Vec<String> = (0..40).map(|i| format!("leaf/p{i:02}")).collect();
    let leaf_refs: Vec<&str> = leaves.iter().map(String::as_str).collect();
    let mut spec: Vec<(&str, &[&str], &[&str])> = vec![("a/hub", &leaf_refs, &[])];
    for leaf in &leaf_refs {
        spec.push((leaf, &["a/hub"], &[]));
    }
    let errors = tree(&spec).expect_err("cycles");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 33, "{errors}");
    assert_eq!(shown[0], "dependency cycle: a/hub → leaf/p00 → a/hub");
    assert_eq!(
        shown[32],
        "dependency cycles: 41 packages depend on each other (a/hub, leaf/p00, leaf/p01, leaf/p02, leaf/p03, leaf/p04, leaf/p05, leaf/p06, leaf/p07, leaf/p08, … 31 more); only 32 of their cycles are listed"
    );
}

#[test]
fn duplicate_and_invalid_origins_are_refused() {
    let errors = Tree::from_manifests([
        ("a/x".to_owned(), manifest(&[], &[])),
        ("a/x".to_owned(), manifest(&[], &[])),
        ("nocategory".to_owned(), manifest(&[], &[])),
    ])
    .expect_err("invalid");
    assert_eq!(
        errors.to_string(),
        "a/x: defined more than once\nnocategory/kiln-package.toml:1: `nocategory` is not an origin (\"category/name\", one slash)"
    );
}

#[test]
fn toolchain_fingerprints_ignore_order_but_not_content() {
    let a = toolchain_fingerprint([("CC", "cc 14"), ("PATH", "/usr/bin")]);
    assert_eq!(
        a,
        toolchain_fingerprint([("PATH", "/usr/bin"), ("CC", "cc 14")])
    );
    assert_ne!(
        a,
        toolchain_fingerprint([("CC", "cc 15"), ("PATH", "/usr/bin")])
    );
    // Length prefixes: moving a character between name and value is a change.
    assert_ne!(
        toolchain_fingerprint([("AB", "C")]),
        toolchain_fingerprint([("A", "BC")])
    );
}

/// A schedule of the whole of `t`, every package weighing 1.
fn unit_schedule(t: &Tree) -> Schedule {
    let all = t.graph().select_all();
    Schedule::new(t.graph(), &all, t.graph().priorities(&all, |_| 1))
}

/// Runs a schedule with one slot; every package in `fail` fails. The start order and the
/// final states.
fn run_one_slot(t: &Tree, fail: &[&str]) -> (Vec<String>, Vec<(String, State)>) {
    let mut s = unit_schedule(t);
    let mut started = Vec::new();
    loop {
        let next = s.next_priority();
        let Some(p) = s.start_next() else {
            assert_eq!(next, None, "a priority is seen only for a ready package");
            break;
        };
        assert_eq!(
            next,
            Some(s.priority(p)),
            "the peek sees the package started next"
        );
        started.push(t.origin(p).to_owned());
        let outcome = if fail.contains(&t.origin(p)) {
            Outcome::Failed
        } else {
            Outcome::Built
        };
        s.finish(p, outcome);
    }
    assert!(s.is_done());
    assert_eq!(s.unfinished().count(), 0);
    let states = t
        .ids()
        .map(|p| (t.origin(p).to_owned(), s.state(p)))
        .collect();
    (started, states)
}

#[test]
fn a_failure_skips_what_waits_for_it_and_the_rest_goes_on() {
    let t = tree(&[
        ("a/base", &[], &[]),
        ("b/lib", &["a/base"], &[]),
        ("c/app", &["b/lib", "d/other"], &[]),
        ("d/other", &[], &[]),
        ("e/needs-lib-at-runtime", &["f/tool"], &[]),
        ("f/tool", &[], &["b/lib"]),
        ("g/alone", &[], &[]),
    ])
    .expect("valid");
    let (started, states) = run_one_slot(&t, &["b/lib"]);
    assert!(!started.contains(&"c/app".to_owned()));
    let lib = id(&t, "b/lib");
    let state = |o: &str| states.iter().find(|(x, _)| x == o).expect("listed").1;
    assert_eq!(state("b/lib"), State::Finished(Outcome::Failed));
    assert_eq!(state("c/app"), State::Skipped { cause: lib });
    // Through run-depends: the tool itself builds, what needs it with its runtime does not.
    assert_eq!(state("f/tool"), State::Finished(Outcome::Built));
    assert_eq!(
        state("e/needs-lib-at-runtime"),
        State::Skipped { cause: lib }
    );
    for o in ["a/base", "d/other", "g/alone"] {
        assert_eq!(state(o), State::Finished(Outcome::Built), "{o}");
    }
}

#[test]
fn the_longest_remaining_chain_starts_first() {
    let t = tree(&[
        ("a/short", &[], &[]),
        ("b/chain1", &[], &[]),
        ("c/chain2", &["b/chain1"], &[]),
        ("d/chain3", &["c/chain2"], &[]),
        ("e/short", &[], &[]),
    ])
    .expect("valid");
    let (started, _) = run_one_slot(&t, &[]);
    // chain1 heads a chain of 3, then chain2 (2 left); then everything has 1 left and
    // ties go by origin.
    assert_eq!(
        started,
        ["b/chain1", "c/chain2", "a/short", "d/chain3", "e/short"]
    );
}

#[test]
fn skipped_lists_come_back_from_finish_and_cached_counts_as_success() {
    let t = tree(&[
        ("a/base", &[], &[]),
        ("b/x", &["a/base"], &[]),
        ("c/y", &["b/x"], &[]),
    ])
    .expect("valid");
    let mut s = unit_schedule(&t);
    let base = s.start_next().expect("ready");
    assert_eq!(s.start_next(), None, "nothing else is ready");
    assert_eq!(s.unfinished().count(), 3);
    assert!(s.finish(base, Outcome::Cached).is_empty());
    let x = s.start_next().expect("ready after a cached dependency");
    assert_eq!(s.finish(x, Outcome::Failed), vec![id(&t, "c/y")]);
    assert!(s.is_done());
}

#[test]
fn a_package_is_pre_started_once_all_it_needs_runs_and_released_when_it_is_built() {
    let t = tree(&[
        ("a/base", &[], &[]),
        ("b/lib", &["a/base"], &[]),
        ("c/app", &["b/lib", "d/other"], &[]),
        ("d/other", &[], &[]),
    ])
    .expect("valid");
    let mut s = unit_schedule(&t);
    let (a, b, c, d) = (
        id(&t, "a/base"),
        id(&t, "b/lib"),
        id(&t, "c/app"),
        id(&t, "d/other"),
    );
    assert_eq!(s.pre_start_next(), None, "nothing runs yet");
    assert_eq!(s.start_next(), Some(a));
    assert_eq!(s.pre_start_next(), Some(b), "all b needs runs");
    assert_eq!(s.state(b), State::PreStarted);
    assert_eq!(
        s.pre_start_next(),
        None,
        "c needs b, which is only pre-started, and d, which has not started"
    );
    assert_eq!(s.start_next(), Some(d));
    assert_eq!(s.pre_start_next(), None, "b has not run yet");
    assert_eq!(s.unfinished().count(), 4);
    assert!(s.finish(a, Outcome::Built).is_empty());
    assert_eq!(s.take_released(), vec![b]);
    assert_eq!(s.take_released(), Vec::<PackageId>::new(), "taken once");
    assert_eq!(s.state(b), State::Running);
    assert_eq!(
        s.start_next(),
        None,
        "a released package is not ready again"
    );
    assert_eq!(s.pre_start_next(), Some(c), "b and d run now");
    s.finish(d, Outcome::Cached);
    assert!(s.take_released().is_empty(), "c still needs b");
    s.finish(b, Outcome::Built);
    assert_eq!(s.take_released(), vec![c]);
    s.finish(c, Outcome::Built);
    assert!(s.is_done());
}

#[test]
fn a_failure_skips_pre_started_packages_and_a_pre_started_one_may_fail_itself() {
    let t = tree(&[
        ("a/base", &[], &[]),
        ("b/lib", &["a/base"], &[]),
        ("c/app", &["b/lib"], &[]),
        ("d/tool", &["a/base"], &[]),
        ("e/uses-tool", &["d/tool"], &[]),
    ])
    .expect("valid");
    let mut s = unit_schedule(&t);
    let a = s.start_next().expect("a is ready");
    let first = s.pre_start_next().expect("b or d");
    let second = s.pre_start_next().expect("the other");
    assert_eq!(
        [first, second].map(|p| t.origin(p).to_owned()),
        ["b/lib", "d/tool"],
        "by priority, then origin"
    );
    // d fails while it is still being prepared: what waits for it is skipped at once.
    let d = id(&t, "d/tool");
    assert_eq!(s.finish(d, Outcome::Failed), vec![id(&t, "e/uses-tool")]);
    // a fails: b, pre-started, is skipped with what waits for it.
    assert_eq!(
        s.finish(a, Outcome::Failed),
        vec![id(&t, "b/lib"), id(&t, "c/app")]
    );
    assert_eq!(s.state(id(&t, "b/lib")), State::Skipped { cause: a });
    assert!(s.take_released().is_empty());
    assert!(s.is_done());
}

/// `(depends, run-depends)` lists of a random small tree, edges anywhere (cycles included).
fn random_tree() -> impl proptest::strategy::Strategy<Value = Vec<(Vec<usize>, Vec<usize>)>> {
    use proptest::prelude::*;
    (1usize..9).prop_flat_map(|n| {
        proptest::collection::vec(
            (
                proptest::collection::vec(0..n, 0..3),
                proptest::collection::vec(0..n, 0..2),
            ),
            n,
        )
    })
}

/// The tree of `lists` (package `i` is `c/p<i>`).
fn tree_of(lists: &[(Vec<usize>, Vec<usize>)]) -> Result<Tree, TreeErrors> {
    let name = |i: usize| format!("c/p{i}");
    let deps = |l: &[usize]| {
        l.iter()
            .map(|&d| Dependency {
                origin: name(d),
                line: 1,
            })
            .collect()
    };
    Tree::from_manifests(lists.iter().enumerate().map(|(i, (depends, run))| {
        (
            name(i),
            Manifest {
                version: "1".into(),
                depends: deps(depends),
                run_depends: deps(run),
                fetch: None,
                distfiles: Vec::new(),
                build: "b".into(),
            },
        )
    }))
}

/// `$KILN_DEPS` by its definition, for comparison: everything reachable from `depends(p)`
/// over both kinds of edge.
fn brute_kiln_deps(
    lists: &[(Vec<usize>, Vec<usize>)],
    p: usize,
) -> std::collections::BTreeSet<usize> {
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = lists[p].0.clone();
    while let Some(x) = stack.pop() {
        if seen.insert(x) {
            stack.extend(&lists[x].0);
            stack.extend(&lists[x].1);
        }
    }
    seen
}

proptest::proptest! {
    /// A tree is refused for cycles exactly when some package would need itself in its own
    /// `$KILN_DEPS`; every reported cycle is real and goes through a `depends` edge. A valid
    /// tree's closures match the definition, its order respects them, and a changed folder
    /// changes exactly the keys of the packages that have it in `$KILN_DEPS`.
    #[test]
    fn validation_closures_and_keys_agree_with_the_definitions(
        lists in random_tree(),
        changed in 0usize..9,
    ) {
        let n = lists.len();
        let name = |i: usize| format!("c/p{i}");
        let self_needing = (0..n).any(|p| brute_kiln_deps(&lists, p).contains(&p));
        match tree_of(&lists) {
            Err(errors) => {
                proptest::prop_assert!(self_needing, "refused without a cycle: {errors}");
                for e in errors.iter() {
                    let TreeError::Cycle { path, .. } = e else {
                        proptest::prop_assert!(false, "not a cycle: {e}");
                        continue;
                    };
                    let idx = |o: &String| o[3..].parse::<usize>().expect("c/pN");
                    let mut through_depends = false;
                    for (k, from) in path.iter().enumerate() {
                        let (a, b) = (idx(from), idx(&path[(k + 1) % path.len()]));
                        let dep = lists[a].0.contains(&b);
                        proptest::prop_assert!(dep || lists[a].1.contains(&b), "{e}");
                        through_depends |= dep;
                    }
                    proptest::prop_assert!(through_depends, "{e}");
                }
            }
            Ok(t) => {
                proptest::prop_assert!(!self_needing);
                let g = t.graph();
                let mut w = DepsWalker::new(g);
                let of = |p: PackageId| t.origin(p)[3..].parse::<usize>().expect("c/pN");
                let mut pos = vec![0; n];
                for (k, p) in g.order().iter().enumerate() {
                    pos[p.index()] = k;
                }
                for p in t.ids() {
                    let got: std::collections::BTreeSet<usize> =
                        w.kiln_deps(p).iter().map(|&d| of(d)).collect();
                    proptest::prop_assert_eq!(&got, &brute_kiln_deps(&lists, of(p)));
                    for &d in w.kiln_deps(p) {
                        proptest::prop_assert!(pos[d.index()] < pos[p.index()]);
                    }
                }
                let changed = changed % n;
                let folders = vec![FolderDigest::default(); n];
                let mut edited = folders.clone();
                edited[id(&t, &name(changed)).index()] = FolderDigest([1; 32]);
                let before = keys_with(&t, &folders, b"");
                let after = keys_with(&t, &edited, b"");
                for p in t.ids() {
                    let should = of(p) == changed || brute_kiln_deps(&lists, of(p)).contains(&changed);
                    proptest::prop_assert_eq!(before.get(p) != after.get(p), should);
                }
            }
        }
    }
}

proptest::proptest! {
    /// Whatever the executor does (start, pre-start, finish in any order, some failing), a
    /// package runs only after all it needs was built, is pre-started only while all it
    /// needs runs or is built, and every package ends built, cached, failed or skipped by a
    /// failure it waits on.
    #[test]
    fn pre_starting_keeps_the_order_of_dependencies(
        lists in random_tree(),
        moves in proptest::collection::vec((0u8..4, 0usize..9, proptest::bool::weighted(0.2)), 0..80),
    ) {
        let Ok(t) = tree_of(&lists) else { return Ok(()) };
        let g = t.graph();
        let all = g.select_all();
        let mut s = Schedule::new(g, &all, g.priorities(&all, |_| 1));
        let built = |s: &Schedule, p: PackageId| {
            matches!(s.state(p), State::Finished(Outcome::Built | Outcome::Cached))
        };
        // Started, not finished: running or pre-started.
        let mut active: Vec<PackageId> = Vec::new();
        let mut moves = moves.into_iter();
        loop {
            let next = moves.next();
            let draining = next.is_none();
            let (kind, pick, fail) = next.unwrap_or((3, 0, false));
            match kind {
                0 => {
                    if let Some(p) = s.start_next() {
                        for &d in g.wait_for(p) {
                            proptest::prop_assert!(built(&s, d));
                        }
                        active.push(p);
                    }
                }
                1 => {
                    if let Some(p) = s.pre_start_next() {
                        let needs = g.wait_for(p);
                        for &d in needs {
                            proptest::prop_assert!(built(&s, d) || s.state(d) == State::Running);
                        }
                        proptest::prop_assert!(needs.iter().any(|&d| s.state(d) == State::Running));
                        active.push(p);
                    }
                }
                _ => {
                    // Finish a running package (or fail a pre-started one); when the moves
                    // are spent, drain: start what is ready, finish the rest.
                    if active.is_empty() {
                        match s.start_next() {
                            Some(p) => active.push(p),
                            None => break,
                        }
                        continue;
                    }
                    let k = if draining {
                        // A pre-started package waits for a running one: finish that.
                        active
                            .iter()
                            .position(|&p| s.state(p) != State::PreStarted)
                            .expect("something runs")
                    } else {
                        pick % active.len()
                    };
                    let p = active[k];
                    let state = s.state(p);
                    if state == State::PreStarted && !fail {
                        continue;
                    }
                    active.swap_remove(k);
                    if !matches!(state, State::Running | State::PreStarted) {
                        // Skipped meanwhile.
                        continue;
                    }
                    let outcome = if fail { Outcome::Failed } else { Outcome::Built };
                    s.finish(p, outcome);
                    for r in s.take_released() {
                        proptest::prop_assert!(active.contains(&r));
                        for &d in g.wait_for(r) {
                            proptest::prop_assert!(built(&s, d));
                        }
                    }
                }
            }
        }
        proptest::prop_assert!(s.is_done());
        for p in t.ids() {
            match s.state(p) {
                State::Finished(_) => {}
                State::Skipped { cause } => {
                    proptest::prop_assert_eq!(s.state(cause), State::Finished(Outcome::Failed));
                }
                other => proptest::prop_assert!(false, "{} ended {other:?}", t.origin(p)),
            }
        }
    }
}

/// A dispatcher task owns its schedule next to the tree: no borrow between them.
#[test]
fn a_schedule_owns_what_it_needs() {
    fn owned<T: Send + 'static>(_: &T) {}
    let t = tree(&[("a/x", &[], &[])]).expect("valid");
    let all = t.graph().select_all();
    let s = Schedule::new(t.graph(), &all, vec![1]);
    drop(t);
    owned(&s);
    assert!(!s.is_done());
}
