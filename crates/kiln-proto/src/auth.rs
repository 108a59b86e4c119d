//! Who a caller is: API tokens and roles (DESIGN.md "Security model").
//!
//! A token's plaintext (`kiln_` + 64 hex digits) is shown once, when it is created; the store
//! keeps only its SHA-256. [`TokenInfo`] is everything about a token except that secret, and
//! is what listings and the server's auth layer pass around. What each role may do is the
//! server's decision, not this module's.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use kiln_core::ids::ProjectId;
use serde::{Deserialize, Serialize};

kiln_core::typed_id!(
    /// An API token's id (not its secret): what `DELETE /api/v1/tokens/{id}` and
    /// `kiln token revoke` take.
    TokenId
);

/// What a token's holder is allowed to be. `worker` is for remote workers (claim jobs,
/// report, nothing else); the others are the per-project roles of the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Maintainer,
    Developer,
    Viewer,
    Worker,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: &'static [Role] = &[
        Role::Admin,
        Role::Maintainer,
        Role::Developer,
        Role::Viewer,
        Role::Worker,
    ];

    /// The wire spelling, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Maintainer => "maintainer",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role spelling that is none of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: expected one of admin, maintainer, developer, viewer, worker")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// An API token without its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: TokenId,
    /// What the token is for, as its creator named it.
    pub name: String,
    pub role: Role,
    /// The project the role applies to; `None`: every project.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub project: Option<ProjectId>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// Updated at most once a minute, so it may lag by that much.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_used_at: Option<Timestamp>,
    pub revoked: bool,
}

/// The longest token name, in characters.
pub const MAX_TOKEN_NAME: usize = 100;

/// A token's name without surrounding white space, or why it is not acceptable: it must
/// not be empty, be at most [`MAX_TOKEN_NAME`] characters and hold no control characters.
pub fn check_token_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let len = name.chars().count();
    if len > MAX_TOKEN_NAME {
        return Err(format!(
            "has {len} characters; at most {MAX_TOKEN_NAME} are allowed"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(name)
}

/// A request for a new token (`POST /api/v1/tokens`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub project: Option<ProjectId>,
}

/// A token just created, with its plaintext: the only time anyone sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub project: Option<ProjectId>,
    /// `kiln_` and 64 hex digits.
    pub token: String,
}

impl CreatedToken {
    pub fn new(info: &TokenInfo, token: String) -> Self {
        Self {
            id: info.id,
            name: info.name.clone(),
            role: info.role,
            project: info.project,
            token,
        }
    }
}

/// A listing of tokens (`GET /api/v1/tokens`, `kiln token list --format json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_spelling() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
        let err = "root".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("`root`") && err.contains("viewer"), "{err}");
        assert!("Admin".parse::<Role>().is_err(), "spellings are lowercase");
    }

    #[test]
    fn token_names_are_trimmed_and_bounded() {
        assert_eq!(check_token_name("  ci  "), Ok("ci"));
        assert!(check_token_name(" ").unwrap_err().contains("empty"));
        assert!(
            check_token_name(&"x".repeat(101))
                .unwrap_err()
                .contains("101")
        );
        assert!(check_token_name("a\nb").is_err());
    }

    #[test]
    fn a_new_token_request_names_unknown_fields() {
        let err = serde_json::from_str::<NewToken>(r#"{"name":"n","role":"admin","x":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`x`"), "{err}");
        let ok: NewToken = serde_json::from_str(r#"{"name":"n","role":"viewer"}"#).unwrap();
        assert_eq!(ok.project, None);
    }
}
