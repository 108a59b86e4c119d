//! The operations routes over HTTP, on SQLite and PostgreSQL: the queue and the statistics
//! (any reader), the settings and the database's stats and export (admins only), and
//! `/metrics` (open unless configured otherwise; route templates as labels, never ids).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId, RunStatus};
use kiln_server::{AppState, ServerConfig};
use kiln_store::{ExportTable, NewJob, NewRun, Op, OpResult, Store};
use serde_json::{Map, Value, json};
use sqlx::Connection as _;
use tokio::sync::oneshot;

use crate::harness::{Server, both_backends};

both_backends!(
    the_queue_lists_waiting_and_held_jobs,
    bad_parameters_are_named,
    stats_count_and_time_runs_per_workflow,
    admin_routes_refuse_other_roles,
    config_shows_the_settings,
    database_stats_count_the_tables,
    the_export_streams_every_row_as_json_lines,
    metrics_count_requests_by_route_template,
);

fn new_job(key: &str, status: JobStatus) -> NewJob {
    NewJob {
        id: JobId::new(),
        key: key.to_owned(),
        name: key.to_owned(),
        matrix: Map::new(),
        needs: Vec::new(),
        status,
        max_attempts: 2,
        labels: Vec::new(),
    }
}

fn new_run(project: ProjectId, workflow: &str, at: Timestamp, jobs: Vec<NewJob>) -> NewRun {
    NewRun {
        id: RunId::new(),
        project,
        workflow: workflow.to_owned(),
        workflow_name: workflow.to_owned(),
        event: "workflow_dispatch".to_owned(),
        git_ref: "refs/heads/main".to_owned(),
        sha: "0".repeat(40),
        inputs: Map::new(),
        status: RunStatus::Queued,
        jobs,
        at,
        driver: None,
        context: Default::default(),
    }
}

async fn lease(store: &Store, job: JobId) -> i64 {
    let r = store
        .commit(vec![Op::GrantLease {
            job,
            owner: "test-pool".to_owned(),
            ttl_ms: 60_000,
            at: Timestamp::now(),
        }])
        .await
        .unwrap();
    match r[..] {
        [OpResult::Lease { token }] => token,
        ref other => panic!("no lease: {other:?}"),
    }
}

async fn the_queue_lists_waiting_and_held_jobs(s: &Server) {
    let store = &s.store;
    let p = store.upsert_project("ops", "/srv/ops").await.unwrap();
    let now = Timestamp::now();
    let older = store
        .create_run(new_run(
            p.id,
            "ci.yml",
            now - Duration::from_secs(60),
            vec![
                new_job("build", JobStatus::Queued),
                new_job("later", JobStatus::Pending),
            ],
        ))
        .await
        .unwrap();
    let newer = store
        .create_run(new_run(
            p.id,
            "deploy.yml",
            now,
            vec![
                new_job("approve", JobStatus::Waiting),
                new_job("ship", JobStatus::Queued),
            ],
        ))
        .await
        .unwrap();
    let ship = newer.jobs[1].id;
    let token = lease(store, ship).await;
    store
        .commit(vec![Op::StartJob {
            job: ship,
            token,
            at: Timestamp::now(),
        }])
        .await
        .unwrap();

    let viewer = s.token("viewer").await;
    let r = s.get("/api/v1/queue", Some(&viewer)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.data();
    let jobs = data["jobs"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| (j["key"].as_str().unwrap(), j["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("build", "queued"),
            ("approve", "waiting"),
            ("ship", "running")
        ]
    );
    let build = &jobs[0];
    assert_eq!(build["id"], older.jobs[0].id.to_string());
    assert_eq!(build["run"], older.id.to_string());
    assert_eq!(build["project"], p.id.to_string());
    assert_eq!(build["project_name"], "ops");
    assert_eq!(build["workflow"], "ci.yml");
    assert_eq!(build["name"], "build");
    assert_eq!(
        (build["attempts"].clone(), build["max_attempts"].clone()),
        (json!(0), json!(2))
    );
    let created: Timestamp = build["created_at"].as_str().unwrap().parse().unwrap();
    assert!(created < now, "{created} {now}");
    assert!(build["started_at"].is_null());
    let running = &jobs[2];
    assert_eq!(running["attempts"], 1);
    assert!(running["started_at"].is_string(), "{running:#}");
    assert_eq!(running["lease_owner"], "test-pool");
    assert_eq!(
        data["counts"],
        json!({ "queued": 1, "waiting": 1, "leased": 0, "running": 1 })
    );
    assert_eq!(
        (data["total"].clone(), data["limit"].clone()),
        (json!(3), json!(100))
    );

    // `limit` bounds the list, not the counts.
    let one = s.get("/api/v1/queue?limit=1", Some(&viewer)).await.data();
    assert_eq!(one["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(one["jobs"][0]["key"], "build");
    assert_eq!(
        (one["total"].clone(), one["limit"].clone()),
        (json!(3), json!(1))
    );
    let most = s.get("/api/v1/queue?limit=1000", Some(&viewer)).await;
    assert_eq!(most.status, 200, "{}", most.text);

    // A worker token reads only the worker routes.
    let worker = s.token("worker").await;
    s.get("/api/v1/queue", Some(&worker))
        .await
        .expect_error(403, "FORBIDDEN");
    s.get("/api/v1/queue", None)
        .await
        .expect_error(401, "UNAUTHORIZED");
}

async fn bad_parameters_are_named(s: &Server) {
    for (path, name) in [
        ("/api/v1/queue?limit=0", "limit"),
        ("/api/v1/queue?limit=1001", "limit"),
        ("/api/v1/queue?limit=ten", "limit"),
        ("/api/v1/queue?limit=-1", "limit"),
        ("/api/v1/stats?days=0", "days"),
        ("/api/v1/stats?days=366", "days"),
        ("/api/v1/stats?days=1.5", "days"),
        ("/api/v1/stats?days=", "days"),
    ] {
        let r = s.get(path, Some(&s.admin)).await;
        let e = r.expect_error(400, "BAD_REQUEST");
        assert_eq!(e["details"]["parameter"], name, "{path}: {e:#}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{name}`")),
            "{path}: {e:#}"
        );
    }
}

/// Marks a run running at `start` and finished `secs` seconds later.
async fn ran(store: &Store, run: RunId, start: Timestamp, secs: u64, status: RunStatus) {
    let r = store
        .commit(vec![
            Op::SetRunStatus {
                run,
                status: RunStatus::Running,
                at: start,
            },
            Op::SetRunStatus {
                run,
                status,
                at: start + Duration::from_secs(secs),
            },
        ])
        .await
        .unwrap();
    assert_eq!(r, [OpResult::Done, OpResult::Done]);
}

async fn stats_count_and_time_runs_per_workflow(s: &Server) {
    let store = &s.store;
    let p = store.upsert_project("web", "/srv/web").await.unwrap();
    let now = Timestamp::now();
    let three_days_ago = now - Duration::from_secs(3 * 86_400);
    // ci.yml: 20 runs of 1..=20 seconds, the last failed: p50 = 10 s, p95 = 19 s.
    for secs in 1..=20_u64 {
        let run = store
            .create_run(new_run(p.id, "ci.yml", three_days_ago, vec![]))
            .await
            .unwrap();
        let status = if secs == 20 {
            RunStatus::Failure
        } else {
            RunStatus::Success
        };
        ran(store, run.id, now - Duration::from_secs(100), secs, status).await;
    }
    // docs.yml: one queued run with one queued job, today.
    store
        .create_run(new_run(
            p.id,
            "docs.yml",
            now,
            vec![new_job("build", JobStatus::Queued)],
        ))
        .await
        .unwrap();

    let viewer = s.token("viewer").await;
    let r = s.get("/api/v1/stats", Some(&viewer)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.data();
    assert_eq!(data["runs"]["success"], 19);
    assert_eq!(data["runs"]["failure"], 1);
    assert_eq!(data["runs"]["queued"], 1);
    assert_eq!(data["runs"]["running"], 0);
    assert_eq!(
        data["runs"].as_object().unwrap().len(),
        RunStatus::ALL.len()
    );
    assert_eq!(data["jobs"]["queued"], 1);
    assert_eq!(
        data["jobs"].as_object().unwrap().len(),
        JobStatus::ALL.len()
    );
    assert_eq!(
        data["workflows"],
        json!([
            {
                "project": p.id.to_string(), "project_name": "web", "workflow": "ci.yml",
                "runs": 20, "finished": 20, "succeeded": 19,
                "duration_p50_seconds": 10.0, "duration_p95_seconds": 19.0
            },
            {
                "project": p.id.to_string(), "project_name": "web", "workflow": "docs.yml",
                "runs": 1, "finished": 0, "succeeded": 0,
                "duration_p50_seconds": null, "duration_p95_seconds": null
            }
        ])
    );
    assert_eq!(data["days"], 30);
    let per_day = data["runs_per_day"].as_object().unwrap();
    assert_eq!(per_day.len(), 30);
    let day = |t: Timestamp| jiff::tz::TimeZone::UTC.to_datetime(t).date().to_string();
    let days: Vec<&String> = per_day.keys().collect();
    assert_eq!(days.last().unwrap().as_str(), day(now));
    assert!(
        days.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {days:?}"
    );
    assert_eq!(per_day[&day(now)], 1);
    assert_eq!(per_day[&day(three_days_ago)], 20);
    assert_eq!(
        per_day.values().map(|v| v.as_i64().unwrap()).sum::<i64>(),
        21
    );

    let week = s.get("/api/v1/stats?days=2", Some(&viewer)).await.data();
    let per_day = week["runs_per_day"].as_object().unwrap();
    assert_eq!(per_day.len(), 2);
    assert_eq!(
        per_day.values().map(|v| v.as_i64().unwrap()).sum::<i64>(),
        1
    );
    let year = s.get("/api/v1/stats?days=365", Some(&viewer)).await.data();
    assert_eq!(year["runs_per_day"].as_object().unwrap().len(), 365);
}

async fn admin_routes_refuse_other_roles(s: &Server) {
    for role in ["viewer", "developer", "maintainer"] {
        let token = s.token(role).await;
        for path in [
            "/api/v1/config",
            "/api/v1/database/stats",
            "/api/v1/database/export",
        ] {
            let r = s.get(path, Some(&token)).await;
            let e = r.expect_error(403, "FORBIDDEN");
            assert!(
                e["message"].as_str().unwrap().contains("admin"),
                "{role} {path}: {e:#}"
            );
            s.get(path, None).await.expect_error(401, "UNAUTHORIZED");
        }
    }
}

async fn config_shows_the_settings(s: &Server) {
    let r = s.get("/api/v1/config", Some(&s.admin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c = r.data();
    assert_eq!(c["public_url"], s.base.as_str());
    assert_eq!(c["body_limit"], 2 * 1024 * 1024);
    assert_eq!(c["request_timeout_seconds"], 30.0);
    assert_eq!(
        c["egress"],
        json!({
            "hosts": [], "cidrs": [],
            "allow_loopback": false, "allow_private": false, "allow_local_paths": false
        })
    );
    assert!(c["data_dir"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(c["backend"], s.backend);
    assert_eq!(c["database"], Value::Null);
    assert_eq!(c["metrics_open"], true);
    assert_eq!(c["engine"], false);
    assert_eq!(c["worker_slots"], Value::Null);

    // Every operations route is in the OpenAPI document.
    let doc = s.get("/api/v1/openapi.json", None).await.json();
    for path in [
        "/api/v1/queue",
        "/api/v1/stats",
        "/api/v1/config",
        "/api/v1/database/stats",
        "/api/v1/database/export",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} is documented"
        );
    }
    assert!(
        doc["paths"]["/api/v1/database/export"]["get"]["responses"]["200"]["content"]
            ["application/x-ndjson"]
            .is_object()
    );
}

async fn database_stats_count_the_tables(s: &Server) {
    let store = &s.store;
    let p = store.upsert_project("db", "/srv/db").await.unwrap();
    store
        .create_run(new_run(
            p.id,
            "ci.yml",
            Timestamp::now(),
            vec![
                new_job("a", JobStatus::Queued),
                new_job("b", JobStatus::Queued),
            ],
        ))
        .await
        .unwrap();
    let r = s.get("/api/v1/database/stats", Some(&s.admin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let d = r.data();
    assert_eq!(d["backend"], s.backend);
    assert!(d["size_bytes"].as_i64().is_some_and(|n| n > 0), "{d:#}");
    let rows: BTreeMap<String, i64> = d["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["rows"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows["projects"], 1);
    assert_eq!(rows["runs"], 1);
    assert_eq!(rows["jobs"], 2);
    assert_eq!(rows["api_tokens"], 1);
    assert!(rows["events"] >= 3, "{rows:?}");
    assert!(rows.contains_key("steps") && rows.contains_key("log_chunks"));
    // The blob folder exists (the store made it) and is measured.
    assert!(d["blob_bytes"].is_u64(), "{d:#}");
    assert!(d["blob_files"].is_u64(), "{d:#}");
}

async fn the_export_streams_every_row_as_json_lines(s: &Server) {
    let store = &s.store;
    let p = store.upsert_project("export", "/srv/export").await.unwrap();
    // More jobs (and their events) than one page of the export holds.
    let jobs: Vec<NewJob> = (0..700)
        .map(|i| new_job(&format!("j{i}"), JobStatus::Queued))
        .collect();
    let run = store
        .create_run(new_run(p.id, "big.yml", Timestamp::now(), jobs))
        .await
        .unwrap();
    let viewer = s.token("viewer").await;

    let r = s.get("/api/v1/database/export", Some(&s.admin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert!(r.text.ends_with('\n'));
    let mut order = Vec::new();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in r.text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{line}");
        let table = v["table"].as_str().unwrap().to_owned();
        assert!(v["row"].is_object(), "{line}");
        if order.last() != Some(&table) {
            order.push(table.clone());
        }
        *count.entry(table.clone()).or_default() += 1;
        rows.entry(table).or_default().push(v["row"].clone());
    }
    // Each table once, in the store's order, parents first (steps has no rows here; the
    // notifier's cursor has one once the server's notifier has started).
    let tables: Vec<&str> = ExportTable::ALL
        .iter()
        .map(|t| t.name())
        .filter(|t| count.contains_key(*t))
        .collect();
    assert_eq!(order, tables);
    assert_eq!(
        order
            .iter()
            .filter(|t| *t != "notifier_cursor")
            .collect::<Vec<_>>(),
        ["projects", "runs", "jobs", "events", "tokens"]
    );
    assert_eq!(count["projects"], 1);
    assert_eq!(count["runs"], 1);
    assert_eq!(count["jobs"], 700);
    assert_eq!(count["tokens"], 2);
    let stats = s.get("/api/v1/database/stats", Some(&s.admin)).await.data();
    let events = stats["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "events")
        .unwrap()["rows"]
        .as_u64()
        .unwrap();
    assert!(count["events"] >= 701, "{count:?}");
    // Requests since (tokens used) write no events: the export saw them all.
    assert_eq!(count["events"] as u64, events);
    // Every job once.
    let mut ids: Vec<&str> = rows["jobs"]
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 700);
    assert_eq!(rows["runs"][0]["id"], run.id.to_string());
    // Tokens without their hashes; no plaintext anywhere.
    for t in &rows["tokens"] {
        assert!(t.get("hash").is_none(), "{t}");
        assert!(t["role"].is_string());
    }
    assert!(!r.text.contains(&s.admin));
    assert!(!r.text.contains(&viewer));
}

/// The value of the sample line `name{labels}` (labels as rendered, in order), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn metrics_count_requests_by_route_template(s: &Server) {
    let store = &s.store;
    let p = store
        .upsert_project("metrics", "/srv/metrics")
        .await
        .unwrap();
    let run = store
        .create_run(new_run(
            p.id,
            "ci.yml",
            Timestamp::now(),
            vec![
                new_job("a", JobStatus::Queued),
                new_job("b", JobStatus::Queued),
                new_job("c", JobStatus::Pending),
            ],
        ))
        .await
        .unwrap();
    let path = format!("/api/v1/runs/{}", run.id);
    for _ in 0..3 {
        assert_eq!(s.get(&path, Some(&s.admin)).await.status, 200);
    }
    s.get(&format!("/api/v1/runs/{}", RunId::new()), Some(&s.admin))
        .await
        .expect_error(404, "RUN_NOT_FOUND");
    s.get("/no/such/route", Some(&s.admin))
        .await
        .expect_error(404, "NOT_FOUND");

    // Open without a token, in Prometheus's text format.
    let r = s.get("/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let m = &r.text;
    let ok = sample(
        m,
        r#"kiln_http_requests_total{method="GET",route="/api/v1/runs/{id}",status="200"}"#,
    );
    assert!(ok.is_some_and(|n| n >= 3.0), "{m}");
    let missing = sample(
        m,
        r#"kiln_http_requests_total{method="GET",route="/api/v1/runs/{id}",status="404"}"#,
    );
    assert!(missing.is_some_and(|n| n >= 1.0), "{m}");
    let unmatched = sample(
        m,
        r#"kiln_http_requests_total{method="GET",route="unmatched",status="404"}"#,
    );
    assert!(unmatched.is_some_and(|n| n >= 1.0), "{m}");
    assert!(
        m.contains(r#"kiln_http_request_duration_seconds_bucket{method="GET",route="/api/v1/runs/{id}",status="200",le="0.1"}"#),
        "{m}"
    );
    assert!(
        m.contains("# TYPE kiln_http_request_duration_seconds histogram"),
        "{m}"
    );
    // Never an id as a label.
    assert!(!m.contains(&run.id.to_string()), "{m}");
    assert!(!m.contains("/no/such/route"), "{m}");

    // Gauges from the store, every status listed.
    assert_eq!(sample(m, r#"kiln_runs{status="queued"}"#), Some(1.0), "{m}");
    assert_eq!(
        sample(m, r#"kiln_runs{status="success"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(sample(m, r#"kiln_jobs{status="queued"}"#), Some(2.0), "{m}");
    assert_eq!(
        sample(m, r#"kiln_jobs{status="pending"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(m, "kiln_queue_depth"), Some(2.0), "{m}");
    // The scrape itself is counted from the next one on.
    let again = s.get("/metrics", None).await.text;
    assert!(
        sample(
            &again,
            r#"kiln_http_requests_total{method="GET",route="/metrics",status="200"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{again}"
    );
}

/// A server on `backend` whose settings `tweak` changed (the shared harness starts only
/// default ones): its base URL, admin token, and what stops it.
struct Custom {
    base: String,
    admin: String,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn pg_base() -> String {
    if let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") {
        return url;
    }
    for url in [DEFAULT_PG, "postgres://root@127.0.0.1:5432/test"] {
        if sqlx::PgConnection::connect(url).await.is_ok() {
            return url.to_owned();
        }
    }
    panic!("PostgreSQL is not reachable at {DEFAULT_PG}");
}

async fn pg_exec(base: &str, sql: String) {
    let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
}

impl Custom {
    async fn start(postgres: bool, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (store, pg) = if postgres {
            let base = pg_base().await;
            let schema = format!("ops_{}", uuid::Uuid::new_v4().simple());
            pg_exec(&base, format!("CREATE SCHEMA {schema}")).await;
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}schema={schema}");
            kiln_store::SecretKeys::generate()
                .unwrap()
                .write_file(&dir.path().join(kiln_store::secrets::KEY_FILE_NAME))
                .unwrap();
            let store = Store::open_postgres(&url, dir.path()).await.unwrap();
            (store, Some((base, schema)))
        } else {
            (Store::open_sqlite(dir.path()).await.unwrap(), None)
        };
        let admin = store.ensure_admin_token(None).await.unwrap().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = ServerConfig::new(&base);
        config.data_dir = dir.path().to_owned();
        tweak(&mut config);
        let (shutdown, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(kiln_server::serve(
            listener,
            AppState::new(store, config),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            base,
            admin,
            shutdown,
            task,
            pg,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
        if let Some((base, schema)) = self.pg {
            crate::harness::drop_schema(&base, &schema).await;
        }
    }
}

async fn closed_metrics_and_a_redacted_database(postgres: bool) {
    let s = Custom::start(postgres, |c| {
        c.metrics_open = false;
        *c = c
            .clone()
            .with_database("postgres://kiln:hunter2@db.internal:5432/kiln");
        c.worker_slots = Some(4);
    })
    .await;
    let (status, body) = s.get("/metrics", None).await;
    assert_eq!(status, 401, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "UNAUTHORIZED");
    let (status, body) = s.get("/metrics", Some(&s.admin)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("kiln_queue_depth"), "{body}");

    let (status, body) = s.get("/api/v1/config", Some(&s.admin)).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("hunter2"), "{body}");
    let c: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        c["data"]["database"],
        "postgres://***@db.internal:5432/kiln"
    );
    assert_eq!(c["data"]["metrics_open"], false);
    // Slots are shown only with an engine, and this server has none.
    assert_eq!(c["data"]["worker_slots"], Value::Null);
    s.stop().await;
}

mod closed_metrics_and_a_redacted_database {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::closed_metrics_and_a_redacted_database(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::closed_metrics_and_a_redacted_database(true).await;
    }
}

const QUICK: &str = r#"
name: quick
on: workflow_dispatch
jobs:
  one:
    runs-on: local
    steps:
      - run: echo one
  two:
    needs: one
    runs-on: local
    steps:
      - run: exit 3
"#;

/// The engine records how long jobs ran, by the status they ended with.
async fn job_durations_are_recorded(s: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join(".kiln/workflows/quick.yml");
    std::fs::create_dir_all(wf.parent().unwrap()).unwrap();
    std::fs::write(&wf, QUICK).unwrap();
    let p = s
        .store
        .upsert_project("quick", &dir.path().to_string_lossy())
        .await
        .unwrap();
    let created = s
        .post(
            &format!("/api/v1/projects/{}/runs", p.id),
            &s.admin,
            &json!({}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let run: RunId = created.data()["runs"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = s.store.get_run(run).await.unwrap().unwrap();
        if r.status.is_terminal() {
            assert_eq!(r.status, RunStatus::Failure, "{r:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "run stuck: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = s.get("/metrics", None).await.text;
    for status in ["success", "failure"] {
        let count = sample(
            &m,
            &format!(r#"kiln_job_duration_seconds_count{{status="{status}"}}"#),
        );
        assert!(count.is_some_and(|n| n >= 1.0), "{status}: {m}");
    }
    assert!(
        m.contains("# TYPE kiln_job_duration_seconds histogram"),
        "{m}"
    );
    let c = s.get("/api/v1/config", Some(&s.admin)).await.data();
    assert_eq!(c["engine"], true);
}

mod job_durations_are_recorded {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let s = crate::harness::Server::sqlite_with_engine().await;
        super::job_durations_are_recorded(&s).await;
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let s = crate::harness::Server::postgres_with_engine().await;
        super::job_durations_are_recorded(&s).await;
        s.stop().await;
    }
}
