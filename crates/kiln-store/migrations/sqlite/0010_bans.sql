-- Webhook senders banned for failing verification too often (DESIGN.md "Security model").
-- Keep in step with ../postgres/0010_bans.sql. `hook_id` NULL: banned from every hook (for
-- scanning unknown hook ids). A ban ends at `expires_at`, or when an admin lifts it
-- (`lifted_at`); its row stays as the record of what happened.
CREATE TABLE bans (
    id           TEXT    NOT NULL PRIMARY KEY,
    address      TEXT    NOT NULL,
    hook_id      TEXT,
    reason       TEXT    NOT NULL,
    failures     INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    lifted_at    INTEGER
);
CREATE INDEX bans_address ON bans (address, expires_at);
