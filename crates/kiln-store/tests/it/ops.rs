//! The operators' reads, alike on both backends: the queue (waiting and held jobs, oldest
//! first, counted whatever the limit), counts and per-workflow duration percentiles, runs per
//! day, table counts and sizes, and the export, page by page, of every column but secrets.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use kiln_core::ids::{JobStatus, RunStatus, StepStatus};
use kiln_proto::{Role, Step};
use kiln_store::{ExportTable, Op, OpResult, Store};
use serde_json::{Map, Value, json};
use sqlx::Connection as _;

use crate::harness::{Harness, Kind, at, both_backends, new_job, new_run};

both_backends!(
    the_queue_lists_waiting_and_held_jobs_oldest_first,
    stats_count_runs_and_jobs_and_take_percentiles_per_workflow,
    runs_per_day_cover_every_day_of_the_window,
    database_stats_count_every_table,
    the_export_pages_through_every_column_but_secrets,
);

async fn lease(s: &Store, job: kiln_core::ids::JobId, ms: i64) -> i64 {
    let r = s
        .commit(vec![Op::GrantLease {
            job,
            owner: "pool".to_owned(),
            ttl_ms: 60_000,
            at: at(ms),
        }])
        .await
        .unwrap();
    match r[..] {
        [OpResult::Lease { token }] => token,
        ref other => panic!("no lease: {other:?}"),
    }
}

async fn the_queue_lists_waiting_and_held_jobs_oldest_first(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("queue", "/srv/queue").await.unwrap();
    let mut older = new_run(
        p.id,
        "ci.yml",
        vec![
            new_job("build", JobStatus::Queued, 3),
            new_job("test", JobStatus::Pending, 3),
            new_job("deploy", JobStatus::Waiting, 3),
        ],
    );
    older.at = at(0);
    let mut newer = new_run(
        p.id,
        "nightly.yml",
        vec![
            new_job("a", JobStatus::Queued, 3),
            new_job("b", JobStatus::Queued, 3),
            new_job("c", JobStatus::Queued, 2),
        ],
    );
    newer.at = at(10);
    let older = s.create_run(older).await.unwrap();
    let newer = s.create_run(newer).await.unwrap();
    let (a, b, c) = (newer.jobs[0].id, newer.jobs[1].id, newer.jobs[2].id);
    // a: leased; b: running; c: done (leaves the queue).
    lease(s, a, 20).await;
    let tb = lease(s, b, 21).await;
    let tc = lease(s, c, 22).await;
    s.commit(vec![
        Op::StartJob {
            job: b,
            token: tb,
            at: at(30),
        },
        Op::StartJob {
            job: c,
            token: tc,
            at: at(30),
        },
        Op::CompleteJob {
            job: c,
            token: tc,
            status: JobStatus::Success,
            outputs: Map::new(),
            at: at(40),
        },
    ])
    .await
    .unwrap();

    let q = s.queue(100).await.unwrap();
    let seen: Vec<(&str, JobStatus)> = q.jobs.iter().map(|j| (j.key.as_str(), j.status)).collect();
    assert_eq!(
        seen,
        [
            ("build", JobStatus::Queued),
            ("deploy", JobStatus::Waiting),
            ("a", JobStatus::Leased),
            ("b", JobStatus::Running),
        ]
    );
    let first = &q.jobs[0];
    assert_eq!(
        (first.run, first.project, first.project_name.as_str()),
        (older.id, p.id, "queue")
    );
    assert_eq!(
        (first.workflow.as_str(), first.name.as_str()),
        ("ci.yml", "build")
    );
    assert_eq!((first.attempts, first.max_attempts), (0, 3));
    assert_eq!((first.created_at, first.started_at), (at(0), None));
    let running = &q.jobs[3];
    assert_eq!(running.attempts, 1);
    assert_eq!(running.started_at, Some(at(30)));
    assert_eq!(running.lease_owner.as_deref(), Some("pool"));
    assert!(running.lease_expires_at.is_some());
    assert_eq!(
        q.counts,
        [
            (JobStatus::Queued, 1),
            (JobStatus::Waiting, 1),
            (JobStatus::Leased, 1),
            (JobStatus::Running, 1),
        ]
    );

    // The limit bounds the list, never the counts.
    let two = s.queue(2).await.unwrap();
    assert_eq!(two.jobs, q.jobs[..2]);
    assert_eq!(two.counts, q.counts);
}

/// Finishes a run that ran for `secs` seconds from `start` (ms after the harness epoch).
async fn finish(s: &Store, run: kiln_core::ids::RunId, start: i64, secs: i64, status: RunStatus) {
    let r = s
        .commit(vec![
            Op::SetRunStatus {
                run,
                status: RunStatus::Running,
                at: at(start),
            },
            Op::SetRunStatus {
                run,
                status,
                at: at(start + secs * 1000),
            },
        ])
        .await
        .unwrap();
    assert_eq!(r, [OpResult::Done, OpResult::Done]);
}

async fn stats_count_runs_and_jobs_and_take_percentiles_per_workflow(h: &Harness) {
    let s = &h.store;
    let empty = s.run_stats(30, Timestamp::now()).await.unwrap();
    assert!(empty.workflows.is_empty());
    assert!(empty.counts.runs.iter().all(|(_, n)| *n == 0));
    assert_eq!(empty.counts.runs.len(), RunStatus::ALL.len());
    assert_eq!(empty.counts.jobs.len(), JobStatus::ALL.len());

    let p = s.upsert_project("stats", "/srv/stats").await.unwrap();
    let q = s.upsert_project("alpha", "/srv/alpha").await.unwrap();
    // ci.yml: five finished runs of 4, 1, 10, 3, 2 seconds (one failed), one still running.
    for (i, (secs, status)) in [
        (4, RunStatus::Success),
        (1, RunStatus::Success),
        (10, RunStatus::Failure),
        (3, RunStatus::Success),
        (2, RunStatus::Cancelled),
    ]
    .into_iter()
    .enumerate()
    {
        let run = s
            .create_run(new_run(
                p.id,
                "ci.yml",
                vec![new_job("j", JobStatus::Queued, 1)],
            ))
            .await
            .unwrap();
        finish(s, run.id, i64::try_from(i).unwrap() * 100_000, secs, status).await;
    }
    let running = s.create_run(new_run(p.id, "ci.yml", vec![])).await.unwrap();
    s.commit(vec![Op::SetRunStatus {
        run: running.id,
        status: RunStatus::Running,
        at: at(1),
    }])
    .await
    .unwrap();
    // alpha's deploy.yml: one run of 7 s; its other workflow never finished.
    let one = s
        .create_run(new_run(q.id, "deploy.yml", vec![]))
        .await
        .unwrap();
    finish(s, one.id, 0, 7, RunStatus::Success).await;
    s.create_run(new_run(q.id, "lint.yml", vec![]))
        .await
        .unwrap();

    let stats = s.run_stats(30, Timestamp::now()).await.unwrap();
    let runs = |status| stats.counts.runs_in(status);
    assert_eq!(runs(RunStatus::Success), 4);
    assert_eq!(runs(RunStatus::Failure), 1);
    assert_eq!(runs(RunStatus::Cancelled), 1);
    assert_eq!(runs(RunStatus::Running), 1);
    assert_eq!(runs(RunStatus::Queued), 1);
    assert_eq!(stats.counts.runs_in(RunStatus::Waiting), 0);
    assert_eq!(stats.counts.jobs_in(JobStatus::Queued), 5);

    let shown: Vec<_> = stats
        .workflows
        .iter()
        .map(|w| {
            (
                w.project_name.as_str(),
                w.workflow.as_str(),
                w.runs,
                w.finished,
                w.succeeded,
                w.p50_ms,
                w.p95_ms,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("alpha", "deploy.yml", 1, 1, 1, Some(7_000), Some(7_000)),
            ("alpha", "lint.yml", 1, 0, 0, None, None),
            // Sorted 1, 2, 3, 4, 10: the median is the 3rd, the 95th percentile the 5th.
            ("stats", "ci.yml", 6, 5, 3, Some(3_000), Some(10_000)),
        ]
    );
    assert_eq!(stats.workflows[0].project, q.id);
}

async fn runs_per_day_cover_every_day_of_the_window(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("days", "/srv/days").await.unwrap();
    let now = Timestamp::now();
    let day = SignedDuration::from_hours(24);
    for back in [0, 0, 2, 40] {
        let mut run = new_run(p.id, "ci.yml", vec![]);
        run.at = now - day * back;
        s.create_run(run).await.unwrap();
    }
    let stats = s.run_stats(7, now).await.unwrap();
    assert_eq!(stats.per_day.len(), 7);
    let today = jiff::tz::TimeZone::UTC.to_datetime(now).date();
    assert_eq!(stats.per_day[6], (today, 2));
    let two_ago = today.checked_sub(jiff::Span::new().days(2)).unwrap();
    assert_eq!(stats.per_day[4], (two_ago, 1));
    assert_eq!(stats.per_day.iter().map(|(_, n)| n).sum::<i64>(), 3);
    // Consecutive days, oldest first.
    for pair in stats.per_day.windows(2) {
        assert_eq!(pair[0].0.tomorrow().unwrap(), pair[1].0);
    }

    let wide = s.run_stats(60, now).await.unwrap();
    assert_eq!(wide.per_day.len(), 60);
    assert_eq!(wide.per_day.iter().map(|(_, n)| n).sum::<i64>(), 4);
    let one = s.run_stats(1, now).await.unwrap();
    assert_eq!(one.per_day, [(today, 2)]);
}

async fn database_stats_count_every_table(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("db", "/srv/db").await.unwrap();
    s.create_run(new_run(
        p.id,
        "ci.yml",
        vec![
            new_job("a", JobStatus::Queued, 1),
            new_job("b", JobStatus::Pending, 1),
        ],
    ))
    .await
    .unwrap();
    s.create_token("ops", Role::Admin, None).await.unwrap();

    let stats = s.database_stats().await.unwrap();
    assert_eq!(stats.backend, s.backend_name());
    let rows: BTreeMap<&str, i64> = stats.tables.iter().map(|t| (t.name, t.rows)).collect();
    assert_eq!(rows["projects"], 1);
    assert_eq!(rows["runs"], 1);
    assert_eq!(rows["jobs"], 2);
    assert_eq!(rows["steps"], 0);
    assert_eq!(rows["log_chunks"], 0);
    assert_eq!(rows["api_tokens"], 1);
    assert!(rows["events"] >= 2, "{rows:?}");
    // Every table of the schema is counted: one a migration adds must be added to the stats.
    let counted: BTreeSet<String> = rows.keys().map(|t| (*t).to_owned()).collect();
    assert_eq!(counted, tables_of(h).await);
    assert!(stats.size_bytes.is_some_and(|n| n > 0), "{stats:?}");
    // Both backends can size their tables (SQLite through the bundled `dbstat`).
    let runs = stats.tables.iter().find(|t| t.name == "runs").unwrap();
    assert!(runs.bytes.is_some_and(|n| n > 0), "{stats:?}");
}

/// Every table of kiln's schema (not sqlx's bookkeeping).
async fn tables_of(h: &Harness) -> BTreeSet<String> {
    let names: Vec<String> = match &h.kind {
        Kind::Sqlite => {
            let url = format!("sqlite://{}", h.dir.path().join("kiln.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap()
        }
        Kind::Postgres { base, schema } => {
            let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
            sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = $1 AND table_name NOT LIKE '_sqlx%'",
            )
            .bind(schema)
            .fetch_all(&mut conn)
            .await
            .unwrap()
        }
    };
    names.into_iter().collect()
}

/// Every column of `table` as the database has it.
async fn columns_of(h: &Harness, table: &str) -> BTreeSet<String> {
    match &h.kind {
        Kind::Sqlite => {
            let url = format!("sqlite://{}", h.dir.path().join("kiln.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let names: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_table_info('{table}')"
            )))
            .fetch_all(&mut conn)
            .await
            .unwrap();
            names.into_iter().collect()
        }
        Kind::Postgres { base, schema } => {
            let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2",
            )
            .bind(schema)
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .unwrap();
            names.into_iter().collect()
        }
    }
}

async fn the_export_pages_through_every_column_but_secrets(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("export", "/srv/export").await.unwrap();
    let mut run = new_run(
        p.id,
        "ci.yml",
        vec![
            new_job("a", JobStatus::Queued, 1),
            new_job("b", JobStatus::Queued, 1),
            new_job("c", JobStatus::Pending, 1),
        ],
    );
    run.inputs.insert("version".to_owned(), json!("1.2.3"));
    let run = s.create_run(run).await.unwrap();
    for job in &run.jobs[..2] {
        let token = lease(s, job.id, 1).await;
        let steps: Vec<Op> = (0..3)
            .map(|index| Op::StepResult {
                job: job.id,
                token,
                step: Step {
                    index,
                    name: format!("step {index}"),
                    status: StepStatus::Success,
                    outputs: Map::new(),
                    started_at: Some(at(2)),
                    finished_at: Some(at(3)),
                },
            })
            .collect();
        s.commit(steps).await.unwrap();
    }
    let (token, plaintext) = s.create_token("export", Role::Viewer, None).await.unwrap();

    let mut all: BTreeMap<&str, Vec<Map<String, Value>>> = BTreeMap::new();
    for table in ExportTable::ALL {
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = s.export_page(table, after.as_ref(), 2).await.unwrap();
            assert!(page.rows.len() <= 2);
            all.entry(table.name()).or_default().extend(page.rows);
            pages += 1;
            assert!(pages < 100, "the export of {} does not end", table.name());
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    let stats = s.database_stats().await.unwrap();
    let rows: BTreeMap<&str, i64> = stats.tables.iter().map(|t| (t.name, t.rows)).collect();
    for (table, sql_table) in [
        ("projects", "projects"),
        ("runs", "runs"),
        ("jobs", "jobs"),
        ("steps", "steps"),
        ("events", "events"),
        ("tokens", "api_tokens"),
    ] {
        let got = all.get(table).map_or(0, Vec::len);
        assert_eq!(i64::try_from(got).unwrap(), rows[sql_table], "{table}");
        // Every column of the table is exported, but the token's hash and PostgreSQL's
        // transaction id of an event (bookkeeping of the outbox horizon).
        let mut want = columns_of(h, sql_table).await;
        want.remove("hash");
        want.remove("xid");
        // Nor a project's webhook secret.
        want.remove("hook_secret");
        let have: BTreeSet<String> = all[table][0].keys().cloned().collect();
        assert_eq!(have, want, "{table}");
    }
    assert_eq!(all["steps"].len(), 6);
    // Steps come in key order, all of them once.
    let keys: Vec<(String, i64, i64)> = all["steps"]
        .iter()
        .map(|r| {
            (
                r["job_id"].as_str().unwrap().to_owned(),
                r["attempt"].as_i64().unwrap(),
                r["idx"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted);

    let exported_run = &all["runs"][0];
    assert_eq!(exported_run["id"], run.id.to_string());
    assert_eq!(exported_run["inputs"], json!({ "version": "1.2.3" }));
    assert_eq!(exported_run["created_at"], json!(at(0).as_millisecond()));
    assert_eq!(all["jobs"][0]["needs"], json!([]));
    let exported_token = &all["tokens"][0];
    assert_eq!(exported_token["id"], token.id.to_string());
    assert_eq!(exported_token["role"], "viewer");
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(&plaintext));
    assert!(!text.contains("\"hash\""));
    assert!(all["events"][0]["data"].is_object());
}
