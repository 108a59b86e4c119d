//! SQLite's WAL is copied into the database file by a checkpointer of its own, not inside the
//! commit that crosses SQLite's threshold (where every writer queued behind it would wait).

use std::time::Duration;

use crate::harness::Harness;

#[tokio::test]
async fn small_commits_reach_the_database_file_without_the_writers_threshold() {
    let h = Harness::sqlite().await;
    let db = h.dir.path().join("kiln.db");
    let size = || std::fs::metadata(&db).unwrap().len();
    let before = size();
    // A few dozen small commits: a few dozen WAL pages, far below the 8,000 at which the
    // writer would checkpoint on its own.
    for i in 0..40 {
        h.store
            .create_project(&format!("p{i}"), &format!("/srv/p{i}"))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while size() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the database file is still {before} bytes: nothing was checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing was lost on the way: a store opened afresh reads every project.
    drop(h.store);
    let again = kiln_store::Store::open_sqlite(h.dir.path()).await.unwrap();
    assert_eq!(again.list_projects(false).await.unwrap().len(), 40);
}
