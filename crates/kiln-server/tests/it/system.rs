//! The probes, the status route and the documents.

use crate::harness::{Server, both_backends};

both_backends!(probes_and_documents_are_open, status_names_the_backend);

async fn probes_and_documents_are_open(s: &Server) {
    let health = s.get("/healthz", None).await;
    assert_eq!((health.status, health.text.as_str()), (200, "ok"));
    let ready = s.get("/readyz", None).await;
    assert_eq!((ready.status, ready.text.as_str()), (200, "ok"));

    let doc = s.get("/api/v1/openapi.json", None).await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let doc = doc.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{doc:#}"
    );
    assert_eq!(doc["servers"][0]["url"], s.base.as_str());
    for path in ["/api/v1/status", "/api/v1/tokens", "/api/v1/tokens/{id}"] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }

    // Swagger UI from the files built into the binary.
    let ui = s.get("/api/docs/", None).await;
    assert_eq!(ui.status, 200, "{}", ui.text);
    assert!(ui.text.contains("swagger-ui"), "{}", ui.text);
    let config = s.get("/api/docs/swagger-initializer.js", None).await;
    assert_eq!(config.status, 200);
    assert!(
        config.text.contains("/api/v1/openapi.json"),
        "{}",
        config.text
    );
}

async fn status_names_the_backend(s: &Server) {
    let r = s.get("/api/v1/status", Some(&s.admin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.data();
    assert_eq!(data["status"], "ok");
    assert_eq!(data["backend"], s.backend);
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
    let started: jiff::Timestamp = data["started_at"].as_str().unwrap().parse().unwrap();
    assert!(started <= jiff::Timestamp::now());
    let meta = &r.json()["meta"];
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
}
