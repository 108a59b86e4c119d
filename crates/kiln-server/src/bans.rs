//! Bans of webhook senders (DESIGN.md "Security model"): a layer around `/hooks/{hook_id}`.
//!
//! - Before anything else (the body is not even read), an address banned from the hook, or
//!   from every hook, gets `403 BANNED`.
//! - After the handler: a `401` (failed verification) counts one failure for (address,
//!   hook) — per hook, because senders such as GitHub share their addresses across every
//!   project; a `404` (unknown hook id) counts one for (address, any hook). `threshold`
//!   failures within `window` ban the address from that hook (or, for unknown ids, from all)
//!   for `duration`.
//! - The client's address is the connection's, or — only when that is one of the
//!   configured trusted proxies — the last `X-Forwarded-For` entry that is not one itself.
//! - Addresses in `never` are never banned (a provider's documented sender ranges).
//!
//! The counts live in this server's memory (each replica counts its own); bans live in the
//! store, so every replica honours them and `GET /api/v1/bans` lists them.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use jiff::Timestamp;
use kiln_proto::Ban;

use crate::error::ApiError;
use crate::state::AppState;

/// How bans are decided.
#[derive(Clone, Debug)]
pub struct BanConfig {
    /// Failures within `window` that make a ban.
    pub threshold: usize,
    pub window: Duration,
    /// How long a ban lasts.
    pub duration: Duration,
    /// Addresses never banned.
    pub never: Vec<IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for BanConfig {
    /// 10 failures within 10 minutes ban for an hour; nobody exempt, no proxy trusted.
    fn default() -> Self {
        Self {
            threshold: 10,
            window: Duration::from_secs(600),
            duration: Duration::from_secs(3600),
            never: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// What failures are counted by: the address, and the hook (`None`: unknown hook ids).
type FailureKey = (IpAddr, Option<String>);

/// The failures counted so far, with when each happened.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    seen: Mutex<HashMap<FailureKey, VecDeque<Instant>>>,
}

impl Failures {
    /// Counts one failure; the count within `window` (this one included).
    fn count(&self, key: FailureKey, window: Duration) -> usize {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Forget what has left every window, so the map cannot grow without bound.
        if seen.len() > 10_000 {
            seen.retain(|_, times| times.back().is_some_and(|t| now - *t < window));
        }
        let times = seen.entry(key).or_default();
        times.push_back(now);
        while times.front().is_some_and(|t| now - *t >= window) {
            times.pop_front();
        }
        times.len()
    }

    fn clear(&self, key: &FailureKey) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.remove(key);
    }

    /// Forgets an address's counts (its ban was lifted).
    pub(crate) fn forget(&self, address: IpAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|(a, _), _| *a != address);
    }
}

/// The address a request comes from (see the module doc).
pub(crate) fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect();
    // Right to left: each trusted proxy appended the address it was called from.
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted.iter().any(|n| n.contains(a)))
        .unwrap_or(peer)
}

fn banned(ban: &Ban) -> ApiError {
    let scope = match &ban.hook_id {
        Some(_) => "this webhook",
        None => "every webhook",
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        "BANNED",
        format!(
            "{} is banned from {scope} until {} ({})",
            ban.address, ban.expires_at, ban.reason
        ),
    )
}

/// The layer (see the module doc).
pub(crate) async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let config = &state.config().bans;
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    let address = client_address(peer, req.headers(), &config.trusted_proxies);
    let hook_id = req
        .uri()
        .path()
        .trim_start_matches("/hooks/")
        .trim_end_matches('/')
        .to_owned();
    let exempt = config.never.iter().any(|n| n.contains(&address));
    if !exempt {
        match state
            .lookups()
            .active_ban(
                state.store(),
                &address.to_string(),
                &hook_id,
                Timestamp::now(),
            )
            .await
        {
            Ok(Some(ban)) => return banned(&ban).into_response(),
            Ok(None) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let res = next.run(req).await;
    if exempt {
        return res;
    }
    let key = match res.status() {
        StatusCode::UNAUTHORIZED => Some(hook_id.clone()),
        StatusCode::NOT_FOUND => None,
        _ => return res,
    };
    let failures = state.bans().count((address, key.clone()), config.window);
    if failures >= config.threshold {
        let now = Timestamp::now();
        let reason = match &key {
            Some(_) => format!(
                "{failures} failed verifications within {} s",
                config.window.as_secs()
            ),
            None => format!(
                "{failures} unknown webhook ids within {} s",
                config.window.as_secs()
            ),
        };
        let ban = Ban {
            id: uuid::Uuid::now_v7().to_string(),
            address: address.to_string(),
            hook_id: key.clone(),
            reason,
            failures: i64::try_from(failures).unwrap_or(i64::MAX),
            created_at: now,
            expires_at: now
                .checked_add(jiff::SignedDuration::try_from(config.duration).unwrap_or_default())
                .unwrap_or(now),
            lifted_at: None,
        };
        match state.store().add_ban(&ban).await {
            Ok(()) => {
                state.lookups().forget_bans();
                tracing::warn!(address = %address, hook = ?key, "banned a webhook sender");
                state.bans().clear(&(address, key));
            }
            Err(e) => tracing::warn!(error = %e, "could not record a ban"),
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.5".parse().unwrap());
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // Not trusted: the connection's address, whatever the header says.
        assert_eq!(client_address(proxy, &h, &[]), proxy);
        // Trusted: the last address that is not a trusted proxy.
        assert_eq!(
            client_address(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A spoofed leftmost entry does not win over what the proxy saw.
        h.insert("x-forwarded-for", "1.2.3.4, 198.51.100.7".parse().unwrap());
        assert_eq!(
            client_address(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Garbage and no header: the connection's.
        h.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(client_address(proxy, &h, &trusted), proxy);
    }

    #[test]
    fn failures_leave_the_window() {
        let f = Failures::default();
        let key = ("192.0.2.1".parse().unwrap(), Some("h".to_owned()));
        assert_eq!(f.count(key.clone(), Duration::from_secs(60)), 1);
        assert_eq!(f.count(key.clone(), Duration::from_secs(60)), 2);
        f.forget("192.0.2.1".parse().unwrap());
        assert_eq!(f.count(key, Duration::from_secs(60)), 1);
    }
}
