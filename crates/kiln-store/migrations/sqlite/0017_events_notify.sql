-- Keep in step with ../postgres/0017_events_notify.sql, which makes PostgreSQL notify other
-- replicas of new events. An embedded store has one process: nothing to do.
SELECT 1;
