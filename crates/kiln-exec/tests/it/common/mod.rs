//! The harness: build a job from steps, run it in a temporary directory, look at what it
//! reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use kiln_core::ids::StepStatus;
use kiln_core::workflow::{Defaults, Job, Pos, Step, StepAction};
use kiln_exec::{ExecEvent, JobOutcome, JobSpec, Limits};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A `run:` step.
pub(crate) fn run(script: &str) -> Step {
    Step {
        pos: Pos::default(),
        id: None,
        name: None,
        condition: None,
        action: StepAction::Run(script.to_owned()),
        shell: None,
        working_directory: None,
        env: IndexMap::new(),
        continue_on_error: None,
        timeout_minutes: None,
    }
}

/// A `uses:` step.
pub(crate) fn uses(what: &str, with: &[(&str, &str)]) -> Step {
    let mut s = run("");
    s.action = StepAction::Uses {
        uses: what.to_owned(),
        with: with
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    s
}

pub(crate) fn with_id(mut s: Step, id: &str) -> Step {
    s.id = Some(id.to_owned());
    s
}

pub(crate) fn with_shell(mut s: Step, shell: &str) -> Step {
    s.shell = Some(shell.to_owned());
    s
}

pub(crate) fn with_if(mut s: Step, cond: &str) -> Step {
    s.condition = Some(cond.to_owned());
    s
}

pub(crate) fn with_env(mut s: Step, vars: &[(&str, &str)]) -> Step {
    for (k, v) in vars {
        s.env.insert((*k).to_owned(), (*v).to_owned());
    }
    s
}

pub(crate) fn map(vars: &[(&str, &str)]) -> IndexMap<String, String> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A job and where it runs.
pub(crate) struct Harness {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) job: Job,
    pub(crate) workflow_env: IndexMap<String, String>,
    pub(crate) workflow_defaults: Defaults,
    pub(crate) contexts: Map<String, Value>,
    pub(crate) masks: Vec<String>,
    pub(crate) cancel: CancellationToken,
    pub(crate) limits: Limits,
}

impl Harness {
    pub(crate) fn new(steps: Vec<Step>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("ws")).expect("workspace");
        let mut contexts = Map::new();
        contexts.insert("github".into(), json!({"workspace": "ws"}));
        Self {
            dir,
            job: Job {
                id: "test".into(),
                pos: Pos::default(),
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
                steps,
                packages: None,
                artifacts: Vec::new(),
            },
            workflow_env: IndexMap::new(),
            workflow_defaults: Defaults::default(),
            contexts,
            masks: Vec::new(),
            cancel: CancellationToken::new(),
            limits: Limits {
                grace: Duration::from_millis(500),
                drain: Duration::from_millis(500),
                after_kill: Duration::from_secs(2),
            },
        }
    }

    pub(crate) fn workspace(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    /// Writes a file into the workspace.
    pub(crate) fn file(&self, rel: &str, content: &str) {
        let p = self.workspace().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }

    pub(crate) async fn run(self) -> Ran {
        let spec = JobSpec {
            job: self.job,
            workflow_env: self.workflow_env,
            workflow_defaults: self.workflow_defaults,
            contexts: self.contexts,
            workspace: self.dir.path().join("ws"),
            temp_dir: self.dir.path().join("tmp"),
            base_env: vec![("CI".into(), "true".into())],
            inherit_env: true,
            masks: self.masks,
            artifacts: None,
        };
        let (tx, mut rx) = mpsc::channel(16);
        let collect = async {
            let mut events = Vec::new();
            while let Some(ev) = rx.recv().await {
                events.push(ev);
            }
            events
        };
        let (outcome, events) = tokio::join!(
            kiln_exec::run_job_with_limits(spec, tx, self.cancel, self.limits),
            collect
        );
        Ran {
            outcome,
            events,
            _dir: self.dir,
        }
    }
}

/// What a job reported.
pub(crate) struct Ran {
    pub(crate) outcome: JobOutcome,
    pub(crate) events: Vec<ExecEvent>,
    _dir: tempfile::TempDir,
}

impl Ran {
    /// The log of top-level step `index`, as text.
    pub(crate) fn log(&self, index: u32) -> String {
        let mut out = Vec::new();
        for ev in &self.events {
            if let ExecEvent::Log { index: i, data } = ev
                && *i == index
            {
                out.extend_from_slice(data);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub(crate) fn all_logs(&self) -> String {
        let mut out = Vec::new();
        for ev in &self.events {
            if let ExecEvent::Log { data, .. } = ev {
                out.extend_from_slice(data);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub(crate) fn statuses(&self) -> Vec<StepStatus> {
        self.finished().map(|s| s.status).collect()
    }

    pub(crate) fn finished(&self) -> impl Iterator<Item = &kiln_proto::Step> {
        self.events.iter().filter_map(|ev| match ev {
            ExecEvent::StepFinished { step } => Some(step),
            _ => None,
        })
    }

    pub(crate) fn outputs(&self, index: u32) -> Map<String, Value> {
        self.finished()
            .find(|s| s.index == index)
            .map(|s| s.outputs.clone())
            .unwrap_or_default()
    }
}

/// Processes whose command line is exactly `words` (read from /proc).
pub(crate) fn processes_with_cmdline(words: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = words
        .iter()
        .flat_map(|w| w.bytes().chain(std::iter::once(0)))
        .collect();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
            .is_ok_and(|c| c == want)
        {
            found.push(pid);
        }
    }
    found
}

/// Waits (bounded) until no process runs `words`; returns whether that happened.
pub(crate) async fn gone(words: &[&str]) -> bool {
    for _ in 0..50 {
        if processes_with_cmdline(words).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
