//! Tokens and roles: 401 without a usable token, 403 for what a role may not do.

use serde_json::json;

use crate::harness::{Server, both_backends};

both_backends!(
    requests_without_a_usable_token_are_refused,
    viewers_only_read,
    workers_only_use_worker_routes,
    only_admins_manage_tokens,
);

async fn requests_without_a_usable_token_are_refused(s: &Server) {
    let none = s.get("/api/v1/status", None).await;
    let e = none.expect_error(401, "UNAUTHORIZED");
    assert!(e["message"].as_str().unwrap().contains("Bearer"), "{e}");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));

    let bad = s.get("/api/v1/status", Some("kiln_0000")).await;
    bad.expect_error(401, "UNAUTHORIZED");

    let basic = s
        .send(
            s.request(reqwest::Method::GET, "/api/v1/status")
                .header("authorization", format!("Basic {}", s.admin)),
        )
        .await;
    basic.expect_error(401, "UNAUTHORIZED");

    // Unknown routes are not probed without a token either.
    s.get("/api/v1/nothing-here", None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    // A refused request never reaches the handler: nothing was created.
    let post = s
        .post(
            "/api/v1/tokens",
            "kiln_nope",
            &json!({ "name": "x", "role": "admin" }),
        )
        .await;
    post.expect_error(401, "UNAUTHORIZED");
    assert_eq!(s.store.list_tokens().await.unwrap().len(), 1);
}

async fn viewers_only_read(s: &Server) {
    let viewer = s.token("viewer").await;
    let status = s.get("/api/v1/status", Some(&viewer)).await;
    assert_eq!(status.status, 200, "{}", status.text);

    let write = s
        .post(
            "/api/v1/tokens",
            &viewer,
            &json!({ "name": "mine", "role": "admin" }),
        )
        .await;
    let e = write.expect_error(403, "FORBIDDEN");
    assert!(e["message"].as_str().unwrap().contains("viewer"), "{e}");
    let delete = s
        .send(
            s.request(
                reqwest::Method::DELETE,
                &format!("/api/v1/tokens/{}", uuid::Uuid::new_v4()),
            )
            .bearer_auth(&viewer),
        )
        .await;
    delete.expect_error(403, "FORBIDDEN");
    assert_eq!(
        s.store.list_tokens().await.unwrap().len(),
        2,
        "nothing created"
    );
}

async fn workers_only_use_worker_routes(s: &Server) {
    let worker = s.token("worker").await;
    let status = s.get("/api/v1/status", Some(&worker)).await;
    assert_eq!(status.status, 200, "{}", status.text);
    let e = s
        .get("/api/v1/tokens", Some(&worker))
        .await
        .expect_error(403, "FORBIDDEN");
    assert!(e["message"].as_str().unwrap().contains("worker"), "{e}");
    s.post(
        "/api/v1/tokens",
        &worker,
        &json!({ "name": "w", "role": "worker" }),
    )
    .await
    .expect_error(403, "FORBIDDEN");
}

async fn only_admins_manage_tokens(s: &Server) {
    for role in ["maintainer", "developer", "viewer"] {
        let token = s.token(role).await;
        let e = s
            .get("/api/v1/tokens", Some(&token))
            .await
            .expect_error(403, "FORBIDDEN");
        assert!(e["message"].as_str().unwrap().contains(role), "{e}");
        // Developers may write in general, but not tokens.
        if role != "viewer" {
            s.post(
                "/api/v1/tokens",
                &token,
                &json!({ "name": "n", "role": "admin" }),
            )
            .await
            .expect_error(403, "FORBIDDEN");
        }
        let status = s.get("/api/v1/status", Some(&token)).await;
        assert_eq!(status.status, 200, "{role}: {}", status.text);
    }
}
