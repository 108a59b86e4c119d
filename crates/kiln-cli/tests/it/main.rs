//! End-to-end tests of the `kiln` binary: real processes, a real store in a temporary data
//! folder, the documented exit codes and output shapes.

mod build;
mod client_cmds;
mod errors;
mod example_deploy;
mod postgres;
mod projects;
mod receivers;
mod replicas;
mod run;
mod schedules;
mod serve;
mod server_runs;
mod watches;
mod workers;
mod workflow_packages;

use std::path::Path;

use kiln_testkit::Project;

pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kiln"))
}

/// `kiln run <project> --data-dir <data> --format json <extra…>`.
pub(crate) fn run_json(p: &Project, extra: &[&str]) -> kiln_testkit::Outcome {
    p.kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--format", "json"])
        .args(extra)
        .with_data_dir()
        .output()
}

/// The job of a run JSON with this display name.
pub(crate) fn job<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["jobs"]
        .as_array()
        .expect("jobs array")
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job named {name} in {run:#}"))
}

/// A `PATH` for kiln naming one empty folder: no `bwrap`, no `git`, no shell (for the
/// refusals of `--sandbox require`).
pub(crate) fn path_without_tools(p: &Project) -> String {
    let empty = p.root().join("no-tools");
    std::fs::create_dir_all(&empty).expect("create an empty folder");
    empty.display().to_string()
}

/// Asserts that kiln refused `--sandbox require`: exit 3, saying why.
pub(crate) fn assert_sandbox_refused(out: &kiln_testkit::Outcome) {
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("--sandbox require: builds cannot be sandboxed here"),
        "{}",
        out.stderr
    );
}
