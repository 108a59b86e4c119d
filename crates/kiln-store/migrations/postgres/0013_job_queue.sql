-- The job queue that remote workers and replicas claim from. Keep in step with
-- ../sqlite/0013_job_queue.sql. `labels` is the job's `runs-on` as a JSON array of strings:
-- a claimer takes a job only when it has every one of them. The partial index holds only the
-- queued jobs, in the order they are claimed (oldest job first, then its run's job order).
ALTER TABLE jobs ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
CREATE INDEX jobs_queue ON jobs (created_at, run_id, seq) WHERE status = 'queued';
