//! The corpus of real GitHub workflows (`shared/corpus/workflows`): every file either plans
//! with exactly the number of jobs GitHub would create for a `push`, or is refused with
//! diagnostics naming file, line and a construct kiln deliberately does not support.
//!
//! The expected job counts were derived by reading each file: jobs without a matrix count 1,
//! a matrix counts its combinations after `exclude` and `include` (e.g. curl's
//! `combinations`: 7 compilers × 3 images × 2 builds = 42, of which 19 exclude entries leave
//! 9), a matrix that needs another job's outputs counts 1. `if:` is not evaluated, as GitHub
//! creates every job and skips some only when they become ready.

use std::path::Path;

use kiln_core::plan;
use kiln_core::workflow::parse_workflow;
use serde_json::{Map, Value, json};

enum Expect {
    /// Plans with this many jobs.
    Jobs(usize),
    /// Refused: each error's line and a piece of its message (and nothing else is an error).
    Refused(&'static [(u32, &'static str)]),
}

use Expect::{Jobs, Refused};

const REUSABLE: &str = "calling a reusable workflow";
const CONTAINER: &str = "`container` is not supported";

const TABLE: &[(&str, Expect)] = &[
    // test: 18 include-only entries; wasm, rustfmt, docs, fuzz_testing.
    ("BurntSushi__ripgrep__ci.yml", Jobs(22)),
    // `build-wheels` calls a local reusable workflow (line 668): kiln does not run those.
    ("aio-libs__aiohttp__ci-cd.yml", Refused(&[(668, REUSABLE)])),
    ("astral-sh__ruff__daily_fuzz.yml", Jobs(2)),
    // Only `workflow_call` (a warning): still one job to plan.
    ("astral-sh__uv__check-release.yml", Jobs(1)),
    ("astral-sh__uv__publish-docs.yml", Jobs(1)),
    // cargo-test-windows: 3 partitions; two plain jobs.
    ("astral-sh__uv__test.yml", Jobs(5)),
    // package: 10 include entries; prerelease, checksum, pages, changelog.
    ("casey__just__release.yml", Jobs(14)),
    ("cli__cli__triage.yml", Jobs(2)),
    // cmake-integration: 3 images; 10 plain jobs.
    ("curl__curl__distcheck.yml", Jobs(13)),
    // ios: 2 builds; macos: 21 builds; combinations: 9 after 19 excludes.
    ("curl__curl__macos.yml", Jobs(32)),
    // test: 3 runners; build, publish.
    ("denoland__deno__npm_publish.generated.yml", Jobs(5)),
    ("git__git__check-style.yml", Jobs(1)),
    ("git__git__l10n.yml", Jobs(1)),
    // test: 5 os; check, lints, docs.
    ("helix-editor__helix__build.yml", Jobs(8)),
    // linux: 17 arches (include only adds CC); macos: 2; windows: 3; 3 plain jobs.
    ("jqlang__jq__ci.yml", Jobs(25)),
    // build-macos: 3; build-ios: 2; build-cross-qemu: 16; 2 plain jobs.
    ("libuv__libuv__CI-unix.yml", Jobs(23)),
    // build-cargo-nextest-binaries: 11 targets; 5 plain jobs.
    ("nextest-rs__nextest__release.yml", Jobs(16)),
    // Three jobs run in containers (lines 44, 77, 87).
    (
        "redis__redis__ci.yml",
        Refused(&[(44, CONTAINER), (77, CONTAINER), (87, CONTAINER)]),
    ),
    // clippy: 3; test: 12 include entries; 14 plain jobs.
    ("rust-lang__cargo__main.yml", Jobs(29)),
    // rust: 3; rust-cross: 3; typescript: 2; 9 plain jobs.
    ("rust-lang__rust-analyzer__ci.yml", Jobs(17)),
    // dist (from the matrix) and dist-x86_64-unknown-linux-musl run in containers.
    (
        "rust-lang__rust-analyzer__release.yml",
        Refused(&[(73, CONTAINER), (162, CONTAINER)]),
    ),
    // build: 3 rust × 4 os = 12, less 4 excludes; the two
    // `${{ github.event_name == 'merge_group' && … }}` excludes are `false` on a push and
    // exclude nothing; 16 plain jobs.
    ("rustls__rustls__build.yml", Jobs(24)),
    // build: 14 include entries; 5 plain jobs.
    ("sharkdp__fd__CICD.yml", Jobs(19)),
    // test-io-uring-on-specific-kernel-versions calls a local reusable workflow (line 1341).
    ("tokio-rs__tokio__ci.yml", Refused(&[(1341, REUSABLE)])),
    // test: 4 node versions on ubuntu, plus 2 includes (macos, windows); 4 plain jobs.
    ("vitejs__vite__ci.yml", Jobs(10)),
];

/// What a `push` to `main` gives the planner before any job runs.
fn push_contexts() -> Map<String, Value> {
    let v = json!({
        "github": {
            "event_name": "push",
            "event": {"ref": "refs/heads/main", "repository": {"full_name": "example/repo"}},
            "ref": "refs/heads/main",
            "ref_name": "main",
            "sha": "0000000000000000000000000000000000000000",
            "repository": "example/repo",
            "repository_owner": "example",
            "run_id": "1",
            "run_number": "1",
            "workflow": "ci",
        },
        "inputs": {},
        "vars": {},
        "env": {},
        "secrets": {},
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

#[test]
#[expect(clippy::print_stderr, reason = "say why the test checked nothing")]
fn every_corpus_workflow_plans_or_is_refused_for_a_reason() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus/workflows"
    ));
    if !dir.is_dir() {
        eprintln!(
            "note: {} is absent; the corpus test checked nothing",
            dir.display()
        );
        return;
    }
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("the corpus folder is readable")
        .map(|e| {
            e.expect("a folder entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = TABLE.iter().map(|(f, _)| (*f).to_owned()).collect();
    listed.sort();
    assert_eq!(files, listed, "the table lists exactly the corpus files");
    assert_eq!(files.len(), 25);

    let ctx = push_contexts();
    let mut failures = Vec::new();
    for (file, expect) in TABLE {
        let source = std::fs::read_to_string(dir.join(file)).expect("a corpus file is readable");
        let parsed = parse_workflow(file, &source);
        match (expect, parsed) {
            (Jobs(n), Ok(wf)) => match plan::dry_run(&wf, &ctx) {
                Ok(jobs) if jobs.len() == *n => {
                    assert!(jobs.iter().all(|j| j.workflow == *file));
                    assert!(
                        jobs.iter().all(|j| !j.name.is_empty()),
                        "{file}: empty name"
                    );
                }
                Ok(jobs) => failures.push(format!(
                    "{file}: planned {} jobs, expected {n}: {:?}",
                    jobs.len(),
                    jobs.iter().map(|j| &j.name).collect::<Vec<_>>()
                )),
                Err(d) => failures.push(format!("{file}: the plan failed:\n{d}")),
            },
            (Jobs(_), Err(d)) => failures.push(format!("{file}: refused:\n{d}")),
            (Refused(want), Err(d)) => {
                let got: Vec<_> = d.errors().collect();
                let ok = got.len() == want.len()
                    && got.iter().zip(want.iter()).all(|(e, (line, needle))| {
                        e.file == *file && e.pos.line == *line && e.message.contains(needle)
                    });
                if !ok {
                    failures.push(format!("{file}: refused for other reasons:\n{d}"));
                }
            }
            (Refused(_), Ok(_)) => failures.push(format!("{file}: parsed, but should be refused")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// rustls excludes macOS and Windows with `${{ github.event_name == 'merge_group' && … }}`:
/// the matrix is evaluated with the event's contexts before it is expanded.
#[test]
#[expect(clippy::print_stderr, reason = "say why the test checked nothing")]
fn matrix_excludes_are_evaluated_per_event() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus/workflows/rustls__rustls__build.yml"
    ));
    let Ok(source) = std::fs::read_to_string(path) else {
        eprintln!("note: {} is absent; nothing checked", path.display());
        return;
    };
    let wf = parse_workflow("rustls__rustls__build.yml", &source).expect("parses");
    let builds = |event: &str| {
        let mut ctx = push_contexts();
        ctx["github"]["event_name"] = json!(event);
        plan::dry_run(&wf, &ctx)
            .expect("plans")
            .into_iter()
            .filter(|j| j.id == "build")
            .map(|j| j.matrix.expect("a static matrix")["os"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(builds("push").len(), 8);
    let merge = builds("merge_group");
    assert_eq!(merge.len(), 6);
    assert!(
        merge
            .iter()
            .all(|os| os != "windows-latest" && os != "macos-latest"),
        "{merge:?}"
    );
}
