//! `jobs.<id>.packages` (issue 6) through `kiln run`: one job per package wired by the
//! packages' dependencies, a failure skipping only what waits on it, the package history and
//! cache shared with `kiln build`, and the tree's errors refused before anything runs.

use kiln_testkit::Project;
use serde_json::Value;

use crate::{bin, job, run_json};

const WORKFLOW: &str = r#"on: push
jobs:
  ports:
    name: ports
    runs-on: any
    packages:
      tree: tree
      slots: 2
  report:
    needs: ports
    if: always()
    runs-on: any
    steps:
      - run: echo "ports ended ${{ needs.ports.result }}"
"#;

const BASE: &str = "version = \"1.0\"\nbuild = 'mkdir -p \"$KILN_OUT/lib\"; echo base-1 > \"$KILN_OUT/lib/base\"'\n";
const APP: &str = "version = \"2.1\"\ndepends = [\"lib/base\"]\nbuild = 'cp \"$KILN_DEPS/lib/base/lib/base\" \"$KILN_OUT/from-base\"'\n";
const BAD: &str =
    "version = \"0.1\"\ndepends = [\"lib/base\"]\nbuild = 'echo about to fail; exit 3'\n";
const GOOD: &str = "version = \"0.2\"\ndepends = [\"lib/base\"]\nbuild = 'cat \"$KILN_DEPS/lib/base/lib/base\" > \"$KILN_OUT/seen\"'\n";
const TOP: &str = "version = \"1\"\ndepends = [\"app/bad\"]\nbuild = 'test -f \"$KILN_DEPS/app/bad/seen\" && test -f \"$KILN_DEPS/lib/base/lib/base\"'\n";

fn project(bad: &str) -> Project {
    Project::new()
        .file(".kiln/workflows/ports.yml", WORKFLOW)
        .file("tree/lib/base/kiln-package.toml", BASE)
        .file("tree/app/one/kiln-package.toml", APP)
        .file("tree/app/bad/kiln-package.toml", bad)
        .file("tree/app/top/kiln-package.toml", TOP)
}

fn statuses(run: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_owned(),
                j["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn a_packages_job_runs_one_job_per_package_and_a_failure_skips_only_its_dependents() {
    let p = project(BAD);
    let out = run_json(&p, &[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let run = out.json();
    assert_eq!(run["status"], "failure");
    assert_eq!(
        statuses(&run),
        pairs(&[
            ("ports (app/bad)", "failure"),
            ("ports (app/one)", "success"),
            ("ports (app/top)", "skipped"),
            ("ports (lib/base)", "success"),
            ("report", "success"),
        ])
    );
    let one = job(&run, "ports (app/one)");
    assert_eq!(one["key"], "ports");
    assert_eq!(one["matrix"]["package"], "app/one");
    assert_eq!(one["matrix"]["version"], "2.1");
    assert_eq!(one["outputs"]["key"].as_str().unwrap().len(), 64);
    assert!(one["outputs"]["output"].is_string(), "{one:#}");

    // The package history is the one `kiln build` keeps.
    let history = p
        .kiln(bin())
        .args(["build", "history", "app/bad", "--format", "json"])
        .with_data_dir()
        .output();
    assert_eq!(history.code, 0, "{}", history.stderr);
    let builds = history.json()["builds"].as_array().unwrap().clone();
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0]["status"], "failure");
    assert!(
        std::fs::read_to_string(builds[0]["log_path"].as_str().unwrap())
            .unwrap()
            .contains("about to fail"),
    );
    let top = p
        .kiln(bin())
        .args(["build", "history", "app/top", "--format", "json"])
        .with_data_dir()
        .output()
        .json();
    assert_eq!(top["builds"][0]["status"], "skipped");
    assert_eq!(top["builds"][0]["reason"], "dependency app/bad failed");

    // Fixed: what succeeded is cached and gets no job; the fixed package and what waited on
    // it build, the dependent seeing its dependencies' outputs (one restored from the cache).
    let p = p.file("tree/app/bad/kiln-package.toml", GOOD);
    // A dry run lists the jobs the packages would get, planned against the store.
    let dry = run_json(&p, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let planned = dry.json();
    let names: Vec<&str> = planned["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ports (app/bad)", "ports (app/top)", "report"]);
    let text = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--dry-run"])
        .with_data_dir()
        .output();
    assert!(
        text.stdout
            .contains("ports: 2 cached package(s) get no job"),
        "{}",
        text.stdout
    );
    let again = run_json(&p, &[]);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert_eq!(
        statuses(&again.json()),
        pairs(&[
            ("ports (app/bad)", "success"),
            ("ports (app/top)", "success"),
            ("report", "success"),
        ])
    );
    let status = p
        .kiln(bin())
        .args(["build", "status", "--format", "json"])
        .with_data_dir()
        .output()
        .json();
    let latest: Vec<(&str, &str)> = status["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["origin"].as_str().unwrap(), b["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        latest,
        [
            ("app/bad", "success"),
            ("app/one", "cached"),
            ("app/top", "success"),
            ("lib/base", "cached")
        ]
    );

    // Everything cached: the key has no instance and counts as a success.
    let third = run_json(&p, &[]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(statuses(&third.json()), pairs(&[("report", "success")]));
}

#[test]
fn an_invalid_tree_or_packages_key_runs_nothing_and_exits_2_naming_the_problem() {
    let cyclic = project(BAD).file(
        "tree/lib/base/kiln-package.toml",
        "version = \"1\"\ndepends = [\"app/top\"]\nbuild = 'true'\n",
    );
    let out = run_json(&cyclic, &[]);
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains(".kiln/workflows/ports.yml:6: jobs.ports.packages (tree `tree`)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("dependency cycle: app/bad → lib/base → app/top → app/bad"),
        "{}",
        out.stderr
    );

    let cases: [(&str, &str); 5] = [
        (
            "    packages: tree\n    steps:\n      - run: true\n",
            "has both `packages` and `steps`",
        ),
        (
            "    packages:\n      tree: ../elsewhere\n",
            "must stay inside the project",
        ),
        (
            "    packages:\n      tree: tree\n      origins: [nocategory]\n",
            "jobs.ports.packages.origins[0]",
        ),
        (
            "    packages:\n      slots: 0\n",
            "`slots` must be a positive whole number",
        ),
        (
            "    packages:\n      tre: tree\n",
            "jobs.ports.packages.tre",
        ),
    ];
    for (body, expected) in cases {
        let wf = format!("on: push\njobs:\n  ports:\n    runs-on: any\n{body}");
        let p = project(GOOD).file(".kiln/workflows/ports.yml", &wf);
        let out = run_json(&p, &[]);
        assert_eq!(out.code, 2, "{wf}\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(expected), "{wf}\n{}", out.stderr);
        assert!(!p.data_dir().join("kiln.db").exists() || out.stdout.is_empty());
    }

    let missing = project(GOOD).file(
        ".kiln/workflows/ports.yml",
        "on: push\njobs:\n  ports:\n    runs-on: any\n    packages: nowhere\n",
    );
    let out = run_json(&missing, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("jobs.ports.packages (tree `nowhere`): no such folder"),
        "{}",
        out.stderr
    );
}

#[test]
fn sandbox_require_refuses_to_run_packages_where_bubblewrap_cannot_run() {
    // Package jobs only: steps would need a shell on kiln's PATH.
    let p = project(GOOD).file(
        ".kiln/workflows/ports.yml",
        "on: push\njobs:\n  ports:\n    runs-on: any\n    packages: tree\n",
    );
    // No `bwrap` on kiln's PATH (the builds' own PATH is fixed, so they are unaffected).
    let path = crate::path_without_tools(&p);
    let out = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--sandbox", "require", "--format", "json"])
        .env("PATH", &path)
        .with_data_dir()
        .output();
    crate::assert_sandbox_refused(&out);
    assert!(out.stdout.is_empty());

    // `off` runs them unconfined, without the warning `auto` gives where it cannot confine.
    let out = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--sandbox", "off", "--format", "json"])
        .env("PATH", &path)
        .with_data_dir()
        .output();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("WITHOUT A SANDBOX"), "{}", out.stderr);
    let bad = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--sandbox", "sometimes"])
        .with_data_dir()
        .output();
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("sometimes"), "{}", bad.stderr);
}
