//! The envelope every HTTP API answer travels in, and the small answers of the server itself
//! (DESIGN.md "HTTP API (v1)").
//!
//! Success is `{"status":"success","data":…,"meta":…}`, failure
//! `{"status":"error","error":{"code","message","details"},"meta":…}`. `code` is stable
//! (`RUN_NOT_FOUND`, `UNAUTHORIZED`, …): scripts match on it, people read `message`. Not here:
//! which code a failure gets (the server's `ApiError` decides that).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What every answer carries beside its data or error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Meta {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub timestamp: Timestamp,
    /// The server's version.
    pub version: String,
    /// The request's `X-Request-Id` (the caller's, or one the server made up).
    pub request_id: String,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable, upper snake case: `UNAUTHORIZED`, `VALIDATION_FAILED`, `TOKEN_NOT_FOUND`, …
    pub code: String,
    /// For people: what was wrong and what to do about it.
    pub message: String,
    /// Machine-readable particulars (a JSON error's line and column, the fields that failed
    /// validation); `null` when there are none.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub details: Value,
}

/// An answer of the HTTP API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Envelope<T> {
    Success { data: T, meta: Meta },
    Error { error: ErrorBody, meta: Meta },
}

/// `GET /api/v1/status`: the server is up and which store it uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerStatus {
    /// Always `ok` when the server answers.
    pub status: String,
    pub version: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub started_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> Meta {
        Meta {
            timestamp: Timestamp::from_second(1_800_000_000).unwrap(),
            version: "0.1.0".to_owned(),
            request_id: "r1".to_owned(),
        }
    }

    #[test]
    fn envelopes_have_the_documented_shape() {
        let ok = Envelope::Success {
            data: json!({ "a": 1 }),
            meta: meta(),
        };
        let v = serde_json::to_value(&ok).unwrap();
        assert_eq!(v["status"], "success");
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(v["meta"]["request_id"], "r1");
        assert_eq!(v["meta"]["timestamp"], "2027-01-15T08:00:00Z");

        let err: Envelope<Value> = Envelope::Error {
            error: ErrorBody {
                code: "NOT_FOUND".to_owned(),
                message: "no such thing".to_owned(),
                details: Value::Null,
            },
            meta: meta(),
        };
        let text = serde_json::to_string(&err).unwrap();
        assert!(text.starts_with(r#"{"status":"error","error":{"code":"NOT_FOUND""#));
        assert_eq!(serde_json::from_str::<Envelope<Value>>(&text).unwrap(), err);
    }
}
