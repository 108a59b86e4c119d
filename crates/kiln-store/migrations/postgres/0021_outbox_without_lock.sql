-- The outbox without a lock (see backend/postgres.rs). Keep in step with
-- ../sqlite/0021_outbox_without_lock.sql. Readers no longer filter events by their
-- transaction's age, so `events.xid` and its index go: they only cost a write per event,
-- and both folders now make the same schema. The notification moves
-- out of the writers' transactions: a `NOTIFY` takes a database-wide lock at commit, which
-- queued every writer behind the others; each process now sends one after a burst of its
-- commits instead.
DROP TRIGGER events_notify ON events;
DROP FUNCTION kiln_events_notify();
DROP INDEX events_by_xid;
ALTER TABLE events DROP COLUMN xid;
