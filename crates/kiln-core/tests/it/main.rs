//! kiln-core's integration tests: whole workflow files through the public API — invalid
//! files with their full rendered diagnostics (snapshots), the corpus of real workflows, and
//! package trees on disk.

mod corpus;
mod invalid;
mod packages;
mod robust;
