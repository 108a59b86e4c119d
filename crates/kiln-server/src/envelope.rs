//! The outermost layer: every request gets an id and every JSON answer its envelope.
//!
//! The request id is the caller's `X-Request-Id` when it is usable (visible ASCII from a
//! small safe set, at most 128 characters; anything else is dropped), otherwise a new UUID.
//! It goes into the request's extensions (for the trace span) and back in the response's
//! `X-Request-Id` header and `meta.request_id`.
//!
//! Handlers answer with [`Data`] or [`ApiError`](crate::error::ApiError), which leave a
//! [`Payload`] in the response's extensions; this layer serialises it with its `meta`. A bare
//! error status that some layer answered with by itself (a body over the limit, a timeout)
//! gets an error envelope too, so a client never has to parse anything else from the API.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use kiln_proto::{Envelope, Meta};
use serde::Serialize;

use crate::error::{ApiError, Payload};

/// The header that carries the request id both ways.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller.
const MAX_REQUEST_ID: usize = 128;

/// The server's version, as `meta.version` and `/api/v1/status` report it.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// This request's id, in the request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub(crate) String);

/// A successful answer: `data` of the envelope, with its status (200 unless created).
#[derive(Debug)]
pub(crate) struct Data<T> {
    status: StatusCode,
    value: T,
}

impl<T> Data<T> {
    pub(crate) fn ok(value: T) -> Self {
        Self {
            status: StatusCode::OK,
            value,
        }
    }

    pub(crate) fn created(value: T) -> Self {
        Self {
            status: StatusCode::CREATED,
            value,
        }
    }
}

impl<T: Serialize> IntoResponse for Data<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.value) {
            Ok(value) => {
                let mut res = self.status.into_response();
                res.extensions_mut().insert(Payload::Data(value));
                res
            }
            Err(e) => ApiError::internal(format_args!("failed to serialise an answer: {e}"))
                .into_response(),
        }
    }
}

/// The caller's request id if it is usable, else a new one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(sanitise)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Keeps the characters that are safe in logs and headers; `None` when nothing is left.
fn sanitise(raw: &str) -> Option<String> {
    let id: String = raw
        .chars()
        .filter(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '+' | '=' | '@')
        })
        .take(MAX_REQUEST_ID)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The middleware (see the module doc).
pub(crate) async fn envelope(mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    // Sanitised above: always a valid header value.
    let header_value = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("invalid"));
    req.headers_mut().insert(REQUEST_ID, header_value.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.run(req).await;
    let payload = match res.extensions_mut().remove::<Payload>() {
        Some(p) => Some(p),
        None if is_bare_error(&res) => {
            Some(Payload::Error(ApiError::from_status(res.status()).body()))
        }
        None => None,
    };
    if let Some(payload) = payload {
        let meta = Meta {
            timestamp: Timestamp::now(),
            version: VERSION.to_owned(),
            request_id: id,
        };
        let envelope = match payload {
            Payload::Data(data) => Envelope::Success { data, meta },
            Payload::Error(error) => Envelope::Error { error, meta },
        };
        // Serialising a `Value` and strings cannot fail; an empty body would still be framed.
        let bytes = serde_json::to_vec(&envelope).unwrap_or_default();
        let headers = res.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        *res.body_mut() = Body::from(bytes);
    }
    res.headers_mut().insert(REQUEST_ID, header_value);
    res
}

/// An error status without a JSON body: answered by a layer, not a handler.
fn is_bare_error(res: &Response) -> bool {
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (status.is_client_error() || status.is_server_error()) && !json
}

/// The trace span of one request: method, path, request id and client address.
pub(crate) fn span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.as_str())
        .unwrap_or("");
    let client = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %id,
        client = %client,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sanitised_and_bounded() {
        assert_eq!(sanitise("abc-123").as_deref(), Some("abc-123"));
        assert_eq!(sanitise("a b\tc<script>").as_deref(), Some("abcscript"));
        assert_eq!(sanitise("  "), None);
        assert_eq!(
            sanitise(&"x".repeat(500)).map(|s| s.len()),
            Some(MAX_REQUEST_ID)
        );
    }
}
