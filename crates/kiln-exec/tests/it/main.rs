//! Integration tests of kiln-exec: real processes, real files, one job per test.
//!
//! Jobs are built from the workflow model directly (no YAML), run in a temporary workspace,
//! and judged by their events and outcome. Timing assertions are deliberately loose: the
//! machine may be a loaded 2-core box.

mod common;

mod actions;
mod control;
mod env;
mod logs;
mod sandbox;
mod shells;
