//! GitHub's documented examples, the runner's coercion and formatting rules, errors, and
//! properties that hold for any input (nothing panics; equality is symmetric).

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::value::{format_number, parse_number};
use super::*;

fn contexts() -> Map<String, Value> {
    json!({
        "github": {
            "event_name": "push",
            "ref": "refs/heads/main",
            "run_number": 42,
            "event": {
                "commits": [
                    {"message": "first", "author": {"name": "Ann"}},
                    {"message": "second", "author": {"name": "Bob"}}
                ],
                "labels": {"a": {"name": "bug"}, "b": {"name": "docs"}},
                "issue": {"labels": [{"name": "bug"}, {"name": "help wanted"}]}
            }
        },
        "env": {"NAME": "kiln", "EMPTY": "", "ZERO": "0", "NUM": " 12 "},
        "vars": {"fruits": [
            {"name": "apple", "quantity": 1},
            {"name": "orange", "quantity": 2},
            {"name": "pear", "quantity": 1}
        ], "vegetables": {
            "carrot": {"ediblePortions": ["roots", "stems", "leaves"]},
            "cabbage": {"ediblePortions": ["leaves"]},
            "celery": {"ediblePortions": ["leaves", "petioles"]}
        }},
        "matrix": {"os": "ubuntu", "version": 3, "py": 3.1},
        "needs": {
            "build": {"result": "success", "outputs": {"json": "{\"a\":[1,2]}"}},
            "test": {"result": "failure", "outputs": {}}
        },
        "steps": {"s1": {"outputs": {"v": "1"}, "outcome": "success"}},
        "inputs": {"flag": true, "count": 2, "big": 123_456_789_012_345_678_i64}
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn scope_of(ctx: &Map<String, Value>, state: JobState) -> Scope<'_> {
    Scope {
        contexts: ctx,
        state,
        hasher: None,
    }
}

fn eval_with(src: &str, state: JobState) -> Value {
    let ctx = contexts();
    let expr = parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    evaluate(&expr, &scope_of(&ctx, state)).unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn eval(src: &str) -> Value {
    eval_with(src, JobState::default())
}

fn eval_err(src: &str) -> ExprError {
    let ctx = contexts();
    let expr = parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    match evaluate(&expr, &scope_of(&ctx, JobState::default())) {
        Ok(v) => panic!("{src}: expected an error, got {v}"),
        Err(e) => e,
    }
}

fn check(cases: &[(&str, Value)]) {
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

const FAILED: JobState = JobState {
    failed: true,
    cancelled: false,
};

const CANCELLED: JobState = JobState {
    failed: false,
    cancelled: true,
};

#[test]
fn literals() {
    check(&[
        ("null", Value::Null),
        ("true", json!(true)),
        ("false", json!(false)),
        ("711", json!(711)),
        ("-9.2", json!(-9.2)),
        ("0xff", json!(255)),
        ("-2.99e-2", json!(-0.0299)),
        (".5", json!(0.5)),
        ("+3", json!(3)),
        ("1E3", json!(1000)),
        ("0o17", json!(15)),
        ("0xffffffff", json!(-1)),
        ("'Mona the Octocat'", json!("Mona the Octocat")),
        ("'It''s open source!'", json!("It's open source!")),
        ("''", json!("")),
        // NaN and the infinities exist during evaluation; JSON cannot hold them.
        ("NaN", json!("NaN")),
        ("Infinity", json!("Infinity")),
        ("-Infinity", json!("-Infinity")),
    ]);
}

#[test]
fn operators_follow_githubs_table() {
    check(&[
        ("1 == 1", json!(true)),
        ("'abc' == 'ABC'", json!(true)),
        ("'a' != 'b'", json!(true)),
        ("1 < 2 && 2 <= 2", json!(true)),
        ("3 > 2", json!(true)),
        ("3 >= 4", json!(false)),
        ("'b' > 'A'", json!(true)),
        ("'B' > 'a'", json!(true)),
        ("'abc' <= 'ABC'", json!(true)),
        ("true > false", json!(true)),
        ("!true", json!(false)),
        ("!''", json!(true)),
        ("!!'x'", json!(true)),
        ("!fromJSON('[]')", json!(false)),
        // Precedence: ! binds tighter than comparisons, which bind tighter than == and &&.
        ("!false == true", json!(true)),
        ("1 < 2 == 2 < 3", json!(true)),
        ("true || false && false", json!(true)),
        ("(true || false) && false", json!(false)),
        ("!github.nope.x", json!(true)),
    ]);
}

#[test]
fn loose_equality_coerces_to_numbers() {
    check(&[
        ("null == 0", json!(true)),
        ("null == null", json!(true)),
        ("null == ''", json!(true)),
        ("null == false", json!(true)),
        ("'' == 0", json!(true)),
        ("' 12 ' == 12", json!(true)),
        ("env.NUM == 12", json!(true)),
        ("true == 1", json!(true)),
        ("true == '1'", json!(true)),
        ("false == '0'", json!(true)),
        ("true == 'true'", json!(false)),
        ("'2' == 2", json!(true)),
        ("'0x10' == 16", json!(true)),
        ("'1e2' == 100", json!(true)),
        ("'abc' == 0", json!(false)),
        ("'abc' != 0", json!(true)),
        ("false == ''", json!(true)),
        ("steps.s1.outputs.v == 1", json!(true)),
        ("inputs.count == '2'", json!(true)),
        // NaN is equal to nothing, itself included, and every ordering with it is false.
        ("NaN == NaN", json!(false)),
        ("NaN != NaN", json!(true)),
        ("'abc' < 1", json!(false)),
        ("'abc' >= 1", json!(false)),
        ("NaN <= NaN", json!(false)),
        ("Infinity > 1e300", json!(true)),
        ("'Infinity' == Infinity", json!(true)),
        // Arrays and objects: never coerced; equal only to the same instance.
        ("fromJSON('[]') == fromJSON('[]')", json!(false)),
        ("fromJSON('{}') != fromJSON('{}')", json!(true)),
        ("github.event == github.event", json!(true)),
        ("github.EVENT == github['event']", json!(true)),
        ("github.event == github.event.commits", json!(false)),
        ("fromJSON('[]') == 0", json!(false)),
        ("fromJSON('[]') < 1", json!(false)),
        ("contains(needs.*, needs.build)", json!(true)),
        ("(github.event || 1) == github.event", json!(true)),
        ("toJSON(github.event) == toJSON(github.event)", json!(true)),
        ("vars.fruits[0] == vars.fruits.*[0]", json!(false)),
    ]);
}

#[test]
fn and_or_return_the_deciding_operand() {
    check(&[
        ("'' || 'default'", json!("default")),
        ("'set' || 'default'", json!("set")),
        ("0 && 'x'", json!(0)),
        ("1 && 'x'", json!("x")),
        ("null || null", Value::Null),
        ("false || 0", json!(0)),
        ("'a' && 'b' && 'c'", json!("c")),
        ("'a' && '' && 'c'", json!("")),
        ("(1 == 1) && (2 == 3) || 'fallback'", json!("fallback")),
        (
            "github.event_name == 'push' && 'prod' || 'dev'",
            json!("prod"),
        ),
        ("github.event_name == 'pr' && 'prod' || 'dev'", json!("dev")),
        ("env.EMPTY || env.NAME", json!("kiln")),
        (
            "matrix || 1",
            json!({"os": "ubuntu", "version": 3, "py": 3.1}),
        ),
        // Short-circuit: the right side is not evaluated, so its error never happens.
        ("true || fromJSON('bad')", json!(true)),
        ("false && fromJSON('bad')", json!(false)),
    ]);
}

#[test]
fn property_access_is_case_insensitive_and_missing_is_null() {
    check(&[
        ("github.EVENT_NAME", json!("push")),
        ("GITHUB['ref']", json!("refs/heads/main")),
        ("Github.Ref", json!("refs/heads/main")),
        ("github['REF']", json!("refs/heads/main")),
        ("github.nope.deeper", Value::Null),
        ("github.nope[0]", Value::Null),
        ("matrix.version", json!(3)),
        ("github.event.commits[1].message", json!("second")),
        ("github.event.commits['1'].message", json!("second")),
        ("github.event.commits[1.7].message", json!("second")),
        ("github.event.commits[null].message", json!("first")),
        ("github.event.commits[true].message", json!("second")),
        ("github.event.commits[5]", Value::Null),
        ("github.event.commits[-1]", Value::Null),
        ("github.event.commits['x']", Value::Null),
        ("github.event.commits.message", Value::Null),
        ("github.ref.length", Value::Null),
        ("vars.unset", Value::Null),
        ("secrets.TOKEN", Value::Null),
        ("github[github.nope]", Value::Null),
        (
            "vars.vegetables[format('{0}', 'CARROT')].ediblePortions[0]",
            json!("roots"),
        ),
        ("fromJSON('{\"a-b\": 1}').a-b", json!(1)),
        ("fromJSON('{\"1\": \"one\"}')[1]", json!("one")),
        ("fromJSON('{\"true\": 1}')[true]", json!(1)),
        ("fromJSON('{\"\": 2}')[null]", json!(2)),
        // A property name may be a keyword.
        ("fromJSON('{\"null\": 3}').null", json!(3)),
    ]);
}

#[test]
fn object_filters() {
    check(&[
        ("github.event.commits.*.message", json!(["first", "second"])),
        ("github.event.commits.*.author.name", json!(["Ann", "Bob"])),
        ("github.event.labels.*.name", json!(["bug", "docs"])),
        ("github.event.labels[*].NAME", json!(["bug", "docs"])),
        ("needs.*.result", json!(["success", "failure"])),
        ("contains(needs.*.result, 'failure')", json!(true)),
        (
            "contains(github.event.commits.*.message, 'SECOND')",
            json!(true),
        ),
        // GitHub's documented fruits and vegetables.
        ("vars.fruits.*.name", json!(["apple", "orange", "pear"])),
        (
            "vars.vegetables.*.ediblePortions",
            json!([
                ["roots", "stems", "leaves"],
                ["leaves"],
                ["leaves", "petioles"]
            ]),
        ),
        (
            "vars.vegetables.*.ediblePortions.*",
            json!(["roots", "stems", "leaves", "leaves", "leaves", "petioles"]),
        ),
        // Indexing a filtered array maps over it and drops what is missing.
        (
            "vars.vegetables.*.ediblePortions[1]",
            json!(["stems", "petioles"]),
        ),
        ("(vars.fruits.*.name)[0]", json!([])),
        ("vars.fruits.*.nope", json!([])),
        // A filtered array stays one through && and ||.
        (
            "(vars.fruits.* || 1).name",
            json!(["apple", "orange", "pear"]),
        ),
        ("github.nope.*", json!([])),
        ("github.nope.*.name", json!([])),
        ("github.ref.*", json!([])),
        ("vars.fruits.*", contexts()["vars"]["fruits"].clone()),
        ("join(vars.fruits.*.quantity, '+')", json!("1+2+1")),
        (
            "toJSON(needs.*.result)",
            json!("[\n  \"success\",\n  \"failure\"\n]"),
        ),
    ]);
}

#[test]
fn numbers_print_like_github() {
    let cases: &[(f64, &str)] = &[
        (0.0, "0"),
        (-0.0, "-0"),
        (3.0, "3"),
        (1.5, "1.5"),
        (-9.2, "-9.2"),
        (0.1 + 0.2, "0.3"),
        (1.0 / 3.0, "0.333333333333333"),
        (100_000.0, "100000"),
        (123_456_789_012_345.0, "123456789012345"),
        (1e15, "1E+15"),
        (123_456_789_012_345_678.0, "1.23456789012346E+17"),
        (0.0001, "0.0001"),
        (0.00001, "1E-05"),
        (1.5e-7, "1.5E-07"),
        (1e100, "1E+100"),
        (-2.5e20, "-2.5E+20"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "Infinity"),
        (f64::NEG_INFINITY, "-Infinity"),
    ];
    for (n, want) in cases {
        assert_eq!(format_number(*n), *want, "{n:e}");
    }
    let ctx = contexts();
    let scope = scope_of(&ctx, JobState::default());
    assert_eq!(
        render_str("${{ matrix.py }} ${{ inputs.big }} ${{ 1e3 }}", &scope).unwrap(),
        "3.1 1.23456789012346E+17 1000"
    );
    assert_eq!(to_display_string(&json!(2.0)), "2");
}

#[test]
fn strings_become_numbers_like_javascript() {
    let cases: &[(&str, f64)] = &[
        ("", 0.0),
        ("  ", 0.0),
        (" 42 ", 42.0),
        ("-1.5e3", -1500.0),
        ("+.5", 0.5),
        ("5.", 5.0),
        ("0x1F", 31.0),
        ("0o10", 8.0),
        ("Infinity", f64::INFINITY),
        ("-Infinity", f64::NEG_INFINITY),
    ];
    for (s, want) in cases {
        assert_eq!(parse_number(s), *want, "{s:?}");
    }
    for bad in [
        "abc",
        "1,000",
        "0x",
        "0xg",
        "-0x10",
        "1e",
        "e5",
        ".",
        "1.2.3",
        "inf",
        "0x1ffffffff",
    ] {
        assert!(parse_number(bad).is_nan(), "{bad:?}");
    }
}

#[test]
fn functions() {
    check(&[
        ("contains('Hello world', 'llo')", json!(true)),
        ("contains('Hello world', 'LLO')", json!(true)),
        ("contains('Hello world', '')", json!(true)),
        ("contains('abc', 'x')", json!(false)),
        ("contains(123, 2)", json!(true)),
        ("contains(true, 'ru')", json!(true)),
        ("contains(null, '')", json!(true)),
        ("contains('Object', github)", json!(false)),
        ("contains(github, 'ref')", json!(false)),
        ("contains(fromJSON('[1, \"2\"]'), 2)", json!(true)),
        ("contains(fromJSON('[]'), null)", json!(false)),
        (
            "contains(fromJSON('[\"push\", \"pull_request\"]'), github.event_name)",
            json!(true),
        ),
        (
            "contains(github.event.issue.labels.*.name, 'bug')",
            json!(true),
        ),
        ("startsWith('Hello world', 'he')", json!(true)),
        ("startsWith('Hello world', 'world')", json!(false)),
        ("startsWith(github, 'O')", json!(false)),
        ("endsWith('Hello world', 'LD')", json!(true)),
        ("endsWith(1.5, '.5')", json!(true)),
        (
            "format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')",
            json!("Hello Mona the Octocat"),
        ),
        (
            "format('{{Hello {0} {1} {2}!}}', 'Mona', 'the', 'Octocat')",
            json!("{Hello Mona the Octocat!}"),
        ),
        ("format('{0}', 1.5)", json!("1.5")),
        ("format('{0}{0}{1}', 'a', 'b')", json!("aab")),
        ("format('{00}', 'a')", json!("a")),
        (
            "format('{0} {1} {2}', null, true, github)",
            json!(" true Object"),
        ),
        ("format('plain')", json!("plain")),
        ("format('{{}}')", json!("{}")),
        ("format('{1}', fromJSON('bad'), 'b')", json!("b")),
        (
            "join(github.event.commits.*.message)",
            json!("first,second"),
        ),
        (
            "join(github.event.issue.labels.*.name, ', ')",
            json!("bug, help wanted"),
        ),
        ("join('abc', '-')", json!("abc")),
        ("join(1.5)", json!("1.5")),
        ("join(null)", json!("")),
        ("join(github)", json!("")),
        ("join(fromJSON('[]'), '-')", json!("")),
        ("join(fromJSON('[1]'), github)", json!("1")),
        ("join(fromJSON('[1, 2]'), github)", json!("1,2")),
        (
            "join(fromJSON('[null, true, [], {}]'), ' ')",
            json!(" true Array Object"),
        ),
        ("toJSON('a\"b')", json!("\"a\\\"b\"")),
        ("toJSON(null)", json!("null")),
        ("toJSON(1.5)", json!("1.5")),
        ("toJSON(fromJSON('[]'))", json!("[]")),
        ("toJSON(fromJSON('{}'))", json!("{}")),
        (
            "toJSON(matrix)",
            json!("{\n  \"os\": \"ubuntu\",\n  \"version\": 3,\n  \"py\": 3.1\n}"),
        ),
        (
            "toJSON(fromJSON('{\"a\": [1, {\"b\": null}, []], \"c\": {}}'))",
            json!(
                "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    },\n    []\n  ],\n  \"c\": {}\n}"
            ),
        ),
        (
            "toJSON(fromJSON('\"\\u2028\\n\"'))",
            json!("\"\\u2028\\n\""),
        ),
        ("fromJSON('{\"a\": [1, true]}').a[1]", json!(true)),
        ("fromJSON(needs.build.outputs.json).a[0]", json!(1)),
        ("fromJSON('3') == 3", json!(true)),
        ("fromJSON(' \"x\" ')", json!("x")),
        ("fromJSON('null')", Value::Null),
        ("fromJSON(toJSON(matrix)).os", json!("ubuntu")),
        ("fromJSON('[1,2]')[1]", json!(2)),
        // Function names are case-insensitive.
        ("TOJSON(1)", json!("1")),
        ("FromJson('true')", json!(true)),
        ("CONTAINS('a', 'A')", json!(true)),
        // case(): the first true predicate's value, else the default.
        ("case(false, 'a', true, 'b', 'c')", json!("b")),
        ("case(false, 'a', 'default')", json!("default")),
        ("case(github.event_name == 'push', 1, 2)", json!(1)),
    ]);
}

#[test]
fn function_errors() {
    let e = eval_err("fromJSON('{bad')");
    assert!(e.message.contains("not valid JSON"), "{}", e.message);
    assert!(e.message.contains("{bad"), "{}", e.message);
    assert!(
        e.message.contains("within expression: fromJSON('{bad')"),
        "{}",
        e.message
    );
    assert_eq!(e.offset, 0);
    let e = eval_err("1 == fromJSON('')");
    assert_eq!(e.offset, 5);
    for (src, what) in [
        ("format('{1}', 'a')", "more arguments"),
        ("format('{0', 'a')", "invalid"),
        ("format('}', 'a')", "invalid"),
        ("format('{x}', 'a')", "invalid"),
        ("format('{256}', 'a')", "invalid"),
        ("format('{0:D2}', 1)", "specifiers"),
        ("case(1, 'a', 'b')", "boolean"),
        ("case('true', 'a', 'b')", "boolean"),
    ] {
        let e = eval_err(src);
        assert!(e.message.contains(what), "{src}: {}", e.message);
        assert!(e.message.contains(src), "{src}: {}", e.message);
    }
    // Arguments a format string does not use are not evaluated; a bad format string fails
    // before any argument is.
    let e = eval_err("format('{1}', fromJSON('bad'))");
    assert!(e.message.contains("more arguments"), "{}", e.message);
}

#[test]
fn scope_keys_are_matched_case_insensitively() {
    let ctx = json!({"Matrix": {"OS": "linux"}})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let scope = scope_of(&ctx, JobState::default());
    assert_eq!(
        render_str("${{ matrix.os }}", &scope).as_deref(),
        Ok("linux")
    );
    assert_eq!(render_str("${{ needs.x }}", &scope).as_deref(), Ok(""));
}

#[test]
fn status_functions_read_the_job_state() {
    assert_eq!(eval_with("success()", FAILED), json!(false));
    assert_eq!(eval_with("failure()", FAILED), json!(true));
    assert_eq!(eval_with("always()", FAILED), json!(true));
    assert_eq!(eval_with("cancelled()", FAILED), json!(false));
    assert_eq!(eval_with("success()", CANCELLED), json!(false));
    assert_eq!(eval_with("cancelled()", CANCELLED), json!(true));
    assert_eq!(eval("success()"), json!(true));
    assert_eq!(eval("failure()"), json!(false));
    assert_eq!(eval("SUCCESS()"), json!(true));
}

#[test]
fn conditions_add_an_implicit_success() {
    let ctx = contexts();
    let ok = scope_of(&ctx, JobState::default());
    let failed = scope_of(&ctx, FAILED);
    let cancelled = scope_of(&ctx, CANCELLED);
    let cases: &[(&str, &Scope, bool)] = &[
        ("github.event_name == 'push'", &ok, true),
        ("${{ github.event_name == 'push' }}", &ok, true),
        ("  ${{ github.event_name == 'push' }}  ", &ok, true),
        ("github.event_name == 'push'", &failed, false),
        ("${{ github.event_name == 'push' }}", &cancelled, false),
        (
            "${{ failure() && github.event_name == 'push' }}",
            &failed,
            true,
        ),
        ("failure()", &ok, false),
        ("always()", &failed, true),
        ("always()", &cancelled, true),
        ("!cancelled()", &failed, true),
        ("cancelled()", &cancelled, true),
        ("success() || failure()", &failed, true),
        ("${{ false }}", &ok, false),
        ("env.EMPTY", &ok, false),
        ("env.ZERO", &ok, true),
        ("inputs.flag", &ok, true),
        ("NaN", &ok, false),
        ("${{ 0 }}", &ok, false),
        ("fromJSON('[]')", &ok, true),
        ("", &ok, true),
        ("   ", &failed, false),
        // Text around `${{ }}` makes a non-empty string: true, GitHub's classic gotcha...
        ("${{ false }} == true", &ok, true),
        // ...still subject to the implicit success()...
        ("${{ false }} == true", &failed, false),
        // ...unless a piece calls a status function.
        ("${{ always() }} x", &failed, true),
        // Nothing is evaluated after a failure, so a broken expression does not error.
        ("fromJSON('bad')", &failed, false),
    ];
    for (src, scope, want) in cases {
        assert_eq!(eval_condition(src, scope), Ok(*want), "{src}");
    }
    let e = eval_condition("  nope == 1", &ok).unwrap_err();
    assert_eq!(e.offset, 2);
    let e = eval_condition("x ${{ fromJSON('') }}", &ok).unwrap_err();
    assert_eq!(e.offset, 6);
    assert!(eval_condition("${{ }}", &ok).is_err());
}

#[test]
fn templates_interpolate_with_githubs_string_rules() {
    let ctx = contexts();
    let scope = scope_of(&ctx, JobState::default());
    let cases: &[(&str, &str)] = &[
        (
            "os=${{ matrix.os }} v=${{ matrix.version }} n=${{ null }} b=${{ true }}",
            "os=ubuntu v=3 n= b=true",
        ),
        ("${{ matrix }}", "Object"),
        ("${{ github.event.commits }}", "Array"),
        ("${{ github.event.commits.*.message }}", "Array"),
        ("no expressions", "no expressions"),
        ("", ""),
        ("${{ '}}' }}", "}}"),
        ("${{ 'a''}}''b' }}", "a'}}'b"),
        ("${{ '${{' }}", "${{"),
        ("a${{1}}b${{2}}c", "a1b2c"),
        ("{{ not an expression }}", "{{ not an expression }}"),
        ("$${{ 1 }}", "$1"),
        ("${{ github.run_number }}.${{ matrix.py }}", "42.3.1"),
    ];
    for (src, want) in cases {
        assert_eq!(render_str(src, &scope).as_deref(), Ok(*want), "{src}");
    }
}

#[test]
fn template_structure() {
    let t = Template::parse("  ${{ fromJSON('[1,2]') }} ").unwrap();
    assert!(t.single_expr().is_some());
    assert!(!t.is_literal());
    assert!(
        Template::parse("a ${{ 1 }}")
            .unwrap()
            .single_expr()
            .is_none()
    );
    assert!(
        Template::parse("${{ 1 }}${{ 2 }}")
            .unwrap()
            .single_expr()
            .is_none()
    );
    assert!(Template::parse("plain").unwrap().is_literal());
    assert!(Template::parse("").unwrap().is_literal());
    let t = Template::parse("${{ needs.a.outputs.x }}-${{ MATRIX.os }}").unwrap();
    assert_eq!(
        t.contexts(),
        ["matrix".to_owned(), "needs".to_owned()]
            .into_iter()
            .collect()
    );
    assert_eq!(
        t.exprs().map(Expr::source).collect::<Vec<_>>(),
        ["needs.a.outputs.x", "MATRIX.os"]
    );
}

#[test]
fn eval_value_keeps_types_of_whole_expressions() {
    let ctx = contexts();
    let scope = scope_of(&ctx, JobState::default());
    let v = json!({
        "os": "${{ fromJSON('[\"a\",\"b\"]') }}",
        "n": "${{ inputs.count }}",
        "f": " ${{ 1.5 }} ",
        "label": "v${{ matrix.version }}",
        "include": [{"x": "${{ true }}"}],
        "${{ matrix.os }}-key": "${{ null }}",
        "plain": 7,
        "obj": "${{ needs.build }}"
    });
    assert_eq!(
        eval_value(&v, &scope).unwrap(),
        json!({
            "os": ["a", "b"],
            "n": 2,
            "f": 1.5,
            "label": "v3",
            "include": [{"x": true}],
            "ubuntu-key": null,
            "plain": 7,
            "obj": {"result": "success", "outputs": {"json": "{\"a\":[1,2]}"}}
        })
    );
    let e = eval_value(&json!(["ok", {"k": "x ${{ fromJSON('') }}"}]), &scope).unwrap_err();
    assert_eq!(
        e.offset, 6,
        "offsets are relative to the string that failed"
    );
}

#[test]
fn hash_files_goes_through_the_callers_hasher() {
    struct Fixed;
    impl FileHasher for Fixed {
        fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
            if patterns.iter().any(|p| p == "boom") {
                return Err("disk on fire".to_owned());
            }
            Ok(format!("hash-of-{}", patterns.join("+")))
        }
    }
    let ctx = contexts();
    let scope = Scope {
        contexts: &ctx,
        state: JobState::default(),
        hasher: Some(&Fixed),
    };
    let e = parse("hashFiles('**/Cargo.lock', matrix.os)").unwrap();
    assert_eq!(
        evaluate(&e, &scope).unwrap(),
        json!("hash-of-**/Cargo.lock+ubuntu")
    );
    let err = evaluate(&parse("hashFiles('boom')").unwrap(), &scope).unwrap_err();
    assert!(err.message.contains("disk on fire"), "{}", err.message);
    let none = scope_of(&ctx, JobState::default());
    let err = evaluate(&e, &none).unwrap_err();
    assert!(err.message.contains("not available"), "{}", err.message);
}

#[test]
fn parse_errors_say_what_and_where() {
    let cases: &[(&str, &str, usize)] = &[
        ("foo.bar", "Unrecognized named-value: 'foo'", 0),
        ("github.x == foo", "Unrecognized named-value: 'foo'", 12),
        ("True", "Unrecognized named-value: 'True'", 0),
        ("github.x == ", "Unexpected end of expression: '=='", 9),
        ("github.", "Unexpected end of expression: '.'", 6),
        ("(github.x", "Unexpected end of expression: 'x'", 8),
        ("contains(1, 2", "Unexpected end of expression", 12),
        ("nosuch(1)", "Unrecognized function: 'nosuch'", 0),
        (
            "contains('a')",
            "Too few parameters supplied: 'contains' takes 2 arguments, 1 given",
            0,
        ),
        (
            "success(1)",
            "Too many parameters supplied: 'success' takes 0 arguments, 1 given",
            0,
        ),
        ("join()", "Too few parameters supplied", 0),
        ("toJSON(1, 2)", "Too many parameters supplied", 0),
        ("case(true, 1)", "Too few parameters supplied", 0),
        ("case(true, 1, false, 2)", "Even number of parameters", 0),
        ("'open", "Unexpected symbol: ''open'", 0),
        ("1 2", "Unexpected symbol: '2'", 2),
        ("github github", "Unexpected symbol: 'github'", 7),
        ("'abc'.length", "Unexpected symbol: '.'", 5),
        ("'abc'[0]", "Unexpected symbol: '['", 5),
        ("github.x = 1", "Unexpected symbol: '='", 9),
        ("github.x & 1", "Unexpected symbol: '&'", 9),
        ("1-2", "Unexpected symbol: '1-2'", 0),
        ("github.$x", "Unexpected symbol: '$x'", 7),
        ("github.*x", "Unexpected symbol", 8),
        ("contains(,1)", "Unexpected symbol: ','", 9),
        ("contains(1,)", "Unexpected symbol: ')'", 11),
        ("(1, 2)", "Unexpected symbol: ','", 2),
        ("github)", "Unexpected symbol: ')'", 6),
        ("github]", "Unexpected symbol: ']'", 6),
        ("github[1)", "Unexpected symbol: ')'", 8),
        ("!", "Unexpected end of expression: '!'", 0),
        ("1 !", "Unexpected symbol: '!'", 2),
        ("*", "Unexpected symbol: '*'", 0),
        ("1.2.3", "Unexpected symbol: '1.2.3'", 0),
        ("github.a(1)", "Unexpected symbol: '('", 8),
        ("é", "Unexpected symbol: 'é'", 0),
        ("", "An expression was expected", 0),
        ("   ", "An expression was expected", 0),
    ];
    for (src, want, offset) in cases {
        let e = match parse(src) {
            Ok(e) => panic!("{src}: parsed as {e:?}"),
            Err(e) => e,
        };
        assert!(e.message.contains(want), "{src}: {}", e.message);
        assert_eq!(e.offset, *offset, "{src}: {}", e.message);
        if !src.trim().is_empty() {
            assert!(
                e.message.ends_with(&format!("within expression: {src}")),
                "{src}: {}",
                e.message
            );
        }
    }
    // GitHub's wording, position 1-based.
    assert_eq!(
        parse("github.x == foo").unwrap_err().message,
        "Unrecognized named-value: 'foo' (available: github, env, vars, secrets, inputs, \
         matrix, needs, steps, job, jobs, runner, strategy). Located at position 13 within \
         expression: github.x == foo"
    );
    // The first problem in reading order wins.
    assert!(
        parse("foo == 1 2")
            .unwrap_err()
            .message
            .starts_with("Unrecognized named-value")
    );
}

#[test]
fn template_errors_are_relative_to_the_template() {
    let e = Template::parse("echo ${{ github.ref").unwrap_err();
    assert!(e.message.contains("not closed"), "{}", e.message);
    assert_eq!(e.offset, 5);
    let e = Template::parse("x ${{ nope }}").unwrap_err();
    assert_eq!(e.offset, 6);
    assert!(
        e.message.ends_with("within expression: nope"),
        "{}",
        e.message
    );
    let e = Template::parse("x ${{  }}").unwrap_err();
    assert!(
        e.message.contains("An expression was expected"),
        "{}",
        e.message
    );
    assert_eq!(e.offset, 2);
    let e = Template::parse("${{ 'a }}").unwrap_err();
    assert!(e.message.contains("not closed"), "{}", e.message);
    let ctx = contexts();
    let scope = scope_of(&ctx, JobState::default());
    let e = render_str("ab ${{  fromJSON('x') }}", &scope).unwrap_err();
    assert_eq!(e.offset, 8);
}

#[test]
fn limits_are_errors_not_crashes() {
    let deep_parens = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(parse(&deep_parens).unwrap_err().message.contains("depth"));
    let nots = format!("{}true", "!".repeat(10_000));
    assert!(parse(&nots).unwrap_err().message.contains("depth"));
    let path = format!("github{}", ".a".repeat(60));
    assert!(parse(&path).unwrap_err().message.contains("depth 50"));
    let ok_path = format!("github{}", ".a".repeat(40));
    assert_eq!(eval(&ok_path), Value::Null);
    // Long chains of && or || are one node, as in GitHub, so they have no depth problem.
    let chain = vec!["true"; 2000].join(" && ");
    assert_eq!(eval(&chain), json!(true));
    let long = format!("'{}'", "x".repeat(21_000));
    assert!(
        parse(&long)
            .unwrap_err()
            .message
            .contains("max expression length")
    );
    let calls = format!("{}1{}", "toJSON(".repeat(60), ")".repeat(60));
    assert!(parse(&calls).unwrap_err().message.contains("depth"));
}

#[test]
fn status_function_detection_and_contexts() {
    assert!(parse("always()").unwrap().calls_status_function());
    assert!(
        parse("!cancelled() && github.ref")
            .unwrap()
            .calls_status_function()
    );
    assert!(
        parse("contains(toJSON(Failure()), 'x')")
            .unwrap()
            .calls_status_function()
    );
    assert!(!parse("github.ref == 'x'").unwrap().calls_status_function());
    assert!(!parse("'success()'").unwrap().calls_status_function());
    assert_eq!(
        parse("NEEDS.a.outputs.b && matrix.x || format('{0}', Env.X)")
            .unwrap()
            .contexts(),
        ["env".to_owned(), "matrix".to_owned(), "needs".to_owned()]
            .into_iter()
            .collect()
    );
    assert!(parse("1 == 1").unwrap().contexts().is_empty());
    assert_eq!(parse(" github.ref ").unwrap().to_string(), " github.ref ");
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-zA-Z0-9 '{}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-cA-C]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Expressions built from the grammar's pieces, so evaluation is exercised (random text
/// mostly fails to parse).
fn arb_expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("1.5".to_owned()),
        Just("NaN".to_owned()),
        Just("'s'".to_owned()),
        Just("'{0}'".to_owned()),
        Just("success()".to_owned()),
        "(github|env|matrix|needs|steps|inputs)(\\.[a-cA-C]{1,2}|\\.\\*|\\[\\*\\]|\\[0\\]|\\['[a-c]'\\]){0,3}",
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        prop_oneof![
            (inner.clone(), "==|!=|<|<=|>|>=|&&|\\|\\|", inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("!{a}")),
            (
                "contains|startsWith|endsWith|format|join",
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(f, a, b)| format!("{f}({a}, {b})")),
            inner.clone().prop_map(|a| format!("toJSON({a})")),
            inner.clone().prop_map(|a| format!("fromJSON({a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("case({a} == 1, {b}, 2)")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})[{b}]")),
            inner.prop_map(|a| format!("({a}).*.a")),
        ]
    })
}

fn scope_ctx(github: Value, matrix: Value, needs: Value) -> Map<String, Value> {
    let mut ctx = Map::new();
    ctx.insert("github".into(), github);
    ctx.insert("matrix".into(), matrix);
    ctx.insert("needs".into(), needs);
    ctx
}

proptest! {
    #[test]
    fn parsing_never_panics(src in "\\PC{0,64}") {
        let _ = parse(&src);
        let _ = Template::parse(&src);
    }

    #[test]
    fn parsing_near_misses_never_panics(src in "[a-z.()'\\[\\]*!=<>&|, 0-9${}+-]{0,40}") {
        let _ = parse(&src);
        let _ = Template::parse(&src);
        let _ = Template::parse(&format!("${{{{ {src} }}}}"));
    }

    #[test]
    fn evaluation_never_panics(
        src in arb_expr(),
        github in arb_value(),
        matrix in arb_value(),
        needs in arb_value(),
        failed in any::<bool>(),
    ) {
        let ctx = scope_ctx(github, matrix, needs);
        let scope = Scope {
            contexts: &ctx,
            state: JobState { failed, cancelled: false },
            hasher: None,
        };
        let expr = parse(&src);
        prop_assert!(expr.is_ok(), "{src}: {:?}", expr);
        if let Ok(expr) = expr {
            let _ = evaluate(&expr, &scope);
        }
        let _ = eval_condition(&src, &scope);
        let _ = render_str(&format!("x ${{{{ {src} }}}} y"), &scope);
        let _ = eval_value(&json!({"k": format!("${{{{ {src} }}}}")}), &scope);
    }

    #[test]
    fn equality_is_symmetric_and_orderings_agree(
        a in arb_expr(),
        b in arb_expr(),
        github in arb_value(),
        matrix in arb_value(),
        needs in arb_value(),
    ) {
        let ctx = scope_ctx(github, matrix, needs);
        let scope = scope_of(&ctx, JobState::default());
        let run = |src: String| parse(&src).and_then(|e| evaluate(&e, &scope));
        // Errors (bad fromJSON and the like) say nothing about equality.
        if let (Ok(ab), Ok(ba), Ok(ne)) = (
            run(format!("({a}) == ({b})")),
            run(format!("({b}) == ({a})")),
            run(format!("({a}) != ({b})")),
        ) {
            prop_assert_eq!(&ab, &ba, "{} == {}", a, b);
            prop_assert_eq!(ne, json!(ab == json!(false)));
        }
        if let (Ok(le), Ok(lt), Ok(eq), Ok(gt)) = (
            run(format!("({a}) <= ({b})")),
            run(format!("({a}) < ({b})")),
            run(format!("({a}) == ({b})")),
            run(format!("({b}) > ({a})")),
        ) {
            prop_assert_eq!(le, json!(lt == json!(true) || eq == json!(true)));
            prop_assert_eq!(lt, gt);
        }
    }

    #[test]
    fn numbers_print_at_most_15_digits_and_read_back(n in any::<f64>()) {
        let s = format_number(n);
        let back = parse_number(&s);
        if n.is_nan() {
            prop_assert!(back.is_nan());
        } else if n.is_finite() {
            let digits: String = s
                .split('E')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            prop_assert!(digits.trim_start_matches('0').len() <= 15, "{s}");
            // 15 significant digits; subnormals have less precision than that.
            let tolerance = n.abs() * 1e-14 + 1e-300;
            prop_assert!((back - n).abs() <= tolerance, "{n:e} printed {s} read {back:e}");
        } else {
            prop_assert_eq!(back, n);
        }
    }

    #[test]
    fn integers_print_plainly(n in -999_999_999_999_999_i64..=999_999_999_999_999) {
        #[expect(clippy::cast_precision_loss, reason = "below 2^53, exact")]
        let f = n as f64;
        prop_assert_eq!(format_number(f), n.to_string());
    }
}
