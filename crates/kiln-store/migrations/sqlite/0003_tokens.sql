-- API tokens (DESIGN.md "Security model"). Only the SHA-256 of a token is stored (lowercase
-- hex); the plaintext is shown once, at creation. A revoked token keeps its row (history,
-- and so its hash can never be taken again). Keep in step with ../postgres/0003_tokens.sql.

CREATE TABLE api_tokens (
    id            TEXT    PRIMARY KEY NOT NULL,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    project_id    TEXT    REFERENCES projects (id),
    hash          TEXT    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
