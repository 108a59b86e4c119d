// The queries of schedules (`on.schedule`), written once for both dialects like `body.rs`:
// `sqlite.rs` and `postgres.rs` each `include!` this file after `body.rs`. A module of its own
// so that its imports cannot clash with body.rs's; as a child of the including backend module
// it still sees that module's private items (`Backend`'s pools, `begin_write`, `get`). (An
// included file cannot carry a `//!`; the module's inner doc below is inside its braces.)

mod api_schedules {
    //! Schedules and their fires: the sync of a project's entries, listing, stop/start, the
    //! due list and the claim (see `crate::schedules` for why a claim cannot run twice).

    use std::collections::HashMap;

    use jiff::Timestamp;
    use kiln_core::cron::{CronSchedule, DEFAULT_ZONE};
    use kiln_core::ids::{ProjectId, RunId};
    use kiln_proto::{ScheduleId, ScheduleState, ScheduleView};
    use uuid::Uuid;

    use super::{Backend, Db, get};
    use crate::backend::{ms, opt_ts, parse, ts};
    use crate::error::{StoreError, query};
    use crate::schedules::{Fire, FireKind, ScheduleDef, SyncReport};

    type DbRow = <Db as sqlx::Database>::Row;

    macro_rules! view_cols {
        () => {
            "s.id, s.project_id, p.name AS project_name, s.workflow, s.idx, s.cron, \
             s.timezone, s.catch_up, s.stopped_at, s.next_fire_at, s.last_fired_at, \
             s.last_run_id, s.created_at, s.updated_at \
             FROM schedules s JOIN projects p ON p.id = s.project_id"
        };
    }

    /// Active schedules first, soonest fire first; then stopped ones.
    const ORDER: &str = " ORDER BY CASE WHEN s.next_fire_at IS NULL THEN 1 ELSE 0 END, \
                         s.next_fire_at, p.name, s.workflow, s.idx";

    fn view_from_row(row: &DbRow) -> Result<ScheduleView, StoreError> {
        const T: &str = "schedules";
        let stopped: Option<i64> = get(row, T, "stopped_at")?;
        let last_run: Option<String> = get(row, T, "last_run_id")?;
        let idx: i64 = get(row, T, "idx")?;
        Ok(ScheduleView {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
            project_name: get(row, T, "project_name")?,
            workflow: get(row, T, "workflow")?,
            index: u32::try_from(idx).map_err(|e| crate::backend::decode(T, "idx", e))?,
            cron: get(row, T, "cron")?,
            timezone: get(row, T, "timezone")?,
            catch_up: get(row, T, "catch_up")?,
            state: if stopped.is_some() {
                ScheduleState::Stopped
            } else {
                ScheduleState::Active
            },
            next_fire_at: opt_ts(T, "next_fire_at", get(row, T, "next_fire_at")?)?,
            last_fired_at: opt_ts(T, "last_fired_at", get(row, T, "last_fired_at")?)?,
            last_run: last_run.map(|r| parse(T, "last_run_id", &r)).transpose()?,
            created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
            updated_at: ts(T, "updated_at", get(row, T, "updated_at")?)?,
        })
    }

    fn fire_from_row(row: &DbRow) -> Result<Fire, StoreError> {
        const T: &str = "schedule_fires";
        let run: Option<String> = get(row, T, "run_id")?;
        Ok(Fire {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            schedule: parse(T, "schedule_id", &get::<String>(row, T, "schedule_id")?)?,
            fire_at: ts(T, "fire_at", get(row, T, "fire_at")?)?,
            claimed_at: ts(T, "claimed_at", get(row, T, "claimed_at")?)?,
            claimed_by: get(row, T, "claimed_by")?,
            outcome: get(row, T, "outcome")?,
            run: run.map(|r| parse(T, "run_id", &r)).transpose()?,
            error: get(row, T, "error")?,
        })
    }

    /// The first fire after `now` of `cron` in `zone` (stored as unix ms); `None` when it
    /// never fires again, or when the entry no longer evaluates (the parser checked it, so
    /// only a zone gone from the time zone database does that).
    fn next_fire(cron: &str, zone: &str, now: Timestamp) -> Option<i64> {
        let zone = (zone != DEFAULT_ZONE).then_some(zone);
        match CronSchedule::new(cron, zone) {
            Ok(s) => s.next_after(now).map(ms),
            Err(e) => {
                tracing::warn!(cron, error = %e, "a stored schedule does not evaluate");
                None
            }
        }
    }

    /// A stored schedule row as a sync compares it.
    struct Existing {
        id: String,
        cron: String,
        timezone: String,
        catch_up: String,
        stopped: bool,
        removed: bool,
    }

    impl Backend {
        pub(crate) async fn sync_schedules(
            &self,
            project: ProjectId,
            defs: &[ScheduleDef],
            keep_workflows: &[String],
            now: Timestamp,
        ) -> Result<SyncReport, StoreError> {
            const T: &str = "schedules";
            let mut report = SyncReport::default();
            let mut tx = self.begin_write().await?;
            let rows = sqlx::query(
                "SELECT id, workflow, idx, cron, timezone, catch_up, stopped_at, removed_at \
                 FROM schedules WHERE project_id = $1",
            )
            .bind(project.to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(query("read a project's schedules"))?;
            let mut existing: HashMap<(String, i64), Existing> = HashMap::new();
            for row in &rows {
                let stopped: Option<i64> = get(row, T, "stopped_at")?;
                let removed: Option<i64> = get(row, T, "removed_at")?;
                existing.insert(
                    (get(row, T, "workflow")?, get(row, T, "idx")?),
                    Existing {
                        id: get(row, T, "id")?,
                        cron: get(row, T, "cron")?,
                        timezone: get(row, T, "timezone")?,
                        catch_up: get(row, T, "catch_up")?,
                        stopped: stopped.is_some(),
                        removed: removed.is_some(),
                    },
                );
            }
            for def in defs {
                let key = (def.workflow.clone(), i64::from(def.index));
                let catch_up = def.catch_up.as_str();
                match existing.remove(&key) {
                    None => {
                        // Another replica's sync may insert the same entry meanwhile: the
                        // first insert stands.
                        let done = sqlx::query(
                            "INSERT INTO schedules (id, project_id, workflow, idx, cron, \
                             timezone, catch_up, stopped_at, removed_at, next_fire_at, \
                             last_fired_at, last_run_id, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8, NULL, NULL, \
                             $9, $9) ON CONFLICT (project_id, workflow, idx) DO NOTHING",
                        )
                        .bind(ScheduleId::new().to_string())
                        .bind(project.to_string())
                        .bind(&def.workflow)
                        .bind(i64::from(def.index))
                        .bind(&def.cron)
                        .bind(&def.timezone)
                        .bind(catch_up)
                        .bind(next_fire(&def.cron, &def.timezone, now))
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await
                        .map_err(query("insert a schedule"))?;
                        report.added += usize::from(done.rows_affected() > 0);
                    }
                    Some(old)
                        if old.cron != def.cron || old.timezone != def.timezone || old.removed =>
                    {
                        // A new pattern (or an entry back in its file) counts from now; a
                        // stopped schedule stays stopped.
                        let next = if old.stopped {
                            None
                        } else {
                            next_fire(&def.cron, &def.timezone, now)
                        };
                        sqlx::query(
                            "UPDATE schedules SET cron = $2, timezone = $3, catch_up = $4, \
                             removed_at = NULL, next_fire_at = $5, updated_at = $6 WHERE id = $1",
                        )
                        .bind(&old.id)
                        .bind(&def.cron)
                        .bind(&def.timezone)
                        .bind(catch_up)
                        .bind(next)
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await
                        .map_err(query("update a schedule"))?;
                        if old.removed {
                            report.added += 1;
                        } else {
                            report.changed += 1;
                        }
                    }
                    Some(old) if old.catch_up != catch_up => {
                        sqlx::query(
                            "UPDATE schedules SET catch_up = $2, updated_at = $3 WHERE id = $1",
                        )
                        .bind(&old.id)
                        .bind(catch_up)
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await
                        .map_err(query("update a schedule's catch-up"))?;
                        report.changed += 1;
                    }
                    Some(_) => {}
                }
            }
            // What is left is no longer in its file — unless the file could not be read this
            // time, in which case its schedules stay as they were.
            for ((workflow, _), old) in existing {
                if old.removed || keep_workflows.contains(&workflow) {
                    continue;
                }
                sqlx::query(
                    "UPDATE schedules SET removed_at = $2, next_fire_at = NULL, updated_at = $2 \
                     WHERE id = $1",
                )
                .bind(&old.id)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(query("mark a schedule removed"))?;
                report.removed += 1;
            }
            tx.commit()
                .await
                .map_err(query("commit a sync of schedules"))?;
            Ok(report)
        }

        pub(crate) async fn list_schedules(
            &self,
            project: Option<ProjectId>,
        ) -> Result<Vec<ScheduleView>, StoreError> {
            let sql = format!(
                "SELECT {} WHERE s.removed_at IS NULL AND p.archived_at IS NULL \
                 AND ($1 IS NULL OR s.project_id = $1){ORDER}",
                view_cols!()
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(project.map(|p| p.to_string()))
                .fetch_all(&self.reader)
                .await
                .map_err(query("list schedules"))?
                .iter()
                .map(view_from_row)
                .collect()
        }

        pub(crate) async fn get_schedule(
            &self,
            id: ScheduleId,
        ) -> Result<Option<ScheduleView>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                view_cols!(),
                " WHERE s.id = $1 AND s.removed_at IS NULL"
            ))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(query("read a schedule"))?
            .map(|row| view_from_row(&row))
            .transpose()
        }

        /// Stops (`stop`) or starts a schedule; a started one counts from `now` (what it
        /// missed while stopped does not run).
        pub(crate) async fn set_schedule_stopped(
            &self,
            id: ScheduleId,
            stop: bool,
            now: Timestamp,
        ) -> Result<Option<ScheduleView>, StoreError> {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query(
                "SELECT cron, timezone, stopped_at FROM schedules \
                 WHERE id = $1 AND removed_at IS NULL",
            )
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("read a schedule to stop or start"))?;
            let Some(row) = row else {
                return Ok(None);
            };
            const T: &str = "schedules";
            let stopped: Option<i64> = get(&row, T, "stopped_at")?;
            if stop && stopped.is_none() {
                sqlx::query(
                    "UPDATE schedules SET stopped_at = $2, next_fire_at = NULL, updated_at = $2 \
                     WHERE id = $1",
                )
                .bind(id.to_string())
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(query("stop a schedule"))?;
            } else if !stop && stopped.is_some() {
                let cron: String = get(&row, T, "cron")?;
                let zone: String = get(&row, T, "timezone")?;
                sqlx::query(
                    "UPDATE schedules SET stopped_at = NULL, next_fire_at = $2, updated_at = $3 \
                     WHERE id = $1",
                )
                .bind(id.to_string())
                .bind(next_fire(&cron, &zone, now))
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(query("start a schedule"))?;
            }
            tx.commit()
                .await
                .map_err(query("commit a schedule's stop or start"))?;
            self.get_schedule(id).await
        }

        pub(crate) async fn due_schedules(
            &self,
            now: Timestamp,
            limit: i64,
        ) -> Result<Vec<ScheduleView>, StoreError> {
            let sql = format!(
                "SELECT {} WHERE s.next_fire_at <= $1 AND s.stopped_at IS NULL \
                 AND s.removed_at IS NULL AND p.archived_at IS NULL{ORDER} LIMIT $2",
                view_cols!()
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(ms(now))
                .bind(limit)
                .fetch_all(&self.reader)
                .await
                .map_err(query("list due schedules"))?
                .iter()
                .map(view_from_row)
                .collect()
        }

        pub(crate) async fn next_schedule_fire(&self) -> Result<Option<Timestamp>, StoreError> {
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(s.next_fire_at) FROM schedules s JOIN projects p \
                 ON p.id = s.project_id WHERE s.stopped_at IS NULL AND s.removed_at IS NULL \
                 AND p.archived_at IS NULL",
            )
            .fetch_one(&self.reader)
            .await
            .map_err(query("find the next schedule fire"))?;
            opt_ts("schedules", "next_fire_at", next)
        }

        pub(crate) async fn claim_fire(
            &self,
            schedule: ScheduleId,
            fire_at: Timestamp,
            next_fire_at: Option<Timestamp>,
            kind: FireKind,
            owner: &str,
            now: Timestamp,
        ) -> Result<Option<Uuid>, StoreError> {
            let mut tx = self.begin_write().await?;
            // Moves the schedule on from exactly this fire. A replica that claimed it first
            // has moved it already (PostgreSQL re-reads the row once the first claim
            // commits), so this matches nothing there.
            let moved = sqlx::query(
                "UPDATE schedules SET next_fire_at = $3, \
                 last_fired_at = CASE WHEN $4 = 1 THEN $2 ELSE last_fired_at END, \
                 updated_at = $5 WHERE id = $1 AND next_fire_at = $2 \
                 AND stopped_at IS NULL AND removed_at IS NULL",
            )
            .bind(schedule.to_string())
            .bind(ms(fire_at))
            .bind(next_fire_at.map(ms))
            .bind(i64::from(kind == FireKind::Run))
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(query("move a schedule on"))?;
            if moved.rows_affected() == 0 {
                return Ok(None);
            }
            let id = Uuid::now_v7();
            let inserted = sqlx::query(
                "INSERT INTO schedule_fires (id, schedule_id, fire_at, claimed_at, claimed_by, \
                 outcome, run_id, error) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL) \
                 ON CONFLICT (schedule_id, fire_at) DO NOTHING",
            )
            .bind(id.to_string())
            .bind(schedule.to_string())
            .bind(ms(fire_at))
            .bind(ms(now))
            .bind(owner)
            .bind(match kind {
                FireKind::Run => "claimed",
                FireKind::Skip => "skipped",
            })
            .execute(&mut *tx)
            .await
            .map_err(query("claim a schedule fire"))?;
            if inserted.rows_affected() == 0 {
                // This fire ran before (the schedule was re-synced onto a fire time it had
                // already had): leave everything as it was.
                return Ok(None);
            }
            tx.commit()
                .await
                .map_err(query("commit a schedule fire's claim"))?;
            Ok(Some(id))
        }

        pub(crate) async fn finish_fire(
            &self,
            fire: Uuid,
            result: Result<RunId, &str>,
        ) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            let (outcome, run, error) = match result {
                Ok(run) => ("started", Some(run.to_string()), None),
                Err(e) => ("failed", None, Some(e)),
            };
            let schedule: Option<String> = sqlx::query_scalar(
                "UPDATE schedule_fires SET outcome = $2, run_id = $3, error = $4 \
                 WHERE id = $1 RETURNING schedule_id",
            )
            .bind(fire.to_string())
            .bind(outcome)
            .bind(&run)
            .bind(error)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("record a schedule fire's run"))?;
            if let (Some(schedule), Some(run)) = (schedule, run) {
                sqlx::query("UPDATE schedules SET last_run_id = $2 WHERE id = $1")
                    .bind(schedule)
                    .bind(run)
                    .execute(&mut *tx)
                    .await
                    .map_err(query("record a schedule's last run"))?;
            }
            tx.commit()
                .await
                .map_err(query("commit a schedule fire's run"))?;
            Ok(())
        }

        pub(crate) async fn list_fires(
            &self,
            schedule: ScheduleId,
            limit: i64,
        ) -> Result<Vec<Fire>, StoreError> {
            sqlx::query(
                "SELECT id, schedule_id, fire_at, claimed_at, claimed_by, outcome, run_id, \
                 error FROM schedule_fires WHERE schedule_id = $1 ORDER BY fire_at DESC LIMIT $2",
            )
            .bind(schedule.to_string())
            .bind(limit)
            .fetch_all(&self.reader)
            .await
            .map_err(query("list a schedule's fires"))?
            .iter()
            .map(fire_from_row)
            .collect()
        }
    }
}
