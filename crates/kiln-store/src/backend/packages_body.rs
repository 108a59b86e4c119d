// The queries of package builds (`kiln build`), written once for both dialects like
// `body.rs`: `sqlite.rs` and `postgres.rs` each `include!` this file after `body.rs`. A module
// of its own so that its imports cannot clash with body.rs's; as a child of the including
// backend module it still sees that module's private items (`Backend`'s pools,
// `begin_write`, `get`). The few statements whose spelling differs (reading a JSON array) are
// chosen by the driver's name (`Db::NAME`). (An included file cannot carry a `//!`; the
// module's inner doc below is inside its braces.)

mod api_packages {
    //! Build sessions and package builds: recording them in batches, the cache lookup by
    //! key, each origin's latest build and history, the durations the scheduler weighs with,
    //! and the figures of `/api/v1/stats` (see `crate::packages` for who reads what).
    //!
    //! Lists of keys, origins and rows travel as ONE JSON array per statement (`json_each`
    //! on SQLite, `jsonb_array_elements` on PostgreSQL), chunked: a whole tree is a handful
    //! of statements, and no statement comes near either database's limit on parameters.

    use std::collections::HashMap;
    use std::time::Duration;

    use jiff::Timestamp;
    use serde_json::{Value, json};
    use sqlx::Database as _;

    use super::{Backend, Db, get};
    use crate::backend::{decode, ms, opt_ts, parse, ts};
    use crate::blob::ContentBlob;
    use crate::error::{StoreError, query};
    use crate::packages::{
        BuildCounts, BuildSession, BuildSessionId, CachedBuild, PackageBuild, PackageBuildId,
        PackageBuildStatus, PackageStats,
    };

    type DbRow = <Db as sqlx::Database>::Row;

    /// Rows, keys or origins per statement: big enough that a 60,000-package tree takes 30
    /// statements, small enough that one statement's JSON stays around a megabyte.
    const CHUNK: usize = 2_000;

    fn is_postgres() -> bool {
        Db::NAME == "PostgreSQL"
    }

    macro_rules! build_cols {
        () => {
            "id, session_id, origin, version, build_key, status, reason, started_at, \
             finished_at, duration_ms, log_digest, log_size, log_tail, output_digest, \
             output_size"
        };
    }

    macro_rules! session_cols {
        () => {
            "id, tree, slots, started_at, finished_at, built, failed, skipped, cached, \
             cancelled"
        };
    }

    /// The rows of a JSON array of strings `$1`, as a subquery of one column.
    fn strings_of_json() -> &'static str {
        if is_postgres() {
            "SELECT jsonb_array_elements_text($1::jsonb)"
        } else {
            "SELECT value FROM json_each($1)"
        }
    }

    fn duration_of(
        table: &'static str,
        column: &'static str,
        v: i64,
    ) -> Result<Duration, StoreError> {
        u64::try_from(v)
            .map(Duration::from_millis)
            .map_err(|e| decode(table, column, e))
    }

    fn millis(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    fn blob_of(
        table: &'static str,
        digest: Option<String>,
        size: Option<i64>,
        column: &'static str,
    ) -> Result<Option<ContentBlob>, StoreError> {
        match (digest, size) {
            (Some(digest), Some(size)) => Ok(Some(ContentBlob {
                digest,
                size: u64::try_from(size).map_err(|e| decode(table, column, e))?,
            })),
            (None, _) => Ok(None),
            (Some(_), None) => Err(decode(table, column, "a digest without a size")),
        }
    }

    fn build_from_row(row: &DbRow) -> Result<PackageBuild, StoreError> {
        const T: &str = "package_builds";
        Ok(PackageBuild {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            session: parse(T, "session_id", &get::<String>(row, T, "session_id")?)?,
            origin: get(row, T, "origin")?,
            version: get(row, T, "version")?,
            key: get(row, T, "build_key")?,
            status: parse(T, "status", &get::<String>(row, T, "status")?)?,
            reason: get(row, T, "reason")?,
            started_at: ts(T, "started_at", get(row, T, "started_at")?)?,
            finished_at: ts(T, "finished_at", get(row, T, "finished_at")?)?,
            duration: duration_of(T, "duration_ms", get(row, T, "duration_ms")?)?,
            log: blob_of(
                T,
                get(row, T, "log_digest")?,
                get(row, T, "log_size")?,
                "log_size",
            )?,
            log_tail: get(row, T, "log_tail")?,
            output: blob_of(
                T,
                get(row, T, "output_digest")?,
                get(row, T, "output_size")?,
                "output_size",
            )?,
        })
    }

    fn session_from_row(row: &DbRow) -> Result<BuildSession, StoreError> {
        const T: &str = "build_sessions";
        let slots: i64 = get(row, T, "slots")?;
        Ok(BuildSession {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            tree: get(row, T, "tree")?,
            slots: u32::try_from(slots).map_err(|e| decode(T, "slots", e))?,
            started_at: ts(T, "started_at", get(row, T, "started_at")?)?,
            finished_at: opt_ts(T, "finished_at", get(row, T, "finished_at")?)?,
            counts: BuildCounts {
                built: get(row, T, "built")?,
                failed: get(row, T, "failed")?,
                skipped: get(row, T, "skipped")?,
                cached: get(row, T, "cached")?,
                cancelled: get(row, T, "cancelled")?,
            },
        })
    }

    /// Text as both databases store it: PostgreSQL's text (and jsonb) cannot hold NUL, which
    /// a build's output may well print.
    fn storable(text: &str) -> String {
        text.replace('\0', "\u{fffd}")
    }

    /// One build as a row of the JSON array the insert reads, in column order.
    fn build_json(b: &PackageBuild) -> Value {
        json!([
            b.id.to_string(),
            b.session.to_string(),
            b.origin,
            b.version,
            b.key,
            b.status.as_str(),
            b.reason.as_deref().map(storable),
            ms(b.started_at),
            ms(b.finished_at),
            millis(b.duration),
            b.log.as_ref().map(|l| l.digest.as_str()),
            b.log.as_ref().map(|l| l.size),
            storable(&b.log_tail),
            b.output.as_ref().map(|o| o.digest.as_str()),
            b.output.as_ref().map(|o| o.size),
        ])
    }

    fn insert_builds_sql() -> &'static str {
        if is_postgres() {
            concat!(
                "INSERT INTO package_builds (",
                build_cols!(),
                ") SELECT e->>0, e->>1, e->>2, e->>3, e->>4, e->>5, e->>6, \
                 (e->>7)::bigint, (e->>8)::bigint, (e->>9)::bigint, e->>10, \
                 (e->>11)::bigint, e->>12, e->>13, (e->>14)::bigint \
                 FROM jsonb_array_elements($1::jsonb) AS t(e)"
            )
        } else {
            concat!(
                "INSERT INTO package_builds (",
                build_cols!(),
                ") SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                 json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                 json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
                 json_extract(value, '$[6]'), json_extract(value, '$[7]'), \
                 json_extract(value, '$[8]'), json_extract(value, '$[9]'), \
                 json_extract(value, '$[10]'), json_extract(value, '$[11]'), \
                 json_extract(value, '$[12]'), json_extract(value, '$[13]'), \
                 json_extract(value, '$[14]') FROM json_each($1)"
            )
        }
    }

    /// `strings` once each, as JSON arrays of at most [`CHUNK`].
    fn json_chunks(strings: &[String]) -> Vec<String> {
        let mut seen = std::collections::HashSet::with_capacity(strings.len());
        let unique: Vec<&str> = strings
            .iter()
            .map(String::as_str)
            .filter(|s| seen.insert(*s))
            .collect();
        unique
            .chunks(CHUNK)
            .map(|chunk| Value::from(chunk.to_vec()).to_string())
            .collect()
    }

    impl Backend {
        pub(crate) async fn begin_build_session(
            &self,
            tree: &str,
            slots: u32,
            at: Timestamp,
        ) -> Result<BuildSessionId, StoreError> {
            let id = BuildSessionId::new();
            let mut tx = self.begin_write().await?;
            sqlx::query(concat!(
                "INSERT INTO build_sessions (",
                session_cols!(),
                ") VALUES ($1, $2, $3, $4, NULL, 0, 0, 0, 0, 0)"
            ))
            .bind(id.to_string())
            .bind(tree)
            .bind(i64::from(slots))
            .bind(ms(at))
            .execute(&mut *tx)
            .await
            .map_err(query("begin a build session"))?;
            tx.commit()
                .await
                .map_err(query("commit a new build session"))?;
            Ok(id)
        }

        pub(crate) async fn finish_build_session(
            &self,
            id: BuildSessionId,
            counts: &BuildCounts,
            at: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(
                "UPDATE build_sessions SET finished_at = $2, built = $3, failed = $4, \
                 skipped = $5, cached = $6, cancelled = $7 \
                 WHERE id = $1 AND finished_at IS NULL",
            )
            .bind(id.to_string())
            .bind(ms(at))
            .bind(counts.built)
            .bind(counts.failed)
            .bind(counts.skipped)
            .bind(counts.cached)
            .bind(counts.cancelled)
            .execute(&mut *tx)
            .await
            .map_err(query("finish a build session"))?;
            tx.commit()
                .await
                .map_err(query("commit a build session's end"))?;
            Ok(done.rows_affected() > 0)
        }

        pub(crate) async fn build_session(
            &self,
            id: BuildSessionId,
        ) -> Result<Option<BuildSession>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                session_cols!(),
                " FROM build_sessions WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(query("read a build session"))?
            .map(|row| session_from_row(&row))
            .transpose()
        }

        pub(crate) async fn build_sessions(
            &self,
            limit: u32,
        ) -> Result<Vec<BuildSession>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                session_cols!(),
                " FROM build_sessions ORDER BY started_at DESC, id DESC LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query("list build sessions"))?
            .iter()
            .map(session_from_row)
            .collect()
        }

        pub(crate) async fn record_package_builds(
            &self,
            builds: &[PackageBuild],
        ) -> Result<(), StoreError> {
            if builds.is_empty() {
                return Ok(());
            }
            let mut tx = self.begin_write().await?;
            for chunk in builds.chunks(CHUNK) {
                let rows = Value::Array(chunk.iter().map(build_json).collect()).to_string();
                sqlx::query(insert_builds_sql())
                    .bind(rows)
                    .execute(&mut *tx)
                    .await
                    .map_err(query("record package builds"))?;
            }
            tx.commit().await.map_err(query("commit package builds"))?;
            Ok(())
        }

        pub(crate) async fn cached_builds(
            &self,
            keys: &[String],
        ) -> Result<HashMap<String, CachedBuild>, StoreError> {
            const T: &str = "package_builds";
            let sql = format!(
                "SELECT id, origin, version, build_key, finished_at, duration_ms, \
                 output_digest, output_size FROM package_builds \
                 WHERE status = 'success' AND build_key IN ({}) ORDER BY finished_at, id",
                strings_of_json()
            );
            let mut found = HashMap::new();
            for chunk in json_chunks(keys) {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(chunk)
                    .fetch_all(&self.reader)
                    .await
                    .map_err(query("look up cached package builds"))?;
                // Oldest first: a key built successfully twice answers with its newest build.
                for row in &rows {
                    let output = blob_of(
                        T,
                        get(row, T, "output_digest")?,
                        get(row, T, "output_size")?,
                        "output_size",
                    )?
                    .ok_or_else(|| decode(T, "output_digest", "a success without an output"))?;
                    found.insert(
                        get::<String>(row, T, "build_key")?,
                        CachedBuild {
                            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
                            origin: get(row, T, "origin")?,
                            version: get(row, T, "version")?,
                            finished_at: ts(T, "finished_at", get(row, T, "finished_at")?)?,
                            duration: duration_of(T, "duration_ms", get(row, T, "duration_ms")?)?,
                            output,
                        },
                    );
                }
            }
            Ok(found)
        }

        pub(crate) async fn package_build(
            &self,
            id: PackageBuildId,
        ) -> Result<Option<PackageBuild>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                build_cols!(),
                " FROM package_builds WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(query("read a package build"))?
            .map(|row| build_from_row(&row))
            .transpose()
        }

        pub(crate) async fn package_history(
            &self,
            origin: &str,
            before: Option<PackageBuildId>,
            limit: u32,
        ) -> Result<Vec<PackageBuild>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                build_cols!(),
                " FROM package_builds WHERE origin = $1 AND ($2 IS NULL OR \
                 (finished_at, id) < (SELECT finished_at, id FROM package_builds \
                 WHERE id = $2)) ORDER BY finished_at DESC, id DESC LIMIT $3"
            ))
            .bind(origin)
            .bind(before.map(|b| b.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query("read a package's build history"))?
            .iter()
            .map(build_from_row)
            .collect()
        }

        pub(crate) async fn package_status(
            &self,
            after: Option<&str>,
            limit: u32,
        ) -> Result<Vec<PackageBuild>, StoreError> {
            // The page's origins from the origin index (each origin's rows are adjacent in
            // it), then each one's newest build through the same index read backwards.
            sqlx::query(concat!(
                "SELECT ",
                build_cols!(),
                " FROM package_builds WHERE id IN (SELECT (SELECT l.id FROM package_builds \
                 AS l WHERE l.origin = o.origin ORDER BY l.finished_at DESC, l.id DESC \
                 LIMIT 1) FROM (SELECT DISTINCT origin FROM package_builds WHERE origin > $1 \
                 ORDER BY origin LIMIT $2) AS o) ORDER BY origin"
            ))
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query("read the latest build of every package"))?
            .iter()
            .map(build_from_row)
            .collect()
        }

        pub(crate) async fn package_durations(
            &self,
            origins: &[String],
        ) -> Result<HashMap<String, Duration>, StoreError> {
            const T: &str = "package_builds";
            let sql = if is_postgres() {
                "SELECT o AS origin, (SELECT b.duration_ms FROM package_builds AS b \
                 WHERE b.origin = o AND b.status = 'success' \
                 ORDER BY b.finished_at DESC, b.id DESC LIMIT 1) AS duration_ms \
                 FROM jsonb_array_elements_text($1::jsonb) AS t(o)"
            } else {
                "SELECT o.value AS origin, (SELECT b.duration_ms FROM package_builds AS b \
                 WHERE b.origin = o.value AND b.status = 'success' \
                 ORDER BY b.finished_at DESC, b.id DESC LIMIT 1) AS duration_ms \
                 FROM json_each($1) AS o"
            };
            let mut durations = HashMap::new();
            for chunk in json_chunks(origins) {
                let rows = sqlx::query(sql)
                    .bind(chunk)
                    .fetch_all(&self.reader)
                    .await
                    .map_err(query("read the last build durations of packages"))?;
                for row in &rows {
                    if let Some(d) = get::<Option<i64>>(row, T, "duration_ms")? {
                        durations.insert(
                            get::<String>(row, T, "origin")?,
                            duration_of(T, "duration_ms", d)?,
                        );
                    }
                }
            }
            Ok(durations)
        }

        pub(crate) async fn package_stats(&self) -> Result<PackageStats, StoreError> {
            const T: &str = "package_builds";
            let mut tx = self.begin_read().await?;
            let last_session = sqlx::query(concat!(
                "SELECT ",
                session_cols!(),
                " FROM build_sessions WHERE finished_at IS NOT NULL \
                 ORDER BY started_at DESC, id DESC LIMIT 1"
            ))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("read the last build session"))?
            .map(|row| session_from_row(&row))
            .transpose()?;
            let by_status =
                sqlx::query("SELECT status, COUNT(*) AS n FROM package_builds GROUP BY status")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query("count package builds by status"))?;
            let mut all_time = BuildCounts::default();
            for row in &by_status {
                let status: PackageBuildStatus =
                    parse(T, "status", &get::<String>(row, T, "status")?)?;
                all_time.add(status, get(row, T, "n")?);
            }
            let origins: i64 =
                sqlx::query_scalar("SELECT COUNT(DISTINCT origin) FROM package_builds")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query("count packages"))?;
            // Nearest-rank percentiles: the value at rank ceil(p * n), read from the index of
            // successful durations rather than by sorting the history.
            let n = all_time.built;
            let mut percentile = async |rank: i64| -> Result<Option<i64>, StoreError> {
                if n == 0 {
                    return Ok(None);
                }
                sqlx::query_scalar(
                    "SELECT duration_ms FROM package_builds WHERE status = 'success' \
                     ORDER BY duration_ms LIMIT 1 OFFSET $1",
                )
                .bind(rank - 1)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query("compute package build time percentiles"))
            };
            let p50_ms = percentile((n + 1) / 2).await?;
            let p95_ms = percentile((95 * n + 99) / 100).await?;
            tx.commit()
                .await
                .map_err(query("end a read of package statistics"))?;
            Ok(PackageStats {
                last_session,
                all_time,
                origins,
                p50_ms,
                p95_ms,
            })
        }
    }
}
