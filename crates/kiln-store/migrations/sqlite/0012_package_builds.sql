-- Package trees (`kiln build`, DESIGN.md "Package trees"). Keep in step with
-- ../postgres/0012_package_builds.sql.
--
-- One row per `kiln build` invocation (or per workflow job that builds a tree): which tree,
-- how many slots, and once it ends what it did. The counts are the builder's summary, zero
-- until `finished_at` is set; a session whose process died stays unfinished.
CREATE TABLE build_sessions (
    id           TEXT    PRIMARY KEY NOT NULL,
    tree         TEXT    NOT NULL,
    slots        INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    built        INTEGER NOT NULL,
    failed       INTEGER NOT NULL,
    skipped      INTEGER NOT NULL,
    cached       INTEGER NOT NULL,
    cancelled    INTEGER NOT NULL
);
CREATE INDEX build_sessions_by_start ON build_sessions (started_at);

-- Every package build ever recorded: the history `kiln build history ORIGIN` shows and the
-- cache `kiln build` looks keys up in. Rows are only ever inserted.
-- `build_key`: the package's cache key (SHA-256, lowercase hex). `status`: `success`,
-- `failure`, `skipped` (a dependency failed: `reason` names it), `cancelled`, or `cached`
-- (not run: the output of an earlier success with the same key was reused).
-- `log_digest`/`log_size`: the build's log in the content-addressed blob store, with its
-- last lines in `log_tail` for summaries. `output_digest`/`output_size`: the package's
-- `$KILN_OUT` packed as a tar, content-addressed; present exactly for `success` and `cached`.
CREATE TABLE package_builds (
    id             TEXT    PRIMARY KEY NOT NULL,
    session_id     TEXT    NOT NULL REFERENCES build_sessions (id),
    origin         TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    build_key      TEXT    NOT NULL,
    status         TEXT    NOT NULL
        CHECK (status IN ('success', 'failure', 'skipped', 'cancelled', 'cached')),
    reason         TEXT,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    log_digest     TEXT,
    log_size       INTEGER,
    log_tail       TEXT    NOT NULL,
    output_digest  TEXT,
    output_size    INTEGER,
    CHECK ((status IN ('success', 'cached')) = (output_digest IS NOT NULL))
);
-- The latest build of an origin, and its history newest first (read backwards).
CREATE INDEX package_builds_by_origin ON package_builds (origin, finished_at, id);
-- The cache lookup: successful builds by key.
CREATE INDEX package_builds_cache_lookup ON package_builds (build_key)
    WHERE status = 'success';
-- Build-time percentiles of successful builds without sorting the history.
CREATE INDEX package_builds_success_by_duration ON package_builds (duration_ms)
    WHERE status = 'success';
-- A session's builds.
CREATE INDEX package_builds_by_session ON package_builds (session_id);
