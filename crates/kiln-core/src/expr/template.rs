//! Strings with `${{ }}` pieces, and the three ways a workflow uses them: interpolation
//! ([`render`]), typed values ([`eval_value`]: a string that is exactly one expression keeps
//! the expression's type) and `if:` conditions ([`eval_condition`]).
//!
//! Splitting follows GitHub's template reader: an expression runs to the first `}}` outside a
//! single-quoted string (so `${{ '}}' }}` is one expression), an unclosed `${{` is an error, and
//! `${{ }}` with nothing inside is an error. A string with text around its expressions is
//! GitHub's `format('text {0} text', …)`: each piece is converted with the to-string rules.
//!
//! Not here: the expression language itself (see [`super::parse`]).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{Expr, ExprError, Scope, evaluate, parse, to_display_string};

/// A string with zero or more `${{ }}` pieces.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    /// The whole string (trimmed) is exactly one `${{ }}`.
    single: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Expr {
        expr: Expr,
        /// Byte offset of the expression's text in the template, for error offsets.
        offset: usize,
    },
}

const OPEN: &str = "${{";

impl Template {
    /// Split `src` into text and `${{ }}` pieces; error offsets are relative to `src`.
    pub fn parse(src: &str) -> Result<Template, ExprError> {
        let mut parts = Vec::new();
        let mut rest = 0;
        while let Some(rel) = src[rest..].find(OPEN) {
            let open = rest + rel;
            if open > rest {
                parts.push(Part::Text(src[rest..open].to_owned()));
            }
            let body_start = open + OPEN.len();
            let Some(close) = find_close(&src[body_start..]).map(|c| body_start + c) else {
                return Err(ExprError {
                    message: format!(
                        "The expression is not closed: '${{{{' at position {} has no matching '}}}}' in: {src}",
                        src[..open].chars().count() + 1
                    ),
                    offset: open,
                });
            };
            let body = &src[body_start..close];
            let trimmed = body.trim_start();
            let offset = body_start + (body.len() - trimmed.len());
            let trimmed = trimmed.trim_end();
            if trimmed.is_empty() {
                return Err(ExprError {
                    message: format!(
                        "An expression was expected inside '${{{{ }}}}' at position {} in: {src}",
                        src[..open].chars().count() + 1
                    ),
                    offset: open,
                });
            }
            let expr = parse(trimmed).map_err(|e| e.shifted(offset))?;
            parts.push(Part::Expr { expr, offset });
            rest = close + 2;
        }
        if rest < src.len() {
            parts.push(Part::Text(src[rest..].to_owned()));
        }
        let exprs = parts
            .iter()
            .filter(|p| matches!(p, Part::Expr { .. }))
            .count();
        let single = exprs == 1
            && parts
                .iter()
                .all(|p| !matches!(p, Part::Text(t) if !t.trim().is_empty()));
        Ok(Template { parts, single })
    }

    /// No `${{ }}` piece.
    pub fn is_literal(&self) -> bool {
        self.exprs().next().is_none()
    }

    /// The whole string (trimmed) is exactly one `${{ }}`.
    pub fn single_expr(&self) -> Option<&Expr> {
        if self.single {
            self.exprs().next()
        } else {
            None
        }
    }

    /// The root named-values used by any piece, lowercased.
    pub fn contexts(&self) -> BTreeSet<String> {
        self.exprs().flat_map(Expr::contexts).collect()
    }

    /// The `${{ }}` pieces in order.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.pieces().map(|(e, _)| e)
    }

    /// The pieces with their offsets in the template.
    fn pieces(&self) -> impl Iterator<Item = (&Expr, usize)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr { expr, offset } => Some((expr, *offset)),
            Part::Text(_) => None,
        })
    }
}

/// The end of an expression body: the first `}}` outside a single-quoted string (`''` inside
/// a string toggles twice, so it needs no special case).
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut in_str = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\'' => in_str = !in_str,
            b'}' if !in_str && b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Evaluate a piece, with error offsets relative to the template.
fn eval_piece(expr: &Expr, offset: usize, scope: &Scope) -> Result<Value, ExprError> {
    evaluate(expr, scope).map_err(|e| e.shifted(offset))
}

/// Interpolate a template with GitHub's to-string rules.
pub fn render(template: &Template, scope: &Scope) -> Result<String, ExprError> {
    let mut out = String::new();
    for p in &template.parts {
        match p {
            Part::Text(t) => out.push_str(t),
            Part::Expr { expr, offset } => {
                out.push_str(&to_display_string(&eval_piece(expr, *offset, scope)?));
            }
        }
    }
    Ok(out)
}

/// Parse and render.
pub fn render_str(src: &str, scope: &Scope) -> Result<String, ExprError> {
    if !src.contains(OPEN) {
        return Ok(src.to_owned());
    }
    render(&Template::parse(src)?, scope)
}

/// Evaluate every string in a value: a string that is exactly one `${{ e }}` becomes e's
/// value (keeping its type: arrays and objects from `fromJSON`, numbers, booleans); other
/// strings are rendered; arrays and objects recurse, and object keys are rendered too.
pub fn eval_value(value: &Value, scope: &Scope) -> Result<Value, ExprError> {
    Ok(match value {
        Value::String(s) => {
            if !s.contains(OPEN) {
                return Ok(value.clone());
            }
            let t = Template::parse(s)?;
            match (t.single, t.pieces().next()) {
                (true, Some((e, offset))) => eval_piece(e, offset, scope)?,
                _ => Value::String(render(&t, scope)?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| eval_value(i, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                out.insert(render_str(k, scope)?, eval_value(v, scope)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// An `if:` condition, as GitHub reads it: the `${{ }}` is optional; an empty condition means
/// `success()`; without a status function the condition means `success() && (…)` (so it is
/// not even evaluated after a failure); the result is the value's truthiness. Text around a
/// `${{ }}` makes the whole condition a string, true whenever it renders non-empty — GitHub's
/// behaviour, and a classic mistake in workflows.
pub fn eval_condition(src: &str, scope: &Scope) -> Result<bool, ExprError> {
    let trimmed = src.trim();
    if trimmed.is_empty() {
        return Ok(scope.state.success());
    }
    if trimmed.contains(OPEN) {
        let t = Template::parse(src)?;
        if let (true, Some((e, offset))) = (t.single, t.pieces().next()) {
            return condition(e, scope).map_err(|err| err.shifted(offset));
        }
        if !t.exprs().any(Expr::calls_status_function) && !scope.state.success() {
            return Ok(false);
        }
        return Ok(!render(&t, scope)?.is_empty());
    }
    let lead = src.len() - src.trim_start().len();
    let expr = parse(trimmed).map_err(|e| e.shifted(lead))?;
    condition(&expr, scope).map_err(|e| e.shifted(lead))
}

fn condition(expr: &Expr, scope: &Scope) -> Result<bool, ExprError> {
    if !expr.calls_status_function() && !scope.state.success() {
        return Ok(false);
    }
    // Truthiness of the evaluation's own value: NaN is falsy there, while the `Value` that
    // `evaluate` returns can only carry it as the string "NaN".
    Ok(super::eval::Evaluator::new(scope, &expr.src)
        .eval(&expr.node)?
        .is_truthy())
}
