//! Webhook and receiver secrets at rest: sealed in the database, opened for their users,
//! values from before sealing sealed at the next open, keys rotated, a wrong key refused.

use std::path::Path;

use kiln_store::secrets::KEY_FILE_NAME;
use kiln_store::{HookChange, SecretKeys, StoreError};
use sqlx::Connection as _;

use crate::harness::{Harness, Kind, both_backends, schema_url};

both_backends!(secrets_are_sealed_at_rest_and_follow_key_rotation);

const OLD: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Runs one statement on the harness's database outside the store; returns the first
/// column of the first row, if any, as text.
async fn raw(h: &Harness, sql: &str) -> Option<String> {
    match &h.kind {
        Kind::Sqlite => {
            let url = format!("sqlite://{}", h.dir.path().join("kiln.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_optional(&mut c)
                .await
                .unwrap();
            row.map(|r| r.0)
        }
        Kind::Postgres { base, schema } => {
            let mut c = sqlx::PgConnection::connect(&base.clone()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
                .execute(&mut c)
                .await
                .unwrap();
            let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_optional(&mut c)
                .await
                .unwrap();
            row.map(|r| r.0)
        }
    }
}

fn put_keys(dir: &Path, text: &str) {
    let path = dir.join(KEY_FILE_NAME);
    let _ = std::fs::remove_file(&path);
    SecretKeys::parse(text, "test")
        .unwrap()
        .write_file(&path)
        .unwrap();
}

async fn secrets_are_sealed_at_rest_and_follow_key_rotation(h: &Harness) {
    // Start from a known key (the harness made one; SQLite would have made its own).
    put_keys(h.dir.path(), OLD);
    let s = h.reopen().await;
    let p = s.create_project("web", "/src/web").await.unwrap();
    let pid = p.project.id;
    s.set_hook(
        pid,
        &HookChange {
            secret: Some("hook-secret-value".to_owned()),
            ..HookChange::default()
        },
    )
    .await
    .unwrap();
    let r = s
        .create_receiver(
            pid,
            "https://example.invalid/r",
            &["run.*".to_owned()],
            "receiver-secret",
        )
        .await
        .unwrap();
    assert_eq!(
        r.secret.as_deref(),
        Some("receiver-secret"),
        "shown once, in the clear"
    );

    // The database holds neither secret in the clear.
    let hook_raw = raw(
        h,
        &format!("SELECT hook_secret FROM projects WHERE id = '{pid}'"),
    )
    .await
    .unwrap();
    let recv_raw = raw(
        h,
        &format!(
            "SELECT secret FROM notification_receivers WHERE id = '{}'",
            r.id
        ),
    )
    .await
    .unwrap();
    for stored in [&hook_raw, &recv_raw] {
        assert!(stored.starts_with("sealed:01"), "{stored}");
        assert!(!stored.contains("secret"), "{stored}");
    }
    // …and the store opens them for their users.
    let target = s.hook_target(&p.project.hook_id).await.unwrap().unwrap();
    assert_eq!(target.secret.as_deref(), Some("hook-secret-value"));

    // A value stored before sealing (an older kiln) is sealed at the next open.
    raw(
        h,
        &format!("UPDATE projects SET hook_secret = 'legacy-plain' WHERE id = '{pid}'"),
    )
    .await;
    let s = h.reopen().await;
    let now = raw(
        h,
        &format!("SELECT hook_secret FROM projects WHERE id = '{pid}'"),
    )
    .await
    .unwrap();
    assert!(now.starts_with("sealed:01"), "{now}");
    let target = s.hook_target(&p.project.hook_id).await.unwrap().unwrap();
    assert_eq!(target.secret.as_deref(), Some("legacy-plain"));

    // Rotation: with the old key kept as version 1 and a new one as version 2, everything
    // is sealed again under version 2; then the old key can go.
    put_keys(h.dir.path(), &format!("1:{OLD},2:{NEW}"));
    drop(h.reopen().await);
    let resealed = raw(
        h,
        &format!(
            "SELECT secret FROM notification_receivers WHERE id = '{}'",
            r.id
        ),
    )
    .await
    .unwrap();
    assert!(resealed.starts_with("sealed:02"), "{resealed}");
    put_keys(h.dir.path(), &format!("2:{NEW}"));
    let s = h.reopen().await;
    let target = s.hook_target(&p.project.hook_id).await.unwrap().unwrap();
    assert_eq!(target.secret.as_deref(), Some("legacy-plain"));

    // A key that does not open what is stored stops the open, saying why, and changes
    // nothing stored.
    put_keys(h.dir.path(), OLD);
    let err = match &h.kind {
        Kind::Sqlite => kiln_store::Store::open_sqlite(h.dir.path()).await,
        Kind::Postgres { base, schema } => {
            kiln_store::Store::open_postgres(&schema_url(base, schema), h.dir.path()).await
        }
    }
    .expect_err("the wrong key is refused");
    assert!(matches!(err, StoreError::Secrets(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("key version 2"), "{msg}");
    assert_eq!(
        raw(
            h,
            &format!(
                "SELECT secret FROM notification_receivers WHERE id = '{}'",
                r.id
            )
        )
        .await
        .unwrap(),
        resealed
    );
}
