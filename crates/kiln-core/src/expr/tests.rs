//! GitHub's documented examples, the coercion table, errors, and properties that hold for
//! any input (nothing panics).

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

fn contexts() -> Map<String, Value> {
    json!({
        "github": {
            "event_name": "push",
            "ref": "refs/heads/main",
            "event": {
                "commits": [
                    {"message": "first", "author": {"name": "Ann"}},
                    {"message": "second", "author": {"name": "Bob"}}
                ],
                "labels": {"a": {"name": "bug"}, "b": {"name": "docs"}}
            }
        },
        "env": {"NAME": "kiln", "EMPTY": ""},
        "matrix": {"os": "ubuntu", "version": 3},
        "needs": {
            "build": {"result": "success", "outputs": {"json": "{\"a\":[1,2]}"}},
            "test": {"result": "failure", "outputs": {}}
        },
        "steps": {"s1": {"outputs": {"v": "1"}, "outcome": "success"}},
        "inputs": {"flag": true, "count": 2}
    })
    .as_object()
    .unwrap()
    .clone()
}

fn eval_with(src: &str, state: JobState) -> Value {
    let ctx = contexts();
    let scope = Scope {
        contexts: &ctx,
        state,
        hasher: None,
    };
    evaluate(&parse(src).unwrap_or_else(|e| panic!("{src}: {e}")), &scope)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn eval(src: &str) -> Value {
    eval_with(src, JobState::default())
}

#[test]
fn literals() {
    assert_eq!(eval("null"), Value::Null);
    assert_eq!(eval("true"), json!(true));
    assert_eq!(eval("FALSE"), json!(false));
    assert_eq!(eval("711"), json!(711));
    assert_eq!(eval("-9.2"), json!(-9.2));
    assert_eq!(eval("0xff"), json!(255));
    assert_eq!(eval("-2.99e-2"), json!(-0.0299));
    assert_eq!(eval("'Mona the Octocat'"), json!("Mona the Octocat"));
    assert_eq!(eval("'It''s open source!'"), json!("It's open source!"));
}

#[test]
fn operators_follow_githubs_table() {
    let cases: &[(&str, Value)] = &[
        ("1 == 1", json!(true)),
        ("'abc' == 'ABC'", json!(true)),
        ("'a' != 'b'", json!(true)),
        ("1 < 2 && 2 <= 2", json!(true)),
        ("3 > 2", json!(true)),
        ("'b' > 'A'", json!(true)),
        ("!true", json!(false)),
        ("!''", json!(true)),
        // Loose equality: different types compare as numbers.
        ("null == 0", json!(true)),
        ("'' == 0", json!(true)),
        ("true == 1", json!(true)),
        ("'2' == 2", json!(true)),
        ("'abc' == 0", json!(false)),
        ("'abc' != 0", json!(true)),
        ("false == ''", json!(true)),
        // && and || return the deciding operand.
        ("'' || 'default'", json!("default")),
        ("'set' || 'default'", json!("set")),
        ("0 && 'x'", json!(0)),
        ("1 && 'x'", json!("x")),
        ("(1 == 1) && (2 == 3) || 'fallback'", json!("fallback")),
        // NaN compares false.
        ("'abc' < 1", json!(false)),
        ("'abc' >= 1", json!(false)),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn property_access_is_case_insensitive_and_missing_is_null() {
    assert_eq!(eval("github.EVENT_NAME"), json!("push"));
    assert_eq!(eval("GITHUB['ref']"), json!("refs/heads/main"));
    assert_eq!(eval("github.nope.deeper"), Value::Null);
    assert_eq!(eval("matrix.version"), json!(3));
    assert_eq!(eval("github.event.commits[1].message"), json!("second"));
    assert_eq!(eval("github.event.commits[5]"), Value::Null);
    assert_eq!(eval("vars.unset"), Value::Null);
    assert_eq!(eval("steps.s1.outputs.v == 1"), json!(true));
}

#[test]
fn object_filters() {
    assert_eq!(
        eval("github.event.commits.*.message"),
        json!(["first", "second"])
    );
    assert_eq!(
        eval("github.event.commits.*.author.name"),
        json!(["Ann", "Bob"])
    );
    assert_eq!(eval("github.event.labels.*.name"), json!(["bug", "docs"]));
    assert_eq!(eval("needs.*.result"), json!(["success", "failure"]));
    assert_eq!(eval("contains(needs.*.result, 'failure')"), json!(true));
    assert_eq!(
        eval("contains(github.event.commits.*.message, 'SECOND')"),
        json!(true)
    );
}

#[test]
fn functions() {
    let cases: &[(&str, Value)] = &[
        ("contains('Hello world', 'llo')", json!(true)),
        ("contains('Hello world', 'LLO')", json!(true)),
        (
            "contains(fromJSON('[\"push\", \"pull_request\"]'), github.event_name)",
            json!(true),
        ),
        ("startsWith('Hello world', 'he')", json!(true)),
        ("endsWith('Hello world', 'LD')", json!(true)),
        (
            "format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')",
            json!("Hello Mona the Octocat"),
        ),
        (
            "format('{{Hello {0} {1} {2}!}}', 'Mona', 'the', 'Octocat')",
            json!("{Hello Mona the Octocat!}"),
        ),
        ("format('{0}', 1.5)", json!("1.5")),
        (
            "join(github.event.commits.*.message)",
            json!("first,second"),
        ),
        (
            "join(github.event.commits.*.message, ' | ')",
            json!("first | second"),
        ),
        ("join('abc', '-')", json!("abc")),
        (
            "toJSON(matrix)",
            json!("{\n  \"os\": \"ubuntu\",\n  \"version\": 3\n}"),
        ),
        ("fromJSON('{\"a\": [1, true]}').a[1]", json!(true)),
        ("fromJSON(needs.build.outputs.json).a[0]", json!(1)),
        ("fromJSON('3') == 3", json!(true)),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn status_functions_read_the_job_state() {
    let failed = JobState {
        failed: true,
        cancelled: false,
    };
    assert_eq!(eval_with("success()", failed), json!(false));
    assert_eq!(eval_with("failure()", failed), json!(true));
    assert_eq!(eval_with("always()", failed), json!(true));
    assert_eq!(eval_with("cancelled()", failed), json!(false));
    assert_eq!(eval("success()"), json!(true));
}

#[test]
fn conditions_add_an_implicit_success() {
    let ctx = contexts();
    let ok = Scope {
        contexts: &ctx,
        state: JobState::default(),
        hasher: None,
    };
    let failed = Scope {
        contexts: &ctx,
        state: JobState {
            failed: true,
            cancelled: false,
        },
        hasher: None,
    };
    assert!(eval_condition("github.event_name == 'push'", &ok).unwrap());
    assert!(eval_condition("${{ github.event_name == 'push' }}", &ok).unwrap());
    assert!(!eval_condition("github.event_name == 'push'", &failed).unwrap());
    assert!(eval_condition("${{ failure() && github.event_name == 'push' }}", &failed).unwrap());
    assert!(eval_condition("always()", &failed).unwrap());
    assert!(!eval_condition("${{ false }}", &ok).unwrap());
    assert!(!eval_condition("env.EMPTY", &ok).unwrap());
    assert!(eval_condition("inputs.flag", &ok).unwrap());
}

#[test]
fn templates_interpolate_with_githubs_string_rules() {
    let ctx = contexts();
    let scope = Scope {
        contexts: &ctx,
        state: JobState::default(),
        hasher: None,
    };
    assert_eq!(
        render_str(
            "os=${{ matrix.os }} v=${{ matrix.version }} n=${{ null }} b=${{ true }}",
            &scope
        )
        .unwrap(),
        "os=ubuntu v=3 n= b=true"
    );
    assert_eq!(render_str("${{ matrix }}", &scope).unwrap(), "Object");
    assert_eq!(
        render_str("${{ github.event.commits }}", &scope).unwrap(),
        "Array"
    );
    assert_eq!(
        render_str("no expressions", &scope).unwrap(),
        "no expressions"
    );
    assert_eq!(render_str("${{ '}}' }}", &scope).unwrap(), "}}");

    let t = Template::parse("  ${{ fromJSON('[1,2]') }} ").unwrap();
    assert!(t.single_expr().is_some());
    assert!(
        Template::parse("a ${{ 1 }}")
            .unwrap()
            .single_expr()
            .is_none()
    );
    assert!(Template::parse("plain").unwrap().is_literal());
    assert_eq!(
        Template::parse("${{ needs.a.outputs.x }}-${{ matrix.os }}")
            .unwrap()
            .contexts(),
        ["matrix".to_owned(), "needs".to_owned()]
            .into_iter()
            .collect()
    );
}

#[test]
fn eval_value_keeps_types_of_whole_expressions() {
    let ctx = contexts();
    let scope = Scope {
        contexts: &ctx,
        state: JobState::default(),
        hasher: None,
    };
    let v = json!({
        "os": "${{ fromJSON('[\"a\",\"b\"]') }}",
        "n": "${{ inputs.count }}",
        "label": "v${{ matrix.version }}",
        "include": [{"x": "${{ true }}"}]
    });
    assert_eq!(
        eval_value(&v, &scope).unwrap(),
        json!({"os": ["a", "b"], "n": 2, "label": "v3", "include": [{"x": true}]})
    );
}

#[test]
fn hash_files_goes_through_the_callers_hasher() {
    struct Fixed;
    impl FileHasher for Fixed {
        fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
            Ok(format!("hash-of-{}", patterns.join("+")))
        }
    }
    let ctx = contexts();
    let scope = Scope {
        contexts: &ctx,
        state: JobState::default(),
        hasher: Some(&Fixed),
    };
    let e = parse("hashFiles('**/Cargo.lock', 'x')").unwrap();
    assert_eq!(
        evaluate(&e, &scope).unwrap(),
        json!("hash-of-**/Cargo.lock+x")
    );
    let none = Scope {
        contexts: &ctx,
        state: JobState::default(),
        hasher: None,
    };
    assert!(evaluate(&e, &none).is_err());
}

#[test]
fn errors_say_what_and_where() {
    let e = parse("foo.bar").unwrap_err();
    assert!(
        e.message.contains("Unrecognized named-value: 'foo'"),
        "{}",
        e.message
    );
    assert_eq!(e.offset, 0);
    let e = parse("github.x == ").unwrap_err();
    assert!(e.message.contains("unexpected end"), "{}", e.message);
    let e = parse("nosuch(1)").unwrap_err();
    assert!(
        e.message.contains("Unrecognized function: 'nosuch'"),
        "{}",
        e.message
    );
    let e = parse("contains('a')").unwrap_err();
    assert!(e.message.contains("contains"), "{}", e.message);
    let e = parse("'open").unwrap_err();
    assert!(e.message.contains("unterminated"), "{}", e.message);
    let e = parse("1 2").unwrap_err();
    assert_eq!(e.offset, 2);
    let e = Template::parse("echo ${{ github.ref").unwrap_err();
    assert!(e.message.contains("not closed"), "{}", e.message);
    let e = Template::parse("x ${{ nope }}").unwrap_err();
    assert_eq!(e.offset, 6, "offsets are relative to the whole template");

    let ctx = contexts();
    let scope = Scope {
        contexts: &ctx,
        state: JobState::default(),
        hasher: None,
    };
    let e = evaluate(&parse("fromJSON('{bad')").unwrap(), &scope).unwrap_err();
    assert!(e.message.contains("not valid JSON"), "{}", e.message);
    let e = evaluate(&parse("format('{1}', 'a')").unwrap(), &scope).unwrap_err();
    assert!(e.message.contains("{1}"), "{}", e.message);
}

#[test]
fn status_function_detection_and_contexts() {
    assert!(parse("failure() || x").is_err());
    assert!(parse("always()").unwrap().calls_status_function());
    assert!(
        parse("!cancelled() && github.ref")
            .unwrap()
            .calls_status_function()
    );
    assert!(!parse("github.ref == 'x'").unwrap().calls_status_function());
    assert_eq!(
        parse("NEEDS.a.outputs.b && matrix.x").unwrap().contexts(),
        ["matrix".to_owned(), "needs".to_owned()]
            .into_iter()
            .collect()
    );
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
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
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
        Just("'s'".to_owned()),
        "(github|env|matrix|needs|steps|inputs)(\\.[a-z]{1,3}|\\.\\*|\\[0\\]|\\['[a-z]'\\]){0,3}",
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
            inner.prop_map(|a| format!("{a}[0]")),
        ]
    })
}

proptest! {
    #[test]
    fn parsing_never_panics(src in "\\PC{0,64}") {
        let _ = parse(&src);
        let _ = Template::parse(&src);
    }

    #[test]
    fn parsing_near_misses_never_panics(src in "[a-z.()'\\[\\]*!=<>&|, 0-9${}-]{0,40}") {
        let _ = parse(&src);
        let _ = Template::parse(&src);
        let _ = Template::parse(&format!("${{{{ {src} }}}}"));
    }

    #[test]
    fn evaluation_never_panics(src in arb_expr(), github in arb_value(), matrix in arb_value(), needs in arb_value()) {
        let mut ctx = Map::new();
        ctx.insert("github".into(), github);
        ctx.insert("matrix".into(), matrix);
        ctx.insert("needs".into(), needs);
        let scope = Scope { contexts: &ctx, state: JobState::default(), hasher: None };
        let expr = parse(&src).expect("generated expressions parse");
        let _ = evaluate(&expr, &scope);
        let _ = eval_condition(&src, &scope);
        let _ = render_str(&format!("x ${{{{ {src} }}}} y"), &scope);
    }
}
