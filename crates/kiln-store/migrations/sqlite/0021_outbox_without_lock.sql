-- Keep in step with ../postgres/0021_outbox_without_lock.sql, which lets PostgreSQL writers
-- append events without queueing for one another. An embedded store has one writer: nothing
-- to do.
SELECT 1;
