//! PostgreSQL's outbox: an event whose transaction commits late must not be overtaken by
//! one with a larger id that committed first, or a reader resuming after the larger id would
//! never see the smaller one. Writers do not queue for the outbox, so readers settle gaps
//! (`Settle` in the store's backend).

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use crate::harness::{Harness, Kind, schema_url};

async fn connect(h: &Harness) -> PgConnection {
    let Kind::Postgres { base, schema } = &h.kind else {
        unreachable!("a PostgreSQL harness")
    };
    let options = kiln_store_connect_options(&schema_url(base, schema));
    PgConnection::connect_with(&options).await.unwrap()
}

/// The same `?schema=` handling as the store, done here with sqlx's own `options`.
fn kiln_store_connect_options(url: &str) -> sqlx::postgres::PgConnectOptions {
    let (base, schema) = url.split_once("?schema=").unwrap();
    base.parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
        .options([("search_path", schema)])
}

/// Appends an event as the store's writers do: the transaction's xid first, then the id.
async fn insert_event(conn: &mut PgConnection, kind: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO events (at, kind, data) SELECT 0, $1, '{}' \
         FROM (SELECT pg_current_xact_id()) AS xid RETURNING id",
    )
    .bind(kind)
    .fetch_one(conn)
    .await
    .unwrap()
}

async fn visible_kinds(h: &Harness) -> Vec<String> {
    h.store
        .events_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_readers_never_skip_an_event_that_commits_late() {
    let h = Harness::postgres().await;
    let mut early = connect(&h).await;
    let mut late = connect(&h).await;

    sqlx::query("BEGIN").execute(&mut early).await.unwrap();
    let small = insert_event(&mut early, "small").await;
    sqlx::query("BEGIN").execute(&mut late).await.unwrap();
    let big = insert_event(&mut late, "big").await;
    assert!(small < big);
    sqlx::query("COMMIT").execute(&mut late).await.unwrap();

    // `big` is committed, but `small`'s transaction is still in flight: a reader that saw
    // `big` now would resume after it and lose `small`.
    for _ in 0..5 {
        assert!(!visible_kinds(&h).await.contains(&"big".to_owned()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nor may a stream starting "from now" start after `big`: the head waits for `small`.
    let head = tokio::spawn({
        let store = h.store.clone();
        async move { store.event_head().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !head.is_finished(),
        "the head waits for the transaction in flight"
    );

    sqlx::query("COMMIT").execute(&mut early).await.unwrap();
    assert_eq!(head.await.unwrap(), big);
    let mut kinds = Vec::new();
    for _ in 0..200 {
        kinds = visible_kinds(&h).await;
        if kinds.len() == 2 {
            break;
        }
        // Other tests' transactions may hold the horizon back for a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kinds, ["small", "big"]);

    // A rolled-back event never shows, and does not hold the horizon once it is gone.
    sqlx::query("BEGIN").execute(&mut early).await.unwrap();
    insert_event(&mut early, "rolled back").await;
    sqlx::query("ROLLBACK").execute(&mut early).await.unwrap();
    sqlx::query("BEGIN").execute(&mut late).await.unwrap();
    insert_event(&mut late, "after").await;
    sqlx::query("COMMIT").execute(&mut late).await.unwrap();
    for _ in 0..200 {
        kinds = visible_kinds(&h).await;
        if kinds.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kinds, ["small", "big", "after"]);
    early.close().await.unwrap();
    late.close().await.unwrap();
    h.cleanup().await;
}

/// Writers racing through the store while a reader tails the outbox: the reader ends with
/// every event, in id order, none skipped. (Without settling gaps, a reader regularly
/// resumes past an event whose transaction committed after a younger one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_tailing_racing_writers_misses_nothing() {
    let h = Harness::postgres().await;
    let mut writers = Vec::new();
    for w in 0..4 {
        // A project each: runs of one project queue for its row lock.
        let p = h
            .store
            .upsert_project(&format!("p{w}"), "/p")
            .await
            .unwrap();
        let store = h.store.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..100 {
                let jobs = (0..3)
                    .map(|i| {
                        crate::harness::new_job(
                            &format!("j{i}"),
                            kiln_core::ids::JobStatus::Queued,
                            1,
                        )
                    })
                    .collect();
                store
                    .create_run(crate::harness::new_run(p.id, "ci.yml", jobs))
                    .await
                    .unwrap();
            }
        }));
    }
    let mut seen: Vec<i64> = Vec::new();
    let mut cursor = 0;
    loop {
        let done = writers.iter().all(tokio::task::JoinHandle::is_finished);
        let page = h.store.events_after(cursor, 50).await.unwrap();
        if let Some(last) = page.last() {
            cursor = last.id;
        }
        seen.extend(page.iter().map(|e| e.id));
        if done && page.is_empty() {
            // Nothing in flight any more: one more read settles whatever gap is left.
            let rest = h.store.events_after(cursor, 10_000).await.unwrap();
            seen.extend(rest.iter().map(|e| e.id));
            if rest.is_empty() {
                break;
            }
            cursor = rest.last().unwrap().id;
        }
    }
    let mut conn = connect(&h).await;
    let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    // Each run: run.queued and one job.queued per job.
    assert_eq!(all.len(), 4 * 100 * 4);
    let missed: Vec<i64> = all
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    assert!(missed.is_empty(), "the reader skipped events {missed:?}");
    assert_eq!(seen, all, "every event once, in id order");
    conn.close().await.unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_events_are_visible_as_soon_as_committed() {
    // One writer: ids commit in order, so there is no horizon to wait for.
    let h = Harness::sqlite().await;
    let p = h.store.upsert_project("p", "/p").await.unwrap();
    h.store
        .create_run(crate::harness::new_run(p.id, "ci.yml", vec![]))
        .await
        .unwrap();
    assert_eq!(visible_kinds(&h).await, ["run.queued"]);
}

/// Two processes on one PostgreSQL database (replicas): the one that did not write hears of
/// the other's events at once through LISTEN/NOTIFY, without waiting for a poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_events_wake_this_ones_readers() {
    let h = crate::harness::Harness::postgres().await;
    let other = h.reopen().await;
    let mut woken = h.store.watch_writes();
    // The listener's first connection wakes readers once (a poll after connecting): let that
    // pass, so that only the other store's write can wake them below.
    tokio::time::sleep(Duration::from_secs(1)).await;
    woken.borrow_and_update();
    let project = other.upsert_project("p", "/src/p").await.unwrap();
    other
        .create_run(crate::harness::new_run(project.id, "ci.yml", vec![]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), woken.changed())
        .await
        .expect("the write of another store woke this one's readers")
        .unwrap();
    h.cleanup().await;
}
