//! Builds a store on each backend for one test, and the fixtures the tests share.

use std::path::PathBuf;

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, ProjectId, RunId, RunStatus};
use kiln_store::{NewJob, NewRun, Store};
use serde_json::Map;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A base PostgreSQL URL that accepts connections (without a schema).
pub(crate) async fn pg_base_url() -> String {
    if let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") {
        return url;
    }
    for url in [DEFAULT_PG, "postgres://root@127.0.0.1:5432/test"] {
        if PgConnection::connect(url).await.is_ok() {
            return url.to_owned();
        }
    }
    panic!("PostgreSQL is not reachable at {DEFAULT_PG} (as `postgres` or `root`)");
}

pub(crate) enum Kind {
    Sqlite,
    Postgres { base: String, schema: String },
}

/// One test's store and everything needed to reopen and clean it up.
pub(crate) struct Harness {
    pub(crate) store: Store,
    pub(crate) kind: Kind,
    pub(crate) dir: tempfile::TempDir,
}

impl Harness {
    pub(crate) async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        assert_eq!(store.backend_name(), "sqlite");
        Self {
            store,
            kind: Kind::Sqlite,
            dir,
        }
    }

    pub(crate) async fn postgres() -> Self {
        let base = pg_base_url().await;
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        kiln_store::SecretKeys::generate()
            .unwrap()
            .write_file(&dir.path().join(kiln_store::secrets::KEY_FILE_NAME))
            .unwrap();
        let store = Store::open_postgres(&schema_url(&base, &schema), dir.path())
            .await
            .unwrap();
        assert_eq!(store.backend_name(), "postgres");
        Self {
            store,
            kind: Kind::Postgres { base, schema },
            dir,
        }
    }

    /// Opens the same database again (a restart).
    pub(crate) async fn reopen(&self) -> Store {
        match &self.kind {
            Kind::Sqlite => Store::open_sqlite(self.dir.path()).await.unwrap(),
            Kind::Postgres { base, schema } => {
                Store::open_postgres(&schema_url(base, schema), self.dir.path())
                    .await
                    .unwrap()
            }
        }
    }

    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }

    /// Drops the test's schema (PostgreSQL). Called at the end of a passing test; a failing
    /// one leaves its schema behind to look at.
    pub(crate) async fn cleanup(self) {
        if let Kind::Postgres { base, schema } = &self.kind {
            let mut conn = PgConnection::connect(base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

pub(crate) fn schema_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}schema={schema}")
}

/// Generates `mod name { sqlite, postgres }` tests running `async fn name(&Harness)`.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let h = $crate::harness::Harness::sqlite().await;
                    super::$name(&h).await;
                    h.cleanup().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let h = $crate::harness::Harness::postgres().await;
                    super::$name(&h).await;
                    h.cleanup().await;
                }
            }
        )+
    };
}
pub(crate) use both_backends;

pub(crate) fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap()
}

pub(crate) fn new_job(key: &str, status: JobStatus, max_attempts: i64) -> NewJob {
    NewJob {
        id: JobId::new(),
        key: key.to_owned(),
        name: key.to_owned(),
        matrix: Map::new(),
        needs: Vec::new(),
        status,
        max_attempts,
        labels: Vec::new(),
    }
}

pub(crate) fn new_run(project: ProjectId, workflow: &str, jobs: Vec<NewJob>) -> NewRun {
    NewRun {
        id: RunId::new(),
        project,
        workflow: workflow.to_owned(),
        workflow_name: format!("{workflow} name"),
        event: "push".to_owned(),
        git_ref: "refs/heads/main".to_owned(),
        sha: "0123456789abcdef".to_owned(),
        inputs: Map::new(),
        status: RunStatus::Queued,
        jobs,
        at: at(0),
        driver: None,
        context: Default::default(),
    }
}
