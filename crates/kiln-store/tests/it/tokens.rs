//! API tokens: created with a plaintext shown once and stored as a hash, verified, revoked,
//! and the first admin token of an empty store created exactly once.

use kiln_core::ids::ProjectId;
use kiln_proto::{Role, TokenId};
use kiln_store::{Store, StoreError};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

use crate::harness::{Harness, Kind, both_backends};

both_backends!(
    tokens_round_trip,
    revoked_and_unknown_tokens_are_refused,
    last_use_is_recorded_at_most_once_a_minute,
    the_first_admin_token_is_created_once,
    a_preseeded_admin_token_is_used_and_not_returned,
    several_replicas_create_one_admin_token,
    a_token_for_an_unknown_project_is_refused,
);

/// Runs one statement on the test's database behind the store's back.
async fn exec(h: &Harness, sql: &str) {
    match &h.kind {
        Kind::Sqlite => {
            let url = format!("sqlite://{}", h.dir.path().join("kiln.db").display());
            let mut conn = SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Kind::Postgres { base, schema } => {
            let mut conn = PgConnection::connect(base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

async fn tokens_round_trip(h: &Harness) {
    let s = &h.store;
    assert!(s.list_tokens().await.unwrap().is_empty());
    let (info, plaintext) = s.create_token("ci", Role::Developer, None).await.unwrap();
    assert_eq!((info.name.as_str(), info.role), ("ci", Role::Developer));
    assert!(!info.revoked && info.last_used_at.is_none());
    let hex = plaintext.strip_prefix("kiln_").expect("kiln_ prefix");
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));

    let (other, other_plain) = s.create_token("viewer", Role::Viewer, None).await.unwrap();
    assert_ne!(plaintext, other_plain);
    let listed = s.list_tokens().await.unwrap();
    assert_eq!(listed, vec![info.clone(), other.clone()], "oldest first");

    let found = s.verify_token(&plaintext).await.unwrap().expect("verifies");
    assert_eq!((found.id, found.role), (info.id, Role::Developer));

    // A restart reads the same tokens; the store kept a hash, not the plaintext.
    let again = h.reopen().await;
    assert_eq!(
        again.verify_token(&other_plain).await.unwrap().unwrap().id,
        other.id
    );
    exec(
        h,
        &format!("DELETE FROM api_tokens WHERE hash = '{plaintext}' OR hash LIKE 'kiln_%'"),
    )
    .await;
    assert_eq!(
        again.list_tokens().await.unwrap().len(),
        2,
        "no plaintext stored"
    );
}

async fn revoked_and_unknown_tokens_are_refused(h: &Harness) {
    let s = &h.store;
    let (info, plaintext) = s.create_token("t", Role::Admin, None).await.unwrap();
    assert!(s.verify_token("kiln_nope").await.unwrap().is_none());
    assert!(s.verify_token("").await.unwrap().is_none());
    assert!(s.revoke_token(info.id).await.unwrap());
    assert!(s.verify_token(&plaintext).await.unwrap().is_none());
    assert!(
        s.revoke_token(info.id).await.unwrap(),
        "revoking twice is fine"
    );
    assert!(!s.revoke_token(TokenId::new()).await.unwrap(), "unknown id");
    let listed = s.list_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked);
}

async fn last_use_is_recorded_at_most_once_a_minute(h: &Harness) {
    let s = &h.store;
    let (info, plaintext) = s.create_token("t", Role::Viewer, None).await.unwrap();
    let first = s.verify_token(&plaintext).await.unwrap().unwrap();
    let used = first.last_used_at.expect("the first use is recorded");
    let stored = || async { s.list_tokens().await.unwrap()[0].last_used_at };
    assert_eq!(stored().await, Some(used));

    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = s.verify_token(&plaintext).await.unwrap().unwrap();
    assert_eq!(
        second.last_used_at,
        Some(used),
        "not written again within a minute"
    );
    assert_eq!(stored().await, Some(used));

    // Two minutes ago: the next use is written.
    let old = used.as_millisecond() - 120_000;
    exec(
        h,
        &format!(
            "UPDATE api_tokens SET last_used_at = {old} WHERE id = '{}'",
            info.id
        ),
    )
    .await;
    let third = s.verify_token(&plaintext).await.unwrap().unwrap();
    let newer = third.last_used_at.unwrap();
    assert!(newer.as_millisecond() >= used.as_millisecond(), "{newer}");
    assert_eq!(stored().await, Some(newer));
}

async fn the_first_admin_token_is_created_once(h: &Harness) {
    let s = &h.store;
    let plaintext = s
        .ensure_admin_token(None)
        .await
        .unwrap()
        .expect("an empty store gets an admin token");
    let admin = s.verify_token(&plaintext).await.unwrap().unwrap();
    assert_eq!((admin.role, admin.name.as_str()), (Role::Admin, "admin"));
    assert_eq!(s.ensure_admin_token(None).await.unwrap(), None);
    assert_eq!(
        h.reopen().await.ensure_admin_token(None).await.unwrap(),
        None
    );

    // Any token at all, even a revoked one, means the store has been set up.
    s.revoke_token(admin.id).await.unwrap();
    assert_eq!(s.ensure_admin_token(None).await.unwrap(), None);
    assert_eq!(s.list_tokens().await.unwrap().len(), 1);
}

async fn a_preseeded_admin_token_is_used_and_not_returned(h: &Harness) {
    let s = &h.store;
    let err = s.ensure_admin_token(Some("short")).await.unwrap_err();
    assert!(matches!(err, StoreError::BadToken { .. }), "{err}");
    assert!(err.to_string().contains("at least 32"), "{err}");
    assert!(s.list_tokens().await.unwrap().is_empty(), "nothing created");

    let preseed = "operator-chosen-secret-0123456789abcdef";
    assert_eq!(s.ensure_admin_token(Some(preseed)).await.unwrap(), None);
    let admin = s.verify_token(preseed).await.unwrap().unwrap();
    assert_eq!(admin.role, Role::Admin);
    // A second start with another preseed changes nothing.
    let other = "another-operator-secret-0123456789abcdef";
    assert_eq!(s.ensure_admin_token(Some(other)).await.unwrap(), None);
    assert!(s.verify_token(other).await.unwrap().is_none());
    assert_eq!(s.list_tokens().await.unwrap().len(), 1);
}

async fn several_replicas_create_one_admin_token(h: &Harness) {
    let mut replicas: Vec<Store> = Vec::new();
    for _ in 0..4 {
        replicas.push(h.reopen().await);
    }
    let tasks: Vec<_> = replicas
        .into_iter()
        .map(|s| tokio::spawn(async move { s.ensure_admin_token(None).await.unwrap() }))
        .collect();
    let mut shown = Vec::new();
    for t in tasks {
        shown.extend(t.await.unwrap());
    }
    assert_eq!(shown.len(), 1, "exactly one replica prints a token");
    let tokens = h.store.list_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        h.store.verify_token(&shown[0]).await.unwrap().unwrap().id,
        tokens[0].id
    );
}

async fn a_token_for_an_unknown_project_is_refused(h: &Harness) {
    let s = &h.store;
    let missing = ProjectId::new();
    let err = s
        .create_token("p", Role::Maintainer, Some(missing))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { what: "project", id } if *id == missing.to_string()),
        "{err}"
    );
    assert!(s.list_tokens().await.unwrap().is_empty());

    let project = s.upsert_project("demo", "/src/demo").await.unwrap();
    let (info, plaintext) = s
        .create_token("p", Role::Maintainer, Some(project.id))
        .await
        .unwrap();
    assert_eq!(info.project, Some(project.id));
    let found = s.verify_token(&plaintext).await.unwrap().unwrap();
    assert_eq!(found.project, Some(project.id));
}
