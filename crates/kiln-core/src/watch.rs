//! `on.watch` (a kiln extension): the model of one watch entry and the pure decisions around
//! it — how long an `interval:` is, what a version string means to a semver `constraint:`,
//! which versions a `filter:` admits, and which versions a poll found are new.
//!
//! The parser ([`crate::workflow`]) builds [`WatchEntry`] values and checks them with the
//! functions here, so that a stored watch always evaluates.
//!
//! Not here: talking to registries, running scanning commands, storing what was seen, or
//! starting runs (`kiln_engine::watch` and `kiln-store` do those).

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::workflow::Pos;

/// The poll interval when a watch names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// The shortest poll interval a watch may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// How long a scanning command may run when its watch names no `timeout:`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `timeout:` a scanning command may ask for.
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// One `on.watch` entry, checked: its source is complete, its constraint, filter, interval
/// and timeout parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchEntry {
    /// `name:` — unique within the workflow; how the API and `kiln watch check` name it.
    pub name: String,
    pub source: WatchSource,
    /// `constraint:` — a semver requirement (Cargo's syntax, `>=1.3, <2`).
    pub constraint: Option<String>,
    /// `filter:` — a regular expression a version must match (for non-semver schemes).
    pub filter: Option<String>,
    /// `known-versions:` — a file in the project listing versions already handled, one a
    /// line (`#` starts a comment).
    pub known_versions: Option<String>,
    /// `interval:` in seconds (default [`DEFAULT_INTERVAL`], at least [`MIN_INTERVAL`]).
    pub interval_secs: u64,
    /// Where the entry's list item starts.
    pub pos: Pos,
}

/// Where a watch looks for versions. Stored as JSON (`{"kind":"pypi","package":"x"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WatchSource {
    /// `GET {github}/repos/{repository}/releases` → each release's `tag_name`.
    GithubReleases { repository: String },
    /// `GET {github}/repos/{repository}/tags` → each tag's `name`.
    GithubTags { repository: String },
    /// `GET {pypi}/pypi/{package}/json` → the keys of `releases`.
    Pypi { package: String },
    /// `GET {npm}/{package}` → the keys of `versions`.
    Npm { package: String },
    /// `GET {crates}/api/v1/crates/{package}` → `versions[].num`.
    Crates { package: String },
    /// Any URL: every match of `regex` (capture group 1, or the whole match), or the string
    /// or array of strings at `json_pointer` in a JSON answer.
    Url {
        url: String,
        regex: Option<String>,
        json_pointer: Option<String>,
    },
    /// A scanning command run by `sh -c` in the project folder: one version a line.
    Command { command: String, timeout_secs: u64 },
}

impl WatchSource {
    /// The `source:` value that selects this kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::GithubReleases { .. } => "github-releases",
            Self::GithubTags { .. } => "github-tags",
            Self::Pypi { .. } => "pypi",
            Self::Npm { .. } => "npm",
            Self::Crates { .. } => "crates",
            Self::Url { .. } => "url",
            Self::Command { .. } => "command",
        }
    }
}

/// The `source:` values a watch takes.
pub const SOURCE_KINDS: &[&str] = &[
    "github-releases",
    "github-tags",
    "pypi",
    "npm",
    "crates",
    "url",
    "command",
];

/// Reads an interval or timeout such as `90s`, `15m`, `1h`, `1d`, `1h30m` (a bare number is
/// seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("an empty duration; write e.g. `30m`, `1h` or `1d`".to_owned());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "`{t}` is not a duration; write e.g. `30m`, `1h` or `1d` (units s, m, h, d)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{t}` is not a duration; a unit needs a number before it"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{t}` is too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "`{t}` is not a duration; the last number has no unit"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Checks a `constraint:` (semver requirement).
pub fn check_constraint(text: &str) -> Result<(), String> {
    semver::VersionReq::parse(text)
        .map(|_| ())
        .map_err(|e| format!("`{text}` is not a semver constraint: {e}"))
}

/// Checks a `filter:` or url `regex:`.
pub fn check_regex(text: &str) -> Result<(), String> {
    regex::Regex::new(text)
        .map(|_| ())
        .map_err(|e| format!("`{text}` is not a regular expression: {e}"))
}

/// Checks a `json-pointer:` (RFC 6901: empty, or `/`-separated tokens).
pub fn check_json_pointer(text: &str) -> Result<(), String> {
    if text.is_empty() || text.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not a JSON pointer; it starts with `/`, as in `/versions`"
        ))
    }
}

/// A version string read as semver, leniently: a leading `v` (or `V`) and surrounding
/// whitespace are dropped, and a missing minor or patch counts as 0 (`v1.3` → `1.3.0`).
/// `None` for anything else (`2024-01`, `1.2.3.4`).
pub fn semver_of(version: &str) -> Option<semver::Version> {
    let v = version.trim();
    let v = v
        .strip_prefix('v')
        .or_else(|| v.strip_prefix('V'))
        .unwrap_or(v);
    if let Ok(parsed) = semver::Version::parse(v) {
        return Some(parsed);
    }
    // Pad the numeric core: `1` and `1.3` (optionally followed by `-pre` or `+build`).
    let split = v.find(['-', '+']).unwrap_or(v.len());
    let (core, rest) = v.split_at(split);
    let parts = core.split('.').count();
    // A lone number followed by `-…` is more likely a date (`2024-01-02`) than `2024.0.0-01-02`.
    let lone_with_rest = parts == 1 && !rest.is_empty();
    if core.is_empty()
        || parts >= 3
        || lone_with_rest
        || !core.split('.').all(|p| p.parse::<u64>().is_ok())
    {
        return None;
    }
    let padded = format!("{core}{}{rest}", ".0".repeat(3 - parts));
    semver::Version::parse(&padded).ok()
}

/// A watch's version selection, compiled once per poll: `constraint:` and `filter:`.
#[derive(Debug, Clone)]
pub struct Selector {
    constraint: Option<semver::VersionReq>,
    filter: Option<regex::Regex>,
}

impl Selector {
    /// Compiles `entry`'s constraint and filter (errors only for entries the parser did not
    /// check).
    pub fn new(constraint: Option<&str>, filter: Option<&str>) -> Result<Self, String> {
        let constraint = constraint
            .map(|c| {
                semver::VersionReq::parse(c)
                    .map_err(|e| format!("`{c}` is not a semver constraint: {e}"))
            })
            .transpose()?;
        let filter = filter
            .map(|f| {
                regex::Regex::new(f).map_err(|e| format!("`{f}` is not a regular expression: {e}"))
            })
            .transpose()?;
        Ok(Selector { constraint, filter })
    }

    /// Whether a found version is one the watch wants: it matches the filter (when given)
    /// and reads as semver satisfying the constraint (when given; Cargo's rules, so a
    /// pre-release matches only a requirement naming a pre-release of the same version).
    pub fn accepts(&self, version: &str) -> bool {
        if let Some(f) = &self.filter
            && !f.is_match(version)
        {
            return false;
        }
        match &self.constraint {
            Some(req) => semver_of(version).is_some_and(|v| req.matches(&v)),
            None => true,
        }
    }
}

/// Reads a `known-versions:` file: one version a line, blank lines and `#` comments skipped.
pub fn parse_known_versions(text: &str) -> HashSet<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a poll means, decided from what it found: which versions to record as seen, and
/// which of those start a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollDecision {
    /// Versions to record as seen without a run (first poll without `known-versions`, or in
    /// the known-versions file).
    pub quiet: Vec<String>,
    /// Versions to record that start one run each, in the order found.
    pub trigger: Vec<String>,
}

/// Decides a poll. `found` is what the source listed (duplicates and blanks are dropped),
/// `seen` what the store already recorded, `known` the known-versions file (when the watch
/// has one and it could be read), and `first` whether the watch was never polled
/// successfully before.
///
/// On a first poll without a known-versions file every accepted version is recorded quietly:
/// a new watch never starts a run for each release a project already has. With the file,
/// accepted versions not in it start runs from the first poll on; versions in it are
/// recorded quietly.
pub fn decide(
    found: &[String],
    seen: &HashSet<String>,
    known: Option<&HashSet<String>>,
    first: bool,
    selector: &Selector,
) -> PollDecision {
    let mut out = PollDecision::default();
    let mut taken: HashSet<&str> = HashSet::new();
    for v in found {
        let v = v.trim();
        if v.is_empty() || seen.contains(v) || !taken.insert(v) || !selector.accepts(v) {
            continue;
        }
        let quiet = match known {
            Some(k) => k.contains(v),
            None => first,
        };
        if quiet {
            out.quiet.push(v.to_owned());
        } else {
            out.trigger.push(v.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("120").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn lenient_semver() {
        assert_eq!(semver_of("v1.3").unwrap().to_string(), "1.3.0");
        assert_eq!(semver_of("1").unwrap().to_string(), "1.0.0");
        assert_eq!(semver_of("1.3.1").unwrap().to_string(), "1.3.1");
        assert_eq!(semver_of("2.0-rc1").unwrap().to_string(), "2.0.0-rc1");
        assert!(semver_of("2024-01-02").is_none());
        assert!(semver_of("1.2.3.4").is_none());
        assert!(semver_of("latest").is_none());
    }

    #[test]
    fn selector_constraint_and_filter() {
        let sel = Selector::new(Some(">=1.3, <2"), None).unwrap();
        assert!(sel.accepts("v1.3"));
        assert!(sel.accepts("1.3.1"));
        assert!(!sel.accepts("1.2.13"));
        assert!(!sel.accepts("2.0.0"));
        assert!(!sel.accepts("1.4.0-rc1"));
        assert!(!sel.accepts("nightly"));
        let sel = Selector::new(None, Some(r"^\d{4}\.\d{2}$")).unwrap();
        assert!(sel.accepts("2024.01"));
        assert!(!sel.accepts("2024.01-beta"));
        assert!(Selector::new(None, None).unwrap().accepts("anything"));
    }

    #[test]
    fn known_versions_file() {
        let k = parse_known_versions("1.0.0\n# old ones\n\n 1.1.0  # patched\n");
        assert_eq!(k.len(), 2);
        assert!(k.contains("1.1.0"));
    }

    #[test]
    fn first_poll_is_quiet_without_known_versions() {
        let sel = Selector::new(None, None).unwrap();
        let found = s(&["1.0", "1.1", "1.1", " "]);
        let d = decide(&found, &HashSet::new(), None, true, &sel);
        assert_eq!(d.quiet, s(&["1.0", "1.1"]));
        assert!(d.trigger.is_empty());
        // Later polls trigger what is not seen yet.
        let seen: HashSet<String> = d.quiet.into_iter().collect();
        let d = decide(&s(&["1.2", "1.1"]), &seen, None, false, &sel);
        assert_eq!(d.trigger, s(&["1.2"]));
        assert!(d.quiet.is_empty());
    }

    #[test]
    fn known_versions_trigger_the_rest_from_the_first_poll() {
        let sel = Selector::new(Some(">=1"), None).unwrap();
        let known = parse_known_versions("1.0\n");
        let d = decide(
            &s(&["0.9", "1.0", "1.1"]),
            &HashSet::new(),
            Some(&known),
            true,
            &sel,
        );
        assert_eq!(d.quiet, s(&["1.0"]));
        assert_eq!(d.trigger, s(&["1.1"]));
    }
}
