//! A YAML document as a tree of nodes that remember where they stand in the file.
//!
//! The workflow parser needs three things that serde-based YAML loaders lose: the line and
//! column of every node (for diagnostics), the text of a scalar as written (so that
//! `VERSION: 1.10` stays `"1.10"` in `env:`), and keys compared as text (so that `on:` is the
//! key `on`, never YAML 1.1's boolean `true`). So this module builds its own small tree from
//! `saphyr-parser`'s events, resolving anchors and aliases as it goes.
//!
//! Typing follows YAML 1.2's core schema, which is what GitHub applies: only `true`/`false`
//! (in three spellings) are booleans, `~`/`null`/empty are null, and numbers are decimal,
//! `0x`/`0o` integers, or floats (with `.inf`/`.nan`).
//!
//! Not here: what any key means; that is the parser's business.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Number, Value};

use super::Pos;

/// One node of the document.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// Where the node starts (for a block scalar: its first content line).
    pub(crate) pos: Pos,
    /// The character index of `pos` in the source.
    pub(crate) index: usize,
    pub(crate) kind: Kind,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in file order; duplicates are kept so the parser can report them.
    Map(Vec<(Node, Node)>),
}

/// A scalar with its text as written and how it was written.
#[derive(Clone, Debug)]
pub(crate) struct Scalar {
    pub(crate) text: String,
    pub(crate) style: ScalarStyle,
    /// The tag's suffix when one was written (`!!str` → `str`).
    pub(crate) tag: Option<String>,
}

impl Scalar {
    /// The value under YAML 1.2's core schema.
    pub(crate) fn typed(&self) -> Value {
        if self.style != ScalarStyle::Plain {
            return Value::String(self.text.clone());
        }
        match self.tag.as_deref() {
            Some("str") => return Value::String(self.text.clone()),
            Some("null") => return Value::Null,
            _ => {}
        }
        let t = self.text.as_str();
        match t {
            "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
            "true" | "True" | "TRUE" => return Value::Bool(true),
            "false" | "False" | "FALSE" => return Value::Bool(false),
            _ => {}
        }
        if let Some(n) = parse_int(t) {
            return Value::Number(n);
        }
        if let Some(n) = parse_float(t) {
            return n;
        }
        Value::String(self.text.clone())
    }
}

fn parse_int(t: &str) -> Option<Number> {
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, body) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Signs are only allowed on decimal numbers in the core schema.
    if radix != 10 && t.len() != digits.len() {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if neg {
        let v = i64::try_from(magnitude).ok()?;
        Some(Number::from(-v))
    } else {
        Some(Number::from(magnitude))
    }
}

fn parse_float(t: &str) -> Option<Value> {
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if matches!(unsigned, ".inf" | ".nan") {
        // JSON has no infinities: GitHub's own converter turns them into strings as well.
        return Some(Value::String(t.to_owned()));
    }
    // The core schema's float: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let b = unsigned.as_bytes();
    let mut i = 0;
    let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    if i != b.len() {
        return None;
    }
    let f: f64 = t.parse().ok()?;
    Number::from_f64(f).map(Value::Number)
}

impl Node {
    pub(crate) fn as_scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            Kind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// The node as a JSON value (maps keep file order; keys are their text).
    pub(crate) fn to_value(&self) -> Value {
        match &self.kind {
            Kind::Scalar(s) => s.typed(),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.key_text(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// A key's text (a non-scalar key, which workflows never use, is shown as JSON).
    pub(crate) fn key_text(&self) -> String {
        match &self.kind {
            Kind::Scalar(s) => s.text.clone(),
            _ => self.to_value().to_string(),
        }
    }

    /// What kind of thing this is, for messages ("a string", "a list", …).
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Seq(_) => "a list".to_owned(),
            Kind::Map(_) => "a mapping".to_owned(),
            Kind::Scalar(s) => match s.typed() {
                Value::Null => "nothing (null)".to_owned(),
                Value::Bool(b) => format!("the boolean `{b}`"),
                Value::Number(_) => format!("the number `{}`", s.text),
                _ => format!("the string `{}`", short(&s.text)),
            },
        }
    }
}

/// A long or multi-line value cut down for a message.
fn short(s: &str) -> String {
    let first = s.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A YAML syntax error.
#[derive(Clone, Debug)]
pub(crate) struct SyntaxError {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

fn pos_of(span: &Span) -> (Pos, usize) {
    (
        Pos {
            line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
            column: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
        },
        span.start.index(),
    )
}

/// Collections under construction.
enum Open {
    Seq(Node, usize, Vec<Node>),
    Map(Node, usize, Vec<(Node, Node)>, Option<Node>),
}

/// Parse the first document of `source`; `Ok(None)` for a file with no document at all.
pub(crate) fn load(source: &str) -> Result<Option<Node>, SyntaxError> {
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut docs = 0usize;

    for ev in Parser::new_from_str(source) {
        let (event, span) = ev.map_err(|e| SyntaxError {
            pos: Pos {
                line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                column: u32::try_from(e.marker().col() + 1).unwrap_or(u32::MAX),
            },
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let (pos, index) = pos_of(&span);
        let finished: Option<(Node, usize)> = match event {
            Event::DocumentStart(_) => {
                docs += 1;
                if docs > 1 {
                    return Err(SyntaxError {
                        pos,
                        message: "a workflow file holds one YAML document; found a second one"
                            .to_owned(),
                    });
                }
                None
            }
            Event::Scalar(text, style, anchor, tag) => Some((
                Node {
                    pos,
                    index,
                    kind: Kind::Scalar(Scalar {
                        text: text.into_owned(),
                        style,
                        tag: tag.map(|t| t.suffix.clone()),
                    }),
                },
                anchor,
            )),
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => {
                    // The alias stands where it is written, holding the anchored content.
                    let mut n = n.clone();
                    n.pos = pos;
                    n.index = index;
                    Some((n, 0))
                }
                None => {
                    return Err(SyntaxError {
                        pos,
                        message: "invalid YAML: alias to an unknown anchor".to_owned(),
                    });
                }
            },
            Event::SequenceStart(anchor, _) => {
                stack.push(Open::Seq(
                    Node {
                        pos,
                        index,
                        kind: Kind::Seq(Vec::new()),
                    },
                    anchor,
                    Vec::new(),
                ));
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Open::Map(
                    Node {
                        pos,
                        index,
                        kind: Kind::Map(Vec::new()),
                    },
                    anchor,
                    Vec::new(),
                    None,
                ));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Open::Seq(mut n, anchor, items)) => {
                    n.kind = Kind::Seq(items);
                    Some((n, anchor))
                }
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Open::Map(mut n, anchor, entries, _)) => {
                    n.kind = Kind::Map(entries);
                    Some((n, anchor))
                }
                _ => None,
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        if let Some((node, anchor)) = finished {
            if anchor != 0 {
                anchors.insert(anchor, node.clone());
            }
            match stack.last_mut() {
                Some(Open::Seq(_, _, items)) => items.push(node),
                Some(Open::Map(_, _, entries, key)) => match key.take() {
                    Some(k) => entries.push((k, node)),
                    None => *key = Some(node),
                },
                None => {
                    if root.is_none() {
                        root = Some(node);
                    }
                }
            }
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(src: &str) -> Value {
        load(src).expect("valid").expect("a document").to_value()
    }

    #[test]
    fn core_schema_typing() {
        let v = value(
            "a: 1\nb: 1.10\nc: true\nd: yes\ne: ~\nf: '1'\ng: on\nh: 0x1F\ni: -3\nj: 1e3\nk: .5\n",
        );
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": 1.1, "c": true, "d": "yes", "e": null, "f": "1",
                "g": "on", "h": 31, "i": -3, "j": 1000.0, "k": 0.5})
        );
    }

    #[test]
    fn anchors_and_aliases_copy_the_content() {
        let v = value("a: &x [1, 2]\nb: *x\nc: &m {k: v}\nd: *m\n");
        assert_eq!(
            v,
            serde_json::json!({"a": [1, 2], "b": [1, 2], "c": {"k": "v"}, "d": {"k": "v"}})
        );
    }

    #[test]
    fn positions_are_one_based() {
        let n = load("a:\n  - x: 1\n").expect("valid").expect("doc");
        let Kind::Map(entries) = &n.kind else {
            panic!("a map")
        };
        let (k, v) = &entries[0];
        assert_eq!(k.pos, Pos { line: 1, column: 1 });
        let Kind::Seq(items) = &v.kind else {
            panic!("a seq")
        };
        assert_eq!(items[0].pos, Pos { line: 2, column: 5 });
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = load("a: [1, 2\nb: c\n").expect_err("unclosed flow sequence");
        assert!(e.pos.line >= 1, "{e:?}");
        assert!(e.message.starts_with("invalid YAML"), "{e:?}");
    }

    #[test]
    fn empty_source_has_no_document() {
        assert!(load("# only a comment\n").expect("valid").is_none());
    }
}
