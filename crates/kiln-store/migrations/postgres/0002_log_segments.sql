-- Log chunks of one commit share one blob (a segment): writing one file per tiny chunk cost
-- more than the whole transaction. `blob_offset` is where the chunk starts inside its blob.
ALTER TABLE log_chunks ADD COLUMN blob_offset BIGINT NOT NULL DEFAULT 0;
