//! One invalid workflow per kind of problem, with the diagnostics exactly as `kiln` prints
//! them (`file:line:col: severity: message (at `path`)`).

use kiln_core::plan::check_runnable;
use kiln_core::workflow::parse_workflow;

/// The rendered diagnostics of a file that must not parse.
fn refused(src: &str) -> String {
    match parse_workflow(".kiln/workflows/ci.yml", src) {
        Ok(wf) => panic!("expected diagnostics, the workflow parsed: {wf:#?}"),
        Err(d) => {
            assert!(d.has_errors(), "{d}");
            d.to_string()
        }
    }
}

#[test]
fn yaml_syntax_error() {
    insta::assert_snapshot!(refused(
        "on: push\njobs:\n  build:\n    runs-on: x\n    steps:\n      - run: echo hi\n     - run: echo bye\n"
    ));
}

#[test]
fn unknown_needs() {
    insta::assert_snapshot!(refused(
        r#"on: push
jobs:
  build:
    runs-on: x
    steps:
      - run: make
  test:
    needs: [build, lint]
    runs-on: x
    steps:
      - run: make test
  deploy:
    needs: tests
    runs-on: x
    steps:
      - run: make deploy
"#
    ));
}

#[test]
fn dependency_cycle() {
    insta::assert_snapshot!(refused(
        r#"on: push
jobs:
  build:
    needs: deploy
    runs-on: x
    steps:
      - run: make
  test:
    needs: build
    runs-on: x
    steps:
      - run: make test
  deploy:
    needs: [test]
    runs-on: x
    steps:
      - run: make deploy
"#
    ));
}

#[test]
fn bad_expression() {
    insta::assert_snapshot!(refused(
        r#"on: push
env:
  TARGET: ${{ github.ref == }}
jobs:
  build:
    if: ${{ github.event_name == 'push' && }}
    runs-on: x
    steps:
      - name: Show
        run: |
          echo "building"
          echo "${{ toJSON(github.event }}"
"#
    ));
}

#[test]
fn wrong_types() {
    insta::assert_snapshot!(refused(
        r#"on: push
jobs:
  build:
    runs-on: x
    timeout-minutes: abc
    continue-on-error: sometimes
    needs: {a: 1}
    steps: "x"
  test:
    runs-on: [linux, {big: true}]
    strategy:
      max-parallel: many
      matrix:
        os: ubuntu
    steps:
      - run: [echo, hi]
"#
    ));
}

#[test]
fn unknown_keys() {
    insta::assert_snapshot!(refused(
        r#"on:
  push:
    branch: main
jobs:
  build:
    runs-on: x
    foo: bar
    strategy:
      matrix:
        os: [a]
      failfast: true
    steps:
      - run: make
        args: --all
"#
    ));
}

#[test]
fn services_and_container() {
    insta::assert_snapshot!(refused(
        r#"on: push
jobs:
  test:
    runs-on: ubuntu-latest
    container: node:20
    services:
      db:
        image: postgres:16
    steps:
      - run: npm test
      - uses: docker://alpine:3.20
  call:
    uses: ./.github/workflows/reusable.yml
"#
    ));
}

#[test]
fn remote_action_is_refused_before_running() {
    let src = r#"on: push
jobs:
  build:
    runs-on: x
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-node@v4
        with:
          node-version: 20
      - uses: ./.github/actions/local
      - run: npm ci
      - uses: softprops/action-gh-release@v2
"#;
    let wf = parse_workflow(".kiln/workflows/ci.yml", src).expect("a remote action parses");
    let d = kiln_core::workflow::Diagnostics(check_runnable(&wf));
    insta::assert_snapshot!(d.to_string());
}

#[test]
fn warnings_do_not_refuse_but_are_listed() {
    let wf = parse_workflow(
        ".kiln/workflows/ci.yml",
        r#"on:
  push:
  merge_group:
permissions:
  contents: read
jobs:
  deploy:
    runs-on: x
    environment:
      name: prod
      url: https://example.org
    steps:
      - run: ./deploy
"#,
    )
    .expect("warnings only");
    insta::assert_snapshot!(kiln_core::workflow::Diagnostics(wf.warnings).to_string());
}
