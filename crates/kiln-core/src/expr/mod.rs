//! The `${{ }}` expression language of GitHub Actions, as GitHub documents it
//! ("Evaluate expressions in workflows and actions").
//!
//! [`parse`] turns the text between `${{` and `}}` into an [`Expr`]; [`Template::parse`] splits
//! a string holding any number of `${{ }}` pieces; [`evaluate`], [`render`], [`eval_value`] and
//! [`eval_condition`] give them meaning against a [`Scope`]. Values are `serde_json::Value`s.
//!
//! GitHub's rules kept here: loose equality (operands of different types are compared as
//! numbers), case-insensitive string comparison and property names, `&&`/`||` returning the
//! deciding operand, object filters (`a.*.b`), null for anything missing, and `if:`
//! conditions that are implicitly `success() && (…)` unless they call a status function.
//!
//! Not here: which context is available in which key (the caller builds the scope), reading
//! files for `hashFiles` (the caller's [`FileHasher`]).

use std::collections::BTreeSet;

pub use serde_json::Value;
use serde_json::{Map, Number};

/// A parse or evaluation error; `offset` is the byte offset in the expression source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
    pub offset: usize,
}

fn err<T>(message: impl Into<String>, offset: usize) -> Result<T, ExprError> {
    Err(ExprError {
        message: message.into(),
        offset,
    })
}

/// The named values an expression may start with.
pub const CONTEXTS: &[&str] = &[
    "github", "env", "vars", "secrets", "inputs", "matrix", "needs", "steps", "job", "jobs",
    "runner", "strategy",
];

/// Functions with their (min, max) argument counts.
const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("contains", 2, 2),
    ("startswith", 2, 2),
    ("endswith", 2, 2),
    ("format", 1, usize::MAX),
    ("join", 1, 2),
    ("tojson", 1, 1),
    ("fromjson", 1, 1),
    ("hashfiles", 1, usize::MAX),
    ("success", 0, 0),
    ("failure", 0, 0),
    ("always", 0, 0),
    ("cancelled", 0, 0),
];

const STATUS_FUNCTIONS: &[&str] = &["success", "failure", "always", "cancelled"];

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    node: Node,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Literal(Value),
    /// A root named-value, lowercased.
    Context(String),
    Property(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    /// `.*` or `[*]`.
    Filter(Box<Node>),
    Not(Box<Node>),
    Binary(Box<Node>, BinOp, Box<Node>),
    /// A function, lowercased, with its arguments.
    Call(String, Vec<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    And,
    Or,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

// ---------------------------------------------------------------- lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Comma,
    Star,
    Not,
    And,
    Or,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => out.push((Tok::LParen, start)),
            b')' => out.push((Tok::RParen, start)),
            b'[' => out.push((Tok::LBracket, start)),
            b']' => out.push((Tok::RBracket, start)),
            b'.' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                || out.last().is_some_and(|(t, _)| {
                    matches!(t, Tok::Ident(_) | Tok::RParen | Tok::RBracket | Tok::Star)
                }) =>
            {
                out.push((Tok::Dot, start))
            }
            b',' => out.push((Tok::Comma, start)),
            b'*' => out.push((Tok::Star, start)),
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                out.push((Tok::Ne, start));
                i += 1;
            }
            b'!' => out.push((Tok::Not, start)),
            b'=' if bytes.get(i + 1) == Some(&b'=') => {
                out.push((Tok::Eq, start));
                i += 1;
            }
            b'<' if bytes.get(i + 1) == Some(&b'=') => {
                out.push((Tok::Le, start));
                i += 1;
            }
            b'<' => out.push((Tok::Lt, start)),
            b'>' if bytes.get(i + 1) == Some(&b'=') => {
                out.push((Tok::Ge, start));
                i += 1;
            }
            b'>' => out.push((Tok::Gt, start)),
            b'&' if bytes.get(i + 1) == Some(&b'&') => {
                out.push((Tok::And, start));
                i += 1;
            }
            b'|' if bytes.get(i + 1) == Some(&b'|') => {
                out.push((Tok::Or, start));
                i += 1;
            }
            b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match src[i..].find('\'') {
                        None => {
                            return err(
                                format!("unterminated string starting at position {start}"),
                                start,
                            );
                        }
                        Some(rel) => {
                            s.push_str(&src[i..i + rel]);
                            i += rel + 1;
                            if bytes.get(i) == Some(&b'\'') {
                                s.push('\'');
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                out.push((Tok::Str(s), start));
                continue;
            }
            c if c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.' => {
                let mut j = i + 1;
                while j < bytes.len()
                    && (bytes[j].is_ascii_alphanumeric()
                        || bytes[j] == b'.'
                        || ((bytes[j] == b'-' || bytes[j] == b'+')
                            && matches!(bytes[j - 1], b'e' | b'E')
                            && !src[i..j].starts_with("0x")))
                {
                    j += 1;
                }
                let text = &src[i..j];
                match parse_number(text) {
                    Some(n) => out.push((Tok::Num(n), start)),
                    None => return err(format!("unexpected symbol: '{text}'"), start),
                }
                i = j;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i + 1;
                while j < bytes.len()
                    && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'-')
                {
                    j += 1;
                }
                out.push((Tok::Ident(src[i..j].to_owned()), start));
                i = j;
                continue;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return err(format!("unexpected symbol: '{ch}'"), start);
            }
        }
        i += 1;
    }
    Ok(out)
}

fn parse_number(text: &str) -> Option<f64> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let v = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16).ok()? as f64
    } else if body == "Infinity" {
        f64::INFINITY
    } else if body == "NaN" {
        f64::NAN
    } else {
        if body.is_empty()
            || !body
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    Some(if neg { -v } else { v })
}

// ---------------------------------------------------------------- parser

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 50;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.toks
            .get(self.pos)
            .map(|(_, o)| *o)
            .unwrap_or(self.src.len())
    }

    fn fail<T>(&self, what: &str) -> Result<T, ExprError> {
        let at = self.offset();
        let near = match self.toks.get(self.pos) {
            Some(_) => format!("unexpected symbol at position {}", at + 1),
            None => "unexpected end of expression".to_owned(),
        };
        err(
            format!("{near} ({what}) within expression: {}", self.src),
            at,
        )
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let mut left = self.and()?;
        while self.eat(&Tok::Or) {
            let right = self.and()?;
            left = Node::Binary(Box::new(left), BinOp::Or, Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.equality()?;
        while self.eat(&Tok::And) {
            let right = self.equality()?;
            left = Node::Binary(Box::new(left), BinOp::And, Box::new(right));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Node, ExprError> {
        let mut left = self.comparison()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Eq) => BinOp::Eq,
                Some(Tok::Ne) => BinOp::Ne,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.comparison()?;
            left = Node::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn comparison(&mut self) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Lt) => BinOp::Lt,
                Some(Tok::Le) => BinOp::Le,
                Some(Tok::Gt) => BinOp::Gt,
                Some(Tok::Ge) => BinOp::Ge,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.unary()?;
            left = Node::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.eat(&Tok::Not) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return self.fail("expression nested too deeply");
            }
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Node, ExprError> {
        let mut node = self.primary()?;
        loop {
            if self.eat(&Tok::Dot) {
                match self.peek().cloned() {
                    Some(Tok::Ident(name)) => {
                        self.pos += 1;
                        node = Node::Property(Box::new(node), name);
                    }
                    Some(Tok::Star) => {
                        self.pos += 1;
                        node = Node::Filter(Box::new(node));
                    }
                    _ => return self.fail("expected a property name after '.'"),
                }
            } else if self.eat(&Tok::LBracket) {
                if self.eat(&Tok::Star) {
                    if !self.eat(&Tok::RBracket) {
                        return self.fail("expected ']'");
                    }
                    node = Node::Filter(Box::new(node));
                } else {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return self.fail("expression nested too deeply");
                    }
                    let index = self.or()?;
                    self.depth -= 1;
                    if !self.eat(&Tok::RBracket) {
                        return self.fail("expected ']'");
                    }
                    node = Node::Index(Box::new(node), Box::new(index));
                }
            } else {
                return Ok(node);
            }
        }
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let at = self.offset();
        let Some(tok) = self.peek().cloned() else {
            return self.fail("expected a value");
        };
        self.pos += 1;
        match tok {
            Tok::Str(s) => Ok(Node::Literal(Value::String(s))),
            Tok::Num(n) => Ok(Node::Literal(num(n))),
            Tok::LParen => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return self.fail("expression nested too deeply");
                }
                let inner = self.or()?;
                self.depth -= 1;
                if !self.eat(&Tok::RParen) {
                    return self.fail("expected ')'");
                }
                Ok(inner)
            }
            Tok::Ident(name) => {
                let lower = name.to_ascii_lowercase();
                if self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    let Some(&(_, min, max)) = FUNCTIONS.iter().find(|(f, _, _)| *f == lower)
                    else {
                        return err(
                            format!(
                                "Unrecognized function: '{name}'. Located at position {} within expression: {}",
                                at + 1,
                                self.src
                            ),
                            at,
                        );
                    };
                    let mut args = Vec::new();
                    if !self.eat(&Tok::RParen) {
                        loop {
                            self.depth += 1;
                            if self.depth > MAX_DEPTH {
                                return self.fail("expression nested too deeply");
                            }
                            args.push(self.or()?);
                            self.depth -= 1;
                            if self.eat(&Tok::Comma) {
                                continue;
                            }
                            if self.eat(&Tok::RParen) {
                                break;
                            }
                            return self.fail("expected ',' or ')'");
                        }
                    }
                    if args.len() < min || args.len() > max {
                        let want = if min == max {
                            format!("{min}")
                        } else if max == usize::MAX {
                            format!("at least {min}")
                        } else {
                            format!("{min} to {max}")
                        };
                        return err(
                            format!(
                                "function '{name}' takes {want} argument{}, got {} within expression: {}",
                                if want == "1" { "" } else { "s" },
                                args.len(),
                                self.src
                            ),
                            at,
                        );
                    }
                    return Ok(Node::Call(lower, args));
                }
                match lower.as_str() {
                    "true" => Ok(Node::Literal(Value::Bool(true))),
                    "false" => Ok(Node::Literal(Value::Bool(false))),
                    "null" => Ok(Node::Literal(Value::Null)),
                    "nan" if name == "NaN" => Ok(Node::Literal(num(f64::NAN))),
                    "infinity" if name == "Infinity" => Ok(Node::Literal(num(f64::INFINITY))),
                    _ if CONTEXTS.contains(&lower.as_str()) => Ok(Node::Context(lower)),
                    _ => err(
                        format!(
                            "Unrecognized named-value: '{name}'. Located at position {} within expression: {}",
                            at + 1,
                            self.src
                        ),
                        at,
                    ),
                }
            }
            _ => {
                self.pos -= 1;
                self.fail("expected a value")
            }
        }
    }
}

/// Parse the text between `${{` and `}}`.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return err("an expression was expected, the text is empty", 0);
    }
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        depth: 0,
    };
    let node = p.or()?;
    if p.pos < p.toks.len() {
        return p.fail("expected the end of the expression");
    }
    Ok(Expr { node })
}

fn walk(node: &Node, f: &mut dyn FnMut(&Node)) {
    f(node);
    match node {
        Node::Literal(_) | Node::Context(_) => {}
        Node::Property(a, _) | Node::Filter(a) | Node::Not(a) => walk(a, f),
        Node::Index(a, b) | Node::Binary(a, _, b) => {
            walk(a, f);
            walk(b, f);
        }
        Node::Call(_, args) => args.iter().for_each(|a| walk(a, f)),
    }
}

impl Expr {
    /// Whether `success()`, `failure()`, `always()` or `cancelled()` appear anywhere.
    pub fn calls_status_function(&self) -> bool {
        let mut found = false;
        walk(&self.node, &mut |n| {
            if let Node::Call(name, _) = n
                && STATUS_FUNCTIONS.contains(&name.as_str())
            {
                found = true;
            }
        });
        found
    }

    /// The root named-values used, lowercased.
    pub fn contexts(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        walk(&self.node, &mut |n| {
            if let Node::Context(c) = n {
                out.insert(c.clone());
            }
        });
        out
    }
}

// ---------------------------------------------------------------- templates

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
    Expr(Expr),
}

impl Template {
    /// Split `src` into text and `${{ }}` pieces; error offsets are relative to `src`.
    pub fn parse(src: &str) -> Result<Template, ExprError> {
        let mut parts = Vec::new();
        let mut rest = 0;
        while let Some(rel) = src[rest..].find("${{") {
            let open = rest + rel;
            if open > rest {
                parts.push(Part::Text(src[rest..open].to_owned()));
            }
            let body_start = open + 3;
            let Some(close_rel) = find_close(&src[body_start..]) else {
                return err(
                    format!(
                        "the expression starting at position {} is not closed with '}}}}': {}",
                        open + 1,
                        src
                    ),
                    open,
                );
            };
            let body = &src[body_start..body_start + close_rel];
            let expr = parse(body).map_err(|e| ExprError {
                message: e.message,
                offset: body_start + e.offset,
            })?;
            parts.push(Part::Expr(expr));
            rest = body_start + close_rel + 2;
        }
        if rest < src.len() {
            parts.push(Part::Text(src[rest..].to_owned()));
        }
        let trimmed = src.trim();
        let single = parts.iter().filter(|p| matches!(p, Part::Expr(_))).count() == 1
            && trimmed.starts_with("${{")
            && trimmed.ends_with("}}")
            && parts.iter().all(|p| {
                matches!(p, Part::Expr(_)) || matches!(p, Part::Text(t) if t.trim().is_empty())
            });
        Ok(Template { parts, single })
    }

    /// No `${{ }}` piece.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The whole string (trimmed) is exactly one `${{ }}`.
    pub fn single_expr(&self) -> Option<&Expr> {
        if !self.single {
            return None;
        }
        self.exprs().next()
    }

    /// The root named-values used by any piece.
    pub fn contexts(&self) -> BTreeSet<String> {
        self.exprs().flat_map(Expr::contexts).collect()
    }

    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
    }
}

/// The end of an expression body: the first `}}` outside a string literal.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        match b[i] {
            b'\'' => in_str = !in_str,
            b'}' if !in_str && b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

// ---------------------------------------------------------------- evaluation

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

/// Everything an expression may read.
pub struct Scope<'a> {
    /// Context name → value. A context absent here reads as null.
    pub contexts: &'a Map<String, Value>,
    pub state: JobState,
    pub hasher: Option<&'a dyn FileHasher>,
}

fn num(n: f64) -> Value {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Value::Number(Number::from(n as i64))
    } else {
        // serde_json cannot hold NaN or infinities: keep them as GitHub prints them.
        Number::from_f64(n).map(Value::Number).unwrap_or_else(|| {
            Value::String(if n.is_nan() {
                "NaN".to_owned()
            } else if n > 0.0 {
                "Infinity".to_owned()
            } else {
                "-Infinity".to_owned()
            })
        })
    }
}

/// GitHub's truthiness: false, 0, -0, NaN, '' and null are falsy.
pub fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                0.0
            } else {
                parse_number(t).unwrap_or(f64::NAN)
            }
        }
        Value::Array(_) | Value::Object(_) => f64::NAN,
    }
}

fn format_number(n: f64) -> String {
    if n.is_nan() {
        "NaN".to_owned()
    } else if n.is_infinite() {
        if n > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        let s = format!("{n}");
        s
    }
}

/// GitHub's string coercion (used by interpolation, `format` and `join`).
pub fn to_display_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => format_number(f),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(_) => "Array".to_owned(),
        Value::Object(_) => "Object".to_owned(),
    }
}

/// Loose equality as GitHub defines it.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x.to_lowercase() == y.to_lowercase(),
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => {
            // GitHub compares objects and arrays by identity; values here have none, so two
            // structurally identical ones are taken to be the same instance.
            a == b
        }
        _ => {
            let (x, y) = (to_number(a), to_number(b));
            x == y
        }
    }
}

/// `a < b` etc. with GitHub's coercions; NaN compares false.
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => None,
        _ => to_number(a).partial_cmp(&to_number(b)),
    }
}

fn get_property<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    match v {
        Value::Object(m) => m.get(name).or_else(|| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        }),
        _ => None,
    }
}

fn index_value(v: &Value, idx: &Value) -> Value {
    match v {
        Value::Array(items) => {
            let n = to_number(idx);
            if n.is_nan() || n < 0.0 {
                return Value::Null;
            }
            items
                .get(n.floor() as usize)
                .cloned()
                .unwrap_or(Value::Null)
        }
        Value::Object(_) => match idx {
            Value::String(s) => get_property(v, s).cloned().unwrap_or(Value::Null),
            other => get_property(v, &to_display_string(other))
                .cloned()
                .unwrap_or(Value::Null),
        },
        _ => Value::Null,
    }
}

/// Marks a value produced by an object filter, so that a following property access maps
/// over it (GitHub's filtered arrays).
enum Evaluated {
    Plain(Value),
    Filtered(Vec<Value>),
}

impl Evaluated {
    fn into_value(self) -> Value {
        match self {
            Evaluated::Plain(v) => v,
            Evaluated::Filtered(items) => Value::Array(items),
        }
    }
}

struct Eval<'s, 'a> {
    scope: &'s Scope<'a>,
}

impl Eval<'_, '_> {
    fn eval(&self, node: &Node) -> Result<Evaluated, ExprError> {
        Ok(match node {
            Node::Literal(v) => Evaluated::Plain(v.clone()),
            Node::Context(name) => Evaluated::Plain(
                self.scope
                    .contexts
                    .get(name)
                    .or_else(|| {
                        self.scope
                            .contexts
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v)
                    })
                    .cloned()
                    .unwrap_or(Value::Null),
            ),
            Node::Property(base, name) => match self.eval(base)? {
                Evaluated::Plain(v) => {
                    Evaluated::Plain(get_property(&v, name).cloned().unwrap_or(Value::Null))
                }
                Evaluated::Filtered(items) => Evaluated::Filtered(
                    items
                        .iter()
                        .filter_map(|i| get_property(i, name).cloned())
                        .collect(),
                ),
            },
            Node::Index(base, idx) => {
                let idx = self.eval(idx)?.into_value();
                match self.eval(base)? {
                    Evaluated::Plain(v) => Evaluated::Plain(index_value(&v, &idx)),
                    Evaluated::Filtered(items) => Evaluated::Filtered(
                        items
                            .iter()
                            .map(|i| index_value(i, &idx))
                            .filter(|v| !v.is_null())
                            .collect(),
                    ),
                }
            }
            Node::Filter(base) => {
                let items: Vec<Value> = match self.eval(base)? {
                    Evaluated::Plain(Value::Array(a)) => a,
                    Evaluated::Plain(Value::Object(m)) => m.into_iter().map(|(_, v)| v).collect(),
                    Evaluated::Plain(_) => Vec::new(),
                    Evaluated::Filtered(items) => items
                        .into_iter()
                        .flat_map(|i| match i {
                            Value::Array(a) => a,
                            Value::Object(m) => m.into_iter().map(|(_, v)| v).collect(),
                            _ => Vec::new(),
                        })
                        .collect(),
                };
                Evaluated::Filtered(items)
            }
            Node::Not(inner) => {
                Evaluated::Plain(Value::Bool(!is_truthy(&self.eval(inner)?.into_value())))
            }
            Node::Binary(a, op, b) => {
                let left = self.eval(a)?.into_value();
                Evaluated::Plain(match op {
                    BinOp::And => {
                        if is_truthy(&left) {
                            self.eval(b)?.into_value()
                        } else {
                            left
                        }
                    }
                    BinOp::Or => {
                        if is_truthy(&left) {
                            left
                        } else {
                            self.eval(b)?.into_value()
                        }
                    }
                    _ => {
                        let right = self.eval(b)?.into_value();
                        Value::Bool(match op {
                            BinOp::Eq => loose_eq(&left, &right),
                            BinOp::Ne => !loose_eq(&left, &right),
                            BinOp::Lt => compare(&left, &right) == Some(std::cmp::Ordering::Less),
                            BinOp::Le => matches!(
                                compare(&left, &right),
                                Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                            ),
                            BinOp::Gt => {
                                compare(&left, &right) == Some(std::cmp::Ordering::Greater)
                            }
                            BinOp::Ge => matches!(
                                compare(&left, &right),
                                Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                            ),
                            BinOp::And | BinOp::Or => false,
                        })
                    }
                })
            }
            Node::Call(name, args) => Evaluated::Plain(self.call(name, args)?),
        })
    }

    fn arg(&self, args: &[Node], i: usize) -> Result<Value, ExprError> {
        match args.get(i) {
            Some(a) => Ok(self.eval(a)?.into_value()),
            None => Ok(Value::Null),
        }
    }

    fn call(&self, name: &str, args: &[Node]) -> Result<Value, ExprError> {
        let state = self.scope.state;
        Ok(match name {
            "success" => Value::Bool(!state.failed && !state.cancelled),
            "failure" => Value::Bool(state.failed),
            "always" => Value::Bool(true),
            "cancelled" => Value::Bool(state.cancelled),
            "contains" => {
                let hay = self.arg(args, 0)?;
                let needle = self.arg(args, 1)?;
                Value::Bool(match &hay {
                    Value::Array(items) => items.iter().any(|i| loose_eq(i, &needle)),
                    other => to_display_string(other)
                        .to_lowercase()
                        .contains(&to_display_string(&needle).to_lowercase()),
                })
            }
            "startswith" => {
                let a = to_display_string(&self.arg(args, 0)?).to_lowercase();
                let b = to_display_string(&self.arg(args, 1)?).to_lowercase();
                Value::Bool(a.starts_with(&b))
            }
            "endswith" => {
                let a = to_display_string(&self.arg(args, 0)?).to_lowercase();
                let b = to_display_string(&self.arg(args, 1)?).to_lowercase();
                Value::Bool(a.ends_with(&b))
            }
            "format" => {
                let fmt = to_display_string(&self.arg(args, 0)?);
                let mut values = Vec::new();
                for i in 1..args.len() {
                    values.push(to_display_string(&self.arg(args, i)?));
                }
                Value::String(format_string(&fmt, &values)?)
            }
            "join" => {
                let sep = if args.len() > 1 {
                    to_display_string(&self.arg(args, 1)?)
                } else {
                    ",".to_owned()
                };
                match self.arg(args, 0)? {
                    Value::Array(items) => Value::String(
                        items
                            .iter()
                            .map(to_display_string)
                            .collect::<Vec<_>>()
                            .join(&sep),
                    ),
                    other => Value::String(to_display_string(&other)),
                }
            }
            "tojson" => {
                let v = self.arg(args, 0)?;
                Value::String(serde_json::to_string_pretty(&v).unwrap_or_default())
            }
            "fromjson" => {
                let text = to_display_string(&self.arg(args, 0)?);
                match serde_json::from_str::<Value>(text.trim()) {
                    Ok(v) => v,
                    Err(e) => {
                        let shown: String = text.chars().take(80).collect();
                        return err(format!("fromJSON: '{shown}' is not valid JSON: {e}"), 0);
                    }
                }
            }
            "hashfiles" => {
                let mut patterns = Vec::new();
                for i in 0..args.len() {
                    patterns.push(to_display_string(&self.arg(args, i)?));
                }
                let Some(h) = self.scope.hasher else {
                    return err("hashFiles is not available here (no workspace)", 0);
                };
                match h.hash_files(&patterns) {
                    Ok(s) => Value::String(s),
                    Err(e) => {
                        return err(format!("hashFiles({}) failed: {e}", patterns.join(", ")), 0);
                    }
                }
            }
            other => return err(format!("unknown function '{other}'"), 0),
        })
    }
}

/// `format('{0} {1}', …)` with `{{`/`}}` escapes.
fn format_string(fmt: &str, values: &[String]) -> Result<String, ExprError> {
    let mut out = String::new();
    let chars: Vec<char> = fmt.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            if chars.get(i + 1) == Some(&'{') {
                out.push('{');
                i += 2;
                continue;
            }
            let Some(end) = chars[i + 1..].iter().position(|c| *c == '}') else {
                return err(format!("format: unclosed '{{' in '{fmt}'"), 0);
            };
            let idx: String = chars[i + 1..i + 1 + end].iter().collect();
            let Ok(n) = idx.parse::<usize>() else {
                return err(
                    format!("format: '{{{idx}}}' is not an argument index in '{fmt}'"),
                    0,
                );
            };
            let Some(v) = values.get(n) else {
                return err(
                    format!(
                        "format: '{{{n}}}' has no argument ({} given) in '{fmt}'",
                        values.len()
                    ),
                    0,
                );
            };
            out.push_str(v);
            i += end + 2;
        } else if c == '}' {
            if chars.get(i + 1) == Some(&'}') {
                out.push('}');
                i += 2;
                continue;
            }
            return err(format!("format: unmatched '}}' in '{fmt}'"), 0);
        } else {
            out.push(c);
            i += 1;
        }
    }
    Ok(out)
}

/// Evaluate a parsed expression.
pub fn evaluate(expr: &Expr, scope: &Scope) -> Result<Value, ExprError> {
    Ok(Eval { scope }.eval(&expr.node)?.into_value())
}

/// Interpolate a template with GitHub's to-string rules.
pub fn render(template: &Template, scope: &Scope) -> Result<String, ExprError> {
    let mut out = String::new();
    for p in &template.parts {
        match p {
            Part::Text(t) => out.push_str(t),
            Part::Expr(e) => out.push_str(&to_display_string(&evaluate(e, scope)?)),
        }
    }
    Ok(out)
}

/// Parse and render.
pub fn render_str(src: &str, scope: &Scope) -> Result<String, ExprError> {
    if !src.contains("${{") {
        return Ok(src.to_owned());
    }
    render(&Template::parse(src)?, scope)
}

/// Evaluate every string in a value: a string that is exactly one `${{ e }}` becomes e's
/// value (keeping its type), other strings are rendered; arrays and objects recurse.
pub fn eval_value(value: &Value, scope: &Scope) -> Result<Value, ExprError> {
    Ok(match value {
        Value::String(s) => {
            if !s.contains("${{") {
                return Ok(value.clone());
            }
            let t = Template::parse(s)?;
            match t.single_expr() {
                Some(e) => evaluate(e, scope)?,
                None => Value::String(render(&t, scope)?),
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

/// An `if:` condition: `${{ }}` optional; without a status function it means
/// `success() && (…)`.
pub fn eval_condition(src: &str, scope: &Scope) -> Result<bool, ExprError> {
    let trimmed = src.trim();
    let expr = match Template::parse(trimmed) {
        Ok(t) if t.single_expr().is_some() => t.single_expr().cloned(),
        Ok(t) if !t.is_literal() => {
            // Text around `${{ }}`: GitHub renders it to a string, which is truthy if not empty.
            let rendered = render(&t, scope)?;
            let ok = !rendered.is_empty();
            let status_ok = t.exprs().any(Expr::calls_status_function)
                || (!scope.state.failed && !scope.state.cancelled);
            return Ok(ok && status_ok);
        }
        _ => None,
    };
    let expr = match expr {
        Some(e) => e,
        None => parse(trimmed)?,
    };
    let value = evaluate(&expr, scope)?;
    if expr.calls_status_function() {
        Ok(is_truthy(&value))
    } else {
        Ok(!scope.state.failed && !scope.state.cancelled && is_truthy(&value))
    }
}

#[cfg(test)]
mod tests;
