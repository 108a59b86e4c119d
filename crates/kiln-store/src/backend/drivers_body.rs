// The queries of run drivers (which engine drives which run), written once for both dialects
// like `body.rs`: `sqlite.rs` and `postgres.rs` each `include!` this file after `body.rs`. A
// module of its own so that its imports cannot clash with body.rs's. (An included file cannot
// carry a `//!`; the module's inner doc below is inside its braces.)

mod api_drivers {
    //! Run drivers: several servers (replicas) share one database, and each unfinished run is
    //! driven by exactly one of them at a time. An engine claims the runs nobody drives (or
    //! whose driver stopped renewing), and renews the claim on the runs it drives.

    use jiff::Timestamp;
    use kiln_core::ids::RunId;

    use super::{Backend, Db, get};
    use crate::backend::Pending;
    use crate::backend::{ms, parse};
    use crate::error::{StoreError, query};

    /// Runs renewed by one statement, at most (well under either database's bound on
    /// parameters).
    const RENEW_CHUNK: usize = 500;

    impl Backend {
        /// Takes over, for `me` until `until`, every unfinished run that nobody drives, that
        /// `me` drove before, or whose driver's claim ended before `now` — unless one of its
        /// jobs is still held under a lease (its holder may yet report; an expired lease is
        /// taken back first, by `expire_leases`). Their ids.
        pub(crate) async fn claim_runs(
            &self,
            me: &str,
            until: Timestamp,
            now: Timestamp,
        ) -> Result<Vec<RunId>, StoreError> {
            let mut tx = self.begin_write().await?;
            let rows = sqlx::query(
                "UPDATE runs SET driver = $1, driver_until = $2 \
                 WHERE status IN ('queued', 'running') \
                 AND (driver IS NULL OR driver = $1 OR driver_until < $3) \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = runs.id \
                   AND j.status IN ('leased', 'running')) \
                 RETURNING id",
            )
            .bind(me)
            .bind(ms(until))
            .bind(ms(now))
            .fetch_all(&mut *tx)
            .await
            .map_err(query("take over runs"))?;
            tx.commit().await.map_err(query("commit taking over runs"))?;
            let mut ids = rows
                .iter()
                .map(|r| parse("runs", "id", &get::<String>(r, "runs", "id")?))
                .collect::<Result<Vec<RunId>, _>>()?;
            ids.sort();
            Ok(ids)
        }

        /// Ends `me`'s claim on every run it drives, so that another engine may take them at
        /// once.
        pub(crate) async fn release_runs(&self, me: &str) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "UPDATE runs SET driver_until = 0 WHERE driver = $1 \
                 AND status IN ('queued', 'running')",
            )
            .bind(me)
            .execute(&mut *tx)
            .await
            .map_err(query("hand driven runs over"))?;
            tx.commit().await.map_err(query("commit handing runs over"))?;
            Ok(())
        }

        /// Asks whoever drives `run` to cancel it (at `at`), appending `run.cancel_requested`
        /// once. `false`: no such run, or it has ended.
        pub(crate) async fn request_cancel(
            &self,
            run: RunId,
            at: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query(
                "UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, $2) \
                 WHERE id = $1 AND status NOT IN ('success', 'failure', 'cancelled') \
                 RETURNING project_id, cancel_requested_at",
            )
            .bind(run.to_string())
            .bind(ms(at))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("request a run's cancellation"))?;
            let Some(row) = row else {
                return Ok(false);
            };
            let first = get::<i64>(&row, "runs", "cancel_requested_at")? == ms(at);
            let mut pending = Pending::default();
            if first {
                let project: String = get(&row, "runs", "project_id")?;
                pending.event(
                    ms(at),
                    "run.cancel_requested",
                    &project,
                    &run.to_string(),
                    None,
                    serde_json::json!({}),
                );
            }
            self.finish(tx, pending).await?;
            Ok(true)
        }

        /// The unfinished runs `me` drives whose cancellation was asked for elsewhere.
        pub(crate) async fn cancel_requests(&self, me: &str) -> Result<Vec<RunId>, StoreError> {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM runs WHERE driver = $1 AND cancel_requested_at IS NOT NULL \
                 AND status IN ('pending', 'queued', 'running', 'waiting')",
            )
            .bind(me)
            .fetch_all(&self.reader)
            .await
            .map_err(query("list the cancellations asked of a driver"))?;
            ids.iter().map(|id| parse("runs", "id", id)).collect()
        }

        /// Notes that the replica `owner` answers at `url` (an upsert).
        pub(crate) async fn replica_seen(
            &self,
            owner: &str,
            url: &str,
            at: Timestamp,
        ) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO replicas (owner, url, seen_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (owner) DO UPDATE SET url = excluded.url, seen_at = excluded.seen_at",
            )
            .bind(owner)
            .bind(url)
            .bind(ms(at))
            .execute(&mut *tx)
            .await
            .map_err(query("note a replica"))?;
            tx.commit().await.map_err(query("commit noting a replica"))?;
            Ok(())
        }

        /// Removes a replica that stops.
        pub(crate) async fn replica_gone(&self, owner: &str) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            sqlx::query("DELETE FROM replicas WHERE owner = $1")
                .bind(owner)
                .execute(&mut *tx)
                .await
                .map_err(query("remove a replica"))?;
            tx.commit().await.map_err(query("commit removing a replica"))?;
            Ok(())
        }

        /// The URL the replica `owner` noted last.
        pub(crate) async fn replica_url(&self, owner: &str) -> Result<Option<String>, StoreError> {
            sqlx::query_scalar("SELECT url FROM replicas WHERE owner = $1")
                .bind(owner)
                .fetch_optional(&self.reader)
                .await
                .map_err(query("look a replica up"))
        }

        /// The URLs of the replicas seen since `since`, oldest first.
        pub(crate) async fn live_replicas(
            &self,
            since: Timestamp,
        ) -> Result<Vec<String>, StoreError> {
            let urls: Vec<String> = sqlx::query_scalar(
                "SELECT url FROM replicas WHERE seen_at >= $1 GROUP BY url \
                 ORDER BY MIN(seen_at)",
            )
            .bind(ms(since))
            .fetch_all(&self.reader)
            .await
            .map_err(query("list the replicas"))?;
            Ok(urls)
        }

        /// Moves `me`'s claim on `runs` to `until`; the runs of `runs` it no longer drives
        /// (another engine took them over, or they ended).
        pub(crate) async fn renew_runs(
            &self,
            me: &str,
            runs: &[RunId],
            until: Timestamp,
        ) -> Result<Vec<RunId>, StoreError> {
            let mut tx = self.begin_write().await?;
            let mut lost = Vec::new();
            // A statement per chunk, not per run: a server holding tens of thousands of
            // queued runs renewed them one statement each, a tenth of a core while idle.
            for chunk in runs.chunks(RENEW_CHUNK) {
                let mut update = sqlx::QueryBuilder::<Db>::new("UPDATE runs SET driver_until = ");
                update
                    .push_bind(ms(until))
                    .push(" WHERE driver = ")
                    .push_bind(me)
                    .push(" AND status IN ('queued', 'running') AND id IN (");
                let mut ids = update.separated(", ");
                for run in chunk {
                    ids.push_bind(run.to_string());
                }
                update.push(") RETURNING id");
                let rows = update
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query("renew the runs an engine drives"))?;
                let renewed = rows
                    .iter()
                    .map(|r| parse("runs", "id", &get::<String>(r, "runs", "id")?))
                    .collect::<Result<std::collections::HashSet<RunId>, _>>()?;
                lost.extend(chunk.iter().filter(|run| !renewed.contains(run)));
            }
            tx.commit().await.map_err(query("commit renewing runs"))?;
            Ok(lost)
        }
    }
}
