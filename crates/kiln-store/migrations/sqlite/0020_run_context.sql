-- What a run was triggered with beyond its columns: the event payload (`github.event`) and
-- the `github` fields the trigger laid over the defaults (a webhook's actor, head and base
-- refs, …), as JSON `{"payload": …, "github": {…}}`. Keep in step with
-- ../postgres/0020_run_context.sql. Read back whenever an engine drives the run on (a restart,
-- a replica taking over, a retry), so its jobs see the event they were started by. NULL for
-- runs made before this column existed.
ALTER TABLE runs ADD COLUMN context TEXT;
