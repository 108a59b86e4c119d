//! The built-in functions: `contains`, `startsWith`, `endsWith`, `format`, `join`, `toJSON`,
//! `fromJSON`, `hashFiles`, `case`, and the status functions `success`, `failure`, `always`,
//! `cancelled`.
//!
//! Each follows the runner's implementation, including what it does with odd arguments
//! (`contains` of an object is false, `join` of an object is `''`, `format` evaluates only the
//! arguments its format string uses, `toJSON` prints numbers the way interpolation does).
//!
//! Not here: where a function may be used (GitHub allows the status functions and `hashFiles`
//! only in some keys; the workflow checker decides that), or hashing files (the caller's
//! [`super::FileHasher`]).

use std::fmt::Write as _;

use serde_json::Value;

use super::ExprError;
use super::eval::Evaluator;
use super::parser::Node;
use super::value::{Kind, Val, format_number, loose_eq, upper};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Func {
    Contains,
    StartsWith,
    EndsWith,
    Format,
    Join,
    ToJson,
    FromJson,
    HashFiles,
    Case,
    Success,
    Failure,
    Always,
    Cancelled,
}

impl Func {
    pub(super) fn is_status(self) -> bool {
        matches!(
            self,
            Func::Success | Func::Failure | Func::Always | Func::Cancelled
        )
    }
}

/// A function's name as documented and its argument count bounds.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FuncInfo {
    pub(super) func: Func,
    pub(super) name: &'static str,
    pub(super) min: usize,
    pub(super) max: usize,
}

/// GitHub caps variadic functions at 255 arguments.
const MANY: usize = u8::MAX as usize;

const FUNCTIONS: &[FuncInfo] = &[
    FuncInfo {
        func: Func::Contains,
        name: "contains",
        min: 2,
        max: 2,
    },
    FuncInfo {
        func: Func::StartsWith,
        name: "startsWith",
        min: 2,
        max: 2,
    },
    FuncInfo {
        func: Func::EndsWith,
        name: "endsWith",
        min: 2,
        max: 2,
    },
    FuncInfo {
        func: Func::Format,
        name: "format",
        min: 1,
        max: MANY,
    },
    FuncInfo {
        func: Func::Join,
        name: "join",
        min: 1,
        max: 2,
    },
    FuncInfo {
        func: Func::ToJson,
        name: "toJSON",
        min: 1,
        max: 1,
    },
    FuncInfo {
        func: Func::FromJson,
        name: "fromJSON",
        min: 1,
        max: 1,
    },
    FuncInfo {
        func: Func::HashFiles,
        name: "hashFiles",
        min: 1,
        max: MANY,
    },
    FuncInfo {
        func: Func::Case,
        name: "case",
        min: 3,
        max: MANY,
    },
    FuncInfo {
        func: Func::Success,
        name: "success",
        min: 0,
        max: 0,
    },
    FuncInfo {
        func: Func::Failure,
        name: "failure",
        min: 0,
        max: 0,
    },
    FuncInfo {
        func: Func::Always,
        name: "always",
        min: 0,
        max: 0,
    },
    FuncInfo {
        func: Func::Cancelled,
        name: "cancelled",
        min: 0,
        max: 0,
    },
];

impl FuncInfo {
    /// Function names are case-insensitive.
    pub(super) fn lookup(name: &str) -> Option<&'static FuncInfo> {
        FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

impl<'v> Evaluator<'v> {
    pub(super) fn call(
        &self,
        node: &'v Node,
        func: Func,
        args: &'v [Node],
    ) -> Result<Val<'v>, ExprError> {
        let arg = |i: usize| match args.get(i) {
            Some(a) => self.eval(a),
            None => Ok(Val::Null),
        };
        Ok(match func {
            Func::Success => Val::Bool(self.state.success()),
            Func::Failure => Val::Bool(self.state.failed),
            Func::Always => Val::Bool(true),
            Func::Cancelled => Val::Bool(self.state.cancelled),
            Func::Contains => {
                let hay = arg(0)?;
                if hay.is_primitive() {
                    let needle = arg(1)?;
                    Val::Bool(
                        needle.is_primitive()
                            && upper(&hay.to_display()).contains(&upper(&needle.to_display())),
                    )
                } else if hay.kind() == Kind::Array {
                    let items = hay.members().unwrap_or_default();
                    if items.is_empty() {
                        Val::Bool(false)
                    } else {
                        let needle = arg(1)?;
                        Val::Bool(items.iter().any(|item| loose_eq(&needle, item)))
                    }
                } else {
                    Val::Bool(false)
                }
            }
            Func::StartsWith | Func::EndsWith => {
                let left = arg(0)?;
                if !left.is_primitive() {
                    return Ok(Val::Bool(false));
                }
                let right = arg(1)?;
                if !right.is_primitive() {
                    return Ok(Val::Bool(false));
                }
                let (l, r) = (upper(&left.to_display()), upper(&right.to_display()));
                Val::Bool(if func == Func::StartsWith {
                    l.starts_with(&r)
                } else {
                    l.ends_with(&r)
                })
            }
            Func::Format => {
                let fmt = arg(0)?.to_display().into_owned();
                let segments = parse_format(&fmt).map_err(|what| self.error(node, what))?;
                let supplied = args.len() - 1;
                if let Some(i) = segments.iter().find_map(|s| match s {
                    Segment::Arg(i) if *i >= supplied => Some(*i),
                    _ => None,
                }) {
                    return Err(self.error(
                        node,
                        format_args!(
                            "format: the format string references more arguments than were supplied: '{fmt}' uses {{{i}}}, {supplied} argument(s) given"
                        ),
                    ));
                }
                let mut cache: Vec<Option<String>> = vec![None; args.len().saturating_sub(1)];
                let mut out = String::new();
                for segment in segments {
                    match segment {
                        Segment::Text(t) => out.push_str(&t),
                        Segment::Arg(i) => {
                            let Some(slot) = cache.get_mut(i) else {
                                continue; // checked above
                            };
                            if slot.is_none() {
                                *slot = Some(arg(i + 1)?.to_display().into_owned());
                            }
                            out.push_str(slot.as_deref().unwrap_or_default());
                        }
                    }
                }
                Val::Str(out.into())
            }
            Func::Join => {
                let items = arg(0)?;
                match items.kind() {
                    Kind::Array => {
                        let items = items.members().unwrap_or_default();
                        let mut sep = ",".to_owned();
                        if items.len() > 1 && args.len() > 1 {
                            let s = arg(1)?;
                            if s.is_primitive() {
                                sep = s.to_display().into_owned();
                            }
                        }
                        let parts: Vec<String> =
                            items.iter().map(|i| i.to_display().into_owned()).collect();
                        Val::Str(parts.join(&sep).into())
                    }
                    Kind::Object => Val::Str("".into()),
                    _ => Val::Str(items.to_display().into_owned().into()),
                }
            }
            Func::ToJson => {
                let mut out = String::new();
                write_json(&arg(0)?, 0, &mut out);
                Val::Str(out.into())
            }
            Func::FromJson => {
                let text = arg(0)?.to_display().into_owned();
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) => Val::from_owned(v),
                    Err(e) => {
                        let shown: String = text.chars().take(100).collect();
                        let more = if shown.len() < text.len() { "…" } else { "" };
                        return Err(self.error(
                            node,
                            format_args!("fromJSON: '{shown}{more}' is not valid JSON ({e})"),
                        ));
                    }
                }
            }
            Func::HashFiles => {
                let mut patterns = Vec::with_capacity(args.len());
                for i in 0..args.len() {
                    patterns.push(arg(i)?.to_display().into_owned());
                }
                let Some(hasher) = self.hasher else {
                    return Err(self.error(
                        node,
                        "hashFiles is not available here: there is no workspace to hash files in",
                    ));
                };
                match hasher.hash_files(&patterns) {
                    Ok(hash) => Val::Str(hash.into()),
                    Err(e) => {
                        return Err(self.error(
                            node,
                            format_args!("hashFiles('{}') failed: {e}", patterns.join("', '")),
                        ));
                    }
                }
            }
            Func::Case => {
                // case(pred1, value1, pred2, value2, …, default); the parser ensures an odd
                // count of at least three.
                let mut i = 0;
                while i + 1 < args.len() {
                    match arg(i)? {
                        Val::Bool(true) => return arg(i + 1),
                        Val::Bool(false) => {}
                        other => {
                            return Err(self.error(
                                &args[i],
                                format_args!(
                                    "case: predicate {} must evaluate to a boolean, not {}",
                                    i / 2 + 1,
                                    kind_name(other.kind())
                                ),
                            ));
                        }
                    }
                    i += 2;
                }
                arg(args.len().saturating_sub(1))?
            }
        })
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Null => "null",
        Kind::Bool => "a boolean",
        Kind::Number => "a number",
        Kind::String => "a string",
        Kind::Array => "an array",
        Kind::Object => "an object",
    }
}

// ------------------------------------------------------------------ format

enum Segment {
    Text(String),
    Arg(usize),
}

/// Split a `format` string into text and `{N}` references (`{{` and `}}` are literal braces;
/// N is 0–255). The whole string is checked before any argument is evaluated, as in GitHub.
fn parse_format(fmt: &str) -> Result<Vec<Segment>, String> {
    let invalid = || format!("format: the format string is invalid: '{fmt}'");
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = fmt;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let brace = rest.as_bytes()[i];
        let after = &rest[i + 1..];
        if brace == b'{' && after.starts_with('{') {
            text.push('{');
            rest = &after[1..];
        } else if brace == b'}' && after.starts_with('}') {
            text.push('}');
            rest = &after[1..];
        } else if brace == b'}' {
            return Err(invalid());
        } else {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let index = after[..digits].parse::<u8>().map_err(|_| invalid())?;
            match after.as_bytes().get(digits) {
                Some(b'}') => {}
                Some(b':') => {
                    // GitHub parses `{0:spec}` and then rejects every specifier.
                    let spec_end = after[digits..].find('}').ok_or_else(invalid)?;
                    return Err(format!(
                        "format: the format specifiers '{}' are not supported: '{fmt}'",
                        &after[digits + 1..digits + spec_end]
                    ));
                }
                _ => return Err(invalid()),
            }
            if !text.is_empty() {
                out.push(Segment::Text(std::mem::take(&mut text)));
            }
            out.push(Segment::Arg(usize::from(index)));
            rest = &after[digits + 1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Segment::Text(text));
    }
    Ok(out)
}

// ------------------------------------------------------------------ toJSON

/// Pretty-printed JSON as GitHub's `toJSON` writes it: two-space indentation, `"key": value`,
/// `[]`/`{}` for empty collections, numbers in GitHub's number format.
fn write_json(v: &Val<'_>, indent: usize, out: &mut String) {
    match v {
        Val::Null => out.push_str("null"),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Num(n) => out.push_str(&format_number(*n)),
        Val::Str(s) => write_json_string(s, out),
        Val::Ref(v) => write_json_value(v, indent, out),
        Val::Own(v) => write_json_value(v, indent, out),
        Val::Filtered(items) => write_array(items.iter(), indent, out, write_json),
    }
}

fn write_json_value(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Array(items) => write_array(items.iter(), indent, out, write_json_value),
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(indent + 1, out);
                write_json_string(k, out);
                out.push_str(": ");
                write_json_value(v, indent + 1, out);
            }
            newline(indent, out);
            out.push('}');
        }
        scalar => write_json(&Val::from_ref(scalar), indent, out),
    }
}

fn write_array<'i, T: 'i>(
    items: impl ExactSizeIterator<Item = &'i T>,
    indent: usize,
    out: &mut String,
    write: fn(&T, usize, &mut String),
) {
    if items.len() == 0 {
        out.push_str("[]");
        return;
    }
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        newline(indent + 1, out);
        write(item, indent + 1, out);
    }
    newline(indent, out);
    out.push(']');
}

fn newline(indent: usize, out: &mut String) {
    out.push('\n');
    for _ in 0..indent {
        out.push_str("  ");
    }
}

/// A JSON string literal, escaped as Newtonsoft.Json (GitHub's serializer) escapes it.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
