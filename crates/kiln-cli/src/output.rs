//! What `kiln` prints: live progress (a bar on a TTY, timestamped lines otherwise), the summary
//! table, failed jobs' log tails, and JSON.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_core::ids::{JobId, JobStatus, RunId};
use kiln_engine::Progress;
use kiln_proto::Run;
use kiln_store::Store;
use serde::Serialize;
use tokio::sync::mpsc;

/// Print one line on stdout (results, not progress). When the reader has gone (`kiln … |
/// head`), kiln stops quietly as other command-line tools do, instead of panicking as
/// `println!` would; any other failure to write is reported once on stderr, with exit 3.
pub(crate) fn stdout_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        stderr_line(&format!("kiln: could not write to stdout: {e}"));
        std::process::exit(3);
    }
}

/// Print a value as pretty JSON on stdout.
pub(crate) fn print_json<T: Serialize>(value: &T) {
    let text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    stdout_line(&text);
}

pub(crate) fn stderr_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

fn clock() -> String {
    jiff::Timestamp::now().strftime("%H:%M:%S%.3fZ").to_string()
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

/// Where progress goes: a bar on a terminal, timestamped lines on stderr otherwise, and
/// nothing at all with `--format json` (stdout carries the JSON; final errors still reach
/// stderr).
pub(crate) struct Live {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Live {
    pub(crate) fn new(enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{pos}/{len}] {elapsed_precise} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { enabled, bar }
    }

    /// The bar, on a terminal.
    pub(crate) fn bar(&self) -> Option<&ProgressBar> {
        self.bar.as_ref()
    }

    /// One line of progress, above the bar or timestamped.
    pub(crate) fn line(&self, text: &str) {
        if !self.enabled {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => stderr_line(&format!("{} {text}", clock())),
        }
    }
}

/// A progress reporter fed events of type `E` ([`consume`] drives it).
pub(crate) trait Report<E> {
    fn on(&mut self, event: E);
    /// Redraws the bar (every 250 ms while there is one).
    fn refresh(&self);
    fn live(&mut self) -> &mut Live;
}

/// Feeds `reporter` every event until the sender is gone, redrawing its bar meanwhile, then
/// clears the bar.
pub(crate) async fn consume<E, R: Report<E>>(mut reporter: R, mut rx: mpsc::UnboundedReceiver<E>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => reporter.on(e),
                None => break,
            },
            _ = tick.tick(), if reporter.live().bar.is_some() => reporter.refresh(),
        }
    }
    if let Some(bar) = reporter.live().bar.take() {
        bar.finish_and_clear();
    }
}

/// Shows progress as the engine reports it.
pub(crate) struct Reporter {
    live: Live,
    total: usize,
    done: usize,
    seen: HashMap<JobId, bool>,
    running: IndexMap<JobId, (String, Instant)>,
    run_names: HashMap<RunId, String>,
    multi_run: bool,
}

impl Report<Progress> for Reporter {
    fn on(&mut self, p: Progress) {
        self.on_event(p);
    }

    fn refresh(&self) {
        self.redraw();
    }

    fn live(&mut self) -> &mut Live {
        &mut self.live
    }
}

impl Reporter {
    /// With `enabled` false (`--format json`) nothing is shown: stdout carries the JSON and the
    /// final errors still reach stderr.
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            live: Live::new(enabled),
            total: 0,
            done: 0,
            seen: HashMap::new(),
            running: IndexMap::new(),
            run_names: HashMap::new(),
            multi_run: false,
        }
    }

    pub(crate) async fn consume(self, rx: mpsc::UnboundedReceiver<Progress>) {
        consume(self, rx).await;
    }

    fn line(&self, text: &str) {
        self.live.line(text);
    }

    fn prefix(&self, run: RunId) -> String {
        if self.multi_run {
            format!(
                "[{}] ",
                self.run_names.get(&run).map(String::as_str).unwrap_or("")
            )
        } else {
            String::new()
        }
    }

    fn count(&mut self, job: JobId, finished: bool) {
        let entry = self.seen.entry(job).or_insert(false);
        if !*entry && finished {
            *entry = true;
            self.done += 1;
        }
        self.total = self.total.max(self.seen.len()).max(self.done);
    }

    fn on_event(&mut self, p: Progress) {
        match p {
            Progress::RunCreated { run } => {
                if !self.run_names.is_empty() {
                    self.multi_run = true;
                }
                self.run_names.insert(run.id, run.workflow_name.clone());
                for j in &run.jobs {
                    self.seen.entry(j.id).or_insert(false);
                }
                self.total = self.seen.len();
                self.line(&format!(
                    "run {} #{} {} ({} job{} planned)",
                    run.workflow_name,
                    run.run_number,
                    run.id,
                    run.jobs.len(),
                    if run.jobs.len() == 1 { "" } else { "s" }
                ));
            }
            Progress::JobStarted { run, job, name } => {
                self.count(job, false);
                self.running.insert(job, (name.clone(), Instant::now()));
                if self.live.bar().is_none() {
                    self.line(&format!("{}{name}: started", self.prefix(run)));
                }
            }
            Progress::JobSkipped { run, job, name } => {
                self.count(job, true);
                self.line(&format!("{}{name}: skipped", self.prefix(run)));
            }
            Progress::JobFinished {
                run,
                job,
                name,
                status,
                elapsed,
                error,
            } => {
                self.count(job, true);
                self.running.shift_remove(&job);
                let mut text = format!("{}{name}: {status} in {}", self.prefix(run), secs(elapsed));
                if let Some(e) = error {
                    text.push_str(&format!(" — {e}"));
                }
                if self.live.bar().is_none() || status != JobStatus::Success {
                    self.line(&text);
                }
            }
            Progress::RunFinished { run, status } => {
                let name = self.run_names.get(&run).cloned().unwrap_or_default();
                self.line(&format!("run {name} {run}: {status}"));
            }
        }
        self.refresh();
    }

    fn redraw(&self) {
        let Some(bar) = self.live.bar() else { return };
        bar.set_length(self.total as u64);
        bar.set_position(self.done as u64);
        let running: Vec<String> = self
            .running
            .values()
            .map(|(n, t)| format!("{n} {}", secs(t.elapsed())))
            .collect();
        bar.set_message(if running.is_empty() {
            String::new()
        } else {
            format!("running: {}", running.join(", "))
        });
    }
}

/// The end-of-run table and each failed job's log tail.
pub(crate) async fn print_run_summary(store: &Store, run: &Run) {
    stdout_line(&format!(
        "\n{} #{} — {} ({})",
        run.workflow_name, run.run_number, run.status, run.id
    ));
    let width = run
        .jobs
        .iter()
        .map(|j| j.name.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    stdout_line(&format!(
        "  {:<width$}  {:<9}  {:>8}",
        "JOB", "STATUS", "TIME"
    ));
    for j in &run.jobs {
        let time = match (j.started_at, j.finished_at) {
            (Some(s), Some(f)) => {
                let ms = f.as_millisecond() - s.as_millisecond();
                secs(Duration::from_millis(ms.max(0) as u64))
            }
            _ => "-".to_owned(),
        };
        stdout_line(&format!(
            "  {:<width$}  {:<9}  {:>8}",
            j.name,
            j.status.as_str(),
            time
        ));
    }
    for j in &run.jobs {
        if !matches!(j.status, JobStatus::Failure | JobStatus::TimedOut) {
            continue;
        }
        let tail = log_tail(store, j.id, 20).await;
        stdout_line(&format!(
            "\n--- {} ({}): last lines of its log ---",
            j.name, j.status
        ));
        if tail.is_empty() {
            stdout_line("  (no output)");
        }
        for l in tail {
            stdout_line(&format!("  {l}"));
        }
    }
}

async fn log_tail(store: &Store, job: JobId, lines: usize) -> Vec<String> {
    let Ok(head) = store.read_log(job, 0, 0).await else {
        return Vec::new();
    };
    let start = head.total.saturating_sub(16 * 1024);
    let Ok(slice) = store.read_log(job, start, 16 * 1024).await else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&slice.data);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}
