//! [`ApiJson`]: axum's `Json` extractor with rejections a client can act on.
//!
//! A body that is not JSON is `400 MALFORMED_JSON` with the line and column of the problem;
//! JSON of the wrong shape (a wrong type, a missing or unknown field, an unknown enum value)
//! is `422 VALIDATION_FAILED` naming the field by its path (found with
//! `serde_path_to_error`); a missing or wrong `Content-Type` is `415`; a body over the limit
//! is `413`. All of them in the error envelope.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::error::Category;

use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(Some(state.config().body_limit))
            } else {
                ApiError::bad_request(format!(
                    "failed to read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// `application/json` or `application/<something>+json`, parameters allowed.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(sub) => sub == "json" || sub.ends_with("+json"),
        None => false,
    }
}

/// Parses a whole body as `T`: first as any JSON at all (so that syntax errors are told
/// apart from shape errors, which serde_json does not always do: a number where an enum is
/// expected reads as "expected value"), then as `T`, naming the field that does not fit.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed_json(
            "the request body is empty; expected a JSON object",
            1,
            1,
        ));
    }
    if let Err(e) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return Err(ApiError::malformed_json(
            format!(
                "the request body is not valid JSON: {} (line {}, column {})",
                bare_message(&e),
                e.line(),
                e.column()
            ),
            e.line(),
            e.column(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = match inner.classify() {
            Category::Data => bare_message(&inner),
            Category::Syntax | Category::Eof | Category::Io => {
                "has a value of the wrong type".to_owned()
            }
        };
        ApiError::validation(vec![FieldError {
            field: field_name(&path, &message),
            message,
        }])
    })
}

/// serde_json's message without its " at line L column C" (the details carry those).
fn bare_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// The field an error is about: its path, or for errors about the object itself (a missing
/// or unknown field) the field its message names.
fn field_name(path: &str, message: &str) -> String {
    if path != "." {
        return path.to_owned();
    }
    for lead in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(lead)
            && let Some((name, _)) = rest.split_once('`')
        {
            return name.to_owned();
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::NewToken;
    use serde_json::Value;

    fn err(body: &str) -> kiln_proto::ErrorBody {
        parse::<NewToken>(body.as_bytes()).unwrap_err().body()
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let e = err("{\n  \"name\": \"x\",\n  \"role\" \"admin\"\n}");
        assert_eq!(e.code, "MALFORMED_JSON");
        assert_eq!(
            (e.details["line"].as_u64(), e.details["column"].as_u64()),
            (Some(3), Some(10))
        );
        assert!(e.message.contains("line 3, column 10"), "{}", e.message);
        assert_eq!(err("").code, "MALFORMED_JSON");
        assert_eq!(
            err("{\"name\":\"x\",\"role\":\"admin\"} x").code,
            "MALFORMED_JSON"
        );
        assert_eq!(err("{\"name\":").code, "MALFORMED_JSON");
    }

    #[test]
    fn shape_errors_name_the_field() {
        let e = err(r#"{"name": 5, "role": "admin"}"#);
        assert_eq!(e.code, "VALIDATION_FAILED");
        assert_eq!(e.details["fields"][0]["field"], "name");
        assert!(e.message.contains("`name`: invalid type"), "{}", e.message);

        let e = err(r#"{"name": "n", "role": "root"}"#);
        assert_eq!(e.details["fields"][0]["field"], "role");
        assert!(e.message.contains("admin"), "{}", e.message);

        assert_eq!(
            err(r#"{"role": "admin"}"#).details["fields"][0]["field"],
            "name"
        );
        assert_eq!(
            err(r#"{"name": "n", "role": "admin", "colour": 1}"#).details["fields"][0]["field"],
            "colour"
        );
        assert_eq!(err("\"x\"").details["fields"][0]["field"], Value::from("."));
        let e = err(r#"{"name": "n", "role": 3}"#);
        assert_eq!(
            (e.code.as_str(), &e.details["fields"][0]["field"]),
            ("VALIDATION_FAILED", &Value::from("role"))
        );
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (v, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/vnd.kiln+json", true),
            ("text/plain", false),
            ("application/jsonx", false),
        ] {
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            assert_eq!(is_json(&h), ok, "{v}");
        }
    }
}
