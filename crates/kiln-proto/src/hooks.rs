//! Webhooks as the API shows them (DESIGN.md "HTTP API (v1)" and "Security model"): which
//! provider's scheme a project's hook verifies, what `POST /hooks/{hook_id}` answers, and the
//! recorded deliveries of `GET /api/v1/deliveries/{id}` and
//! `GET /api/v1/projects/{id}/deliveries`.
//!
//! Not here: verifying signatures or turning payloads into events (the server's and core's),
//! storing deliveries (the store's).

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use kiln_core::ids::{ProjectId, RunId};
use serde::{Deserialize, Serialize};

/// Whose signature scheme and payload shapes a project's webhook expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HookProvider {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`, `X-GitHub-Event`,
    /// `X-GitHub-Delivery`.
    #[default]
    Github,
    /// `X-Gitlab-Token: <secret>`, `X-Gitlab-Event`, `X-Gitlab-Event-UUID`.
    Gitlab,
    /// `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>`, `X-Gitea-Event`,
    /// `X-Gitea-Delivery`.
    Gitea,
    /// `X-Kiln-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>` with
    /// `X-Kiln-Timestamp` (unix seconds, ±300 s), `X-Kiln-Delivery` and `X-Kiln-Event`.
    Generic,
}

impl HookProvider {
    pub const ALL: &'static [HookProvider] =
        &[Self::Github, Self::Gitlab, Self::Gitea, Self::Generic];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Gitea => "gitea",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for HookProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider name kiln does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook provider `{0}`; expected github, gitlab, gitea or generic")]
pub struct UnknownProvider(pub String);

impl FromStr for HookProvider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, UnknownProvider> {
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

/// What became of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Verified and recorded; not processed yet.
    Accepted,
    /// Processed: its runs (possibly none… see `ignored`) were started.
    Processed,
    /// Nothing to run (a ping, an event no workflow takes, a filter that does not match);
    /// `reason` says which.
    Ignored,
    /// It could not be processed (malformed JSON, a failed fetch, a broken workflow);
    /// `reason` says why.
    Failed,
}

impl DeliveryStatus {
    pub const ALL: &'static [DeliveryStatus] =
        &[Self::Accepted, Self::Processed, Self::Ignored, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Processed => "processed",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown delivery status `{s}`"))
    }
}

/// The answer of `POST /hooks/{hook_id}`: 202 for a new delivery (its runs are started in
/// the background and show on `GET /api/v1/deliveries/{id}`), 200 for a duplicate delivery
/// id (with the first delivery's runs) or a ping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HookAnswer {
    /// kiln's id of the delivery (for `GET /api/v1/deliveries/{id}`).
    pub delivery_id: String,
    pub duplicate: bool,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub runs: Vec<RunId>,
}

/// One recorded delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryView {
    /// kiln's id (a UUIDv7).
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub project: ProjectId,
    pub provider: HookProvider,
    /// The provider's delivery id (`X-GitHub-Delivery`, …); deliveries are deduplicated
    /// by it per project.
    pub delivery: String,
    /// The provider's event header (`push`, `Push Hook`, …).
    pub event: String,
    pub status: DeliveryStatus,
    /// Why it was ignored or failed.
    pub reason: Option<String>,
    /// The runs it started.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub runs: Vec<RunId>,
    /// The size of the body received, in bytes.
    pub size: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub received_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub processed_at: Option<Timestamp>,
}

/// A project's deliveries, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

/// `POST /api/v1/projects/{id}/hook/rotate`: a new secret (unless `secret` is `false`), a
/// new hook id when `hook_id` is `true`, and/or another provider. `{}` draws a new secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HookRotate {
    /// Give the project a new hook id (its old webhook URL stops working).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_id: Option<bool>,
    /// Give the project a new secret (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<bool>,
    /// The new secret (implies `secret`); drawn at random when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Switch the provider at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<HookProvider>,
}

/// A project's webhook after a rotation: the only other time its secret is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HookSecret {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: ProjectId,
    pub name: String,
    pub provider: HookProvider,
    pub hook_id: String,
    pub hook_url: String,
    /// Shown once; kiln cannot show it again.
    pub secret: String,
}

/// The shortest secret a person may choose.
pub const MIN_HOOK_SECRET: usize = 16;

/// `secret` if it is acceptable as a chosen webhook secret, or why not.
pub fn check_hook_secret(secret: &str) -> Result<&str, String> {
    if secret.len() < MIN_HOOK_SECRET {
        return Err(format!(
            "has {} characters; use at least {MIN_HOOK_SECRET} (e.g. `openssl rand -hex 32`)",
            secret.len()
        ));
    }
    if secret.len() > 256 {
        return Err("is longer than 256 characters".to_owned());
    }
    if let Some(c) = secret.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "contains {c:?}; use printable ASCII without spaces (a header carries it for GitLab)"
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_round_trip() {
        for p in HookProvider::ALL {
            assert_eq!(p.as_str().parse::<HookProvider>().unwrap(), *p);
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
        assert_eq!("GitHub".parse::<HookProvider>(), Ok(HookProvider::Github));
        assert!("bitbucket".parse::<HookProvider>().is_err());
        assert_eq!(HookProvider::default(), HookProvider::Github);
    }

    #[test]
    fn statuses_round_trip() {
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>().unwrap(), *s);
        }
    }

    #[test]
    fn chosen_secrets_are_checked() {
        assert!(check_hook_secret("short").is_err());
        assert!(check_hook_secret("sixteen chars!!!").is_err());
        assert!(check_hook_secret("0123456789abcdef").is_ok());
    }
}

/// An address banned from a webhook (or from all of them) for failing verification too
/// often — `GET /api/v1/bans`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ban {
    /// Pass to `DELETE /api/v1/bans/{id}` (or `kiln ban lift`) to lift it.
    pub id: String,
    /// The sender's address (as seen through trusted proxies).
    pub address: String,
    /// The hook it is banned from; `null`: every hook (it scanned for hook ids).
    pub hook_id: Option<String>,
    /// Why: what failed, how often.
    pub reason: String,
    /// The failures that led to it.
    pub failures: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub lifted_at: Option<Timestamp>,
}

/// The bans, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BanList {
    pub bans: Vec<Ban>,
}
