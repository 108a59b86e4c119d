//! `kiln-package.toml`: the manifest of one package, parsed from `&str`.
//!
//! The parser walks toml's span-carrying document (`DeTable`) by hand instead of deriving
//! `Deserialize`: serde stops at the first problem and loses the key it was in, while a tree
//! check must list every problem of every file with its line and key. Nothing here resolves
//! origins against a tree; [`super::Tree`] does that and reports unknown ones.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The file name of a manifest inside a package's folder.
pub const MANIFEST_FILE: &str = "kiln-package.toml";

/// The keys a manifest may have, in the order the error for an unknown key lists them.
const KEYS: [&str; 6] = [
    "version",
    "depends",
    "run-depends",
    "fetch",
    "distfiles",
    "build",
];

/// One package's manifest, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    /// Origins built before this package (`depends`), in file order.
    pub depends: Vec<Dependency>,
    /// Origins whoever depends on this package also needs (`run-depends`), in file order.
    pub run_depends: Vec<Dependency>,
    /// The `fetch` phase's command (network allowed), when there is one.
    pub fetch: Option<String>,
    /// Files `fetch` must produce, sorted by name.
    pub distfiles: Vec<Distfile>,
    /// The `build` phase's command.
    pub build: String,
}

/// An origin named in `depends` or `run-depends`, with the line it is on so that an unknown
/// one can be reported where it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub origin: String,
    pub line: u32,
}

/// A file the `fetch` phase must produce, with its expected SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distfile {
    /// A plain file name (no `/`), relative to the build's scratch folder.
    pub name: String,
    pub sha256: [u8; 32],
}

/// One problem in one manifest: `file:line: key: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The manifest's path as the caller named it (relative to the tree for a loaded tree).
    pub file: String,
    /// 1-based.
    pub line: u32,
    /// The key the problem is in (`depends[2]`, `distfiles."a.tar.gz"`); `None` for a TOML
    /// syntax error.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}:{}: `{key}`: {}", self.file, self.line, self.message),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.message),
        }
    }
}

/// Whether `s` is an origin: `CATEGORY/NAME`, exactly one slash, neither part empty, `.` or
/// `..`, no whitespace or control characters (an origin becomes a folder name under
/// `$KILN_DEPS` and appears in logs).
pub fn is_origin(s: &str) -> bool {
    let Some((category, name)) = s.split_once('/') else {
        return false;
    };
    is_path_part(category) && is_path_part(name)
}

fn is_path_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Parses one manifest. `file` is only used in errors. Every problem found is returned, sorted
/// by line; a TOML syntax error is the only problem reported for its file, since what
/// follows it cannot be read reliably.
pub fn parse_manifest(file: &str, src: &str) -> Result<Manifest, Vec<ManifestError>> {
    let mut cx = Cx {
        file,
        src,
        errors: Vec::new(),
    };
    let doc = match DeTable::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map_or(1, |s| cx.line(s.start));
            return Err(vec![ManifestError {
                file: file.to_owned(),
                line,
                key: None,
                message: first_line(e.message()).to_owned(),
            }]);
        }
    };
    let doc = doc.get_ref();

    let mut version = None;
    let mut depends = Vec::new();
    let mut run_depends = Vec::new();
    let mut fetch = None;
    let mut distfiles = Vec::new();
    let mut build = None;
    for (key, value) in doc.iter() {
        match key.get_ref().as_ref() {
            "version" => version = cx.string("version", value, true),
            "depends" => depends = cx.origins("depends", value),
            "run-depends" => run_depends = cx.origins("run-depends", value),
            "fetch" => fetch = cx.string("fetch", value, false),
            "distfiles" => distfiles = cx.distfiles(value),
            "build" => build = cx.string("build", value, true),
            other => cx.error(
                key.span(),
                other,
                format!("unknown key (a manifest has {})", KEYS.join(", ")),
            ),
        }
    }
    for (name, value) in [("version", &version), ("build", &build)] {
        if value.is_none() && !doc.contains_key(name) {
            cx.errors.push(ManifestError {
                file: file.to_owned(),
                line: 1,
                key: Some(name.to_owned()),
                message: "missing (every manifest needs `version` and `build`)".to_owned(),
            });
        }
    }
    match (version, build) {
        (Some(version), Some(build)) if cx.errors.is_empty() => Ok(Manifest {
            version,
            depends,
            run_depends,
            fetch,
            distfiles,
            build,
        }),
        _ => {
            cx.errors
                .sort_by(|a, b| (a.line, &a.key).cmp(&(b.line, &b.key)));
            Err(cx.errors)
        }
    }
}

/// toml's messages may carry a rendered snippet after the first line; kiln prints its own
/// `file:line:` prefix, so only the sentence is kept.
fn first_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or(msg).trim()
}

struct Cx<'a> {
    file: &'a str,
    src: &'a str,
    errors: Vec<ManifestError>,
}

impl Cx<'_> {
    fn line(&self, offset: usize) -> u32 {
        let end = offset.min(self.src.len());
        let newlines = self.src.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        u32::try_from(newlines + 1).unwrap_or(u32::MAX)
    }

    fn error(&mut self, span: Range<usize>, key: &str, message: String) {
        let line = self.line(span.start);
        self.errors.push(ManifestError {
            file: self.file.to_owned(),
            line,
            key: Some(key.to_owned()),
            message,
        });
    }

    fn string(
        &mut self,
        key: &str,
        value: &Spanned<DeValue<'_>>,
        non_empty: bool,
    ) -> Option<String> {
        match value.get_ref() {
            DeValue::String(s) if non_empty && s.trim().is_empty() => {
                self.error(value.span(), key, "must not be empty".to_owned());
                None
            }
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.error(
                    value.span(),
                    key,
                    format!("must be a string, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn origins(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> Vec<Dependency> {
        let Some(items) = value.get_ref().as_array() else {
            self.error(
                value.span(),
                key,
                format!(
                    "must be an array of origins (\"category/name\"), not {}",
                    value.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_str() {
                Some(origin) if is_origin(origin) => out.push(Dependency {
                    origin: origin.to_owned(),
                    line: self.line(item.span().start),
                }),
                Some(origin) => self.error(
                    item.span(),
                    &format!("{key}[{i}]"),
                    format!("`{origin}` is not an origin (\"category/name\", one slash)"),
                ),
                None => self.error(
                    item.span(),
                    &format!("{key}[{i}]"),
                    format!(
                        "must be an origin string, not {}",
                        item.get_ref().type_str()
                    ),
                ),
            }
        }
        out
    }

    fn distfiles(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<Distfile> {
        let Some(table) = value.get_ref().as_table() else {
            self.error(
                value.span(),
                "distfiles",
                format!(
                    "must be a table of file name = \"sha256:<hex>\", not {}",
                    value.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(table.len());
        for (name, sum) in table.iter() {
            let name_str: &str = name.get_ref();
            let key = format!("distfiles.{name_str:?}");
            if !is_path_part(name_str) {
                self.error(
                    name.span(),
                    &key,
                    "a distfile is a plain file name (no `/`, not `.` or `..`)".to_owned(),
                );
                continue;
            }
            let parsed = sum.get_ref().as_str().and_then(parse_sha256);
            match parsed {
                Some(sha256) => out.push(Distfile {
                    name: name_str.to_owned(),
                    sha256,
                }),
                None => self.error(
                    sum.span(),
                    &key,
                    "must be \"sha256:\" followed by 64 lowercase hex digits".to_owned(),
                ),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// `sha256:<64 lowercase hex>` → the digest. Uppercase is refused so that one digest has one
/// spelling (manifests are compared and hashed as text).
fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}
