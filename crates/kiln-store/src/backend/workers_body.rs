// The queries of remote workers, written once for both dialects like `body.rs`: `sqlite.rs`
// and `postgres.rs` each `include!` this file after `body.rs`. A module of its own so that its
// imports cannot clash with body.rs's. (An included file cannot carry a `//!`; the module's
// inner doc below is inside its braces.)

mod api_workers {
    //! Registered workers: added at each start of `kiln worker`, seen at each claim and
    //! heartbeat, paused and resumed by people. What a worker runs is read from the leases
    //! it holds (`jobs.lease_owner`), never kept twice.

    use std::collections::HashMap;

    use jiff::Timestamp;
    use kiln_proto::workers::{RegisterWorker, WorkerId, WorkerStatus, WorkerView, lease_owner};

    use serde_json::json;

    use super::{Backend, Db, get};
    use crate::backend::{Pending, json_text, ms, parse, parse_strings, ts};
    use crate::error::{StoreError, query};

    type DbRow = <Db as sqlx::Database>::Row;

    const COLS: &str =
        "id, name, labels, slots, protocol, version, paused, registered_at, last_seen_at";

    fn worker_from_row(
        row: &DbRow,
        jobs: &HashMap<String, Vec<kiln_core::ids::JobId>>,
        now: i64,
        offline_after_ms: i64,
    ) -> Result<WorkerView, StoreError> {
        const T: &str = "workers";
        let id: WorkerId = parse(T, "id", &get::<String>(row, T, "id")?)?;
        let held = jobs.get(&lease_owner(id)).cloned().unwrap_or_default();
        let last_seen: i64 = get(row, T, "last_seen_at")?;
        let status = if now.saturating_sub(last_seen) > offline_after_ms {
            WorkerStatus::Offline
        } else if get::<i64>(row, T, "paused")? != 0 {
            WorkerStatus::Paused
        } else if held.is_empty() {
            WorkerStatus::Idle
        } else {
            WorkerStatus::Busy
        };
        Ok(WorkerView {
            id,
            name: get(row, T, "name")?,
            labels: parse_strings(T, "labels", &get::<String>(row, T, "labels")?)?,
            slots: u32::try_from(get::<i64>(row, T, "slots")?).unwrap_or(0),
            status,
            version: get(row, T, "version")?,
            protocol: u32::try_from(get::<i64>(row, T, "protocol")?).unwrap_or(0),
            jobs: held,
            registered_at: ts(T, "registered_at", get(row, T, "registered_at")?)?,
            last_heartbeat_at: ts(T, "last_seen_at", last_seen)?,
        })
    }

    impl Backend {
        pub(crate) async fn register_worker(
            &self,
            new: &RegisterWorker,
            at: Timestamp,
        ) -> Result<WorkerId, StoreError> {
            let id = WorkerId::new();
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO workers (id, name, labels, slots, protocol, version, paused, \
                 registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7)",
            )
            .bind(id.to_string())
            .bind(&new.name)
            .bind(json_text(&new.labels))
            .bind(i64::from(new.slots))
            .bind(i64::from(new.protocol))
            .bind(&new.version)
            .bind(ms(at))
            .execute(&mut *tx)
            .await
            .map_err(query("register a worker"))?;
            let mut pending = Pending::default();
            pending.system_event(
                ms(at),
                "worker.status",
                json!({"worker": id, "name": new.name, "labels": new.labels, "status": "idle"}),
            );
            self.finish(tx, pending).await?;
            Ok(id)
        }

        /// Notes that the worker was heard from; its `paused` flag, or `None` when unknown.
        pub(crate) async fn worker_seen(
            &self,
            id: WorkerId,
            at: Timestamp,
        ) -> Result<Option<bool>, StoreError> {
            let mut tx = self.begin_write().await?;
            let seen: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE workers SET last_seen_at = $2 WHERE id = $1 RETURNING paused, offline",
            )
            .bind(id.to_string())
            .bind(ms(at))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("note a worker's heartbeat"))?;
            let Some((paused, offline)) = seen else {
                tx.commit()
                    .await
                    .map_err(query("commit a worker's heartbeat"))?;
                return Ok(None);
            };
            let mut pending = Pending::default();
            if offline != 0 {
                // Back after being announced offline: announced back, once.
                let back = sqlx::query("UPDATE workers SET offline = 0 WHERE id = $1 AND offline = 1")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(query("note a worker is back"))?;
                if back.rows_affected() > 0 {
                    let status = if paused != 0 { "paused" } else { "idle" };
                    pending.system_event(
                        ms(at),
                        "worker.status",
                        json!({"worker": id, "status": status}),
                    );
                }
            }
            self.finish(tx, pending).await?;
            Ok(Some(paused != 0))
        }

        /// Announces (`worker.status` offline) the workers not heard from since `silent_since`
        /// and not announced yet; their ids.
        pub(crate) async fn mark_offline_workers(
            &self,
            silent_since: Timestamp,
            at: Timestamp,
        ) -> Result<Vec<WorkerId>, StoreError> {
            let mut tx = self.begin_write().await?;
            let rows: Vec<(String, String)> = sqlx::query_as(
                "UPDATE workers SET offline = 1 WHERE offline = 0 AND last_seen_at < $1 \
                 RETURNING id, name",
            )
            .bind(ms(silent_since))
            .fetch_all(&mut *tx)
            .await
            .map_err(query("mark silent workers offline"))?;
            let mut pending = Pending::default();
            let mut ids = Vec::with_capacity(rows.len());
            for (id, name) in rows {
                pending.system_event(
                    ms(at),
                    "worker.status",
                    json!({"worker": id, "name": name, "status": "offline"}),
                );
                ids.push(parse("workers", "id", &id)?);
            }
            self.finish(tx, pending).await?;
            Ok(ids)
        }

        pub(crate) async fn set_worker_paused(
            &self,
            id: WorkerId,
            paused: bool,
            at: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query("UPDATE workers SET paused = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(i64::from(paused))
                .execute(&mut *tx)
                .await
                .map_err(query("pause or resume a worker"))?;
            let mut pending = Pending::default();
            if done.rows_affected() > 0 {
                let status = if paused { "paused" } else { "idle" };
                pending.system_event(
                    ms(at),
                    "worker.status",
                    json!({"worker": id, "status": status}),
                );
            }
            self.finish(tx, pending).await?;
            Ok(done.rows_affected() > 0)
        }

        /// The worker's log: its `worker.*` events and the `job.leased` events of the jobs it
        /// was given, newest first, older than event `before` when given.
        pub(crate) async fn worker_log(
            &self,
            id: WorkerId,
            before: Option<i64>,
            limit: u32,
        ) -> Result<Vec<kiln_proto::Event>, StoreError> {
            let rows = sqlx::query(
                "SELECT id, at, kind, project_id, run_id, job_id, data FROM events \
                 WHERE (($1 IS NULL OR id < $1)) AND ((kind IN ('worker.status', 'worker.idle') \
                 AND data LIKE $2) OR (kind = 'job.leased' AND data LIKE $3)) \
                 ORDER BY id DESC LIMIT $4",
            )
            .bind(before)
            .bind(format!("%{id}%"))
            .bind(format!("%{}%", lease_owner(id)))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query("read a worker's log"))?;
            rows.iter().map(super::event_from_row).collect()
        }

        /// Appends `worker.idle`: the worker ended its last job.
        pub(crate) async fn worker_idle(
            &self,
            id: WorkerId,
            at: Timestamp,
        ) -> Result<(), StoreError> {
            let tx = self.begin_write().await?;
            let mut pending = Pending::default();
            pending.system_event(ms(at), "worker.idle", json!({"worker": id}));
            self.finish(tx, pending).await
        }

        /// Workers, newest first, or the one `only` names; offline when not heard from for
        /// longer than `offline_after_ms` before `now`.
        pub(crate) async fn list_workers(
            &self,
            only: Option<WorkerId>,
            now: Timestamp,
            offline_after_ms: i64,
        ) -> Result<Vec<WorkerView>, StoreError> {
            let rows = match only {
                Some(id) => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLS} FROM workers WHERE id = $1"
                )))
                .bind(id.to_string())
                .fetch_all(&self.reader)
                .await,
                None => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLS} FROM workers ORDER BY registered_at DESC, id DESC"
                )))
                .fetch_all(&self.reader)
                .await,
            }
            .map_err(query("list workers"))?;
            // One worker's jobs through the lease-owner index; every worker's by a scan of the
            // held jobs.
            let held = match only {
                Some(id) => sqlx::query(
                    "SELECT id, lease_owner FROM jobs WHERE lease_owner = $1 \
                     AND status IN ('leased', 'running') ORDER BY id",
                )
                .bind(lease_owner(id))
                .fetch_all(&self.reader)
                .await,
                None => sqlx::query(
                    "SELECT id, lease_owner FROM jobs WHERE lease_owner LIKE 'worker:%' \
                     AND status IN ('leased', 'running') ORDER BY id",
                )
                .fetch_all(&self.reader)
                .await,
            }
            .map_err(query("list the jobs workers hold"))?;
            let mut jobs: HashMap<String, Vec<kiln_core::ids::JobId>> = HashMap::new();
            for row in &held {
                let owner: String = get(row, "jobs", "lease_owner")?;
                let id: String = get(row, "jobs", "id")?;
                jobs.entry(owner).or_default().push(parse("jobs", "id", &id)?);
            }
            let now = ms(now);
            rows.iter()
                .map(|row| worker_from_row(row, &jobs, now, offline_after_ms))
                .collect()
        }
    }
}
