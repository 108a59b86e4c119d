//! `kiln logs [-f] RUN [JOB]`: a run's job logs, from a server or the local store
//! (`source.rs`), printed the same way from either.
//!
//! Each job's part opens with `=== NAME (STATUS) ===`; with the local store, each step's part
//! with `##[step N] NAME` (a server's log API serves bytes, not where steps begin). `--follow`
//! polls until the run has ended: whole lines are printed as they come, and a job's header is
//! printed again whenever the output switches to it from another job.
//!
//! The polling loop does the I/O; [`Printer`] decides what is printed, over any `Write`.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use kiln_core::ids::{JobId, JobStatus};
use kiln_proto::{Job, Run, exit};

use crate::Failure;
use crate::args::LogsArgs;
use crate::output::stderr_line;
use crate::source::{Chunk, Source, StepStart};

/// How often `--follow` reads again.
const POLL: Duration = Duration::from_millis(200);
/// How long `--follow` waits for a server (or store) that stopped answering, and how often it
/// tries meanwhile.
const LOST_FOR: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(1);

pub(crate) async fn logs(a: LogsArgs) -> Result<i32, Failure> {
    let source = Source::open(&a.remote, &a.store).await?;
    let run = source.run(&a.run).await?;
    let mut printer = Printer::new(io::stdout().lock());
    let result = if a.follow {
        follow(&source, run, a.job.as_deref(), &mut printer).await
    } else {
        print_once(&source, &run, a.job.as_deref(), &mut printer).await
    };
    match result {
        // Whoever read stdout has gone (`kiln logs … | head`): nothing left to do.
        Err(Stop::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(Stop::Write(e)) => Err(Failure::internal(format!(
            "failed to write the log to stdout: {e}"
        ))),
        Err(Stop::Failed(f)) => Err(f),
        Ok(code) => Ok(code),
    }
}

/// Why printing stopped early.
enum Stop {
    Failed(Failure),
    Write(io::Error),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Self::Failed(f)
    }
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Self::Write(e)
    }
}

/// The jobs of `run` that `selector` names: by id (or a prefix of it), key or display name;
/// every job without a selector.
pub(crate) fn select_jobs<'r>(run: &'r Run, selector: Option<&str>) -> Vec<&'r Job> {
    run.jobs
        .iter()
        .filter(|j| match selector {
            None => true,
            Some(sel) => j.id.to_string().starts_with(sel) || j.key == sel || j.name == sel,
        })
        .collect()
}

fn no_such_job(run: &Run, selector: &str) -> Failure {
    let names: Vec<&str> = run.jobs.iter().map(|j| j.name.as_str()).collect();
    Failure::invalid(format!(
        "run {} has no job `{selector}`; its jobs: {}",
        run.id,
        names.join(", ")
    ))
}

/// Whether a job is left out: skipped jobs have no log, and are shown only when asked for.
fn left_out(job: &Job, selector: Option<&str>) -> bool {
    job.status == JobStatus::Skipped && selector.is_none()
}

/// Everything logged so far, job after job.
async fn print_once<W: Write>(
    source: &Source,
    run: &Run,
    selector: Option<&str>,
    printer: &mut Printer<W>,
) -> Result<i32, Stop> {
    let jobs = select_jobs(run, selector);
    if let (Some(sel), true) = (selector, jobs.is_empty()) {
        return Err(no_such_job(run, sel).into());
    }
    for job in jobs {
        if left_out(job, selector) {
            continue;
        }
        printer.track(job)?;
        read_available(source, job, printer).await?;
        printer.finish(job.id)?;
    }
    printer.flush()?;
    Ok(exit::OK)
}

/// Reads `job`'s log from where the printer is up to the end of what is there now.
async fn read_available<W: Write>(
    source: &Source,
    job: &Job,
    printer: &mut Printer<W>,
) -> Result<(), Stop> {
    loop {
        let chunk = source.read_log(job, printer.offset(job.id)).await?;
        let caught_up = chunk.complete || chunk.data.is_empty() || chunk.next_offset >= chunk.total;
        let steps = if chunk.data.is_empty() {
            None
        } else {
            source.step_starts(job).await?
        };
        printer.feed(job.id, &chunk, steps)?;
        if caught_up {
            return Ok(());
        }
    }
}

/// Until the run has ended: reads every job's new lines (jobs that start later too), then
/// waits [`POLL`]. Answers the run's verdict. A server (or store) that stops answering midway
/// — a server restarting — is waited for up to [`LOST_FOR`].
async fn follow<W: Write>(
    source: &Source,
    run: Run,
    selector: Option<&str>,
    printer: &mut Printer<W>,
) -> Result<i32, Stop> {
    let id = run.id.to_string();
    let mut state = Following::default();
    let mut first = Some(run);
    let mut lost_since: Option<Instant> = None;
    loop {
        let attempt = async {
            let run = match first.take() {
                Some(run) => run,
                None => source.run(&id).await?,
            };
            pass(source, run, selector, printer, &mut state).await
        };
        match attempt.await {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => {
                if lost_since.take().is_some() {
                    stderr_line("following again");
                }
                tokio::time::sleep(POLL).await;
            }
            Err(Stop::Failed(f)) if f.code == exit::INTERNAL => {
                let since = *lost_since.get_or_insert_with(|| {
                    stderr_line(&format!(
                        "{}; trying again for {}s",
                        f.message,
                        LOST_FOR.as_secs()
                    ));
                    Instant::now()
                });
                if since.elapsed() >= LOST_FOR {
                    return Err(f.into());
                }
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What `--follow` remembers from one pass to the next.
#[derive(Default)]
struct Following {
    /// The run had ended at the previous pass already.
    ended_before: bool,
    /// The note that the selected job has not started yet was printed.
    said_waiting: bool,
}

/// One pass of `--follow` over `run` as just read: every job's new lines. Answers the run's
/// verdict once it has ended and everything was printed.
async fn pass<W: Write>(
    source: &Source,
    run: Run,
    selector: Option<&str>,
    printer: &mut Printer<W>,
    state: &mut Following,
) -> Result<Option<i32>, Stop> {
    let ended = run.status.is_terminal();
    let jobs = select_jobs(&run, selector);
    if let (Some(sel), true) = (selector, jobs.is_empty()) {
        // A matrix that waits on other jobs' outputs has no jobs yet.
        if ended {
            return Err(no_such_job(&run, sel).into());
        }
        if !state.said_waiting {
            stderr_line(&format!(
                "waiting for job `{sel}` of run {} to start",
                run.id
            ));
            state.said_waiting = true;
        }
    }
    for job in &jobs {
        printer.track(job)?;
        if printer.is_done(job.id) {
            continue;
        }
        if left_out(job, selector) {
            printer.skip(job.id);
            continue;
        }
        read_available(source, job, printer).await?;
    }
    printer.flush()?;
    // A run that has ended has written every log: one more pass reads what the last one
    // could not have seen, whatever a job's own status says.
    if ended && (state.ended_before || jobs.iter().all(|j| printer.is_done(j.id))) {
        for job in &jobs {
            if !printer.is_done(job.id) && !left_out(job, selector) {
                printer.finish(job.id)?;
            }
        }
        printer.flush()?;
        stderr_line(&format!(
            "run {} #{} {}: {}",
            run.workflow_name, run.run_number, run.id, run.status
        ));
        return Ok(Some(crate::trigger::verdict(std::slice::from_ref(&run))));
    }
    state.ended_before = ended;
    Ok(None)
}

/// What has been read and printed of one job's log.
#[derive(Debug)]
struct JobLog {
    name: String,
    status: JobStatus,
    attempts: i64,
    /// Its log started over (another attempt) after some of it was read: headers say which.
    restarted: bool,
    /// Where the next read continues.
    offset: u64,
    /// Bytes read but not printed: the start of a line not yet ended.
    pending: Vec<u8>,
    /// Where `pending` starts in the log.
    pending_at: u64,
    steps: Vec<StepStart>,
    /// How many of `steps` have had their header printed.
    announced: usize,
    /// Anything (its header at least) was printed.
    headed: bool,
    done: bool,
}

impl JobLog {
    fn new(job: &Job) -> Self {
        Self {
            name: job.name.clone(),
            status: job.status,
            attempts: job.attempts,
            restarted: false,
            offset: 0,
            pending: Vec::new(),
            pending_at: 0,
            steps: Vec::new(),
            announced: 0,
            headed: false,
            done: false,
        }
    }
}

/// Turns log reads into what `kiln logs` prints: job headers, step headers, whole lines.
pub(crate) struct Printer<W> {
    out: W,
    /// The job whose lines were printed last.
    current: Option<JobId>,
    jobs: HashMap<JobId, JobLog>,
}

impl<W: Write> Printer<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            current: None,
            jobs: HashMap::new(),
        }
    }

    /// Takes in `job` as last read: its name and status for headers; when its attempt
    /// changed, its log starts over (what was left of the previous attempt is printed first).
    pub(crate) fn track(&mut self, job: &Job) -> io::Result<()> {
        let Some(known) = self.jobs.get_mut(&job.id) else {
            self.jobs.insert(job.id, JobLog::new(job));
            return Ok(());
        };
        known.name.clone_from(&job.name);
        known.status = job.status;
        if known.attempts == job.attempts {
            return Ok(());
        }
        let read_some = known.offset > 0 || known.headed;
        if read_some {
            self.emit(job.id, true)?;
        }
        let mut fresh = JobLog::new(job);
        fresh.restarted = read_some;
        self.jobs.insert(job.id, fresh);
        if self.current == Some(job.id) {
            self.current = None;
        }
        Ok(())
    }

    /// Where the next read of `job`'s log starts.
    pub(crate) fn offset(&self, job: JobId) -> u64 {
        self.jobs.get(&job).map_or(0, |j| j.offset)
    }

    pub(crate) fn is_done(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_some_and(|j| j.done)
    }

    /// `job` is not shown at all.
    pub(crate) fn skip(&mut self, job: JobId) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.done = true;
        }
    }

    /// A read of `job`'s log (tracked before) and, when known, where its steps begin: prints
    /// the whole lines it completes; all of it when the read says the log is complete.
    pub(crate) fn feed(
        &mut self,
        job: JobId,
        chunk: &Chunk,
        steps: Option<Vec<StepStart>>,
    ) -> io::Result<()> {
        let Some(j) = self.jobs.get_mut(&job) else {
            return Ok(());
        };
        if j.done {
            return Ok(());
        }
        if !chunk.data.is_empty() {
            if j.pending.is_empty() {
                j.pending_at = chunk.offset;
            }
            j.pending.extend_from_slice(&chunk.data);
        }
        j.offset = j.offset.max(chunk.next_offset);
        if let Some(steps) = steps {
            j.steps = steps;
        }
        if chunk.complete {
            self.finish(job)
        } else {
            self.emit(job, false)
        }
    }

    /// `job`'s log has been read to its end: prints what is left (ending the last line) and
    /// its header if nothing was printed for it yet.
    pub(crate) fn finish(&mut self, job: JobId) -> io::Result<()> {
        self.emit(job, true)?;
        if let Some(j) = self.jobs.get_mut(&job) {
            j.done = true;
            if !j.headed {
                self.header(job)?;
            }
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// `=== NAME (STATUS) ===` unless `job`'s lines were the last printed.
    fn header(&mut self, job: JobId) -> io::Result<()> {
        if self.current == Some(job) {
            return Ok(());
        }
        let Some(j) = self.jobs.get_mut(&job) else {
            return Ok(());
        };
        if j.restarted {
            writeln!(
                self.out,
                "=== {} ({}, attempt {}) ===",
                j.name, j.status, j.attempts
            )?;
        } else {
            writeln!(self.out, "=== {} ({}) ===", j.name, j.status)?;
        }
        j.headed = true;
        self.current = Some(job);
        Ok(())
    }

    /// Prints `job`'s pending whole lines — a step's last line ends where the next step
    /// begins — and with `all`, the unfinished last line too.
    fn emit(&mut self, job: JobId, all: bool) -> io::Result<()> {
        loop {
            let Some(j) = self.jobs.get(&job) else {
                return Ok(());
            };
            if j.pending.is_empty() {
                return Ok(());
            }
            // Where the next step not yet announced begins, within `pending`.
            let boundary = j.steps[j.announced.min(j.steps.len())..]
                .iter()
                .find(|s| s.offset > j.pending_at)
                .map(|s| usize::try_from(s.offset - j.pending_at).unwrap_or(usize::MAX))
                .filter(|&b| b <= j.pending.len());
            let scan = boundary.unwrap_or(j.pending.len());
            let (end, add_newline) = match j.pending[..scan].iter().position(|&b| b == b'\n') {
                Some(nl) => (nl + 1, false),
                None if boundary.is_some() || all => (scan, true),
                None => return Ok(()),
            };
            self.header(job)?;
            let Some(j) = self.jobs.get_mut(&job) else {
                return Ok(());
            };
            while let Some(step) = j.steps.get(j.announced) {
                if step.offset > j.pending_at {
                    break;
                }
                match (&step.name, step.step) {
                    (Some(name), _) => writeln!(self.out, "##[step {}] {name}", step.step + 1)?,
                    (None, u32::MAX) => writeln!(self.out, "##[kiln]")?,
                    (None, n) => writeln!(self.out, "##[step {}]", n + 1)?,
                }
                j.announced += 1;
            }
            self.out.write_all(&j.pending[..end])?;
            if add_newline {
                self.out.write_all(b"\n")?;
            }
            j.pending.drain(..end);
            j.pending_at += end as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::ids::RunId;

    fn job(name: &str, status: JobStatus, attempts: i64) -> Job {
        serde_json::from_value(serde_json::json!({
            "id": JobId::new().to_string(),
            "run": RunId::new().to_string(),
            "key": name,
            "name": name,
            "matrix": {},
            "status": status,
            "attempts": attempts,
            "max_attempts": 3,
            "needs": [],
            "started_at": null,
            "finished_at": null,
            "outputs": {},
            "steps": [],
        }))
        .unwrap()
    }

    fn chunk(offset: u64, data: &str, complete: bool) -> Chunk {
        let next = offset + data.len() as u64;
        Chunk {
            data: data.as_bytes().to_vec(),
            offset,
            next_offset: next,
            total: next,
            complete,
        }
    }

    fn step(step: u32, offset: u64, name: &str) -> StepStart {
        StepStart {
            step,
            offset,
            name: Some(name.to_owned()),
        }
    }

    fn text(p: Printer<Vec<u8>>) -> String {
        String::from_utf8(p.out).unwrap()
    }

    #[test]
    fn whole_lines_under_job_and_step_headers() {
        let a = job("build", JobStatus::Success, 1);
        let mut p = Printer::new(Vec::new());
        p.track(&a).unwrap();
        // The first step wrote no newline at its end; the second begins at byte 3.
        let steps = vec![step(0, 0, "one"), step(1, 3, "two")];
        p.feed(a.id, &chunk(0, "abcdef\ngh", true), Some(steps))
            .unwrap();
        assert_eq!(
            text(p),
            "=== build (success) ===\n##[step 1] one\nabc\n##[step 2] two\ndef\ngh\n"
        );
    }

    #[test]
    fn unfinished_lines_wait_and_headers_come_back_when_jobs_take_turns() {
        let a = job("a", JobStatus::Running, 1);
        let b = job("b", JobStatus::Running, 1);
        let mut p = Printer::new(Vec::new());
        p.track(&a).unwrap();
        p.track(&b).unwrap();
        p.feed(a.id, &chunk(0, "a1\na", false), None).unwrap();
        p.feed(b.id, &chunk(0, "b1\n", false), None).unwrap();
        assert_eq!(p.offset(a.id), 4);
        p.feed(a.id, &chunk(4, "2\n", false), None).unwrap();
        p.feed(a.id, &chunk(6, "", true), None).unwrap();
        assert!(p.is_done(a.id));
        assert!(!p.is_done(b.id));
        assert_eq!(
            text(p),
            "=== a (running) ===\na1\n=== b (running) ===\nb1\n=== a (running) ===\na2\n"
        );
    }

    #[test]
    fn a_job_without_output_gets_its_header_when_it_ends() {
        let a = job("quiet", JobStatus::Cancelled, 1);
        let mut p = Printer::new(Vec::new());
        p.track(&a).unwrap();
        p.feed(a.id, &chunk(0, "", false), None).unwrap();
        assert_eq!(p.out, b"");
        p.finish(a.id).unwrap();
        assert_eq!(text(p), "=== quiet (cancelled) ===\n");
    }

    #[test]
    fn another_attempt_starts_the_log_over() {
        let mut a = job("flaky", JobStatus::Running, 1);
        let mut p = Printer::new(Vec::new());
        p.track(&a).unwrap();
        p.feed(a.id, &chunk(0, "first\npart", false), None).unwrap();
        a.attempts = 2;
        p.track(&a).unwrap();
        assert_eq!(p.offset(a.id), 0);
        p.feed(a.id, &chunk(0, "second\n", true), None).unwrap();
        assert_eq!(
            text(p),
            "=== flaky (running) ===\nfirst\npart\n=== flaky (running, attempt 2) ===\nsecond\n"
        );
    }

    #[test]
    fn jobs_are_selected_by_id_prefix_key_or_name() {
        let mut run: Run = serde_json::from_value(serde_json::json!({
            "id": RunId::new().to_string(),
            "project": kiln_core::ids::ProjectId::new().to_string(),
            "workflow": ".kiln/workflows/ci.yml",
            "workflow_name": "ci",
            "run_number": 1,
            "run_attempt": 1,
            "status": "running",
            "event": "push",
            "ref": "refs/heads/main",
            "sha": "",
            "inputs": {},
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": null,
            "finished_at": null,
            "jobs": [],
        }))
        .unwrap();
        let mut t1 = job("test (1)", JobStatus::Success, 1);
        t1.key = "test".to_owned();
        let mut t2 = job("test (2)", JobStatus::Success, 1);
        t2.key = "test".to_owned();
        let lint = job("lint", JobStatus::Success, 1);
        run.jobs = vec![t1.clone(), t2, lint.clone()];
        assert_eq!(select_jobs(&run, None).len(), 3);
        assert_eq!(select_jobs(&run, Some("test")).len(), 2);
        assert_eq!(select_jobs(&run, Some("test (1)"))[0].id, t1.id);
        let prefix = &lint.id.to_string()[..30];
        assert_eq!(select_jobs(&run, Some(prefix))[0].id, lint.id);
        assert!(select_jobs(&run, Some("nope")).is_empty());
        assert!(no_such_job(&run, "nope").message.contains("lint"));
    }
}
