//! kiln-worker: the remote worker (`kiln worker`). It registers with a server, long-polls for
//! jobs whose `runs-on` labels it has, runs each with the same executor as the server's local
//! pool (`kiln-exec`) in a folder of its own, streams the job's progress back under the
//! lease's fencing token, and heartbeats to keep its leases.
//!
//! - A job the server says is cancelled is cancelled here (its steps' process groups killed)
//!   and reported `cancelled`; a job whose lease the server says this worker lost (it expired
//!   and went to another worker) is stopped and nothing more is reported.
//! - Draining (SIGTERM, SIGINT): no new claims; running jobs finish and report; then it
//!   returns.
//! - Reports that fail for a network reason are retried with backoff, keeping their order,
//!   until the lease would have expired.
//!
//! Not here: deciding which job runs where (the server's engine), the CLI flags (`kiln-cli`).

mod artifacts;
mod job;
mod outputs;
mod package;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_core::ids::JobId;
use kiln_proto::workers::{
    AssignedJob, AssignmentRequest, ClaimRequest, Claimed, Handoff, Heartbeat, HeartbeatReply,
    HeldJob, PROTOCOL, RegisterWorker, Registered, WorkerId,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The servers' base URLs (`http://host:port`): one server, or replicas of one database.
    /// The worker registers with the first that answers and claims jobs from each in turn;
    /// a job's reports and heartbeats go to the server that gave it.
    pub servers: Vec<String>,
    /// A `worker`-role API token.
    pub token: String,
    pub name: String,
    pub labels: Vec<String>,
    /// Jobs at once.
    pub slots: u32,
    /// Where each job gets its folder (`<work dir>/<job id>/`), removed when it ends.
    pub work_dir: PathBuf,
    /// At most this many bytes of the dependency outputs package builds fetched are kept
    /// (`<work dir>/outputs`), least recently used ones removed first.
    pub output_cache: u64,
    /// kiln's version, shown to people.
    pub version: String,
}

/// Why the worker stopped other than by draining.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The server refused the worker (a protocol it does not speak, a bad token, bad
    /// settings): nothing will change by trying again.
    #[error("the server refused this worker: {0}")]
    Refused(String),
    /// The server could not be reached or failed.
    #[error("{0}")]
    Unreachable(String),
}

/// The servers a worker asks for jobs, by URL, in the order it learned them.
type Servers = Arc<Mutex<Vec<(String, Api)>>>;

/// Adds the replicas a server named that the worker does not know yet.
fn learn(servers: &Servers, urls: &[String], token: &str) {
    let Ok(mut known) = servers.lock() else {
        return;
    };
    for url in urls {
        let url = url.trim_end_matches('/');
        if url.is_empty() || known.iter().any(|(u, _)| u.trim_end_matches('/') == url) {
            continue;
        }
        match Api::new(url, token) {
            Ok(api) => {
                tracing::info!(server = %url, "a replica to ask for jobs too");
                known.push((url.to_owned(), api));
            }
            Err(e) => tracing::warn!(server = %url, error = %e, "cannot use a replica"),
        }
    }
}

/// A job running here.
struct Running {
    token: i64,
    /// Which of the servers gave it (its reports and heartbeats go there).
    server: usize,
    /// Cancels the job's steps (run cancelled, or draining past its grace).
    cancel: CancellationToken,
    /// Set when the server says this worker lost the lease: report nothing more.
    lost: CancellationToken,
}

/// The HTTP side: one client, the server's URL, the token.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// What a request's answer was, beyond success.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A 4xx with the envelope's code and message.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The server could not be reached, or answered 5xx.
    Failed(String),
}

impl Api {
    fn new(server: &str, token: &str) -> Result<Api, WorkerError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| WorkerError::Unreachable(format!("failed to make an HTTP client: {e}")))?;
        Ok(Api {
            http,
            base: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<T, Answer> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(timeout)
            .json(body);
        let res = req
            .send()
            .await
            .map_err(|e| Answer::Failed(e.to_string()))?;
        Self::data(res).await
    }

    /// `GET path` with the token; the response whatever its status.
    async fn send_get(&self, path: &str, timeout: Duration) -> Result<reqwest::Response, Answer> {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Answer::Failed(e.to_string()))
    }

    pub(crate) async fn get_bytes(&self, path: &str, timeout: Duration) -> Result<Vec<u8>, Answer> {
        let res = self.send_get(path, timeout).await?;
        let status = res.status();
        if status.is_success() {
            return res
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| Answer::Failed(e.to_string()));
        }
        Err(Self::refusal(status, res).await)
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, Answer> {
        let res = self.send_get(path, timeout).await?;
        Self::data(res).await
    }

    /// Streams a response's body into the file `dest` (created or truncated).
    pub(crate) async fn get_to_file(
        &self,
        path: &str,
        dest: &std::path::Path,
        timeout: Duration,
    ) -> Result<(), Answer> {
        use tokio::io::AsyncWriteExt;
        let mut res = self.send_get(path, timeout).await?;
        let status = res.status();
        if !status.is_success() {
            return Err(Self::refusal(status, res).await);
        }
        let write =
            |e: std::io::Error| Answer::Failed(format!("cannot write {}: {e}", dest.display()));
        let mut file = tokio::fs::File::create(dest).await.map_err(write)?;
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| Answer::Failed(e.to_string()))?
        {
            file.write_all(&chunk).await.map_err(write)?;
        }
        file.flush().await.map_err(write)
    }

    /// Sends a file as a request's body, streamed.
    pub(crate) async fn put_file(
        &self,
        path: &str,
        file: &std::path::Path,
        timeout: Duration,
    ) -> Result<(), Answer> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| Answer::Failed(format!("cannot read {}: {e}", file.display())))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let res = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(timeout)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| Answer::Failed(e.to_string()))?;
        Self::data::<Value>(res).await.map(|_| ())
    }

    async fn data<T: DeserializeOwned>(res: reqwest::Response) -> Result<T, Answer> {
        let status = res.status();
        if !status.is_success() {
            return Err(Self::refusal(status, res).await);
        }
        let body: Value = res
            .json()
            .await
            .map_err(|e| Answer::Failed(format!("an answer that is not JSON: {e}")))?;
        serde_json::from_value(body.get("data").cloned().unwrap_or(Value::Null))
            .map_err(|e| Answer::Failed(format!("an answer of the wrong shape: {e}")))
    }

    async fn refusal(status: reqwest::StatusCode, res: reqwest::Response) -> Answer {
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let message = body["error"]["message"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}"), str::to_owned);
        if status.is_client_error() {
            Answer::Refused {
                status: status.as_u16(),
                code,
                message,
            }
        } else {
            Answer::Failed(format!("HTTP {status}: {message}"))
        }
    }
}

fn answer_error(what: &str, a: Answer) -> WorkerError {
    match a {
        Answer::Refused { code, message, .. } => {
            WorkerError::Refused(format!("{what}: {code}: {message}"))
        }
        Answer::Failed(m) => WorkerError::Unreachable(format!("failed to {what}: {m}")),
    }
}

/// Registers, then claims and runs jobs until `drain` is cancelled and the running jobs have
/// ended. `started` is told the worker's id once it is registered.
pub async fn run_worker(
    config: WorkerConfig,
    drain: CancellationToken,
    started: impl FnOnce(WorkerId),
) -> Result<(), WorkerError> {
    let apis = config
        .servers
        .iter()
        .map(|s| Api::new(s, &config.token))
        .collect::<Result<Vec<_>, _>>()?;
    if apis.is_empty() {
        return Err(WorkerError::Refused("no server to work for".to_owned()));
    }
    // Replicas share their database, so the first that answers registers the worker for all.
    let introduce = RegisterWorker {
        name: config.name.clone(),
        labels: config.labels.clone(),
        slots: config.slots,
        protocol: PROTOCOL,
        version: config.version.clone(),
    };
    let mut registered: Option<Registered> = None;
    let mut last_error = None;
    for (api, server) in apis.iter().zip(&config.servers) {
        match api
            .post::<Registered>(
                "/api/v1/worker/register",
                &introduce,
                Duration::from_secs(30),
            )
            .await
        {
            Ok(r) => {
                registered = Some(r);
                break;
            }
            Err(a @ Answer::Refused { .. }) => {
                return Err(answer_error(&format!("register with {server}"), a));
            }
            Err(a) => last_error = Some(answer_error(&format!("register with {server}"), a)),
        }
    }
    let Some(registered) = registered else {
        return Err(last_error.unwrap_or_else(|| {
            WorkerError::Unreachable("failed to register with any server".to_owned())
        }));
    };
    let id = registered.id;
    started(id);
    // The servers asked for jobs: those given, then the replicas they name (learned again at
    // every heartbeat). Only ever appended to, so a job's server index stays valid.
    let servers: Servers = Arc::new(Mutex::new(
        config
            .servers
            .iter()
            .cloned()
            .zip(apis.iter().cloned())
            .collect(),
    ));
    learn(&servers, &registered.replicas, &config.token);
    std::fs::create_dir_all(&config.work_dir).map_err(|e| {
        WorkerError::Refused(format!(
            "cannot make the work dir {}: {e}",
            config.work_dir.display()
        ))
    })?;
    let heartbeat_every = Duration::from_millis(registered.heartbeat_ms.max(100));
    let lease = Duration::from_millis(registered.lease_ms.max(1_000));
    let running: Arc<Mutex<HashMap<JobId, Running>>> = Arc::default();
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeats(
        servers.clone(),
        config.token.clone(),
        id,
        running.clone(),
        paused.clone(),
        heartbeat_every,
        stop_heartbeat.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let ctx = job::Context {
        api: apis[0].clone(),
        worker: id,
        name: config.name.clone(),
        work_dir: config.work_dir.clone(),
        lease,
        runs: Arc::default(),
        sandboxes: Arc::default(),
        outputs: outputs::OutputCache::new(config.work_dir.join("outputs"), config.output_cache),
    };
    // One server: a long poll. Several: each asked without waiting, starting with the one that
    // last gave jobs (a few times in a row at most, so that the others are asked too); only
    // when none of them had a job, a short long poll of each in turn.
    const STAY: u32 = 8;
    let mut stayed = 0u32;
    let mut empty_in_a_row = 0usize;
    let mut failures: Vec<u32> = Vec::new();
    let mut retry_at: Vec<tokio::time::Instant> = Vec::new();
    let mut next = 0usize;
    while !drain.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        let (names, apis): (Vec<String>, Vec<Api>) = servers
            .lock()
            .map(|s| s.iter().cloned().unzip())
            .unwrap_or_default();
        failures.resize(apis.len(), 0);
        retry_at.resize(apis.len(), tokio::time::Instant::now());
        let busy = running.lock().map_or(0, |r| r.len());
        let free = config
            .slots
            .saturating_sub(u32::try_from(busy).unwrap_or(u32::MAX));
        if free == 0 || paused.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::select! {
                () = drain.cancelled() => break,
                _ = tasks.join_next(), if !tasks.is_empty() => {}
                () = tokio::time::sleep(heartbeat_every) => {}
            }
            continue;
        }
        // The next server not backing off; when all are, wait for the first to be due.
        let now = tokio::time::Instant::now();
        let due = (0..apis.len())
            .map(|k| (next + k) % apis.len())
            .find(|&k| retry_at[k] <= now);
        let Some(server) = due else {
            let soonest = retry_at.iter().min().copied().unwrap_or(now);
            tokio::select! {
                () = drain.cancelled() => break,
                () = tokio::time::sleep_until(soonest) => {}
            }
            continue;
        };
        next = (server + 1) % apis.len();
        let api = &apis[server];
        let wait_ms = if apis.len() == 1 {
            20_000
        } else if empty_in_a_row >= apis.len() {
            1_000
        } else {
            0
        };
        let claim_path = format!("/api/v1/worker/{id}/claim");
        let claim_body = ClaimRequest { free, wait_ms };
        let ask = api.post::<Claimed>(&claim_path, &claim_body, Duration::from_secs(60));
        let claimed = tokio::select! {
            () = drain.cancelled() => break,
            c = ask => c,
        };
        match claimed {
            Ok(c) => {
                failures[server] = 0;
                if c.jobs.is_empty() && c.handoffs.is_empty() {
                    empty_in_a_row += 1;
                    stayed = 0;
                } else {
                    empty_in_a_row = 0;
                    if stayed < STAY && apis.len() > 1 {
                        stayed += 1;
                        next = server;
                    } else {
                        stayed = 0;
                    }
                }
                let ctx = job::Context {
                    api: api.clone(),
                    ..ctx.clone()
                };
                for assigned in c.jobs {
                    start_job(&ctx, server, &running, &mut tasks, assigned);
                }
                // Every hand-off's details at once: a slow driver must not hold the others'
                // leases up until they run out.
                let fetched = c.handoffs.into_iter().filter_map(|handoff| {
                    let (driver, api) = server_of(&servers, &handoff.server, &config.token)?;
                    Some(async move {
                        let got = assignment(&api, id, &handoff).await;
                        (handoff, driver, api, got)
                    })
                });
                for (handoff, driver, api, got) in futures_util::future::join_all(fetched).await {
                    match got {
                        Ok(assigned) => {
                            let ctx = job::Context { api, ..ctx.clone() };
                            start_job(&ctx, driver, &running, &mut tasks, assigned);
                        }
                        Err(e) => {
                            tracing::warn!(
                                job = %handoff.job,
                                server = %handoff.server,
                                error = ?e,
                                "cannot get a handed-off job's details from the replica driving \
                                 it: giving the job back"
                            );
                            // Through the replica that gave it: queued again at once rather
                            // than when the lease runs out, and not counted as an attempt.
                            let path = format!("/api/v1/worker/{id}/jobs/{}/release", handoff.job);
                            let body = AssignmentRequest {
                                token: handoff.token,
                            };
                            if let Err(e) = apis[server]
                                .post::<serde_json::Value>(&path, &body, Duration::from_secs(10))
                                .await
                            {
                                tracing::warn!(job = %handoff.job, error = ?e, "cannot give a job back; its lease will run out");
                            }
                        }
                    }
                }
            }
            Err(Answer::Refused { status: 404, .. }) => {
                stop_heartbeat.cancel();
                return Err(WorkerError::Refused(format!(
                    "{} does not know this worker (its store was reset, or it is not a \
                     replica of the server the worker registered with)",
                    names[server]
                )));
            }
            Err(Answer::Refused { code, message, .. }) => {
                stop_heartbeat.cancel();
                return Err(WorkerError::Refused(format!("claim: {code}: {message}")));
            }
            Err(Answer::Failed(m)) => {
                failures[server] += 1;
                let wait = Duration::from_millis(500 * 2u64.pow(failures[server].min(6)));
                tracing::warn!(server = %names[server], error = %m, retry_in = ?wait, "cannot claim jobs");
                retry_at[server] = tokio::time::Instant::now() + wait;
            }
        }
    }
    tracing::info!("draining: no new jobs; waiting for the running ones");
    while tasks.join_next().await.is_some() {}
    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    Ok(())
}

/// The details of a handed-off job from the replica driving it (`api`), asked up to three
/// times while it does not answer.
async fn assignment(api: &Api, worker: WorkerId, handoff: &Handoff) -> Result<AssignedJob, Answer> {
    let path = format!("/api/v1/worker/{worker}/jobs/{}/assignment", handoff.job);
    let body = AssignmentRequest {
        token: handoff.token,
    };
    let mut tries = 0;
    loop {
        match api
            .post::<AssignedJob>(&path, &body, Duration::from_secs(30))
            .await
        {
            Err(Answer::Failed(_)) if tries < 2 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(250 * tries)).await;
            }
            other => return other,
        }
    }
}

/// The index and client of the server at `url`, learned now if new.
fn server_of(servers: &Servers, url: &str, token: &str) -> Option<(usize, Api)> {
    learn(servers, &[url.to_owned()], token);
    let url = url.trim_end_matches('/');
    let known = servers.lock().ok()?;
    known
        .iter()
        .position(|(u, _)| u.trim_end_matches('/') == url)
        .map(|i| (i, known[i].1.clone()))
}

fn start_job(
    ctx: &job::Context,
    server: usize,
    running: &Arc<Mutex<HashMap<JobId, Running>>>,
    tasks: &mut tokio::task::JoinSet<()>,
    assigned: AssignedJob,
) {
    let cancel = CancellationToken::new();
    let lost = CancellationToken::new();
    if let Ok(mut r) = running.lock() {
        r.insert(
            assigned.job,
            Running {
                token: assigned.token,
                server,
                cancel: cancel.clone(),
                lost: lost.clone(),
            },
        );
    }
    tracing::info!(job = %assigned.job, name = %assigned.name, attempt = assigned.attempt, "job claimed");
    let ctx = ctx.clone();
    let running = running.clone();
    tasks.spawn(async move {
        let job = assigned.job;
        job::run(&ctx, assigned, cancel, lost).await;
        if let Ok(mut r) = running.lock() {
            r.remove(&job);
        }
    });
}

/// Every `every`, tells each server which of its jobs run here; cancels what a server says to
/// cancel and stops what it says this worker lost.
async fn heartbeats(
    servers: Servers,
    token: String,
    id: WorkerId,
    running: Arc<Mutex<HashMap<JobId, Running>>>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let apis: Vec<Api> = servers
            .lock()
            .map(|s| s.iter().map(|(_, api)| api.clone()).collect())
            .unwrap_or_default();
        let beats = apis.iter().enumerate().map(|(server, api)| {
            let jobs: Vec<HeldJob> = running.lock().map_or_else(
                |_| Vec::new(),
                |r| {
                    r.iter()
                        .filter(|(_, run)| run.server == server)
                        .map(|(job, run)| HeldJob {
                            job: *job,
                            token: run.token,
                        })
                        .collect()
                },
            );
            async move {
                let reply: Result<HeartbeatReply, Answer> = api
                    .post(
                        &format!("/api/v1/worker/{id}/heartbeat"),
                        &Heartbeat { jobs },
                        every.max(Duration::from_secs(5)),
                    )
                    .await;
                (server, reply)
            }
        });
        for (server, reply) in futures_util::future::join_all(beats).await {
            match reply {
                Ok(reply) => {
                    learn(&servers, &reply.replicas, &token);
                    paused.store(reply.paused, std::sync::atomic::Ordering::Relaxed);
                    if let Ok(r) = running.lock() {
                        for job in &reply.cancel {
                            if let Some(run) = r.get(job).filter(|run| run.server == server) {
                                tracing::info!(%job, "the server cancelled the job");
                                run.cancel.cancel();
                            }
                        }
                        for job in &reply.lost {
                            if let Some(run) = r.get(job).filter(|run| run.server == server) {
                                tracing::warn!(%job, "lease lost: stopping the job");
                                run.lost.cancel();
                                run.cancel.cancel();
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = ?e, "heartbeat failed"),
            }
        }
    }
}
