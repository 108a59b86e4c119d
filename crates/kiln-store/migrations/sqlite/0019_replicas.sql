-- The servers sharing this database. Keep in step with ../postgres/0019_replicas.sql. Each
-- `kiln serve` notes itself here every few seconds (its engine's owner id and the URL clients
-- reach it at) and removes itself when it stops; remote workers learn the other replicas from
-- the one they talk to. A row not renewed for a while is a replica that died.
CREATE TABLE replicas (
    owner    TEXT    NOT NULL PRIMARY KEY,
    url      TEXT    NOT NULL,
    seen_at  INTEGER  NOT NULL
);
