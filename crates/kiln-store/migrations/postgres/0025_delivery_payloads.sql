-- A delivery's body in a table of its own, beside its row: recording how a delivery was
-- processed (status, reason, runs) then rewrites a row of a few hundred bytes, not one
-- holding kilobytes of payload (with SQLite, a page of its own for each delivery). The
-- payload is stored as before (see `crate::hooks::pack_payload`); a delivery whose body was
-- pruned has no row here. Keep in step with ../sqlite/0025_delivery_payloads.sql.
CREATE TABLE delivery_payloads (
    id       TEXT  PRIMARY KEY NOT NULL REFERENCES deliveries (id),
    payload  BYTEA NOT NULL
);
INSERT INTO delivery_payloads (id, payload)
    SELECT id, payload FROM deliveries WHERE length(payload) > 0;
ALTER TABLE deliveries DROP COLUMN payload;
