//! The job graph: validation, expansion for a dry run, critical-path priorities.
//!
//! Everything the engine needs to decide *what* runs, as plain functions over a parsed
//! [`Workflow`]: which workflows an event selects ([`triggered_by`]), whether a workflow can
//! run here at all ([`check_runnable`]), the list of jobs a run will have ([`dry_run`]), the
//! matrix instances of one job once its `needs` are known ([`expand_job`], [`fail_fast`],
//! [`max_parallel`]), and priorities for the ready queue ([`critical_path`]).
//!
//! Not here: `if:` conditions (they need results of earlier jobs; the engine evaluates them
//! when a job becomes ready), the ready queue itself, anything that does I/O.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::expr::{self, JobState, Scope, Template};
use crate::matrix;
use crate::workflow::{Diagnostic, Diagnostics, Job, Severity, StepAction, UsesKind, Workflow};

/// One job of a run as a dry run lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedJob {
    /// The workflow file.
    pub workflow: String,
    /// The job's key under `jobs:`.
    pub id: String,
    /// The display name (for a matrix job, of this instance).
    pub name: String,
    pub needs: Vec<String>,
    /// This instance's matrix values: `{}` without a matrix, `None` when the matrix depends
    /// on a job that has not run yet (it is expanded when that job ends).
    pub matrix: Option<Map<String, Value>>,
    /// Its `runs-on` labels (see [`runs_on_labels`]); empty while `matrix` is `None`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// One instance of a job after its matrix is expanded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobInstance {
    pub name: String,
    pub matrix: Map<String, Value>,
    /// Its `runs-on` labels, rendered with this instance's matrix.
    pub labels: Vec<String>,
}

/// Whether `event` starts `wf`.
///
/// A plain match on the event name: branch, tag and path filters are applied by the webhook
/// intake, which knows the ref and the changed files; `kiln run --event` has neither.
pub fn triggered_by(wf: &Workflow, event: &str) -> bool {
    wf.on.events.contains_key(event)
}

/// What stops a parsed workflow from running here: one error per step that uses a remote
/// action (anything but `actions/checkout` and `./local` actions). A dry run still plans such
/// workflows; a real run calls this first and runs nothing if it says anything.
pub fn check_runnable(wf: &Workflow) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for job in wf.jobs.values() {
        for (i, step) in job.steps.iter().enumerate() {
            let StepAction::Uses { uses, .. } = &step.action else {
                continue;
            };
            if let UsesKind::Remote(action) = StepAction::uses_kind(uses) {
                out.push(Diagnostic {
                    severity: Severity::Error,
                    file: wf.file.clone(),
                    pos: step.pos,
                    path: format!("jobs.{}.steps[{i}].uses", job.id),
                    message: format!(
                        "the action `{action}` cannot run here: kiln runs only `actions/checkout`, `actions/upload-artifact`, `actions/download-artifact` and local actions (`uses: ./path`); replace this step with a `run:` step that does the same"
                    ),
                });
            }
        }
    }
    out
}

/// Every dependency cycle among `jobs`, each as the jobs along it (the first needs the
/// second, …, the last needs the first), starting from the job declared first. `needs` that
/// name no job are ignored here (the parser reports them).
pub fn find_cycles(jobs: &IndexMap<String, Job>) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components: every component with more than one job, or a
    // job that needs itself, holds a cycle.
    struct Tarjan<'a> {
        jobs: &'a IndexMap<String, Job>,
        index: HashMap<usize, usize>,
        low: HashMap<usize, usize>,
        on_stack: HashSet<usize>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn edges(&self, v: usize) -> Vec<usize> {
            self.jobs[v]
                .needs
                .iter()
                .filter_map(|n| self.jobs.get_index_of(n))
                .collect()
        }
        fn visit(&mut self, v: usize) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges(v) {
                if !self.index.contains_key(&w) {
                    self.visit(w);
                    let lw = self.low[&w];
                    let lv = self.low.get_mut(&v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(&w) {
                    let iw = self.index[&w];
                    let lv = self.low.get_mut(&v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[&v] == self.index[&v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(&w);
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                self.components.push(comp);
            }
        }
    }
    let mut t = Tarjan {
        jobs,
        index: HashMap::new(),
        low: HashMap::new(),
        on_stack: HashSet::new(),
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..jobs.len() {
        if !t.index.contains_key(&v) {
            t.visit(v);
        }
    }
    let mut cycles = Vec::new();
    for comp in &t.components {
        let members: HashSet<usize> = comp.iter().copied().collect();
        let start = *comp.iter().min().expect("components are not empty");
        if comp.len() == 1 && !t.edges(start).contains(&start) {
            continue;
        }
        // A path from `start` back to itself inside the component (breadth-first: shortest).
        let mut prev: HashMap<usize, usize> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut end = None;
        'search: while let Some(v) = queue.pop_front() {
            let mut next: Vec<usize> = t.edges(v);
            next.sort_unstable();
            for w in next {
                if w == start {
                    end = Some(v);
                    break 'search;
                }
                if members.contains(&w) && !prev.contains_key(&w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let Some(mut v) = end else { continue };
        let mut path = vec![v];
        while v != start {
            v = prev[&v];
            path.push(v);
        }
        path.reverse();
        cycles.push(path.into_iter().map(|i| jobs[i].id.clone()).collect());
    }
    cycles.sort_by_key(|c: &Vec<String>| jobs.get_index_of(&c[0]));
    cycles
}

/// Graph problems of a workflow built in code (the parser reports the same for files):
/// `needs` naming no job, and cycles.
pub fn validate(wf: &Workflow) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let err = |job: &Job, message: String| Diagnostic {
        severity: Severity::Error,
        file: wf.file.clone(),
        pos: job.pos,
        path: format!("jobs.{}.needs", job.id),
        message,
    };
    for job in wf.jobs.values() {
        for need in &job.needs {
            if !wf.jobs.contains_key(need) {
                out.push(err(
                    job,
                    format!(
                        "the job `{}` needs `{need}`, which is not a job in this workflow",
                        job.id
                    ),
                ));
            }
        }
    }
    for cycle in find_cycles(&wf.jobs) {
        let job = &wf.jobs[&cycle[0]];
        let chain = format!("{} → {}", cycle.join(" → "), cycle[0]);
        out.push(err(
            job,
            format!("dependency cycle between jobs: {chain} (each needs the next)"),
        ));
    }
    out
}

/// For each job, the number of jobs on the longest dependency chain from it to the end of
/// the graph, itself included (a job nothing needs has 1). Running the highest first keeps
/// long chains from finishing last. Jobs on a cycle (which the parser refuses) count the
/// cycle once.
pub fn critical_path(jobs: &IndexMap<String, Job>) -> IndexMap<String, u32> {
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.values().enumerate() {
        for need in &job.needs {
            if let Some(n) = jobs.get_index_of(need) {
                dependents[n].push(i);
            }
        }
    }
    fn depth(v: usize, deps: &[Vec<usize>], memo: &mut [Option<u32>], busy: &mut [bool]) -> u32 {
        if let Some(d) = memo[v] {
            return d;
        }
        if busy[v] {
            return 0;
        }
        busy[v] = true;
        let mut best = 0;
        for &w in &deps[v] {
            best = best.max(depth(w, deps, memo, busy));
        }
        busy[v] = false;
        memo[v] = Some(best + 1);
        best + 1
    }
    let mut memo = vec![None; jobs.len()];
    let mut busy = vec![false; jobs.len()];
    jobs.keys()
        .enumerate()
        .map(|(i, id)| (id.clone(), depth(i, &dependents, &mut memo, &mut busy)))
        .collect()
}

/// The job keys in an order where every job comes after the jobs it needs (declaration order
/// otherwise). Unknown needs are ignored; a cycle (which the parser refuses) is broken where
/// it is found.
pub fn topological_order(jobs: &IndexMap<String, Job>) -> Vec<String> {
    fn visit(v: usize, jobs: &IndexMap<String, Job>, state: &mut [u8], out: &mut Vec<String>) {
        if state[v] != 0 {
            return;
        }
        state[v] = 1;
        if let Some((_, job)) = jobs.get_index(v) {
            for need in &job.needs {
                if let Some(n) = jobs.get_index_of(need) {
                    visit(n, jobs, state, out);
                }
            }
        }
        state[v] = 2;
        if let Some((key, _)) = jobs.get_index(v) {
            out.push(key.clone());
        }
    }
    let mut state = vec![0u8; jobs.len()];
    let mut out = Vec::with_capacity(jobs.len());
    for v in 0..jobs.len() {
        visit(v, jobs, &mut state, &mut out);
    }
    out
}

/// Whether a string of a matrix reads the `needs` context.
fn reads_needs(v: &Value) -> bool {
    match v {
        Value::String(s) => {
            s.contains("${{") && Template::parse(s).is_ok_and(|t| t.contexts().contains("needs"))
        }
        Value::Array(items) => items.iter().any(reads_needs),
        Value::Object(m) => m.values().any(reads_needs),
        _ => false,
    }
}

/// Whether the job's matrix can only be expanded once the jobs it needs have run.
pub fn matrix_waits_for_needs(job: &Job) -> bool {
    job.strategy
        .as_ref()
        .and_then(|s| s.matrix.as_ref())
        .is_some_and(reads_needs)
}

fn scope(contexts: &Map<String, Value>) -> Scope<'_> {
    Scope {
        contexts,
        state: JobState::default(),
        hasher: None,
    }
}

/// Where an expansion went wrong: the key path under the job, and why.
struct ExpandError {
    key: &'static str,
    message: String,
}

fn expand_inner(job: &Job, contexts: &Map<String, Value>) -> Result<Vec<JobInstance>, ExpandError> {
    let combos = match job.strategy.as_ref().and_then(|s| s.matrix.as_ref()) {
        None => vec![Map::new()],
        Some(m) => {
            let matrix_err = |message: String| ExpandError {
                key: "strategy.matrix",
                message,
            };
            let value =
                expr::eval_value(m, &scope(contexts)).map_err(|e| matrix_err(e.to_string()))?;
            let Value::Object(obj) = value else {
                return Err(matrix_err(format!(
                    "the matrix must be a mapping, but it evaluated to {}",
                    serde_json::to_string(&value).unwrap_or_default()
                )));
            };
            matrix::expand(&obj).map_err(|e| matrix_err(e.to_string()))?
        }
    };
    combos
        .into_iter()
        .map(|m| {
            let name = display_name(job, &m, contexts).map_err(|message| ExpandError {
                key: "name",
                message,
            })?;
            let labels = runs_on_labels(job, &m, contexts).map_err(|message| ExpandError {
                key: "runs-on",
                message,
            })?;
            Ok(JobInstance {
                name,
                matrix: m,
                labels,
            })
        })
        .collect()
}

/// Expand one job into its instances, evaluating its matrix with `contexts` (which, at run
/// time, include `needs`). A job without a matrix is one instance with an empty matrix.
pub fn expand_job(job: &Job, contexts: &Map<String, Value>) -> Result<Vec<JobInstance>, String> {
    expand_inner(job, contexts).map_err(|e| e.message)
}

/// How GitHub shows a matrix value in a job's name: strings bare, numbers and booleans as
/// expressions print them, lists and mappings as compact JSON.
fn show(v: &Value) -> String {
    match v {
        Value::Array(_) | Value::Object(_) => serde_json::to_string(v).unwrap_or_default(),
        other => expr::to_display_string(other),
    }
}

/// The contexts (of `contexts`) that `names` (lowercased, as [`Template::contexts`] gives
/// them) name, copied, with `matrix` added: what evaluating an instance's name or labels
/// reads. Only those are copied: a run's `github` context holds the whole event payload, and
/// copying it for every instance was most of what planning a webhook's run cost.
fn with_matrix(
    names: &std::collections::BTreeSet<String>,
    contexts: &Map<String, Value>,
    matrix: &Map<String, Value>,
) -> Map<String, Value> {
    let mut ctx: Map<String, Value> = contexts
        .iter()
        .filter(|(k, _)| names.contains(&k.to_lowercase()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ctx.insert("matrix".to_owned(), Value::Object(matrix.clone()));
    ctx
}

/// The contexts the expressions anywhere in `value` name, lowercased; `Err` when one does
/// not parse.
fn value_contexts(value: &Value) -> Result<std::collections::BTreeSet<String>, ()> {
    let mut names = std::collections::BTreeSet::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains("${{") => {
                names.extend(Template::parse(s).map_err(|_| ())?.contexts());
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(m) => {
                // Keys are rendered too.
                for key in m.keys().filter(|k| k.contains("${{")) {
                    names.extend(Template::parse(key).map_err(|_| ())?.contexts());
                }
                stack.extend(m.values());
            }
            _ => {}
        }
    }
    Ok(names)
}

/// The display name of one instance: `name:` rendered with `matrix` (and the other
/// contexts), or the job id; for a matrix job whose name does not read `matrix`, GitHub
/// appends the instance's values: `test (ubuntu, 1.75)`.
pub fn display_name(
    job: &Job,
    matrix: &Map<String, Value>,
    contexts: &Map<String, Value>,
) -> Result<String, String> {
    let suffix = || {
        let values: Vec<String> = matrix.values().map(show).collect();
        format!(" ({})", values.join(", "))
    };
    let Some(name) = &job.name else {
        return Ok(if matrix.is_empty() {
            job.id.clone()
        } else {
            format!("{}{}", job.id, suffix())
        });
    };
    let template = Template::parse(name).map_err(|e| e.to_string())?;
    let ctx = with_matrix(&template.contexts(), contexts, matrix);
    let rendered = expr::render(&template, &scope(&ctx)).map_err(|e| e.to_string())?;
    if matrix.is_empty() || template.contexts().contains("matrix") {
        Ok(rendered)
    } else {
        Ok(format!("{rendered}{}", suffix()))
    }
}

/// The labels a worker needs to run one instance of `job`: its `runs-on` rendered with
/// `matrix` (and the other contexts). A string is one label (or, when it is one expression,
/// whatever that gives: a string or a list of strings); a list is its items; a mapping is its
/// `labels` plus its `group` (kiln has no runner groups: a group is one more label). Blank
/// and repeated labels are dropped; no `runs-on` is no labels, which any worker may run.
pub fn runs_on_labels(
    job: &Job,
    matrix: &Map<String, Value>,
    contexts: &Map<String, Value>,
) -> Result<Vec<String>, String> {
    let Some(runs_on) = &job.runs_on else {
        return Ok(Vec::new());
    };
    let ctx = match value_contexts(runs_on) {
        Ok(names) => with_matrix(&names, contexts, matrix),
        // Evaluating says what is wrong with it.
        Err(()) => with_matrix(&contexts.keys().cloned().collect(), contexts, matrix),
    };
    let value = expr::eval_value(runs_on, &scope(&ctx)).map_err(|e| e.to_string())?;
    let mut labels: Vec<String> = Vec::new();
    let mut add = |v: &Value| -> Result<(), String> {
        let items: &[Value] = match v {
            Value::Array(items) => items,
            other => std::slice::from_ref(other),
        };
        for item in items {
            let label = match item {
                Value::String(s) => s.trim().to_owned(),
                Value::Null => continue,
                Value::Number(_) | Value::Bool(_) => expr::to_display_string(item),
                Value::Array(_) | Value::Object(_) => {
                    return Err(format!(
                        "a label must be a string, but one evaluated to {}",
                        serde_json::to_string(item).unwrap_or_default()
                    ));
                }
            };
            if !label.is_empty() && !labels.contains(&label) {
                labels.push(label);
            }
        }
        Ok(())
    };
    match &value {
        Value::Object(m) => {
            for key in ["labels", "group"] {
                if let Some(v) = m.get(key) {
                    add(v)?;
                }
            }
        }
        other => add(other)?,
    }
    Ok(labels)
}

/// `strategy.fail-fast` (default true): whether one failed instance cancels the others.
pub fn fail_fast(job: &Job, contexts: &Map<String, Value>) -> bool {
    match job.strategy.as_ref().and_then(|s| s.fail_fast.as_ref()) {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => expr::eval_value(v, &scope(contexts))
            .map(|v| expr::is_truthy(&v))
            .unwrap_or(true),
    }
}

/// `strategy.max-parallel`: how many instances may run at once (`None`: no limit).
pub fn max_parallel(job: &Job, contexts: &Map<String, Value>) -> Option<usize> {
    let v = job.strategy.as_ref()?.max_parallel.as_ref()?;
    let v = match v {
        Value::Number(_) => v.clone(),
        other => expr::eval_value(other, &scope(contexts)).ok()?,
    };
    let n = match &v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    if n >= 1.0 {
        // Truncation is what GitHub does with a fractional limit.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "n ≥ 1, checked"
        )]
        Some(n as usize)
    } else {
        None
    }
}

/// Plan a run of `wf` without running it: one entry per job instance, in declaration order.
/// `if:` is not evaluated. `contexts` holds what is known before any job runs (`github`,
/// `inputs`, `vars`, `env`, …); a job whose matrix reads `needs` is one entry with
/// `matrix: None` and its name as written.
pub fn dry_run(
    wf: &Workflow,
    contexts: &Map<String, Value>,
) -> Result<Vec<PlannedJob>, Diagnostics> {
    let mut problems = validate(wf);
    let mut out = Vec::new();
    for job in wf.jobs.values() {
        let planned = |name: String, matrix: Option<Map<String, Value>>, labels| PlannedJob {
            workflow: wf.file.clone(),
            id: job.id.clone(),
            name,
            needs: job.needs.clone(),
            matrix,
            labels,
        };
        if matrix_waits_for_needs(job) {
            out.push(planned(
                job.name.clone().unwrap_or_else(|| job.id.clone()),
                None,
                Vec::new(),
            ));
            continue;
        }
        match expand_inner(job, contexts) {
            Ok(list) => out.extend(
                list.into_iter()
                    .map(|i| planned(i.name, Some(i.matrix), i.labels)),
            ),
            Err(e) => problems.push(Diagnostic {
                severity: Severity::Error,
                file: wf.file.clone(),
                pos: job.pos,
                path: format!("jobs.{}.{}", job.id, e.key),
                message: e.message,
            }),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Diagnostics(problems))
    }
}

#[cfg(test)]
mod tests;
