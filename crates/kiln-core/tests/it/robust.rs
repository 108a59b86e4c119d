//! The parser and planner never panic: damaged workflow files (bytes cut out, lines
//! swapped, characters replaced) give diagnostics or a workflow, nothing else.

use kiln_core::plan;
use kiln_core::workflow::{parse_action, parse_workflow};
use proptest::prelude::*;
use serde_json::Map;

const BASE: &str = r#"name: CI ${{ github.ref }}
on:
  push:
    branches: [main]
  workflow_dispatch:
    inputs:
      level: {type: choice, options: [a, b], default: a}
env: &env
  A: 1.10
jobs:
  setup:
    runs-on: x
    outputs:
      m: ${{ steps.s.outputs.m }}
    steps:
      - id: s
        run: |
          echo "m=[1,2]" >> "$GITHUB_OUTPUT"
  test:
    needs: setup
    name: Test ${{ matrix.os }}
    runs-on: ${{ matrix.os }}
    env: *env
    strategy:
      fail-fast: false
      matrix:
        os: [linux, mac]
        v: ${{ fromJSON(needs.setup.outputs.m) }}
        include:
          - os: bsd
        exclude:
          - os: mac
    steps:
      - uses: actions/checkout@v4
      - if: failure()
        run: echo failed
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn damaged_files_never_panic(
        cut in 0..BASE.len(),
        len in 0usize..40,
        insert in "[ -~\n\t]{0,12}",
    ) {
        let mut s = BASE.to_owned();
        let start = (0..=cut).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        let end = (start + len).min(s.len());
        let end = (end..=s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
        s.replace_range(start..end, &insert);
        if let Ok(wf) = parse_workflow("ci.yml", &s) {
            let _ = plan::dry_run(&wf, &Map::new());
            let _ = plan::check_runnable(&wf);
            let _ = plan::critical_path(&wf.jobs);
            for job in wf.jobs.values() {
                let _ = plan::expand_job(job, &Map::new());
            }
        }
        let _ = parse_action("action.yml", &s);
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = parse_workflow("ci.yml", &s);
    }
}

#[test]
fn the_base_file_is_valid() {
    let wf = parse_workflow("ci.yml", BASE).unwrap_or_else(|d| panic!("{d}"));
    let jobs = plan::dry_run(&wf, &Map::new()).expect("plans");
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[1].matrix, None);
}
