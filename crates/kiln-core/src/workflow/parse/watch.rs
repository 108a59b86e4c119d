//! `on.watch` entries (a kiln extension): each a mapping naming a source and how to pick
//! versions from it. Every key is checked here — unknown keys, keys that belong to another
//! source kind, constraints, regular expressions, JSON pointers and durations — so a stored
//! watch always evaluates ([`crate::watch`]).

use std::collections::HashMap;
use std::time::Duration;

use super::super::yaml::{Kind, Node};
use super::{Cx, join};
use crate::watch::{
    self, DEFAULT_COMMAND_TIMEOUT, DEFAULT_INTERVAL, MAX_COMMAND_TIMEOUT, MIN_INTERVAL,
    SOURCE_KINDS, WatchEntry, WatchSource,
};
use crate::workflow::Pos;

/// The keys every source kind takes.
const COMMON: &[&str] = &[
    "name",
    "source",
    "constraint",
    "filter",
    "known-versions",
    "interval",
];

/// The keys of one source kind, beyond [`COMMON`].
fn source_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "github-releases" | "github-tags" => &["repository"],
        "pypi" | "npm" | "crates" => &["package"],
        "url" => &["url", "regex", "json-pointer"],
        "command" => &["command", "timeout"],
        _ => &[],
    }
}

impl Cx<'_> {
    pub(super) fn watches(&mut self, node: &Node, path: &str) -> Vec<WatchEntry> {
        let Kind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                path,
                format!(
                    "`watch` must be a list of `- name: ...` entries, not {}",
                    node.describe()
                ),
            );
            return Vec::new();
        };
        let mut out: Vec<WatchEntry> = Vec::new();
        let mut names: HashMap<String, Pos> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(entry) = self.watch(item, &p) else {
                continue;
            };
            if let Some(first) = names.get(&entry.name) {
                self.error(
                    item.pos,
                    &join(&p, "name"),
                    format!(
                        "the watch name `{}` is already used (line {}); names are unique in a workflow",
                        entry.name, first.line
                    ),
                );
                continue;
            }
            names.insert(entry.name.clone(), item.pos);
            out.push(entry);
        }
        out
    }

    fn watch(&mut self, item: &Node, p: &str) -> Option<WatchEntry> {
        let entries = self.mapping(item, p, "a watch entry")?;
        let mut text: HashMap<String, (String, Pos)> = HashMap::new();
        let mut ok = true;
        for (key, _, v) in &entries {
            let kp = join(p, key);
            match self.scalar_text(v, &kp, &format!("`{key}`")) {
                Some(t) => {
                    text.insert(key.clone(), (t, v.pos));
                }
                None => ok = false,
            }
        }
        let kind = match text.get("source") {
            Some((k, _)) if SOURCE_KINDS.contains(&k.as_str()) => Some(k.clone()),
            Some((k, pos)) => {
                self.error(
                    *pos,
                    &join(p, "source"),
                    format!(
                        "unknown watch source `{k}`; use one of {}",
                        SOURCE_KINDS.join(", ")
                    ),
                );
                None
            }
            None => {
                self.error(item.pos, p, "Required property is missing: `source`");
                None
            }
        };
        // Unknown keys, and keys of another source kind, are errors: a typo must not turn
        // into a watch that silently polls something else.
        for (key, k, _) in &entries {
            let allowed = COMMON.contains(&key.as_str())
                || kind
                    .as_deref()
                    .is_some_and(|kd| source_keys(kd).contains(&key.as_str()));
            if !allowed {
                let owner = SOURCE_KINDS
                    .iter()
                    .find(|kd| source_keys(kd).contains(&key.as_str()));
                match (owner, &kind) {
                    (Some(o), Some(kd)) => self.error(
                        k.pos,
                        &join(p, key),
                        format!("`{key}` belongs to `source: {o}`, not `source: {kd}`"),
                    ),
                    (Some(_), None) => {}
                    (None, _) => self.unexpected(k, &join(p, key)),
                }
                ok = false;
            }
        }
        let name = match text.get("name") {
            Some((n, _)) if super::is_valid_id(n) => Some(n.clone()),
            Some((n, pos)) => {
                self.error(
                    *pos,
                    &join(p, "name"),
                    format!(
                        "`{n}` is not a valid watch name; use letters, digits, `-` and `_`, starting with a letter or `_`"
                    ),
                );
                None
            }
            None => {
                self.error(item.pos, p, "Required property is missing: `name`");
                None
            }
        };
        let need = |cx: &mut Self, key: &str| -> Option<String> {
            match text.get(key) {
                Some((v, _)) if !v.trim().is_empty() => Some(v.trim().to_owned()),
                Some((_, pos)) => {
                    cx.error(*pos, &join(p, key), format!("`{key}` must not be empty"));
                    None
                }
                None => {
                    cx.error(
                        item.pos,
                        p,
                        format!("Required property is missing: `{key}`"),
                    );
                    None
                }
            }
        };
        let source = match kind.as_deref() {
            Some("github-releases" | "github-tags") => {
                let repository = need(self, "repository")?;
                let parts: Vec<&str> = repository.split('/').collect();
                let good = parts.len() == 2
                    && parts.iter().all(|s| {
                        !s.is_empty()
                            && *s != "."
                            && *s != ".."
                            && s.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    });
                if !good {
                    let pos = text["repository"].1;
                    self.error(
                        pos,
                        &join(p, "repository"),
                        format!("`{repository}` is not a GitHub repository; write OWNER/NAME"),
                    );
                    return None;
                }
                if kind.as_deref() == Some("github-releases") {
                    WatchSource::GithubReleases { repository }
                } else {
                    WatchSource::GithubTags { repository }
                }
            }
            Some(k @ ("pypi" | "npm" | "crates")) => {
                let package = need(self, "package")?;
                let good = !package.contains(['/', '?', '#', ' ', '\\'])
                    || (k == "npm"
                        && package.starts_with('@')
                        && package.matches('/').count() == 1
                        && !package.contains(['?', '#', ' ', '\\']));
                if !good || package.starts_with('.') {
                    let pos = text["package"].1;
                    self.error(
                        pos,
                        &join(p, "package"),
                        format!("`{package}` is not a {k} package name"),
                    );
                    return None;
                }
                match k {
                    "pypi" => WatchSource::Pypi { package },
                    "npm" => WatchSource::Npm { package },
                    _ => WatchSource::Crates { package },
                }
            }
            Some("url") => {
                let url = need(self, "url")?;
                let pos = text["url"].1;
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    self.error(
                        pos,
                        &join(p, "url"),
                        format!("`{url}` is not an http:// or https:// URL"),
                    );
                    ok = false;
                }
                let regex = text.get("regex").map(|(r, _)| r.clone());
                let json_pointer = text.get("json-pointer").map(|(j, _)| j.clone());
                match (&regex, &json_pointer) {
                    (Some(_), Some(_)) => {
                        self.error(
                            item.pos,
                            p,
                            "`regex` and `json-pointer` cannot be used together; give one",
                        );
                        ok = false;
                    }
                    (None, None) => {
                        self.error(
                            item.pos,
                            p,
                            "`source: url` needs `regex` (a regular expression; group 1 or the whole match is the version) or `json-pointer` (to an array or a string)",
                        );
                        ok = false;
                    }
                    _ => {}
                }
                if let Some(r) = &regex
                    && let Err(e) = watch::check_regex(r)
                {
                    self.error(text["regex"].1, &join(p, "regex"), e);
                    ok = false;
                }
                if let Some(j) = &json_pointer
                    && let Err(e) = watch::check_json_pointer(j)
                {
                    self.error(text["json-pointer"].1, &join(p, "json-pointer"), e);
                    ok = false;
                }
                WatchSource::Url {
                    url,
                    regex,
                    json_pointer,
                }
            }
            Some("command") => {
                let command = need(self, "command")?;
                let timeout = match text.get("timeout") {
                    Some((t, pos)) => match watch::parse_duration(t) {
                        Ok(d) if d.is_zero() || d > MAX_COMMAND_TIMEOUT => {
                            self.error(
                                *pos,
                                &join(p, "timeout"),
                                format!(
                                    "`timeout` is between 1s and {}m",
                                    MAX_COMMAND_TIMEOUT.as_secs() / 60
                                ),
                            );
                            ok = false;
                            DEFAULT_COMMAND_TIMEOUT
                        }
                        Ok(d) => d,
                        Err(e) => {
                            self.error(*pos, &join(p, "timeout"), e);
                            ok = false;
                            DEFAULT_COMMAND_TIMEOUT
                        }
                    },
                    None => DEFAULT_COMMAND_TIMEOUT,
                };
                WatchSource::Command {
                    command,
                    timeout_secs: timeout.as_secs(),
                }
            }
            _ => return None,
        };
        let constraint = text.get("constraint").map(|(c, _)| c.clone());
        if let Some(c) = &constraint
            && let Err(e) = watch::check_constraint(c)
        {
            self.error(text["constraint"].1, &join(p, "constraint"), e);
            ok = false;
        }
        let filter = text.get("filter").map(|(f, _)| f.clone());
        if let Some(f) = &filter
            && let Err(e) = watch::check_regex(f)
        {
            self.error(text["filter"].1, &join(p, "filter"), e);
            ok = false;
        }
        let known_versions = text.get("known-versions").map(|(k, _)| k.clone());
        if let Some(k) = &known_versions
            && (k.is_empty() || k.starts_with('/') || k.split(['/', '\\']).any(|s| s == ".."))
        {
            self.error(
                text["known-versions"].1,
                &join(p, "known-versions"),
                format!("`{k}` is not a path inside the project (relative, without `..`)"),
            );
            ok = false;
        }
        let interval = match text.get("interval") {
            Some((t, pos)) => match watch::parse_duration(t) {
                Ok(d) if d < MIN_INTERVAL => {
                    self.error(
                        *pos,
                        &join(p, "interval"),
                        format!(
                            "`interval` is at least {}m, not `{t}`",
                            MIN_INTERVAL.as_secs() / 60
                        ),
                    );
                    ok = false;
                    DEFAULT_INTERVAL
                }
                Ok(d) => d,
                Err(e) => {
                    self.error(*pos, &join(p, "interval"), e);
                    ok = false;
                    Duration::ZERO
                }
            },
            None => DEFAULT_INTERVAL,
        };
        if !ok {
            return None;
        }
        Some(WatchEntry {
            name: name?,
            source,
            constraint,
            filter,
            known_versions,
            interval_secs: interval.as_secs(),
            pos: item.pos,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::watch::WatchSource;
    use crate::workflow::{Diagnostic, Workflow, parse_workflow};

    const JOBS: &str = "jobs:\n  a:\n    runs-on: x\n    steps: [{run: x}]\n";

    fn ok(on: &str) -> Workflow {
        match parse_workflow("wf.yml", &format!("{on}{JOBS}")) {
            Ok(wf) => wf,
            Err(d) => panic!("expected a valid workflow, got:\n{d}"),
        }
    }

    fn errs(on: &str) -> Vec<Diagnostic> {
        match parse_workflow("wf.yml", &format!("{on}{JOBS}")) {
            Ok(wf) => panic!("expected errors, got {wf:#?}"),
            Err(d) => d.errors().cloned().collect(),
        }
    }

    fn find<'a>(diags: &'a [Diagnostic], needle: &str) -> &'a Diagnostic {
        diags
            .iter()
            .find(|d| d.message.contains(needle))
            .unwrap_or_else(|| panic!("no diagnostic containing {needle:?} in {diags:#?}"))
    }

    #[test]
    fn every_source_kind_parses() {
        let wf = ok(r#"on:
  watch:
    - name: zlib
      source: github-releases
      repository: madler/zlib
      constraint: ">=1.3, <2"
      known-versions: versions/zlib.txt
      interval: 2h
    - name: tags
      source: github-tags
      repository: o/r
    - {name: req, source: pypi, package: requests, interval: 1m}
    - {name: left-pad, source: npm, package: "@scope/left-pad"}
    - {name: serde, source: crates, package: serde, filter: '^1\.'}
    - name: page
      source: url
      url: https://example.com/downloads
      regex: 'foo-([0-9.]+)\.tar\.gz'
    - name: api
      source: url
      url: http://example.com/api.json
      json-pointer: /versions
    - name: scan
      source: command
      command: ./scan.sh
      timeout: 30s
"#);
        assert!(wf.on.events.contains_key("watch"));
        let w = &wf.on.watches;
        assert_eq!(w.len(), 8);
        assert_eq!(w[0].name, "zlib");
        assert_eq!(
            w[0].source,
            WatchSource::GithubReleases {
                repository: "madler/zlib".into()
            }
        );
        assert_eq!(w[0].constraint.as_deref(), Some(">=1.3, <2"));
        assert_eq!(w[0].known_versions.as_deref(), Some("versions/zlib.txt"));
        assert_eq!(w[0].interval_secs, 7200);
        assert_eq!(w[0].pos.line, 3);
        assert_eq!(w[1].interval_secs, 3600);
        assert_eq!(w[2].interval_secs, 60);
        assert_eq!(w[3].source.kind(), "npm");
        assert_eq!(w[4].filter.as_deref(), Some(r"^1\."));
        assert_eq!(
            w[6].source,
            WatchSource::Url {
                url: "http://example.com/api.json".into(),
                regex: None,
                json_pointer: Some("/versions".into())
            }
        );
        assert_eq!(
            w[7].source,
            WatchSource::Command {
                command: "./scan.sh".into(),
                timeout_secs: 30
            }
        );
        // The stored form round-trips.
        let json = serde_json::to_string(&w[5].source).unwrap();
        assert!(json.contains(r#""kind":"url""#), "{json}");
        let back: WatchSource = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w[5].source);
    }

    #[test]
    fn bad_entries_name_file_line_and_key() {
        let diags = errs(
            r#"on:
  watch:
    - name: a
      source: svn
    - name: b
      source: pypi
      repository: x/y
    - name: c
      source: github-tags
      repository: not-a-repo
    - name: d
      source: crates
      package: serde
      constraint: "=>1"
    - name: e
      source: url
      url: https://x.example/
    - name: f
      source: npm
      package: x
      interval: 1m
    - name: f
      source: npm
      package: y
    - source: npm
      package: z
    - name: g
      source: url
      url: ftp://x/
      regex: "("
    - name: h
      source: command
      command: x
      colour: red
    - name: i
      source: npm
      package: x
      interval: 10s
"#,
        );
        let d = find(&diags, "unknown watch source `svn`");
        assert_eq!((d.file.as_str(), d.pos.line), ("wf.yml", 4));
        assert_eq!(d.path, "on.watch[0].source");
        let d = find(&diags, "`repository` belongs to `source: github-releases`");
        assert_eq!((d.pos.line, d.path.as_str()), (7, "on.watch[1].repository"));
        let d = find(&diags, "not a GitHub repository");
        assert_eq!(
            (d.pos.line, d.path.as_str()),
            (10, "on.watch[2].repository")
        );
        let d = find(&diags, "not a semver constraint");
        assert_eq!(
            (d.pos.line, d.path.as_str()),
            (14, "on.watch[3].constraint")
        );
        let d = find(&diags, "needs `regex`");
        assert_eq!((d.pos.line, d.path.as_str()), (15, "on.watch[4]"));
        let d = find(&diags, "`interval` is at least 1m");
        assert_eq!((d.pos.line, d.path.as_str()), (38, "on.watch[10].interval"));
        let d = find(&diags, "the watch name `f` is already used (line 18)");
        assert_eq!((d.pos.line, d.path.as_str()), (22, "on.watch[6].name"));
        let d = find(&diags, "Required property is missing: `name`");
        assert_eq!(d.path, "on.watch[7]");
        let d = find(&diags, "not an http:// or https:// URL");
        assert_eq!(d.path, "on.watch[8].url");
        let d = find(&diags, "not a regular expression");
        assert_eq!((d.pos.line, d.path.as_str()), (30, "on.watch[8].regex"));
        let d = find(&diags, "Unexpected value 'colour'");
        assert_eq!((d.pos.line, d.path.as_str()), (34, "on.watch[9].colour"));
    }

    #[test]
    fn watch_must_be_a_list() {
        let diags = errs("on:\n  watch: {name: x}\n");
        let d = find(&diags, "`watch` must be a list");
        assert_eq!(d.path, "on.watch");
    }
}
