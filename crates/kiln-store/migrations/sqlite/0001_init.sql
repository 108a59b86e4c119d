-- kiln's first schema (SQLite dialect). Forward-only: never edit a released migration, add one.
-- Keep in step with ../postgres/0001_init.sql: same tables, same columns (the test suite checks).
-- ids are uuid strings, timestamps unix milliseconds, JSON as text, statuses as their spelling.

CREATE TABLE projects (
    id          TEXT    PRIMARY KEY NOT NULL,
    name        TEXT    NOT NULL UNIQUE,
    source      TEXT    NOT NULL,
    hook_id     TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE runs (
    id             TEXT    PRIMARY KEY NOT NULL,
    project_id     TEXT    NOT NULL REFERENCES projects (id),
    workflow       TEXT    NOT NULL,
    workflow_name  TEXT    NOT NULL,
    run_number     INTEGER NOT NULL,
    run_attempt    INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    event          TEXT    NOT NULL,
    git_ref        TEXT    NOT NULL,
    sha            TEXT    NOT NULL,
    inputs         TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    UNIQUE (project_id, workflow, run_number, run_attempt)
);
CREATE INDEX runs_by_project ON runs (project_id, id);
CREATE INDEX runs_by_status ON runs (status, id);

-- `seq` is the declaration/creation order within the run. The lease columns are the fencing
-- state of DESIGN.md "Leases"; `lease_token` survives release so a late holder is told it is
-- stale. `log_length` is the current attempt's log length (reset at each grant).
CREATE TABLE jobs (
    id                TEXT    PRIMARY KEY NOT NULL,
    run_id            TEXT    NOT NULL REFERENCES runs (id),
    project_id        TEXT    NOT NULL REFERENCES projects (id),
    seq               INTEGER NOT NULL,
    job_key           TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    matrix            TEXT    NOT NULL,
    needs             TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    max_attempts      INTEGER NOT NULL,
    lease_owner       TEXT,
    lease_token       INTEGER NOT NULL,
    lease_expires_at  INTEGER,
    log_length        INTEGER NOT NULL,
    outputs           TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    UNIQUE (run_id, seq)
);
CREATE INDEX jobs_by_status ON jobs (status);
CREATE INDEX jobs_by_lease_expiry ON jobs (lease_expires_at);
CREATE INDEX jobs_by_lease_owner ON jobs (lease_owner);

-- Steps are kept per attempt (history); reads show the job's latest attempt.
CREATE TABLE steps (
    job_id       TEXT    NOT NULL REFERENCES jobs (id),
    attempt      INTEGER NOT NULL,
    idx          INTEGER NOT NULL,
    name         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    outputs      TEXT    NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    PRIMARY KEY (job_id, attempt, idx)
);

-- The bytes live in the blob store under `blob_key`; this is the index over them.
CREATE TABLE log_chunks (
    job_id       TEXT    NOT NULL REFERENCES jobs (id),
    attempt      INTEGER NOT NULL,
    byte_offset  INTEGER NOT NULL,
    length       INTEGER NOT NULL,
    step         INTEGER NOT NULL,
    blob_key     TEXT    NOT NULL,
    PRIMARY KEY (job_id, attempt, byte_offset)
);

-- The outbox. AUTOINCREMENT: ids are never reused, and with SQLite's single writer they
-- commit in id order, so readers may resume after any id they have seen.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    project_id  TEXT,
    run_id      TEXT,
    job_id      TEXT,
    data        TEXT    NOT NULL
);
