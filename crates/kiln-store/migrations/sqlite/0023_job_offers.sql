-- Keep in step with ../postgres/0023_job_offers.sql.
-- When the replica driving a job's run offered it to claims from the shared queue (unix ms):
-- a remote worker may then take it through any replica (`Claim::offered_only`). NULL: its
-- driver keeps it (a package build for its own pool, a max-parallel sibling held back, a job
-- not ready yet).
ALTER TABLE jobs ADD COLUMN offered_at BIGINT;
CREATE INDEX jobs_offered ON jobs (created_at, run_id, seq)
    WHERE status = 'queued' AND offered_at IS NOT NULL;
