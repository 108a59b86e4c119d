//! PostgreSQL's outbox horizon: an event whose transaction commits late must not be
//! overtaken by one with a larger id that committed first, or a reader resuming after the
//! larger id would never see the smaller one.

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

async fn insert_event(conn: &mut PgConnection, kind: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO events (at, kind, data) VALUES (0, $1, '{}') RETURNING id")
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

    sqlx::query("COMMIT").execute(&mut early).await.unwrap();
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
