//! The HTTP client of the commands that talk to a server (`--server`/`KILN_SERVER`, with
//! `--token`/`KILN_TOKEN`): JSON in, the envelope's `data` out, failures mapped to the
//! documented exit codes.
//!
//! A 4xx is the caller's problem: exit 2, with the server's error code and message. A 5xx, an
//! answer that is not kiln's envelope, or a server that cannot be reached is exit 3. TLS is
//! rustls with the `ring` provider (the one TLS stack of the build). Not here: what any
//! command prints.

use std::time::Duration;

use kiln_proto::{Envelope, exit};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Failure;
use crate::args::ServerArgs;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for one server, with one token (or none).
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// `http(s)://host[:port][/prefix]`, without a trailing slash.
    base: String,
    token: Option<String>,
}

impl Client {
    /// `server` must be an `http://` or `https://` URL.
    pub(crate) fn new(server: &str, token: Option<&str>) -> Result<Self, Failure> {
        let base = check_http_url("--server", server)?;
        // reqwest carries rustls without a provider of its own; an Err here only means one is
        // already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::internal(format!("failed to set up the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            token: token.map(str::to_owned).filter(|t| !t.is_empty()),
        })
    }

    /// The client of a command that only talks to a server: `--server` (or `KILN_SERVER`)
    /// is required.
    pub(crate) fn for_command(remote: &ServerArgs, command: &str) -> Result<Self, Failure> {
        let server = remote.server.as_deref().ok_or_else(|| {
            Failure::invalid(format!("{command} needs --server URL (or KILN_SERVER)"))
        })?;
        Self::new(server, remote.token.as_deref())
    }

    /// The server's URL, as the user gave it (without a trailing slash).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(Method::GET, path, None::<&()>).await
    }

    pub(crate) async fn post<B, T>(&self, path: &str, body: &B) -> Result<T, Failure>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.send(Method::POST, path, Some(body)).await
    }

    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(Method::DELETE, path, None::<&()>).await
    }

    pub(crate) async fn patch<B, T>(&self, path: &str, body: &B) -> Result<T, Failure>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.send(Method::PATCH, path, Some(body)).await
    }

    /// `path` starts with `/` (`/api/v1/tokens`); `body`, if any, is sent as JSON.
    async fn send<B, T>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T, Failure>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let what = format!("{method} {}{path}", self.base);
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.map_err(|e| {
            Failure::internal(format!(
                "failed to reach the kiln server at {}: {}",
                self.base,
                error_chain(&e)
            ))
        })?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| {
            Failure::internal(format!(
                "failed to read the answer to {what}: {}",
                error_chain(&e)
            ))
        })?;
        match serde_json::from_slice::<Envelope<serde_json::Value>>(&body) {
            Ok(Envelope::Success { data, .. }) if status.is_success() => {
                serde_json::from_value(data).map_err(|e| {
                    Failure::internal(format!("failed to understand the answer to {what}: {e}"))
                })
            }
            Ok(Envelope::Error { error, .. }) => {
                let mut message = format!("{}: {}", error.code, error.message);
                if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
                    message.push_str(" (set KILN_TOKEN or pass --token)");
                }
                Err(Failure {
                    code: code_for(status),
                    message,
                })
            }
            Ok(Envelope::Success { .. }) | Err(_) => Err(Failure {
                code: code_for(status),
                message: format!(
                    "failed to understand the answer to {what}: HTTP {status} without a kiln \
                     envelope (is {} a kiln server?)",
                    self.base
                ),
            }),
        }
    }
}

/// `url` without trailing slashes, if it is an `http://` or `https://` URL with a host;
/// otherwise an invalid-input failure naming `flag`.
pub(crate) fn check_http_url(flag: &str, url: &str) -> Result<String, Failure> {
    let trimmed = url.trim().trim_end_matches('/');
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match host {
        Some(h) if !h.is_empty() => Ok(trimmed.to_owned()),
        _ => Err(Failure::invalid(format!(
            "{flag} `{url}`: expected an http:// or https:// URL"
        ))),
    }
}

/// A project id or name (or any other value) as one URL path segment, percent-encoded.
pub(crate) fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// 4xx: the request was wrong (exit 2); anything else: kiln could not work (exit 3).
fn code_for(status: StatusCode) -> i32 {
    if status.is_client_error() {
        exit::INVALID
    } else {
        exit::INTERNAL
    }
}

/// An error with its causes (reqwest's own message is only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_must_be_http_urls() {
        assert!(Client::new("http://127.0.0.1:8080/", None).is_ok());
        assert!(Client::new("https://kiln.example", Some("t")).is_ok());
        for bad in ["127.0.0.1:8080", "ftp://x", "http://", ""] {
            let f = Client::new(bad, None).unwrap_err();
            assert_eq!(f.code, exit::INVALID, "{bad}");
        }
    }

    #[test]
    fn client_errors_are_invalid_input_and_the_rest_internal() {
        assert_eq!(code_for(StatusCode::FORBIDDEN), exit::INVALID);
        assert_eq!(code_for(StatusCode::NOT_FOUND), exit::INVALID);
        assert_eq!(code_for(StatusCode::INTERNAL_SERVER_ERROR), exit::INTERNAL);
        assert_eq!(code_for(StatusCode::BAD_GATEWAY), exit::INTERNAL);
    }
}
