//! Where `kiln runs` and `kiln logs` read runs, jobs and logs: a server's read API when
//! `--server`/`KILN_SERVER` is set, else the local store — the same answers either way, so
//! the commands print the same thing.
//!
//! Not here: what is printed (`runs.rs`, `logs.rs`), or any write.

use std::collections::HashMap;

use kiln_core::ids::{ProjectId, RunStatus};
use kiln_proto::{Job, Run};
use kiln_store::{RunFilter, Store, StoreError};
use serde::Deserialize;

use crate::Failure;
use crate::args::{ServerArgs, StoreArgs};
use crate::client::{Client, path_segment};

/// Runs per request when reading a server's pages (the most it serves at once).
const MAX_PAGE: u32 = 500;
/// Log bytes per read.
const LOG_READ: usize = 256 * 1024;

/// Which runs to list.
#[derive(Debug, Default)]
pub(crate) struct RunQuery {
    /// A project's id or name.
    pub(crate) project: Option<String>,
    pub(crate) status: Option<RunStatus>,
    /// A workflow's file or display name.
    pub(crate) workflow: Option<String>,
    /// At most this many; 0 means all.
    pub(crate) limit: u32,
}

/// A slice of a job's log (its latest attempt).
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub(crate) data: Vec<u8>,
    /// Where `data` starts.
    pub(crate) offset: u64,
    /// Where the next read continues.
    pub(crate) next_offset: u64,
    /// The log's length so far.
    pub(crate) total: u64,
    /// The job has ended and this read reached the end of its log.
    pub(crate) complete: bool,
}

/// Where one step's part of a job's log begins, and the step's name when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StepStart {
    /// The step's index (`u32::MAX`: kiln's own lines about the job).
    pub(crate) step: u32,
    pub(crate) offset: u64,
    pub(crate) name: Option<String>,
}

/// The server's `/api/v1/runs` page.
#[derive(Deserialize)]
struct RunPage {
    runs: Vec<Run>,
    next_cursor: Option<String>,
}

/// The server's `/api/v1/logs/{job}` answer.
#[derive(Deserialize)]
struct LogRead {
    data: String,
    offset: u64,
    next_offset: u64,
    total: u64,
    complete: bool,
    /// Where each step's output begins (servers before this field sent none).
    #[serde(default)]
    steps: Vec<LogStep>,
}

#[derive(Debug, serde::Deserialize)]
struct LogStep {
    step: u32,
    offset: u64,
}

/// A server or a store to read from.
pub(crate) enum Source {
    Remote(Client),
    Local(Store),
}

impl Source {
    /// The server of `remote` if it names one, else the store of `store`.
    pub(crate) async fn open(remote: &ServerArgs, store: &StoreArgs) -> Result<Self, Failure> {
        match &remote.server {
            Some(server) => Ok(Self::Remote(Client::new(server, remote.token.as_deref())?)),
            None => Ok(Self::Local(crate::local::open_store(store).await?)),
        }
    }

    /// Runs matching `q`, newest first, without their jobs.
    pub(crate) async fn runs(&self, q: &RunQuery) -> Result<Vec<Run>, Failure> {
        match self {
            Self::Local(store) => {
                let mut filter = RunFilter {
                    project: None,
                    status: q.status,
                    workflow: q.workflow.clone(),
                    before: None,
                    limit: q.limit,
                };
                if let Some(p) = &q.project {
                    let found = match p.parse::<ProjectId>() {
                        Ok(id) => store.get_project(id).await?,
                        Err(_) => store.find_project(p).await?,
                    };
                    // An unknown project has no runs (as the server answers).
                    match found {
                        Some(project) => filter.project = Some(project.id),
                        None => return Ok(Vec::new()),
                    }
                }
                Ok(store.list_runs(&filter).await?)
            }
            Self::Remote(client) => {
                let mut runs = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let want = match q.limit {
                        0 => MAX_PAGE,
                        n => (n - runs.len() as u32).min(MAX_PAGE),
                    };
                    let page: RunPage = client.get(&runs_path(q, want, cursor.as_deref())).await?;
                    let got = page.runs.len();
                    runs.extend(page.runs);
                    match page.next_cursor {
                        Some(next)
                            if got > 0 && (q.limit == 0 || runs.len() < q.limit as usize) =>
                        {
                            cursor = Some(next);
                        }
                        _ => break,
                    }
                }
                if q.limit > 0 {
                    runs.truncate(q.limit as usize);
                }
                Ok(runs)
            }
        }
    }

    /// The run `id_or_prefix` names, with its jobs and their steps. An unknown run, a prefix
    /// too short or not unique, is invalid input.
    pub(crate) async fn run(&self, id_or_prefix: &str) -> Result<Run, Failure> {
        match self {
            Self::Local(store) => match store.resolve_run(id_or_prefix).await {
                Ok(Some(run)) => Ok(run),
                Ok(None) => Err(Failure::invalid(format!(
                    "no run `{id_or_prefix}` in the store"
                ))),
                Err(e @ (StoreError::Ambiguous { .. } | StoreError::PrefixTooShort { .. })) => {
                    Err(Failure::invalid(format!("run `{id_or_prefix}`: {e}")))
                }
                Err(e) => Err(e.into()),
            },
            Self::Remote(client) => {
                client
                    .get(&format!("/api/v1/runs/{}", path_segment(id_or_prefix)))
                    .await
            }
        }
    }

    /// `job`'s log from `offset`. `job` is the job as read before this call: its status
    /// decides, locally, whether the log is complete (a job that had ended before the read
    /// has written all of it).
    pub(crate) async fn read_log(&self, job: &Job, offset: u64) -> Result<Chunk, Failure> {
        match self {
            Self::Local(store) => {
                let slice = store.read_log(job.id, offset, LOG_READ).await?;
                Ok(Chunk {
                    complete: job.status.is_terminal() && slice.next_offset >= slice.total,
                    data: slice.data,
                    offset,
                    next_offset: slice.next_offset,
                    total: slice.total,
                })
            }
            Self::Remote(client) => {
                let read: LogRead = client
                    .get(&format!("/api/v1/logs/{}?offset={offset}", job.id))
                    .await?;
                Ok(Chunk {
                    data: read.data.into_bytes(),
                    offset: read.offset,
                    next_offset: read.next_offset,
                    total: read.total,
                    complete: read.complete,
                })
            }
        }
    }

    /// Where each step's part of `job`'s log begins, in log order. Read after the log
    /// itself, so that every byte read so far is covered.
    pub(crate) async fn step_starts(&self, job: &Job) -> Result<Option<Vec<StepStart>>, Failure> {
        let starts = match self {
            Self::Local(store) => store.log_steps(job.id).await?,
            Self::Remote(client) => {
                let read: LogRead = client
                    .get(&format!("/api/v1/logs/{}?limit=1", job.id))
                    .await?;
                read.steps.into_iter().map(|s| (s.step, s.offset)).collect()
            }
        };
        let mut names: HashMap<u32, String> = job
            .steps
            .iter()
            .map(|s| (s.index, s.name.clone()))
            .collect();
        // A step that ended after `job` was read has its name in a fresher read (a step that
        // is still running has none yet: the store records steps as they end).
        if starts
            .iter()
            .any(|(step, _)| *step != u32::MAX && !names.contains_key(step))
        {
            let fresh = match self {
                Self::Local(store) => store.get_job(job.id).await?,
                Self::Remote(client) => {
                    Some(client.get(&format!("/api/v1/jobs/{}", job.id)).await?)
                }
            };
            if let Some(fresh) = fresh {
                names.extend(fresh.steps.into_iter().map(|s| (s.index, s.name)));
            }
        }
        Ok(Some(
            starts
                .into_iter()
                .map(|(step, offset)| StepStart {
                    step,
                    offset,
                    name: names.get(&step).cloned(),
                })
                .collect(),
        ))
    }
}

/// `GET /api/v1/runs` with `q`'s filters, `limit` runs, after `cursor`.
fn runs_path(q: &RunQuery, limit: u32, cursor: Option<&str>) -> String {
    let mut path = format!("/api/v1/runs?limit={limit}");
    let params = [
        ("project", q.project.as_deref()),
        ("status", q.status.map(RunStatus::as_str)),
        ("workflow", q.workflow.as_deref()),
        ("cursor", cursor),
    ];
    for (name, value) in params {
        if let Some(v) = value {
            path.push_str(&format!("&{name}={}", path_segment(v)));
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use kiln_core::ids::RunId;
    use serde_json::{Value, json};

    use super::*;

    /// A server that holds `total` runs and serves at most 2 per page, whatever `limit` asks;
    /// the paths it was asked for are recorded.
    fn paging_server(total: usize) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let runs: Vec<Value> = (0..total)
            .map(|n| {
                json!({
                    "id": RunId::new().to_string(), "project": ProjectId::new().to_string(),
                    "workflow": ".kiln/workflows/ci.yml", "workflow_name": "ci",
                    "run_number": total - n, "run_attempt": 1, "status": "success",
                    "event": "push", "ref": "refs/heads/main", "sha": "", "inputs": {},
                    "created_at": "2026-01-01T00:00:00Z", "started_at": null,
                    "finished_at": null, "jobs": [],
                })
            })
            .collect();
        let log = Arc::clone(&asked);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                        break;
                    }
                }
                let path = first.split(' ').nth(1).unwrap_or_default().to_owned();
                log.lock().unwrap().push(path.clone());
                let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
                let param = |name: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .map(str::to_owned)
                };
                let start: usize = param("cursor").map_or(0, |c| c.parse().unwrap());
                let limit: usize = param("limit").unwrap().parse().unwrap();
                let end = (start + limit.min(2)).min(runs.len());
                let next = (end < runs.len()).then(|| end.to_string());
                let body = json!({
                    "status": "success",
                    "data": { "runs": runs[start..end], "next_cursor": next },
                    "meta": { "timestamp": "2026-01-01T00:00:00Z", "version": "0", "request_id": "r" },
                })
                .to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, asked)
    }

    #[test]
    fn a_servers_pages_are_followed_up_to_the_limit() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (url, asked) = paging_server(7);
        let source = Source::Remote(Client::new(&url, None).unwrap());
        let q = |limit| RunQuery {
            status: Some(RunStatus::Success),
            limit,
            ..RunQuery::default()
        };
        let runs = rt.block_on(source.runs(&q(5))).unwrap();
        let numbers: Vec<i64> = runs.iter().map(|r| r.run_number).collect();
        assert_eq!(numbers, [7, 6, 5, 4, 3]);
        assert_eq!(
            *asked.lock().unwrap(),
            [
                "/api/v1/runs?limit=5&status=success",
                "/api/v1/runs?limit=3&status=success&cursor=2",
                "/api/v1/runs?limit=1&status=success&cursor=4",
            ]
        );
        // 0: all of them, in pages as large as a server serves.
        asked.lock().unwrap().clear();
        assert_eq!(rt.block_on(source.runs(&q(0))).unwrap().len(), 7);
        assert_eq!(asked.lock().unwrap().len(), 4);
        assert!(asked.lock().unwrap()[0].starts_with("/api/v1/runs?limit=500&"));
    }

    #[test]
    fn run_queries_are_encoded() {
        let q = RunQuery {
            project: Some("my app".to_owned()),
            status: Some(RunStatus::Failure),
            workflow: Some(".kiln/workflows/ci.yml".to_owned()),
            limit: 7,
        };
        assert_eq!(
            runs_path(&q, 7, Some("abc")),
            "/api/v1/runs?limit=7&project=my%20app&status=failure\
             &workflow=.kiln%2Fworkflows%2Fci.yml&cursor=abc"
        );
        assert_eq!(
            runs_path(&RunQuery::default(), 500, None),
            "/api/v1/runs?limit=500"
        );
    }
}
