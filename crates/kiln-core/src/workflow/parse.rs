//! The workflow parser: YAML text in, a [`Workflow`] (or [`Action`]) out, or every problem in
//! the file at once.
//!
//! It walks the node tree of [`super::yaml`] by hand rather than deserialising with serde,
//! because the point of a parser for people's CI files is its errors: each one names file,
//! line, column and key path (`jobs.build.steps[2].uses`), and one pass reports them all —
//! syntax, wrong types, unknown keys (as GitHub does), missing `steps`, bad `needs`, cycles,
//! expressions that do not parse, and constructs kiln deliberately refuses (`services`,
//! `container`, reusable workflows, `docker://` steps). Keys that change nothing here
//! (`permissions`, events kiln never receives, `environment.url`) are warnings.
//!
//! Not here: evaluating anything (values stay as written), or refusing remote actions — a
//! dry run still plans those workflows; [`crate::plan::check_runnable`] refuses them before a
//! run.

use std::collections::{BTreeSet, HashMap};

use indexmap::IndexMap;
use saphyr_parser::ScalarStyle;
use serde_json::{Map, Value};

use super::yaml::{self, Kind, Node};
use super::{
    ARTIFACT_META_FIELDS, Action, ArtifactSpec, CatchUp, Concurrency, Defaults, Diagnostic,
    Diagnostics, EnvironmentRef, EventFilter, IfNoFiles, InputKind, InputSpec, Job, Packages, Pos,
    ScheduleEntry, Severity, Step, StepAction, Strategy, Triggers, UsesKind, Workflow,
};
use crate::expr::{self, Template};

/// Events kiln starts runs for (from webhooks, cron, the API or `kiln run --event`).
const EVENTS: &[&str] = &[
    "push",
    "pull_request",
    "pull_request_target",
    "schedule",
    "workflow_dispatch",
    "release",
    "create",
    "delete",
    "watch",
];

/// GitHub events kiln never receives: accepted with a warning so real workflows move over.
const FOREIGN_EVENTS: &[&str] = &[
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "deployment",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "gollum",
    "issue_comment",
    "issues",
    "label",
    "merge_group",
    "milestone",
    "page_build",
    "public",
    "pull_request_review",
    "pull_request_review_comment",
    "registry_package",
    "repository_dispatch",
    "status",
    "watch",
    "workflow_call",
    "workflow_run",
];

/// Root names an expression may read (lowercase); anything else is GitHub's
/// "Unrecognized named-value".
const CONTEXTS: &[&str] = &[
    "github", "env", "vars", "secrets", "inputs", "matrix", "needs", "steps", "job", "jobs",
    "runner", "strategy",
];

/// Parse one workflow file. `file` is how diagnostics name it.
pub fn parse_workflow(file: &str, source: &str) -> Result<Workflow, Diagnostics> {
    let mut cx = Cx::new(file, source);
    let wf = cx.load().and_then(|root| cx.workflow(&root));
    cx.finish(wf)
}

/// Parse one composite action file (`action.yml`).
pub fn parse_action(file: &str, source: &str) -> Result<Action, Diagnostics> {
    let mut cx = Cx::new(file, source);
    let action = cx.load().and_then(|root| cx.action(&root));
    cx.finish(action)
}

/// Whether `id` is a valid job or step id by GitHub's rule: a letter or `_`, then letters,
/// digits, `-` and `_`.
pub fn is_valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The parse state: the file, its lines (to place expression errors) and what was found.
struct Cx<'s> {
    file: &'s str,
    source: &'s str,
    lines: Vec<&'s str>,
    diags: Vec<Diagnostic>,
}

impl<'s> Cx<'s> {
    fn new(file: &'s str, source: &'s str) -> Self {
        Cx {
            file,
            source,
            lines: source.lines().collect(),
            diags: Vec::new(),
        }
    }

    fn load(&mut self) -> Option<Node> {
        match yaml::load(self.source) {
            Ok(Some(root)) => Some(root),
            Ok(None) => {
                self.error(Pos { line: 1, column: 1 }, "", "the file is empty");
                None
            }
            Err(e) => {
                self.error(e.pos, "", e.message);
                None
            }
        }
    }

    /// The result, or every diagnostic (errors and warnings, in file order) if any is an
    /// error.
    fn finish<T>(mut self, value: Option<T>) -> Result<T, Diagnostics> {
        self.diags
            .sort_by_key(|d| (d.pos.line, d.pos.column, d.severity == Severity::Warning));
        match value {
            Some(v) if !self.diags.iter().any(|d| d.severity == Severity::Error) => Ok(v),
            _ => Err(Diagnostics(self.diags)),
        }
    }

    fn warnings(&self) -> Vec<Diagnostic> {
        let mut w: Vec<Diagnostic> = self
            .diags
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .cloned()
            .collect();
        w.sort_by_key(|d| (d.pos.line, d.pos.column));
        w
    }

    fn push(&mut self, severity: Severity, pos: Pos, path: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_owned(),
            pos,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.push(Severity::Error, pos, path, message);
    }

    fn warn(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.push(Severity::Warning, pos, path, message);
    }

    fn unexpected(&mut self, key: &Node, path: &str) {
        self.error(
            key.pos,
            path,
            format!("Unexpected value '{}'", key.key_text()),
        );
    }

    // ---- shapes -------------------------------------------------------------------------

    /// The entries of a mapping (keys as text, duplicates reported and dropped), or an error
    /// naming what was expected.
    fn mapping<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
    ) -> Option<Vec<(String, &'n Node, &'n Node)>> {
        let Kind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                path,
                format!("{what} must be a mapping, not {}", node.describe()),
            );
            return None;
        };
        let mut seen: HashMap<String, Pos> = HashMap::new();
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let key = k.key_text();
            if let Some(first) = seen.get(&key) {
                self.error(
                    k.pos,
                    &join(path, &key),
                    format!("'{key}' is already defined (line {})", first.line),
                );
                continue;
            }
            seen.insert(key.clone(), k.pos);
            out.push((key, k, v));
        }
        Some(out)
    }

    /// A scalar's text as written (`~`/empty → `""`); a list or mapping is an error.
    fn scalar_text(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        match node.as_scalar() {
            Some(s) if s.typed().is_null() => Some(String::new()),
            Some(s) => Some(s.text.clone()),
            None => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "{what} must be a string, number or boolean, not {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    /// A string-like scalar whose `${{ }}` pieces must parse.
    fn template(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        let text = self.scalar_text(node, path, what)?;
        self.check_template(node, &text, path);
        Some(text)
    }

    /// A string or a list of strings (`needs`, `branches`, `types`, …).
    fn string_list(&mut self, node: &Node, path: &str, what: &str) -> Vec<(String, Pos)> {
        match &node.kind {
            Kind::Scalar(_) => self
                .scalar_text(node, path, what)
                .map(|s| vec![(s, node.pos)])
                .unwrap_or_default(),
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let p = format!("{path}[{i}]");
                    let s = match item.as_scalar() {
                        Some(_) => self.scalar_text(item, &p, what)?,
                        None => {
                            self.error(
                                item.pos,
                                &p,
                                format!(
                                    "each entry of {what} must be a string, not {}",
                                    item.describe()
                                ),
                            );
                            return None;
                        }
                    };
                    Some((s, item.pos))
                })
                .collect(),
            Kind::Map(_) => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "{what} must be a string or a list of strings, not {}",
                        node.describe()
                    ),
                );
                Vec::new()
            }
        }
    }

    /// A mapping of name → template (`env`, `with`, `outputs`).
    fn string_map(&mut self, node: &Node, path: &str, what: &str) -> IndexMap<String, String> {
        let mut out = IndexMap::new();
        if node.as_scalar().is_some_and(|s| s.typed().is_null()) {
            return out;
        }
        if let Some(s) = node.as_scalar()
            && s.text.contains("${{")
            && what == "env"
        {
            self.error(
                node.pos,
                path,
                "`env` as one expression is not supported; list the variables one by one",
            );
            return out;
        }
        let Some(entries) = self.mapping(node, path, &format!("`{what}`")) else {
            return out;
        };
        for (key, _, value) in entries {
            let p = join(path, &key);
            if let Some(v) = self.template(value, &p, &format!("the `{what}` value `{key}`")) {
                out.insert(key, v);
            }
        }
        out
    }

    /// A bool, or an expression string (`continue-on-error`, `fail-fast`).
    fn bool_or_expr(&mut self, node: &Node, path: &str, key: &str) -> Option<Value> {
        let v = self.typed_or_expr(node, path, key, "a boolean", |v| v.is_boolean())?;
        Some(v)
    }

    /// A number, or an expression string (`timeout-minutes`, `max-parallel`).
    fn number_or_expr(&mut self, node: &Node, path: &str, key: &str) -> Option<Value> {
        self.typed_or_expr(node, path, key, "a number", |v| v.is_number())
    }

    fn typed_or_expr(
        &mut self,
        node: &Node,
        path: &str,
        key: &str,
        kind: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let v = node.to_value();
        if ok(&v) {
            return Some(v);
        }
        if let Value::String(s) = &v
            && s.contains("${{")
        {
            self.check_template(node, s, path);
            return Some(v);
        }
        self.error(
            node.pos,
            path,
            format!(
                "`{key}` must be {kind} or an expression, not {}",
                node.describe()
            ),
        );
        None
    }

    // ---- expressions ----------------------------------------------------------------------

    fn check_template(&mut self, node: &Node, text: &str, path: &str) {
        if !text.contains("${{") {
            return;
        }
        match Template::parse(text) {
            Ok(t) => self.check_contexts(&t.contexts(), node, path),
            Err(e) => {
                let pos = self.expr_pos(node, text, e.offset);
                self.error(pos, path, format!("invalid expression: {}", e.message));
            }
        }
    }

    /// An `if:`: an expression with or without `${{ }}`.
    fn condition(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.scalar_text(node, path, "`if`")?;
        if text.contains("${{") {
            self.check_template(node, &text, path);
        } else if !text.trim().is_empty() {
            match expr::parse(&text) {
                Ok(e) => self.check_contexts(&e.contexts(), node, path),
                Err(e) => {
                    let pos = self.expr_pos(node, &text, e.offset);
                    self.error(pos, path, format!("invalid expression: {}", e.message));
                }
            }
        }
        Some(text)
    }

    fn check_contexts(&mut self, names: &BTreeSet<String>, node: &Node, path: &str) {
        for name in names {
            if !CONTEXTS.contains(&name.as_str()) {
                self.error(
                    node.pos,
                    path,
                    format!("invalid expression: Unrecognized named-value: '{name}'"),
                );
            }
        }
    }

    /// Check every string inside a structured value (matrix, `with` of a job, …).
    fn check_value_templates(&mut self, node: &Node, path: &str) {
        match &node.kind {
            Kind::Scalar(s) => {
                if s.style != ScalarStyle::Plain || matches!(s.typed(), Value::String(_)) {
                    let text = s.text.clone();
                    self.check_template(node, &text, path);
                }
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.check_value_templates(item, &format!("{path}[{i}]"));
                }
            }
            Kind::Map(entries) => {
                for (k, v) in entries {
                    self.check_value_templates(v, &join(path, &k.key_text()));
                }
            }
        }
    }

    /// Where byte `offset` of a scalar's value stands in the file: exact for one-line plain
    /// and quoted scalars and for literal blocks (`run: |`), else the scalar's start.
    fn expr_pos(&self, node: &Node, text: &str, offset: usize) -> Pos {
        let Some(s) = node.as_scalar() else {
            return node.pos;
        };
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let col = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match s.style {
            ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted
                if !text.contains('\n') =>
            {
                let quote = usize::from(s.style != ScalarStyle::Plain);
                let Some(line) = self.lines.get(node.pos.line as usize - 1) else {
                    return node.pos;
                };
                let start = node.pos.column as usize - 1 + quote;
                let rest: String = line.chars().skip(start).collect();
                // Escapes or doubled quotes before the offset would shift columns.
                if rest.starts_with(before) {
                    Pos {
                        line: node.pos.line,
                        column: col(start + before.chars().count() + 1),
                    }
                } else {
                    node.pos
                }
            }
            ScalarStyle::Literal => {
                let k = before.matches('\n').count();
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let content = text[line_start..].split('\n').next().unwrap_or("");
                let line_no = node.pos.line as usize + k;
                match self.lines.get(line_no - 1) {
                    Some(src) if src.ends_with(content) => {
                        let indent = src[..src.len() - content.len()].chars().count();
                        Pos {
                            line: col(line_no),
                            column: col(indent + before[line_start..].chars().count() + 1),
                        }
                    }
                    _ => node.pos,
                }
            }
            _ => node.pos,
        }
    }

    // ---- the workflow ---------------------------------------------------------------------

    fn workflow(&mut self, root: &Node) -> Option<Workflow> {
        let entries = self.mapping(root, "", "a workflow")?;
        let mut wf = Workflow {
            file: self.file.to_owned(),
            name: None,
            run_name: None,
            on: Triggers::default(),
            env: IndexMap::new(),
            defaults: Defaults::default(),
            concurrency: None,
            jobs: IndexMap::new(),
            warnings: Vec::new(),
        };
        let mut has_on = false;
        let mut jobs_node = None;
        for (key, k, v) in entries {
            let path = key.as_str();
            match path {
                "name" => wf.name = self.template(v, path, "`name`"),
                "run-name" => wf.run_name = self.template(v, path, "`run-name`"),
                "on" => {
                    has_on = true;
                    wf.on = self.triggers(v);
                }
                "env" => wf.env = self.string_map(v, path, "env"),
                "defaults" => wf.defaults = self.defaults(v, path),
                "concurrency" => wf.concurrency = self.concurrency(v, path),
                "permissions" => self.warn(
                    k.pos,
                    path,
                    "`permissions` has no effect in kiln (there is no GITHUB_TOKEN to scope)",
                ),
                "jobs" => jobs_node = Some((k, v)),
                _ => self.unexpected(k, path),
            }
        }
        if !has_on {
            self.error(root.pos, "on", "Required property is missing: `on`");
        }
        match jobs_node {
            Some((_, v)) => wf.jobs = self.jobs(v),
            None => self.error(root.pos, "jobs", "Required property is missing: `jobs`"),
        }
        wf.warnings = self.warnings();
        Some(wf)
    }

    fn triggers(&mut self, node: &Node) -> Triggers {
        let mut t = Triggers::default();
        match &node.kind {
            Kind::Scalar(_) | Kind::Seq(_) => {
                for (event, pos) in self.string_list(node, "on", "`on`") {
                    if self.event_known(&event, pos, &join("on", &event)) {
                        t.events.insert(event, EventFilter::default());
                    }
                }
            }
            Kind::Map(_) => {
                let Some(entries) = self.mapping(node, "on", "`on`") else {
                    return t;
                };
                for (event, k, v) in entries {
                    let path = join("on", &event);
                    if !self.event_known(&event, k.pos, &path) {
                        continue;
                    }
                    let filter = match event.as_str() {
                        "schedule" => {
                            t.schedule_entries = self.schedules(v, &path);
                            t.schedules =
                                t.schedule_entries.iter().map(|e| e.cron.clone()).collect();
                            EventFilter::default()
                        }
                        "workflow_dispatch" => {
                            t.dispatch_inputs = self.dispatch(v, &path);
                            EventFilter::default()
                        }
                        "watch" => {
                            t.watches = self.watches(v, &path);
                            EventFilter::default()
                        }
                        _ => self.event_filter(&event, v, &path),
                    };
                    t.events.insert(event, filter);
                }
            }
        }
        t
    }

    /// Whether kiln acts on `event`; warns for GitHub events it never receives, errors for
    /// names that are no event at all.
    fn event_known(&mut self, event: &str, pos: Pos, path: &str) -> bool {
        if EVENTS.contains(&event) {
            true
        } else if FOREIGN_EVENTS.contains(&event) {
            self.warn(
                pos,
                path,
                format!("the event `{event}` never reaches kiln; this trigger is ignored"),
            );
            false
        } else {
            self.error(pos, path, format!("unknown event `{event}`"));
            false
        }
    }

    fn event_filter(&mut self, event: &str, node: &Node, path: &str) -> EventFilter {
        let mut f = EventFilter::default();
        if node.as_scalar().is_some_and(|s| s.typed().is_null()) {
            return f;
        }
        let Some(entries) = self.mapping(node, path, &format!("`on.{event}`")) else {
            return f;
        };
        let refs = matches!(event, "push" | "pull_request" | "pull_request_target");
        let mut firsts: HashMap<&'static str, Pos> = HashMap::new();
        for (key, k, v) in entries {
            let p = join(path, &key);
            let what = format!("`{key}`");
            let list = |cx: &mut Self| -> Vec<String> {
                cx.string_list(v, &p, &what)
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect()
            };
            match key.as_str() {
                "types" => f.types = list(self),
                "branches" if refs => {
                    firsts.insert("branches", k.pos);
                    f.branches = list(self);
                }
                "branches-ignore" if refs => {
                    firsts.insert("branches-ignore", k.pos);
                    f.branches_ignore = list(self);
                }
                "tags" if refs => {
                    firsts.insert("tags", k.pos);
                    f.tags = list(self);
                }
                "tags-ignore" if refs => {
                    firsts.insert("tags-ignore", k.pos);
                    f.tags_ignore = list(self);
                }
                "paths" if refs => {
                    firsts.insert("paths", k.pos);
                    f.paths = list(self);
                }
                "paths-ignore" if refs => {
                    firsts.insert("paths-ignore", k.pos);
                    f.paths_ignore = list(self);
                }
                _ => self.unexpected(k, &p),
            }
        }
        // GitHub refuses a filter and its `-ignore` twin together: it cannot tell which wins.
        for f in ["branches", "tags", "paths"] {
            let ignore = format!("{f}-ignore");
            if firsts.contains_key(f)
                && let Some(pos) = firsts.get(ignore.as_str())
            {
                self.error(
                    *pos,
                    &join(path, &ignore),
                    format!("`{f}` and `{ignore}` cannot be used together for one event"),
                );
            }
        }
        f
    }

    fn schedules(&mut self, node: &Node, path: &str) -> Vec<ScheduleEntry> {
        let Kind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                path,
                format!(
                    "`schedule` must be a list of `- cron: ...` entries, not {}",
                    node.describe()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(entries) = self.mapping(item, &p, "a schedule entry") else {
                continue;
            };
            let mut cron = None;
            let mut timezone = None;
            let mut catch_up = CatchUp::default();
            let mut ok = true;
            for (key, k, v) in entries {
                let kp = join(&p, &key);
                match key.as_str() {
                    "cron" => {
                        cron = self.scalar_text(v, &kp, "`cron`");
                        if let Some(c) = &cron
                            && let Err(e) = crate::cron::parse_cron(c)
                        {
                            self.error(v.pos, &kp, e.to_string());
                            ok = false;
                        }
                    }
                    // GitHub's newer key; kiln evaluates the pattern in that zone, daylight
                    // saving included (see `crate::cron`).
                    "timezone" => {
                        timezone = self.scalar_text(v, &kp, "`timezone`");
                        if let Some(z) = &timezone
                            && let Err(e) = crate::cron::parse_zone(z)
                        {
                            self.error(v.pos, &kp, e.to_string());
                            ok = false;
                        }
                    }
                    // kiln's key: what a fire missed while no server ran does.
                    "catch-up" => match self.scalar_text(v, &kp, "`catch-up`") {
                        Some(text) => match CatchUp::parse(&text) {
                            Some(c) => catch_up = c,
                            None => {
                                self.error(
                                    v.pos,
                                    &kp,
                                    format!("`catch-up` is `one` or `none`, not `{text}`"),
                                );
                                ok = false;
                            }
                        },
                        None => ok = false,
                    },
                    _ => self.unexpected(k, &kp),
                }
            }
            match cron {
                Some(cron) if ok => out.push(ScheduleEntry {
                    cron,
                    timezone,
                    catch_up,
                    pos: item.pos,
                }),
                Some(_) => {}
                None => self.error(item.pos, &p, "Required property is missing: `cron`"),
            }
        }
        out
    }

    fn dispatch(&mut self, node: &Node, path: &str) -> IndexMap<String, InputSpec> {
        let mut out = IndexMap::new();
        if node.as_scalar().is_some_and(|s| s.typed().is_null()) {
            return out;
        }
        let Some(entries) = self.mapping(node, path, "`on.workflow_dispatch`") else {
            return out;
        };
        for (key, k, v) in entries {
            let p = join(path, &key);
            if key != "inputs" {
                self.unexpected(k, &p);
                continue;
            }
            if v.as_scalar().is_some_and(|s| s.typed().is_null()) {
                continue;
            }
            let Some(inputs) = self.mapping(v, &p, "`inputs`") else {
                continue;
            };
            for (name, _, spec) in inputs {
                let ip = join(&p, &name);
                if let Some(s) = self.input(spec, &ip) {
                    out.insert(name, s);
                }
            }
        }
        out
    }

    fn input(&mut self, node: &Node, path: &str) -> Option<InputSpec> {
        let mut spec = InputSpec {
            description: None,
            required: false,
            default: None,
            kind: InputKind::String,
        };
        if node.as_scalar().is_some_and(|s| s.typed().is_null()) {
            return Some(spec);
        }
        let entries = self.mapping(node, path, "an input")?;
        let mut kind = None;
        let mut options = None;
        let mut default_node = None;
        for (key, k, v) in entries {
            let p = join(path, &key);
            match key.as_str() {
                "description" => spec.description = self.scalar_text(v, &p, "`description`"),
                "required" => match v.to_value() {
                    Value::Bool(b) => spec.required = b,
                    _ => self.error(
                        v.pos,
                        &p,
                        format!("`required` must be a boolean, not {}", v.describe()),
                    ),
                },
                "default" => {
                    if v.as_scalar().is_none() {
                        self.error(
                            v.pos,
                            &p,
                            format!(
                                "`default` must be a string, number or boolean, not {}",
                                v.describe()
                            ),
                        );
                    } else {
                        self.check_value_templates(v, &p);
                        default_node = Some(v);
                    }
                }
                "type" => kind = self.scalar_text(v, &p, "`type`").map(|t| (t, v.pos)),
                "options" => {
                    options = Some(
                        self.string_list(v, &p, "`options`")
                            .into_iter()
                            .map(|(s, _)| s)
                            .collect::<Vec<_>>(),
                    );
                }
                "deprecationMessage" => {}
                _ => self.unexpected(k, &p),
            }
        }
        spec.kind = match kind {
            None => InputKind::String,
            Some((t, pos)) => match t.as_str() {
                "string" => InputKind::String,
                "boolean" => InputKind::Boolean,
                "number" => InputKind::Number,
                "environment" => InputKind::Environment,
                "choice" => match options.take() {
                    Some(o) if !o.is_empty() => InputKind::Choice(o),
                    _ => {
                        self.error(
                            node.pos,
                            path,
                            "an input of type `choice` needs a non-empty `options` list",
                        );
                        InputKind::Choice(Vec::new())
                    }
                },
                other => {
                    self.error(
                        pos,
                        &join(path, "type"),
                        format!(
                            "unknown input type `{other}`; use string, boolean, number, choice or environment"
                        ),
                    );
                    InputKind::String
                }
            },
        };
        // A default is typed by the input's type: `default: 1.10` of a string input is
        // the text `1.10`, of a number input the number.
        spec.default = default_node.map(|n| match (&spec.kind, n.as_scalar()) {
            (InputKind::Boolean | InputKind::Number, _) | (_, None) => n.to_value(),
            (_, Some(s)) => Value::String(s.text.clone()),
        });
        if options.is_some() && !matches!(spec.kind, InputKind::Choice(_)) {
            self.error(
                node.pos,
                &join(path, "options"),
                "`options` is only valid for inputs of type `choice`",
            );
        }
        if let (InputKind::Choice(opts), Some(Value::String(d))) = (&spec.kind, &spec.default)
            && !opts.is_empty()
            && !opts.contains(d)
        {
            self.error(
                node.pos,
                &join(path, "default"),
                format!("the default `{d}` is not one of the `options`"),
            );
        }
        Some(spec)
    }

    fn defaults(&mut self, node: &Node, path: &str) -> Defaults {
        let mut d = Defaults::default();
        let Some(entries) = self.mapping(node, path, "`defaults`") else {
            return d;
        };
        for (key, k, v) in entries {
            let p = join(path, &key);
            if key != "run" {
                self.unexpected(k, &p);
                continue;
            }
            let Some(run) = self.mapping(v, &p, "`defaults.run`") else {
                continue;
            };
            for (key, k, v) in run {
                let rp = join(&p, &key);
                match key.as_str() {
                    "shell" => d.shell = self.template(v, &rp, "`shell`"),
                    "working-directory" => {
                        d.working_directory = self.template(v, &rp, "`working-directory`");
                    }
                    _ => self.unexpected(k, &rp),
                }
            }
        }
        d
    }

    fn concurrency(&mut self, node: &Node, path: &str) -> Option<Concurrency> {
        if node.as_scalar().is_some() {
            let group = self.template(node, path, "`concurrency`")?;
            return Some(Concurrency {
                group,
                cancel_in_progress: "false".to_owned(),
            });
        }
        let entries = self.mapping(node, path, "`concurrency`")?;
        let mut group = None;
        let mut cancel = "false".to_owned();
        for (key, k, v) in entries {
            let p = join(path, &key);
            match key.as_str() {
                "group" => group = self.template(v, &p, "`group`"),
                "cancel-in-progress" => {
                    if let Some(val) = self.bool_or_expr(v, &p, "cancel-in-progress") {
                        cancel = match val {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                    }
                }
                _ => self.unexpected(k, &p),
            }
        }
        match group {
            Some(group) => Some(Concurrency {
                group,
                cancel_in_progress: cancel,
            }),
            None => {
                self.error(node.pos, path, "Required property is missing: `group`");
                None
            }
        }
    }

    // ---- jobs -----------------------------------------------------------------------------

    fn jobs(&mut self, node: &Node) -> IndexMap<String, Job> {
        let mut jobs = IndexMap::new();
        let Some(entries) = self.mapping(node, "jobs", "`jobs`") else {
            return jobs;
        };
        if entries.is_empty() {
            self.error(node.pos, "jobs", "`jobs` must define at least one job");
        }
        // Where each `needs` entry stands, to place errors found once all jobs are known.
        let mut need_pos: HashMap<String, Vec<(String, Pos)>> = HashMap::new();
        for (id, k, v) in entries {
            let path = join("jobs", &id);
            if !is_valid_id(&id) {
                self.error(
                    k.pos,
                    &path,
                    format!(
                        "the job id `{id}` is invalid: it must start with a letter or `_` and contain only letters, digits, `-` and `_`"
                    ),
                );
            }
            if let Some((job, needs)) = self.job(&id, k, v, &path) {
                need_pos.insert(id.clone(), needs);
                jobs.insert(id, job);
            }
        }
        for (id, needs) in &need_pos {
            for (need, pos) in needs {
                if !jobs.contains_key(need) {
                    self.error(
                        *pos,
                        &format!("jobs.{id}.needs"),
                        format!(
                            "the job `{id}` needs `{need}`, which is not a job in this workflow"
                        ),
                    );
                }
            }
        }
        for cycle in crate::plan::find_cycles(&jobs) {
            let first = &cycle[0];
            let pos = need_pos
                .get(first)
                .and_then(|n| n.iter().find(|(name, _)| *name == cycle[1 % cycle.len()]))
                .map_or(jobs[first].pos, |(_, p)| *p);
            let mut chain = cycle.join(" → ");
            chain.push_str(" → ");
            chain.push_str(first);
            self.error(
                pos,
                &format!("jobs.{first}.needs"),
                format!("dependency cycle between jobs: {chain} (each needs the next)"),
            );
        }
        jobs
    }

    fn job(
        &mut self,
        id: &str,
        key: &Node,
        node: &Node,
        path: &str,
    ) -> Option<(Job, Vec<(String, Pos)>)> {
        let entries = self.mapping(node, path, &format!("the job `{id}`"))?;
        let mut job = Job {
            id: id.to_owned(),
            pos: key.pos,
            name: None,
            needs: Vec::new(),
            condition: None,
            runs_on: None,
            strategy: None,
            env: IndexMap::new(),
            defaults: Defaults::default(),
            timeout_minutes: None,
            continue_on_error: None,
            outputs: IndexMap::new(),
            environment: None,
            concurrency: None,
            steps: Vec::new(),
            packages: None,
            artifacts: Vec::new(),
        };
        let mut needs = Vec::new();
        let mut has_steps = false;
        let mut uses = None;
        // Where `packages:` stands, even when its value had errors (reported already).
        let mut packages_at = None;
        for (k_text, k, v) in &entries {
            let p = join(path, k_text);
            match k_text.as_str() {
                "name" => job.name = self.template(v, &p, "`name`"),
                "needs" => {
                    needs = self.string_list(v, &p, "`needs`");
                    job.needs = needs.iter().map(|(n, _)| n.clone()).collect();
                }
                "if" => job.condition = self.condition(v, &p),
                "runs-on" => job.runs_on = self.runs_on(v, &p),
                "strategy" => job.strategy = self.strategy(v, &p),
                "env" => job.env = self.string_map(v, &p, "env"),
                "defaults" => job.defaults = self.defaults(v, &p),
                "timeout-minutes" => {
                    job.timeout_minutes = self.number_or_expr(v, &p, "timeout-minutes");
                }
                "continue-on-error" => {
                    job.continue_on_error = self.bool_or_expr(v, &p, "continue-on-error");
                }
                "outputs" => job.outputs = self.string_map(v, &p, "outputs"),
                "environment" => job.environment = self.environment(v, &p),
                "concurrency" => job.concurrency = self.concurrency(v, &p),
                "permissions" => self.warn(
                    k.pos,
                    &p,
                    "`permissions` has no effect in kiln (there is no GITHUB_TOKEN to scope)",
                ),
                "steps" => {
                    has_steps = true;
                    job.steps = self.steps(v, &p, false);
                }
                "uses" => uses = Some((*k, *v)),
                "packages" => {
                    packages_at = Some(k.pos);
                    job.packages = self.packages(k.pos, v, &p);
                }
                "artifacts" => job.artifacts = self.artifacts(v, &p),
                // Arguments of a reusable-workflow call; the call itself is refused below.
                "with" | "secrets" if entries.iter().any(|(t, _, _)| t == "uses") => {}
                "services" => self.error(
                    k.pos,
                    &p,
                    "`services` is not supported by kiln: start the services from a `run:` step (e.g. with docker compose) instead",
                ),
                "container" => self.error(
                    k.pos,
                    &p,
                    "`container` is not supported by kiln: jobs run directly on the worker; run the container from a `run:` step instead",
                ),
                _ => self.unexpected(k, &p),
            }
        }
        if let Some((k, v)) = uses {
            let target = v.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
            self.error(
                k.pos,
                &join(path, "uses"),
                format!(
                    "calling a reusable workflow (`uses: {target}`) is not supported by kiln; copy its jobs into this workflow"
                ),
            );
        } else if let Some(at) = packages_at {
            // The job's work is its packages' builds: nothing else may run in it.
            if has_steps {
                self.error(
                    at,
                    &join(path, "packages"),
                    format!(
                        "the job `{id}` has both `packages` and `steps`: a packages job runs one build per package; put the steps in a job that `needs: {id}`"
                    ),
                );
            }
            if job.strategy.as_ref().is_some_and(|s| s.matrix.is_some()) {
                self.error(
                    at,
                    &join(path, "packages"),
                    format!(
                        "the job `{id}` has both `packages` and `strategy.matrix`: its packages are its instances"
                    ),
                );
            }
        } else if !has_steps {
            self.error(
                key.pos,
                path,
                format!("the job `{id}` has neither `steps`, `uses` nor `packages`"),
            );
        }
        if uses.is_none()
            && (has_steps || packages_at.is_some())
            && job.runs_on.is_none()
            && !entries.iter().any(|(t, _, _)| t == "runs-on")
        {
            self.error(
                key.pos,
                path,
                format!("Required property is missing: `runs-on` (job `{id}`)"),
            );
        }
        Some((job, needs))
    }

    fn runs_on(&mut self, node: &Node, path: &str) -> Option<Value> {
        match &node.kind {
            Kind::Scalar(_) => self.template(node, path, "`runs-on`").map(Value::String),
            Kind::Seq(_) => {
                let labels = self.string_list(node, path, "`runs-on`");
                for (i, item) in labels.iter().enumerate() {
                    if item.0.contains("${{") {
                        self.check_value_templates(node, &format!("{path}[{i}]"));
                    }
                }
                Some(Value::Array(
                    labels.into_iter().map(|(s, _)| Value::String(s)).collect(),
                ))
            }
            Kind::Map(_) => {
                let entries = self.mapping(node, path, "`runs-on`")?;
                let mut out = serde_json::Map::new();
                for (key, k, v) in entries {
                    let p = join(path, &key);
                    match key.as_str() {
                        "group" => {
                            if let Some(g) = self.template(v, &p, "`group`") {
                                out.insert(key, Value::String(g));
                            }
                        }
                        "labels" => {
                            let labels = self.string_list(v, &p, "`labels`");
                            out.insert(
                                key,
                                Value::Array(
                                    labels.into_iter().map(|(s, _)| Value::String(s)).collect(),
                                ),
                            );
                        }
                        _ => self.unexpected(k, &p),
                    }
                }
                Some(Value::Object(out))
            }
        }
    }

    fn environment(&mut self, node: &Node, path: &str) -> Option<EnvironmentRef> {
        if node.as_scalar().is_some() {
            let name = self.template(node, path, "`environment`")?;
            return Some(EnvironmentRef { name, url: None });
        }
        let entries = self.mapping(node, path, "`environment`")?;
        let mut name = None;
        let mut url = None;
        for (key, k, v) in entries {
            let p = join(path, &key);
            match key.as_str() {
                "name" => name = self.template(v, &p, "`name`"),
                "url" => {
                    url = self.template(v, &p, "`url`");
                    self.warn(
                        k.pos,
                        &p,
                        "`environment.url` has no effect in kiln (it only decorates GitHub's deployment view)",
                    );
                }
                _ => self.unexpected(k, &p),
            }
        }
        match name {
            Some(name) => Some(EnvironmentRef { name, url }),
            None => {
                self.error(node.pos, path, "Required property is missing: `name`");
                None
            }
        }
    }

    /// `artifacts:` — a list of `{name, path, metadata, if-no-files-found}`.
    fn artifacts(&mut self, node: &Node, path: &str) -> Vec<ArtifactSpec> {
        let Kind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                path,
                format!(
                    "`artifacts` must be a list of `- name: …` entries with `path:`, not {}",
                    node.describe()
                ),
            );
            return Vec::new();
        };
        let mut out: Vec<ArtifactSpec> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(entries) = self.mapping(item, &p, "an artifact") else {
                continue;
            };
            let mut spec = ArtifactSpec {
                name: "artifact".to_owned(),
                paths: Vec::new(),
                metadata: Map::new(),
                if_no_files_found: IfNoFiles::Error,
                pos: item.pos,
            };
            let mut ok = true;
            let mut has_path = false;
            for (key, k, v) in entries {
                let kp = join(&p, &key);
                match key.as_str() {
                    "name" => match self.template(v, &kp, "`name`") {
                        Some(n) if !n.trim().is_empty() => spec.name = n,
                        Some(_) => {
                            ok = false;
                            self.error(v.pos, &kp, "an artifact's `name` must not be empty");
                        }
                        None => ok = false,
                    },
                    "path" => {
                        has_path = true;
                        spec.paths = self.artifact_paths(v, &kp);
                        ok &= !spec.paths.is_empty();
                    }
                    "metadata" => match self.artifact_metadata(v, &kp) {
                        Some(m) => spec.metadata = m,
                        None => ok = false,
                    },
                    "if-no-files-found" => {
                        let text = self.scalar_text(v, &kp, "`if-no-files-found`");
                        match text.as_deref().map(IfNoFiles::parse) {
                            Some(Some(x)) => spec.if_no_files_found = x,
                            Some(None) => {
                                ok = false;
                                self.error(
                                    v.pos,
                                    &kp,
                                    format!(
                                        "`if-no-files-found` is `error`, `warn` or `ignore`, not `{}`",
                                        text.unwrap_or_default()
                                    ),
                                );
                            }
                            None => ok = false,
                        }
                    }
                    _ => {
                        ok = false;
                        self.unexpected(k, &kp);
                    }
                }
            }
            if !has_path {
                ok = false;
                self.error(
                    item.pos,
                    &p,
                    "an artifact needs `path:` (the files, folders or globs to keep)",
                );
            }
            if ok && let Some(other) = out.iter().find(|a| a.name == spec.name) {
                self.error(
                    item.pos,
                    &join(&p, "name"),
                    format!(
                        "two artifacts of this job are named `{}` (the other at line {})",
                        spec.name, other.pos.line
                    ),
                );
                ok = false;
            }
            if ok {
                out.push(spec);
            }
        }
        out
    }

    /// An artifact's `path:`: a string (one path per line, as upload-artifact takes it) or a
    /// list of strings; each a template.
    fn artifact_paths(&mut self, node: &Node, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (text, pos) in self.string_list(node, path, "`path`") {
            self.check_template(node, &text, path);
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                out.push(line.to_owned());
            }
            if text.trim().is_empty() {
                self.error(pos, path, "an artifact's `path` must not be empty");
            }
        }
        out
    }

    /// An artifact's `metadata:`: known keys only; `cpes` and `stacks` a string or a list,
    /// `labels` a map of scalars, the rest scalars. String leaves are templates.
    fn artifact_metadata(&mut self, node: &Node, path: &str) -> Option<Map<String, Value>> {
        let entries = self.mapping(node, path, "`metadata`")?;
        let mut out = Map::new();
        let mut ok = true;
        for (key, k, v) in entries {
            let kp = join(path, &key);
            let value = match key.as_str() {
                "cpes" | "stacks" => {
                    let items = self.string_list(v, &kp, &format!("`{key}`"));
                    for (t, _) in &items {
                        self.check_template(v, t, &kp);
                    }
                    Value::Array(items.into_iter().map(|(t, _)| Value::String(t)).collect())
                }
                "labels" => {
                    let labels = self.string_map(v, &kp, "labels");
                    Value::Object(
                        labels
                            .into_iter()
                            .map(|(k, t)| (k, Value::String(t)))
                            .collect(),
                    )
                }
                other if ARTIFACT_META_FIELDS.contains(&other) => {
                    match self.template(v, &kp, &format!("`{key}`")) {
                        Some(t) => Value::String(t),
                        None => {
                            ok = false;
                            continue;
                        }
                    }
                }
                _ => {
                    ok = false;
                    self.error(
                        k.pos,
                        &kp,
                        format!(
                            "unknown artifact metadata `{key}`; the fields are {}",
                            ARTIFACT_META_FIELDS.join(", ")
                        ),
                    );
                    continue;
                }
            };
            out.insert(key, value);
        }
        ok.then_some(out)
    }

    /// `packages:` — the tree's folder as a string, or `{tree, origins, slots}`.
    fn packages(&mut self, pos: Pos, node: &Node, path: &str) -> Option<Packages> {
        let mut out = Packages {
            tree: ".".to_owned(),
            origins: Vec::new(),
            slots: None,
            pos,
        };
        let mut ok = true;
        if node.as_scalar().is_some() {
            out.tree = self.scalar_text(node, path, "`packages`")?;
            ok &= self.tree_path(node, &out.tree, path);
        } else {
            let entries = self.mapping(node, path, "`packages`")?;
            for (key, k, v) in entries {
                let p = join(path, &key);
                match key.as_str() {
                    "tree" => match self.scalar_text(v, &p, "`tree`") {
                        Some(t) => {
                            ok &= self.tree_path(v, &t, &p);
                            out.tree = t;
                        }
                        None => ok = false,
                    },
                    "origins" => {
                        for (i, (origin, pos)) in
                            self.string_list(v, &p, "`origins`").into_iter().enumerate()
                        {
                            if crate::packages::is_origin(&origin) {
                                out.origins.push(origin);
                            } else {
                                ok = false;
                                let at = if matches!(v.kind, Kind::Seq(_)) {
                                    format!("{p}[{i}]")
                                } else {
                                    p.clone()
                                };
                                self.error(
                                    pos,
                                    &at,
                                    format!(
                                        "`{origin}` is not an origin (\"category/name\", one slash)"
                                    ),
                                );
                            }
                        }
                    }
                    "slots" => match v.to_value().as_u64() {
                        Some(n) if (1..=u64::from(u32::MAX)).contains(&n) => {
                            out.slots = Some(n as u32);
                        }
                        _ => {
                            ok = false;
                            self.error(
                                v.pos,
                                &p,
                                format!(
                                    "`slots` must be a positive whole number, not {}",
                                    v.describe()
                                ),
                            );
                        }
                    },
                    _ => self.unexpected(k, &p),
                }
            }
        }
        ok.then_some(out)
    }

    /// Whether `tree` is a folder inside the project: relative, without `..`, no expression.
    fn tree_path(&mut self, node: &Node, tree: &str, path: &str) -> bool {
        let problem = if tree.is_empty() {
            Some("is empty (use `.` for the project's root)")
        } else if tree.contains("${{") {
            Some("cannot be an expression: the tree is read when the run is created")
        } else if std::path::Path::new(tree).is_absolute() {
            Some("must be relative to the project's root")
        } else if std::path::Path::new(tree)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            Some("must stay inside the project (no `..`)")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(
                node.pos,
                path,
                format!("the package tree `{tree}` {problem}"),
            );
        }
        problem.is_none()
    }

    fn strategy(&mut self, node: &Node, path: &str) -> Option<Strategy> {
        let entries = self.mapping(node, path, "`strategy`")?;
        let mut s = Strategy {
            matrix: None,
            fail_fast: None,
            max_parallel: None,
        };
        for (key, k, v) in entries {
            let p = join(path, &key);
            match key.as_str() {
                "matrix" => s.matrix = self.matrix(v, &p),
                "fail-fast" => s.fail_fast = self.bool_or_expr(v, &p, "fail-fast"),
                "max-parallel" => s.max_parallel = self.number_or_expr(v, &p, "max-parallel"),
                _ => self.unexpected(k, &p),
            }
        }
        Some(s)
    }

    fn matrix(&mut self, node: &Node, path: &str) -> Option<Value> {
        if let Some(s) = node.as_scalar()
            && s.text.contains("${{")
        {
            let text = s.text.clone();
            self.check_template(node, &text, path);
            return Some(Value::String(text));
        }
        let entries = self.mapping(node, path, "`matrix`")?;
        let mut vectors = 0;
        let mut has_include = false;
        for (key, _, v) in &entries {
            let p = join(path, key);
            let expr = v.as_scalar().is_some_and(|s| s.text.contains("${{"));
            match key.as_str() {
                "include" | "exclude" => {
                    has_include |= key == "include";
                    if expr {
                        continue;
                    }
                    match &v.kind {
                        Kind::Seq(items) => {
                            for (i, item) in items.iter().enumerate() {
                                let ip = format!("{p}[{i}]");
                                let is_map = matches!(item.kind, Kind::Map(_));
                                let is_expr =
                                    item.as_scalar().is_some_and(|s| s.text.contains("${{"));
                                if !is_map && !is_expr {
                                    self.error(
                                        item.pos,
                                        &ip,
                                        format!(
                                            "each `{key}` entry must be a mapping, not {}",
                                            item.describe()
                                        ),
                                    );
                                }
                            }
                        }
                        _ => self.error(
                            v.pos,
                            &p,
                            format!("`{key}` must be a list of mappings, not {}", v.describe()),
                        ),
                    }
                }
                _ => {
                    vectors += 1;
                    match &v.kind {
                        Kind::Seq(items) if items.is_empty() => self.error(
                            v.pos,
                            &p,
                            format!("Matrix vector '{key}' does not contain any values"),
                        ),
                        Kind::Seq(_) => {}
                        _ if expr => {}
                        _ => self.error(
                            v.pos,
                            &p,
                            format!(
                                "Matrix vector '{key}' must be a list (or an expression giving one), not {}",
                                v.describe()
                            ),
                        ),
                    }
                }
            }
        }
        if vectors == 0 && !has_include {
            self.error(
                node.pos,
                path,
                "a matrix must define at least one vector or an `include`",
            );
        }
        self.check_value_templates(node, path);
        Some(node.to_value())
    }

    // ---- steps ----------------------------------------------------------------------------

    fn steps(&mut self, node: &Node, path: &str, composite: bool) -> Vec<Step> {
        let Kind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                path,
                format!("`steps` must be a list of steps, not {}", node.describe()),
            );
            return Vec::new();
        };
        let mut ids: HashMap<String, Pos> = HashMap::new();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            if let Some(step) = self.step(item, &p, composite, &mut ids) {
                out.push(step);
            }
        }
        out
    }

    fn step(
        &mut self,
        node: &Node,
        path: &str,
        composite: bool,
        ids: &mut HashMap<String, Pos>,
    ) -> Option<Step> {
        let entries = self.mapping(node, path, "a step")?;
        let mut step = Step {
            pos: node.pos,
            id: None,
            name: None,
            condition: None,
            action: StepAction::Run(String::new()),
            shell: None,
            working_directory: None,
            env: IndexMap::new(),
            continue_on_error: None,
            timeout_minutes: None,
        };
        let mut run: Option<(Pos, String)> = None;
        let mut uses: Option<(Pos, String)> = None;
        let mut with: Option<(Pos, IndexMap<String, String>)> = None;
        // A `run`/`uses` whose value is wrong is reported as such, not as missing.
        let has = |name: &str| entries.iter().any(|(key, _, _)| key == name);
        let (has_run, has_uses) = (has("run"), has("uses"));
        for (key, k, v) in entries {
            let p = join(path, &key);
            match key.as_str() {
                "id" => {
                    let Some(id) = self.scalar_text(v, &p, "`id`") else {
                        continue;
                    };
                    if !is_valid_id(&id) {
                        self.error(
                            v.pos,
                            &p,
                            format!(
                                "the step id `{id}` is invalid: it must start with a letter or `_` and contain only letters, digits, `-` and `_`"
                            ),
                        );
                    } else if let Some(first) = ids.get(&id) {
                        self.error(
                            v.pos,
                            &p,
                            format!(
                                "the step id `{id}` is already used by the step at line {}",
                                first.line
                            ),
                        );
                    } else {
                        ids.insert(id.clone(), v.pos);
                    }
                    step.id = Some(id);
                }
                "name" => step.name = self.template(v, &p, "`name`"),
                "if" => step.condition = self.condition(v, &p),
                "run" => {
                    run = self
                        .template(v, &p, "`run`")
                        .map(|r| (k.pos, r));
                }
                "uses" => {
                    let Some(u) = self.scalar_text(v, &p, "`uses`") else {
                        continue;
                    };
                    if let UsesKind::Docker(image) = StepAction::uses_kind(&u) {
                        self.error(
                            v.pos,
                            &p,
                            format!(
                                "docker actions (`{image}`) are not supported by kiln; run the image from a `run:` step instead"
                            ),
                        );
                    } else if u.trim().is_empty() {
                        self.error(v.pos, &p, "`uses` must name an action");
                    }
                    uses = Some((k.pos, u));
                }
                "with" => with = Some((k.pos, self.string_map(v, &p, "with"))),
                "shell" => step.shell = self.template(v, &p, "`shell`"),
                "working-directory" => {
                    step.working_directory = self.template(v, &p, "`working-directory`");
                }
                "env" => step.env = self.string_map(v, &p, "env"),
                "continue-on-error" => {
                    step.continue_on_error = self.bool_or_expr(v, &p, "continue-on-error");
                }
                "timeout-minutes" => {
                    step.timeout_minutes = self.number_or_expr(v, &p, "timeout-minutes");
                }
                "container" => self.error(
                    k.pos,
                    &p,
                    "`container` is not supported by kiln: run the container from a `run:` step instead",
                ),
                _ => self.unexpected(k, &p),
            }
        }
        match (run, uses) {
            (Some((pos, _)), Some(_)) => {
                self.error(pos, path, "a step has either `run` or `uses`, not both");
            }
            (None, None) => {
                if !has_run && !has_uses {
                    self.error(node.pos, path, "a step needs `run` or `uses`");
                }
            }
            (Some((_, script)), None) => {
                if let Some((pos, _)) = &with {
                    self.error(
                        *pos,
                        &join(path, "with"),
                        "`with` is only valid with `uses`",
                    );
                }
                if composite && step.shell.is_none() {
                    self.error(
                        node.pos,
                        &join(path, "shell"),
                        "a `run` step of a composite action needs `shell` (GitHub requires it)",
                    );
                }
                step.action = StepAction::Run(script);
            }
            (None, Some((_, uses))) => {
                step.action = StepAction::Uses {
                    uses,
                    with: with.map(|(_, w)| w).unwrap_or_default(),
                };
            }
        }
        Some(step)
    }

    // ---- composite actions ------------------------------------------------------------------

    fn action(&mut self, root: &Node) -> Option<Action> {
        let entries = self.mapping(root, "", "an action")?;
        let mut action = Action {
            file: self.file.to_owned(),
            name: None,
            inputs: IndexMap::new(),
            outputs: IndexMap::new(),
            steps: Vec::new(),
        };
        let mut has_runs = false;
        for (key, k, v) in entries {
            let path = key.as_str();
            match path {
                "name" => action.name = self.scalar_text(v, path, "`name`"),
                "description" | "author" | "branding" => {}
                "inputs" => action.inputs = self.action_inputs(v, path),
                "outputs" => action.outputs = self.action_outputs(v, path),
                "runs" => {
                    has_runs = true;
                    action.steps = self.runs(v, path);
                }
                _ => self.unexpected(k, path),
            }
        }
        if !has_runs {
            self.error(root.pos, "runs", "Required property is missing: `runs`");
        }
        Some(action)
    }

    fn action_inputs(&mut self, node: &Node, path: &str) -> IndexMap<String, Option<String>> {
        let mut out = IndexMap::new();
        let Some(entries) = self.mapping(node, path, "`inputs`") else {
            return out;
        };
        for (name, _, spec) in entries {
            let ip = join(path, &name);
            let mut default = None;
            if !spec.as_scalar().is_some_and(|s| s.typed().is_null())
                && let Some(fields) = self.mapping(spec, &ip, "an input")
            {
                for (key, k, v) in fields {
                    let p = join(&ip, &key);
                    match key.as_str() {
                        "default" => default = self.template(v, &p, "`default`"),
                        "required" => {
                            if !v.to_value().is_boolean() {
                                self.error(
                                    v.pos,
                                    &p,
                                    format!("`required` must be a boolean, not {}", v.describe()),
                                );
                            }
                        }
                        "description" | "deprecationMessage" => {}
                        _ => self.unexpected(k, &p),
                    }
                }
            }
            out.insert(name, default);
        }
        out
    }

    fn action_outputs(&mut self, node: &Node, path: &str) -> IndexMap<String, String> {
        let mut out = IndexMap::new();
        let Some(entries) = self.mapping(node, path, "`outputs`") else {
            return out;
        };
        for (name, _, spec) in entries {
            let op = join(path, &name);
            let Some(fields) = self.mapping(spec, &op, "an output") else {
                continue;
            };
            let mut value = None;
            for (key, k, v) in fields {
                let p = join(&op, &key);
                match key.as_str() {
                    "value" => value = self.template(v, &p, "`value`"),
                    "description" => {}
                    _ => self.unexpected(k, &p),
                }
            }
            match value {
                Some(v) => {
                    out.insert(name, v);
                }
                None => self.error(
                    spec.pos,
                    &op,
                    "an output of a composite action needs `value`",
                ),
            }
        }
        out
    }

    fn runs(&mut self, node: &Node, path: &str) -> Vec<Step> {
        let Some(entries) = self.mapping(node, path, "`runs`") else {
            return Vec::new();
        };
        let mut steps = Vec::new();
        let using = match entries.iter().find(|(key, _, _)| key == "using") {
            Some((_, _, v)) => self
                .scalar_text(v, &join(path, "using"), "`using`")
                .map(|u| (u, v.pos)),
            None => None,
        };
        match using {
            Some((u, _)) if u == "composite" => {
                for (key, k, _) in &entries {
                    if key != "using" && key != "steps" {
                        self.unexpected(k, &join(path, key));
                    }
                }
                match entries.iter().find(|(key, _, _)| key == "steps") {
                    Some((_, _, v)) => steps = self.steps(v, &join(path, "steps"), true),
                    None => self.error(
                        node.pos,
                        &join(path, "steps"),
                        "Required property is missing: `steps`",
                    ),
                }
            }
            Some((u, pos)) => self.error(
                pos,
                &join(path, "using"),
                format!(
                    "`using: {u}` is not supported: kiln runs only composite actions (`using: composite`)"
                ),
            ),
            None => self.error(
                node.pos,
                &join(path, "using"),
                "Required property is missing: `using`",
            ),
        }
        steps
    }
}

mod watch;

#[cfg(test)]
mod tests;
