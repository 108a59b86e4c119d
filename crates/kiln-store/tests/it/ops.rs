//! The operators' reads, alike on both backends: the queue (waiting and held jobs, oldest
//! first, counted whatever the limit), counts and per-workflow duration percentiles, runs per
//! day, table counts and sizes, and the export, page by page, of every table and every
//! column but secrets and webhook payloads.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use kiln_core::ids::{JobStatus, RunStatus, StepStatus};
use kiln_core::workflow::CatchUp;
use kiln_proto::{Ban, DeliveryStatus, HookProvider, NotificationId, Role, Step};
use kiln_store::{
    AfterAttempt, AttemptRecord, ExportTable, FireKind, HookChange, NewDelivery, NewNotification,
    NewVersion, Op, OpResult, PollRecord, ScheduleDef, Store, WatchDef, generate_secret,
};
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

/// The columns an export leaves out, by table: secrets and the bytes of webhook payloads.
const NOT_EXPORTED: &[(&str, &str)] = &[
    ("projects", "hook_secret"),
    ("api_tokens", "hash"),
    ("notification_receivers", "secret"),
    // The compressed form of `context`, exported as `context`.
    ("runs", "context_packed"),
];

/// The table of the schema an export table reads.
fn sql_table(table: ExportTable) -> &'static str {
    match table.name() {
        "tokens" => "api_tokens",
        name => name,
    }
}

/// Every secret the database holds: token hashes, webhook secrets, receiver secrets.
async fn secrets_of(h: &Harness) -> Vec<String> {
    const SQL: &[&str] = &[
        "SELECT hash FROM api_tokens",
        "SELECT hook_secret FROM projects WHERE hook_secret IS NOT NULL",
        "SELECT secret FROM notification_receivers",
    ];
    let mut out = Vec::new();
    match &h.kind {
        Kind::Sqlite => {
            let url = format!("sqlite://{}", h.dir.path().join("kiln.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for sql in SQL {
                let found: Vec<String> =
                    sqlx::query_scalar(*sql).fetch_all(&mut conn).await.unwrap();
                out.extend(found);
            }
        }
        Kind::Postgres { base, schema } => {
            let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path = {schema}")))
                .execute(&mut conn)
                .await
                .unwrap();
            for sql in SQL {
                let found: Vec<String> =
                    sqlx::query_scalar(*sql).fetch_all(&mut conn).await.unwrap();
                out.extend(found);
            }
        }
    }
    out
}

/// A row in each table the triggers and notifications write, through the store's API, with
/// secrets set: a webhook secret on `p`, one receiver's signing secret. Two notification
/// deliveries with three attempts between them, so that their composite key pages. Returns
/// the webhook payload's marker, which must not be exported.
async fn seed_trigger_tables(s: &Store, p: kiln_core::ids::ProjectId) -> &'static str {
    s.set_hook(
        p,
        &HookChange {
            provider: Some(HookProvider::Generic),
            new_hook_id: false,
            secret: Some(generate_secret().unwrap()),
        },
    )
    .await
    .unwrap()
    .expect("the project's hook");
    const MARKER: &str = "webhook-payload-bytes-are-not-exported";
    s.record_delivery(&NewDelivery {
        project: p,
        provider: HookProvider::Generic,
        delivery: "d-1".to_owned(),
        event: "push".to_owned(),
        status: DeliveryStatus::Accepted,
        reason: None,
        payload: format!(r#"{{"marker":"{MARKER}"}}"#).into_bytes(),
        claim: None,
    })
    .await
    .unwrap();

    let start: Timestamp = "2026-05-01T10:00:30Z".parse().unwrap();
    s.sync_schedules(
        p,
        &[ScheduleDef {
            workflow: "nightly.yml".to_owned(),
            index: 0,
            cron: "* * * * *".to_owned(),
            timezone: "UTC".to_owned(),
            catch_up: CatchUp::One,
        }],
        &[],
        start,
    )
    .await
    .unwrap();
    let now: Timestamp = "2026-05-01T10:01:00.200Z".parse().unwrap();
    let due = s.due_schedules(now, 10).await.unwrap().remove(0);
    let fire = due.next_fire_at.unwrap();
    s.claim_fire(due.id, fire, None, FireKind::Run, "a", now)
        .await
        .unwrap()
        .expect("the fire");

    s.sync_watches(
        p,
        &[WatchDef {
            workflow: "watch.yml".to_owned(),
            name: "upstream".to_owned(),
            source: r#"{"kind":"pypi","package":"requests"}"#.to_owned(),
            constraint: None,
            filter: None,
            known_versions: None,
            interval_secs: 3600,
        }],
        &[],
        now,
    )
    .await
    .unwrap();
    let watch = s.due_watches(now, 10).await.unwrap().remove(0);
    s.record_poll(
        watch.id,
        &PollRecord {
            etag: None,
            versions: vec![NewVersion {
                version: "2.0.0".to_owned(),
                source_uri: None,
                trigger: false,
            }],
            next_poll_at: now + SignedDuration::from_hours(1),
            now,
        },
    )
    .await
    .unwrap();

    let receiver_secret = generate_secret().unwrap();
    s.create_receiver(
        p,
        "https://notify.example.com/",
        &["run.*".to_owned()],
        &receiver_secret,
    )
    .await
    .unwrap();
    let receiver = s.active_receivers().await.unwrap().remove(0);
    let head = s.event_head().await.unwrap();
    s.notifier_cursor("export", head).await.unwrap();
    let notifications: Vec<NewNotification> = (1..=2)
        .map(|n| NewNotification {
            id: NotificationId::new(),
            receiver: receiver.id,
            project: p,
            event_id: head + n,
            event_type: "run.completed".to_owned(),
            run: None,
            payload: format!(r#"{{"event":{n}}}"#),
            due_at: at(0),
        })
        .collect();
    s.record_notifications("export", head + 2, &notifications)
        .await
        .unwrap();
    // Three attempts: both deliveries fail once, then one of them is delivered.
    let lease = std::time::Duration::from_secs(60);
    let mut claims = s.claim_notifications("a", at(1), lease, 10).await.unwrap();
    assert_eq!(claims.len(), 2);
    for (i, c) in claims.iter().enumerate() {
        let attempt = AttemptRecord {
            at: at(2),
            duration_ms: 5,
            status_code: Some(500),
            error: None,
        };
        let after = AfterAttempt::RetryAt(at(100 + i64::try_from(i).unwrap() * 1_000_000));
        assert!(
            s.finish_notification_attempt(c.id, "a", c.token, &attempt, after)
                .await
                .unwrap()
        );
    }
    claims = s
        .claim_notifications("b", at(200), lease, 10)
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    let attempt = AttemptRecord {
        at: at(201),
        duration_ms: 4,
        status_code: Some(200),
        error: None,
    };
    assert!(
        s.finish_notification_attempt(
            claims[0].id,
            "b",
            claims[0].token,
            &attempt,
            AfterAttempt::Delivered
        )
        .await
        .unwrap()
    );

    s.add_ban(&Ban {
        id: uuid::Uuid::new_v4().to_string(),
        address: "192.0.2.7".to_owned(),
        hook_id: None,
        reason: "scanning unknown hook ids".to_owned(),
        failures: 10,
        created_at: at(0),
        expires_at: at(60_000),
        lifted_at: None,
    })
    .await
    .unwrap();
    MARKER
}

/// Every exported row by table, read `limit` rows a page.
async fn export_all(s: &Store, limit: u32) -> BTreeMap<&'static str, Vec<Map<String, Value>>> {
    let mut all: BTreeMap<&str, Vec<Map<String, Value>>> = BTreeMap::new();
    for table in ExportTable::ALL {
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = s.export_page(table, after.as_ref(), limit).await.unwrap();
            assert!(page.rows.len() <= limit as usize);
            all.entry(table.name()).or_default().extend(page.rows);
            pages += 1;
            assert!(pages < 100, "the export of {} does not end", table.name());
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    all
}

async fn the_export_pages_through_every_column_but_secrets(h: &Harness) {
    let s = &h.store;
    let p = s.upsert_project("export", "/srv/export").await.unwrap();
    s.register_worker(
        &kiln_proto::workers::RegisterWorker {
            name: "w".to_owned(),
            labels: vec!["linux".to_owned()],
            slots: 1,
            protocol: 1,
            version: "0".to_owned(),
        },
        at(1),
    )
    .await
    .unwrap();
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
    // A webhook-sized payload: stored compressed, exported as the JSON it is.
    let payload = json!({"ref": "refs/heads/main", "commits": vec![json!({"message": "fix the build", "added": ["src/lib.rs"]}); 100]});
    run.context.payload = Some(kiln_store::PayloadText::of(&payload));
    run.context
        .github
        .insert("actor".to_owned(), json!("octocat"));
    let context = run.context.clone();
    s.replica_seen("engine-1", "http://replica-1:8080")
        .await
        .unwrap();
    run.driver = Some(kiln_store::Driver {
        owner: "engine-1".to_owned(),
        until: at(60_000),
    });
    let run = s.create_run(run).await.unwrap();
    assert_eq!(s.run_context(run.id).await.unwrap(), Some(context));
    s.record_artifact(&kiln_store::NewArtifact {
        run: run.id,
        job: run.jobs[0].id,
        name: "dist".to_owned(),
        file_name: "dist.tgz".to_owned(),
        format: kiln_proto::artifacts::ArtifactFormat::File,
        sha256: "c".repeat(64),
        size: 1,
        metadata: kiln_proto::ArtifactMeta {
            version: Some("1.2.3".to_owned()),
            ..kiln_proto::ArtifactMeta::default()
        },
    })
    .await
    .unwrap();
    for (n, job) in run.jobs[..2].iter().enumerate() {
        let token = lease(s, job.id, 1).await;
        let mut ops: Vec<Op> = (0..3)
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
        // Three log chunks in all (two of the first job), so that their key pages too.
        for offset in (0..(2 - n as u64)).map(|i| i * 6) {
            ops.push(Op::LogChunk {
                job: job.id,
                token,
                step: 0,
                offset,
                data: b"hello\n".to_vec(),
            });
        }
        s.commit(ops).await.unwrap();
    }
    let (token, plaintext) = s.create_token("export", Role::Viewer, None).await.unwrap();
    let marker = seed_trigger_tables(s, p.id).await;

    // Pages of one row continue after every key (a composite one too); pages of two read
    // the same.
    let all = export_all(s, 1).await;
    for (table, rows) in export_all(s, 2).await {
        assert_eq!(rows, all[table], "{table}");
    }
    // Every table of the schema is exported: one a migration adds must be added to the
    // export (`ExportTable`).
    let exported: BTreeSet<String> = ExportTable::ALL
        .iter()
        .map(|t| sql_table(*t).to_owned())
        .collect();
    assert_eq!(
        exported.len(),
        ExportTable::ALL.len(),
        "a table exported twice"
    );
    let mut schema = tables_of(h).await;
    // Webhook bodies are not exported (their sizes are, with the deliveries).
    assert!(schema.remove("delivery_payloads"));
    assert_eq!(exported, schema);

    let stats = s.database_stats().await.unwrap();
    let rows: BTreeMap<&str, i64> = stats.tables.iter().map(|t| (t.name, t.rows)).collect();
    for table in ExportTable::ALL {
        let sql_table = sql_table(table);
        let got = &all[table.name()];
        // Every row once: as many as the table holds, none twice.
        assert_eq!(
            i64::try_from(got.len()).unwrap(),
            rows[sql_table],
            "{sql_table}"
        );
        let distinct: BTreeSet<String> = got
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(
            distinct.len(),
            got.len(),
            "{sql_table}: a row exported twice"
        );
        if sql_table == "build_sessions" || sql_table == "package_builds" {
            continue; // The package tables have their own test (packages.rs).
        }
        assert!(
            !got.is_empty(),
            "{sql_table} has no row to check its columns with"
        );
        // Every column of the table is exported, but those NOT_EXPORTED leaves out.
        let mut want = columns_of(h, sql_table).await;
        for (t, column) in NOT_EXPORTED {
            if *t == sql_table {
                want.remove(*column);
            }
        }
        for row in got {
            let have: BTreeSet<String> = row.keys().cloned().collect();
            assert_eq!(have, want, "{sql_table}");
        }
    }
    assert_eq!(all["steps"].len(), 6);
    assert_eq!(all["log_chunks"].len(), 3);
    assert_eq!(all["notification_attempts"].len(), 3);
    // Rows with composite keys come in key order.
    for (table, key) in [
        ("steps", ["job_id", "attempt", "idx"]),
        ("log_chunks", ["job_id", "attempt", "byte_offset"]),
        (
            "notification_attempts",
            ["delivery_id", "attempt", "attempt"],
        ),
    ] {
        let keys: Vec<(String, i64, i64)> = all[table]
            .iter()
            .map(|r| {
                (
                    r[key[0]].as_str().unwrap().to_owned(),
                    r[key[1]].as_i64().unwrap(),
                    r[key[2]].as_i64().unwrap(),
                )
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "{table}");
    }

    let exported_run = &all["runs"][0];
    assert_eq!(exported_run["id"], run.id.to_string());
    assert_eq!(exported_run["inputs"], json!({ "version": "1.2.3" }));
    assert_eq!(exported_run["created_at"], json!(at(0).as_millisecond()));
    assert_eq!(
        exported_run["context"],
        json!({"payload": payload, "github": {"actor": "octocat"}})
    );
    assert_eq!(all["jobs"][0]["needs"], json!([]));
    let exported_token = &all["tokens"][0];
    assert_eq!(exported_token["id"], token.id.to_string());
    assert_eq!(exported_token["role"], "viewer");
    assert!(all["events"][0]["data"].is_object());
    let delivery = &all["deliveries"][0];
    assert_eq!(
        delivery["size"],
        json!(format!(r#"{{"marker":"{marker}"}}"#).len())
    );
    assert_eq!(delivery["run_ids"], json!([]));
    assert_eq!(all["watches"][0]["source"]["package"], "requests");
    assert_eq!(all["notification_receivers"][0]["events"], json!(["run.*"]));
    assert_eq!(all["notifier_cursor"][0]["name"], "export");

    // No secret leaves: not a token (nor its hash), not a webhook or receiver secret, and no
    // webhook payload.
    let text = serde_json::to_string(&all).unwrap();
    let secrets = secrets_of(h).await;
    assert_eq!(
        secrets.len(),
        3,
        "a token hash, a hook secret, a receiver secret"
    );
    for secret in secrets.iter().chain([&plaintext]) {
        assert!(!secret.is_empty());
        assert!(!text.contains(secret.as_str()), "a secret is exported");
    }
    assert!(!text.contains(marker), "a webhook payload is exported");
    for name in ["\"hash\"", "\"hook_secret\"", "\"secret\""] {
        assert!(!text.contains(name), "{name} is exported");
    }
}
