//! The `${{ }}` expression language of GitHub Actions, as GitHub documents it ("Evaluate
//! expressions in workflows and actions") and as GitHub's runner implements it.
//!
//! [`parse`] turns the text between `${{` and `}}` into an [`Expr`]; [`Template::parse`] splits
//! a string holding any number of `${{ }}` pieces; [`evaluate`], [`render`], [`eval_value`] and
//! [`eval_condition`] give them meaning against a [`Scope`]. Values are `serde_json::Value`s.
//!
//! GitHub's rules kept here: loose equality (operands of different types are compared as
//! numbers), case-insensitive string comparison and property names, `&&`/`||` returning the
//! deciding operand, object filters (`a.*.b`), null for anything missing, numbers printed the
//! way .NET's `G15` format prints a double, and `if:` conditions that are implicitly
//! `success() && (…)` unless they call a status function. Arrays and objects are equal only
//! when they are the same instance: the same value in the scope, or the same value built during
//! one evaluation — two `fromJSON('[]')` are two instances, as in GitHub.
//!
//! Layout: [`lexer`] (tokens, and GitHub's rules on which token may follow which), [`parser`]
//! (the tree, with GitHub's precedence and depth limit), [`value`] (coercions, truthiness,
//! number formatting), [`eval`] (evaluation with borrowed values, so reading `github.event`
//! copies nothing), [`functions`] (the built-in functions), [`template`] (strings with `${{ }}`
//! pieces, `if:` conditions).
//!
//! Not here: which context is available in which key (the caller builds the scope and checks
//! availability), reading files for `hashFiles` (the caller's [`FileHasher`]).

use std::collections::BTreeSet;

use serde_json::Map;
pub use serde_json::Value;

mod eval;
mod functions;
mod lexer;
mod parser;
mod template;
mod value;

pub use template::{Template, eval_condition, eval_value, render, render_str};

/// A parse or evaluation error; `offset` is the byte offset in the source that was parsed (the
/// expression for [`parse`] and [`evaluate`], the whole string for templates).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
    pub offset: usize,
}

impl ExprError {
    /// An error that quotes the expression and the 1-based character position in it, the way
    /// GitHub words them ("… Located at position 5 within expression: …").
    fn located(what: impl std::fmt::Display, src: &str, offset: usize) -> ExprError {
        let offset = offset.min(src.len());
        let position = src.get(..offset).map_or(offset, |s| s.chars().count()) + 1;
        ExprError {
            message: format!("{what}. Located at position {position} within expression: {src}"),
            offset,
        }
    }

    /// The same error with its offset moved by `by` bytes (an expression inside a template).
    fn shifted(mut self, by: usize) -> ExprError {
        self.offset += by;
        self
    }
}

/// The named values an expression may start with (GitHub's contexts).
pub const CONTEXTS: &[&str] = &[
    "github", "env", "vars", "secrets", "inputs", "matrix", "needs", "steps", "job", "jobs",
    "runner", "strategy",
];

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    node: parser::Node,
    /// The text it was parsed from, quoted by evaluation errors.
    src: String,
}

/// Parse the text between `${{` and `}}`.
///
/// Unknown named values and functions, and functions called with the wrong number of
/// arguments, are errors here, as in GitHub. Empty text is an error ("An expression was
/// expected").
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let node = parser::parse(src)?;
    Ok(Expr {
        node,
        src: src.to_owned(),
    })
}

impl Expr {
    /// Whether `success()`, `failure()`, `always()` or `cancelled()` appear anywhere.
    pub fn calls_status_function(&self) -> bool {
        let mut found = false;
        self.node.walk(&mut |n| {
            if let parser::NodeKind::Call(f, _) = &n.kind
                && f.is_status()
            {
                found = true;
            }
        });
        found
    }

    /// The root named-values used, lowercased (e.g. `{"matrix", "needs"}`).
    pub fn contexts(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.node.walk(&mut |n| {
            if let parser::NodeKind::NamedValue(name) = &n.kind {
                out.insert(name.clone());
            }
        });
        out
    }

    /// The text this expression was parsed from.
    pub fn source(&self) -> &str {
        &self.src
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.src)
    }
}

/// Computes `hashFiles(...)`: SHA-256 over the files matching the patterns, `""` when none.
pub trait FileHasher {
    fn hash_files(&self, patterns: &[String]) -> Result<String, String>;
}

/// What the status functions see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobState {
    /// A previous step (or, for a job's `if`, a needed job) failed.
    pub failed: bool,
    /// The run was cancelled.
    pub cancelled: bool,
}

impl JobState {
    /// `success()`: nothing failed and the run goes on.
    pub fn success(self) -> bool {
        !self.failed && !self.cancelled
    }
}

/// Everything an expression may read.
pub struct Scope<'a> {
    /// Context name → value. A context absent here reads as null; names are matched
    /// case-insensitively.
    pub contexts: &'a Map<String, Value>,
    pub state: JobState,
    pub hasher: Option<&'a dyn FileHasher>,
}

/// Evaluate a parsed expression. Errors quote the expression; their offsets are relative to it.
///
/// NaN and the infinities, which a `Value` cannot hold as numbers, come back as the strings
/// `"NaN"`, `"Infinity"` and `"-Infinity"` (what interpolation prints for them); use
/// [`eval_condition`] rather than [`is_truthy`] on the result for `if:`, since NaN is falsy.
pub fn evaluate(expr: &Expr, scope: &Scope) -> Result<Value, ExprError> {
    Ok(eval::Evaluator::new(scope, &expr.src)
        .eval(&expr.node)?
        .into_value())
}

/// GitHub's truthiness: false, 0, -0, NaN, '' and null are falsy; everything else (empty
/// arrays and objects too) is truthy.
pub fn is_truthy(v: &Value) -> bool {
    value::Val::from_ref(v).is_truthy()
}

/// GitHub's string coercion (used by interpolation, `format` and `join`): null is `''`,
/// booleans `true`/`false`, numbers as .NET's `G15` prints them (`3`, `1.5`, `1E+15`), arrays
/// `Array` and objects `Object`.
pub fn to_display_string(v: &Value) -> String {
    value::Val::from_ref(v).to_display().into_owned()
}

#[cfg(test)]
mod tests;
