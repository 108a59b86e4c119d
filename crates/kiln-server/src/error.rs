//! [`ApiError`]: every failure of the API, with its HTTP status and stable code.
//!
//! A handler returns `Err(ApiError)`; its `IntoResponse` leaves the error in the response's
//! extensions and the envelope layer (`envelope.rs`) writes it out with the request's `meta`.
//! Messages are for people and safe to show; an internal error's cause is logged with the
//! request's span (and so its request id) and never sent.
//!
//! Codes in use: `UNAUTHORIZED` 401, `FORBIDDEN` 403, `NOT_FOUND` and `<THING>_NOT_FOUND`
//! 404, `METHOD_NOT_ALLOWED` 405, `BAD_REQUEST` and `MALFORMED_JSON` 400, `PAYLOAD_TOO_LARGE`
//! 413, `UNSUPPORTED_MEDIA_TYPE` 415, `VALIDATION_FAILED` 422, `INTERNAL` 500,
//! `NOT_READY` 503, `TIMEOUT` 504.

use std::any::Any;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_proto::ErrorBody;
use serde::Serialize;
use serde_json::{Value, json};

/// One field that failed validation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct FieldError {
    /// The field's path in the body (`role`, `items[2].name`); `.` for the body itself.
    pub(crate) field: String,
    pub(crate) message: String,
}

/// A failed request: status, stable code, a message a person can act on, and details.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    pub(crate) fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    /// `code` names what was not found: `TOKEN_NOT_FOUND`, `RUN_NOT_FOUND`, … or `NOT_FOUND`.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    /// A body that is not JSON; `line` and `column` are 1-based, as serde_json counts them.
    pub(crate) fn malformed_json(message: impl Into<String>, line: usize, column: usize) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MALFORMED_JSON", message)
            .with_details(json!({ "line": line, "column": column }))
    }

    /// [`ApiError::validation`] of the one field `name`.
    pub(crate) fn field(name: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: name.to_owned(),
            message: message.into(),
        }])
    }

    /// JSON of the wrong shape or values out of range; the message names every field.
    pub(crate) fn validation(fields: Vec<FieldError>) -> Self {
        let list: Vec<String> = fields
            .iter()
            .map(|f| format!("`{}`: {}", f.field, f.message))
            .collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
            format!("the request body is invalid: {}", list.join("; ")),
        )
        .with_details(json!({ "fields": fields }))
    }

    pub(crate) fn payload_too_large(limit: Option<usize>) -> Self {
        let message = match limit {
            Some(n) => format!("the request body is larger than the limit of {n} bytes"),
            None => "the request body is larger than the server accepts".to_owned(),
        };
        let e = Self::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", message);
        match limit {
            Some(n) => e.with_details(json!({ "limit": n })),
            None => e,
        }
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "this route does not take that method",
        )
    }

    pub(crate) fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the request body must be JSON with `Content-Type: application/json`",
        )
    }

    /// A failure that is not the caller's: `cause` is logged, a generic message is sent.
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the server failed to handle the request; its log has the details",
        )
    }

    /// The error for a bare error status that a layer (not a handler) answered with.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::payload_too_large(None),
            StatusCode::METHOD_NOT_ALLOWED => Self::method_not_allowed(),
            StatusCode::NOT_FOUND => Self::not_found("NOT_FOUND", "no such route"),
            StatusCode::UNAUTHORIZED => Self::unauthorized("this route needs a valid token"),
            StatusCode::FORBIDDEN => Self::forbidden("the token's role may not do this"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::unsupported_media_type(),
            StatusCode::GATEWAY_TIMEOUT => Self::new(
                status,
                "TIMEOUT",
                "the request took longer than the server allows",
            ),
            s if s.is_server_error() => Self::new(
                s,
                "INTERNAL",
                "the server failed to handle the request; its log has the details",
            ),
            s => Self::new(
                s,
                "BAD_REQUEST",
                s.canonical_reason().unwrap_or("the request was refused"),
            ),
        }
    }

    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    #[cfg(test)]
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }

    /// The `error` object of the envelope.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }
}

impl From<kiln_store::StoreError> for ApiError {
    fn from(e: kiln_store::StoreError) -> Self {
        Self::internal(format_args!("failed to use the store: {e}"))
    }
}

/// What a handler's `IntoResponse` leaves for the envelope layer to write.
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    Data(Value),
    Error(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res.extensions_mut().insert(Payload::Error(self.body()));
        res
    }
}

/// `CatchPanicLayer`'s answer: the panic is logged, the caller gets `INTERNAL`.
pub(crate) fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::internal(format_args!("a handler panicked: {what}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_lists_every_field() {
        let e = ApiError::validation(vec![
            FieldError {
                field: "name".to_owned(),
                message: "must not be empty".to_owned(),
            },
            FieldError {
                field: "role".to_owned(),
                message: "is unknown".to_owned(),
            },
        ]);
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED")
        );
        let body = e.body();
        assert!(
            body.message.contains("`name`: must not be empty"),
            "{}",
            body.message
        );
        assert!(
            body.message.contains("`role`: is unknown"),
            "{}",
            body.message
        );
        assert_eq!(body.details["fields"][1]["field"], "role");
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = ApiError::internal("password=hunter2 in connection string");
        assert_eq!(e.code(), "INTERNAL");
        assert!(!e.body().message.contains("hunter2"));
        assert_eq!(e.body().details, Value::Null);
    }

    #[test]
    fn a_panic_becomes_an_internal_error_without_its_message() {
        let res = panicked(Box::new("secret detail".to_owned()));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let Some(Payload::Error(body)) = res.extensions().get::<Payload>() else {
            panic!("no error payload")
        };
        assert_eq!(body.code, "INTERNAL");
        assert!(!body.message.contains("secret"));
    }

    #[test]
    fn bare_statuses_get_codes() {
        assert_eq!(
            ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE).code(),
            "PAYLOAD_TOO_LARGE"
        );
        assert_eq!(
            ApiError::from_status(StatusCode::GATEWAY_TIMEOUT).code(),
            "TIMEOUT"
        );
        assert_eq!(
            ApiError::from_status(StatusCode::BAD_GATEWAY).code(),
            "INTERNAL"
        );
        let teapot = ApiError::from_status(StatusCode::IM_A_TEAPOT);
        assert_eq!(
            (teapot.status(), teapot.code()),
            (StatusCode::IM_A_TEAPOT, "BAD_REQUEST")
        );
    }
}
