-- Webhook senders banned for failing verification too often (DESIGN.md "Security model").
-- Keep in step with ../sqlite/0010_bans.sql. `hook_id` NULL: banned from every hook (for
-- scanning unknown hook ids). A ban ends at `expires_at`, or when an admin lifts it
-- (`lifted_at`); its row stays as the record of what happened.
CREATE TABLE bans (
    id           TEXT    NOT NULL PRIMARY KEY,
    address      TEXT    NOT NULL,
    hook_id      TEXT,
    reason       TEXT    NOT NULL,
    failures     BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    lifted_at    BIGINT
);
CREATE INDEX bans_address ON bans (address, expires_at);
