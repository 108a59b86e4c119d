//! Reading only the fields kiln reads of a GitHub delivery's body.
//!
//! A push delivery is kilobytes of JSON (commit messages, URLs, the repository's every
//! detail) of which normalising, filtering and the `github` context read a few dozen
//! bytes. Parsing it all into a [`Value`] was the larger part of turning a delivery into
//! runs. [`github_body`] checks the whole body as JSON but builds values only for
//! [`GITHUB_READS`]; the run's `github.event` is the body's own text (parsed again only
//! when a job's expressions read it).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Which part of a JSON value to keep.
pub(super) enum Want {
    /// All of it.
    All,
    /// Of an object, these members (as they want); of an array, each element so; any
    /// other value as it is.
    Fields(&'static [(&'static str, Want)]),
}

use Want::{All, Fields};

/// What kiln reads of a GitHub-shaped payload: [`super::github`]'s normalising (with
/// `common`), the filters' draft release check, [`super::github_fields`]' ids and the pull
/// request commits. A field read anywhere else must be added here.
pub(super) const GITHUB_READS: Want = Fields(&[
    ("action", All),
    ("after", All),
    ("before", All),
    (
        "commits",
        Fields(&[("added", All), ("modified", All), ("removed", All)]),
    ),
    ("created", All),
    ("deleted", All),
    ("forced", All),
    ("master_branch", All),
    ("number", All),
    (
        "pull_request",
        Fields(&[
            ("number", All),
            ("head", Fields(&[("sha", All), ("ref", All)])),
            ("base", Fields(&[("sha", All), ("ref", All)])),
        ]),
    ),
    ("pusher", Fields(&[("name", All)])),
    ("ref", All),
    ("ref_type", All),
    (
        "release",
        Fields(&[("tag_name", All), ("target_commitish", All), ("draft", All)]),
    ),
    (
        "repository",
        Fields(&[
            ("full_name", All),
            ("default_branch", All),
            ("master_branch", All),
            ("id", All),
            ("owner", Fields(&[("id", All)])),
        ]),
    ),
    ("sender", Fields(&[("login", All), ("username", All)])),
    ("sha", All),
]);

/// `body` read as JSON (all of it checked, as [`serde_json::from_str`] would), keeping of it
/// only what `want` names.
pub(super) fn pick(body: &str, want: &Want) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_str(body);
    let value = Pick(want).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Pick<'w>(&'w Want);

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            All => serde::Deserialize::deserialize(d),
            Fields(fields) => d.deserialize_any(PickVisitor(fields)),
        }
    }
}

struct PickVisitor(&'static [(&'static str, Want)]);

impl<'de> Visitor<'de> for PickVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let want = Fields(self.0);
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Pick(&want))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            match key {
                Some(i) => {
                    let (name, want) = &self.0[i];
                    let value = map.next_value_seed(Pick(want))?;
                    out.insert((*name).to_owned(), value);
                }
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(Value::Object(out))
    }
}

/// A value read and checked, nothing kept. Not serde's `IgnoredAny`, which serde_json skips
/// without its nesting limit: a body nested too deep is refused here as when parsed whole.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key(&[]))?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// A member's name: which of the wanted fields it is, if any (no copy of the name made).
struct Key(&'static [(&'static str, Want)]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|(name, _)| *name == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Want = Fields(&[
        ("a", All),
        ("list", Fields(&[("x", All)])),
        ("o", Fields(&[("deep", Fields(&[("y", All)]))])),
    ]);

    #[test]
    fn keeps_what_is_wanted_at_every_depth_and_in_every_element() {
        let body = r#"{"a": {"k": [1, 2.5, null, true]}, "b": "skipped \"quoted\"",
            "list": [{"x": 1, "z": 2}, 7, "s", {"z": 3}],
            "o": {"deep": {"y": "kept", "n": {"big": [1, 2, 3]}}, "q": 1},
            "l\u0069st2": [1]}"#;
        let got = pick(body, &SHAPE).unwrap();
        assert_eq!(
            got,
            serde_json::json!({
                "a": {"k": [1, 2.5, null, true]},
                "list": [{"x": 1}, 7, "s", {}],
                "o": {"deep": {"y": "kept"}},
            })
        );
        // An escaped name is the name it spells.
        let got = pick(r#"{"\u0061": 1}"#, &SHAPE).unwrap();
        assert_eq!(got, serde_json::json!({"a": 1}));
        // Values of another type than the shape's are kept as they are.
        let got = pick(r#"{"list": "text", "o": 3}"#, &SHAPE).unwrap();
        assert_eq!(got, serde_json::json!({"list": "text", "o": 3}));
        let got = pick("[1, {\"a\": 2, \"c\": 3}]", &SHAPE).unwrap();
        assert_eq!(got, serde_json::json!([1, {"a": 2}]));
    }

    #[test]
    fn refuses_what_serde_json_refuses_even_where_nothing_is_kept() {
        for bad in [
            "",
            "{",
            r#"{"b": [1, 2}"#,
            r#"{"b": tru}"#,
            r#"{"b": "\x"}"#,
            r#"{"a": 1} trailing"#,
            r#"{"b": 1,}"#,
            r#"{"b": 01}"#,
            r#"{"b": 1e400}"#,
        ] {
            let ours = pick(bad, &SHAPE).unwrap_err().to_string();
            let theirs = serde_json::from_str::<Value>(bad).unwrap_err().to_string();
            assert_eq!(ours, theirs, "{bad:?}");
        }
        // Nesting as deep as serde_json refuses, in a skipped member too.
        let deep = format!("{{\"b\": {}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(pick(&deep, &SHAPE).is_err());
        assert!(serde_json::from_str::<Value>(&deep).is_err());
    }
}
