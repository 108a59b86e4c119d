//! `POST /hooks/{hook_id}`: a project's webhook (DESIGN.md "HTTP API (v1)", "Security
//! model"). Open — the signature is the credential — and outside the API's body limit: it has
//! its own (`ServerConfig::hook_body_limit`, 25 MB by default, `413 PAYLOAD_TOO_LARGE`).
//!
//! The order matters: the hook id is looked up, then the body's signature is checked with the
//! project's provider scheme, in constant time, before anything in the body is read. Only then
//! is the delivery deduplicated by the provider's delivery id and recorded — durably, before
//! the answer — and handed to the background processor (`crate::hooks`), which matches
//! workflows and starts runs. So the answer is quick (`202`) and a sender's retry of a
//! delivery that was already recorded starts nothing new (`200`, `duplicate: true`, with the
//! first delivery's runs).
//!
//! | provider | signature | delivery id | event |
//! |---|---|---|---|
//! | github | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` | `X-GitHub-Delivery` | `X-GitHub-Event` |
//! | gitlab | `X-Gitlab-Token: <secret>` | `X-Gitlab-Event-UUID` | `X-Gitlab-Event` |
//! | gitea | `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>` | `X-Gitea-Delivery` | `X-Gitea-Event` (or `X-Gogs-Event`) |
//! | generic | `X-Kiln-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, `X-Kiln-Timestamp` (unix seconds, ±300 s) | `X-Kiln-Delivery` (required) | `X-Kiln-Event` (default `push`) |
//!
//! A GitHub, GitLab or Gitea delivery without its delivery id header is identified by the
//! SHA-256 of its body (`sha256:<hex>`), so an identical redelivery is still a duplicate.
//!
//! Answers: `202` accepted, `200` duplicate or ping (`X-GitHub-Event: ping`, or `ping` as a
//! generic event), `400 MALFORMED_JSON` (recorded as a failed delivery), `400 BAD_REQUEST` (a
//! header the scheme needs is missing), `401 SIGNATURE_INVALID` naming the header,
//! `404 HOOK_NOT_FOUND` (unknown or removed project), `413 PAYLOAD_TOO_LARGE`.
//! Not here yet: counting failures towards an address ban.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit as _, Mac as _};
use kiln_proto::{DeliveryStatus, HookAnswer, HookProvider};
use kiln_store::{NewDelivery, Recorded};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::envelope::Data;
use crate::error::ApiError;
use crate::state::AppState;

type HmacSha256 = Hmac<Sha256>;

/// How far a generic delivery's `X-Kiln-Timestamp` may be from the server's clock.
pub(crate) const GENERIC_WINDOW_SECS: i64 = 300;

/// Receives a delivery (see the module doc).
#[utoipa::path(
    post,
    path = "/hooks/{hook_id}",
    tag = "hooks",
    params(("hook_id" = String, Path, description = "The project's hook id (its webhook URL's last segment)")),
    request_body(content = Object, description = "The provider's JSON payload, signed with the project's secret"),
    responses(
        (status = 202, description = "Recorded; runs start in the background and show on `GET /api/v1/deliveries/{delivery_id}`", body = kiln_proto::Envelope<HookAnswer>),
        (status = 200, description = "A delivery id seen before (`duplicate`, with the first delivery's runs), or a ping", body = kiln_proto::Envelope<HookAnswer>),
        (status = 400, description = "`MALFORMED_JSON` (recorded as a failed delivery; `details.delivery_id`), or `BAD_REQUEST`: a header the scheme needs is missing", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 401, description = "`SIGNATURE_INVALID`: a missing or wrong signature, token or timestamp; the message names the header", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 403, description = "`BANNED`: the sender failed verification (or tried unknown hook ids) too often; answered before the body is read", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 404, description = "`HOOK_NOT_FOUND`", body = kiln_proto::Envelope<serde_json::Value>),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = kiln_proto::Envelope<serde_json::Value>)
    )
)]
pub(crate) async fn receive(
    State(state): State<AppState>,
    Path(hook_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Data<HookAnswer>), ApiError> {
    let not_found = || ApiError::not_found("HOOK_NOT_FOUND", "no webhook has this URL");
    // A hook id is a UUID: anything else cannot match, and costs no query.
    if uuid::Uuid::parse_str(&hook_id).is_err() {
        return Err(not_found());
    }
    let target = state
        .lookups()
        .hook_target(state.store(), &hook_id)
        .await?
        .filter(|t| !t.archived)
        .ok_or_else(not_found)?;
    let Some(secret) = target.secret.as_deref() else {
        return Err(signature_invalid(format!(
            "project `{}` has no webhook secret yet; rotate one in with \
             `kiln project rotate-hook {}`",
            target.project_name, target.project_name
        )));
    };
    let now = jiff::Timestamp::now().as_second();
    verify(target.provider, &headers, &body, secret.as_bytes(), now).map_err(signature_invalid)?;

    let delivery = delivery_id(target.provider, &headers, &body)?;
    let event = event_name(target.provider, &headers)?;
    let (status, reason) = match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        Err(e) => (
            DeliveryStatus::Failed,
            Some(format!("the body is not JSON: {e}")),
        ),
        Ok(_) if is_ping(target.provider, &event) => {
            (DeliveryStatus::Ignored, Some("a ping".to_owned()))
        }
        Ok(_) => (DeliveryStatus::Accepted, None),
    };
    let (recorded, packed) = state
        .store()
        .record_delivery_packed(&NewDelivery {
            project: target.project,
            provider: target.provider,
            delivery,
            event,
            status,
            reason,
            payload: body.to_vec(),
            // Claimed as it is recorded when it goes straight to this server's processor.
            claim: (status == DeliveryStatus::Accepted)
                .then(|| crate::hooks::claim(&state))
                .flatten(),
        })
        .await?;
    let d = match recorded {
        Recorded::Duplicate(first) => {
            tracing::info!(project = %target.project, delivery = %first.id, "duplicate webhook delivery");
            let answer = HookAnswer {
                delivery_id: first.id,
                duplicate: true,
                runs: first.runs,
            };
            return Ok((StatusCode::OK, Data::ok(answer)));
        }
        Recorded::New(d) => d,
    };
    tracing::info!(
        project = %target.project,
        delivery = %d.id,
        event = %d.event,
        status = %d.status,
        "webhook delivery recorded"
    );
    let answer = HookAnswer {
        delivery_id: d.id.clone(),
        duplicate: false,
        runs: Vec::new(),
    };
    match d.status {
        DeliveryStatus::Failed => {
            let message = d.reason.unwrap_or_default();
            let (line, column) = match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                Err(e) => (e.line(), e.column()),
                Ok(_) => (0, 0),
            };
            Err(
                ApiError::malformed_json(message, line, column).with_details(json!({
                    "line": line,
                    "column": column,
                    "delivery_id": d.id,
                })),
            )
        }
        DeliveryStatus::Accepted => {
            // Packed as the journal packed it, when it did: a backlog holds a third as much.
            let body = packed.map_or(crate::hooks::Body::Raw(body), crate::hooks::Body::Packed);
            crate::hooks::spawn(&state, d, body);
            Ok((StatusCode::ACCEPTED, Data::ok(answer)))
        }
        DeliveryStatus::Ignored | DeliveryStatus::Processed => {
            Ok((StatusCode::OK, Data::ok(answer)))
        }
    }
}

fn signature_invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "SIGNATURE_INVALID", message)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Checks the delivery's signature (or token) with `secret`, as `provider` signs; `now` is
/// unix seconds. `Err`: why not, naming the header. Constant time in the secret and the
/// signature: HMACs are compared with `verify_slice`, tokens through their SHA-256.
pub(crate) fn verify(
    provider: HookProvider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now: i64,
) -> Result<(), String> {
    match provider {
        HookProvider::Github => {
            const H: &str = "X-Hub-Signature-256";
            let value = header(headers, H).ok_or_else(|| missing(H))?;
            let hex = value
                .strip_prefix("sha256=")
                .ok_or_else(|| format!("{H} must be `sha256=<hex HMAC-SHA256 of the body>`"))?;
            check_hmac(H, secret, &[body], hex)
        }
        HookProvider::Gitea => {
            const H: &str = "X-Gitea-Signature";
            let hex = header(headers, H).ok_or_else(|| missing(H))?;
            check_hmac(H, secret, &[body], hex)
        }
        HookProvider::Gitlab => {
            const H: &str = "X-Gitlab-Token";
            let token = header(headers, H).ok_or_else(|| missing(H))?;
            if same_secret(token.as_bytes(), secret) {
                Ok(())
            } else {
                Err(format!("{H} is not the project's webhook secret"))
            }
        }
        HookProvider::Generic => {
            const H: &str = "X-Kiln-Signature";
            const T: &str = "X-Kiln-Timestamp";
            let value = header(headers, H).ok_or_else(|| missing(H))?;
            let stamp = header(headers, T).ok_or_else(|| missing(T))?;
            let hex = value.strip_prefix("sha256=").ok_or_else(|| {
                format!("{H} must be `sha256=<hex HMAC-SHA256 of timestamp + \".\" + body>`")
            })?;
            let at: i64 = stamp
                .parse()
                .map_err(|_| format!("{T} must be unix seconds, not `{stamp}`"))?;
            // Checked after the signature too would tell a forger nothing more; checked first,
            // a replayed old delivery costs no HMAC.
            if (now - at).abs() > GENERIC_WINDOW_SECS {
                return Err(format!(
                    "{T} is {}s from the server's clock; at most {GENERIC_WINDOW_SECS}s is \
                     accepted (a replayed delivery, or a clock to set right)",
                    now - at
                ));
            }
            check_hmac(H, secret, &[stamp.as_bytes(), b".", body], hex)
        }
    }
}

fn missing(header: &str) -> String {
    format!(
        "the {header} header is missing: the delivery must be signed with the project's webhook secret"
    )
}

fn check_hmac(header: &str, secret: &[u8], parts: &[&[u8]], hex: &str) -> Result<(), String> {
    let wrong =
        || format!("{header} does not match the body signed with the project's webhook secret");
    let given = hex::decode(hex).map_err(|_| wrong())?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| wrong())?;
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&given).map_err(|_| wrong())
}

/// Whether `given` is the secret, in time that depends on neither: both are hashed, and the
/// digests compared without an early exit.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(secret);
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The provider's delivery id (see the module doc).
fn delivery_id(
    provider: HookProvider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, ApiError> {
    let name = match provider {
        HookProvider::Github => "X-GitHub-Delivery",
        HookProvider::Gitlab => "X-Gitlab-Event-UUID",
        HookProvider::Gitea => "X-Gitea-Delivery",
        HookProvider::Generic => "X-Kiln-Delivery",
    };
    let found = header(headers, name).or_else(|| {
        (provider == HookProvider::Gitea)
            .then(|| header(headers, "X-Gogs-Delivery"))
            .flatten()
    });
    match found {
        Some(id) if id.len() <= 200 => Ok(id.to_owned()),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} is longer than 200 characters"
        ))),
        None if provider == HookProvider::Generic => Err(ApiError::bad_request(format!(
            "the {name} header is missing: a generic delivery names itself so that a retry \
             is not run twice"
        ))),
        None => Ok(format!("sha256:{}", hex::encode(Sha256::digest(body)))),
    }
}

/// The provider's event header.
fn event_name(provider: HookProvider, headers: &HeaderMap) -> Result<String, ApiError> {
    let found = match provider {
        HookProvider::Github => header(headers, "X-GitHub-Event"),
        HookProvider::Gitlab => header(headers, "X-Gitlab-Event"),
        HookProvider::Gitea => {
            header(headers, "X-Gitea-Event").or_else(|| header(headers, "X-Gogs-Event"))
        }
        HookProvider::Generic => {
            return Ok(header(headers, "X-Kiln-Event").unwrap_or("push").to_owned());
        }
    };
    let name = match provider {
        HookProvider::Github => "X-GitHub-Event",
        HookProvider::Gitlab => "X-Gitlab-Event",
        _ => "X-Gitea-Event",
    };
    match found {
        Some(e) if e.len() <= 100 => Ok(e.to_owned()),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} is longer than 100 characters"
        ))),
        None => Err(ApiError::bad_request(format!(
            "the {name} header is missing: kiln cannot tell which event this is"
        ))),
    }
}

fn is_ping(provider: HookProvider, event: &str) -> bool {
    matches!(provider, HookProvider::Github | HookProvider::Generic) && event == "ping"
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn corpus_dir() -> std::path::PathBuf {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
        assert!(
            dir.is_dir(),
            "the shared corpus is not at {}",
            dir.display()
        );
        dir
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn sign(secret: &[u8], parts: &[&[u8]]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        for p in parts {
            mac.update(p);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn github_documents_its_test_vector() {
        let corpus = corpus_dir();
        let path = corpus.join("webhooks/github/signature-test-vector.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let h = headers(&[(
            "x-hub-signature-256",
            v["X-Hub-Signature-256"].as_str().unwrap(),
        )]);
        let secret = v["secret"].as_str().unwrap().as_bytes();
        let body = v["payload"].as_str().unwrap().as_bytes();
        assert_eq!(verify(HookProvider::Github, &h, body, secret, 0), Ok(()));
        let e = verify(HookProvider::Github, &h, b"Hello, World?", secret, 0).unwrap_err();
        assert!(e.contains("X-Hub-Signature-256"), "{e}");
        let e = verify(HookProvider::Github, &HeaderMap::new(), body, secret, 0).unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn gitea_signatures_of_the_corpus_verify() {
        let corpus = corpus_dir();
        let dir = corpus.join("webhooks/gitea");
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("headers.json")).unwrap())
                .unwrap();
        let secret = cases["configured_value"].as_str().unwrap().as_bytes();
        for case in cases["cases"].as_array().unwrap() {
            let body = std::fs::read(dir.join(case["file"].as_str().unwrap())).unwrap();
            let sig = case["headers"]["X-Gitea-Signature"].as_str().unwrap();
            let h = headers(&[("x-gitea-signature", sig)]);
            assert_eq!(
                verify(HookProvider::Gitea, &h, &body, secret, 0),
                Ok(()),
                "{case}"
            );
            assert!(verify(HookProvider::Gitea, &h, &body, b"other secret", 0).is_err());
        }
    }

    #[test]
    fn gitlab_compares_the_token() {
        let h = headers(&[("x-gitlab-token", "sampleToken!")]);
        assert_eq!(
            verify(HookProvider::Gitlab, &h, b"{}", b"sampleToken!", 0),
            Ok(())
        );
        let e = verify(HookProvider::Gitlab, &h, b"{}", b"sampleToken?", 0).unwrap_err();
        assert!(e.contains("X-Gitlab-Token"), "{e}");
    }

    #[test]
    fn generic_signs_the_timestamp_and_keeps_a_window() {
        let secret = b"0123456789abcdef0123";
        let body = br#"{"ref":"refs/heads/main"}"#;
        let now = 1_700_000_000;
        let stamp = now.to_string();
        let sig = format!("sha256={}", sign(secret, &[stamp.as_bytes(), b".", body]));
        let h = headers(&[("x-kiln-signature", &sig), ("x-kiln-timestamp", &stamp)]);
        assert_eq!(verify(HookProvider::Generic, &h, body, secret, now), Ok(()));
        assert_eq!(
            verify(HookProvider::Generic, &h, body, secret, now + 300),
            Ok(())
        );
        let e = verify(HookProvider::Generic, &h, body, secret, now + 301).unwrap_err();
        assert!(e.contains("X-Kiln-Timestamp"), "{e}");
        // The body alone signed is not the scheme.
        let body_only = format!("sha256={}", sign(secret, &[body]));
        let h = headers(&[
            ("x-kiln-signature", &body_only),
            ("x-kiln-timestamp", &stamp),
        ]);
        assert!(verify(HookProvider::Generic, &h, body, secret, now).is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"abc"));
    }
}
