//! Unit tests of the workflow and action parser: every construct of the subset, and every
//! kind of problem it reports.

use serde_json::json;

use super::*;

fn ok(src: &str) -> Workflow {
    match parse_workflow("wf.yml", src) {
        Ok(wf) => wf,
        Err(d) => panic!("expected a valid workflow, got:\n{d}"),
    }
}

fn errs(src: &str) -> Vec<Diagnostic> {
    match parse_workflow("wf.yml", src) {
        Ok(wf) => panic!("expected errors, got {wf:#?}"),
        Err(d) => d.errors().cloned().collect(),
    }
}

/// The one error whose message contains `needle`.
fn find<'a>(diags: &'a [Diagnostic], needle: &str) -> &'a Diagnostic {
    diags
        .iter()
        .find(|d| d.message.contains(needle))
        .unwrap_or_else(|| panic!("no diagnostic containing {needle:?} in {diags:#?}"))
}

const MINIMAL: &str = "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo hi\n";

#[test]
fn minimal_workflow() {
    let wf = ok(MINIMAL);
    assert_eq!(wf.file, "wf.yml");
    assert_eq!(wf.display_name(), "wf.yml");
    assert!(wf.on.events.contains_key("push"));
    let job = &wf.jobs["a"];
    assert_eq!(job.pos, Pos { line: 3, column: 3 });
    assert_eq!(job.runs_on, Some(json!("x")));
    assert_eq!(job.steps.len(), 1);
    assert_eq!(job.steps[0].action, StepAction::Run("echo hi".into()));
    assert_eq!(job.steps[0].pos, Pos { line: 6, column: 9 });
    assert!(wf.warnings.is_empty());
}

#[test]
fn on_is_the_key_on_not_true() {
    // YAML 1.1 reads `on` as the boolean true; GitHub (and kiln) read the key `on`.
    let wf = ok("'on': [push]\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n");
    assert!(wf.on.events.contains_key("push"));
    let wf =
        ok("on:\n  push:\n  pull_request:\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n");
    assert_eq!(
        wf.on.events.keys().collect::<Vec<_>>(),
        ["push", "pull_request"]
    );
    // `on` as a value of other keys is a plain string too.
    let wf = ok("on: push\nenv:\n  FLAG: on\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n");
    assert_eq!(wf.env["FLAG"], "on");
}

#[test]
fn on_forms_string_list_map() {
    let wf =
        ok("on: [push, workflow_dispatch]\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n");
    assert_eq!(
        wf.on.events.keys().collect::<Vec<_>>(),
        ["push", "workflow_dispatch"]
    );
    let wf = ok(r#"
on:
  push:
    branches: [main, 'release/**']
    branches-ignore: []
    tags: v*
    paths-ignore: ['docs/**']
  pull_request:
    types: [opened, synchronize]
    paths: ['src/**']
  pull_request_target:
    branches: main
  release:
    types: [published]
  create:
  delete:
  schedule:
    - cron: '0 3 * * *'
    - cron: "*/15 * * * 1-5"
jobs:
  a:
    runs-on: x
    steps: [{run: x}]
"#
    .replace("    branches-ignore: []\n", "")
    .as_str());
    let push = &wf.on.events["push"];
    assert_eq!(push.branches, ["main", "release/**"]);
    assert_eq!(push.tags, ["v*"]);
    assert_eq!(push.paths_ignore, ["docs/**"]);
    let pr = &wf.on.events["pull_request"];
    assert_eq!(pr.types, ["opened", "synchronize"]);
    assert_eq!(pr.paths, ["src/**"]);
    assert_eq!(wf.on.events["pull_request_target"].branches, ["main"]);
    assert_eq!(wf.on.events["release"].types, ["published"]);
    assert!(wf.on.events.contains_key("create"));
    assert!(wf.on.events.contains_key("delete"));
    assert!(wf.on.events.contains_key("schedule"));
    assert_eq!(wf.on.schedules, ["0 3 * * *", "*/15 * * * 1-5"]);
}

#[test]
fn branches_and_branches_ignore_together_is_an_error() {
    let e = errs(
        "on:\n  push:\n    branches: [a]\n    branches-ignore: [b]\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n",
    );
    let d = find(&e, "cannot be used together");
    assert_eq!(d.path, "on.push.branches-ignore");
    assert_eq!(d.pos.line, 4);
}

#[test]
fn workflow_dispatch_inputs() {
    let wf = ok(r#"
on:
  workflow_dispatch:
    inputs:
      name:
        description: Who
        required: true
        default: world
      debug:
        type: boolean
        default: false
      count:
        type: number
        default: 3
      level:
        type: choice
        options: [low, high]
        default: high
      target:
        type: environment
      plain:
      ver:
        default: 1.10
jobs:
  a:
    runs-on: x
    steps: [{run: x}]
"#);
    let i = &wf.on.dispatch_inputs;
    assert_eq!(i["name"].description.as_deref(), Some("Who"));
    assert!(i["name"].required);
    assert_eq!(i["name"].default, Some(json!("world")));
    assert_eq!(i["name"].kind, InputKind::String);
    assert_eq!(i["debug"].kind, InputKind::Boolean);
    assert_eq!(i["debug"].default, Some(json!(false)));
    assert_eq!(i["count"].kind, InputKind::Number);
    assert_eq!(i["count"].default, Some(json!(3)));
    assert_eq!(
        i["level"].kind,
        InputKind::Choice(vec!["low".into(), "high".into()])
    );
    assert_eq!(i["target"].kind, InputKind::Environment);
    assert_eq!(i["plain"].kind, InputKind::String);
    assert_eq!(i["ver"].default, Some(json!("1.10")));
    assert!(wf.on.events.contains_key("workflow_dispatch"));
}

#[test]
fn dispatch_input_problems() {
    let e = errs(
        r#"
on:
  workflow_dispatch:
    inputs:
      a:
        type: text
      b:
        type: choice
      c:
        type: choice
        options: [x]
        default: y
      d:
        required: maybe
jobs:
  j:
    runs-on: x
    steps: [{run: x}]
"#,
    );
    let d = find(&e, "unknown input type `text`");
    assert_eq!(
        (d.pos.line, d.path.as_str()),
        (6, "on.workflow_dispatch.inputs.a.type")
    );
    find(&e, "needs a non-empty `options`");
    find(&e, "the default `y` is not one of the `options`");
    find(&e, "`required` must be a boolean");
}

#[test]
fn foreign_events_are_warnings() {
    let wf = ok(
        "on:\n  push:\n  merge_group:\n  issues:\n    types: [opened]\n  workflow_call:\n    inputs:\n      x: {type: string}\npermissions:\n  contents: read\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n",
    );
    assert_eq!(wf.on.events.keys().collect::<Vec<_>>(), ["push"]);
    let msgs: Vec<(u32, &str)> = wf
        .warnings
        .iter()
        .map(|w| (w.pos.line, w.path.as_str()))
        .collect();
    assert_eq!(
        msgs,
        [
            (3, "on.merge_group"),
            (4, "on.issues"),
            (6, "on.workflow_call"),
            (9, "permissions")
        ]
    );
    assert!(wf.warnings.iter().all(|w| w.severity == Severity::Warning));
}

#[test]
fn unknown_event_is_an_error() {
    let e = errs("on: [push, pushh]\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n");
    let d = find(&e, "unknown event `pushh`");
    assert_eq!(
        d.pos,
        Pos {
            line: 1,
            column: 12
        }
    );
}

#[test]
fn env_keeps_scalars_as_written() {
    let wf = ok(r#"
on: push
env:
  VERSION: 1.10
  FLAG: true
  COUNT: 010
  EMPTY:
  QUOTED: "a b"
  EXPR: ${{ github.sha }}
jobs:
  a:
    runs-on: x
    env:
      JOB: 1
    steps:
      - run: x
        env:
          STEP: yes
"#);
    assert_eq!(
        wf.env.iter().collect::<Vec<_>>(),
        [
            (&"VERSION".to_owned(), &"1.10".to_owned()),
            (&"FLAG".to_owned(), &"true".to_owned()),
            (&"COUNT".to_owned(), &"010".to_owned()),
            (&"EMPTY".to_owned(), &String::new()),
            (&"QUOTED".to_owned(), &"a b".to_owned()),
            (&"EXPR".to_owned(), &"${{ github.sha }}".to_owned()),
        ]
    );
    assert_eq!(wf.jobs["a"].env["JOB"], "1");
    assert_eq!(wf.jobs["a"].steps[0].env["STEP"], "yes");
}

#[test]
fn env_or_with_value_that_is_a_map_is_an_error() {
    let e = errs(
        "on: push\nenv:\n  A:\n    b: c\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: ./act\n        with:\n          x: [1]\n",
    );
    let d = find(
        &e,
        "the `env` value `A` must be a string, number or boolean, not a mapping",
    );
    assert_eq!((d.pos.line, d.path.as_str()), (4, "env.A"));
    let d = find(&e, "the `with` value `x`");
    assert_eq!(d.path, "jobs.a.steps[0].with.x");
}

#[test]
fn block_scalars_and_anchors() {
    let wf = ok(r#"
on: push
jobs:
  a:
    runs-on: x
    env: &shared
      A: "1"
    steps:
      - &step
        name: multi
        run: |
          echo one
            echo two
          echo "${{ env.A }}"
      - run: >
          folded
          line
  b:
    runs-on: x
    env: *shared
    steps:
      - *step
"#);
    let a = &wf.jobs["a"];
    assert_eq!(
        a.steps[0].action,
        StepAction::Run("echo one\n  echo two\necho \"${{ env.A }}\"\n".into())
    );
    assert_eq!(a.steps[1].action, StepAction::Run("folded line\n".into()));
    let b = &wf.jobs["b"];
    assert_eq!(b.env, a.env);
    assert_eq!(b.steps[0].action, a.steps[0].action);
    assert_eq!(b.steps[0].name.as_deref(), Some("multi"));
    // The alias's step stands where the alias is written.
    assert_eq!(b.steps[0].pos.line, 22);
}

#[test]
fn defaults_concurrency_and_names() {
    let wf = ok(r#"
name: CI
run-name: Deploy ${{ github.ref }}
on: push
defaults:
  run:
    shell: bash
    working-directory: src
concurrency:
  group: ci-${{ github.ref }}
  cancel-in-progress: true
jobs:
  a:
    name: Build ${{ github.sha }}
    runs-on: x
    defaults:
      run:
        shell: sh
    concurrency: one
    steps: [{run: x}]
  b:
    runs-on: x
    concurrency:
      group: g
      cancel-in-progress: ${{ github.ref != 'refs/heads/main' }}
    steps: [{run: x}]
"#);
    assert_eq!(wf.display_name(), "CI");
    assert_eq!(wf.run_name.as_deref(), Some("Deploy ${{ github.ref }}"));
    assert_eq!(wf.defaults.shell.as_deref(), Some("bash"));
    assert_eq!(wf.defaults.working_directory.as_deref(), Some("src"));
    assert_eq!(
        wf.concurrency,
        Some(Concurrency {
            group: "ci-${{ github.ref }}".into(),
            cancel_in_progress: "true".into()
        })
    );
    let a = &wf.jobs["a"];
    assert_eq!(a.name.as_deref(), Some("Build ${{ github.sha }}"));
    assert_eq!(a.defaults.shell.as_deref(), Some("sh"));
    assert_eq!(
        a.concurrency,
        Some(Concurrency {
            group: "one".into(),
            cancel_in_progress: "false".into()
        })
    );
    assert_eq!(
        wf.jobs["b"]
            .concurrency
            .as_ref()
            .map(|c| c.cancel_in_progress.as_str()),
        Some("${{ github.ref != 'refs/heads/main' }}")
    );
}

#[test]
fn job_keys() {
    let wf = ok(r#"
on: push
jobs:
  setup:
    runs-on: [self-hosted, linux]
    outputs:
      v: ${{ steps.s.outputs.v }}
    steps:
      - id: s
        run: echo v=1 >> "$GITHUB_OUTPUT"
  test:
    needs: setup
    if: github.event_name == 'push'
    runs-on:
      group: big
      labels: [linux]
    timeout-minutes: 30
    continue-on-error: ${{ matrix.experimental }}
    environment: production
    strategy:
      fail-fast: false
      max-parallel: 2
      matrix:
        os: [a, b]
        experimental: [false]
        include:
          - os: c
            experimental: true
        exclude:
          - os: b
    steps: [{run: x}]
  deploy:
    needs: [setup, test]
    if: ${{ always() }}
    runs-on: x
    environment:
      name: prod
      url: https://example.org
    continue-on-error: true
    timeout-minutes: ${{ inputs.t }}
    steps: [{run: x}]
"#);
    let setup = &wf.jobs["setup"];
    assert_eq!(setup.runs_on, Some(json!(["self-hosted", "linux"])));
    assert_eq!(setup.outputs["v"], "${{ steps.s.outputs.v }}");
    let test = &wf.jobs["test"];
    assert_eq!(test.needs, ["setup"]);
    assert_eq!(
        test.condition.as_deref(),
        Some("github.event_name == 'push'")
    );
    assert_eq!(
        test.runs_on,
        Some(json!({"group": "big", "labels": ["linux"]}))
    );
    assert_eq!(test.timeout_minutes, Some(json!(30)));
    assert_eq!(
        test.continue_on_error,
        Some(json!("${{ matrix.experimental }}"))
    );
    assert_eq!(
        test.environment,
        Some(EnvironmentRef {
            name: "production".into(),
            url: None
        })
    );
    let s = test.strategy.as_ref().expect("a strategy");
    assert_eq!(s.fail_fast, Some(json!(false)));
    assert_eq!(s.max_parallel, Some(json!(2)));
    assert_eq!(
        s.matrix,
        Some(json!({
            "os": ["a", "b"], "experimental": [false],
            "include": [{"os": "c", "experimental": true}],
            "exclude": [{"os": "b"}]
        }))
    );
    let deploy = &wf.jobs["deploy"];
    assert_eq!(deploy.needs, ["setup", "test"]);
    assert_eq!(deploy.condition.as_deref(), Some("${{ always() }}"));
    assert_eq!(
        deploy.environment.as_ref().and_then(|e| e.url.as_deref()),
        Some("https://example.org")
    );
    assert_eq!(deploy.continue_on_error, Some(json!(true)));
    assert_eq!(deploy.timeout_minutes, Some(json!("${{ inputs.t }}")));
    let w: Vec<&str> = wf.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(w, ["jobs.deploy.environment.url"]);
}

#[test]
fn if_keeps_booleans_as_written() {
    let wf = ok(
        "on: push\njobs:\n  a:\n    if: false\n    runs-on: x\n    steps:\n      - if: true\n        run: x\n",
    );
    assert_eq!(wf.jobs["a"].condition.as_deref(), Some("false"));
    assert_eq!(wf.jobs["a"].steps[0].condition.as_deref(), Some("true"));
}

#[test]
fn matrix_as_one_expression() {
    let wf = ok(
        "on: push\njobs:\n  a:\n    runs-on: x\n    strategy:\n      matrix: ${{ fromJSON(needs.x.outputs.m) }}\n    steps: [{run: x}]\n",
    );
    assert_eq!(
        wf.jobs["a"]
            .strategy
            .as_ref()
            .and_then(|s| s.matrix.clone()),
        Some(json!("${{ fromJSON(needs.x.outputs.m) }}"))
    );
}

#[test]
fn matrix_problems() {
    let e = errs(
        "on: push\njobs:\n  a:\n    runs-on: x\n    strategy:\n      matrix:\n        os: []\n        v: ubuntu\n        include: {a: 1}\n        exclude: [x]\n    steps: [{run: x}]\n",
    );
    let d = find(&e, "Matrix vector 'os' does not contain any values");
    assert_eq!(
        (d.pos.line, d.path.as_str()),
        (7, "jobs.a.strategy.matrix.os")
    );
    find(&e, "Matrix vector 'v' must be a list");
    find(&e, "`include` must be a list of mappings, not a mapping");
    find(&e, "each `exclude` entry must be a mapping");
}

#[test]
fn steps_all_keys() {
    let wf = ok(r#"
on: push
jobs:
  a:
    runs-on: x
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
          lfs: true
      - id: build
        name: Build
        if: success()
        run: make
        shell: bash
        working-directory: sub
        continue-on-error: true
        timeout-minutes: 5
      - uses: ./.github/actions/setup
      - uses: some/remote@v1
"#);
    let s = &wf.jobs["a"].steps;
    assert_eq!(
        s[0].action,
        StepAction::Uses {
            uses: "actions/checkout@v4".into(),
            with: [
                ("fetch-depth".to_owned(), "0".to_owned()),
                ("lfs".into(), "true".into())
            ]
            .into_iter()
            .collect()
        }
    );
    assert_eq!(s[1].id.as_deref(), Some("build"));
    assert_eq!(s[1].name.as_deref(), Some("Build"));
    assert_eq!(s[1].condition.as_deref(), Some("success()"));
    assert_eq!(s[1].shell.as_deref(), Some("bash"));
    assert_eq!(s[1].working_directory.as_deref(), Some("sub"));
    assert_eq!(s[1].continue_on_error, Some(json!(true)));
    assert_eq!(s[1].timeout_minutes, Some(json!(5)));
    // A remote action is not a parse error: `plan::check_runnable` refuses it.
    assert!(matches!(&s[3].action, StepAction::Uses { uses, .. } if uses == "some/remote@v1"));
}

#[test]
fn step_problems() {
    let e = errs(
        r#"
on: push
jobs:
  a:
    runs-on: x
    steps:
      - run: x
        uses: ./y
      - name: nothing
      - id: same
        run: x
      - id: same
        run: y
      - uses: docker://alpine:3
      - run: x
        with:
          a: b
      - run: x
        container: alpine
      - id: 1bad
        run: x
    "#,
    );
    let d = find(&e, "either `run` or `uses`, not both");
    assert_eq!((d.pos.line, d.path.as_str()), (7, "jobs.a.steps[0]"));
    let d = find(&e, "a step needs `run` or `uses`");
    assert_eq!((d.pos.line, d.path.as_str()), (9, "jobs.a.steps[1]"));
    let d = find(
        &e,
        "the step id `same` is already used by the step at line 10",
    );
    assert_eq!((d.pos.line, d.path.as_str()), (12, "jobs.a.steps[3].id"));
    let d = find(&e, "docker actions");
    assert_eq!(d.path, "jobs.a.steps[4].uses");
    find(&e, "`with` is only valid with `uses`");
    let d = find(&e, "`container` is not supported");
    assert_eq!(d.path, "jobs.a.steps[6].container");
    find(&e, "the step id `1bad` is invalid");
}

#[test]
fn job_problems() {
    let e = errs(
        r#"
on: push
jobs:
  nosteps:
    runs-on: x
  1bad:
    runs-on: x
    steps: [{run: x}]
  typed:
    runs-on: x
    timeout-minutes: abc
    continue-on-error: maybe
    needs: {a: 1}
    steps: "x"
  extra:
    runs-on: x
    foo: bar
    services:
      db: {image: postgres}
    container: node:20
    steps: [{run: x}]
  reusable:
    uses: ./.github/workflows/other.yml
    with:
      a: b
  norunner:
    steps: [{run: x}]
"#,
    );
    let d = find(
        &e,
        "the job `nosteps` has neither `steps`, `uses` nor `packages`",
    );
    assert_eq!(
        (d.pos, d.path.as_str()),
        (Pos { line: 4, column: 3 }, "jobs.nosteps")
    );
    find(&e, "the job id `1bad` is invalid");
    let d = find(
        &e,
        "`timeout-minutes` must be a number or an expression, not the string `abc`",
    );
    assert_eq!(
        (d.pos, d.path.as_str()),
        (
            Pos {
                line: 11,
                column: 22
            },
            "jobs.typed.timeout-minutes"
        )
    );
    find(
        &e,
        "`continue-on-error` must be a boolean or an expression, not the string `maybe`",
    );
    let d = find(
        &e,
        "`needs` must be a string or a list of strings, not a mapping",
    );
    assert_eq!(d.path, "jobs.typed.needs");
    let d = find(&e, "`steps` must be a list of steps, not the string `x`");
    assert_eq!(d.pos.line, 14);
    let d = find(&e, "Unexpected value 'foo'");
    assert_eq!(
        (d.pos, d.path.as_str()),
        (
            Pos {
                line: 17,
                column: 5
            },
            "jobs.extra.foo"
        )
    );
    let d = find(&e, "`services` is not supported");
    assert_eq!(d.path, "jobs.extra.services");
    let d = find(&e, "`container` is not supported");
    assert_eq!(d.path, "jobs.extra.container");
    let d = find(
        &e,
        "calling a reusable workflow (`uses: ./.github/workflows/other.yml`)",
    );
    assert_eq!(d.path, "jobs.reusable.uses");
    find(
        &e,
        "Required property is missing: `runs-on` (job `norunner`)",
    );
}

#[test]
fn unknown_keys_everywhere() {
    let e = errs(
        "on: push\nfoo: 1\njobs:\n  a:\n    runs-on: x\n    strategy:\n      matrix: {a: [1]}\n      fail_fast: true\n    steps:\n      - run: x\n        bar: 1\n",
    );
    assert_eq!(
        e.iter()
            .map(|d| (d.path.as_str(), d.message.as_str()))
            .collect::<Vec<_>>(),
        [
            ("foo", "Unexpected value 'foo'"),
            ("jobs.a.strategy.fail_fast", "Unexpected value 'fail_fast'"),
            ("jobs.a.steps[0].bar", "Unexpected value 'bar'"),
        ]
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let e = errs(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n  a:\n    runs-on: y\n    steps: [{run: y}]\n",
    );
    let d = find(&e, "'a' is already defined (line 3)");
    assert_eq!(d.pos.line, 6);
}

#[test]
fn unknown_needs_and_cycles() {
    let e = errs(
        "on: push\njobs:\n  a:\n    needs: [b, ghost]\n    runs-on: x\n    steps: [{run: x}]\n  b:\n    needs: c\n    runs-on: x\n    steps: [{run: x}]\n  c:\n    needs: a\n    runs-on: x\n    steps: [{run: x}]\n  d:\n    needs: d\n    runs-on: x\n    steps: [{run: x}]\n",
    );
    let d = find(&e, "the job `a` needs `ghost`");
    assert_eq!(
        (d.pos, d.path.as_str()),
        (
            Pos {
                line: 4,
                column: 16
            },
            "jobs.a.needs"
        )
    );
    let d = find(&e, "dependency cycle between jobs: a → b → c → a");
    assert_eq!(
        d.pos,
        Pos {
            line: 4,
            column: 13
        }
    );
    find(&e, "dependency cycle between jobs: d → d");
}

#[test]
fn expression_errors_point_into_the_value() {
    let e = errs(
        "on: push\nenv:\n  A: ${{ github.sha ==  }}\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: |\n          echo ok\n            echo ${{ foo( }}\n      - if: github.ref == \n        run: x\n      - run: echo ${{ nope.x }}\n",
    );
    let env = e
        .iter()
        .find(|d| d.path == "env.A")
        .expect("an error for env.A");
    assert!(env.message.starts_with("invalid expression"), "{env:?}");
    assert_eq!(env.pos.line, 3);
    assert!(env.pos.column > 6, "{env:?}");
    let run = e
        .iter()
        .find(|d| d.path == "jobs.a.steps[0].run")
        .expect("an error for the run script");
    assert_eq!(run.pos.line, 10, "{run:?}");
    assert!(run.pos.column >= 18, "{run:?}");
    let cond = e
        .iter()
        .find(|d| d.path == "jobs.a.steps[1].if")
        .expect("an error for the if");
    assert_eq!(cond.pos.line, 11);
    let d = find(&e, "Unrecognized named-value: 'nope'");
    assert_eq!(d.path, "jobs.a.steps[2].run");
}

#[test]
fn yaml_syntax_error() {
    let e = errs("on: push\njobs:\n  a: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].message.starts_with("invalid YAML"), "{e:?}");
    assert_eq!(e[0].file, "wf.yml");
    let e = errs("");
    assert_eq!(e[0].message, "the file is empty");
    let e = errs("- just\n- a list\n");
    assert_eq!(e[0].message, "a workflow must be a mapping, not a list");
    let e = errs("name: x\n");
    assert_eq!(
        e.iter().map(|d| d.message.as_str()).collect::<Vec<_>>(),
        [
            "Required property is missing: `on`",
            "Required property is missing: `jobs`"
        ]
    );
}

#[test]
fn all_problems_are_reported_in_file_order() {
    let e = match parse_workflow(
        "wf.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    timeout-minutes: x\n    steps: []\n  b:\n    needs: zz\n    runs-on: x\n    steps: [{}]\n",
    ) {
        Err(d) => d,
        Ok(_) => panic!("invalid"),
    };
    let lines: Vec<u32> = e.0.iter().map(|d| d.pos.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted);
    assert_eq!(e.0.len(), 3, "{e}");
}

#[test]
fn job_ids() {
    for good in ["a", "_a", "build-1", "A_b-C"] {
        assert!(is_valid_id(good), "{good}");
    }
    for bad in ["", "1a", "-a", "a.b", "a b", "é"] {
        assert!(!is_valid_id(bad), "{bad}");
    }
}

#[test]
fn composite_action() {
    let a = match parse_action(
        "act/action.yml",
        r#"
name: Setup
description: Sets things up
inputs:
  version:
    description: Which
    required: true
    default: "1.0"
  plain:
    description: no default
outputs:
  path:
    description: where
    value: ${{ steps.s.outputs.path }}
runs:
  using: composite
  steps:
    - id: s
      shell: bash
      run: echo path=/x >> "$GITHUB_OUTPUT"
    - uses: ./other
"#,
    ) {
        Ok(a) => a,
        Err(d) => panic!("{d}"),
    };
    assert_eq!(a.name.as_deref(), Some("Setup"));
    assert_eq!(a.inputs["version"].as_deref(), Some("1.0"));
    assert_eq!(a.inputs["plain"], None);
    assert_eq!(a.outputs["path"], "${{ steps.s.outputs.path }}");
    assert_eq!(a.steps.len(), 2);
    assert_eq!(a.steps[0].shell.as_deref(), Some("bash"));
}

#[test]
fn composite_action_problems() {
    let Err(d) = parse_action(
        "action.yml",
        "name: x\nruns:\n  using: composite\n  steps:\n    - run: echo hi\n",
    ) else {
        panic!("a run step without shell is invalid")
    };
    let e: Vec<&Diagnostic> = d.errors().collect();
    assert_eq!(e.len(), 1);
    assert!(e[0].message.contains("needs `shell`"), "{d}");
    assert_eq!(e[0].path, "runs.steps[0].shell");

    let Err(d) = parse_action(
        "action.yml",
        "name: x\nruns:\n  using: node20\n  main: index.js\n",
    ) else {
        panic!("a JavaScript action is refused")
    };
    let e = d.errors().next().expect("an error");
    assert!(
        e.message.contains("`using: node20` is not supported"),
        "{d}"
    );
    assert_eq!(e.pos.line, 3);

    let Err(d) = parse_action("action.yml", "name: x\n") else {
        panic!("runs is required")
    };
    assert!(
        d.to_string()
            .contains("Required property is missing: `runs`")
    );
}

#[test]
fn schedule_entries_carry_zone_and_catch_up() {
    let wf = ok(r#"on:
  schedule:
    - cron: "0 3 * * *"
      timezone: Europe/Berlin
    - cron: "*/15 * * * 1-5"
      catch-up: none
jobs:
  a:
    runs-on: x
    steps: [{run: x}]
"#);
    assert_eq!(wf.on.schedules, ["0 3 * * *", "*/15 * * * 1-5"]);
    let e = &wf.on.schedule_entries;
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].cron, "0 3 * * *");
    assert_eq!(e[0].timezone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(e[0].catch_up, CatchUp::One);
    assert_eq!(e[0].pos.line, 3);
    assert_eq!(e[1].timezone, None);
    assert_eq!(e[1].catch_up, CatchUp::None);
}

#[test]
fn bad_cron_zone_or_catch_up_name_file_line_and_key() {
    let diags = errs(
        r#"on:
  schedule:
    - cron: "0 3 * *"
    - cron: "0 3 * * *"
      timezone: Mars/Olympus
    - cron: "61 * * * *"
    - cron: "0 3 * * *"
      catch-up: all
    - timezone: UTC
jobs:
  a:
    runs-on: x
    steps: [{run: x}]
"#,
    );
    let d = find(&diags, "5 fields");
    assert_eq!((d.file.as_str(), d.pos.line), ("wf.yml", 3));
    assert_eq!(d.path, "on.schedule[0].cron");
    let d = find(&diags, "unknown time zone `Mars/Olympus`");
    assert_eq!(
        (d.pos.line, d.path.as_str()),
        (5, "on.schedule[1].timezone")
    );
    let d = find(&diags, "invalid cron pattern `61 * * * *`");
    assert_eq!((d.pos.line, d.path.as_str()), (6, "on.schedule[2].cron"));
    let d = find(&diags, "`catch-up` is `one` or `none`");
    assert_eq!(
        (d.pos.line, d.path.as_str()),
        (8, "on.schedule[3].catch-up")
    );
    let d = find(&diags, "Required property is missing: `cron`");
    assert_eq!(d.path, "on.schedule[4]");
}

#[test]
fn packages_key_as_a_folder_or_a_mapping() {
    let wf = ok(
        "on: push\njobs:\n  all:\n    runs-on: x\n    packages: ports\n  some:\n    runs-on: x\n    needs: all\n    packages:\n      tree: trees/main\n      origins: [www/nginx, lang/perl5]\n      slots: 3\n",
    );
    let all = wf.jobs["all"].packages.as_ref().unwrap();
    assert_eq!(
        (all.tree.as_str(), all.origins.len(), all.slots, all.pos),
        ("ports", 0, None, Pos { line: 5, column: 5 })
    );
    assert!(wf.jobs["all"].steps.is_empty());
    let some = wf.jobs["some"].packages.as_ref().unwrap();
    assert_eq!(some.tree, "trees/main");
    assert_eq!(some.origins, ["www/nginx", "lang/perl5"]);
    assert_eq!(some.slots, Some(3));
    let root = ok("on: push\njobs:\n  a:\n    runs-on: x\n    packages: {}\n");
    assert_eq!(root.jobs["a"].packages.as_ref().unwrap().tree, ".");
}

#[test]
fn packages_problems_name_the_key() {
    let e = errs(
        "on: push\njobs:\n  a:\n    runs-on: x\n    packages:\n      tree: /abs\n      origins: [ok/one, nope]\n      slots: many\n      extra: 1\n    strategy:\n      matrix: {x: [1]}\n  b:\n    packages: [x]\n",
    );
    find(&e, "the package tree `/abs` must be relative");
    let d = find(&e, "`nope` is not an origin");
    assert_eq!(d.path, "jobs.a.packages.origins[1]");
    find(
        &e,
        "`slots` must be a positive whole number, not the string `many`",
    );
    find(&e, "Unexpected value 'extra'");
    let d = find(&e, "has both `packages` and `strategy.matrix`");
    assert_eq!(d.pos, Pos { line: 5, column: 5 });
    find(&e, "`packages` must be a mapping, not a list");
    find(&e, "Required property is missing: `runs-on` (job `b`)");
}

#[test]
fn artifacts_are_parsed_with_their_metadata() {
    let wf = ok(r#"on: push
jobs:
  a:
    runs-on: x
    steps: [{run: x}]
    artifacts:
      - name: node-${{ github.sha }}
        path: |
          dist/*.tgz
          !dist/skip.tgz
        if-no-files-found: warn
        metadata:
          version: ${{ github.ref_name }}
          cpes: cpe:2.3:a:x:y:1:*:*:*:*:*:*:*
          stacks: [a, b]
          labels: {channel: lts}
      - path: [one, two]
"#);
    let arts = &wf.jobs["a"].artifacts;
    assert_eq!(arts.len(), 2);
    assert_eq!(arts[0].name, "node-${{ github.sha }}");
    assert_eq!(arts[0].paths, ["dist/*.tgz", "!dist/skip.tgz"]);
    assert_eq!(arts[0].if_no_files_found, IfNoFiles::Warn);
    assert_eq!(
        arts[0].metadata["cpes"],
        json!(["cpe:2.3:a:x:y:1:*:*:*:*:*:*:*"])
    );
    assert_eq!(arts[0].metadata["stacks"], json!(["a", "b"]));
    assert_eq!(arts[0].metadata["labels"], json!({"channel": "lts"}));
    assert_eq!(arts[1].name, "artifact");
    assert_eq!(arts[1].if_no_files_found, IfNoFiles::Error);
    assert_eq!(arts[1].paths, ["one", "two"]);
}

#[test]
fn bad_artifacts_are_reported_at_their_key() {
    let d = errs(
        r#"on: push
jobs:
  a:
    runs-on: x
    steps: [{run: x}]
    artifacts:
      - name: a
      - name: b
        path: x
        metadata:
          colour: red
      - name: c
        path: x
        if-no-files-found: panic
      - name: e
        path: x
        size: 3
      - name: d
        path: x
      - name: d
        path: y
"#,
    );
    assert_eq!(find(&d, "needs `path:`").path, "jobs.a.artifacts[0]");
    assert_eq!(
        find(&d, "unknown artifact metadata `colour`").path,
        "jobs.a.artifacts[1].metadata.colour"
    );
    assert_eq!(
        find(&d, "not `panic`").path,
        "jobs.a.artifacts[2].if-no-files-found"
    );
    assert_eq!(find(&d, "size").path, "jobs.a.artifacts[3].size");
    assert_eq!(
        find(&d, "two artifacts of this job are named `d`").path,
        "jobs.a.artifacts[5].name"
    );
    let e =
        errs("on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n    artifacts: dist\n");
    assert_eq!(find(&e, "must be a list").path, "jobs.a.artifacts");
}

#[test]
fn upload_and_download_artifact_are_built_in() {
    assert_eq!(
        StepAction::uses_kind("actions/upload-artifact@v4"),
        UsesKind::UploadArtifact
    );
    assert_eq!(
        StepAction::uses_kind("actions/download-artifact@v4"),
        UsesKind::DownloadArtifact
    );
    let wf = ok(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: actions/upload-artifact@v4\n        with: {name: x, path: y}\n",
    );
    assert!(crate::plan::check_runnable(&wf).is_empty());
}
