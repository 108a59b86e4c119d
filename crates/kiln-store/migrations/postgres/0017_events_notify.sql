-- Wake-ups across replicas. Keep in step with ../sqlite/0017_events_notify.sql (a no-op: an
-- embedded store has one process). Every statement that appends to the outbox notifies the
-- channel `kiln_events_<schema>` (delivered at commit, one per transaction however many
-- statements), so that another replica's event readers need not wait for their next poll.
-- Notifications are lost while a listener is disconnected: readers still poll.
CREATE FUNCTION kiln_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln_events_' || current_schema(), '');
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_events_notify();
