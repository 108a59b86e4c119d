-- Remote workers (`kiln worker`). Keep in step with ../sqlite/0014_workers.sql. A worker
-- registers once per start and is heard from at each claim and heartbeat (`last_seen_at`);
-- it is offline when not heard from for longer than a lease lasts. The jobs it holds are the
-- jobs whose `lease_owner` is `worker:<id>`. `paused` (0 or 1): a person stopped it from
-- getting new jobs.
CREATE TABLE workers (
    id             TEXT    NOT NULL PRIMARY KEY,
    name           TEXT    NOT NULL,
    labels         TEXT    NOT NULL,
    slots          BIGINT NOT NULL,
    protocol       BIGINT NOT NULL,
    version        TEXT    NOT NULL,
    paused         BIGINT NOT NULL,
    registered_at  BIGINT NOT NULL,
    last_seen_at   BIGINT NOT NULL
);
