-- A run's context LZ4-compressed (lz4_flex's block format, its uncompressed length first as
-- 4 little-endian bytes), stored instead of `context` when that is smaller: a webhook's
-- context is its payload, kilobytes of JSON that shrink about 4×, written with every run.
-- At most one of `context` and `context_packed` is set. Keep in step with
-- ../postgres/0024_run_context_packed.sql.
ALTER TABLE runs ADD COLUMN context_packed BLOB;
