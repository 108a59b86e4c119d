// The queries of outbound notifications, written once for both dialects like `body.rs`:
// `sqlite.rs` and `postgres.rs` each `include!` this file after `body.rs`. A module of its own
// so that its imports cannot clash with body.rs's; as a child of the including backend module
// it still sees that module's private items (`Backend`'s pools, `begin_write`, `get`). (An
// included file cannot carry a `//!`; the module's inner doc below is inside its braces.)

mod api_notifications {
    //! Receivers, deliveries with their attempts, the claim and the notifier's cursor (see
    //! `crate::notifications` for why a delivery is never sent twice at once).

    use std::collections::HashMap;

    use jiff::Timestamp;
    use kiln_core::ids::ProjectId;
    use kiln_proto::{
        AttemptView, NotificationId, NotificationStatus, NotificationView, ReceiverId, ReceiverView,
    };

    use super::{Backend, Db, get};
    use crate::backend::{json_text, ms, opt_ts, parse, parse_strings, ts};
    use crate::error::{StoreError, query};
    use crate::notifications::{
        AfterAttempt, AttemptRecord, ClaimedNotification, NewNotification, ReceiverTarget,
    };

    type DbRow = <Db as sqlx::Database>::Row;

    macro_rules! delivery_cols {
        () => {
            "id, receiver_id, project_id, event_id, event_type, run_id, status, \
             next_attempt_at, created_at, updated_at"
        };
    }

    fn receiver_from_row(row: &DbRow) -> Result<ReceiverView, StoreError> {
        const T: &str = "notification_receivers";
        Ok(ReceiverView {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
            url: get(row, T, "url")?,
            events: parse_strings(T, "events", &get::<String>(row, T, "events")?)?,
            created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
            secret: None,
        })
    }

    fn delivery_from_row(row: &DbRow) -> Result<NotificationView, StoreError> {
        const T: &str = "notification_deliveries";
        let run: Option<String> = get(row, T, "run_id")?;
        Ok(NotificationView {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            receiver: parse(T, "receiver_id", &get::<String>(row, T, "receiver_id")?)?,
            project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
            event_id: get(row, T, "event_id")?,
            event_type: get(row, T, "event_type")?,
            run: run.map(|r| parse(T, "run_id", &r)).transpose()?,
            status: parse(T, "status", &get::<String>(row, T, "status")?)?,
            next_attempt_at: opt_ts(T, "next_attempt_at", get(row, T, "next_attempt_at")?)?,
            created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
            updated_at: ts(T, "updated_at", get(row, T, "updated_at")?)?,
            attempts: Vec::new(),
        })
    }

    fn attempt_from_row(row: &DbRow) -> Result<(String, AttemptView), StoreError> {
        const T: &str = "notification_attempts";
        let attempt: i64 = get(row, T, "attempt")?;
        let duration: i64 = get(row, T, "duration_ms")?;
        let code: Option<i64> = get(row, T, "status_code")?;
        Ok((
            get(row, T, "delivery_id")?,
            AttemptView {
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                at: ts(T, "at", get(row, T, "at")?)?,
                duration_ms: u64::try_from(duration).unwrap_or(0),
                status_code: code.and_then(|c| u16::try_from(c).ok()),
                error: get(row, T, "error")?,
            },
        ))
    }

    impl Backend {
        #[expect(clippy::too_many_arguments, reason = "one receiver's fields")]
        pub(crate) async fn create_receiver(
            &self,
            id: ReceiverId,
            project: ProjectId,
            url: &str,
            events: &[String],
            secret: &str,
            from_event: i64,
            now: Timestamp,
        ) -> Result<ReceiverView, StoreError> {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO notification_receivers (id, project_id, url, events, secret, \
                 from_event, created_at, removed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
            )
            .bind(id.to_string())
            .bind(project.to_string())
            .bind(url)
            .bind(json_text(&events))
            .bind(secret)
            .bind(from_event)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(query("insert a notification receiver"))?;
            tx.commit()
                .await
                .map_err(query("commit a notification receiver"))?;
            Ok(ReceiverView {
                id,
                project,
                url: url.to_owned(),
                events: events.to_vec(),
                created_at: crate::backend::truncate(now),
                secret: Some(secret.to_owned()),
            })
        }

        pub(crate) async fn list_receivers(
            &self,
            project: ProjectId,
        ) -> Result<Vec<ReceiverView>, StoreError> {
            let rows = sqlx::query(
                "SELECT id, project_id, url, events, created_at FROM notification_receivers \
                 WHERE project_id = $1 AND removed_at IS NULL ORDER BY created_at, id",
            )
            .bind(project.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(query("list notification receivers"))?;
            rows.iter().map(receiver_from_row).collect()
        }

        pub(crate) async fn active_receivers(&self) -> Result<Vec<ReceiverTarget>, StoreError> {
            const T: &str = "notification_receivers";
            let rows = sqlx::query(
                "SELECT id, project_id, events, from_event FROM notification_receivers \
                 WHERE removed_at IS NULL ORDER BY id",
            )
            .fetch_all(&self.reader)
            .await
            .map_err(query("list active notification receivers"))?;
            rows.iter()
                .map(|row| {
                    Ok(ReceiverTarget {
                        id: parse(T, "id", &get::<String>(row, T, "id")?)?,
                        project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
                        events: parse_strings(T, "events", &get::<String>(row, T, "events")?)?,
                        from_event: get(row, T, "from_event")?,
                    })
                })
                .collect()
        }

        pub(crate) async fn remove_receiver(
            &self,
            project: ProjectId,
            id: ReceiverId,
            now: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(
                "UPDATE notification_receivers SET removed_at = $3 \
                 WHERE id = $1 AND project_id = $2 AND removed_at IS NULL",
            )
            .bind(id.to_string())
            .bind(project.to_string())
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(query("remove a notification receiver"))?;
            if done.rows_affected() > 0 {
                sqlx::query(
                    "UPDATE notification_deliveries SET status = 'cancelled', \
                     next_attempt_at = NULL, updated_at = $2 \
                     WHERE receiver_id = $1 AND status = 'pending'",
                )
                .bind(id.to_string())
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(query("cancel a removed receiver's deliveries"))?;
            }
            tx.commit()
                .await
                .map_err(query("commit a receiver's removal"))?;
            Ok(done.rows_affected() > 0)
        }

        pub(crate) async fn notifier_cursor(
            &self,
            name: &str,
            start: i64,
            now: Timestamp,
        ) -> Result<i64, StoreError> {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO notifier_cursor (name, after_id, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(start)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(query("start the notifier's cursor"))?;
            let after: i64 =
                sqlx::query_scalar("SELECT after_id FROM notifier_cursor WHERE name = $1")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query("read the notifier's cursor"))?;
            tx.commit()
                .await
                .map_err(query("commit the notifier's cursor"))?;
            Ok(after)
        }

        pub(crate) async fn record_notifications(
            &self,
            cursor: &str,
            upto: i64,
            new: &[NewNotification],
            now: Timestamp,
        ) -> Result<usize, StoreError> {
            let mut tx = self.begin_write().await?;
            let mut made = 0;
            for n in new {
                let done = sqlx::query(
                    "INSERT INTO notification_deliveries (id, receiver_id, project_id, \
                     event_id, event_type, run_id, payload, status, attempts, retry_base, \
                     next_attempt_at, claimed_by, claim_expires_at, claim_token, created_at, \
                     updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, 0, $8, \
                     NULL, NULL, 0, $9, $9) ON CONFLICT (receiver_id, event_id) DO NOTHING",
                )
                .bind(n.id.to_string())
                .bind(n.receiver.to_string())
                .bind(n.project.to_string())
                .bind(n.event_id)
                .bind(&n.event_type)
                .bind(n.run.map(|r| r.to_string()))
                .bind(&n.payload)
                .bind(ms(n.due_at))
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(query("record a notification delivery"))?;
                made += usize::try_from(done.rows_affected()).unwrap_or(0);
            }
            sqlx::query(
                "UPDATE notifier_cursor SET after_id = CASE WHEN after_id < $2 THEN $2 \
                 ELSE after_id END, updated_at = $3 WHERE name = $1",
            )
            .bind(cursor)
            .bind(upto)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(query("advance the notifier's cursor"))?;
            tx.commit()
                .await
                .map_err(query("commit notification deliveries"))?;
            Ok(made)
        }

        pub(crate) async fn claim_notifications(
            &self,
            owner: &str,
            now: Timestamp,
            expires: Timestamp,
            limit: i64,
        ) -> Result<Vec<ClaimedNotification>, StoreError> {
            const T: &str = "notification_deliveries";
            let now_ms = ms(now);
            // Most rounds find nothing due: ask a reader first, so that they take no write
            // transaction (the writer is what every job transition waits for).
            let due: Option<String> = sqlx::query_scalar(
                "SELECT id FROM notification_deliveries WHERE status = 'pending' \
                 AND next_attempt_at <= $1 \
                 AND (claim_expires_at IS NULL OR claim_expires_at <= $1) LIMIT 1",
            )
            .bind(now_ms)
            .fetch_optional(&self.reader)
            .await
            .map_err(query("look for due notification deliveries"))?;
            if due.is_none() {
                return Ok(Vec::new());
            }
            let mut tx = self.begin_write().await?;
            let rows = sqlx::query(
                "SELECT d.id, d.receiver_id, r.url, r.secret, d.event_type, d.payload, \
                 d.attempts, d.retry_base FROM notification_deliveries d \
                 JOIN notification_receivers r ON r.id = d.receiver_id \
                 WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
                 AND (d.claim_expires_at IS NULL OR d.claim_expires_at <= $1) \
                 ORDER BY d.next_attempt_at, d.id LIMIT $2",
            )
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(query("find due notification deliveries"))?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = get(row, T, "id")?;
                // Conditional: on PostgreSQL a replica claiming the same row at once waits
                // for our commit, then finds the claim live and takes nothing.
                let token: Option<i64> = sqlx::query_scalar(
                    "UPDATE notification_deliveries SET claimed_by = $2, claim_expires_at = $3, \
                     claim_token = claim_token + 1 WHERE id = $1 AND status = 'pending' \
                     AND next_attempt_at <= $4 \
                     AND (claim_expires_at IS NULL OR claim_expires_at <= $4) \
                     RETURNING claim_token",
                )
                .bind(&id)
                .bind(owner)
                .bind(ms(expires))
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query("claim a notification delivery"))?;
                let Some(token) = token else { continue };
                let attempts: i64 = get(row, T, "attempts")?;
                let base: i64 = get(row, T, "retry_base")?;
                claimed.push(ClaimedNotification {
                    id: parse(T, "id", &id)?,
                    receiver: parse(T, "receiver_id", &get::<String>(row, T, "receiver_id")?)?,
                    url: get(row, T, "url")?,
                    secret: get(row, T, "secret")?,
                    event_type: get(row, T, "event_type")?,
                    payload: get(row, T, "payload")?,
                    tries: u32::try_from(attempts - base).unwrap_or(0),
                    token,
                });
            }
            tx.commit()
                .await
                .map_err(query("commit notification claims"))?;
            Ok(claimed)
        }

        pub(crate) async fn finish_notification_attempt(
            &self,
            id: NotificationId,
            owner: &str,
            token: i64,
            attempt: &AttemptRecord,
            after: AfterAttempt,
        ) -> Result<bool, StoreError> {
            let (status, next) = match after {
                AfterAttempt::Delivered => (NotificationStatus::Delivered, None),
                AfterAttempt::RetryAt(at) => (NotificationStatus::Pending, Some(ms(at))),
                AfterAttempt::Failed => (NotificationStatus::Failed, None),
            };
            let mut tx = self.begin_write().await?;
            let number: Option<i64> = sqlx::query_scalar(
                "UPDATE notification_deliveries SET status = $4, attempts = attempts + 1, \
                 next_attempt_at = $5, claimed_by = NULL, claim_expires_at = NULL, \
                 updated_at = $6 WHERE id = $1 AND claimed_by = $2 AND claim_token = $3 \
                 AND status = 'pending' RETURNING attempts",
            )
            .bind(id.to_string())
            .bind(owner)
            .bind(token)
            .bind(status.as_str())
            .bind(next)
            .bind(ms(attempt.at))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query("record a notification attempt's outcome"))?;
            let Some(number) = number else {
                // The claim was lost (expired and taken, or the receiver removed): the
                // attempt is not ours to record.
                tx.rollback()
                    .await
                    .map_err(query("roll back a stale notification attempt"))?;
                return Ok(false);
            };
            sqlx::query(
                "INSERT INTO notification_attempts (delivery_id, attempt, at, duration_ms, \
                 status_code, error, sent_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id.to_string())
            .bind(number)
            .bind(ms(attempt.at))
            .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX))
            .bind(attempt.status_code.map(i64::from))
            .bind(attempt.error.as_deref())
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(query("record a notification attempt"))?;
            tx.commit()
                .await
                .map_err(query("commit a notification attempt"))?;
            Ok(true)
        }

        pub(crate) async fn list_notifications(
            &self,
            project: ProjectId,
            limit: i64,
        ) -> Result<Vec<NotificationView>, StoreError> {
            let mut tx = self.begin_read().await?;
            let rows = sqlx::query(concat!(
                "SELECT ",
                delivery_cols!(),
                " FROM notification_deliveries WHERE project_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            ))
            .bind(project.to_string())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(query("list notification deliveries"))?;
            let mut list: Vec<NotificationView> = rows
                .iter()
                .map(delivery_from_row)
                .collect::<Result<_, _>>()?;
            let attempts = sqlx::query(
                "SELECT a.delivery_id, a.attempt, a.at, a.duration_ms, a.status_code, a.error \
                 FROM notification_attempts a JOIN (SELECT id FROM notification_deliveries \
                 WHERE project_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2) d \
                 ON d.id = a.delivery_id ORDER BY a.delivery_id, a.attempt",
            )
            .bind(project.to_string())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(query("list notification attempts"))?;
            tx.commit().await.map_err(query("end a read transaction"))?;
            let mut by_id: HashMap<String, Vec<AttemptView>> = HashMap::new();
            for row in &attempts {
                let (id, a) = attempt_from_row(row)?;
                by_id.entry(id).or_default().push(a);
            }
            for n in &mut list {
                n.attempts = by_id.remove(&n.id.to_string()).unwrap_or_default();
            }
            Ok(list)
        }

        pub(crate) async fn get_notification(
            &self,
            id: NotificationId,
        ) -> Result<Option<NotificationView>, StoreError> {
            let row = sqlx::query(concat!(
                "SELECT ",
                delivery_cols!(),
                " FROM notification_deliveries WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(query("read a notification delivery"))?;
            let Some(row) = row else { return Ok(None) };
            let mut view = delivery_from_row(&row)?;
            let attempts = sqlx::query(
                "SELECT delivery_id, attempt, at, duration_ms, status_code, error \
                 FROM notification_attempts WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(id.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(query("read a notification's attempts"))?;
            view.attempts = attempts
                .iter()
                .map(|r| attempt_from_row(r).map(|(_, a)| a))
                .collect::<Result<_, _>>()?;
            Ok(Some(view))
        }

        /// `Ok(true)`: the delivery is pending again.
        pub(crate) async fn retry_notification(
            &self,
            id: NotificationId,
            now: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(
                "UPDATE notification_deliveries SET status = 'pending', retry_base = attempts, \
                 next_attempt_at = $2, claimed_by = NULL, claim_expires_at = NULL, \
                 updated_at = $2 WHERE id = $1 AND status IN ('delivered', 'failed') \
                 AND receiver_id IN (SELECT id FROM notification_receivers \
                 WHERE removed_at IS NULL)",
            )
            .bind(id.to_string())
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(query("retry a notification delivery"))?;
            tx.commit()
                .await
                .map_err(query("commit a notification retry"))?;
            Ok(done.rows_affected() > 0)
        }
    }
}
