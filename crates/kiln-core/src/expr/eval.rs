//! Evaluation of an expression tree against a scope.
//!
//! Follows the runner node by node: `&&`/`||` stop at the deciding operand and return it;
//! comparisons evaluate both sides; an index on something that is not an array or object is
//! null (or an empty filtered array for `*`) without evaluating the index; an index on a
//! filtered array maps over its items, dropping the ones that have no such key or item.
//! Recursion is bounded by the parser's depth limit.
//!
//! Not here: the built-in functions (see [`super::functions`]) and coercions (see
//! [`super::value`]).

use std::borrow::Cow;
use std::rc::Rc;

use serde_json::{Map, Value};

use super::parser::{CmpOp, Node, NodeKind};
use super::value::{Kind, Val, eq_ignore_case, loose_cmp, loose_eq};
use super::{ExprError, FileHasher, JobState, Scope};

pub(super) struct Evaluator<'v> {
    contexts: &'v Map<String, Value>,
    pub(super) state: JobState,
    pub(super) hasher: Option<&'v dyn FileHasher>,
    /// The expression's text, quoted by errors.
    src: &'v str,
}

impl<'v> Evaluator<'v> {
    pub(super) fn new(scope: &Scope<'v>, src: &'v str) -> Evaluator<'v> {
        Evaluator {
            contexts: scope.contexts,
            state: scope.state,
            hasher: scope.hasher,
            src,
        }
    }

    /// An evaluation error at `node`, quoting the expression.
    pub(super) fn error(&self, node: &Node, what: impl std::fmt::Display) -> ExprError {
        ExprError::located(what, self.src, node.offset)
    }

    pub(super) fn eval(&self, node: &'v Node) -> Result<Val<'v>, ExprError> {
        Ok(match &node.kind {
            NodeKind::Null => Val::Null,
            NodeKind::Bool(b) => Val::Bool(*b),
            NodeKind::Number(n) => Val::Num(*n),
            NodeKind::String(s) => Val::Str(Cow::Borrowed(s)),
            // Outside an index a `*` is just the text "*", as in the runner.
            NodeKind::Wildcard => Val::Str(Cow::Borrowed("*")),
            NodeKind::NamedValue(name) => self.context(name),
            NodeKind::Index(base, index) => self.index(base, index)?,
            NodeKind::Not(inner) => Val::Bool(!self.eval(inner)?.is_truthy()),
            NodeKind::And(items) => {
                let mut last = Val::Null;
                for item in items {
                    last = self.eval(item)?;
                    if !last.is_truthy() {
                        break;
                    }
                }
                last
            }
            NodeKind::Or(items) => {
                let mut last = Val::Null;
                for item in items {
                    last = self.eval(item)?;
                    if last.is_truthy() {
                        break;
                    }
                }
                last
            }
            NodeKind::Compare(op, a, b) => {
                let (l, r) = (self.eval(a)?, self.eval(b)?);
                let ordering = || loose_cmp(&l, &r);
                Val::Bool(match op {
                    CmpOp::Eq => loose_eq(&l, &r),
                    CmpOp::Ne => !loose_eq(&l, &r),
                    CmpOp::Lt => ordering().is_some_and(|o| o.is_lt()),
                    CmpOp::Gt => ordering().is_some_and(|o| o.is_gt()),
                    // GitHub defines these as `==` or the strict comparison.
                    CmpOp::Le => loose_eq(&l, &r) || ordering().is_some_and(|o| o.is_lt()),
                    CmpOp::Ge => loose_eq(&l, &r) || ordering().is_some_and(|o| o.is_gt()),
                })
            }
            NodeKind::Call(func, args) => self.call(node, *func, args)?,
        })
    }

    /// A root context; absent ones read as null. The scope's keys are matched
    /// case-insensitively, like every other property name.
    fn context(&self, name: &str) -> Val<'v> {
        let contexts: &'v Map<String, Value> = self.contexts;
        contexts
            .get(name)
            .or_else(|| {
                contexts
                    .iter()
                    .find(|(k, _)| eq_ignore_case(k, name))
                    .map(|(_, v)| v)
            })
            .map_or(Val::Null, Val::from_ref)
    }

    fn index(&self, base: &'v Node, index: &'v Node) -> Result<Val<'v>, ExprError> {
        let left = self.eval(base)?;
        let wildcard = matches!(index.kind, NodeKind::Wildcard);
        if left.is_primitive() {
            return Ok(if wildcard {
                Val::Filtered(Rc::new(Vec::new()))
            } else {
                Val::Null
            });
        }
        let key = if wildcard {
            Key::Wildcard
        } else {
            Key::from(&self.eval(index)?)
        };
        if let Val::Filtered(items) = &left {
            let mut out = Vec::new();
            for item in items.iter() {
                match (&key, item.kind()) {
                    (Key::Wildcard, Kind::Array | Kind::Object) => {
                        out.extend(item.members().unwrap_or_default());
                    }
                    (Key::Value { string, .. }, Kind::Object) => {
                        out.extend(string.as_deref().and_then(|k| item.get(k)));
                    }
                    (Key::Value { integer, .. }, Kind::Array) => {
                        out.extend(integer.and_then(|i| item.item(i)));
                    }
                    _ => {}
                }
            }
            return Ok(Val::Filtered(Rc::new(out)));
        }
        Ok(match (&key, left.kind()) {
            (Key::Wildcard, _) => Val::Filtered(Rc::new(left.members().unwrap_or_default())),
            (Key::Value { string, .. }, Kind::Object) => string
                .as_deref()
                .and_then(|k| left.get(k))
                .unwrap_or(Val::Null),
            (Key::Value { integer, .. }, Kind::Array) => {
                integer.and_then(|i| left.item(i)).unwrap_or(Val::Null)
            }
            _ => Val::Null,
        })
    }
}

/// What an index selects: everything, or a key (objects) and an item number (arrays).
enum Key {
    Wildcard,
    Value {
        /// A primitive index as a string; arrays and objects select no key.
        string: Option<String>,
        /// A number (or a string, bool or null read as one), floored; none when negative,
        /// NaN or beyond GitHub's 32-bit range.
        integer: Option<usize>,
    },
}

impl Key {
    fn from(v: &Val<'_>) -> Key {
        let string = v.is_primitive().then(|| v.to_display().into_owned());
        let n = v.to_number();
        let integer = if n.is_nan() || n < 0.0 || n.floor() > f64::from(i32::MAX) {
            None
        } else {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "checked above to be in 0..=i32::MAX"
            )]
            let i = n.floor() as usize;
            Some(i)
        };
        Key::Value { string, integer }
    }
}
