//! kiln-core's integration tests: whole workflow files through the public API — invalid
//! files with their full rendered diagnostics (snapshots), and the corpus of real workflows.

mod corpus;
mod invalid;
mod robust;
