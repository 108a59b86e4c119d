-- Who is processing an accepted webhook delivery, until when. Keep in step with
-- ../sqlite/0011_delivery_claims.sql. Several servers (replicas, or one restarting) may see
-- the same `accepted` delivery: the one whose conditional update sets the claim processes it;
-- the others leave it alone until the claim expires (a processor that died).
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
ALTER TABLE deliveries ADD COLUMN claim_expires_at BIGINT;
