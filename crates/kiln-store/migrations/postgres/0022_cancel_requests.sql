-- Keep in step with ../sqlite/0022_cancel_requests.sql.
-- A cancellation asked of a replica that does not drive the run (the API behind a load
-- balancer, or a run whose driver died): when it was asked (unix ms). The replica driving the
-- run finds it within a second and cancels there; one taking a run over finds it as well.
ALTER TABLE runs ADD COLUMN cancel_requested_at BIGINT;
CREATE INDEX runs_cancel_requested ON runs (driver) WHERE cancel_requested_at IS NOT NULL;
