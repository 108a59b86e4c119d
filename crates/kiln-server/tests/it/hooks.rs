//! Project webhooks over HTTP on SQLite and PostgreSQL: real deliveries from the shared
//! corpus (`shared/corpus/webhooks`, read in place), pointed at a `file://` upstream's commits
//! and signed with a test secret per provider scheme. A good delivery is answered `202` and
//! then runs the matching workflow at the event's commit; a replay of its delivery id is a
//! `200` duplicate with the same runs; bad, missing and stale signatures are `401`, unknown
//! hooks `404`, bodies over the hook limit `413`, malformed JSON `400` and recorded.

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit as _, Mac as _};
use kiln_core::ids::{JobStatus, RunId, RunStatus};
use kiln_engine::egress::EgressPolicy;
use kiln_testkit::GitUpstream;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{Reply, Server};

/// `mod name { sqlite, postgres }` tests on a server with an engine whose egress policy
/// admits `file://` upstreams.
macro_rules! with_engine {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let s = $crate::harness::Server::sqlite_with(true, super::local()).await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let s = $crate::harness::Server::postgres_with(true, super::local()).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}

with_engine!(
    each_provider_runs_the_workflow_at_the_pushed_commit,
    replays_bad_signatures_and_bodies_are_told_apart,
    rotation_changes_the_secret_and_the_url,
    a_pull_request_from_a_fork_runs_at_its_head_commit,
    a_pull_request_target_runs_the_base_branch_s_workflow_and_code,
    a_pull_request_onto_a_base_newer_than_the_mirror_is_judged_on_its_own_changes,
);

/// A server killed after answering deliveries it had only journaled (on SQLite they are
/// answered from `<data dir>/intake/` and stored a moment later): the next server on the
/// same data folder stores them and runs them, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_a_killed_server_only_journaled_run_after_the_restart() {
    let up = GitUpstream::new();
    let first = up.commit(&[(".kiln/workflows/ci.yml", CI), ("a", "1")], "one");
    let pushed = up.commit(&[("a", "2")], "two");
    let dir = tempfile::tempdir().unwrap();
    let answered: Vec<String> = {
        // The dead server's part, through its store: answered, journaled, never stored, and
        // claimed by that server's process, as `kiln serve` claims what it answers (the
        // engine's id is the data folder's, kept in `engine-id`).
        std::fs::write(dir.path().join("engine-id"), "the-killed-server").unwrap();
        let store = kiln_store::Store::open_sqlite(dir.path()).await.unwrap();
        assert!(
            store
                .open_intake_journal(&dir.path().join("intake"))
                .await
                .unwrap()
        );
        let project = store
            .create_project("app", &up.url())
            .await
            .unwrap()
            .project
            .id;
        let mut answered = Vec::new();
        for n in 1..=3 {
            let body = serde_json::to_vec(&push_payload("github", &first, &pushed)).unwrap();
            let recorded = store
                .record_delivery(&kiln_store::NewDelivery {
                    project,
                    provider: kiln_proto::HookProvider::Github,
                    delivery: format!("github-{n}"),
                    event: "push".to_owned(),
                    status: kiln_proto::DeliveryStatus::Accepted,
                    reason: None,
                    payload: body,
                    claim: Some(kiln_store::DeliveryClaim {
                        owner: "kiln-serve:the-killed-server/its-process".to_owned(),
                        until: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600),
                    }),
                })
                .await
                .unwrap();
            match recorded {
                kiln_store::Recorded::New(d) => answered.push(d.id.to_string()),
                kiln_store::Recorded::Duplicate(d) => panic!("github-{n} seen before: {d:?}"),
            }
        }
        answered
    };
    let journaled = std::fs::read_dir(dir.path().join("intake"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum::<u64>();
    assert!(journaled > 0, "the deliveries are in the journal only");

    let s = Server::sqlite_on(dir, local()).await;
    for id in &answered {
        let d = s.processed(id).await;
        assert_eq!(d["status"], "processed", "{d:#}");
        let runs = d["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{d:#}");
        let run = s.finished(runs[0].as_str().unwrap()).await;
        assert_eq!(run.sha, pushed);
        assert_eq!(run.status, RunStatus::Success, "{run:#?}");
    }
    assert_eq!(s.run_count().await, 3, "one run per delivery");
    assert!(
        s.store.accepted_deliveries(10).await.unwrap().is_empty(),
        "none is left waiting"
    );
    s.stop().await;
}

fn local() -> EgressPolicy {
    let mut policy = EgressPolicy::default();
    policy.allow_local_paths = true;
    policy.allow_loopback = true;
    policy
}

const SECRET: &str = "kiln-test-secret-0123456789";

const CI: &str = r#"
on:
  push:
    branches: [main]
jobs:
  check:
    runs-on: local
    steps:
      - run: echo "sha=$GITHUB_SHA event=${{ github.event_name }} ref=${{ github.ref }} actor=${{ github.actor }}"
  # Named and decided on the payload (a GitHub body is parsed for planning; the payload kiln
  # makes up when it has none has no `before`), and reading it in its step and its
  # GITHUB_EVENT_PATH.
  event:
    name: before ${{ github.event.before }}
    if: github.event.before
    runs-on: local
    steps:
      - run: echo "before=${{ github.event.before }}"; grep -q '"before"' "$GITHUB_EVENT_PATH"
"#;

/// `shared/corpus` beside the repository.
fn corpus_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(
        dir.is_dir(),
        "the shared corpus is not at {}",
        dir.display()
    );
    dir
}

/// A corpus payload, read in place.
fn corpus(rel: &str) -> Value {
    let dir = corpus_dir();
    let path = dir.join("webhooks").join(rel);
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A push delivery of `provider`: the corpus's push payload, its refs and commits pointed at
/// `main` of the upstream (`before` → `after`).
fn push_payload(provider: &str, before: &str, after: &str) -> Value {
    let mut p = match provider {
        "github" | "generic" => corpus("github/push.go-playground.payload.json"),
        "gitlab" => corpus("gitlab/push-event.json"),
        "gitea" => corpus("gitea/push-event.json"),
        other => panic!("no payload for {other}"),
    };
    p["ref"] = json!("refs/heads/main");
    p["before"] = json!(before);
    p["after"] = json!(after);
    if provider == "gitlab" {
        p["checkout_sha"] = json!(after);
    }
    p
}

fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The headers `provider` sends with `body`, signed with `secret`.
fn signed(provider: &str, secret: &str, delivery: &str, body: &[u8]) -> Vec<(String, String)> {
    let h = |k: &str, v: String| (k.to_owned(), v);
    match provider {
        "github" => vec![
            h("X-GitHub-Event", "push".into()),
            h("X-GitHub-Delivery", delivery.into()),
            h(
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(secret, &[body])),
            ),
        ],
        "gitlab" => vec![
            h("X-Gitlab-Event", "Push Hook".into()),
            h("X-Gitlab-Event-UUID", delivery.into()),
            h("X-Gitlab-Token", secret.into()),
        ],
        "gitea" => vec![
            h("X-Gitea-Event", "push".into()),
            h("X-Gitea-Delivery", delivery.into()),
            h("X-Gitea-Signature", hmac_hex(secret, &[body])),
        ],
        "generic" => {
            let stamp = jiff::Timestamp::now().as_second().to_string();
            vec![
                h("X-Kiln-Event", "push".into()),
                h("X-Kiln-Delivery", delivery.into()),
                h(
                    "X-Kiln-Signature",
                    format!(
                        "sha256={}",
                        hmac_hex(secret, &[stamp.as_bytes(), b".", body])
                    ),
                ),
                h("X-Kiln-Timestamp", stamp),
            ]
        }
        other => panic!("no scheme for {other}"),
    }
}

impl Server {
    /// `POST /hooks/{hook_id}` with `body` and `headers`, no token.
    async fn deliver(&self, hook_id: &str, headers: &[(String, String)], body: Vec<u8>) -> Reply {
        let mut req = self
            .request(reqwest::Method::POST, &format!("/hooks/{hook_id}"))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        self.send(req).await
    }

    /// Registers the upstream as project `name` with `provider` and the test secret; waits
    /// for its fetch. Returns (project id, hook id).
    async fn hooked(&self, up: &GitUpstream, name: &str, provider: &str) -> (String, String) {
        let r = self
            .post(
                "/api/v1/projects",
                &self.admin,
                &json!({ "source": up.url(), "name": name, "provider": provider, "secret": SECRET }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let p = r.data();
        assert_eq!(p["provider"], provider, "{p:#}");
        assert_eq!(
            p["secret"], SECRET,
            "the answer shows the secret once: {p:#}"
        );
        let id = p["id"].as_str().unwrap().to_owned();
        let hook = p["hook_id"].as_str().unwrap().to_owned();
        assert!(
            p["hook_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/hooks/{hook}"))
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let shown = self
                .get(&format!("/api/v1/projects/{id}"), Some(&self.admin))
                .await
                .data();
            assert!(
                shown.get("secret").is_none(),
                "never shown again: {shown:#}"
            );
            if shown["fetch_status"] != "pending" {
                assert_eq!(shown["fetch_status"], "ok", "{shown:#}");
                break;
            }
            assert!(Instant::now() < deadline, "the fetch never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (id, hook)
    }

    /// The delivery once it is no longer `accepted`.
    async fn processed(&self, delivery: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = self
                .get(&format!("/api/v1/deliveries/{delivery}"), Some(&self.admin))
                .await
                .data();
            if d["status"] != "accepted" {
                return d;
            }
            assert!(Instant::now() < deadline, "never processed: {d:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finished(&self, run: &str) -> kiln_proto::Run {
        let id: RunId = run.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.store.get_run(id).await.unwrap().unwrap();
            if r.status.is_terminal() {
                return r;
            }
            assert!(Instant::now() < deadline, "the run never ended: {r:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run_count(&self) -> usize {
        self.store
            .list_runs(&Default::default())
            .await
            .unwrap()
            .len()
    }
}

async fn each_provider_runs_the_workflow_at_the_pushed_commit(s: &Server) {
    let up = GitUpstream::new();
    let first = up.commit(&[(".kiln/workflows/ci.yml", CI), ("a", "1")], "one");
    let pushed = up.commit(&[("a", "2")], "two");
    // The upstream moves on after the push: the run must still be at the pushed commit.
    let later = up.commit(&[("a", "3")], "three");
    for provider in ["github", "gitlab", "gitea", "generic"] {
        let (id, hook) = s.hooked(&up, &format!("app-{provider}"), provider).await;
        let fetched_at = |p: Value| p["fetched_at"].clone();
        let before = fetched_at(
            s.get(&format!("/api/v1/projects/{id}"), Some(&s.admin))
                .await
                .data(),
        );
        let body = serde_json::to_vec(&push_payload(provider, &first, &pushed)).unwrap();
        let headers = signed(provider, SECRET, &format!("{provider}-1"), &body);
        let r = s.deliver(&hook, &headers, body).await;
        assert_eq!(r.status, 202, "{provider}: {}", r.text);
        let answer = r.data();
        assert_eq!(answer["duplicate"], false);
        assert_eq!(answer["runs"], json!([]));
        let d = s.processed(answer["delivery_id"].as_str().unwrap()).await;
        assert_eq!(d["status"], "processed", "{provider}: {d:#}");
        assert_eq!(d["provider"], provider);
        assert_eq!(d["delivery"], format!("{provider}-1"));
        let runs = d["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{d:#}");
        let run = s.finished(runs[0].as_str().unwrap()).await;
        assert_eq!(
            run.sha, pushed,
            "{provider}: at the pushed commit, not {later}"
        );
        assert_eq!(
            (run.event.as_str(), run.git_ref.as_str()),
            ("push", "refs/heads/main")
        );
        let log_of = async |key: &str| {
            let job = run.jobs.iter().find(|j| j.key == key).unwrap();
            let log = s.store.read_log(job.id, 0, 1 << 20).await.unwrap();
            (job.status, String::from_utf8_lossy(&log.data).into_owned())
        };
        let (_, log) = log_of("check").await;
        assert_eq!(run.status, RunStatus::Success, "{provider}: {log}");
        assert!(
            log.contains(&format!(
                "sha={pushed} event=push ref=refs/heads/main actor="
            )),
            "{provider}: {log}"
        );
        let event = run.jobs.iter().find(|j| j.key == "event").unwrap();
        assert_eq!(event.name, format!("before {first}"), "{provider}");
        let (status, log) = log_of("event").await;
        assert_eq!(status, JobStatus::Success, "{provider}: {log}");
        assert!(
            log.contains(&format!("before={first}")),
            "{provider}: {log}"
        );
        let listed = s
            .get(&format!("/api/v1/projects/{id}/deliveries"), Some(&s.admin))
            .await
            .data();
        assert_eq!(listed["deliveries"][0]["id"], d["id"]);
        // The mirror had the pushed commit already: it was not fetched again.
        let after = s
            .get(&format!("/api/v1/projects/{id}"), Some(&s.admin))
            .await
            .data();
        assert_eq!(fetched_at(after), before, "{provider}");
    }
    // A commit the mirror does not have yet is fetched before it runs.
    let (id, hook) = s.hooked(&up, "app-new-commit", "github").await;
    let newer = up.commit(&[("a", "4")], "four");
    let body = serde_json::to_vec(&push_payload("github", &later, &newer)).unwrap();
    let r = s
        .deliver(&hook, &signed("github", SECRET, "github-new", &body), body)
        .await;
    let d = s.processed(r.data()["delivery_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "processed", "{d:#}");
    let run = s.finished(d["runs"][0].as_str().unwrap()).await;
    assert_eq!(run.sha, newer);
    let shown = s
        .get(&format!("/api/v1/projects/{id}"), Some(&s.admin))
        .await
        .data();
    assert_eq!(shown["head_sha"], newer, "{shown:#}");
}

async fn replays_bad_signatures_and_bodies_are_told_apart(s: &Server) {
    let up = GitUpstream::new();
    let first = up.commit(&[(".kiln/workflows/ci.yml", CI)], "one");
    let pushed = up.commit(&[("a", "2")], "two");
    let (id, hook) = s.hooked(&up, "app", "github").await;
    let body = serde_json::to_vec(&push_payload("github", &first, &pushed)).unwrap();
    let good = signed("github", SECRET, "d-1", &body);

    // Unknown hooks, bad and missing signatures: nothing is recorded.
    let unknown = uuid::Uuid::new_v4().to_string();
    s.deliver(&unknown, &good, body.clone())
        .await
        .expect_error(404, "HOOK_NOT_FOUND");
    s.deliver("not-a-uuid", &good, body.clone())
        .await
        .expect_error(404, "HOOK_NOT_FOUND");
    let forged = signed("github", "another secret entirely", "d-1", &body);
    let e = s
        .deliver(&hook, &forged, body.clone())
        .await
        .expect_error(401, "SIGNATURE_INVALID");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("X-Hub-Signature-256"),
        "{e:#}"
    );
    let unsigned: Vec<_> = good
        .iter()
        .filter(|(k, _)| k != "X-Hub-Signature-256")
        .cloned()
        .collect();
    let e = s
        .deliver(&hook, &unsigned, body.clone())
        .await
        .expect_error(401, "SIGNATURE_INVALID");
    assert!(e["message"].as_str().unwrap().contains("missing"), "{e:#}");
    // A signed body changed on the way.
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    s.deliver(&hook, &good, tampered)
        .await
        .expect_error(401, "SIGNATURE_INVALID");
    let none = s
        .get(&format!("/api/v1/projects/{id}/deliveries"), Some(&s.admin))
        .await
        .data();
    assert_eq!(none["deliveries"], json!([]));

    // A good delivery, then its replay: the same runs, no new one.
    let r = s.deliver(&hook, &good, body.clone()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let delivery = r.data()["delivery_id"].as_str().unwrap().to_owned();
    let d = s.processed(&delivery).await;
    assert_eq!(d["status"], "processed", "{d:#}");
    let runs_before = s.run_count().await;
    let replay = s.deliver(&hook, &good, body.clone()).await;
    assert_eq!(replay.status, 200, "{}", replay.text);
    let replay = replay.data();
    assert_eq!(replay["duplicate"], true);
    assert_eq!(replay["delivery_id"], delivery.as_str());
    assert_eq!(replay["runs"], d["runs"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.run_count().await, runs_before, "a replay starts nothing");

    // A ping: 200, recorded as ignored.
    let ping = serde_json::to_vec(&corpus("github/ping.payload.json")).unwrap();
    let mut headers = signed("github", SECRET, "ping-1", &ping);
    headers[0].1 = "ping".into();
    let r = s.deliver(&hook, &headers, ping).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let pinged = s
        .get(
            &format!(
                "/api/v1/deliveries/{}",
                r.data()["delivery_id"].as_str().unwrap()
            ),
            Some(&s.admin),
        )
        .await
        .data();
    assert_eq!(pinged["status"], "ignored", "{pinged:#}");

    // Malformed JSON, signed: 400, recorded as failed with the reason.
    let broken = b"{\"ref\": ".to_vec();
    let headers = signed("github", SECRET, "broken-1", &broken);
    let e = s
        .deliver(&hook, &headers, broken)
        .await
        .expect_error(400, "MALFORMED_JSON");
    let failed = s
        .get(
            &format!(
                "/api/v1/deliveries/{}",
                e["details"]["delivery_id"].as_str().unwrap()
            ),
            Some(&s.admin),
        )
        .await
        .data();
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert!(
        failed["reason"].as_str().unwrap().contains("not JSON"),
        "{failed:#}"
    );

    // An event no workflow takes: ignored, with the reason.
    let mut dev = push_payload("github", &first, &pushed);
    dev["ref"] = json!("refs/heads/dev");
    let other = serde_json::to_vec(&dev).unwrap();
    let headers = signed("github", SECRET, "dev-1", &other);
    let r = s.deliver(&hook, &headers, other).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let d = s.processed(r.data()["delivery_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "ignored", "{d:#}");
    assert!(d["reason"].as_str().unwrap().contains("ci.yml"), "{d:#}");

    // Bigger than the API's 2 MB, within the hook limit: accepted. Over it: 413.
    let mut big = push_payload("github", &first, &pushed);
    big["padding"] = json!("x".repeat(3 * 1024 * 1024));
    let big = serde_json::to_vec(&big).unwrap();
    let headers = signed("github", SECRET, "big-1", &big);
    let r = s.deliver(&hook, &headers, big).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    let headers = signed("github", SECRET, "huge-1", &huge);
    let answer = s
        .post_over_socket(&format!("/hooks/{hook}"), &headers, &huge)
        .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"PAYLOAD_TOO_LARGE""#), "{answer}");

    // Generic: a timestamp out of the ±300 s window is refused even when signed.
    let (_, generic) = s.hooked(&up, "app-generic", "generic").await;
    let stale = (jiff::Timestamp::now().as_second() - 301).to_string();
    let sig = format!(
        "sha256={}",
        hmac_hex(SECRET, &[stale.as_bytes(), b".", &body])
    );
    let headers = vec![
        ("X-Kiln-Event".to_owned(), "push".to_owned()),
        ("X-Kiln-Delivery".to_owned(), "g-1".to_owned()),
        ("X-Kiln-Signature".to_owned(), sig),
        ("X-Kiln-Timestamp".to_owned(), stale),
    ];
    let e = s
        .deliver(&generic, &headers, body.clone())
        .await
        .expect_error(401, "SIGNATURE_INVALID");
    assert!(
        e["message"].as_str().unwrap().contains("X-Kiln-Timestamp"),
        "{e:#}"
    );
    // GitLab: a wrong token.
    let (_, gitlab) = s.hooked(&up, "app-gitlab", "gitlab").await;
    let gl = serde_json::to_vec(&push_payload("gitlab", &first, &pushed)).unwrap();
    let e = s
        .deliver(
            &gitlab,
            &signed("gitlab", "not the token at all", "gl-1", &gl),
            gl,
        )
        .await
        .expect_error(401, "SIGNATURE_INVALID");
    assert!(
        e["message"].as_str().unwrap().contains("X-Gitlab-Token"),
        "{e:#}"
    );
}

async fn rotation_changes_the_secret_and_the_url(s: &Server) {
    let up = GitUpstream::new();
    let first = up.commit(&[(".kiln/workflows/ci.yml", CI)], "one");
    let pushed = up.commit(&[("a", "2")], "two");
    let (id, hook) = s.hooked(&up, "app", "github").await;
    let body = serde_json::to_vec(&push_payload("github", &first, &pushed)).unwrap();
    // Delivered once before the rotation: the server has read (and kept) the old secret.
    let r = s
        .deliver(&hook, &signed("github", SECRET, "r-0", &body), body.clone())
        .await;
    assert_eq!(r.status, 202, "{}", r.text);

    let developer = s.token("developer").await;
    s.post(
        &format!("/api/v1/projects/{id}/hook/rotate"),
        &developer,
        &json!({}),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    let r = s
        .post(
            &format!("/api/v1/projects/{id}/hook/rotate"),
            &s.admin,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rotated = r.data();
    let secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64, "32 random bytes in hex: {rotated:#}");
    assert_eq!(rotated["hook_id"], hook.as_str(), "the URL stays");
    s.deliver(&hook, &signed("github", SECRET, "r-1", &body), body.clone())
        .await
        .expect_error(401, "SIGNATURE_INVALID");
    let r = s
        .deliver(
            &hook,
            &signed("github", &secret, "r-1", &body),
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);

    let r = s
        .post(
            &format!("/api/v1/projects/{id}/hook/rotate"),
            &s.admin,
            &json!({ "hook_id": true, "secret": false }),
        )
        .await;
    let moved = r.data();
    let new_hook = moved["hook_id"].as_str().unwrap();
    assert_ne!(new_hook, hook);
    assert_eq!(moved["secret"], secret.as_str(), "the secret stays");
    s.deliver(
        &hook,
        &signed("github", &secret, "r-2", &body),
        body.clone(),
    )
    .await
    .expect_error(404, "HOOK_NOT_FOUND");
    let r = s
        .deliver(
            new_hook,
            &signed("github", &secret, "r-2", &body),
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let shown = s
        .get(&format!("/api/v1/projects/{id}"), Some(&s.admin))
        .await
        .data();
    assert!(shown["hook_url"].as_str().unwrap().ends_with(new_hook));
    s.post(
        &format!("/api/v1/projects/{id}/hook/rotate"),
        &s.admin,
        &json!({ "value": "short" }),
    )
    .await
    .expect_invalid("value");
}

const PR: &str = r#"
on:
  pull_request:
    branches: [main]
jobs:
  check:
    runs-on: local
    steps:
      - run: echo "sha=$GITHUB_SHA head=${{ github.head_ref }} ref=${{ github.ref }}"; cat fork.txt
"#;

/// GitHub's headers for a signed `pull_request` delivery.
fn pull_request_headers(body: &[u8], delivery: &str) -> Vec<(String, String)> {
    let mut headers = signed("github", SECRET, delivery, body);
    for (k, v) in &mut headers {
        if k == "X-GitHub-Event" {
            *v = "pull_request".to_owned();
        }
    }
    headers
}

/// A pull request from a fork into `main` (at `base`): a commit of `files` reachable upstream
/// only through `refs/pull/<number>/head`, and GitHub's `opened` payload for it (head branch
/// `topic`). Its head commit and the payload.
fn fork_pull_request(
    up: &GitUpstream,
    number: u64,
    files: &[(&str, &str)],
    base: &str,
) -> (String, serde_json::Value) {
    let branch = format!("fork-topic-{number}");
    up.git(&["checkout", "--quiet", "-b", &branch]);
    let head = up.commit(files, "fork work");
    up.git(&["update-ref", &format!("refs/pull/{number}/head"), &head]);
    up.git(&["checkout", "--quiet", "main"]);
    up.git(&["branch", "--quiet", "-D", &branch]);
    let mut p = corpus("github/pull_request.opened.payload.json");
    p["number"] = json!(number);
    p["pull_request"]["number"] = json!(number);
    p["pull_request"]["head"]["sha"] = json!(head);
    p["pull_request"]["head"]["ref"] = json!("topic");
    p["pull_request"]["base"]["ref"] = json!("main");
    p["pull_request"]["base"]["sha"] = json!(base);
    (head, p)
}

/// A pull request from a fork: its head commit is on no branch of the repository, only under
/// `refs/pull/N/head`. kiln fetches that ref and runs at the commit.
async fn a_pull_request_from_a_fork_runs_at_its_head_commit(s: &Server) {
    let up = GitUpstream::new();
    let base = up.commit(&[(".kiln/workflows/pr.yml", PR)], "base");
    let (_, hook) = s.hooked(&up, "app-fork-pr", "github").await;
    let (head, p) = fork_pull_request(&up, 7, &[("fork.txt", "from the fork")], &base);
    let body = serde_json::to_vec(&p).unwrap();
    let headers = pull_request_headers(&body, "fork-pr-1");
    let r = s.deliver(&hook, &headers, body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let d = s.processed(r.data()["delivery_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "processed", "{d:#}");
    let run = s.finished(d["runs"][0].as_str().unwrap()).await;
    assert_eq!(run.sha, head);
    assert_eq!(
        (run.event.as_str(), run.git_ref.as_str()),
        ("pull_request", "refs/pull/7/merge")
    );
    let log = s.store.read_log(run.jobs[0].id, 0, 1 << 20).await.unwrap();
    let log = String::from_utf8_lossy(&log.data);
    assert_eq!(run.status, RunStatus::Success, "{log}");
    assert!(
        log.contains(&format!("sha={head} head=topic ref=refs/pull/7/merge")),
        "{log}"
    );
    assert!(log.contains("from the fork"), "{log}");

    // A commit the provider does not have under that ref either: the delivery fails saying
    // why, without naming where the server keeps its data.
    let mut p = p;
    p["number"] = json!(8);
    p["pull_request"]["number"] = json!(8);
    p["pull_request"]["head"]["sha"] = json!("0123456789abcdef0123456789abcdef01234567");
    let body = serde_json::to_vec(&p).unwrap();
    let headers = pull_request_headers(&body, "fork-pr-2");
    let r = s.deliver(&hook, &headers, body).await;
    let d = s.processed(r.data()["delivery_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "failed", "{d:#}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("could not read the workflows at the event's commit"),
        "{reason}"
    );
    let data = s.data_dir().display().to_string();
    assert!(!reason.contains(&data), "{reason}");
}

const PR_TARGET: &str = r#"
on:
  pull_request_target:
    types: [opened]
    paths: ["src/**"]
jobs:
  label:
    runs-on: local
    steps:
      - run: echo "base workflow sha=$GITHUB_SHA ref=${{ github.ref }} event=${{ github.event_name }} head=${{ github.head_ref }} pr=${{ github.event.number }}"; test ! -e fork.txt
"#;

/// `pull_request_target`: the same delivery as a pull request's, but the run is the base
/// branch's workflow at the base commit — a fork that rewrites the workflow cannot change what
/// runs — while its path filters judge the pull request's files. A pull request whose files
/// the filters leave out starts nothing, and says why.
async fn a_pull_request_target_runs_the_base_branch_s_workflow_and_code(s: &Server) {
    let up = GitUpstream::new();
    // The base branch has files under src/ already: a pull request is judged on what it
    // changes, not on every file its head holds.
    let base = up.commit(
        &[
            (".kiln/workflows/target.yml", PR_TARGET),
            ("src/main.rs", "// on the base branch"),
        ],
        "base",
    );
    let (_, hook) = s.hooked(&up, "app-pr-target", "github").await;
    // The fork rewrites the workflow and touches src/: only the second may count.
    let (_, p) = fork_pull_request(
        &up,
        9,
        &[
            (
                ".kiln/workflows/target.yml",
                "on: pull_request_target\njobs: {evil: {runs-on: local, steps: [{run: 'echo pwned'}]}}\n",
            ),
            ("src/lib.rs", "// from the fork"),
            ("fork.txt", "from the fork"),
        ],
        &base,
    );
    let body = serde_json::to_vec(&p).unwrap();
    let r = s
        .deliver(&hook, &pull_request_headers(&body, "target-1"), body)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let d = s.processed(r.data()["delivery_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "processed", "{d:#}");
    assert_eq!(d["runs"].as_array().unwrap().len(), 1, "{d:#}");
    let run = s.finished(d["runs"][0].as_str().unwrap()).await;
    assert_eq!(
        (run.event.as_str(), run.git_ref.as_str(), run.sha.as_str()),
        ("pull_request_target", "refs/heads/main", base.as_str())
    );
    let log = s.store.read_log(run.jobs[0].id, 0, 1 << 20).await.unwrap();
    let log = String::from_utf8_lossy(&log.data);
    assert_eq!(run.status, RunStatus::Success, "{log}");
    assert!(
        log.contains(&format!(
            "base workflow sha={base} ref=refs/heads/main event=pull_request_target head=topic pr=9"
        )),
        "{log}"
    );
    assert!(!log.contains("pwned"), "{log}");

    // A pull request touching no file under src/: nothing runs, and the delivery says why.
    let (_, p) = fork_pull_request(&up, 10, &[("README.md", "docs only")], &base);
    let body = serde_json::to_vec(&p).unwrap();
    let r = s
        .deliver(&hook, &pull_request_headers(&body, "target-2"), body)
        .await;
    let d = s.processed(r.data()["delivery_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "ignored", "{d:#}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("paths"), "{reason}");
}

const PR_PATHS: &str = r#"
on:
  pull_request:
    paths: ["src/**"]
jobs:
  check:
    runs-on: local
    steps:
      - run: echo checked
"#;

/// A pull request onto a base commit newer than the mirror (the base branch moved on after
/// the last fetch; the head was fetched before): kiln fetches again and judges what the pull
/// request changes — here nothing under src/ — not every file its head holds.
async fn a_pull_request_onto_a_base_newer_than_the_mirror_is_judged_on_its_own_changes(s: &Server) {
    let up = GitUpstream::new();
    let first = up.commit(
        &[
            (".kiln/workflows/pr.yml", PR_PATHS),
            ("src/main.rs", "// on main"),
        ],
        "base",
    );
    // The mirror is made while main holds the pull request's head too.
    let head = up.commit(&[("docs/readme.md", "docs only")], "docs");
    let (_, hook) = s.hooked(&up, "app-pr-moved", "github").await;
    // Then the head moves to a branch of its own and main moves on without it.
    up.git(&["branch", "--quiet", "docs-topic", &head]);
    up.git(&["reset", "--quiet", "--hard", &first]);
    let base = up.commit(&[("src/later.rs", "// later on main")], "later");

    let mut p = corpus("github/pull_request.opened.payload.json");
    p["number"] = json!(11);
    p["pull_request"]["number"] = json!(11);
    p["pull_request"]["head"]["sha"] = json!(head);
    p["pull_request"]["head"]["ref"] = json!("docs-topic");
    p["pull_request"]["base"]["ref"] = json!("main");
    p["pull_request"]["base"]["sha"] = json!(base);
    let body = serde_json::to_vec(&p).unwrap();
    let r = s
        .deliver(&hook, &pull_request_headers(&body, "moved-1"), body)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let d = s.processed(r.data()["delivery_id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "ignored", "{d:#}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("paths"), "{reason}");
}
