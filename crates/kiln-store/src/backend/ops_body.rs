// The queries of the server's operations routes (queue, stats, database stats and export),
// written once for both dialects like `body.rs`: `sqlite.rs` and `postgres.rs` each
// `include!` this file after `body.rs`. A module of its own so that its imports cannot clash
// with body.rs's; as a child of the including backend module it still sees that module's
// private items (`Backend`'s pool, `begin_read`, `get`). The few statements that only one
// backend can run are chosen by the driver's name (`Db::NAME`). (An included file cannot
// carry a `//!`; the module's inner doc below is inside its braces.)

mod ops {
    //! Reads for operators: the queue, counts and durations of runs, the database's tables
    //! and sizes, and the export of its rows page by page. Read-only: nothing here writes.
    //!
    //! Everything is aggregated in SQL that both dialects read alike (integer arithmetic,
    //! window functions, `CASE`), so that SQLite and PostgreSQL answer the same numbers.

    use std::collections::HashMap;

    use jiff::Timestamp;
    use jiff::civil::Date;
    use kiln_core::ids::{JobStatus, RunStatus};
    use serde_json::{Map, Value};
    use sqlx::Database as _;

    use super::{Backend, Db, get};
    use crate::backend::{decode, opt_ts, parse, ts};
    use crate::error::{StoreError, query};
    use crate::types::{
        DatabaseStats, ExportCursor, ExportKey, ExportPage, ExportTable, QUEUE_STATUSES,
        QueueEntry, QueueSnapshot, RunStats, StatusCounts, TableStats, WorkflowStats,
    };

    type DbRow = <Db as sqlx::Database>::Row;

    const DAY_MS: i64 = 86_400_000;

    fn is_postgres() -> bool {
        Db::NAME == "PostgreSQL"
    }

    /// `IN (…)` of the queue statuses, spelled as the store spells them.
    macro_rules! queue_statuses {
        () => {
            "('queued', 'waiting', 'leased', 'running')"
        };
    }

    /// Terminal run statuses: a run in one of them has a duration.
    macro_rules! finished_runs {
        () => {
            "status IN ('success', 'failure', 'cancelled') AND started_at IS NOT NULL \
             AND finished_at IS NOT NULL"
        };
    }

    /// `(status, count)` rows into every status of `all`, zeros included, in `all`'s order.
    fn by_status<S>(
        table: &'static str,
        rows: &[DbRow],
        all: &[S],
    ) -> Result<Vec<(S, i64)>, StoreError>
    where
        S: Copy + PartialEq + std::str::FromStr,
        S::Err: std::fmt::Display,
    {
        let mut counts: Vec<(S, i64)> = all.iter().map(|s| (*s, 0)).collect();
        for row in rows {
            let status: S = parse(table, "status", &get::<String>(row, table, "status")?)?;
            let n: i64 = get(row, table, "n")?;
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == status) {
                c.1 += n;
            }
        }
        Ok(counts)
    }

    fn queue_entry(row: &DbRow) -> Result<QueueEntry, StoreError> {
        const T: &str = "jobs";
        Ok(QueueEntry {
            job: parse(T, "id", &get::<String>(row, T, "id")?)?,
            run: parse(T, "run_id", &get::<String>(row, T, "run_id")?)?,
            project: parse(T, "project_id", &get::<String>(row, T, "project_id")?)?,
            project_name: get(row, T, "project_name")?,
            workflow: get(row, T, "workflow")?,
            key: get(row, T, "job_key")?,
            name: get(row, T, "name")?,
            status: parse(T, "status", &get::<String>(row, T, "status")?)?,
            attempts: get(row, T, "attempts")?,
            max_attempts: get(row, T, "max_attempts")?,
            created_at: ts(T, "created_at", get(row, T, "created_at")?)?,
            started_at: opt_ts(T, "started_at", get(row, T, "started_at")?)?,
            lease_owner: get(row, T, "lease_owner")?,
            lease_expires_at: opt_ts(T, "lease_expires_at", get(row, T, "lease_expires_at")?)?,
        })
    }

    /// How a column is read for the export.
    #[derive(Clone, Copy)]
    enum Col {
        Text,
        Int,
        /// Text holding JSON: exported as the JSON it holds.
        Json,
        /// JSON text, or (when this column is NULL) the same LZ4-compressed in the column
        /// named (see `types::pack_context`): exported as the JSON it holds.
        PackedJson(&'static str),
    }

    /// The primary key an export pages by: the columns it is made of, in order.
    #[derive(Clone, Copy)]
    enum Key {
        /// One text column (a uuid, a name).
        Text(&'static str),
        /// One integer column.
        Int(&'static str),
        /// A text column, then an integer one.
        Pair(&'static str, &'static str),
        /// A text column, then two integer ones.
        Triple(&'static str, &'static str, &'static str),
    }

    /// What the export reads of one table: its columns (every one but secrets, payload
    /// bytes and the database's own bookkeeping) and the statement of a page after a key.
    struct Export {
        table: &'static str,
        columns: &'static [(&'static str, Col)],
        key: Key,
        /// `$1` (to `$2`, `$3` for a composite key) the key to continue after, then the
        /// limit. A composite key compares as a row value, `(a, b) > ($1, $2)`, which both
        /// databases answer with a range of the primary key's index (PostgreSQL filters an
        /// index scan from the start instead when it is spelled with `OR`).
        page: &'static str,
    }

    const PROJECTS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("name", Col::Text),
        ("source", Col::Text),
        ("hook_id", Col::Text),
        ("created_at", Col::Int),
        ("default_branch", Col::Text),
        ("head_sha", Col::Text),
        ("fetch_requested_at", Col::Int),
        ("fetched_at", Col::Int),
        ("fetch_error", Col::Text),
        ("updated_at", Col::Int),
        ("archived_at", Col::Int),
        // Not `hook_secret`: a webhook secret stays in the database.
        ("hook_provider", Col::Text),
    ];
    const RUNS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("project_id", Col::Text),
        ("workflow", Col::Text),
        ("workflow_name", Col::Text),
        ("run_number", Col::Int),
        ("run_attempt", Col::Int),
        ("status", Col::Text),
        ("event", Col::Text),
        ("git_ref", Col::Text),
        ("sha", Col::Text),
        ("inputs", Col::Json),
        ("created_at", Col::Int),
        ("started_at", Col::Int),
        ("finished_at", Col::Int),
        ("driver", Col::Text),
        ("driver_until", Col::Int),
        ("context", Col::PackedJson("context_packed")),
        ("cancel_requested_at", Col::Int),
    ];
    const JOBS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("run_id", Col::Text),
        ("project_id", Col::Text),
        ("seq", Col::Int),
        ("job_key", Col::Text),
        ("name", Col::Text),
        ("matrix", Col::Json),
        ("needs", Col::Json),
        ("status", Col::Text),
        ("attempts", Col::Int),
        ("max_attempts", Col::Int),
        ("lease_owner", Col::Text),
        ("lease_token", Col::Int),
        ("lease_expires_at", Col::Int),
        ("log_length", Col::Int),
        ("outputs", Col::Json),
        ("created_at", Col::Int),
        ("started_at", Col::Int),
        ("finished_at", Col::Int),
        ("labels", Col::Json),
        ("offered_at", Col::Int),
    ];
    const STEPS: &[(&str, Col)] = &[
        ("job_id", Col::Text),
        ("attempt", Col::Int),
        ("idx", Col::Int),
        ("name", Col::Text),
        ("status", Col::Text),
        ("outputs", Col::Json),
        ("started_at", Col::Int),
        ("finished_at", Col::Int),
    ];
    const EVENTS: &[(&str, Col)] = &[
        ("id", Col::Int),
        ("at", Col::Int),
        ("kind", Col::Text),
        ("project_id", Col::Text),
        ("run_id", Col::Text),
        ("job_id", Col::Text),
        ("data", Col::Json),
    ];
    // No `hash`: a token's hash stays in the database.
    const TOKENS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("name", Col::Text),
        ("role", Col::Text),
        ("project_id", Col::Text),
        ("created_at", Col::Int),
        ("last_used_at", Col::Int),
        ("revoked_at", Col::Int),
    ];

    // The index of the logs; the bytes are in the blob store.
    const LOG_CHUNKS: &[(&str, Col)] = &[
        ("job_id", Col::Text),
        ("attempt", Col::Int),
        ("byte_offset", Col::Int),
        ("length", Col::Int),
        ("step", Col::Int),
        ("blob_key", Col::Text),
        ("blob_offset", Col::Int),
    ];
    // No `payload`: a webhook's body is not exported, only its `size`.
    const DELIVERIES: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("project_id", Col::Text),
        ("provider", Col::Text),
        ("delivery_id", Col::Text),
        ("event", Col::Text),
        ("received_at", Col::Int),
        ("status", Col::Text),
        ("reason", Col::Text),
        ("run_ids", Col::Json),
        ("size", Col::Int),
        ("processed_at", Col::Int),
        ("claimed_by", Col::Text),
        ("claim_expires_at", Col::Int),
    ];
    const SCHEDULES: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("project_id", Col::Text),
        ("workflow", Col::Text),
        ("idx", Col::Int),
        ("cron", Col::Text),
        ("timezone", Col::Text),
        ("catch_up", Col::Text),
        ("stopped_at", Col::Int),
        ("removed_at", Col::Int),
        ("next_fire_at", Col::Int),
        ("last_fired_at", Col::Int),
        ("last_run_id", Col::Text),
        ("created_at", Col::Int),
        ("updated_at", Col::Int),
    ];
    const SCHEDULE_FIRES: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("schedule_id", Col::Text),
        ("fire_at", Col::Int),
        ("claimed_at", Col::Int),
        ("claimed_by", Col::Text),
        ("outcome", Col::Text),
        ("run_id", Col::Text),
        ("error", Col::Text),
    ];
    const WATCHES: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("project_id", Col::Text),
        ("workflow", Col::Text),
        ("name", Col::Text),
        ("source", Col::Json),
        ("version_req", Col::Text),
        ("filter", Col::Text),
        ("known_versions", Col::Text),
        ("interval_secs", Col::Int),
        ("enabled", Col::Int),
        ("polled", Col::Int),
        ("next_poll_at", Col::Int),
        ("last_poll_at", Col::Int),
        ("etag", Col::Text),
        ("last_error", Col::Text),
        ("failures", Col::Int),
        ("last_run_id", Col::Text),
        ("created_at", Col::Int),
        ("updated_at", Col::Int),
    ];
    const WATCH_VERSIONS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("watch_id", Col::Text),
        ("version", Col::Text),
        ("source_uri", Col::Text),
        ("found_at", Col::Int),
        ("outcome", Col::Text),
        ("run_id", Col::Text),
        ("error", Col::Text),
    ];
    // No `secret`: the key a receiver's deliveries are signed with stays in the database.
    const NOTIFICATION_RECEIVERS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("project_id", Col::Text),
        ("url", Col::Text),
        ("events", Col::Json),
        ("from_event", Col::Int),
        ("created_at", Col::Int),
        ("removed_at", Col::Int),
    ];
    // `payload` is text: the notifier's body as it made it, exported as it is.
    const NOTIFICATION_DELIVERIES: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("receiver_id", Col::Text),
        ("project_id", Col::Text),
        ("event_id", Col::Int),
        ("event_type", Col::Text),
        ("run_id", Col::Text),
        ("payload", Col::Text),
        ("status", Col::Text),
        ("attempts", Col::Int),
        ("retry_base", Col::Int),
        ("next_attempt_at", Col::Int),
        ("claimed_by", Col::Text),
        ("claim_expires_at", Col::Int),
        ("claim_token", Col::Int),
        ("created_at", Col::Int),
        ("updated_at", Col::Int),
    ];
    const NOTIFICATION_ATTEMPTS: &[(&str, Col)] = &[
        ("delivery_id", Col::Text),
        ("attempt", Col::Int),
        ("at", Col::Int),
        ("duration_ms", Col::Int),
        ("status_code", Col::Int),
        ("error", Col::Text),
        ("sent_by", Col::Text),
    ];
    const NOTIFIER_CURSOR: &[(&str, Col)] = &[
        ("name", Col::Text),
        ("after_id", Col::Int),
        ("updated_at", Col::Int),
    ];
    const BANS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("address", Col::Text),
        ("hook_id", Col::Text),
        ("reason", Col::Text),
        ("failures", Col::Int),
        ("created_at", Col::Int),
        ("expires_at", Col::Int),
        ("lifted_at", Col::Int),
    ];

    const WORKERS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("name", Col::Text),
        ("labels", Col::Json),
        ("slots", Col::Int),
        ("protocol", Col::Int),
        ("version", Col::Text),
        ("paused", Col::Int),
        ("registered_at", Col::Int),
        ("last_seen_at", Col::Int),
        ("offline", Col::Int),
    ];

    const ARTIFACTS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("project_id", Col::Text),
        ("run_id", Col::Text),
        ("job_id", Col::Text),
        ("name", Col::Text),
        ("file_name", Col::Text),
        ("format", Col::Text),
        ("sha256", Col::Text),
        ("size", Col::Int),
        ("version", Col::Text),
        ("semver", Col::Text),
        ("metadata", Col::Json),
        ("created_at", Col::Int),
    ];

    const REPLICAS: &[(&str, Col)] = &[
        ("owner", Col::Text),
        ("url", Col::Text),
        ("seen_at", Col::Int),
    ];

    const BUILD_SESSIONS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("tree", Col::Text),
        ("slots", Col::Int),
        ("started_at", Col::Int),
        ("finished_at", Col::Int),
        ("built", Col::Int),
        ("failed", Col::Int),
        ("skipped", Col::Int),
        ("cached", Col::Int),
        ("cancelled", Col::Int),
    ];
    const PACKAGE_BUILDS: &[(&str, Col)] = &[
        ("id", Col::Text),
        ("session_id", Col::Text),
        ("origin", Col::Text),
        ("version", Col::Text),
        ("build_key", Col::Text),
        ("status", Col::Text),
        ("reason", Col::Text),
        ("started_at", Col::Int),
        ("finished_at", Col::Int),
        ("duration_ms", Col::Int),
        ("log_digest", Col::Text),
        ("log_size", Col::Int),
        ("log_tail", Col::Text),
        ("output_digest", Col::Text),
        ("output_size", Col::Int),
    ];

    fn export_of(table: ExportTable) -> Export {
        match table {
            ExportTable::Projects => Export {
                table: "projects",
                columns: PROJECTS,
                key: Key::Text("id"),
                page: "SELECT id, name, source, hook_id, created_at, default_branch, head_sha, \
                       fetch_requested_at, fetched_at, fetch_error, updated_at, archived_at, \
                       hook_provider FROM projects WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::Runs => Export {
                table: "runs",
                columns: RUNS,
                key: Key::Text("id"),
                page: "SELECT id, project_id, workflow, workflow_name, run_number, \
                       run_attempt, status, event, git_ref, sha, inputs, created_at, \
                       started_at, finished_at, driver, driver_until, context, \
                       context_packed, cancel_requested_at FROM runs \
                       WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::Jobs => Export {
                table: "jobs",
                columns: JOBS,
                key: Key::Text("id"),
                page: "SELECT id, run_id, project_id, seq, job_key, name, matrix, needs, \
                       status, attempts, max_attempts, lease_owner, lease_token, \
                       lease_expires_at, log_length, outputs, created_at, started_at, \
                       finished_at, labels, offered_at FROM jobs WHERE id > $1 ORDER BY id \
                       LIMIT $2",
            },
            ExportTable::Steps => Export {
                table: "steps",
                columns: STEPS,
                key: Key::Triple("job_id", "attempt", "idx"),
                page: "SELECT job_id, attempt, idx, name, status, outputs, started_at, \
                       finished_at FROM steps WHERE (job_id, attempt, idx) > ($1, $2, $3) \
                       ORDER BY job_id, attempt, idx LIMIT $4",
            },
            ExportTable::LogChunks => Export {
                table: "log_chunks",
                columns: LOG_CHUNKS,
                key: Key::Triple("job_id", "attempt", "byte_offset"),
                page: "SELECT job_id, attempt, byte_offset, length, step, blob_key, \
                       blob_offset FROM log_chunks \
                       WHERE (job_id, attempt, byte_offset) > ($1, $2, $3) \
                       ORDER BY job_id, attempt, byte_offset LIMIT $4",
            },
            ExportTable::Events => Export {
                table: "events",
                columns: EVENTS,
                key: Key::Int("id"),
                page: "SELECT id, at, kind, project_id, run_id, job_id, data FROM events \
                       WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::Tokens => Export {
                table: "api_tokens",
                columns: TOKENS,
                key: Key::Text("id"),
                page: "SELECT id, name, role, project_id, created_at, last_used_at, \
                       revoked_at FROM api_tokens WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::Deliveries => Export {
                table: "deliveries",
                columns: DELIVERIES,
                key: Key::Text("id"),
                page: "SELECT id, project_id, provider, delivery_id, event, received_at, \
                       status, reason, run_ids, size, processed_at, claimed_by, \
                       claim_expires_at FROM deliveries WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::Schedules => Export {
                table: "schedules",
                columns: SCHEDULES,
                key: Key::Text("id"),
                page: "SELECT id, project_id, workflow, idx, cron, timezone, catch_up, \
                       stopped_at, removed_at, next_fire_at, last_fired_at, last_run_id, \
                       created_at, updated_at FROM schedules WHERE id > $1 \
                       ORDER BY id LIMIT $2",
            },
            ExportTable::ScheduleFires => Export {
                table: "schedule_fires",
                columns: SCHEDULE_FIRES,
                key: Key::Text("id"),
                page: "SELECT id, schedule_id, fire_at, claimed_at, claimed_by, outcome, \
                       run_id, error FROM schedule_fires WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::Watches => Export {
                table: "watches",
                columns: WATCHES,
                key: Key::Text("id"),
                page: "SELECT id, project_id, workflow, name, source, version_req, filter, \
                       known_versions, interval_secs, enabled, polled, next_poll_at, \
                       last_poll_at, etag, last_error, failures, last_run_id, created_at, \
                       updated_at FROM watches WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::WatchVersions => Export {
                table: "watch_versions",
                columns: WATCH_VERSIONS,
                key: Key::Text("id"),
                page: "SELECT id, watch_id, version, source_uri, found_at, outcome, run_id, \
                       error FROM watch_versions WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::NotificationReceivers => Export {
                table: "notification_receivers",
                columns: NOTIFICATION_RECEIVERS,
                key: Key::Text("id"),
                page: "SELECT id, project_id, url, events, from_event, created_at, \
                       removed_at FROM notification_receivers WHERE id > $1 \
                       ORDER BY id LIMIT $2",
            },
            ExportTable::NotificationDeliveries => Export {
                table: "notification_deliveries",
                columns: NOTIFICATION_DELIVERIES,
                key: Key::Text("id"),
                page: "SELECT id, receiver_id, project_id, event_id, event_type, run_id, \
                       payload, status, attempts, retry_base, next_attempt_at, claimed_by, \
                       claim_expires_at, claim_token, created_at, updated_at \
                       FROM notification_deliveries WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::NotificationAttempts => Export {
                table: "notification_attempts",
                columns: NOTIFICATION_ATTEMPTS,
                key: Key::Pair("delivery_id", "attempt"),
                page: "SELECT delivery_id, attempt, at, duration_ms, status_code, error, \
                       sent_by FROM notification_attempts \
                       WHERE (delivery_id, attempt) > ($1, $2) \
                       ORDER BY delivery_id, attempt LIMIT $3",
            },
            ExportTable::NotifierCursor => Export {
                table: "notifier_cursor",
                columns: NOTIFIER_CURSOR,
                key: Key::Text("name"),
                page: "SELECT name, after_id, updated_at FROM notifier_cursor \
                       WHERE name > $1 ORDER BY name LIMIT $2",
            },
            ExportTable::Bans => Export {
                table: "bans",
                columns: BANS,
                key: Key::Text("id"),
                page: "SELECT id, address, hook_id, reason, failures, created_at, \
                       expires_at, lifted_at FROM bans WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::Workers => Export {
                table: "workers",
                columns: WORKERS,
                key: Key::Text("id"),
                page: "SELECT id, name, labels, slots, protocol, version, paused, \
                       registered_at, last_seen_at, offline FROM workers WHERE id > $1 \
                       ORDER BY id LIMIT $2",
            },
            ExportTable::Artifacts => Export {
                table: "artifacts",
                columns: ARTIFACTS,
                key: Key::Text("id"),
                page: "SELECT id, project_id, run_id, job_id, name, file_name, format, sha256, \
                       size, version, semver, metadata, created_at FROM artifacts \
                       WHERE id > $1 ORDER BY id LIMIT $2",
            },
            ExportTable::Replicas => Export {
                table: "replicas",
                columns: REPLICAS,
                key: Key::Text("owner"),
                page: "SELECT owner, url, seen_at FROM replicas WHERE owner > $1 \
                       ORDER BY owner LIMIT $2",
            },
            ExportTable::BuildSessions => Export {
                table: "build_sessions",
                columns: BUILD_SESSIONS,
                key: Key::Text("id"),
                page: "SELECT id, tree, slots, started_at, finished_at, built, failed, \
                       skipped, cached, cancelled FROM build_sessions WHERE id > $1 \
                       ORDER BY id LIMIT $2",
            },
            ExportTable::PackageBuilds => Export {
                table: "package_builds",
                columns: PACKAGE_BUILDS,
                key: Key::Text("id"),
                page: "SELECT id, session_id, origin, version, build_key, status, reason, \
                       started_at, finished_at, duration_ms, log_digest, log_size, log_tail, \
                       output_digest, output_size FROM package_builds WHERE id > $1 \
                       ORDER BY id LIMIT $2",
            },
        }
    }

    fn export_row(
        table: &'static str,
        columns: &[(&'static str, Col)],
        row: &DbRow,
    ) -> Result<Map<String, Value>, StoreError> {
        let mut out = Map::new();
        for &(column, kind) in columns {
            let value = match kind {
                Col::Int => {
                    get::<Option<i64>>(row, table, column)?.map_or(Value::Null, Value::from)
                }
                Col::Text => {
                    get::<Option<String>>(row, table, column)?.map_or(Value::Null, Value::String)
                }
                Col::Json => match get::<Option<String>>(row, table, column)? {
                    Some(text) => {
                        serde_json::from_str(&text).map_err(|e| decode(table, column, e))?
                    }
                    None => Value::Null,
                },
                Col::PackedJson(packed) => {
                    let text = crate::types::unpack_context(
                        get::<Option<String>>(row, table, column)?,
                        get::<Option<Vec<u8>>>(row, table, packed)?,
                        &format_args!("{table} row"),
                    )?;
                    match text {
                        Some(text) => {
                            serde_json::from_str(&text).map_err(|e| decode(table, column, e))?
                        }
                        None => Value::Null,
                    }
                }
            };
            out.insert(column.to_owned(), value);
        }
        Ok(out)
    }

    /// The key of the last row of a page, to continue after.
    fn key_of(key: Key, row: &Map<String, Value>) -> Option<ExportKey> {
        let text = |column: &str| row.get(column)?.as_str().map(str::to_owned);
        let int = |column: &str| row.get(column)?.as_i64();
        Some(match key {
            Key::Text(a) => ExportKey::Text(text(a)?),
            Key::Int(a) => ExportKey::Int(int(a)?),
            Key::Pair(a, b) => ExportKey::Pair(text(a)?, int(b)?),
            Key::Triple(a, b, c) => ExportKey::Triple(text(a)?, int(b)?, int(c)?),
        })
    }

    /// The tables counted by `database_stats`, with their row-count statements.
    const TABLES: &[(&str, &str)] = &[
        ("projects", "SELECT COUNT(*) AS n FROM projects"),
        ("runs", "SELECT COUNT(*) AS n FROM runs"),
        ("jobs", "SELECT COUNT(*) AS n FROM jobs"),
        ("steps", "SELECT COUNT(*) AS n FROM steps"),
        ("log_chunks", "SELECT COUNT(*) AS n FROM log_chunks"),
        ("events", "SELECT COUNT(*) AS n FROM events"),
        ("api_tokens", "SELECT COUNT(*) AS n FROM api_tokens"),
        ("deliveries", "SELECT COUNT(*) AS n FROM deliveries"),
        (
            "delivery_payloads",
            "SELECT COUNT(*) AS n FROM delivery_payloads",
        ),
        ("schedules", "SELECT COUNT(*) AS n FROM schedules"),
        ("schedule_fires", "SELECT COUNT(*) AS n FROM schedule_fires"),
        ("watches", "SELECT COUNT(*) AS n FROM watches"),
        ("watch_versions", "SELECT COUNT(*) AS n FROM watch_versions"),
        (
            "notification_receivers",
            "SELECT COUNT(*) AS n FROM notification_receivers",
        ),
        (
            "notification_deliveries",
            "SELECT COUNT(*) AS n FROM notification_deliveries",
        ),
        (
            "notification_attempts",
            "SELECT COUNT(*) AS n FROM notification_attempts",
        ),
        (
            "notifier_cursor",
            "SELECT COUNT(*) AS n FROM notifier_cursor",
        ),
        ("bans", "SELECT COUNT(*) AS n FROM bans"),
        ("build_sessions", "SELECT COUNT(*) AS n FROM build_sessions"),
        ("package_builds", "SELECT COUNT(*) AS n FROM package_builds"),
        ("workers", "SELECT COUNT(*) AS n FROM workers"),
        ("artifacts", "SELECT COUNT(*) AS n FROM artifacts"),
        ("replicas", "SELECT COUNT(*) AS n FROM replicas"),
    ];

    impl Backend {
        pub(crate) async fn queue(&self, limit: u32) -> Result<QueueSnapshot, StoreError> {
            let mut tx = self.begin_read().await?;
            let rows = sqlx::query(concat!(
                "SELECT j.id, j.run_id, j.project_id, p.name AS project_name, r.workflow, \
                 j.job_key, j.name, j.status, j.attempts, j.max_attempts, j.created_at, \
                 j.started_at, j.lease_owner, j.lease_expires_at \
                 FROM jobs AS j JOIN runs AS r ON r.id = j.run_id \
                 JOIN projects AS p ON p.id = j.project_id WHERE j.status IN ",
                queue_statuses!(),
                " ORDER BY j.created_at, j.run_id, j.seq LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(query("list the queue"))?;
            let jobs = rows.iter().map(queue_entry).collect::<Result<_, _>>()?;
            let counted = sqlx::query(concat!(
                "SELECT status, COUNT(*) AS n FROM jobs WHERE status IN ",
                queue_statuses!(),
                " GROUP BY status"
            ))
            .fetch_all(&mut *tx)
            .await
            .map_err(query("count the queue"))?;
            let counts = by_status("jobs", &counted, &QUEUE_STATUSES)?;
            tx.commit()
                .await
                .map_err(query("end a read of the queue"))?;
            Ok(QueueSnapshot { jobs, counts })
        }

        pub(crate) async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
            let mut tx = self.begin_read().await?;
            let counts = Self::counts_in(&mut tx).await?;
            tx.commit()
                .await
                .map_err(query("end a count of runs and jobs"))?;
            Ok(counts)
        }

        async fn counts_in(tx: &mut super::ReadTx) -> Result<StatusCounts, StoreError> {
            let runs = sqlx::query("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
                .fetch_all(&mut **tx)
                .await
                .map_err(query("count runs by status"))?;
            let jobs = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
                .fetch_all(&mut **tx)
                .await
                .map_err(query("count jobs by status"))?;
            Ok(StatusCounts {
                runs: by_status("runs", &runs, RunStatus::ALL)?,
                jobs: by_status("jobs", &jobs, JobStatus::ALL)?,
            })
        }

        pub(crate) async fn run_stats(
            &self,
            since: Date,
            today: Date,
        ) -> Result<RunStats, StoreError> {
            let mut tx = self.begin_read().await?;
            let counts = Self::counts_in(&mut tx).await?;

            let totals = sqlx::query(
                "SELECT r.project_id, p.name AS project_name, r.workflow, COUNT(*) AS runs, \
                 SUM(CASE WHEN r.status IN ('success', 'failure', 'cancelled') AND \
                 r.started_at IS NOT NULL AND r.finished_at IS NOT NULL THEN 1 ELSE 0 END) \
                 AS finished, SUM(CASE WHEN r.status = 'success' THEN 1 ELSE 0 END) AS \
                 succeeded FROM runs AS r JOIN projects AS p ON p.id = r.project_id \
                 GROUP BY r.project_id, p.name, r.workflow ORDER BY p.name, r.workflow",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(query("count runs by workflow"))?;
            // Nearest-rank percentiles: the value at rank ceil(p * n), in integer arithmetic
            // that both dialects compute alike.
            let percentiles = sqlx::query(concat!(
                "SELECT project_id, workflow, \
                 MAX(CASE WHEN rn = (n + 1) / 2 THEN ms END) AS p50, \
                 MAX(CASE WHEN rn = (95 * n + 99) / 100 THEN ms END) AS p95 \
                 FROM (SELECT project_id, workflow, finished_at - started_at AS ms, \
                 ROW_NUMBER() OVER (PARTITION BY project_id, workflow \
                 ORDER BY finished_at - started_at) AS rn, \
                 COUNT(*) OVER (PARTITION BY project_id, workflow) AS n \
                 FROM runs WHERE ",
                finished_runs!(),
                ") AS d GROUP BY project_id, workflow"
            ))
            .fetch_all(&mut *tx)
            .await
            .map_err(query("compute run durations by workflow"))?;
            let mut workflows = Vec::with_capacity(totals.len());
            let mut index = HashMap::with_capacity(totals.len());
            for row in &totals {
                const T: &str = "runs";
                // SUM is bigint on PostgreSQL (of integers) and an integer on SQLite.
                let project: String = get(row, T, "project_id")?;
                let workflow: String = get(row, T, "workflow")?;
                index.insert((project.clone(), workflow.clone()), workflows.len());
                workflows.push(WorkflowStats {
                    project: parse(T, "project_id", &project)?,
                    project_name: get(row, T, "project_name")?,
                    workflow,
                    runs: get(row, T, "runs")?,
                    finished: get::<Option<i64>>(row, T, "finished")?.unwrap_or(0),
                    succeeded: get::<Option<i64>>(row, T, "succeeded")?.unwrap_or(0),
                    p50_ms: None,
                    p95_ms: None,
                });
            }
            for row in &percentiles {
                const T: &str = "runs";
                let project: String = get(row, T, "project_id")?;
                let workflow: String = get(row, T, "workflow")?;
                if let Some(w) = index
                    .get(&(project, workflow))
                    .and_then(|&i| workflows.get_mut(i))
                {
                    w.p50_ms = get(row, T, "p50")?;
                    w.p95_ms = get(row, T, "p95")?;
                }
            }

            let first_day = epoch_day(since);
            let days = sqlx::query(
                "SELECT created_at / 86400000 AS day, COUNT(*) AS n FROM runs \
                 WHERE created_at >= $1 GROUP BY created_at / 86400000",
            )
            .bind(first_day * DAY_MS)
            .fetch_all(&mut *tx)
            .await
            .map_err(query("count runs by day"))?;
            tx.commit()
                .await
                .map_err(query("end a read of run statistics"))?;
            let mut per_day = Vec::new();
            let mut day = since;
            while day <= today {
                per_day.push((day, 0));
                match day.tomorrow() {
                    Ok(next) => day = next,
                    Err(_) => break,
                }
            }
            for row in &days {
                let d: i64 = get(row, "runs", "day")?;
                let n: i64 = get(row, "runs", "n")?;
                if let Some(slot) = usize::try_from(d - first_day)
                    .ok()
                    .and_then(|i| per_day.get_mut(i))
                {
                    slot.1 += n;
                }
            }
            Ok(RunStats {
                counts,
                workflows,
                per_day,
            })
        }

        pub(crate) async fn database_stats(&self) -> Result<DatabaseStats, StoreError> {
            let mut tables = Vec::with_capacity(TABLES.len());
            for &(name, count) in TABLES {
                let rows: i64 = sqlx::query_scalar(count)
                    .fetch_one(&self.reader)
                    .await
                    .map_err(query("count a table's rows"))?;
                tables.push(TableStats {
                    name,
                    rows,
                    bytes: self.table_bytes(name).await?,
                });
            }
            let size_sql = if is_postgres() {
                "SELECT pg_database_size(current_database())"
            } else {
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            };
            let size_bytes: Option<i64> = sqlx::query_scalar(size_sql)
                .fetch_one(&self.reader)
                .await
                .map_err(query("measure the database"))?;
            Ok(DatabaseStats {
                backend: if is_postgres() { "postgres" } else { "sqlite" },
                tables,
                size_bytes,
            })
        }

        /// A table's bytes with its indexes. SQLite's `dbstat` table is compiled into the
        /// bundled library; a library without it has no answer (`None`), not an error.
        async fn table_bytes(&self, table: &str) -> Result<Option<i64>, StoreError> {
            if is_postgres() {
                return sqlx::query_scalar("SELECT pg_total_relation_size(to_regclass($1))")
                    .bind(table)
                    .fetch_one(&self.reader)
                    .await
                    .map_err(query("measure a table"));
            }
            let found = sqlx::query_scalar::<_, Option<i64>>(
                "SELECT SUM(pgsize) FROM dbstat WHERE name = $1 OR name IN \
                 (SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1)",
            )
            .bind(table)
            .fetch_one(&self.reader)
            .await;
            match found {
                Ok(bytes) => Ok(bytes),
                Err(e) => {
                    tracing::debug!(error = %e, "SQLite has no dbstat: table sizes unknown");
                    Ok(None)
                }
            }
        }

        pub(crate) async fn export_page(
            &self,
            table: ExportTable,
            after: Option<&ExportCursor>,
            limit: u32,
        ) -> Result<ExportPage, StoreError> {
            let export = export_of(table);
            let limit = limit.max(1);
            let q = sqlx::query(export.page);
            // Before the first row: below every key (ids and names are never empty).
            let q = match (export.key, after.map(|c| &c.0)) {
                (Key::Triple(..), Some(ExportKey::Triple(a, b, c))) => {
                    q.bind(a.clone()).bind(*b).bind(*c)
                }
                (Key::Triple(..), _) => q.bind(String::new()).bind(i64::MIN).bind(i64::MIN),
                (Key::Pair(..), Some(ExportKey::Pair(a, b))) => q.bind(a.clone()).bind(*b),
                (Key::Pair(..), _) => q.bind(String::new()).bind(i64::MIN),
                (Key::Int(_), Some(ExportKey::Int(id))) => q.bind(*id),
                (Key::Int(_), _) => q.bind(i64::MIN),
                (Key::Text(_), Some(ExportKey::Text(id))) => q.bind(id.clone()),
                (Key::Text(_), _) => q.bind(String::new()),
            };
            let rows = q
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await
                .map_err(query("read a page of an export"))?;
            let rows = rows
                .iter()
                .map(|row| export_row(export.table, export.columns, row))
                .collect::<Result<Vec<_>, _>>()?;
            let next = if rows.len() == limit as usize {
                rows.last()
                    .and_then(|last| key_of(export.key, last))
                    .map(ExportCursor)
            } else {
                None
            };
            Ok(ExportPage { rows, next })
        }
    }

    /// Days since 1970-01-01 (UTC).
    fn epoch_day(date: Date) -> i64 {
        let start = date
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        start.as_millisecond().div_euclid(DAY_MS)
    }
}
