-- Project webhooks (`POST /hooks/{hook_id}`). Keep in step with ../sqlite/0006_hooks.sql.
-- `hook_provider` names the signature scheme the hook verifies (github, gitlab, gitea,
-- generic); `hook_secret` is the secret it verifies with, NULL for projects made before this
-- migration or by `kiln run` (their hooks refuse every delivery until a secret is rotated in).
-- The secret is stored as it is so that it can verify: encryption at rest comes with the
-- secrets store (DESIGN.md "Secrets and logs"), and no route ever returns it after the answer
-- that creates or rotates it.
ALTER TABLE projects ADD COLUMN hook_provider TEXT NOT NULL DEFAULT 'github';
ALTER TABLE projects ADD COLUMN hook_secret TEXT;

-- One row per verified delivery. `delivery_id` is the provider's (`X-GitHub-Delivery`, …):
-- unique per project, so a redelivery is told apart from a new event. `status` is accepted
-- (recorded, not processed yet), processed, ignored or failed, with `reason` for the last two
-- and `run_ids` (a JSON array) the runs it started. `payload` is the body as received
-- (bounded by the server's hook body limit; `size` is its length in bytes), kept so that a
-- server stopping before it processed the delivery can do it at its next start.
CREATE TABLE deliveries (
    id            TEXT    PRIMARY KEY NOT NULL,
    project_id    TEXT    NOT NULL REFERENCES projects (id),
    provider      TEXT    NOT NULL,
    delivery_id   TEXT    NOT NULL,
    event         TEXT    NOT NULL,
    received_at   BIGINT  NOT NULL,
    status        TEXT    NOT NULL,
    reason        TEXT,
    run_ids       TEXT    NOT NULL,
    payload       BYTEA   NOT NULL,
    size          BIGINT  NOT NULL,
    processed_at  BIGINT,
    UNIQUE (project_id, delivery_id)
);
CREATE INDEX deliveries_by_project ON deliveries (project_id, id);
CREATE INDEX deliveries_by_status ON deliveries (status, id);
