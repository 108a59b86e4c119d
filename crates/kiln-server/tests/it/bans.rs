//! Bans of webhook senders through the real server, on SQLite and PostgreSQL: failed
//! verifications ban the address from that hook only; scanning unknown hook ids bans it from
//! every hook; a ban answers 403 before the body is read, whatever the signature; admins list
//! and lift bans; exempt ranges are never banned; `X-Forwarded-For` counts only from a
//! trusted proxy.

use std::time::Duration;

use hmac::{Hmac, KeyInit as _, Mac as _};
use kiln_engine::egress::EgressPolicy;
use kiln_server::BanConfig;
use serde_json::json;
use sha2::Sha256;

use crate::harness::{Reply, Server};

const SECRET: &str = "a-test-secret-of-enough-length";

macro_rules! ban_tests {
    ($($name:ident: $never:expr, $trusted:expr),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let s = super::server(false, $never, $trusted).await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let s = super::server(true, $never, $trusted).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}

ban_tests!(
    failed_signatures_ban_the_address_from_that_hook_only: &[], &[],
    scanning_hook_ids_bans_the_address_from_every_hook: &[], &[],
    exempt_ranges_are_never_banned: &["127.0.0.0/8"], &[],
    forwarded_addresses_count_behind_a_trusted_proxy: &[], &["127.0.0.0/8"],
    bans_made_by_another_replica_hold_within_a_second: &[], &[],
);

/// A server banning after 3 failures within a minute, for an hour.
async fn server(postgres: bool, never: &[&str], trusted: &[&str]) -> Server {
    let never = never.iter().map(|n| n.parse().unwrap()).collect();
    let trusted_proxies = trusted.iter().map(|n| n.parse().unwrap()).collect();
    Server::with_config(postgres, false, move |c| {
        c.bans = BanConfig {
            threshold: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(3600),
            never,
            trusted_proxies,
        };
        let mut egress = EgressPolicy::default();
        egress.allow_local_paths = true;
        c.egress = egress;
    })
    .await
}

/// A folder project with a GitHub hook and the test secret; its hook id.
async fn hooked(s: &Server, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap().keep();
    let r = s
        .post(
            "/api/v1/projects",
            &s.admin,
            &json!({ "source": dir, "name": name, "provider": "github", "secret": SECRET }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let url = r.data()["hook_url"].as_str().unwrap().to_owned();
    url.rsplit('/').next().unwrap().to_owned()
}

/// A GitHub ping to `hook`, signed with `secret`, from `forwarded_for` if given.
async fn ping(s: &Server, hook: &str, secret: &str, forwarded_for: Option<&str>) -> Reply {
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let mut req = s
        .request(reqwest::Method::POST, &format!("/hooks/{hook}"))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "ping")
        .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
        .header("X-Hub-Signature-256", signature)
        .body(body);
    if let Some(addr) = forwarded_for {
        req = req.header("X-Forwarded-For", addr);
    }
    s.send(req).await
}

async fn bans(s: &Server, all: bool) -> Vec<serde_json::Value> {
    let path = if all {
        "/api/v1/bans?all=true"
    } else {
        "/api/v1/bans"
    };
    s.get(path, Some(&s.admin)).await.data()["bans"]
        .as_array()
        .unwrap()
        .clone()
}

async fn failed_signatures_ban_the_address_from_that_hook_only(s: &Server) {
    let one = hooked(s, "one").await;
    let two = hooked(s, "two").await;
    assert_eq!(ping(s, &one, SECRET, None).await.status, 200);
    for _ in 0..3 {
        ping(s, &one, "a-wrong-secret-of-enough-length", None)
            .await
            .expect_error(401, "SIGNATURE_INVALID");
    }
    // Banned from hook one, even with the right signature; hook two still answers.
    let refused = ping(s, &one, SECRET, None).await;
    let e = refused.expect_error(403, "BANNED");
    assert!(
        e["message"].as_str().unwrap().contains("127.0.0.1"),
        "{e:#}"
    );
    assert_eq!(ping(s, &two, SECRET, None).await.status, 200);

    let listed = bans(s, false).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["address"], "127.0.0.1");
    assert_eq!(listed[0]["hook_id"], one);
    assert_eq!(listed[0]["failures"], 3);
    let id = listed[0]["id"].as_str().unwrap().to_owned();

    // Only an admin lists or lifts.
    let viewer = s.token("viewer").await;
    s.get("/api/v1/bans", Some(&viewer))
        .await
        .expect_error(403, "FORBIDDEN");
    s.get("/api/v1/bans?all=maybe", Some(&s.admin))
        .await
        .expect_error(400, "BAD_REQUEST");
    let lift = |path: String| {
        s.send(
            s.request(reqwest::Method::DELETE, &path)
                .bearer_auth(&s.admin),
        )
    };
    lift("/api/v1/bans/nope".into())
        .await
        .expect_error(404, "BAN_NOT_FOUND");
    let lifted = lift(format!("/api/v1/bans/{id}")).await;
    assert_eq!(lifted.status, 200, "{}", lifted.text);
    assert!(lifted.data()["lifted_at"].is_string());
    assert_eq!(ping(s, &one, SECRET, None).await.status, 200);
    assert!(bans(s, false).await.is_empty());
    assert_eq!(bans(s, true).await.len(), 1);
    // Counting starts again from zero after a lift.
    for _ in 0..2 {
        ping(s, &one, "a-wrong-secret-of-enough-length", None).await;
    }
    assert_eq!(ping(s, &one, SECRET, None).await.status, 200);
}

/// The hook route keeps the bans it read for a second: a ban made in the store by another
/// replica (here: straight in the store) is honoured within that, and so is its lift.
async fn bans_made_by_another_replica_hold_within_a_second(s: &Server) {
    let one = hooked(s, "one").await;
    assert_eq!(ping(s, &one, SECRET, None).await.status, 200);
    let now = jiff::Timestamp::now();
    let ban = kiln_proto::Ban {
        id: uuid::Uuid::now_v7().to_string(),
        address: "127.0.0.1".to_owned(),
        hook_id: None,
        reason: "made by another replica".to_owned(),
        failures: 10,
        created_at: now,
        expires_at: now + jiff::SignedDuration::from_secs(3600),
        lifted_at: None,
    };
    s.store.add_ban(&ban).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = ping(s, &one, SECRET, None)
        .await
        .expect_error(403, "BANNED");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("made by another replica"),
        "{e:#}"
    );
    s.store
        .lift_ban(&ban.id, jiff::Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ping(s, &one, SECRET, None).await.status, 200);
}

async fn scanning_hook_ids_bans_the_address_from_every_hook(s: &Server) {
    let one = hooked(s, "one").await;
    for _ in 0..3 {
        let unknown = uuid::Uuid::new_v4().to_string();
        ping(s, &unknown, SECRET, None)
            .await
            .expect_error(404, "HOOK_NOT_FOUND");
    }
    ping(s, &one, SECRET, None)
        .await
        .expect_error(403, "BANNED");
    let listed = bans(s, false).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["hook_id"], serde_json::Value::Null);
    // The API itself is not behind the ban.
    assert_eq!(s.get("/api/v1/status", Some(&s.admin)).await.status, 200);
}

async fn exempt_ranges_are_never_banned(s: &Server) {
    let one = hooked(s, "one").await;
    for _ in 0..5 {
        ping(s, &one, "a-wrong-secret-of-enough-length", None)
            .await
            .expect_error(401, "SIGNATURE_INVALID");
    }
    assert_eq!(ping(s, &one, SECRET, None).await.status, 200);
    assert!(bans(s, true).await.is_empty());
}

async fn forwarded_addresses_count_behind_a_trusted_proxy(s: &Server) {
    let one = hooked(s, "one").await;
    for _ in 0..3 {
        ping(
            s,
            &one,
            "a-wrong-secret-of-enough-length",
            Some("203.0.113.7"),
        )
        .await
        .expect_error(401, "SIGNATURE_INVALID");
    }
    // The forwarded address is banned; the proxy's other clients are not.
    ping(s, &one, SECRET, Some("203.0.113.7"))
        .await
        .expect_error(403, "BANNED");
    assert_eq!(
        ping(s, &one, SECRET, Some("198.51.100.1")).await.status,
        200
    );
    let listed = bans(s, false).await;
    assert_eq!(listed[0]["address"], "203.0.113.7");
}
