//! `/api/v1/tokens`: create (plaintext shown once), list (never secrets), revoke.

use serde_json::{Value, json};

use crate::harness::{Server, both_backends};

both_backends!(
    tokens_are_created_listed_and_revoked,
    bad_token_requests_name_the_field,
);

async fn tokens_are_created_listed_and_revoked(s: &Server) {
    let created = s
        .post(
            "/api/v1/tokens",
            &s.admin,
            &json!({ "name": " ci bot ", "role": "developer" }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let data = created.data();
    let keys: Vec<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "name", "role", "token"]);
    assert_eq!(
        (data["name"].as_str(), data["role"].as_str()),
        (Some("ci bot"), Some("developer"))
    );
    let token = data["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("kiln_") && token.len() == 69, "{token}");
    let id = data["id"].as_str().unwrap().to_owned();

    // The new token works, as a developer.
    let status = s.get("/api/v1/status", Some(&token)).await;
    assert_eq!(status.status, 200, "{}", status.text);

    let list = s.get("/api/v1/tokens", Some(&s.admin)).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert!(!list.text.contains(&token), "secrets are never listed");
    let tokens = list.data()["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens.len(), 2);
    let mine = tokens.iter().find(|t| t["id"] == id.as_str()).unwrap();
    assert_eq!(mine["role"], "developer");
    assert_eq!(mine["revoked"], false);
    assert!(
        mine["last_used_at"].is_string(),
        "its use was recorded: {mine}"
    );
    assert!(mine.get("token").is_none());
    let admin = tokens.iter().find(|t| t["id"] != id.as_str()).unwrap();
    assert_eq!(
        (admin["name"].as_str(), admin["role"].as_str()),
        (Some("admin"), Some("admin"))
    );

    let revoke = |id: String| async move {
        s.send(
            s.request(reqwest::Method::DELETE, &format!("/api/v1/tokens/{id}"))
                .bearer_auth(&s.admin),
        )
        .await
    };
    let revoked = revoke(id.clone()).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(revoked.data()["revoked"], true);
    s.get("/api/v1/status", Some(&token))
        .await
        .expect_error(401, "UNAUTHORIZED");
    let listed: Value = s.get("/api/v1/tokens", Some(&s.admin)).await.data();
    let mine = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["revoked"], true, "revoked tokens stay listed");

    let unknown = revoke(uuid::Uuid::new_v4().to_string()).await;
    let e = unknown.expect_error(404, "TOKEN_NOT_FOUND");
    assert!(e["message"].as_str().unwrap().contains("no token"), "{e}");
    revoke("not-an-id".to_owned())
        .await
        .expect_error(404, "TOKEN_NOT_FOUND");
}

async fn bad_token_requests_name_the_field(s: &Server) {
    let cases = [
        (json!({ "name": "", "role": "admin" }), "name"),
        (json!({ "name": "x".repeat(101), "role": "admin" }), "name"),
        (json!({ "name": "n", "role": "root" }), "role"),
        (json!({ "name": "n" }), "role"),
        (
            json!({ "name": "n", "role": "admin", "project": "nope" }),
            "project",
        ),
        (
            json!({ "name": "n", "role": "admin", "project": uuid::Uuid::new_v4() }),
            "project",
        ),
        (
            json!({ "name": "n", "role": "admin", "scope": "all" }),
            "scope",
        ),
    ];
    for (body, field) in cases {
        let r = s.post("/api/v1/tokens", &s.admin, &body).await;
        let e = r.expect_error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["fields"][0]["field"], field, "{body}: {e:#}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`")),
            "{body}: {e:#}"
        );
    }
    assert_eq!(
        s.store.list_tokens().await.unwrap().len(),
        1,
        "nothing created"
    );

    // A project that exists is accepted.
    let project = s.store.upsert_project("demo", "/src/demo").await.unwrap();
    let r = s
        .post(
            "/api/v1/tokens",
            &s.admin,
            &json!({ "name": "deployer", "role": "maintainer", "project": project.id }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.data()["project"], project.id.to_string());
}
