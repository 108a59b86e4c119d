// The queries of watches (`on.watch`), written once for both dialects like `body.rs`:
// `sqlite.rs` and `postgres.rs` each `include!` this file after `body.rs`. A module of its own
// so that its imports cannot clash with body.rs's; as a child of the including backend module
// it still sees that module's private items (`Backend`'s pools, `begin_write`, `get`). (An
// included file cannot carry a `//!`; the module's inner doc below is inside its braces.)

mod api_watches {
    //! Watches and their versions: the sync of a project's entries, listing, the due list,
    //! the poll claim, and recording a poll's versions before their runs start (see
    //! `crate::watches` for why a version never starts two runs).

    use std::collections::HashMap;

    use jiff::Timestamp;
    use kiln_core::ids::{ProjectId, RunId};
    use kiln_proto::{WatchId, WatchState, WatchView};
    use uuid::Uuid;

    use super::{Backend, Db, get};
    use crate::backend::{ms, opt_ts, parse, ts};
    use crate::error::{StoreError, query};
    use crate::watches::{
        ClaimedVersion, PollRecord, SeenVersion, WatchDef, WatchRow, WatchSyncReport,
    };

    type DbRow = <Db as sqlx::Database>::Row;

    macro_rules! view_cols {
        () => {
            "w.id, w.project_id, p.name AS project_name, w.workflow, w.name, w.source, \
             w.version_req, w.filter, w.known_versions, w.interval_secs, w.enabled, w.polled, \
             w.next_poll_at, w.last_poll_at, w.etag, w.last_error, w.failures, w.last_run_id, \
             w.created_at, \
             (SELECT COUNT(*) FROM watch_versions v WHERE v.watch_id = w.id) AS versions_seen \
             FROM watches w JOIN projects p ON p.id = w.project_id"
        };
    }

    macro_rules! row_cols {
        () => {
            "w.id, w.project_id, w.workflow, w.name, w.source, w.version_req, w.filter, \
             w.known_versions, w.interval_secs, w.polled, w.next_poll_at, w.etag, w.failures \
             FROM watches w JOIN projects p ON p.id = w.project_id"
        };
    }

    const T: &str = "watches";

    fn u32_of(column: &'static str, v: i64) -> Result<u32, StoreError> {
        u32::try_from(v).map_err(|e| crate::backend::decode(T, column, e))
    }

    fn u64_of(column: &'static str, v: i64) -> Result<u64, StoreError> {
        u64::try_from(v).map_err(|e| crate::backend::decode(T, column, e))
    }

    fn i64_of(v: u64) -> i64 {
        i64::try_from(v).unwrap_or(i64::MAX)
    }

    fn view_from_row(row: &DbRow) -> Result<WatchView, StoreError> {
        let source: String = get(row, T, "source")?;
        let spec: serde_json::Value =
            serde_json::from_str(&source).map_err(|e| crate::backend::decode(T, "source", e))?;
        let enabled: i64 = get(row, T, "enabled")?;
        let polled: i64 = get(row, T, "polled")?;
        let failures = u32_of("failures", get(row, T, "failures")?)?;
        let last_run: Option<String> = get(row, T, "last_run_id")?;
        let state = if enabled == 0 {
            WatchState::Disabled
        } else if failures > 0 {
            WatchState::Failing
        } else if polled == 0 {
            WatchState::New
        } else {
            WatchState::Ok
        };
        Ok(WatchView {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
            project_name: get(row, T, "project_name")?,
            workflow: get(row, T, "workflow")?,
            name: get(row, T, "name")?,
            source: spec
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_owned(),
            spec,
            constraint: get(row, T, "version_req")?,
            filter: get(row, T, "filter")?,
            known_versions: get(row, T, "known_versions")?,
            interval_secs: u64_of("interval_secs", get(row, T, "interval_secs")?)?,
            state,
            last_error: get(row, T, "last_error")?,
            failures,
            versions_seen: u64_of("versions_seen", get(row, T, "versions_seen")?)?,
            next_poll_at: if enabled == 0 {
                None
            } else {
                Some(ts(T, "next_poll_at", get(row, T, "next_poll_at")?)?)
            },
            last_poll_at: opt_ts(T, "last_poll_at", get(row, T, "last_poll_at")?)?,
            last_run: last_run.map(|r| parse(T, "last_run_id", &r)).transpose()?,
            created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
        })
    }

    fn watch_from_row(row: &DbRow) -> Result<WatchRow, StoreError> {
        let workflow: String = get(row, T, "workflow")?;
        let name: String = get(row, T, "name")?;
        let polled: i64 = get(row, T, "polled")?;
        Ok(WatchRow {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
            def: WatchDef {
                workflow: workflow.clone(),
                name: name.clone(),
                source: get(row, T, "source")?,
                constraint: get(row, T, "version_req")?,
                filter: get(row, T, "filter")?,
                known_versions: get(row, T, "known_versions")?,
                interval_secs: u64_of("interval_secs", get(row, T, "interval_secs")?)?,
            },
            workflow,
            name,
            polled: polled != 0,
            next_poll_at: ts(T, "next_poll_at", get(row, T, "next_poll_at")?)?,
            etag: get(row, T, "etag")?,
            failures: u32_of("failures", get(row, T, "failures")?)?,
        })
    }

    struct Existing {
        id: String,
        def: WatchDef,
        enabled: bool,
    }

    impl Backend {
        pub(crate) async fn sync_watches(
            &self,
            project: ProjectId,
            defs: &[WatchDef],
            keep_workflows: &[String],
            now: Timestamp,
        ) -> Result<WatchSyncReport, StoreError> {
            let mut report = WatchSyncReport::default();
            let mut tx = self.begin_write().await?;
            let rows = sqlx::query(
                "SELECT id, workflow, name, source, version_req, filter, known_versions, \
                 interval_secs, enabled FROM watches WHERE project_id = $1",
            )
            .bind(project.to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(query("read a project's watches"))?;
            let mut existing: HashMap<(String, String), Existing> = HashMap::new();
            for row in &rows {
                let workflow: String = get(row, T, "workflow")?;
                let name: String = get(row, T, "name")?;
                let enabled: i64 = get(row, T, "enabled")?;
                existing.insert(
                    (workflow.clone(), name.clone()),
                    Existing {
                        id: get(row, T, "id")?,
                        def: WatchDef {
                            workflow,
                            name,
                            source: get(row, T, "source")?,
                            constraint: get(row, T, "version_req")?,
                            filter: get(row, T, "filter")?,
                            known_versions: get(row, T, "known_versions")?,
                            interval_secs: u64_of("interval_secs", get(row, T, "interval_secs")?)?,
                        },
                        enabled: enabled != 0,
                    },
                );
            }
            for def in defs {
                let key = (def.workflow.clone(), def.name.clone());
                match existing.remove(&key) {
                    None => {
                        // Another replica's sync may insert the same entry meanwhile: the
                        // first insert stands. A new watch is due at once.
                        let done = sqlx::query(
                            "INSERT INTO watches (id, project_id, workflow, name, source, \
                             version_req, filter, known_versions, interval_secs, enabled, \
                             polled, next_poll_at, last_poll_at, etag, last_error, failures, \
                             last_run_id, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, 0, $10, NULL, NULL, \
                             NULL, 0, NULL, $10, $10) \
                             ON CONFLICT (project_id, workflow, name) DO NOTHING",
                        )
                        .bind(WatchId::new().to_string())
                        .bind(project.to_string())
                        .bind(&def.workflow)
                        .bind(&def.name)
                        .bind(&def.source)
                        .bind(&def.constraint)
                        .bind(&def.filter)
                        .bind(&def.known_versions)
                        .bind(i64_of(def.interval_secs))
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await
                        .map_err(query("insert a watch"))?;
                        report.added += usize::from(done.rows_affected() > 0);
                    }
                    Some(old) if old.def != *def || !old.enabled => {
                        // A new source forgets its ETag and is polled at once; versions seen
                        // stay seen (they are per watch, not per source).
                        let new_source = old.def.source != def.source || !old.enabled;
                        sqlx::query(
                            "UPDATE watches SET source = $2, version_req = $3, filter = $4, \
                             known_versions = $5, interval_secs = $6, enabled = 1, \
                             etag = CASE WHEN $7 = 1 THEN NULL ELSE etag END, \
                             next_poll_at = CASE WHEN $7 = 1 THEN $8 ELSE next_poll_at END, \
                             updated_at = $8 WHERE id = $1",
                        )
                        .bind(&old.id)
                        .bind(&def.source)
                        .bind(&def.constraint)
                        .bind(&def.filter)
                        .bind(&def.known_versions)
                        .bind(i64_of(def.interval_secs))
                        .bind(i64::from(new_source))
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await
                        .map_err(query("update a watch"))?;
                        if old.enabled {
                            report.changed += 1;
                        } else {
                            report.added += 1;
                        }
                    }
                    Some(_) => {}
                }
            }
            for ((workflow, _), old) in existing {
                if !old.enabled || keep_workflows.contains(&workflow) {
                    continue;
                }
                sqlx::query("UPDATE watches SET enabled = 0, updated_at = $2 WHERE id = $1")
                    .bind(&old.id)
                    .bind(ms(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(query("disable a watch"))?;
                report.removed += 1;
            }
            tx.commit()
                .await
                .map_err(query("commit a sync of watches"))?;
            Ok(report)
        }

        pub(crate) async fn list_watches(
            &self,
            project: Option<ProjectId>,
        ) -> Result<Vec<WatchView>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                view_cols!(),
                " WHERE p.archived_at IS NULL AND ($1 IS NULL OR w.project_id = $1) \
                 ORDER BY p.name, w.workflow, w.name"
            ))
            .bind(project.map(|p| p.to_string()))
            .fetch_all(&self.reader)
            .await
            .map_err(query("list watches"))?
            .iter()
            .map(view_from_row)
            .collect()
        }

        pub(crate) async fn get_watch(&self, id: WatchId) -> Result<Option<WatchView>, StoreError> {
            sqlx::query(concat!("SELECT ", view_cols!(), " WHERE w.id = $1"))
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await
                .map_err(query("read a watch"))?
                .map(|row| view_from_row(&row))
                .transpose()
        }

        pub(crate) async fn watch_row(&self, id: WatchId) -> Result<Option<WatchRow>, StoreError> {
            sqlx::query(concat!("SELECT ", row_cols!(), " WHERE w.id = $1"))
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await
                .map_err(query("read a watch"))?
                .map(|row| watch_from_row(&row))
                .transpose()
        }

        pub(crate) async fn due_watches(
            &self,
            now: Timestamp,
            limit: u32,
        ) -> Result<Vec<WatchRow>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                row_cols!(),
                " WHERE w.enabled = 1 AND w.next_poll_at <= $1 AND p.archived_at IS NULL \
                 ORDER BY w.next_poll_at LIMIT $2"
            ))
            .bind(ms(now))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query("list due watches"))?
            .iter()
            .map(watch_from_row)
            .collect()
        }

        pub(crate) async fn next_watch_poll(&self) -> Result<Option<Timestamp>, StoreError> {
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(w.next_poll_at) FROM watches w JOIN projects p ON p.id = w.project_id \
                 WHERE w.enabled = 1 AND p.archived_at IS NULL",
            )
            .fetch_one(&self.reader)
            .await
            .map_err(query("find the next watch poll"))?;
            opt_ts(T, "next_poll_at", next)
        }

        pub(crate) async fn claim_watch(
            &self,
            id: WatchId,
            seen_next: Timestamp,
            lease_until: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let moved = sqlx::query(
                "UPDATE watches SET next_poll_at = $3 WHERE id = $1 AND next_poll_at = $2 \
                 AND enabled = 1",
            )
            .bind(id.to_string())
            .bind(ms(seen_next))
            .bind(ms(lease_until))
            .execute(&mut *tx)
            .await
            .map_err(query("claim a watch poll"))?;
            tx.commit()
                .await
                .map_err(query("commit a watch poll's claim"))?;
            Ok(moved.rows_affected() > 0)
        }

        pub(crate) async fn seen_versions(&self, id: WatchId) -> Result<Vec<String>, StoreError> {
            sqlx::query_scalar("SELECT version FROM watch_versions WHERE watch_id = $1")
                .bind(id.to_string())
                .fetch_all(&self.reader)
                .await
                .map_err(query("read a watch's versions"))
        }

        pub(crate) async fn record_poll(
            &self,
            id: WatchId,
            poll: &PollRecord,
        ) -> Result<Vec<ClaimedVersion>, StoreError> {
            let mut tx = self.begin_write().await?;
            let mut claimed = Vec::new();
            for v in &poll.versions {
                let vid = Uuid::now_v7();
                let done = sqlx::query(
                    "INSERT INTO watch_versions (id, watch_id, version, source_uri, found_at, \
                     outcome, run_id, error) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL) \
                     ON CONFLICT (watch_id, version) DO NOTHING",
                )
                .bind(vid.to_string())
                .bind(id.to_string())
                .bind(&v.version)
                .bind(&v.source_uri)
                .bind(ms(poll.now))
                .bind(if v.trigger { "claimed" } else { "seen" })
                .execute(&mut *tx)
                .await
                .map_err(query("record a watch version"))?;
                if v.trigger && done.rows_affected() > 0 {
                    claimed.push(ClaimedVersion {
                        id: vid,
                        version: v.version.clone(),
                        source_uri: v.source_uri.clone(),
                    });
                }
            }
            sqlx::query(
                "UPDATE watches SET polled = 1, etag = $2, last_error = NULL, failures = 0, \
                 next_poll_at = $3, last_poll_at = $4 WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(&poll.etag)
            .bind(ms(poll.next_poll_at))
            .bind(ms(poll.now))
            .execute(&mut *tx)
            .await
            .map_err(query("record a watch poll"))?;
            tx.commit().await.map_err(query("commit a watch poll"))?;
            Ok(claimed)
        }

        pub(crate) async fn record_poll_error(
            &self,
            id: WatchId,
            error: &str,
            next_poll_at: Timestamp,
            now: Timestamp,
        ) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "UPDATE watches SET last_error = $2, failures = failures + 1, \
                 next_poll_at = $3, last_poll_at = $4 WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(error)
            .bind(ms(next_poll_at))
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(query("record a failed watch poll"))?;
            tx.commit()
                .await
                .map_err(query("commit a failed watch poll"))?;
            Ok(())
        }

        pub(crate) async fn finish_watch_version(
            &self,
            watch: WatchId,
            version: Uuid,
            result: Result<RunId, &str>,
        ) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            let (outcome, run, error) = match result {
                Ok(run) => ("started", Some(run.to_string()), None),
                Err(e) => ("failed", None, Some(e)),
            };
            sqlx::query(
                "UPDATE watch_versions SET outcome = $2, run_id = $3, error = $4 WHERE id = $1",
            )
            .bind(version.to_string())
            .bind(outcome)
            .bind(&run)
            .bind(error)
            .execute(&mut *tx)
            .await
            .map_err(query("record a watch version's run"))?;
            if let Some(run) = run {
                sqlx::query("UPDATE watches SET last_run_id = $2 WHERE id = $1")
                    .bind(watch.to_string())
                    .bind(run)
                    .execute(&mut *tx)
                    .await
                    .map_err(query("record a watch's last run"))?;
            }
            tx.commit()
                .await
                .map_err(query("commit a watch version's run"))?;
            Ok(())
        }

        pub(crate) async fn list_watch_versions(
            &self,
            id: WatchId,
        ) -> Result<Vec<SeenVersion>, StoreError> {
            const V: &str = "watch_versions";
            let rows = sqlx::query(
                "SELECT version, source_uri, found_at, outcome, run_id, error \
                 FROM watch_versions WHERE watch_id = $1 ORDER BY found_at, id",
            )
            .bind(id.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(query("list a watch's versions"))?;
            rows.iter()
                .map(|row| {
                    let run: Option<String> = get(row, V, "run_id")?;
                    Ok(SeenVersion {
                        version: get(row, V, "version")?,
                        source_uri: get(row, V, "source_uri")?,
                        found_at: ts(V, "found_at", get(row, V, "found_at")?)?,
                        outcome: get(row, V, "outcome")?,
                        run: run.map(|r| parse(V, "run_id", &r)).transpose()?,
                        error: get(row, V, "error")?,
                    })
                })
                .collect()
        }
    }
}
