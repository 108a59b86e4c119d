// The queries of project webhooks, written once for both dialects like `body.rs`:
// `sqlite.rs` and `postgres.rs` each `include!` this file after `body.rs`. A module of its own
// so that its imports cannot clash with body.rs's; as a child of the including backend module
// it still sees that module's private items (`Backend`'s pools, `begin_write`, `get`). (An
// included file cannot carry a `//!`; the module's inner doc below is inside its braces.)

mod api_hooks {
    //! A project's hook (provider, secret, rotation) and its deliveries: recorded once per
    //! provider delivery id (a redelivery finds the first), then marked processed, ignored or
    //! failed with the runs they started.

    use jiff::Timestamp;
    use kiln_core::ids::{ProjectId, RunId};
    use kiln_proto::{DeliveryStatus, DeliveryView, HookProvider};

    use super::{Backend, Db, get};
    use crate::backend::{json_text, ms, opt_ts, parse, parse_strings, ts};
    use crate::error::{StoreError, query};
    use crate::hooks::{
        DeliveryOutcome, HookChange, HookSettings, HookTarget, NewDelivery, Recorded,
        bounded_reason,
    };
    use crate::intake::Journaled;

    type DbRow = <Db as sqlx::Database>::Row;

    macro_rules! delivery_cols {
        () => {
            "id, project_id, provider, delivery_id, event, received_at, status, reason, \
             run_ids, size, processed_at"
        };
    }

    /// The start of an insert of deliveries, up to its `VALUES`.
    macro_rules! insert_deliveries {
        () => {
            "INSERT INTO deliveries (id, project_id, provider, delivery_id, event, received_at, \
             status, reason, run_ids, size, processed_at, claimed_by, claim_expires_at) "
        };
    }

    fn delivery_from_row(row: &DbRow) -> Result<DeliveryView, StoreError> {
        const T: &str = "deliveries";
        let runs: Vec<RunId> = parse_strings(T, "run_ids", &get::<String>(row, T, "run_ids")?)?
            .iter()
            .map(|id| parse(T, "run_ids", id))
            .collect::<Result<_, _>>()?;
        Ok(DeliveryView {
            id: get(row, T, "id")?,
            project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
            provider: parse(T, "provider", &get::<String>(row, T, "provider")?)?,
            delivery: get(row, T, "delivery_id")?,
            event: get(row, T, "event")?,
            status: parse(T, "status", &get::<String>(row, T, "status")?)?,
            reason: get(row, T, "reason")?,
            runs,
            size: get(row, T, "size")?,
            received_at: ts(T, "received_at", get(row, T, "received_at")?)?,
            processed_at: opt_ts(T, "processed_at", get(row, T, "processed_at")?)?,
        })
    }

    /// Records one delivery unless its project has its provider delivery id already.
    const INSERT: &str = concat!(
        insert_deliveries!(),
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '[]', $9, $10, $11, $12) \
         ON CONFLICT (project_id, delivery_id) DO NOTHING RETURNING ",
        delivery_cols!()
    );

    /// The start of an insert of deliveries' payloads, stored beside their rows (see
    /// `crate::hooks::pack_payload`), up to its `VALUES`.
    macro_rules! insert_payloads {
        () => {
            "INSERT INTO delivery_payloads (id, payload) "
        };
    }

    /// A project's delivery by its provider delivery id.
    const BY_DELIVERY: &str = concat!(
        "SELECT ",
        delivery_cols!(),
        " FROM deliveries WHERE project_id = $1 AND delivery_id = $2"
    );

    const BY_ID: &str = concat!(
        "SELECT ",
        delivery_cols!(),
        " FROM deliveries WHERE id = $1"
    );

    impl Backend {
        pub(crate) async fn hook_target(
            &self,
            hook_id: &str,
        ) -> Result<Option<HookTarget>, StoreError> {
            const T: &str = "projects";
            let row = sqlx::query(
                "SELECT id, name, hook_provider, hook_secret, archived_at FROM projects \
                 WHERE hook_id = $1",
            )
            .bind(hook_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(query("find a project by hook id"))?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(HookTarget {
                project: parse(T, "id", &get::<String>(&row, T, "id")?)?,
                project_name: get(&row, T, "name")?,
                provider: parse(
                    T,
                    "hook_provider",
                    &get::<String>(&row, T, "hook_provider")?,
                )?,
                secret: get(&row, T, "hook_secret")?,
                archived: get::<Option<i64>>(&row, T, "archived_at")?.is_some(),
            }))
        }

        pub(crate) async fn set_hook(
            &self,
            id: ProjectId,
            change: &HookChange,
        ) -> Result<Option<HookSettings>, StoreError> {
            const T: &str = "projects";
            let mut tx = self.begin_write().await?;
            let new_hook_id = change.new_hook_id.then(|| uuid::Uuid::new_v4().to_string());
            let row = sqlx::query(
                "UPDATE projects SET hook_provider = COALESCE($2, hook_provider), \
                 hook_id = COALESCE($3, hook_id), hook_secret = COALESCE($4, hook_secret) \
                 WHERE id = $1 AND archived_at IS NULL \
                 RETURNING id, name, hook_id, hook_provider, hook_secret",
            )
            .bind(id.to_string())
            .bind(change.provider.map(HookProvider::as_str))
            .bind(new_hook_id)
            .bind(change.secret.as_deref())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("change a project's hook"))?;
            let settings = match row {
                None => None,
                Some(row) => Some(HookSettings {
                    project: parse(T, "id", &get::<String>(&row, T, "id")?)?,
                    project_name: get(&row, T, "name")?,
                    hook_id: get(&row, T, "hook_id")?,
                    provider: parse(
                        T,
                        "hook_provider",
                        &get::<String>(&row, T, "hook_provider")?,
                    )?,
                    secret: get(&row, T, "hook_secret")?,
                }),
            };
            tx.commit()
                .await
                .map_err(query("commit a project's hook"))?;
            Ok(settings)
        }

        pub(crate) async fn record_delivery(
            &self,
            new: &NewDelivery,
            now: Timestamp,
        ) -> Result<Recorded, StoreError> {
            // Compressed before the writer is taken: every other writer waits for it.
            let payload = crate::hooks::pack_payload(&new.payload);
            // The row and its payload in one transaction: the answer to the sender waits for it.
            let mut tx = self.begin_write().await?;
            let finished = (new.status != DeliveryStatus::Accepted).then_some(ms(now));
            let size = i64::try_from(new.payload.len()).unwrap_or(i64::MAX);
            let id = uuid::Uuid::now_v7().to_string();
            let inserted = sqlx::query(INSERT)
            .bind(id.as_str())
            .bind(new.project.to_string())
            .bind(new.provider.as_str())
            .bind(new.delivery.as_str())
            .bind(new.event.as_str())
            .bind(ms(now))
            .bind(new.status.as_str())
            .bind(new.reason.as_deref().map(bounded_reason))
            .bind(size)
            .bind(finished)
            .bind(new.claim.as_ref().map(|c| c.owner.as_str()))
            .bind(new.claim.as_ref().map(|c| ms(c.until)))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("record a webhook delivery"))?;
            let recorded = match inserted {
                Some(row) => {
                    if !payload.is_empty() {
                        sqlx::query(concat!(insert_payloads!(), "VALUES ($1, $2)"))
                        .bind(id.as_str())
                        .bind(payload.as_ref())
                        .execute(&mut *tx)
                        .await
                        .map_err(query("record a webhook delivery's payload"))?;
                    }
                    Recorded::New(delivery_from_row(&row)?)
                }
                None => {
                    let row = sqlx::query(BY_DELIVERY)
                    .bind(new.project.to_string())
                    .bind(new.delivery.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query("read a delivery seen before"))?;
                    Recorded::Duplicate(delivery_from_row(&row)?)
                }
            };
            tx.commit()
                .await
                .map_err(query("commit a webhook delivery"))?;
            Ok(recorded)
        }

        /// The delivery `project` has under the provider delivery id `delivery`, if any
        /// (read beside the writer).
        pub(crate) async fn find_delivery(
            &self,
            project: ProjectId,
            delivery: &str,
        ) -> Result<Option<DeliveryView>, StoreError> {
            sqlx::query(BY_DELIVERY)
            .bind(project.to_string())
            .bind(delivery)
            .fetch_optional(&self.reader)
            .await
            .map_err(query("look for a delivery seen before"))?
            .map(|row| delivery_from_row(&row))
            .transpose()
        }

        /// Every recorded delivery's project and provider delivery id, `f` called with each,
        /// read a page at a time (the intake journal's filter of known ids) in the order of
        /// their unique index, which holds both: the rows themselves (payloads and all) are
        /// not read.
        pub(crate) async fn each_delivery_key(
            &self,
            mut f: impl FnMut(&str, &str),
        ) -> Result<(), StoreError> {
            const PAGE: i64 = 10_000;
            let mut after: Option<(String, String)> = None;
            loop {
                let (project, delivery) = after.clone().unwrap_or_default();
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT project_id, delivery_id FROM deliveries \
                     WHERE (project_id, delivery_id) > ($1, $2) \
                     ORDER BY project_id, delivery_id LIMIT $3",
                )
                .bind(project)
                .bind(delivery)
                .bind(PAGE)
                .fetch_all(&self.reader)
                .await
                .map_err(query("list the delivery ids recorded"))?;
                for (project, delivery) in &rows {
                    f(project, delivery);
                }
                match rows.last() {
                    Some(last) if rows.len() as i64 == PAGE => after = Some(last.clone()),
                    _ => return Ok(()),
                }
            }
        }

        /// Stores deliveries the intake journal answered for (see `crate::intake`), all in
        /// one transaction, each as accepted and claimed as it was journaled: for each,
        /// whether it was stored (`false`: its project had its provider delivery id already).
        pub(crate) async fn insert_journaled(
            &self,
            entries: &[Journaled],
        ) -> Result<Vec<bool>, StoreError> {
            if entries.is_empty() {
                return Ok(Vec::new());
            }
            // Multi-row inserts (a round trip to the database each), in one transaction.
            let mut tx = self.begin_write().await?;
            let mut inserted = std::collections::HashSet::new();
            for chunk in super::row_chunks(entries.len()) {
                let mut insert = sqlx::QueryBuilder::<Db>::new(insert_deliveries!());
                insert.push_values(&entries[chunk.clone()], |mut b, e| {
                    b.push_bind(e.id.as_str())
                        .push_bind(e.project.to_string())
                        .push_bind(e.provider.as_str())
                        .push_bind(e.delivery.as_str())
                        .push_bind(e.event.as_str())
                        .push_bind(ms(e.received_at))
                        .push_bind(DeliveryStatus::Accepted.as_str())
                        .push_bind(None::<&str>)
                        .push_bind("[]")
                        .push_bind(e.size)
                        .push_bind(None::<i64>)
                        .push_bind(e.claim.as_ref().map(|c| c.owner.as_str()))
                        .push_bind(e.claim.as_ref().map(|c| ms(c.until)));
                });
                insert.push(" ON CONFLICT (project_id, delivery_id) DO NOTHING RETURNING id");
                let ids: Vec<String> = insert
                    .build_query_scalar()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query("store journaled deliveries"))?;
                let ids: std::collections::HashSet<String> = ids.into_iter().collect();
                // The payloads of those stored: another's delivery id has its own.
                let payloads: Vec<&Journaled> = entries[chunk]
                    .iter()
                    .filter(|e| !e.payload.is_empty() && ids.contains(&e.id))
                    .collect();
                if !payloads.is_empty() {
                    let mut insert = sqlx::QueryBuilder::<Db>::new(insert_payloads!());
                    insert.push_values(payloads, |mut b, e| {
                        b.push_bind(e.id.as_str()).push_bind(e.payload.as_ref());
                    });
                    insert
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err(query("store journaled deliveries' payloads"))?;
                }
                inserted.extend(ids);
            }
            tx.commit()
                .await
                .map_err(query("commit journaled deliveries"))?;
            let stored = entries.iter().map(|e| inserted.contains(&e.id)).collect();
            Ok(stored)
        }

        /// Claims accepted deliveries (see `Store::claim_delivery`) in one transaction,
        /// answering the ones claimed with their payloads, in the order asked.
        pub(crate) async fn claim_deliveries(
            &self,
            ids: &[String],
            owner: &str,
            stale: &str,
            now: Timestamp,
            until: Timestamp,
        ) -> Result<Vec<(DeliveryView, Vec<u8>)>, StoreError> {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut tx = self.begin_write().await?;
            let mut claimed = Vec::with_capacity(ids.len());
            for id in ids {
                let row = sqlx::query(concat!(
                    "UPDATE deliveries SET claimed_by = $2, claim_expires_at = $3 \
                     WHERE id = $1 AND status = 'accepted' \
                     AND (claim_expires_at IS NULL OR claim_expires_at <= $4 \
                     OR (claimed_by <> $2 AND substr(claimed_by, 1, length($5)) = $5)) \
                     RETURNING ",
                    delivery_cols!()
                ))
                .bind(id)
                .bind(owner)
                .bind(ms(until))
                .bind(ms(now))
                .bind(stale)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query("claim a delivery"))?;
                if let Some(row) = row {
                    let delivery = delivery_from_row(&row)?;
                    let stored: Option<Vec<u8>> =
                        sqlx::query_scalar("SELECT payload FROM delivery_payloads WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(query("read a claimed delivery's payload"))?;
                    let payload =
                        crate::hooks::unpack_payload(stored.unwrap_or_default(), delivery.size)?;
                    claimed.push((delivery, payload));
                }
            }
            tx.commit()
                .await
                .map_err(query("commit deliveries' claims"))?;
            Ok(claimed)
        }

        /// Marks accepted deliveries processed, ignored or failed (see
        /// `Store::finish_delivery`) in one transaction: for each, whether it was still
        /// `accepted`.
        pub(crate) async fn finish_deliveries(
            &self,
            done: &[(String, DeliveryOutcome)],
            now: Timestamp,
        ) -> Result<Vec<bool>, StoreError> {
            if done.is_empty() {
                return Ok(Vec::new());
            }
            // One statement for the whole batch, committed on its own.
            let rows: Vec<serde_json::Value> = done
                .iter()
                .map(|(id, outcome)| {
                    let runs: Vec<String> =
                        outcome.runs.iter().map(ToString::to_string).collect();
                    serde_json::json!({
                        "id": id,
                        "status": outcome.status.as_str(),
                        "reason": outcome.reason.as_deref().map(bounded_reason),
                        "runs": json_text(&runs),
                    })
                })
                .collect();
            let mut conn = self.writer.single().await?;
            let updated: Vec<String> = sqlx::query_scalar(super::SQL.finish_deliveries)
                .bind(json_text(&rows))
                .bind(ms(now))
                .fetch_all(&mut *conn)
                .await
                .map_err(query("record how deliveries were processed"))?;
            let updated: std::collections::HashSet<&str> =
                updated.iter().map(String::as_str).collect();
            let answers = done
                .iter()
                .map(|(id, _)| updated.contains(id.as_str()))
                .collect();
            Ok(answers)
        }

        /// Drops the payloads of deliveries received before `before`, no longer waiting to
        /// be processed and that started no run (a run's context may be the body: see
        /// `PayloadText::of_delivery`), at most `limit`: how many.
        pub(crate) async fn prune_delivery_payloads(
            &self,
            before: Timestamp,
            limit: u32,
        ) -> Result<u64, StoreError> {
            let mut conn = self.writer.single().await?;
            let done = sqlx::query(
                // Through the status index: a processed delivery started runs, so only
                // ignored and failed ones are looked at, not every body kept.
                "DELETE FROM delivery_payloads WHERE id IN (SELECT d.id FROM deliveries d \
                 JOIN delivery_payloads p ON p.id = d.id \
                 WHERE d.status IN ('ignored', 'failed') AND d.run_ids = '[]' \
                 AND d.received_at < $1 ORDER BY d.id LIMIT $2)",
            )
            .bind(ms(before))
            .bind(i64::from(limit))
            .execute(&mut *conn)
            .await
            .map_err(query("prune old delivery payloads"))?;
            Ok(done.rows_affected())
        }

        pub(crate) async fn get_delivery(
            &self,
            id: &str,
        ) -> Result<Option<DeliveryView>, StoreError> {
            sqlx::query(BY_ID)
                .bind(id)
                .fetch_optional(&self.reader)
                .await
                .map_err(query("read a delivery"))?
                .map(|row| delivery_from_row(&row))
                .transpose()
        }

        pub(crate) async fn delivery_payload(
            &self,
            id: &str,
        ) -> Result<Option<Vec<u8>>, StoreError> {
            // No payload row: the body was pruned, read as empty.
            let found: Option<(Option<Vec<u8>>, i64)> = sqlx::query_as(
                "SELECT p.payload, d.size FROM deliveries d \
                 LEFT JOIN delivery_payloads p ON p.id = d.id WHERE d.id = $1",
            )
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(query("read a delivery's payload"))?;
            found
                .map(|(stored, size)| crate::hooks::unpack_payload(stored.unwrap_or_default(), size))
                .transpose()
        }

        pub(crate) async fn list_deliveries(
            &self,
            project: ProjectId,
            limit: u32,
        ) -> Result<Vec<DeliveryView>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                delivery_cols!(),
                " FROM deliveries WHERE project_id = $1 ORDER BY id DESC LIMIT $2"
            ))
            .bind(project.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query("list a project's deliveries"))?
            .iter()
            .map(delivery_from_row)
            .collect()
        }

        pub(crate) async fn accepted_deliveries(
            &self,
            limit: u32,
        ) -> Result<Vec<DeliveryView>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                delivery_cols!(),
                " FROM deliveries WHERE status = 'accepted' ORDER BY id LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query("list deliveries to process"))?
            .iter()
            .map(delivery_from_row)
            .collect()
        }

        /// Every stored secret: `(true, project id, hook secret)` for webhooks and
        /// `(false, receiver id, secret)` for notification receivers, as stored.
        pub(crate) async fn stored_secrets(
            &self,
        ) -> Result<Vec<(bool, String, String)>, StoreError> {
            let rows = sqlx::query(
                "SELECT CAST(1 AS BIGINT) AS hook, id, hook_secret AS secret FROM projects \
                 WHERE hook_secret IS NOT NULL \
                 UNION ALL SELECT CAST(0 AS BIGINT) AS hook, id, secret FROM notification_receivers",
            )
            .fetch_all(&self.reader)
            .await
            .map_err(query("read the stored secrets"))?;
            rows.iter()
                .map(|row| {
                    Ok((
                        get::<i64>(row, "secrets", "hook")? == 1,
                        get(row, "secrets", "id")?,
                        get(row, "secrets", "secret")?,
                    ))
                })
                .collect()
        }

        /// Replaces one stored secret with `new` if it is still `old` (a rotation meanwhile
        /// wins). `hook` as in [`stored_secrets`](Self::stored_secrets).
        pub(crate) async fn replace_secret(
            &self,
            hook: bool,
            id: &str,
            old: &str,
            new: &str,
        ) -> Result<(), StoreError> {
            let sql = if hook {
                "UPDATE projects SET hook_secret = $3 WHERE id = $1 AND hook_secret = $2"
            } else {
                "UPDATE notification_receivers SET secret = $3 WHERE id = $1 AND secret = $2"
            };
            let mut tx = self.begin_write().await?;
            sqlx::query(sql)
                .bind(id)
                .bind(old)
                .bind(new)
                .execute(&mut *tx)
                .await
                .map_err(query("seal a stored secret"))?;
            tx.commit()
                .await
                .map_err(query("commit a sealed secret"))
        }
    }
}
