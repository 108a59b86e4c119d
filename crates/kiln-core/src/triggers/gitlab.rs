//! GitLab (stub, filled in below).

use serde_json::Value;

use super::{HookEvent, NormalizeError};

pub(super) fn normalize(
    _event: &str,
    _payload: &Value,
) -> Result<Option<HookEvent>, NormalizeError> {
    Ok(None)
}
