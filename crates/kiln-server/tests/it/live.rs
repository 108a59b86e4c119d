//! Live routes through the real server: `/api/v1/events` (SSE) in order and resumed with
//! `Last-Event-ID`, also under concurrent writers on PostgreSQL; `/api/v1/ws` subscriptions;
//! `/api/v1/logs/{job}/stream`; a slow client dropped without holding anyone up; shutdown
//! with streams open; and the refusals.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId, RunStatus};
use kiln_server::LiveConfig;
use kiln_store::{NewJob, NewRun};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::Server;

/// One SSE frame.
#[derive(Clone, Debug)]
struct Frame {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// A reader of an SSE response.
struct Sse {
    res: reqwest::Response,
    buf: Vec<u8>,
}

impl Sse {
    async fn open(s: &Server, path: &str, last_id: Option<i64>) -> Sse {
        let mut req = s.request(reqwest::Method::GET, path).bearer_auth(&s.admin);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            res,
            buf: Vec::new(),
        }
    }

    /// The next frame (keep-alive comments skipped); `None` when the stream ended.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(raw).unwrap();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if event.is_empty() {
                    continue;
                }
                return Some(Frame {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.res.chunk())
                .await
                .expect("the stream goes on within 60 s")
                .unwrap()?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Frames until `stop` says so (that frame included).
    async fn until(&mut self, stop: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            let done = stop(&f);
            frames.push(f);
            if done {
                return frames;
            }
        }
        panic!("the stream ended before the frame awaited: {frames:#?}");
    }
}

async fn project(s: &Server, dir: &Path, workflow: &str) -> String {
    let path = dir.join(".kiln/workflows/ci.yml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, workflow).unwrap();
    let name = format!("p{}", uuid::Uuid::new_v4().simple());
    s.store
        .upsert_project(&name, &dir.to_string_lossy())
        .await
        .unwrap();
    name
}

async fn trigger(s: &Server, project: &str) -> RunId {
    let r = s
        .post(
            &format!("/api/v1/projects/{project}/runs"),
            &s.admin,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.data()["runs"][0]["id"].as_str().unwrap().parse().unwrap()
}

const TWO_JOBS: &str = r#"
on: workflow_dispatch
jobs:
  build:
    runs-on: local
    steps:
      - run: echo building; echo built
  test:
    needs: build
    runs-on: local
    steps:
      - run: echo testing
      - run: echo tested
"#;

macro_rules! live_tests {
    ($($name:ident: $engine:expr),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let s = $crate::harness::Server::with_live(false, $engine, super::fast()).await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let s = $crate::harness::Server::with_live(true, $engine, super::fast()).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}

live_tests!(
    a_run_s_events_arrive_in_order_and_resume_after_the_last_id: true,
    concurrent_writers_lose_no_event_and_repeat_none: false,
    websocket_subscriptions_filter_by_type_and_project: true,
    a_log_streams_until_its_job_ends: true,
    refusals: false,
);

/// Live settings for tests: a quick `system.load`, the usual buffers.
fn fast() -> LiveConfig {
    LiveConfig {
        load_interval: Duration::from_millis(300),
        ..LiveConfig::default()
    }
}

async fn a_run_s_events_arrive_in_order_and_resume_after_the_last_id(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let name = project(s, dir.path(), TWO_JOBS).await;
    let mut sse = Sse::open(s, &format!("/api/v1/events?project={name}"), None).await;
    let run = trigger(s, &name).await;
    let frames = sse
        .until(|f| f.event == "run.completed" && f.data["run"] == run.to_string())
        .await;
    let stored: Vec<&Frame> = frames.iter().filter(|f| f.id.is_some()).collect();
    // Ids grow; every frame is the event's JSON with the same id and type.
    for pair in stored.windows(2) {
        assert!(pair[0].id < pair[1].id, "{pair:#?}");
    }
    for f in &stored {
        assert_eq!(f.data["id"].as_i64(), f.id);
        assert_eq!(f.data["type"], f.event);
        assert_eq!(f.data["run"], run.to_string());
    }
    let kinds: Vec<&str> = stored.iter().map(|f| f.event.as_str()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k}: {kinds:?}"))
    };
    assert!(pos("run.queued") < pos("run.started"), "{kinds:?}");
    assert!(pos("run.started") < pos("job.started"), "{kinds:?}");
    assert!(pos("job.completed") < pos("run.completed"), "{kinds:?}");
    assert_eq!(frames.last().unwrap().data["data"]["status"], "success");
    // Log lines carry their text; steps report progress.
    let text: String = stored
        .iter()
        .filter(|f| f.event == "log.line")
        .map(|f| f.data["data"]["text"].as_str().unwrap().to_owned())
        .collect();
    for word in ["building", "built", "testing", "tested"] {
        assert!(text.contains(word), "{text}");
    }
    assert!(stored.iter().all(|f| f.data["data"].get("blob").is_none()));
    assert!(kinds.contains(&"job.progress"), "{kinds:?}");
    // system.load comes by itself, without an id.
    let mut load = Sse::open(s, "/api/v1/events?types=system.load", None).await;
    let sample = load.next().await.unwrap();
    assert_eq!(sample.event, "system.load");
    assert!(sample.id.is_none());
    assert!(sample.data["data"]["cpus"].as_u64().unwrap() >= 1);

    // Resuming after the third event gives the rest, each once, the same.
    let third = stored[2].id.unwrap();
    let mut resumed = Sse::open(s, &format!("/api/v1/events?project={name}"), Some(third)).await;
    let again = resumed
        .until(|f| f.event == "run.completed" && f.data["run"] == run.to_string())
        .await;
    let ids: Vec<i64> = again.iter().filter_map(|f| f.id).collect();
    let expected: Vec<i64> = stored
        .iter()
        .filter_map(|f| f.id)
        .filter(|id| *id > third)
        .collect();
    assert_eq!(ids, expected);
    let texts: Vec<&Value> = again.iter().map(|f| &f.data).collect();
    let originals: Vec<&Value> = stored.iter().skip(3).map(|f| &f.data).collect();
    assert_eq!(texts, originals);
}

fn new_run(project: ProjectId, jobs: usize) -> NewRun {
    NewRun {
        id: RunId::new(),
        project,
        workflow: "ci.yml".to_owned(),
        workflow_name: "ci".to_owned(),
        event: "push".to_owned(),
        git_ref: "refs/heads/main".to_owned(),
        sha: "0123456789abcdef".to_owned(),
        inputs: Map::new(),
        status: RunStatus::Queued,
        jobs: (0..jobs)
            .map(|i| NewJob {
                id: JobId::new(),
                key: format!("j{i}"),
                name: format!("j{i}"),
                matrix: Map::new(),
                needs: Vec::new(),
                status: JobStatus::Queued,
                max_attempts: 1,
                labels: Vec::new(),
            })
            .collect(),
        at: jiff::Timestamp::now(),
        driver: None,
        context: Default::default(),
    }
}

/// Eight writers create runs at once while one client reads the stream and another stops
/// half way and resumes: each sees every event once, in id order, none missing.
async fn concurrent_writers_lose_no_event_and_repeat_none(s: &Server) {
    let project = s.store.upsert_project("busy", "/src/busy").await.unwrap();
    let start = s.store.event_head().await.unwrap();
    let path = "/api/v1/events?types=run.*,job.*";
    let mut whole = Sse::open(s, path, None).await;
    let mut half = Sse::open(s, path, None).await;
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let store = s.store.clone();
            tokio::spawn(async move {
                for _ in 0..15 {
                    store.create_run(new_run(project.id, 3)).await.unwrap();
                }
            })
        })
        .collect();
    // 120 runs of 3 jobs: a run.queued and three job.queued each.
    let total = 120 * 4;
    let mut first_half = Vec::new();
    while first_half.len() < total / 2 {
        let f = half.next().await.unwrap();
        first_half.push(f.id.unwrap());
    }
    drop(half);
    for w in writers {
        w.await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < total {
        seen.push(whole.next().await.unwrap().id.unwrap());
    }
    let mut resumed = Sse::open(s, path, first_half.last().copied()).await;
    let mut rest = Vec::new();
    while first_half.len() + rest.len() < total {
        rest.push(resumed.next().await.unwrap().id.unwrap());
    }
    let stored: Vec<i64> = s
        .store
        .events_after(start, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(stored.len(), total);
    assert_eq!(seen, stored);
    let joined: Vec<i64> = first_half.into_iter().chain(rest).collect();
    assert_eq!(joined, stored);
    assert_eq!(joined.iter().collect::<BTreeSet<_>>().len(), total);
}

async fn ws_connect(
    s: &Server,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = format!("ws://{}/api/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.admin).parse().unwrap(),
    );
    let (ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.status(), 101);
    ws
}

/// The next JSON text frame (pings skipped).
async fn ws_next<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a frame within 60 s")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

async fn websocket_subscriptions_filter_by_type_and_project(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let mine = project(s, &dir.path().join("mine"), TWO_JOBS).await;
    let other = project(s, &dir.path().join("other"), TWO_JOBS).await;
    let mut ws = ws_connect(s).await;
    let send = |v: Value| Message::Text(v.to_string().into());
    // Bad messages are answered, and the socket stays open.
    ws.send(send(json!({ "action": "dance" }))).await.unwrap();
    let e = ws_next(&mut ws).await;
    assert_eq!(e["action"], "error");
    assert_eq!(e["code"], "BAD_MESSAGE");
    ws.send(send(json!({ "action": "subscribe", "types": ["Run!"] })))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut ws).await["code"], "BAD_MESSAGE");
    ws.send(send(json!({ "action": "subscribe", "projects": ["nope"] })))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut ws).await["code"], "PROJECT_NOT_FOUND");
    ws.send(send(json!({ "action": "unsubscribe", "id": "x" })))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut ws).await["code"], "SUBSCRIPTION_NOT_FOUND");

    ws.send(send(json!({
        "action": "subscribe",
        "id": "runs",
        "types": ["run.*"],
        "projects": [mine],
    })))
    .await
    .unwrap();
    assert_eq!(
        ws_next(&mut ws).await,
        json!({ "action": "subscribed", "id": "runs" })
    );
    // The other project's run comes first; none of its events may arrive.
    let skipped = trigger(s, &other).await;
    let run = trigger(s, &mine).await;
    let mut kinds = Vec::new();
    loop {
        let e = ws_next(&mut ws).await;
        assert_eq!(e["run"], run.to_string(), "{e:#}");
        let kind = e["type"].as_str().unwrap().to_owned();
        assert!(kind.starts_with("run."), "{e:#}");
        kinds.push(kind);
        if e["type"] == "run.completed" {
            break;
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("run.queued"));
    ws.send(send(json!({ "action": "unsubscribe", "id": "runs" })))
        .await
        .unwrap();
    assert_eq!(
        ws_next(&mut ws).await,
        json!({ "action": "unsubscribed", "id": "runs" })
    );
    let _ = skipped;
    ws.close(None).await.unwrap();
}

const CHATTY: &str = r#"
on: workflow_dispatch
jobs:
  talk:
    runs-on: local
    steps:
      - run: for i in 1 2 3 4 5; do echo "line $i"; sleep 0.2; done
"#;

async fn a_log_streams_until_its_job_ends(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let name = project(s, dir.path(), CHATTY).await;
    let run = trigger(s, &name).await;
    let job = s.store.get_run(run).await.unwrap().unwrap().jobs[0].id;
    let mut live = Sse::open(s, &format!("/api/v1/logs/{job}/stream"), None).await;
    let frames = live.until(|f| f.event == "end").await;
    let text: String = frames
        .iter()
        .filter(|f| f.event == "log")
        .map(|f| f.data["text"].as_str().unwrap())
        .collect();
    for i in 1..=5 {
        assert!(text.contains(&format!("line {i}\n")), "{text}");
    }
    let end = frames.last().unwrap();
    assert_eq!(end.data["status"], "success");
    // Offsets follow on; each frame's id is where the next one starts.
    let mut at = 0;
    for f in frames.iter().filter(|f| f.event == "log") {
        assert_eq!(f.data["offset"].as_u64().unwrap(), at);
        at += f.data["text"].as_str().unwrap().len() as u64;
        assert_eq!(f.id, Some(at as i64));
    }
    assert_eq!(end.data["offset"].as_u64().unwrap(), at);
    assert!(live.next().await.is_none(), "the stream ends with the job");

    // A finished job's stream gives the whole log at once, then `end`; resuming skips.
    let mut again = Sse::open(s, &format!("/api/v1/logs/{job}/stream"), Some(5)).await;
    let frames = again.until(|f| f.event == "end").await;
    let replay: String = frames
        .iter()
        .filter(|f| f.event == "log")
        .map(|f| f.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(replay, text[5..]);
}

async fn refusals(s: &Server) {
    let bad = s.get("/api/v1/events?types=Run!", Some(&s.admin)).await;
    assert_eq!(
        bad.expect_error(400, "BAD_REQUEST")["details"]["parameter"],
        "types"
    );
    let bad = s.get("/api/v1/events?run=xyz", Some(&s.admin)).await;
    assert_eq!(
        bad.expect_error(400, "BAD_REQUEST")["details"]["parameter"],
        "run"
    );
    let bad = s.get("/api/v1/events?project=nope", Some(&s.admin)).await;
    bad.expect_error(404, "PROJECT_NOT_FOUND");
    let bad = s
        .send(
            s.request(reqwest::Method::GET, "/api/v1/events")
                .bearer_auth(&s.admin)
                .header("Last-Event-ID", "yesterday"),
        )
        .await;
    assert_eq!(
        bad.expect_error(400, "BAD_REQUEST")["details"]["header"],
        "Last-Event-ID"
    );
    s.get("/api/v1/events", None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    let job = JobId::new();
    s.get(&format!("/api/v1/logs/{job}/stream"), Some(&s.admin))
        .await
        .expect_error(404, "JOB_NOT_FOUND");
    s.get("/api/v1/logs/nope/stream", Some(&s.admin))
        .await
        .expect_error(404, "JOB_NOT_FOUND");
    s.get("/api/v1/ws", Some(&s.admin))
        .await
        .expect_error(400, "BAD_REQUEST");
}

const FLOOD: &str = r#"
on: workflow_dispatch
jobs:
  flood:
    runs-on: local
    steps:
      - run: yes "a line of the flood that goes on and on and on and on" | head -c 24000000
"#;

/// A client that stops reading is dropped with `CLIENT_TOO_SLOW` once its buffer is full;
/// a client reading along at the same time is served, and the run is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_and_holds_nobody_up() {
    let s = Server::with_live(
        false,
        true,
        LiveConfig {
            client_buffer: 8,
            ..LiveConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let name = project(&s, dir.path(), FLOOD).await;
    // The slow client: a socket with a tiny receive buffer that is never read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(s.addr).await.unwrap();
    slow.write_all(
        format!(
            "GET /api/v1/events?types=log.line HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            s.admin
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Another client, reading along (the run's and jobs' transitions).
    let mut reader = Sse::open(
        &s,
        &format!("/api/v1/events?project={name}&types=run.*,job.*"),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let run = trigger(&s, &name).await;
    let frames = reader
        .until(|f| f.event == "run.completed" || f.event == "error")
        .await;
    assert_eq!(
        frames.last().unwrap().event,
        "run.completed",
        "the reader kept up"
    );
    let job = s.store.get_run(run).await.unwrap().unwrap().jobs[0].id;
    let log = s.store.read_log(job, 0, 0).await.unwrap();
    assert_eq!(log.total, 24_000_000);
    let done = s.store.get_run(run).await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Success);
    // Now read what the slow client was sent: it ends with the reason.
    let mut got = Vec::new();
    let mut buf = vec![0; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), slow.read(&mut buf))
            .await
            .expect("the slow client's stream ends")
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        let tail = String::from_utf8_lossy(&got[got.len().saturating_sub(4096)..]).into_owned();
        if n == 0 || tail.contains("CLIENT_TOO_SLOW") {
            assert!(tail.contains("event: error"), "{tail}");
            assert!(tail.contains("CLIENT_TOO_SLOW"), "{tail}");
            break;
        }
        assert!(Instant::now() < deadline);
    }
    s.stop().await;
}

/// Shutting down ends open streams with `SERVER_SHUTTING_DOWN` instead of waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let s = Server::with_live(false, false, LiveConfig::default()).await;
    let mut sse = Sse::open(&s, "/api/v1/events", None).await;
    let mut ws = ws_connect(&s).await;
    let stopping = tokio::spawn(s.stop());
    let last = sse.next().await.unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "SERVER_SHUTTING_DOWN");
    assert!(sse.next().await.is_none());
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
                assert_eq!(frame.reason.as_str(), "SERVER_SHUTTING_DOWN");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    stopping.await.unwrap();
}
