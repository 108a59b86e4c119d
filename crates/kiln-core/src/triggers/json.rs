//! Reading payload fields by dotted path, with errors that name the path.

use indexmap::IndexSet;
use serde_json::Value;

use super::NormalizeError;

/// A payload being read for one event; errors name that event.
pub(super) struct Reader<'a> {
    pub(super) event: &'a str,
    pub(super) root: &'a Value,
}

/// The value at a dotted path (`pull_request.head.sha`); `null` counts as absent.
pub(super) fn at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = root;
    for key in path.split('.') {
        v = v.get(key)?;
    }
    (!v.is_null()).then_some(v)
}

pub(super) fn str_at<'a>(root: &'a Value, path: &str) -> Option<&'a str> {
    at(root, path).and_then(Value::as_str)
}

impl<'a> Reader<'a> {
    pub(super) fn new(event: &'a str, root: &'a Value) -> Self {
        Reader { event, root }
    }

    fn missing(&self, path: &str) -> NormalizeError {
        NormalizeError::Missing {
            event: self.event.to_owned(),
            field: path.to_owned(),
        }
    }

    fn invalid(&self, path: &str, expected: &'static str) -> NormalizeError {
        NormalizeError::Invalid {
            event: self.event.to_owned(),
            field: path.to_owned(),
            expected,
        }
    }

    /// A string that must be there and not be empty.
    pub(super) fn req_str(&self, path: &str) -> Result<&'a str, NormalizeError> {
        match at(self.root, path) {
            None => Err(self.missing(path)),
            Some(Value::String(s)) if s.is_empty() => Err(self.missing(path)),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.invalid(path, "a string")),
        }
    }

    /// A string that may be absent (or null, or empty); present with another type is an error.
    pub(super) fn opt_str(&self, path: &str) -> Result<Option<&'a str>, NormalizeError> {
        match at(self.root, path) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(path, "a string")),
        }
    }

    /// An object that must be there.
    pub(super) fn req_obj(&self, path: &str) -> Result<&'a Value, NormalizeError> {
        match at(self.root, path) {
            None => Err(self.missing(path)),
            Some(v @ Value::Object(_)) => Ok(v),
            Some(_) => Err(self.invalid(path, "an object")),
        }
    }

    /// A non-negative integer that must be there (numbers as strings are accepted too).
    pub(super) fn req_u64(&self, path: &str) -> Result<u64, NormalizeError> {
        match at(self.root, path) {
            None => Err(self.missing(path)),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| self.invalid(path, "a number")),
            Some(Value::String(s)) => s.parse().map_err(|_| self.invalid(path, "a number")),
            Some(_) => Err(self.invalid(path, "a number")),
        }
    }

    pub(super) fn opt_bool(&self, path: &str) -> Result<Option<bool>, NormalizeError> {
        match at(self.root, path) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.invalid(path, "true or false")),
        }
    }

    /// A list that may be absent; present with another type is an error.
    pub(super) fn opt_array(&self, path: &str) -> Result<Option<&'a Vec<Value>>, NormalizeError> {
        match at(self.root, path) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(self.invalid(path, "a list")),
        }
    }
}

/// The files of a commit list (`added`, `modified`, `removed` of each commit), each once, in
/// order of appearance; `None` when a commit lacks one of the lists (Gogs, GitHub's Events API
/// shape) so that the caller asks git instead.
pub(super) fn paths_of_commits(commits: &[Value]) -> Option<Vec<String>> {
    let mut seen = IndexSet::new();
    for commit in commits {
        for key in ["added", "modified", "removed"] {
            for p in commit.get(key)?.as_array()? {
                seen.insert(p.as_str()?.to_owned());
            }
        }
    }
    Some(seen.into_iter().collect())
}
