// The queries of projects over the API, written once for both dialects like `body.rs`:
// `sqlite.rs` and `postgres.rs` each `include!` this file after `body.rs`. A module of its own
// so that its imports cannot clash with body.rs's; as a child of the including backend module
// it still sees that module's private items (`Backend`'s pools, `begin_write`, `SQL`,
// `project_from_row`). (An included file cannot carry a `//!`; the module's inner doc below
// is inside its braces.)

mod api_projects {
    //! Projects beyond `upsert_project`/`get_project`/`find_project` (which `body.rs` keeps
    //! for `kiln run` and the engine): create with a unique name, list, update, the fetch
    //! state of a git mirror, and archiving (refused while runs are unfinished).

    use jiff::Timestamp;
    use kiln_core::ids::{ProjectId, RunStatus};
    use kiln_proto::ProjectKind;

    use super::{Backend, Db, SQL, get, project_from_row};
    use crate::backend::{ms, opt_ts, parse};
    use crate::error::{StoreError, query};
    use crate::projects::{Archived, FetchOutcome, ProjectChange, ProjectRecord};

    type DbRow = <Db as sqlx::Database>::Row;

    macro_rules! record_cols {
        () => {
            "id, name, source, hook_id, created_at, default_branch, head_sha, \
             fetch_requested_at, fetched_at, fetch_error, updated_at, archived_at, hook_provider"
        };
    }

    fn record_from_row(row: &DbRow) -> Result<ProjectRecord, StoreError> {
        const T: &str = "projects";
        Ok(ProjectRecord {
            project: project_from_row(row)?,
            default_branch: get(row, T, "default_branch")?,
            head_sha: get(row, T, "head_sha")?,
            fetch_requested_at: opt_ts(
                T,
                "fetch_requested_at",
                get(row, T, "fetch_requested_at")?,
            )?,
            fetched_at: opt_ts(T, "fetched_at", get(row, T, "fetched_at")?)?,
            fetch_error: get(row, T, "fetch_error")?,
            updated_at: opt_ts(T, "updated_at", get(row, T, "updated_at")?)?,
            archived_at: opt_ts(T, "archived_at", get(row, T, "archived_at")?)?,
            provider: parse(T, "hook_provider", &get::<String>(row, T, "hook_provider")?)?,
        })
    }

    /// A unique-constraint violation on the name (another writer took it between our check
    /// and our write, on PostgreSQL) reads as the name being taken.
    fn name_taken(name: &str, operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::NameTaken {
                what: "project",
                name: name.to_owned(),
            },
            _ => query(operation)(e),
        }
    }

    /// `fetch_requested_at` for a (new) source: now for a git source, nothing for a folder.
    fn fetch_mark(source: &str, now: Timestamp) -> Option<i64> {
        (ProjectKind::of(source) == ProjectKind::Git).then_some(ms(now))
    }

    const BY_ID: &str = concat!("SELECT ", record_cols!(), " FROM projects WHERE id = $1");
    const BY_NAME: &str = concat!("SELECT ", record_cols!(), " FROM projects WHERE name = $1");

    /// The record `sql` (`BY_ID` or `BY_NAME`) finds for `key`, through a pool or inside a
    /// transaction.
    async fn one<'e, E>(
        executor: E,
        sql: &'static str,
        key: &str,
        operation: &'static str,
    ) -> Result<Option<ProjectRecord>, StoreError>
    where
        E: sqlx::Executor<'e, Database = Db>,
    {
        sqlx::query(sql)
            .bind(key)
            .fetch_optional(executor)
            .await
            .map_err(query(operation))?
            .map(|row| record_from_row(&row))
            .transpose()
    }

    impl Backend {
        /// The name's current holder, archived or not, inside a write transaction.
        async fn name_holder(
            tx: &mut super::WriteTx,
            name: &str,
        ) -> Result<Option<ProjectId>, StoreError> {
            let id: Option<String> = sqlx::query_scalar("SELECT id FROM projects WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await
                .map_err(query("look up a project name"))?;
            id.map(|id| parse("projects", "id", &id)).transpose()
        }

        pub(crate) async fn create_project(
            &self,
            name: &str,
            source: &str,
            now: Timestamp,
        ) -> Result<ProjectRecord, StoreError> {
            let mut tx = self.begin_write().await?;
            if Self::name_holder(&mut tx, name).await?.is_some() {
                return Err(StoreError::NameTaken {
                    what: "project",
                    name: name.to_owned(),
                });
            }
            let row = sqlx::query(concat!(
                "INSERT INTO projects (id, name, source, hook_id, created_at, \
                 fetch_requested_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
                record_cols!()
            ))
            .bind(ProjectId::new().to_string())
            .bind(name)
            .bind(source)
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(ms(now))
            .bind(fetch_mark(source, now))
            .fetch_one(&mut *tx)
            .await
            .map_err(name_taken(name, "create a project"))?;
            let record = record_from_row(&row)?;
            tx.commit().await.map_err(query("commit a new project"))?;
            Ok(record)
        }

        pub(crate) async fn project_record(
            &self,
            id: ProjectId,
        ) -> Result<Option<ProjectRecord>, StoreError> {
            one(&self.reader, BY_ID, &id.to_string(), "read a project").await
        }

        pub(crate) async fn project_record_by_name(
            &self,
            name: &str,
        ) -> Result<Option<ProjectRecord>, StoreError> {
            one(&self.reader, BY_NAME, name, "find a project by name").await
        }

        pub(crate) async fn list_projects(
            &self,
            include_archived: bool,
        ) -> Result<Vec<ProjectRecord>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                record_cols!(),
                " FROM projects WHERE archived_at IS NULL OR $1 ORDER BY name"
            ))
            .bind(include_archived)
            .fetch_all(&self.reader)
            .await
            .map_err(query("list projects"))?
            .iter()
            .map(record_from_row)
            .collect()
        }

        pub(crate) async fn update_project(
            &self,
            id: ProjectId,
            change: ProjectChange<'_>,
            now: Timestamp,
        ) -> Result<Option<ProjectRecord>, StoreError> {
            let mut tx = self.begin_write().await?;
            let Some(current) = one(&mut *tx, BY_ID, &id.to_string(), "read a project").await?
            else {
                return Ok(None);
            };
            if current.is_archived() {
                return Ok(None);
            }
            if let Some(name) = change.name
                && name != current.project.name
                && Self::name_holder(&mut tx, name).await?.is_some()
            {
                return Err(StoreError::NameTaken {
                    what: "project",
                    name: name.to_owned(),
                });
            }
            let name = change.name.unwrap_or(&current.project.name);
            let new_source = change.source.filter(|s| *s != current.project.source);
            let row = match new_source {
                // A new source: the old one's mirror state means nothing for it.
                Some(source) => sqlx::query(concat!(
                    "UPDATE projects SET name = $2, source = $3, updated_at = $4, \
                     default_branch = NULL, head_sha = NULL, fetched_at = NULL, \
                     fetch_error = NULL, fetch_requested_at = $5 WHERE id = $1 RETURNING ",
                    record_cols!()
                ))
                .bind(id.to_string())
                .bind(name)
                .bind(source)
                .bind(ms(now))
                .bind(fetch_mark(source, now)),
                None => sqlx::query(concat!(
                    "UPDATE projects SET name = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    record_cols!()
                ))
                .bind(id.to_string())
                .bind(name)
                .bind(ms(now)),
            }
            .fetch_one(&mut *tx)
            .await
            .map_err(name_taken(name, "update a project"))?;
            let record = record_from_row(&row)?;
            tx.commit()
                .await
                .map_err(query("commit a project's update"))?;
            Ok(Some(record))
        }

        pub(crate) async fn request_fetch(
            &self,
            id: ProjectId,
            now: Timestamp,
        ) -> Result<Option<ProjectRecord>, StoreError> {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query(concat!(
                "UPDATE projects SET fetch_requested_at = $2 \
                 WHERE id = $1 AND archived_at IS NULL RETURNING ",
                record_cols!()
            ))
            .bind(id.to_string())
            .bind(ms(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("ask for a project's fetch"))?;
            let record = row.map(|row| record_from_row(&row)).transpose()?;
            tx.commit()
                .await
                .map_err(query("commit a project's fetch request"))?;
            Ok(record)
        }

        pub(crate) async fn record_fetch(
            &self,
            id: ProjectId,
            source: &str,
            outcome: &FetchOutcome,
            now: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            // Guarded by the source fetched: a fetch that ends after the source changed
            // reports on a source the project no longer has.
            let done = match outcome {
                FetchOutcome::Fetched {
                    default_branch,
                    head_sha,
                } => sqlx::query(
                    "UPDATE projects SET default_branch = $3, head_sha = $4, fetched_at = $5, \
                     fetch_error = NULL WHERE id = $1 AND source = $2 AND archived_at IS NULL",
                )
                .bind(id.to_string())
                .bind(source)
                .bind(default_branch.as_deref())
                .bind(head_sha.as_deref())
                .bind(ms(now)),
                FetchOutcome::Failed(error) => sqlx::query(
                    "UPDATE projects SET fetch_error = $3, fetched_at = $4 \
                     WHERE id = $1 AND source = $2 AND archived_at IS NULL",
                )
                .bind(id.to_string())
                .bind(source)
                .bind(error.as_str())
                .bind(ms(now)),
            }
            .execute(&mut *tx)
            .await
            .map_err(query("record a project's fetch"))?;
            tx.commit()
                .await
                .map_err(query("commit a project's fetch"))?;
            Ok(done.rows_affected() > 0)
        }

        pub(crate) async fn archive_project(
            &self,
            id: ProjectId,
            now: Timestamp,
        ) -> Result<Option<Archived>, StoreError> {
            let mut tx = self.begin_write().await?;
            // On PostgreSQL this locks the row as creating a run does, so a run created
            // concurrently is either counted below or created after the archive.
            let found = sqlx::query(SQL.lock_project)
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(query("lock a project"))?;
            if found.is_none() {
                return Ok(None);
            }
            let counts = sqlx::query(
                "SELECT status, COUNT(*) AS n FROM runs WHERE project_id = $1 GROUP BY status",
            )
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(query("count a project's runs"))?;
            let mut active_runs = 0;
            for row in &counts {
                let status: RunStatus =
                    parse("runs", "status", &get::<String>(row, "runs", "status")?)?;
                if !status.is_terminal() {
                    active_runs += get::<i64>(row, "runs", "n")?;
                }
            }
            if active_runs > 0 {
                tx.rollback()
                    .await
                    .map_err(query("end a project's archive"))?;
                return Ok(Some(Archived::Busy { active_runs }));
            }
            sqlx::query(
                "UPDATE projects SET archived_at = COALESCE(archived_at, $2) WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(query("archive a project"))?;
            let record = one(&mut *tx, BY_ID, &id.to_string(), "read a project").await?;
            tx.commit()
                .await
                .map_err(query("commit a project's archive"))?;
            Ok(record.map(|r| Archived::Done(Box::new(r))))
        }
    }
}
