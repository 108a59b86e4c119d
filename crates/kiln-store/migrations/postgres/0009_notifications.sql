-- Outbound notifications. Keep in step with ../sqlite/0009_notifications.sql.
-- A receiver is a URL a project names, with the event patterns it wants (a JSON array) and
-- the secret its deliveries are signed with. `from_event` is the outbox head when it was
-- created: it is sent only what happens after. Removing one sets `removed_at` (its
-- deliveries stay listed; pending ones are cancelled).
CREATE TABLE notification_receivers (
    id          TEXT    PRIMARY KEY NOT NULL,
    project_id  TEXT    NOT NULL REFERENCES projects (id),
    url         TEXT    NOT NULL,
    events      TEXT    NOT NULL,
    secret      TEXT    NOT NULL,
    from_event  BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    removed_at  BIGINT
);
CREATE INDEX notification_receivers_project ON notification_receivers (project_id);

-- One row per (receiver, event) that matched: the UNIQUE pair is what keeps a notifier that
-- reads the outbox again (a restart, a second replica) from creating it twice. `payload` is
-- the body, fixed when the row is made so that every attempt sends the same bytes.
-- `status`: pending, delivered, failed, cancelled. A sender claims a due row by setting
-- `claimed_by`, `claim_expires_at` and `claim_token` + 1 in one conditional UPDATE; only the
-- holder of the current token may record the attempt. `attempts` counts every attempt,
-- `retry_base` is `attempts` when a person last asked for a retry (backoff counts from it).
CREATE TABLE notification_deliveries (
    id               TEXT    PRIMARY KEY NOT NULL,
    receiver_id      TEXT    NOT NULL REFERENCES notification_receivers (id),
    project_id       TEXT    NOT NULL REFERENCES projects (id),
    event_id         BIGINT  NOT NULL,
    event_type       TEXT    NOT NULL,
    run_id           TEXT,
    payload          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL,
    retry_base       BIGINT  NOT NULL,
    next_attempt_at  BIGINT ,
    claimed_by       TEXT,
    claim_expires_at BIGINT ,
    claim_token      BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    UNIQUE (receiver_id, event_id)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at);
CREATE INDEX notification_deliveries_project ON notification_deliveries (project_id, created_at);

-- Every attempt: the receiver's status code or the error, how long it took, who sent it.
CREATE TABLE notification_attempts (
    delivery_id  TEXT    NOT NULL REFERENCES notification_deliveries (id),
    attempt      BIGINT  NOT NULL,
    at           BIGINT  NOT NULL,
    duration_ms  BIGINT  NOT NULL,
    status_code  BIGINT ,
    error        TEXT,
    sent_by      TEXT    NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- How far the notifier has read the outbox: advanced in the transaction that records the
-- deliveries of the events it read, never before.
CREATE TABLE notifier_cursor (
    name        TEXT    PRIMARY KEY NOT NULL,
    after_id    BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
