//! `strategy.matrix` expansion with GitHub's include/exclude rules.
//!
//! The rules, as GitHub documents them ("Using a matrix for your jobs"):
//! 1. every key other than `include`/`exclude` is a vector; the combinations are their
//!    cartesian product, the first key varying slowest;
//! 2. `exclude` removes every combination that matches all the keys of one of its entries
//!    (a partial match is enough); it is applied before `include`;
//! 3. each `include` entry is merged into every *original* combination it does not
//!    contradict (its keys that are vectors must equal the combination's values; its other
//!    keys are added, and may overwrite what an earlier `include` added); an entry that fits
//!    no original combination becomes a combination of its own. A matrix of only `include`
//!    is therefore exactly its entries.
//!
//! The matrix given here is already evaluated (expressions replaced by values); evaluation
//! belongs to [`crate::plan`]. Not here either: naming the resulting jobs.

use serde_json::{Map, Value};

/// GitHub's cap on the jobs one matrix may produce.
pub const MAX_COMBINATIONS: usize = 256;

/// Why a matrix cannot be expanded. Messages follow GitHub's wording where it has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    #[error("Matrix vector '{key}' must be a list, not {found}")]
    NotAList { key: String, found: String },
    #[error("Matrix vector '{0}' does not contain any values")]
    Empty(String),
    #[error("`{key}` must be a list of mappings, not {found}")]
    NotAListOfObjects { key: String, found: String },
    #[error("`{key}[{index}]` must be a mapping, not {found}")]
    EntryNotAnObject {
        key: String,
        index: usize,
        found: String,
    },
    #[error("Matrix exclude key '{0}' does not match any key within the matrix")]
    UnknownExcludeKey(String),
    #[error("the matrix gives {0} combinations; at most 256 are allowed")]
    TooMany(usize),
    #[error("the matrix gives no combination at all")]
    NoCombination,
}

/// What kind of JSON value this is, for messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean `{b}`"),
        Value::Number(n) => format!("the number `{n}`"),
        Value::String(s) => format!("the string `{s}`"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

/// Equality as a matrix compares values: numbers by value (`1` equals `1.0`), the rest
/// structurally.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Whether an `exclude` value matches a combination's value: equal, or for objects, every
/// key of the exclude's object matching (GitHub's partial match, applied at every level).
fn partial(pattern: &Value, value: &Value) -> bool {
    match (pattern, value) {
        (Value::Object(p), Value::Object(v)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| partial(pv, vv))),
        _ => same(pattern, value),
    }
}

fn object_list<'a>(key: &str, v: &'a Value) -> Result<Vec<&'a Map<String, Value>>, MatrixError> {
    let Value::Array(items) = v else {
        return Err(MatrixError::NotAListOfObjects {
            key: key.to_owned(),
            found: describe(v),
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::Object(o) => Ok(o),
            other => Err(MatrixError::EntryNotAnObject {
                key: key.to_owned(),
                index,
                found: describe(other),
            }),
        })
        .collect()
}

/// Expand an evaluated matrix into its combinations, in GitHub's order.
pub fn expand(matrix: &Map<String, Value>) -> Result<Vec<Map<String, Value>>, MatrixError> {
    let mut vectors: Vec<(&str, &Vec<Value>)> = Vec::new();
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    for (key, value) in matrix {
        match key.as_str() {
            "include" => include = object_list(key, value)?,
            "exclude" => exclude = object_list(key, value)?,
            _ => match value {
                Value::Array(items) if items.is_empty() => {
                    return Err(MatrixError::Empty(key.clone()));
                }
                Value::Array(items) => vectors.push((key, items)),
                other => {
                    return Err(MatrixError::NotAList {
                        key: key.clone(),
                        found: describe(other),
                    });
                }
            },
        }
    }

    let mut original: Vec<Map<String, Value>> = Vec::new();
    if !vectors.is_empty() {
        let total = vectors
            .iter()
            .try_fold(1usize, |acc, (_, items)| acc.checked_mul(items.len()))
            .unwrap_or(usize::MAX);
        if total > MAX_COMBINATIONS {
            return Err(MatrixError::TooMany(total));
        }
        original.push(Map::new());
        for (key, items) in &vectors {
            original = original
                .into_iter()
                .flat_map(|combo| {
                    items.iter().map(move |item| {
                        let mut c = combo.clone();
                        c.insert((*key).to_owned(), item.clone());
                        c
                    })
                })
                .collect();
        }
    }

    for entry in &exclude {
        if let Some(k) = entry.keys().find(|k| !vectors.iter().any(|(v, _)| v == k)) {
            return Err(MatrixError::UnknownExcludeKey(k.clone()));
        }
    }
    original.retain(|combo| {
        !exclude.iter().any(|entry| {
            entry
                .iter()
                .all(|(k, v)| combo.get(k).is_some_and(|c| partial(v, c)))
        })
    });

    let is_vector = |k: &str| vectors.iter().any(|(v, _)| *v == k);
    let mut extra: Vec<Map<String, Value>> = Vec::new();
    for entry in &include {
        let mut fitted = false;
        for combo in &mut original {
            let fits = entry
                .iter()
                .filter(|(k, _)| is_vector(k))
                .all(|(k, v)| combo.get(k).is_some_and(|c| same(v, c)));
            if fits {
                fitted = true;
                for (k, v) in *entry {
                    if !is_vector(k) {
                        combo.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if !fitted {
            extra.push((*entry).clone());
        }
    }
    original.extend(extra);

    if original.len() > MAX_COMBINATIONS {
        return Err(MatrixError::TooMany(original.len()));
    }
    if original.is_empty() {
        return Err(MatrixError::NoCombination);
    }
    Ok(original)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(v: Value) -> Result<Vec<Value>, MatrixError> {
        let Value::Object(m) = v else {
            panic!("a matrix is an object")
        };
        expand(&m).map(|list| list.into_iter().map(Value::Object).collect())
    }

    #[test]
    fn cartesian_product_first_key_slowest() {
        let got = run(json!({"version": [10, 12, 14], "os": ["ubuntu-latest", "windows-latest"]}))
            .expect("valid");
        assert_eq!(
            got,
            vec![
                json!({"version": 10, "os": "ubuntu-latest"}),
                json!({"version": 10, "os": "windows-latest"}),
                json!({"version": 12, "os": "ubuntu-latest"}),
                json!({"version": 12, "os": "windows-latest"}),
                json!({"version": 14, "os": "ubuntu-latest"}),
                json!({"version": 14, "os": "windows-latest"}),
            ]
        );
    }

    /// GitHub's "Example: Expanding configurations".
    #[test]
    fn github_fruit_animal_include_example() {
        let got = run(json!({
            "fruit": ["apple", "pear"],
            "animal": ["cat", "dog"],
            "include": [
                {"color": "green"},
                {"color": "pink", "animal": "cat"},
                {"fruit": "apple", "shape": "circle"},
                {"fruit": "banana"},
                {"fruit": "banana", "animal": "cat"},
            ]
        }))
        .expect("valid");
        assert_eq!(
            got,
            vec![
                json!({"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"}),
                json!({"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"}),
                json!({"fruit": "pear", "animal": "cat", "color": "pink"}),
                json!({"fruit": "pear", "animal": "dog", "color": "green"}),
                json!({"fruit": "banana"}),
                json!({"fruit": "banana", "animal": "cat"}),
            ]
        );
    }

    /// GitHub's "Example: Adding configurations" (node/os with an include).
    #[test]
    fn github_os_node_include_example() {
        let got = run(json!({
            "os": ["windows-latest", "ubuntu-latest"],
            "node": [14, 16],
            "include": [{"os": "windows-latest", "node": 16, "npm": 6}]
        }))
        .expect("valid");
        assert_eq!(
            got,
            vec![
                json!({"os": "windows-latest", "node": 14}),
                json!({"os": "windows-latest", "node": 16, "npm": 6}),
                json!({"os": "ubuntu-latest", "node": 14}),
                json!({"os": "ubuntu-latest", "node": 16}),
            ]
        );
    }

    /// GitHub's "Example: Excluding matrix configurations".
    #[test]
    fn github_os_version_exclude_example() {
        let got = run(json!({
            "os": ["macos-latest", "windows-latest"],
            "version": [12, 14, 16],
            "environment": ["staging", "production"],
            "exclude": [
                {"os": "macos-latest", "version": 12, "environment": "production"},
                {"os": "windows-latest", "version": 16},
            ]
        }))
        .expect("valid");
        assert_eq!(got.len(), 12 - 1 - 2);
        assert!(
            !got.contains(
                &json!({"os": "macos-latest", "version": 12, "environment": "production"})
            )
        );
        assert!(
            got.iter()
                .all(|c| !(c["os"] == "windows-latest" && c["version"] == 16))
        );
        assert_eq!(
            got[0],
            json!({"os": "macos-latest", "version": 12, "environment": "staging"})
        );
    }

    /// GitHub's "Example: Adding new combinations" (include only).
    #[test]
    fn include_only_gives_its_entries() {
        let got = run(json!({
            "include": [
                {"site": "production", "datacenter": "site-a"},
                {"site": "staging", "datacenter": "site-b"},
            ]
        }))
        .expect("valid");
        assert_eq!(
            got,
            vec![
                json!({"site": "production", "datacenter": "site-a"}),
                json!({"site": "staging", "datacenter": "site-b"}),
            ]
        );
    }

    #[test]
    fn include_never_overwrites_original_values_but_may_overwrite_added_ones() {
        let got = run(json!({
            "os": ["a", "b"],
            "include": [
                {"extra": 1},
                {"os": "a", "extra": 2},
                {"os": "c"},
            ]
        }))
        .expect("valid");
        assert_eq!(
            got,
            vec![
                json!({"os": "a", "extra": 2}),
                json!({"os": "b", "extra": 1}),
                json!({"os": "c"}),
            ]
        );
    }

    #[test]
    fn exclude_applies_before_include_and_includes_can_bring_back() {
        let got = run(json!({
            "os": ["a", "b"],
            "v": [1, 2],
            "exclude": [{"os": "b"}],
            "include": [{"os": "b", "v": 2}]
        }))
        .expect("valid");
        assert_eq!(
            got,
            vec![
                json!({"os": "a", "v": 1}),
                json!({"os": "a", "v": 2}),
                json!({"os": "b", "v": 2}),
            ]
        );
    }

    #[test]
    fn object_vector_values_match_partially_in_exclude() {
        let got = run(json!({
            "target": [{"os": "linux", "arch": "x64"}, {"os": "mac", "arch": "arm"}],
            "exclude": [{"target": {"os": "mac"}}]
        }))
        .expect("valid");
        assert_eq!(got, vec![json!({"target": {"os": "linux", "arch": "x64"}})]);
    }

    #[test]
    fn numbers_compare_by_value() {
        let got = run(json!({"v": [1, 2], "exclude": [{"v": 1.0}]})).expect("valid");
        assert_eq!(got, vec![json!({"v": 2})]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            run(json!({"os": "ubuntu"})),
            Err(MatrixError::NotAList {
                key: "os".into(),
                found: "the string `ubuntu`".into()
            })
        );
        assert_eq!(run(json!({"os": []})), Err(MatrixError::Empty("os".into())));
        assert_eq!(
            run(json!({"os": [1], "include": {"a": 1}})),
            Err(MatrixError::NotAListOfObjects {
                key: "include".into(),
                found: "a mapping".into()
            })
        );
        assert_eq!(
            run(json!({"os": [1], "exclude": ["x"]})),
            Err(MatrixError::EntryNotAnObject {
                key: "exclude".into(),
                index: 0,
                found: "the string `x`".into()
            })
        );
        assert_eq!(
            run(json!({"os": [1], "exclude": [{"nope": 1}]})),
            Err(MatrixError::UnknownExcludeKey("nope".into()))
        );
        assert_eq!(
            run(json!({"os": [1], "exclude": [{"os": 1}]})),
            Err(MatrixError::NoCombination)
        );
        let big: Vec<u32> = (0..17).collect();
        assert_eq!(
            run(json!({"a": big, "b": big})),
            Err(MatrixError::TooMany(289))
        );
        assert_eq!(
            MatrixError::Empty("x".into()).to_string(),
            "Matrix vector 'x' does not contain any values"
        );
    }

    #[test]
    fn exactly_256_is_allowed() {
        let sixteen: Vec<u32> = (0..16).collect();
        assert_eq!(
            run(json!({"a": sixteen, "b": sixteen}))
                .expect("valid")
                .len(),
            256
        );
    }
}
