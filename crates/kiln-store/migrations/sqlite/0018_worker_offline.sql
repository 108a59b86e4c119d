-- Keep in step with ../postgres/0018_worker_offline.sql. `offline` (0 or 1): the worker was
-- announced offline (`worker.status`) after going silent for longer than a lease; cleared,
-- with an announcement, when it is heard from again. Each change is announced once however
-- many replicas notice it.
ALTER TABLE workers ADD COLUMN offline INTEGER NOT NULL DEFAULT 0;
