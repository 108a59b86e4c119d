// The queries of API tokens (and the readiness ping), written once for both dialects like
// `body.rs`: `sqlite.rs` and `postgres.rs` each `include!` this file right after `body.rs`.
// It is a module of its own so that its imports cannot clash with body.rs's; being a child
// of the including backend module it still sees that module's private items (`Backend`'s
// pools, `begin_write`, `Db`, `LOCK_TOKENS`). (An included file cannot carry a `//!`; the
// module's inner doc below is inside its braces.)

mod api_tokens {
    //! API tokens in the `api_tokens` table: create, list, revoke, verify, and the first admin
    //! token of a fresh store. Only hashes are stored (see `crate::token`).

    use jiff::Timestamp;
    use kiln_core::ids::ProjectId;
    use kiln_proto::{Role, TokenId, TokenInfo};

    use super::{Backend, Db, LOCK_TOKENS, get};
    use crate::backend::{ms, opt_ts, parse, truncate, ts};
    use crate::error::{StoreError, query};
    use crate::token;

    type DbRow = <Db as sqlx::Database>::Row;
    type Tx = super::WriteTx;

    macro_rules! token_cols {
        () => {
            "id, name, role, project_id, created_at, last_used_at, revoked_at"
        };
    }

    /// `last_used_at` is written at most this often per token, so that an API client does not
    /// cost a write per request.
    const LAST_USED_RESOLUTION_MS: i64 = 60_000;

    /// The name of the token `kiln serve` creates in an empty store.
    const ADMIN_TOKEN_NAME: &str = "admin";

    fn token_from_row(row: &DbRow) -> Result<TokenInfo, StoreError> {
        const T: &str = "api_tokens";
        let project: Option<String> = get(row, T, "project_id")?;
        let revoked_at: Option<i64> = get(row, T, "revoked_at")?;
        Ok(TokenInfo {
            id: parse(T, "id", &get::<String>(row, T, "id")?)?,
            name: get(row, T, "name")?,
            role: parse(T, "role", &get::<String>(row, T, "role")?)?,
            project: project.map(|p| parse(T, "project_id", &p)).transpose()?,
            created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
            last_used_at: opt_ts(T, "last_used_at", get(row, T, "last_used_at")?)?,
            revoked: revoked_at.is_some(),
        })
    }

    /// Inserts a token whose secret hashes to `hash`.
    async fn insert(
        tx: &mut Tx,
        name: &str,
        role: Role,
        project: Option<ProjectId>,
        hash: &str,
        now: Timestamp,
    ) -> Result<TokenInfo, StoreError> {
        let id = TokenId::new();
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, project_id, hash, created_at, \
             last_used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)",
        )
        .bind(id.to_string())
        .bind(name)
        .bind(role.as_str())
        .bind(project.map(|p| p.to_string()))
        .bind(hash)
        .bind(ms(now))
        .execute(&mut **tx)
        .await
        .map_err(query("insert an API token"))?;
        Ok(TokenInfo {
            id,
            name: name.to_owned(),
            role,
            project,
            created_at: truncate(now),
            last_used_at: None,
            revoked: false,
        })
    }

    impl Backend {
        pub(crate) async fn create_token(
            &self,
            name: &str,
            role: Role,
            project: Option<ProjectId>,
            now: Timestamp,
        ) -> Result<(TokenInfo, String), StoreError> {
            let plaintext = token::generate()?;
            let mut tx = self.begin_write().await?;
            if let Some(p) = project {
                let found = sqlx::query("SELECT id FROM projects WHERE id = $1")
                    .bind(p.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query("look up the project of a new API token"))?;
                if found.is_none() {
                    return Err(StoreError::NotFound {
                        what: "project",
                        id: p.to_string(),
                    });
                }
            }
            let info = insert(&mut tx, name, role, project, &token::hash(&plaintext), now).await?;
            tx.commit().await.map_err(query("commit an API token"))?;
            Ok((info, plaintext))
        }

        pub(crate) async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
            sqlx::query(concat!(
                "SELECT ",
                token_cols!(),
                " FROM api_tokens ORDER BY created_at, id"
            ))
            .fetch_all(&self.reader)
            .await
            .map_err(query("list API tokens"))?
            .iter()
            .map(token_from_row)
            .collect()
        }

        /// `false`: no token has this id. Revoking a revoked token keeps its first time.
        pub(crate) async fn revoke_token(
            &self,
            id: TokenId,
            now: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
            )
            .bind(ms(now))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(query("revoke an API token"))?;
            tx.commit().await.map_err(query("commit a token's revocation"))?;
            Ok(done.rows_affected() > 0)
        }

        pub(crate) async fn verify_token(
            &self,
            plaintext: &str,
            now: Timestamp,
        ) -> Result<Option<TokenInfo>, StoreError> {
            let row = sqlx::query(concat!(
                "SELECT ",
                token_cols!(),
                " FROM api_tokens WHERE hash = $1"
            ))
            .bind(token::hash(plaintext))
            .fetch_optional(&self.reader)
            .await
            .map_err(query("look up an API token"))?;
            let Some(row) = row else { return Ok(None) };
            let mut info = token_from_row(&row)?;
            if info.revoked {
                return Ok(None);
            }
            let now_ms = ms(now);
            let stale = info
                .last_used_at
                .is_none_or(|t| t.as_millisecond() <= now_ms - LAST_USED_RESOLUTION_MS);
            if stale {
                // Guarded so that concurrent requests write once and a token revoked in the
                // meantime is not touched; either way the answer stands.
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 \
                     AND revoked_at IS NULL AND (last_used_at IS NULL OR last_used_at <= $3)",
                )
                .bind(now_ms)
                .bind(info.id.to_string())
                .bind(now_ms - LAST_USED_RESOLUTION_MS)
                .execute(&mut *tx)
                .await
                .map_err(query("record an API token's use"))?;
                tx.commit()
                    .await
                    .map_err(query("commit an API token's use"))?;
                info.last_used_at = Some(truncate(now));
            }
            Ok(Some(info))
        }

        /// Creates the admin token of a store that holds no token at all (revoked ones count):
        /// `preseed`'s, or a random one that is returned. Replicas starting together on one
        /// PostgreSQL serialise on an advisory lock; SQLite's `BEGIN IMMEDIATE` does the same.
        pub(crate) async fn ensure_admin_token(
            &self,
            preseed: Option<&str>,
            now: Timestamp,
        ) -> Result<Option<String>, StoreError> {
            if let Some(p) = preseed {
                token::check_preseed(p)?;
            }
            let mut tx = self.begin_write().await?;
            if let Some(lock) = LOCK_TOKENS {
                sqlx::query(lock)
                    .execute(&mut *tx)
                    .await
                    .map_err(query("lock the API tokens"))?;
            }
            let count: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT 1 FROM api_tokens LIMIT 1) t")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query("count API tokens"))?;
            if count > 0 {
                tx.rollback()
                    .await
                    .map_err(query("end an API token transaction"))?;
                return Ok(None);
            }
            let (plaintext, shown) = match preseed {
                Some(p) => (p.to_owned(), None),
                None => {
                    let t = token::generate()?;
                    (t.clone(), Some(t))
                }
            };
            insert(
                &mut tx,
                ADMIN_TOKEN_NAME,
                Role::Admin,
                None,
                &token::hash(&plaintext),
                now,
            )
            .await?;
            tx.commit()
                .await
                .map_err(query("commit the first admin token"))?;
            Ok(shown)
        }

        /// Whether the database answers a trivial query.
        pub(crate) async fn ping(&self) -> Result<(), StoreError> {
            sqlx::query("SELECT 1")
                .execute(&self.reader)
                .await
                .map_err(query("ping the database"))?;
            Ok(())
        }
    }
}
