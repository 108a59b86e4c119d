// The queries of artifacts, written once for both dialects like `body.rs`: `sqlite.rs` and
// `postgres.rs` each `include!` this file after `body.rs`. A module of its own so that its
// imports cannot clash with body.rs's. (An included file cannot carry a `//!`; the module's
// inner doc below is inside its braces.)

mod api_artifacts {
    //! Artifact rows: what a job kept, under which name, with which metadata. The bytes are
    //! in the artifact object store ([`crate::artifacts::ArtifactStore`]), not here.

    use jiff::Timestamp;
    use kiln_core::ids::{JobId, RunId};
    use kiln_proto::artifacts::{ArtifactFormat, ArtifactId, ArtifactMeta, ArtifactView};

    use super::{Backend, Db, get};
    use crate::artifacts::{ArtifactFilter, NewArtifact};
    use crate::backend::{decode, ms, parse, ts};
    use crate::error::{StoreError, query};

    type DbRow = <Db as sqlx::Database>::Row;

    /// The columns [`artifact_from_row`] reads (a macro: sqlx takes only static SQL).
    macro_rules! artifact_cols {
        () => {
            "a.id, p.name AS project, a.project_id, a.run_id, a.job_id, a.name, a.file_name, a.format, \
             a.sha256, a.size, a.semver, a.metadata, a.created_at"
        };
    }

    fn artifact_from_row(row: &DbRow) -> Result<ArtifactView, StoreError> {
        const T: &str = "artifacts";
        let format: String = get(row, T, "format")?;
        let metadata: String = get(row, T, "metadata")?;
        Ok(ArtifactView {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            project: get(row, T, "project")?,
            project_id: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
            run_id: parse(T, "run_id", &get::<String>(row, T, "run_id")?)?,
            job_id: parse(T, "job_id", &get::<String>(row, T, "job_id")?)?,
            name: get(row, T, "name")?,
            file_name: get(row, T, "file_name")?,
            format: ArtifactFormat::parse(&format)
                .ok_or_else(|| decode(T, "format", format!("unknown format `{format}`")))?,
            sha256: get(row, T, "sha256")?,
            size: u64::try_from(get::<i64>(row, T, "size")?).unwrap_or(0),
            semver: get(row, T, "semver")?,
            metadata: serde_json::from_str::<ArtifactMeta>(&metadata)
                .map_err(|e| decode(T, "metadata", e))?,
            created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
        })
    }

    impl Backend {
        /// Records an artifact. A name the same job used before (an earlier attempt, or the
        /// same upload again) is replaced; a name another job of the run used is refused.
        pub(crate) async fn record_artifact(
            &self,
            new: &NewArtifact,
            at: Timestamp,
        ) -> Result<ArtifactId, StoreError> {
            let id = ArtifactId::new();
            let semver = new
                .metadata
                .version
                .as_deref()
                .and_then(kiln_proto::artifacts::semver_of)
                .map(|v| v.to_string());
            let mut tx = self.begin_write().await?;
            let project: Option<String> =
                sqlx::query_scalar("SELECT project_id FROM runs WHERE id = $1")
                    .bind(new.run.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query("read an artifact's run"))?;
            let Some(project) = project else {
                return Err(StoreError::NotFound {
                    what: "run",
                    id: new.run.to_string(),
                });
            };
            let kept: Option<String> = sqlx::query_scalar(
                "INSERT INTO artifacts (id, project_id, run_id, job_id, name, file_name, format, \
                 sha256, size, version, semver, metadata, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (run_id, name) DO UPDATE SET id = excluded.id, \
                 file_name = excluded.file_name, format = excluded.format, \
                 sha256 = excluded.sha256, size = excluded.size, version = excluded.version, \
                 semver = excluded.semver, metadata = excluded.metadata, \
                 created_at = excluded.created_at WHERE artifacts.job_id = excluded.job_id \
                 RETURNING id",
            )
            .bind(id.to_string())
            .bind(&project)
            .bind(new.run.to_string())
            .bind(new.job.to_string())
            .bind(&new.name)
            .bind(&new.file_name)
            .bind(new.format.as_str())
            .bind(&new.sha256)
            .bind(i64::try_from(new.size).unwrap_or(i64::MAX))
            .bind(new.metadata.version.as_deref())
            .bind(semver)
            .bind(serde_json::to_string(&new.metadata).unwrap_or_else(|_| "{}".into()))
            .bind(ms(at))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("record an artifact"))?;
            if kept.is_none() {
                return Err(StoreError::NameTaken {
                    what: "artifact of this run",
                    name: new.name.clone(),
                });
            }
            tx.commit().await.map_err(query("commit an artifact"))?;
            Ok(id)
        }

        pub(crate) async fn get_artifact(
            &self,
            id: ArtifactId,
        ) -> Result<Option<ArtifactView>, StoreError> {
            let row = sqlx::query(concat!(
                "SELECT ",
                artifact_cols!(),
                " FROM artifacts a JOIN projects p ON p.id = a.project_id WHERE a.id = $1"
            ))
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await
                .map_err(query("read an artifact"))?;
            row.as_ref().map(artifact_from_row).transpose()
        }

        /// One page of artifacts matching everything but the labels, newest first.
        pub(crate) async fn list_artifacts(
            &self,
            filter: &ArtifactFilter,
            before: Option<ArtifactId>,
            limit: i64,
        ) -> Result<Vec<ArtifactView>, StoreError> {
            let rows = sqlx::query(concat!(
                "SELECT ",
                artifact_cols!(),
                " FROM artifacts a JOIN projects p ON p.id = a.project_id \
                 WHERE ($1 IS NULL OR p.name = $1) AND ($2 IS NULL OR a.run_id = $2) \
                 AND ($3 IS NULL OR a.job_id = $3) AND ($4 IS NULL OR a.name = $4) \
                 AND ($5 IS NULL OR a.version = $5) AND ($6 IS NULL OR a.sha256 = $6) \
                 AND ($7 IS NULL OR a.id < $7) AND ($9 IS NULL OR a.project_id = $9) \
                 ORDER BY a.id DESC LIMIT $8"
            ))
                .bind(filter.project.as_deref())
                .bind(filter.run.map(|r: RunId| r.to_string()))
                .bind(filter.job.map(|j: JobId| j.to_string()))
                .bind(filter.name.as_deref())
                .bind(filter.version.as_deref())
                .bind(filter.sha256.as_deref())
                .bind(before.map(|b| b.to_string()))
                .bind(limit)
                .bind(filter.project_id.map(|p| p.to_string()))
                .fetch_all(&self.reader)
                .await
                .map_err(query("list artifacts"))?;
            rows.iter().map(artifact_from_row).collect()
        }

        /// Whether some artifact of `run` is stored under `sha256`.
        pub(crate) async fn run_has_blob(
            &self,
            run: RunId,
            sha256: &str,
        ) -> Result<bool, StoreError> {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM artifacts WHERE run_id = $1 AND sha256 = $2",
            )
            .bind(run.to_string())
            .bind(sha256)
            .fetch_one(&self.reader)
            .await
            .map_err(query("look up an artifact's blob"))?;
            Ok(n > 0)
        }
    }
}
