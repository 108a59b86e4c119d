//! Workflow files: the model of a GitHub-Actions-syntax workflow as kiln runs it, and the
//! diagnostics the parser reports.
//!
//! The model keeps every value that may hold an expression as written (a `String` or a
//! [`serde_json::Value`] whose strings may contain `${{ }}`); evaluation happens where the
//! contexts exist (the planner for matrices and names, the executor for steps). Every job and
//! step remembers the line it starts on, so that errors found later — at plan or run time —
//! still name file and line.
//!
//! Not here: reading files (the caller passes `&str`), running anything.

mod parse;
mod yaml;

pub use parse::{is_valid_id, parse_action, parse_workflow};

use std::fmt;

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Map, Value};

/// A position in a file, 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The workflow cannot be used: nothing runs.
    Error,
    /// Accepted, but something in the file changes nothing here.
    Warning,
}

/// One problem found in a workflow file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the project names it, e.g. `.github/workflows/ci.yml`.
    pub file: String,
    pub pos: Pos,
    /// The key path, e.g. `jobs.build.steps[2].uses`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file, self.pos.line, self.pos.column, self.message
        )?;
        if !self.path.is_empty() {
            write!(f, " (at `{}`)", self.path)?;
        }
        Ok(())
    }
}

/// Every problem of one or more files; what a parse returns when anything is an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A parsed workflow file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workflow {
    /// The file as the project names it (`.kiln/workflows/ci.yml`).
    pub file: String,
    /// `name:`; GitHub shows the file path when absent.
    pub name: Option<String>,
    /// `run-name:` (a template).
    pub run_name: Option<String>,
    pub on: Triggers,
    /// `env:` (values as templates; YAML numbers and booleans are kept as their text).
    pub env: IndexMap<String, String>,
    pub defaults: Defaults,
    pub concurrency: Option<Concurrency>,
    /// Jobs in declaration order.
    pub jobs: IndexMap<String, Job>,
    /// Warnings found while parsing (keys that change nothing here).
    pub warnings: Vec<Diagnostic>,
}

impl Workflow {
    /// The name GitHub would show: `name:` or the file path.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.file)
    }
}

/// `on:` — which events start the workflow.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Triggers {
    /// Event name → its filters, in file order (`push`, `pull_request`, `release`, …).
    /// `schedule` and `workflow_dispatch` appear here too (with empty filters), so that
    /// `events.contains_key(name)` answers "does this event trigger the workflow".
    pub events: IndexMap<String, EventFilter>,
    /// `on.schedule[*].cron`.
    pub schedules: Vec<String>,
    /// `on.schedule[*]` in full (same order as `schedules`): pattern, zone, catch-up.
    pub schedule_entries: Vec<ScheduleEntry>,
    /// `on.workflow_dispatch.inputs`.
    pub dispatch_inputs: IndexMap<String, InputSpec>,
    /// `on.watch` (a kiln extension): upstream sources polled for new versions.
    pub watches: Vec<crate::watch::WatchEntry>,
}

/// One `on.schedule` entry. The pattern and the zone are checked when the file is parsed
/// ([`crate::cron`]), so a stored entry always evaluates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScheduleEntry {
    /// `cron:` — 5 fields, as GitHub takes it.
    pub cron: String,
    /// `timezone:` — an IANA zone name; `None`: UTC.
    pub timezone: Option<String>,
    /// `catch-up:` (a kiln key) — what a fire missed while no server ran does.
    pub catch_up: CatchUp,
    /// Where the entry's list item starts.
    pub pos: Pos,
}

/// What a schedule does with fires missed while no server was running (kiln's `catch-up:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Run once for everything missed (the default).
    #[default]
    One,
    /// Skip what was missed; wait for the next fire.
    None,
}

impl CatchUp {
    /// The key's value as written in a workflow (and stored).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::One => "one",
            Self::None => "none",
        }
    }

    /// Reads a value as written (`one`, `none`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "one" => Some(Self::One),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// Filters of one event (`branches`, `tags`, `paths`, `types`, with their `-ignore`s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventFilter {
    pub branches: Vec<String>,
    pub branches_ignore: Vec<String>,
    pub tags: Vec<String>,
    pub tags_ignore: Vec<String>,
    pub paths: Vec<String>,
    pub paths_ignore: Vec<String>,
    pub types: Vec<String>,
}

/// One `workflow_dispatch` input.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InputSpec {
    pub description: Option<String>,
    pub required: bool,
    pub default: Option<Value>,
    pub kind: InputKind,
}

/// The `type:` of a dispatch input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "options")]
pub enum InputKind {
    String,
    Boolean,
    Number,
    Choice(Vec<String>),
    Environment,
}

/// `defaults.run`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Defaults {
    pub shell: Option<String>,
    pub working_directory: Option<String>,
}

/// `concurrency:` (parsed; enforced by the server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Concurrency {
    /// The group (a template).
    pub group: String,
    /// `cancel-in-progress` (`true`, `false` or an expression).
    pub cancel_in_progress: String,
}

/// `environment:` of a job (parsed; policies come later).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvironmentRef {
    /// The name (a template).
    pub name: String,
    pub url: Option<String>,
}

/// One job as written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Job {
    /// The job's key under `jobs:`.
    pub id: String,
    /// Where the key stands.
    pub pos: Pos,
    /// `name:` (a template, may use `matrix`).
    pub name: Option<String>,
    pub needs: Vec<String>,
    /// `if:` as written (with or without `${{ }}`).
    pub condition: Option<String>,
    /// `runs-on:` as written (a string, a list, or a group object).
    pub runs_on: Option<Value>,
    pub strategy: Option<Strategy>,
    pub env: IndexMap<String, String>,
    pub defaults: Defaults,
    /// `timeout-minutes:` — a number or an expression string. Default 360.
    pub timeout_minutes: Option<Value>,
    /// `continue-on-error:` — a bool or an expression string.
    pub continue_on_error: Option<Value>,
    /// `outputs:` (templates).
    pub outputs: IndexMap<String, String>,
    pub environment: Option<EnvironmentRef>,
    pub concurrency: Option<Concurrency>,
    pub steps: Vec<Step>,
    /// `packages:` (kiln extension): the job builds a package tree, one job per package.
    pub packages: Option<Packages>,
    /// `artifacts:` (kiln extension): files the job keeps once its steps succeeded.
    pub artifacts: Vec<ArtifactSpec>,
}

/// The metadata fields an artifact takes (`jobs.<id>.artifacts[*].metadata`, the
/// `$KILN_ARTIFACT_METADATA` file): every one optional. `cpes` and `stacks` are lists,
/// `labels` a map, the rest strings.
pub const ARTIFACT_META_FIELDS: &[&str] = &[
    "id",
    "version",
    "source",
    "source_sha256",
    "purl",
    "cpes",
    "licenses",
    "deprecation_date",
    "stacks",
    "labels",
];

/// One entry of `jobs.<id>.artifacts` (kiln extension), or the `with:` of an
/// `actions/upload-artifact` step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArtifactSpec {
    /// `name:` (a template); `artifact` when absent, as upload-artifact does.
    pub name: String,
    /// `path:` — files, folders and globs relative to the workspace (templates); a leading
    /// `!` excludes what it matches.
    pub paths: Vec<String>,
    /// `metadata:` — an object whose string leaves are templates; its keys are
    /// [`ARTIFACT_META_FIELDS`].
    pub metadata: Map<String, Value>,
    /// `if-no-files-found:` — what nothing matching means.
    pub if_no_files_found: IfNoFiles,
    /// Where the entry stands.
    pub pos: Pos,
}

/// What an artifact whose paths match nothing does (upload-artifact's `if-no-files-found`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IfNoFiles {
    /// The job fails (kiln's default for `artifacts:`: a declared artifact is expected).
    #[default]
    Error,
    /// A warning in the log (upload-artifact's default).
    Warn,
    /// Nothing.
    Ignore,
}

impl IfNoFiles {
    /// Reads `error`, `warn` or `ignore`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "error" => Some(Self::Error),
            "warn" => Some(Self::Warn),
            "ignore" => Some(Self::Ignore),
            _ => None,
        }
    }
}

/// `jobs.<id>.packages` (kiln extension): build a package tree (DESIGN.md "Package trees")
/// as one job per package, each waiting for the packages it depends on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Packages {
    /// The tree's folder, relative to the project root (`.` for the root itself).
    pub tree: String,
    /// The origins to build with what they need; empty: the whole tree.
    pub origins: Vec<String>,
    /// At most this many of the job's packages build at once; `None`: as many as slots.
    pub slots: Option<u32>,
    /// Where `packages:` stands.
    pub pos: Pos,
}

/// `strategy:`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Strategy {
    /// `matrix:` as written: an object (whose values may hold expressions), or one
    /// expression string such as `${{ fromJSON(needs.setup.outputs.matrix) }}`.
    pub matrix: Option<Value>,
    /// `fail-fast:` — a bool or an expression string; default true.
    pub fail_fast: Option<Value>,
    /// `max-parallel:` — a number or an expression string.
    pub max_parallel: Option<Value>,
}

/// One step as written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    /// Where the step's list item starts.
    pub pos: Pos,
    pub id: Option<String>,
    /// `name:` (a template).
    pub name: Option<String>,
    /// `if:` as written.
    pub condition: Option<String>,
    pub action: StepAction,
    pub shell: Option<String>,
    pub working_directory: Option<String>,
    pub env: IndexMap<String, String>,
    /// A bool or an expression string.
    pub continue_on_error: Option<Value>,
    /// A number or an expression string.
    pub timeout_minutes: Option<Value>,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// `run:` — a script (a template).
    Run(String),
    /// `uses:` with its `with:` (values as templates).
    Uses {
        uses: String,
        with: IndexMap<String, String>,
    },
}

/// What kind of thing a `uses:` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsesKind<'a> {
    /// `actions/checkout@…`: built in (the workspace already holds the project).
    Checkout,
    /// `./path/to/action`: a composite action in the project.
    Local(&'a str),
    /// `actions/upload-artifact@…`: built in, kept as a kiln artifact.
    UploadArtifact,
    /// `actions/download-artifact@…`: built in, from the run's kiln artifacts.
    DownloadArtifact,
    /// `docker://…`.
    Docker(&'a str),
    /// `owner/repo[/path]@ref`: not supported yet.
    Remote(&'a str),
}

impl StepAction {
    /// Classify a `uses:` value.
    pub fn uses_kind(uses: &str) -> UsesKind<'_> {
        if let Some(rest) = uses.strip_prefix("./") {
            UsesKind::Local(rest)
        } else if uses.starts_with("docker://") {
            UsesKind::Docker(uses)
        } else {
            let repo = uses.split('@').next().unwrap_or("");
            if repo.eq_ignore_ascii_case("actions/checkout") {
                UsesKind::Checkout
            } else if repo.eq_ignore_ascii_case("actions/upload-artifact") {
                UsesKind::UploadArtifact
            } else if repo.eq_ignore_ascii_case("actions/download-artifact") {
                UsesKind::DownloadArtifact
            } else {
                UsesKind::Remote(uses)
            }
        }
    }
}

impl Step {
    /// The name GitHub shows for a step without `name:`.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match &self.action {
            StepAction::Run(script) => {
                let first = script.lines().next().unwrap_or("").trim();
                format!("Run {first}")
            }
            StepAction::Uses { uses, .. } => format!("Run {uses}"),
        }
    }
}

/// A composite action (`action.yml` of a `uses: ./path` step).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Action {
    pub file: String,
    pub name: Option<String>,
    /// `inputs.<id>`: their defaults (templates), `None` when there is none.
    pub inputs: IndexMap<String, Option<String>>,
    /// `outputs.<id>.value` (templates over the action's `steps`).
    pub outputs: IndexMap<String, String>,
    /// `runs.steps` (only `using: composite` is supported).
    pub steps: Vec<Step>,
}
