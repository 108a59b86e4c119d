//! The HTTP client watches poll with: every connection passes the [`EgressPolicy`] (host
//! names through a resolver that checks each address, address literals and redirects
//! checked before they are followed), with connect and total timeouts, a bounded body, no
//! proxies (a proxy would be the host that is checked, not the source), and conditional
//! requests (`If-None-Match` with the ETag of the last answer).
//!
//! Not here: what a body means (`sources`), when to poll.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, ETAG, IF_NONE_MATCH, USER_AGENT};

use crate::egress::EgressPolicy;

/// Why a request failed; the message reads after "failed to …" and names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("failed to fetch {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("failed to fetch {url}: the answer was {status}")]
    Status { url: String, status: u16 },
    #[error("failed to fetch {url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{0}")]
    Egress(#[from] crate::egress::EgressError),
}

/// An answer: the body, or `304 Not Modified`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    NotModified,
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// Resolves host names for reqwest through the egress policy: a name passes only when every
/// address it resolves to does, and reqwest connects only to those addresses.
struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let addrs = policy.check_host(name.as_str(), 0).await?;
            let addrs: Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The watches' HTTP client; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    max_body: usize,
}

impl HttpClient {
    pub fn new(
        policy: EgressPolicy,
        connect_timeout: Duration,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Self, FetchError> {
        // One TLS stack (STACK.md): ring, installed once as the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(policy);
        let redirect_policy = Arc::clone(&policy);
        let client = reqwest::Client::builder()
            .dns_resolver(PolicyResolver {
                policy: Arc::clone(&policy),
            })
            .no_proxy()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("more than 5 redirects");
                }
                // Names are checked by the resolver when connecting; address literals never
                // reach it.
                match literal_refused(&redirect_policy, attempt.url()) {
                    Some(why) => attempt.error(why),
                    None => attempt.follow(),
                }
            }))
            .build()
            .map_err(|e| FetchError::Http {
                url: String::new(),
                reason: e.to_string(),
            })?;
        Ok(HttpClient {
            client,
            policy,
            max_body,
        })
    }

    /// GETs `url`, conditionally on `etag`; `token` goes into `Authorization: Bearer`.
    pub async fn get(
        &self,
        url: &str,
        etag: Option<&str>,
        token: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let shown = crate::egress::redact_url(url);
        let http = |reason: String| FetchError::Http {
            url: shown.clone(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| http(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(http(
                "only http:// and https:// URLs are fetched".to_owned(),
            ));
        }
        // The policy decides before anything connects (the resolver checks again per
        // connection, and is the check for redirects to other names).
        let host = parsed
            .host_str()
            .ok_or_else(|| http("the URL has no host".to_owned()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = parsed.port_or_known_default().unwrap_or(443);
        self.policy.check_host(host, port).await?;
        let mut req = self
            .client
            .get(parsed)
            .header(USER_AGENT, concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .header(ACCEPT, "application/json, text/html;q=0.9, */*;q=0.8");
        if let Some(tag) = etag {
            req = req.header(IF_NONE_MATCH, tag);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let mut resp = req.send().await.map_err(|e| http(error_chain(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: shown,
                status: status.as_u16(),
            });
        }
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| http(error_chain(&e)))? {
            if bytes.len() + chunk.len() > self.max_body {
                return Err(FetchError::TooLarge {
                    url: shown,
                    limit: self.max_body,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body { bytes, etag })
    }
}

/// Why the policy refuses a URL whose host is an address literal (`None`: allowed, or a
/// name, which the resolver checks).
fn literal_refused(policy: &EgressPolicy, url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    policy
        .check_addr(host, ip)
        .err()
        .map(|why| format!("the egress policy refuses {host} ({why})"))
}

/// An error with its sources, so that "connection refused" is not hidden behind "error
/// sending request".
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
