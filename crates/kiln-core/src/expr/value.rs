//! Values during evaluation, and GitHub's coercions between them: truthiness, to-number,
//! to-string, loose equality and ordering.
//!
//! A [`Val`] borrows arrays, objects and strings from the scope instead of copying them, which
//! also gives arrays and objects an identity: GitHub compares them by reference, and two
//! borrows of the same scope value are the same instance. Numbers are `f64` throughout (as in
//! the runner), so NaN and the infinities exist inside an evaluation; only at the edge, when a
//! result becomes a `serde_json::Value`, do they turn into the strings GitHub prints for them.
//!
//! Not here: evaluation of the tree (see [`super::eval`]).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;

use serde_json::{Map, Number, Value};

#[derive(Clone, Debug)]
pub(super) enum Val<'v> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'v, str>),
    /// An array or object borrowed from the scope (never a scalar).
    Ref(&'v Value),
    /// An array or object made during this evaluation (`fromJSON`), shared by reference.
    Own(Rc<Value>),
    /// The array an object filter (`*`) produces; indexing it maps over its items.
    Filtered(Rc<Vec<Val<'v>>>),
}

/// The kinds GitHub's coercion rules distinguish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl<'v> Val<'v> {
    pub(super) fn from_ref(v: &'v Value) -> Val<'v> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(number_to_f64(n)),
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => Val::Ref(v),
        }
    }

    pub(super) fn from_owned(v: Value) -> Val<'v> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => Val::Num(number_to_f64(&n)),
            Value::String(s) => Val::Str(Cow::Owned(s)),
            Value::Array(_) | Value::Object(_) => Val::Own(Rc::new(v)),
        }
    }

    pub(super) fn kind(&self) -> Kind {
        match self {
            Val::Null => Kind::Null,
            Val::Bool(_) => Kind::Bool,
            Val::Num(_) => Kind::Number,
            Val::Str(_) => Kind::String,
            Val::Ref(v) => json_kind(v),
            Val::Own(v) => json_kind(v),
            Val::Filtered(_) => Kind::Array,
        }
    }

    pub(super) fn is_primitive(&self) -> bool {
        !matches!(self.kind(), Kind::Array | Kind::Object)
    }

    pub(super) fn is_truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::Ref(_) | Val::Own(_) | Val::Filtered(_) => true,
        }
    }

    /// JavaScript's `Number()` for primitives, NaN for arrays and objects.
    pub(super) fn to_number(&self) -> f64 {
        match self {
            Val::Null => 0.0,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Num(n) => *n,
            Val::Str(s) => parse_number(s),
            Val::Ref(_) | Val::Own(_) | Val::Filtered(_) => f64::NAN,
        }
    }

    /// GitHub's string coercion.
    pub(super) fn to_display(&self) -> Cow<'_, str> {
        match self {
            Val::Null => Cow::Borrowed(""),
            Val::Bool(true) => Cow::Borrowed("true"),
            Val::Bool(false) => Cow::Borrowed("false"),
            Val::Num(n) => Cow::Owned(format_number(*n)),
            Val::Str(s) => Cow::Borrowed(s),
            _ => Cow::Borrowed(match self.kind() {
                Kind::Array => "Array",
                _ => "Object",
            }),
        }
    }

    /// The value of key `name` (case-insensitive) if this is an object holding it: borrowed
    /// when the object is, copied out of it when it was built during evaluation.
    pub(super) fn get(&self, name: &str) -> Option<Val<'v>> {
        match self {
            Val::Ref(r) => {
                let r: &'v Value = r;
                r.as_object()
                    .and_then(|m| lookup(m, name))
                    .map(Val::from_ref)
            }
            Val::Own(rc) => rc
                .as_object()
                .and_then(|m| lookup(m, name))
                .map(|v| Val::from_owned(v.clone())),
            _ => None,
        }
    }

    /// Item `i` if this is an array that long.
    pub(super) fn item(&self, i: usize) -> Option<Val<'v>> {
        match self {
            Val::Ref(r) => {
                let r: &'v Value = r;
                r.as_array().and_then(|a| a.get(i)).map(Val::from_ref)
            }
            Val::Own(rc) => rc
                .as_array()
                .and_then(|a| a.get(i))
                .map(|v| Val::from_owned(v.clone())),
            Val::Filtered(items) => items.get(i).cloned(),
            _ => None,
        }
    }

    /// The items of an array or the values of an object, in order; `None` for primitives.
    pub(super) fn members(&self) -> Option<Vec<Val<'v>>> {
        match self {
            Val::Ref(r) => {
                let r: &'v Value = r;
                match r {
                    Value::Array(a) => Some(a.iter().map(Val::from_ref).collect()),
                    Value::Object(m) => Some(m.values().map(Val::from_ref).collect()),
                    _ => None,
                }
            }
            Val::Own(rc) => match &**rc {
                Value::Array(a) => Some(a.iter().cloned().map(Val::from_owned).collect()),
                Value::Object(m) => Some(m.values().cloned().map(Val::from_owned).collect()),
                _ => None,
            },
            Val::Filtered(items) => Some(items.to_vec()),
            _ => None,
        }
    }

    /// The `serde_json::Value` this result stands for. NaN and the infinities, which JSON
    /// cannot hold, become the strings GitHub prints for them.
    pub(super) fn into_value(self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Num(n) => number_value(n),
            Val::Str(s) => Value::String(s.into_owned()),
            Val::Ref(v) => v.clone(),
            Val::Own(rc) => Rc::try_unwrap(rc).unwrap_or_else(|rc| (*rc).clone()),
            Val::Filtered(items) => Value::Array(
                Rc::try_unwrap(items)
                    .unwrap_or_else(|rc| (*rc).clone())
                    .into_iter()
                    .map(Val::into_value)
                    .collect(),
            ),
        }
    }

    /// Whether two arrays or objects are the same instance.
    fn same_instance(&self, other: &Val<'_>) -> bool {
        match (self, other) {
            (Val::Ref(a), Val::Ref(b)) => std::ptr::eq(*a, *b),
            (Val::Own(a), Val::Own(b)) => Rc::ptr_eq(a, b),
            (Val::Filtered(a), Val::Filtered(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }
}

fn json_kind(v: &Value) -> Kind {
    match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::Array,
        Value::Object(_) => Kind::Object,
    }
}

fn number_to_f64(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// Object keys are case-insensitive in GitHub; an exact match wins when both exist.
fn lookup<'m>(m: &'m Map<String, Value>, name: &str) -> Option<&'m Value> {
    m.get(name).or_else(|| {
        m.iter()
            .find(|(k, _)| eq_ignore_case(k, name))
            .map(|(_, v)| v)
    })
}

/// A number as a JSON value: integral values as integers (so `3` stays `3`, not `3.0`).
pub(super) fn number_value(n: f64) -> Value {
    // Below 2^53 every integral double is exactly an i64.
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "integral and within ±2^53, so exact"
        )]
        let i = n as i64;
        return Value::Number(Number::from(i));
    }
    match Number::from_f64(n) {
        Some(num) => Value::Number(num),
        None => Value::String(format_number(n)),
    }
}

// ------------------------------------------------------------------ strings

/// .NET's ordinal ignore-case folding: each character to its simple uppercase form.
fn fold(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

pub(super) fn upper(s: &str) -> String {
    s.chars().map(fold).collect()
}

pub(super) fn eq_ignore_case(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars().map(fold).eq(b.chars().map(fold))
}

fn cmp_ignore_case(a: &str, b: &str) -> Ordering {
    a.chars().map(fold).cmp(b.chars().map(fold))
}

// ------------------------------------------------------------------ comparison

/// Bring two operands to a common kind as GitHub does: number and string compare as numbers;
/// a boolean or null on either side becomes a number and the rule repeats. Arrays and objects
/// are never converted.
fn coerce<'a, 'v>(left: &'a Val<'v>, right: &'a Val<'v>) -> (Cow<'a, Val<'v>>, Cow<'a, Val<'v>>) {
    let (mut l, mut r) = (Cow::Borrowed(left), Cow::Borrowed(right));
    // At most two rounds: each converts one side to a number.
    for _ in 0..3 {
        let (lk, rk) = (l.kind(), r.kind());
        if lk == rk {
            break;
        }
        match (lk, rk) {
            (Kind::Number, Kind::String) => r = Cow::Owned(Val::Num(r.to_number())),
            (Kind::String, Kind::Number) => l = Cow::Owned(Val::Num(l.to_number())),
            (Kind::Bool | Kind::Null, _) => l = Cow::Owned(Val::Num(l.to_number())),
            (_, Kind::Bool | Kind::Null) => r = Cow::Owned(Val::Num(r.to_number())),
            _ => break,
        }
    }
    (l, r)
}

/// GitHub's `==`: loose, case-insensitive for strings, NaN equal to nothing, arrays and
/// objects equal only to themselves.
pub(super) fn loose_eq(left: &Val<'_>, right: &Val<'_>) -> bool {
    let (l, r) = coerce(left, right);
    if l.kind() != r.kind() {
        return false;
    }
    match (&*l, &*r) {
        (Val::Null, Val::Null) => true,
        (Val::Num(a), Val::Num(b)) => a == b,
        (Val::Str(a), Val::Str(b)) => eq_ignore_case(a, b),
        (Val::Bool(a), Val::Bool(b)) => a == b,
        (a, b) => a.same_instance(b),
    }
}

/// GitHub's `<` and `>`: the order after coercion, or none (every comparison false) for NaN,
/// arrays, objects and mixed kinds.
pub(super) fn loose_cmp(left: &Val<'_>, right: &Val<'_>) -> Option<Ordering> {
    let (l, r) = coerce(left, right);
    match (&*l, &*r) {
        (Val::Num(a), Val::Num(b)) => a.partial_cmp(b),
        (Val::Str(a), Val::Str(b)) => Some(cmp_ignore_case(a, b)),
        (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

// ------------------------------------------------------------------ numbers

/// GitHub's string-to-number rules (after JavaScript's `Number()`): surrounding whitespace is
/// ignored, `''` is 0, decimals with sign and exponent, `0x` hex and `0o` octal (32-bit, as
/// the runner parses them), `Infinity`; anything else is NaN.
pub(super) fn parse_number(s: &str) -> f64 {
    let s = s.trim();
    if s.is_empty() {
        return 0.0;
    }
    if let Some(n) = parse_decimal(s) {
        return n;
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return parse_int32(hex, 16);
    }
    if let Some(oct) = s.strip_prefix("0o") {
        return parse_int32(oct, 8);
    }
    f64::NAN
}

/// `[+-]digits[.digits][e[+-]digits]` (either side of the point may be empty, not both), or
/// .NET's `Infinity`/`NaN` symbols.
fn parse_decimal(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if body.eq_ignore_ascii_case("infinity") {
        return Some(if s.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if body.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() && frac.is_empty() || !digits(int) || !digits(frac) {
        return None;
    }
    if let Some(e) = exponent {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        if e.is_empty() || !digits(e) {
            return None;
        }
    }
    s.parse::<f64>().ok()
}

/// A 32-bit integer in the given radix, read as two's complement (`0xffffffff` is -1), as
/// .NET's parsers do; NaN when it does not fit.
fn parse_int32(digits: &str, radix: u32) -> f64 {
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return f64::NAN;
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 11 {
        return f64::NAN;
    }
    match u64::from_str_radix(
        if significant.is_empty() {
            "0"
        } else {
            significant
        },
        radix,
    ) {
        Ok(n) => match u32::try_from(n) {
            Ok(n) => f64::from(n.cast_signed()),
            Err(_) => f64::NAN,
        },
        Err(_) => f64::NAN,
    }
}

/// A number as GitHub prints it: .NET's `G15` format, i.e. at most 15 significant digits,
/// plain notation for exponents from -4 to 14 (`100000`, `0.0001`, `1.5`), scientific
/// otherwise (`1E+15`, `1E-05`, `1.23456789012346E+17`).
pub(super) fn format_number(n: f64) -> String {
    if n.is_nan() {
        return "NaN".to_owned();
    }
    if n.is_infinite() {
        return if n > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if n == 0.0 {
        return if n.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // Rust rounds to the requested digits correctly; the rest is layout.
    let sci = format!("{:.14e}", n.abs());
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return sci;
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let sign = if n < 0.0 { "-" } else { "" };
    if (-4..15).contains(&exp) {
        let exp_usize = exp.unsigned_abs() as usize;
        if exp >= 0 {
            let int_len = exp_usize + 1;
            if digits.len() <= int_len {
                format!("{sign}{digits}{}", "0".repeat(int_len - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat(exp_usize - 1))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let point = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!(
            "{sign}{first}{point}{rest}E{exp_sign}{:02}",
            exp.unsigned_abs()
        )
    }
}
