//! Unit tests of planning: names, matrices, graph helpers, runnability.

use serde_json::json;

use super::*;
use crate::workflow::parse_workflow;

fn wf(src: &str) -> Workflow {
    parse_workflow("ci.yml", src).unwrap_or_else(|d| panic!("{d}"))
}

fn ctx(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("contexts are an object"),
    }
}

fn names(planned: &[PlannedJob]) -> Vec<&str> {
    planned.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn names_follow_github() {
    let w = wf(r#"
on: push
jobs:
  plain:
    runs-on: x
    steps: [{run: x}]
  named:
    name: Lint ${{ github.event_name }}
    runs-on: x
    steps: [{run: x}]
  test:
    runs-on: x
    strategy:
      matrix:
        os: [ubuntu, macos]
        rust: ["1.75", 1.10]
    steps: [{run: x}]
  uses-matrix:
    name: Build on ${{ matrix.os }}
    runs-on: x
    strategy:
      matrix:
        os: [linux]
        extra: [1]
    steps: [{run: x}]
  fixed-name:
    name: Check
    runs-on: x
    strategy:
      matrix:
        cfg: [{a: 1}]
        flag: [true]
    steps: [{run: x}]
"#);
    let planned = dry_run(&w, &ctx(json!({"github": {"event_name": "push"}}))).expect("plans");
    assert_eq!(
        names(&planned),
        [
            "plain",
            "Lint push",
            "test (ubuntu, 1.75)",
            "test (ubuntu, 1.1)",
            "test (macos, 1.75)",
            "test (macos, 1.1)",
            "Build on linux",
            r#"Check ({"a":1}, true)"#,
        ]
    );
    assert_eq!(planned[0].matrix, Some(Map::new()));
    assert_eq!(
        planned[2].matrix,
        Some(ctx(json!({"os": "ubuntu", "rust": "1.75"})))
    );
    assert!(planned.iter().all(|p| p.workflow == "ci.yml"));
}

#[test]
fn matrix_from_contexts_and_dynamic_matrices() {
    let w = wf(r#"
on: push
jobs:
  setup:
    runs-on: x
    steps: [{run: x}]
  from-inputs:
    runs-on: x
    strategy:
      matrix:
        v: ${{ fromJSON(inputs.versions) }}
        include:
          - v: 9
            extra: yes
    steps: [{run: x}]
  dynamic:
    name: Build ${{ matrix.t }}
    needs: setup
    runs-on: x
    strategy:
      matrix:
        t: ${{ fromJSON(needs.setup.outputs.t) }}
    steps: [{run: x}]
  whole:
    needs: setup
    runs-on: x
    strategy:
      matrix: ${{ fromJSON(needs.setup.outputs.m) }}
    steps: [{run: x}]
"#);
    let planned = dry_run(&w, &ctx(json!({"inputs": {"versions": "[1, 2]"}}))).expect("plans");
    assert_eq!(
        names(&planned),
        [
            "setup",
            "from-inputs (1)",
            "from-inputs (2)",
            "from-inputs (9, yes)",
            "Build ${{ matrix.t }}",
            "whole"
        ]
    );
    assert_eq!(planned[4].matrix, None);
    assert_eq!(planned[4].needs, ["setup"]);
    assert_eq!(planned[5].matrix, None);

    // At run time the needs are known and the same job expands.
    let job = &w.jobs["dynamic"];
    let run_ctx = ctx(json!({"needs": {"setup": {"outputs": {"t": "[\"linux\", \"bsd\"]"}}}}));
    let inst = expand_job(job, &run_ctx).expect("expands");
    assert_eq!(
        inst,
        vec![
            JobInstance {
                name: "Build linux".into(),
                matrix: ctx(json!({"t": "linux"})),
                labels: vec!["x".into()],
            },
            JobInstance {
                name: "Build bsd".into(),
                matrix: ctx(json!({"t": "bsd"})),
                labels: vec!["x".into()],
            },
        ]
    );
    let bad = ctx(json!({"needs": {"setup": {"outputs": {"t": "[]"}}}}));
    assert_eq!(
        expand_job(job, &bad),
        Err("Matrix vector 't' does not contain any values".into())
    );
}

#[test]
fn dry_run_reports_matrix_errors_with_file_and_line() {
    let w = wf(
        "on: push\njobs:\n  a:\n    runs-on: x\n    strategy:\n      matrix:\n        v: ${{ fromJSON(inputs.v) }}\n    steps: [{run: x}]\n",
    );
    let err = dry_run(&w, &ctx(json!({"inputs": {"v": "\"one\""}}))).expect_err("not a list");
    assert_eq!(
        err.to_string(),
        "ci.yml:3:3: error: Matrix vector 'v' must be a list, not the string `one` (at `jobs.a.strategy.matrix`)"
    );
}

#[test]
fn strategy_settings() {
    let w = wf(r#"
on: push
jobs:
  a:
    runs-on: x
    steps: [{run: x}]
  b:
    runs-on: x
    strategy:
      fail-fast: false
      max-parallel: 2
      matrix: {v: [1]}
    steps: [{run: x}]
  c:
    runs-on: x
    strategy:
      fail-fast: ${{ inputs.ff }}
      max-parallel: ${{ inputs.n }}
      matrix: {v: [1]}
    steps: [{run: x}]
"#);
    let c = ctx(json!({"inputs": {"ff": false, "n": 3}}));
    assert!(fail_fast(&w.jobs["a"], &c));
    assert_eq!(max_parallel(&w.jobs["a"], &c), None);
    assert!(!fail_fast(&w.jobs["b"], &c));
    assert_eq!(max_parallel(&w.jobs["b"], &c), Some(2));
    assert!(!fail_fast(&w.jobs["c"], &c));
    assert_eq!(max_parallel(&w.jobs["c"], &c), Some(3));
}

#[test]
fn critical_path_counts_jobs_to_the_end() {
    let w = wf(r#"
on: push
jobs:
  a:
    runs-on: x
    steps: [{run: x}]
  b:
    needs: a
    runs-on: x
    steps: [{run: x}]
  c:
    needs: [a, b]
    runs-on: x
    steps: [{run: x}]
  lone:
    runs-on: x
    steps: [{run: x}]
  d:
    needs: a
    runs-on: x
    steps: [{run: x}]
"#);
    let cp = critical_path(&w.jobs);
    assert_eq!(
        cp.into_iter().collect::<Vec<_>>(),
        [
            ("a".to_owned(), 3),
            ("b".to_owned(), 2),
            ("c".to_owned(), 1),
            ("lone".to_owned(), 1),
            ("d".to_owned(), 1),
        ]
    );
}

#[test]
fn cycles_in_built_workflows_are_reported() {
    let mut w = wf(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n  b:\n    runs-on: x\n    steps: [{run: x}]\n",
    );
    w.jobs["a"].needs = vec!["b".into()];
    w.jobs["b"].needs = vec!["a".into(), "zz".into()];
    assert_eq!(
        find_cycles(&w.jobs),
        vec![vec!["a".to_owned(), "b".to_owned()]]
    );
    let err = dry_run(&w, &Map::new()).expect_err("a cycle");
    let text = err.to_string();
    assert!(text.contains("the job `b` needs `zz`"), "{text}");
    assert!(
        text.contains("dependency cycle between jobs: a → b → a"),
        "{text}"
    );
    // A cycle does not hang the priority computation.
    assert_eq!(critical_path(&w.jobs).len(), 2);
}

#[test]
fn remote_actions_are_not_runnable() {
    let w = wf(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: actions/checkout@v4\n      - uses: ./local\n      - uses: actions/setup-node@v4\n        with: {node-version: 20}\n",
    );
    let d = check_runnable(&w);
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].to_string(),
        "ci.yml:8:9: error: the action `actions/setup-node@v4` cannot run here: kiln runs only `actions/checkout`, `actions/upload-artifact`, `actions/download-artifact` and local actions (`uses: ./path`); replace this step with a `run:` step that does the same (at `jobs.a.steps[2].uses`)"
    );
    // The dry run still plans it.
    assert_eq!(dry_run(&w, &Map::new()).expect("plans").len(), 1);
}

#[test]
fn triggers_select_workflows() {
    let w = wf(
        "on:\n  push:\n    branches: [main]\n  workflow_dispatch:\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n",
    );
    assert!(triggered_by(&w, "push"));
    assert!(triggered_by(&w, "workflow_dispatch"));
    assert!(!triggered_by(&w, "pull_request"));
    assert!(!triggered_by(&w, "schedule"));
}

#[test]
fn topological_order_puts_needs_first() {
    let w = wf(
        "on: push\njobs:\n  d:\n    needs: [b, c]\n    runs-on: x\n    steps: [{run: 'true'}]\n  b:\n    needs: a\n    runs-on: x\n    steps: [{run: 'true'}]\n  c:\n    runs-on: x\n    steps: [{run: 'true'}]\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    let order = topological_order(&w.jobs);
    let pos = |k: &str| order.iter().position(|x| x == k).unwrap();
    assert_eq!(order.len(), 4);
    assert!(pos("a") < pos("b"));
    assert!(pos("b") < pos("d"));
    assert!(pos("c") < pos("d"));
}

#[test]
fn runs_on_becomes_the_labels_a_worker_needs() {
    let w = wf(r#"
on: push
jobs:
  one:
    runs-on: linux
    steps: [{run: x}]
  list:
    runs-on: [self-hosted, linux, " linux ", ""]
    steps: [{run: x}]
  per-os:
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        os: [bsd, [linux, arm64]]
    steps: [{run: x}]
  rendered:
    runs-on: [ci, "builder-${{ inputs.size }}"]
    steps: [{run: x}]
  group:
    runs-on: {group: big, labels: [gpu]}
    steps: [{run: x}]
  bad:
    runs-on: '${{ fromJSON(''[{"a": 1}]'') }}'
    steps: [{run: x}]
"#);
    let contexts = ctx(json!({"inputs": {"size": "xl"}}));
    let labels = |key: &str, matrix: Value| {
        let Value::Object(m) = matrix else { panic!() };
        runs_on_labels(&w.jobs[key], &m, &contexts)
    };
    assert_eq!(labels("one", json!({})), Ok(vec!["linux".to_owned()]));
    assert_eq!(
        labels("list", json!({})),
        Ok(vec!["self-hosted".to_owned(), "linux".to_owned()])
    );
    assert_eq!(
        labels("per-os", json!({"os": "bsd"})),
        Ok(vec!["bsd".to_owned()])
    );
    assert_eq!(
        labels("per-os", json!({"os": ["linux", "arm64"]})),
        Ok(vec!["linux".to_owned(), "arm64".to_owned()])
    );
    assert_eq!(
        labels("rendered", json!({})),
        Ok(vec!["ci".to_owned(), "builder-xl".to_owned()])
    );
    assert_eq!(
        labels("group", json!({})),
        Ok(vec!["gpu".to_owned(), "big".to_owned()])
    );
    assert_eq!(
        labels("bad", json!({})),
        Err("a label must be a string, but one evaluated to {\"a\":1}".to_owned())
    );

    // Planning carries them per instance, and a bad `runs-on` is reported where it is.
    let planned = dry_run(
        &wf("on: push\njobs:\n  t:\n    runs-on: ${{ matrix.os }}\n    strategy:\n      matrix:\n        os: [a, b]\n    steps: [{run: x}]\n"),
        &Map::new(),
    )
    .expect("plans");
    let got: Vec<&[String]> = planned.iter().map(|p| p.labels.as_slice()).collect();
    assert_eq!(got, [["a".to_owned()], ["b".to_owned()]]);
    let err = dry_run(
        &wf(
            "on: push\njobs:\n  t:\n    runs-on: ${{ fromJSON('[[1]]') }}\n    steps: [{run: x}]\n",
        ),
        &Map::new(),
    )
    .expect_err("a list in a list is no label");
    assert_eq!(err.0[0].path, "jobs.t.runs-on");
}
