//! The `${{ }}` expression language of GitHub Actions, as GitHub documents it.
//!
//! API CONTRACT (the expression helper fills in the bodies; signatures are shared by the
//! workflow parser, the planner and the executor):
//! - [`parse`] an expression (the text between `${{` and `}}`) into an [`Expr`];
//! - [`Template::parse`] a string that may hold several `${{ }}` pieces;
//! - [`evaluate`] / [`render`] / [`eval_value`] / [`eval_condition`] against a [`Scope`].

use serde_json::{Map, Value};

/// A parse or evaluation error; `offset` is the byte offset in the expression source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
    pub offset: usize,
}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    _todo: (),
}

/// A string with zero or more `${{ }}` pieces.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    _todo: (),
}

/// Computes `hashFiles(...)`: SHA-256 over the files matching the patterns, `""` when none.
pub trait FileHasher {
    fn hash_files(&self, patterns: &[String]) -> Result<String, String>;
}

/// What the status functions see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobState {
    /// A previous step (or, for a job's `if`, a needed job) failed.
    pub failed: bool,
    /// The run was cancelled.
    pub cancelled: bool,
}

/// Everything an expression may read.
pub struct Scope<'a> {
    /// Context name → value: `github`, `env`, `vars`, `secrets`, `inputs`, `matrix`, `needs`,
    /// `steps`, `job`, `runner`, `strategy`. A context that is absent reads as null... unless
    /// the name is not a context at all, which is an error.
    pub contexts: &'a Map<String, Value>,
    pub state: JobState,
    pub hasher: Option<&'a dyn FileHasher>,
}
