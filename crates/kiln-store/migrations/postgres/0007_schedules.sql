-- Schedules (`on.schedule`). Keep in step with ../sqlite/0007_schedules.sql.
-- One row per schedule entry of a project's workflow file, keyed by (project, file, index in
-- the file's list) so that a stopped schedule stays stopped when the files are read again.
-- `next_fire_at` is the next fire (NULL: stopped, removed, or the pattern never fires
-- again); `removed_at` is set when the entry left its file (the row and its fires stay).
CREATE TABLE schedules (
    id             TEXT    PRIMARY KEY NOT NULL,
    project_id     TEXT    NOT NULL REFERENCES projects (id),
    workflow       TEXT    NOT NULL,
    idx            BIGINT  NOT NULL,
    cron           TEXT    NOT NULL,
    timezone       TEXT    NOT NULL,
    catch_up       TEXT    NOT NULL,
    stopped_at     BIGINT,
    removed_at     BIGINT,
    next_fire_at   BIGINT,
    last_fired_at  BIGINT,
    last_run_id    TEXT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    UNIQUE (project_id, workflow, idx)
);
CREATE INDEX schedules_next_fire ON schedules (next_fire_at);

-- Every fire a scheduler claimed. A claim inserts (schedule, fire time) in the transaction
-- that advances the schedule's `next_fire_at`; the unique pair is what keeps two replicas
-- from running one fire twice. `outcome`: `claimed` (a run is being started), `started`
-- (`run_id` is its run), `skipped` (missed while no server ran, `catch-up: none`),
-- `failed` (`error` says why no run started).
CREATE TABLE schedule_fires (
    id           TEXT    PRIMARY KEY NOT NULL,
    schedule_id  TEXT    NOT NULL REFERENCES schedules (id),
    fire_at      BIGINT  NOT NULL,
    claimed_at   BIGINT  NOT NULL,
    claimed_by   TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    run_id       TEXT,
    error        TEXT,
    UNIQUE (schedule_id, fire_at)
);
