//! Jobs claimed and completed per second through kiln's queue, at the store level: the
//! benchmark `bench/queue.sh` sets beside pgbench doing the bare `FOR UPDATE SKIP LOCKED`
//! claim and update on the same database.
//!
//! It fills the queue with `--jobs` queued jobs (runs of 500), then `--claimers` tasks each
//! loop for `--seconds`: `Store::claim_jobs` of one job (lease, fencing token, `job.leased`
//! in the outbox), then `Op::CompleteJob` with its token (`job.succeeded` in the outbox) —
//! two transactions per job, as a worker makes them. Prints one JSON line.
//!
//! usage: cargo run --release -p kiln-store --example queue_bench -- \
//!          [--database postgres://…] [--jobs N] [--claimers N] [--seconds S]
//! Without `--database` it runs on SQLite in a temporary folder.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, RunId, RunStatus};
use kiln_store::{Claim, NewJob, NewRun, Op, OpResult, Store};
use serde_json::{Map, json};

struct Args {
    database: Option<String>,
    jobs: usize,
    claimers: usize,
    seconds: f64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        database: None,
        jobs: 50_000,
        claimers: 4,
        seconds: 10.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--database" => a.database = Some(value()?),
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a count"
            )]
            "--jobs" => a.jobs = number(value()?)? as usize,
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a count"
            )]
            "--claimers" => a.claimers = number(value()?)? as usize,
            "--seconds" => a.seconds = number(value()?)?,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(a)
}

fn run_of(project: kiln_core::ids::ProjectId, n: usize) -> NewRun {
    NewRun {
        id: RunId::new(),
        project,
        workflow: "bench.yml".to_owned(),
        workflow_name: "bench".to_owned(),
        event: "push".to_owned(),
        git_ref: "refs/heads/main".to_owned(),
        sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        inputs: Map::new(),
        status: RunStatus::Running,
        jobs: (0..n)
            .map(|i| NewJob {
                id: JobId::new(),
                key: format!("j{i}"),
                name: format!("j{i}"),
                matrix: Map::new(),
                needs: Vec::new(),
                status: JobStatus::Queued,
                max_attempts: 3,
                labels: vec!["linux".to_owned()],
            })
            .collect(),
        at: Timestamp::now(),
        driver: None,
        context: Default::default(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let store = match &args.database {
        Some(url) => Store::open_postgres(url, dir.path()).await?,
        None => Store::open_sqlite(dir.path()).await?,
    };
    let project = store.upsert_project("bench", "/src/bench").await?;
    let mut left = args.jobs;
    while left > 0 {
        let n = left.min(500);
        store.create_run(run_of(project.id, n)).await?;
        left -= n;
    }
    if let Some(url) = &args.database {
        // Autovacuum would analyse the filled table within its next round (a minute); the
        // benchmark does not wait for it. Without statistics the planner takes the queue for
        // a few rows and sorts all of it on every claim instead of walking its index.
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query("ANALYZE jobs").execute(&mut conn).await?;
        conn.close().await?;
    }

    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.claimers {
        let store = store.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let claim = |at| Claim {
                owner: format!("bench-{w}"),
                labels: Some(vec!["linux".to_owned(), "x86_64".to_owned()]),
                limit: 1,
                ttl_ms: 60_000,
                at,
                offered_only: false,
            };
            while Instant::now() < deadline {
                let got = store
                    .claim_jobs(&claim(Timestamp::now()))
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(c) = got.into_iter().next() else {
                    return Err::<(), String>("the queue ran dry: raise --jobs".to_owned());
                };
                let r = store
                    .commit(vec![Op::CompleteJob {
                        job: c.job.id,
                        token: c.token,
                        status: JobStatus::Success,
                        outputs: Map::new(),
                        at: Timestamp::now(),
                    }])
                    .await
                    .map_err(|e| e.to_string())?;
                if r != [OpResult::Done] {
                    return Err(format!("completion refused: {r:?}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let rate = n as f64 / elapsed;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        json!({
            "backend": store.backend_name(),
            "claimers": args.claimers,
            "jobs": n,
            "seconds": (elapsed * 100.0).round() / 100.0,
            "per_second": rate.round(),
        })
    )?;
    Ok(())
}
