-- Projects over the API (`/api/v1/projects`). Keep in step with ../postgres/0005_projects.sql.
-- A project's kind is not stored: it follows from `source` (an absolute path is a folder,
-- anything else a git URL), the rule the engine reads sources by.
-- A git project's mirror is fetched in the background: `fetch_requested_at` is when the
-- latest fetch was asked for, `fetched_at` when the latest one ended, with `fetch_error` set
-- when it failed and `default_branch`/`head_sha` its findings when it succeeded.
-- Removing a project archives it (`archived_at`): its row, name, runs and logs stay.
ALTER TABLE projects ADD COLUMN default_branch TEXT;
ALTER TABLE projects ADD COLUMN head_sha TEXT;
ALTER TABLE projects ADD COLUMN fetch_requested_at INTEGER;
ALTER TABLE projects ADD COLUMN fetched_at INTEGER;
ALTER TABLE projects ADD COLUMN fetch_error TEXT;
ALTER TABLE projects ADD COLUMN updated_at INTEGER;
ALTER TABLE projects ADD COLUMN archived_at INTEGER;
