//! The workflow parser (to be written).

use super::{Action, Diagnostics, Workflow};

/// Parse one workflow file.
pub fn parse_workflow(_file: &str, _source: &str) -> Result<Workflow, Diagnostics> {
    Err(Diagnostics::default())
}

/// Parse one composite action file.
pub fn parse_action(_file: &str, _source: &str) -> Result<Action, Diagnostics> {
    Err(Diagnostics::default())
}
