//! The envelope and the errors every client can rely on: malformed JSON, wrong types, body
//! limits, unknown routes and methods, request ids.

use serde_json::json;

use crate::harness::{Server, both_backends};

both_backends!(
    malformed_json_names_line_and_column,
    wrong_types_name_the_field,
    bodies_must_be_json,
    bodies_over_the_limit_are_refused,
    chunked_bodies_over_the_limit_are_refused,
    unknown_routes_and_methods_get_envelopes,
    request_ids_are_echoed,
);

async fn malformed_json_names_line_and_column(s: &Server) {
    let r = s
        .post_raw(
            "/api/v1/tokens",
            "{\n  \"name\": \"x\",\n  \"role\": admin\n}",
        )
        .await;
    let e = r.expect_error(400, "MALFORMED_JSON");
    assert_eq!(e["details"], json!({ "line": 3, "column": 11 }), "{e:#}");
    assert!(
        e["message"].as_str().unwrap().contains("line 3, column 11"),
        "{e:#}"
    );
    s.post_raw("/api/v1/tokens", "")
        .await
        .expect_error(400, "MALFORMED_JSON");
    s.post_raw("/api/v1/tokens", r#"{"name":"x","role":"admin"}{}"#)
        .await
        .expect_error(400, "MALFORMED_JSON");
}

async fn wrong_types_name_the_field(s: &Server) {
    let r = s
        .post(
            "/api/v1/tokens",
            &s.admin,
            &json!({ "name": ["x"], "role": "admin" }),
        )
        .await;
    let e = r.expect_error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["fields"][0]["field"], "name", "{e:#}");
    assert!(
        e["message"].as_str().unwrap().contains("invalid type"),
        "{e:#}"
    );
    let r = s
        .post(
            "/api/v1/tokens",
            &s.admin,
            &json!({ "name": "x", "role": 3 }),
        )
        .await;
    let e = r.expect_error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["fields"][0]["field"], "role", "{e:#}");
}

async fn bodies_must_be_json(s: &Server) {
    let plain = s
        .send(
            s.request(reqwest::Method::POST, "/api/v1/tokens")
                .bearer_auth(&s.admin)
                .body(r#"{"name":"x","role":"admin"}"#),
        )
        .await;
    plain.expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
    let text = s
        .send(
            s.request(reqwest::Method::POST, "/api/v1/tokens")
                .bearer_auth(&s.admin)
                .header("content-type", "text/plain")
                .body(r#"{"name":"x","role":"admin"}"#),
        )
        .await;
    text.expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
}

/// A valid token request padded past the default 2 MB limit with white space.
fn oversized_body() -> String {
    let mut body = String::from(r#"{"name":"x","role":"admin"}"#);
    body.push_str(&" ".repeat(2 * 1024 * 1024));
    body
}

async fn bodies_over_the_limit_are_refused(s: &Server) {
    let auth = [("authorization".to_owned(), format!("Bearer {}", s.admin))];
    let answer = s
        .post_over_socket("/api/v1/tokens", &auth, oversized_body().as_bytes())
        .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"PAYLOAD_TOO_LARGE""#), "{answer}");
    assert!(answer.contains("larger"), "{answer}");
    assert_eq!(
        s.store.list_tokens().await.unwrap().len(),
        1,
        "nothing created"
    );
    // Just under the limit is fine.
    let mut body = String::from(r#"{"name":"x","role":"admin"}"#);
    body.push_str(&" ".repeat(2 * 1024 * 1024 - body.len()));
    let ok = s.post_raw("/api/v1/tokens", body).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
}

/// Without a Content-Length the limit is found while reading: the JSON extractor's path.
async fn chunked_bodies_over_the_limit_are_refused(s: &Server) {
    let body = oversized_body();
    let mut request = format!(
        "POST /api/v1/tokens HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        s.addr, s.admin
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = s.send_over_socket(&request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"PAYLOAD_TOO_LARGE""#), "{answer}");
    assert!(answer.contains("2097152"), "the limit is named: {answer}");
    assert_eq!(
        s.store.list_tokens().await.unwrap().len(),
        1,
        "nothing created"
    );
}

async fn unknown_routes_and_methods_get_envelopes(s: &Server) {
    let r = s.get("/api/v1/nothing-here", Some(&s.admin)).await;
    r.expect_error(404, "NOT_FOUND");
    assert_eq!(r.header("content-type"), Some("application/json"));
    s.get("/no/such/page", Some(&s.admin))
        .await
        .expect_error(404, "NOT_FOUND");
    // The webhook route takes POST only; other paths under it are plain 404s.
    s.get("/hooks/0000", None)
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
    s.get("/hooks/0000/x", None)
        .await
        .expect_error(404, "NOT_FOUND");

    let put = s
        .send(
            s.request(reqwest::Method::PUT, "/api/v1/tokens")
                .bearer_auth(&s.admin),
        )
        .await;
    put.expect_error(405, "METHOD_NOT_ALLOWED");
}

async fn request_ids_are_echoed(s: &Server) {
    let given = s
        .send(
            s.request(reqwest::Method::GET, "/api/v1/status")
                .bearer_auth(&s.admin)
                .header("x-request-id", "trace-42"),
        )
        .await;
    assert_eq!(given.header("x-request-id"), Some("trace-42"));
    assert_eq!(given.json()["meta"]["request_id"], "trace-42");

    // Errors carry it too, and unsafe characters are dropped, long ids cut.
    let odd = s
        .send(
            s.request(reqwest::Method::GET, "/api/v1/status")
                .header("x-request-id", format!("a<b>\"c{}", "d".repeat(300))),
        )
        .await;
    odd.expect_error(401, "UNAUTHORIZED");
    let id = odd.header("x-request-id").unwrap().to_owned();
    assert!(id.starts_with("abc") && id.len() == 128, "{id}");
    assert_eq!(odd.json()["meta"]["request_id"], id.as_str());

    // Without one, the server makes one up; each request gets its own.
    let a = s.get("/api/v1/status", Some(&s.admin)).await;
    let b = s.get("/api/v1/status", Some(&s.admin)).await;
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert!(uuid::Uuid::parse_str(a).is_ok(), "{a}");
    assert_ne!(a, b);
    // Plain answers get one too.
    assert!(
        s.get("/healthz", None)
            .await
            .header("x-request-id")
            .is_some()
    );
}
