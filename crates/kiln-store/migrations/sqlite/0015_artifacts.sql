-- Artifacts a job kept. Keep in step with ../postgres/0015_artifacts.sql. The bytes live in
-- the artifact object store under `sha256/<hex>` (stored once however many rows name them);
-- a row is one artifact of one run, its name unique in the run. `metadata` is the JSON of
-- kiln_proto::ArtifactMeta; `version` and `semver` are copied out of it for filters.
CREATE TABLE artifacts (
    id          TEXT    NOT NULL PRIMARY KEY,
    project_id  TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    job_id      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    file_name   TEXT    NOT NULL,
    format      TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    size        INTEGER  NOT NULL,
    version     TEXT,
    semver      TEXT,
    metadata    TEXT    NOT NULL,
    created_at  INTEGER  NOT NULL
);
CREATE UNIQUE INDEX artifacts_run_name ON artifacts (run_id, name);
CREATE INDEX artifacts_name ON artifacts (name, id);
CREATE INDEX artifacts_project ON artifacts (project_id, id);
