-- Which server drives each unfinished run. Keep in step with ../sqlite/0016_run_drivers.sql.
-- A run is driven (its jobs decided, queued, leased) by one engine at a time: the one whose
-- owner id is `driver`, until `driver_until` (unix ms), which that engine keeps pushing
-- forward while it runs. When it stops doing so (the replica died), any replica may take the
-- run over. NULL: a run from before this migration, which any engine may take.
ALTER TABLE runs ADD COLUMN driver TEXT;
ALTER TABLE runs ADD COLUMN driver_until BIGINT;
