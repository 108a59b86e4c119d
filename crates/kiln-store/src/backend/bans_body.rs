// The queries of webhook bans, written once for both dialects like `body.rs`: `sqlite.rs`
// and `postgres.rs` each `include!` this file after `body.rs`. A module of its own so that its
// imports cannot clash with body.rs's; as a child of the including backend module it still
// sees that module's private items. (An included file cannot carry a `//!`; the module's
// inner doc below is inside its braces.)

mod api_bans {
    //! Addresses banned from a webhook (or from every one): made when the server counts too
    //! many failed verifications, looked up before a delivery's body is read, listed and
    //! lifted by admins. A ban's row stays after it ends, as the record.

    use jiff::Timestamp;
    use kiln_proto::Ban;

    use super::{Backend, Db, get};
    use crate::backend::{ms, opt_ts, ts};
    use crate::error::{StoreError, query};

    type DbRow = <Db as sqlx::Database>::Row;

    const COLS: &str = "id, address, hook_id, reason, failures, created_at, expires_at, lifted_at";

    fn ban_from_row(row: &DbRow) -> Result<Ban, StoreError> {
        const T: &str = "bans";
        Ok(Ban {
            id: get(row, T, "id")?,
            address: get(row, T, "address")?,
            hook_id: get(row, T, "hook_id")?,
            reason: get(row, T, "reason")?,
            failures: get(row, T, "failures")?,
            created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
            expires_at: ts(T, "expires_at", get(row, T, "expires_at")?)?,
            lifted_at: opt_ts(T, "lifted_at", get(row, T, "lifted_at")?)?,
        })
    }

    impl Backend {
        pub(crate) async fn add_ban(&self, ban: &Ban) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO bans (id, address, hook_id, reason, failures, created_at, \
                 expires_at, lifted_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
            )
            .bind(&ban.id)
            .bind(&ban.address)
            .bind(&ban.hook_id)
            .bind(&ban.reason)
            .bind(ban.failures)
            .bind(ms(ban.created_at))
            .bind(ms(ban.expires_at))
            .execute(&mut *tx)
            .await
            .map_err(query("record a ban"))?;
            tx.commit().await.map_err(query("commit a ban"))?;
            Ok(())
        }

        pub(crate) async fn active_ban(
            &self,
            address: &str,
            hook_id: &str,
            now: Timestamp,
        ) -> Result<Option<Ban>, StoreError> {
            let sql = format!(
                "SELECT {COLS} FROM bans WHERE address = $1 \
                 AND (hook_id IS NULL OR hook_id = $2) AND expires_at > $3 \
                 AND lifted_at IS NULL ORDER BY expires_at DESC LIMIT 1"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(address)
                .bind(hook_id)
                .bind(ms(now))
                .fetch_optional(&self.reader)
                .await
                .map_err(query("look up a ban"))?;
            row.as_ref().map(ban_from_row).transpose()
        }

        pub(crate) async fn list_bans(
            &self,
            all: bool,
            now: Timestamp,
        ) -> Result<Vec<Ban>, StoreError> {
            let filter = if all {
                ""
            } else {
                "WHERE expires_at > $1 AND lifted_at IS NULL "
            };
            let sql = format!("SELECT {COLS} FROM bans {filter}ORDER BY created_at DESC, id");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            if !all {
                q = q.bind(ms(now));
            }
            let rows = q
                .fetch_all(&self.reader)
                .await
                .map_err(query("list bans"))?;
            rows.iter().map(ban_from_row).collect()
        }

        pub(crate) async fn lift_ban(
            &self,
            id: &str,
            at: Timestamp,
        ) -> Result<Option<Ban>, StoreError> {
            let mut tx = self.begin_write().await?;
            let sql = format!(
                "UPDATE bans SET lifted_at = COALESCE(lifted_at, $2) WHERE id = $1 \
                 RETURNING {COLS}"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(ms(at))
                .fetch_optional(&mut *tx)
                .await
                .map_err(query("lift a ban"))?;
            tx.commit().await.map_err(query("commit a lifted ban"))?;
            row.as_ref().map(ban_from_row).transpose()
        }
    }
}
