//! The two migration folders produce the same tables, columns, nullability and indexes.

use std::collections::BTreeSet;

use sqlx::Connection as _;
use sqlx::Row as _;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

use crate::harness::{Harness, Kind};

type Columns = BTreeSet<(String, String, bool)>;

async fn sqlite_schema(h: &Harness) -> (Columns, BTreeSet<String>) {
    let url = format!("sqlite://{}", h.dir.path().join("kiln.db").display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT m.name AS t, p.name AS c, (p.\"notnull\" OR p.pk > 0) AS nn \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let columns = rows
        .iter()
        .map(|r| (r.get("t"), r.get("c"), r.get::<i64, _>("nn") != 0))
        .collect();
    let indexes = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' \
         AND name NOT LIKE 'sqlite_autoindex%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .collect();
    (columns, indexes)
}

async fn postgres_schema(h: &Harness) -> (Columns, BTreeSet<String>) {
    let Kind::Postgres { base, schema } = &h.kind else {
        unreachable!("a PostgreSQL harness")
    };
    let mut conn = PgConnection::connect(base).await.unwrap();
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c, is_nullable::text AS n \
         FROM information_schema.columns WHERE table_schema = $1",
    )
    .bind(schema)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let columns = rows
        .iter()
        .map(|r| (r.get("t"), r.get("c"), r.get::<String, _>("n") == "NO"))
        .collect();
    // Constraint-backed indexes are named by PostgreSQL itself (`…_pkey`, `…_key`).
    let indexes = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 \
         AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'",
    )
    .bind(schema)
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .collect();
    (columns, indexes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_migration_folders_produce_the_same_schema() {
    let lite = Harness::sqlite().await;
    let pg = Harness::postgres().await;
    let (lite_columns, lite_indexes) = sqlite_schema(&lite).await;
    let (pg_columns, pg_indexes) = postgres_schema(&pg).await;
    assert_eq!(lite_columns, pg_columns);
    assert_eq!(lite_indexes, pg_indexes);
    // Not vacuous: the tables the store uses are there.
    let tables: BTreeSet<&str> = lite_columns.iter().map(|(t, _, _)| t.as_str()).collect();
    for t in [
        "projects",
        "runs",
        "jobs",
        "steps",
        "log_chunks",
        "events",
        "api_tokens",
    ] {
        assert!(tables.contains(t), "{t} missing");
    }
    assert!(lite_indexes.contains("jobs_by_lease_owner"));
    pg.cleanup().await;
}
