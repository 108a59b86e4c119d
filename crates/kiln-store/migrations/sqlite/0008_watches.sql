-- Watches (`on.watch`, a kiln extension). Keep in step with ../postgres/0008_watches.sql.
-- One row per watch entry of a project's workflow file, keyed by (project, file, name).
-- `source` is the source spec as JSON (`{"kind":"pypi","package":"requests"}`);
-- `enabled` is 0 once the entry left its file (the row and its versions stay).
-- `next_poll_at` is when a poller may poll it next: a poller claims a due watch by moving
-- it on (a lease), so replicas never poll one watch at the same time. `polled` is 1 after
-- the first successful poll (a first poll records versions without runs). `etag` is the
-- source's last ETag (sent as If-None-Match); `failures` counts failed polls in a row
-- (the backoff), `last_error` says why the last one failed.
CREATE TABLE watches (
    id              TEXT    PRIMARY KEY NOT NULL,
    project_id      TEXT    NOT NULL REFERENCES projects (id),
    workflow        TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    version_req     TEXT,
    filter          TEXT,
    known_versions  TEXT,
    interval_secs INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    polled  INTEGER NOT NULL,
    next_poll_at INTEGER NOT NULL,
    last_poll_at INTEGER,
    etag            TEXT,
    last_error      TEXT,
    failures   INTEGER NOT NULL,
    last_run_id     TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (project_id, workflow, name)
);
CREATE INDEX watches_next_poll ON watches (next_poll_at);

-- Every version a watch recorded, once: the unique (watch, version) pair is what makes a
-- version start at most one run, whatever restarts or replicas do. A version is inserted
-- before its run starts, in the poll's transaction; `outcome`: `seen` (recorded without
-- a run: a first poll, or listed in known-versions), `claimed` (its run is being started;
-- one left so by a crash is never started again), `started` (`run_id`), `failed`
-- (`error` says why no run started).
CREATE TABLE watch_versions (
    id          TEXT    PRIMARY KEY NOT NULL,
    watch_id    TEXT    NOT NULL REFERENCES watches (id),
    version     TEXT    NOT NULL,
    source_uri  TEXT,
    found_at INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    run_id      TEXT,
    error       TEXT,
    UNIQUE (watch_id, version)
);
