//! The job graph: validation, expansion for a dry run, critical-path priorities.
