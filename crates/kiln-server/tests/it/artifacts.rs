//! Artifacts end to end on the server's own pool: a workflow keeps files through
//! `jobs.<id>.artifacts` (with metadata from the workflow and from `$KILN_ARTIFACT_METADATA`)
//! and `actions/upload-artifact`, a later job downloads them, and the API lists, describes and
//! serves them (ETag, If-None-Match, Range) and answers the dependency API. The same bytes
//! kept by a second run are stored once. On SQLite and PostgreSQL with the local folder, and
//! on a local S3.

use futures_util::StreamExt as _;
use kiln_core::ids::{JobStatus, RunStatus};
use kiln_testkit::s3::LocalS3;
use serde_json::json;

use crate::harness::Server;
use crate::runs_write::wait_until;

const WORKFLOW: &str = r#"
name: release
on: workflow_dispatch
jobs:
  build:
    runs-on: linux
    steps:
      - run: |
          mkdir -p dist docs/api
          printf 'node-18-bytes' > dist/node-v18.2.0.tgz
          echo one > docs/index.md
          echo two > docs/api/ref.md
          echo '{"name": "node", "purl": "pkg:generic/node@18.2.0", "source_sha256": "'"$(printf src | sha256sum | cut -d' ' -f1)"'"}' >> "$KILN_ARTIFACT_METADATA"
      - id: up
        uses: actions/upload-artifact@v4
        with:
          name: docs
          path: docs/
    artifacts:
      - name: node
        path: dist/*.tgz
        metadata:
          version: ${{ github.event_name == 'workflow_dispatch' && '18.2.0' || 'x' }}
          source: https://nodejs.org/dist/v18.2.0/node-v18.2.0.tar.gz
          licenses: MIT
          cpes: [cpe:2.3:a:nodejs:node.js:18.2.0:*:*:*:*:*:*:*]
          stacks: [io.buildpacks.stacks.jammy]
          deprecation_date: 2027-04-30
          labels:
            channel: lts
  use:
    runs-on: linux
    needs: build
    steps:
      - uses: actions/download-artifact@v4
        with:
          name: node
          path: got
      - run: test "$(cat got/node-v18.2.0.tgz)" = node-18-bytes
      - uses: actions/download-artifact@v4
        with:
          path: all
      - run: |
          test "$(cat all/docs/index.md)" = one
          test "$(cat all/docs/api/ref.md)" = two
          test -f all/node/node-v18.2.0.tgz
"#;

async fn project(s: &Server, workflow: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".kiln/workflows/release.yml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, workflow).unwrap();
    let name = format!("p{}", uuid::Uuid::new_v4().simple());
    let root = dir.keep();
    s.store
        .upsert_project(&name, &root.to_string_lossy())
        .await
        .unwrap();
    name
}

async fn run(s: &Server, project: &str) -> kiln_proto::Run {
    let id = s.start_workflow(project, "release").await;
    wait_until(s, id, |r| r.status.is_terminal()).await
}

async fn log_of(s: &Server, job: &kiln_proto::Job) -> String {
    s.get(&format!("/api/v1/logs/{}", job.id), Some(&s.admin))
        .await
        .text
}

async fn kept_and_served(s: &Server) {
    let name = project(s, WORKFLOW).await;
    let r = run(s, &name).await;
    for j in &r.jobs {
        assert_eq!(j.status, JobStatus::Success, "{}", log_of(s, j).await);
    }
    assert_eq!(r.status, RunStatus::Success);

    let list = s
        .get(&format!("/api/v1/artifacts?run={}", r.id), Some(&s.admin))
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let arts = list.data()["artifacts"].as_array().unwrap().clone();
    let names: Vec<&str> = arts.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node", "docs"], "newest first");
    let node = &arts[0];
    assert_eq!(node["format"], "file");
    assert_eq!(node["file_name"], "node-v18.2.0.tgz");
    assert_eq!(node["size"], 13);
    assert_eq!(node["semver"], "18.2.0");
    assert_eq!(node["project"], name.as_str());
    let m = &node["metadata"];
    assert_eq!(m["version"], "18.2.0");
    assert_eq!(
        m["purl"], "pkg:generic/node@18.2.0",
        "from the metadata file"
    );
    assert_eq!(m["licenses"], "MIT");
    assert_eq!(m["labels"]["channel"], "lts");
    assert_eq!(arts[1]["format"], "tar");
    assert_eq!(arts[1]["file_name"], "docs.tar");

    // Metadata, download, ETag, ranges.
    let id = node["id"].as_str().unwrap();
    let one = s
        .get(&format!("/api/v1/artifacts/{id}"), Some(&s.admin))
        .await;
    assert_eq!(one.data()["sha256"], node["sha256"]);
    let dl = format!("/api/v1/artifacts/{id}/download");
    let whole = s.get(&dl, Some(&s.admin)).await;
    assert_eq!((whole.status, whole.text.as_str()), (200, "node-18-bytes"));
    let etag = whole.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", node["sha256"].as_str().unwrap()));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let cached = s
        .send(
            s.request(reqwest::Method::GET, &dl)
                .bearer_auth(&s.admin)
                .header("if-none-match", &etag),
        )
        .await;
    assert_eq!(cached.status, 304);
    let part = s
        .send(
            s.request(reqwest::Method::GET, &dl)
                .bearer_auth(&s.admin)
                .header("range", "bytes=5-6"),
        )
        .await;
    assert_eq!((part.status, part.text.as_str()), (206, "18"));
    assert_eq!(part.header("content-range"), Some("bytes 5-6/13"));
    let tail = s
        .send(
            s.request(reqwest::Method::GET, &dl)
                .bearer_auth(&s.admin)
                .header("range", "bytes=-5"),
        )
        .await;
    assert_eq!(tail.text, "bytes");
    let beyond = s
        .send(
            s.request(reqwest::Method::GET, &dl)
                .bearer_auth(&s.admin)
                .header("range", "bytes=99-"),
        )
        .await;
    beyond.expect_error(416, "RANGE_NOT_SATISFIABLE");
    assert_eq!(beyond.header("content-range"), Some("bytes */13"));

    // Filters and their refusals.
    let by_label = s
        .get("/api/v1/artifacts?label=channel=lts", Some(&s.admin))
        .await;
    assert_eq!(by_label.data()["artifacts"].as_array().unwrap().len(), 1);
    s.get("/api/v1/artifacts?colour=red", Some(&s.admin))
        .await
        .expect_invalid("colour");
    s.get("/api/v1/artifacts?run=nope", Some(&s.admin))
        .await
        .expect_invalid("run");
    s.get("/api/v1/artifacts?label=x", Some(&s.admin))
        .await
        .expect_invalid("label");
    s.get(
        &format!("/api/v1/artifacts/{}", uuid::Uuid::now_v7()),
        Some(&s.admin),
    )
    .await
    .expect_error(404, "ARTIFACT_NOT_FOUND");
    s.get("/api/v1/artifacts/nope/download", Some(&s.admin))
        .await
        .expect_error(404, "ARTIFACT_NOT_FOUND");

    // The dependency API: per version, the fields a buildpack takes.
    let deps = s
        .get("/api/v1/dependencies?name=node", Some(&s.admin))
        .await;
    assert_eq!(deps.status, 200, "{}", deps.text);
    let d = &deps.data()[0];
    assert_eq!(d["id"], "node");
    assert_eq!(d["version"], "18.2.0");
    assert_eq!(d["sha256"], node["sha256"]);
    assert_eq!(
        d["uri"],
        format!("{}/api/v1/artifacts/{id}/download", s.base)
    );
    assert_eq!(
        d["source"],
        "https://nodejs.org/dist/v18.2.0/node-v18.2.0.tar.gz"
    );
    assert_eq!(d["licenses"], json!(["MIT"]));
    assert_eq!(
        d["cpes"][0],
        "cpe:2.3:a:nodejs:node.js:18.2.0:*:*:*:*:*:*:*"
    );
    assert_eq!(d["stacks"], json!(["io.buildpacks.stacks.jammy"]));
    assert_eq!(d["deprecation_date"], "2027-04-30");
    assert_eq!(d["purl"], "pkg:generic/node@18.2.0");
    for (q, n) in [
        ("18.2.0", 1),
        ("v18.2", 1),
        ("~18.2", 1),
        (">=19", 0),
        ("17.0.0", 0),
    ] {
        let got = s
            .get(
                &format!(
                    "/api/v1/dependencies?name=node&version={}",
                    q.replace('>', "%3E").replace('=', "%3D")
                ),
                Some(&s.admin),
            )
            .await;
        assert_eq!(
            got.data().as_array().unwrap().len(),
            n,
            "version={q}: {}",
            got.text
        );
    }
    s.get("/api/v1/dependencies", Some(&s.admin))
        .await
        .expect_invalid("name");
    s.get(
        "/api/v1/dependencies?name=node&version=%3E%3Dnope",
        Some(&s.admin),
    )
    .await
    .expect_invalid("version");

    // A second run keeps the same bytes: a new artifact, the same blob.
    let again = run(s, &name).await;
    assert_eq!(again.status, RunStatus::Success);
    let same = s
        .get(
            &format!(
                "/api/v1/artifacts?sha256={}",
                node["sha256"].as_str().unwrap()
            ),
            Some(&s.admin),
        )
        .await;
    assert_eq!(same.data()["artifacts"].as_array().unwrap().len(), 2);
    // Both runs kept 18.2.0: the dependency API serves the newest.
    let deps = s
        .get("/api/v1/dependencies?name=node", Some(&s.admin))
        .await;
    assert_eq!(deps.data().as_array().unwrap().len(), 1);
    assert_ne!(deps.data()[0]["uri"], d["uri"]);
}

async fn bad_metadata_and_missing_files_fail_the_job_saying_where(s: &Server) {
    let wf = r#"
name: release
on: workflow_dispatch
jobs:
  meta:
    runs-on: linux
    steps:
      - run: echo x > a.txt
    artifacts:
      - name: a
        path: a.txt
        metadata:
          purl: node
  nothing:
    runs-on: linux
    steps:
      - run: "true"
    artifacts:
      - name: b
        path: missing/**
  file:
    runs-on: linux
    steps:
      - run: |
          echo x > b.txt
          echo '{"name": "b", "colour": "red"}' >> "$KILN_ARTIFACT_METADATA"
    artifacts:
      - name: b
        path: b.txt
  down:
    runs-on: linux
    steps:
      - uses: actions/download-artifact@v4
        with:
          name: never-kept
"#;
    let name = project(s, wf).await;
    let r = run(s, &name).await;
    assert_eq!(r.status, RunStatus::Failure);
    let find = |k: &str| r.jobs.iter().find(|j| j.key == k).unwrap().clone();
    let expect = [
        (
            "meta",
            "artifact `a`: metadata.purl: `node` is not a package URL",
        ),
        ("nothing", "artifact `b`: no files match `missing/**`"),
        (
            "file",
            "$KILN_ARTIFACT_METADATA line 1: unknown field `colour`",
        ),
        ("down", "this run has no artifact named `never-kept`"),
    ];
    for (key, message) in expect {
        let j = find(key);
        assert_eq!(j.status, JobStatus::Failure, "{key}");
        let log = log_of(s, &j).await;
        assert!(log.contains(message), "{key}: {log}");
    }
    let kept = s
        .get(&format!("/api/v1/artifacts?run={}", r.id), Some(&s.admin))
        .await;
    assert_eq!(kept.data()["artifacts"], json!([]), "nothing half-kept");
}

macro_rules! artifacts_on {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let s = $crate::harness::Server::with_artifacts(false, None).await;
                    super::$name(&s).await;
                    s.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let s = $crate::harness::Server::with_artifacts(true, None).await;
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        )+
    };
}

artifacts_on!(
    kept_and_served,
    bad_metadata_and_missing_files_fail_the_job_saying_where
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_and_served_on_s3() {
    let s3 = LocalS3::start();
    let objects = kiln_store::ArtifactStore::s3_with(&s3.url("kiln"), &|k| s3.var(k)).unwrap();
    let s = Server::with_artifacts(false, Some(objects)).await;
    kept_and_served(&s).await;
    s.stop().await;
}

/// The worker side of artifacts, with the test as the worker: an artifact offered by digest
/// is `BLOB_MISSING` until its bytes are uploaded; bytes that hash otherwise are refused; the
/// upload may take longer than the request timeout (1 s here) while other requests may not;
/// the run's artifacts and their bytes come back; a lease the worker lost refuses all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_offer_upload_and_read_artifacts_under_their_lease() {
    let s = Server::for_remote_workers_with(false, std::time::Duration::from_secs(30), |c| {
        c.request_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let wf = "name: release\non: workflow_dispatch\njobs:\n  build:\n    runs-on: linux\n    steps:\n      - run: \"true\"\n";
    let name = project(&s, wf).await;
    s.start_workflow(&name, "release").await;
    let token = s.token("worker").await;
    let reg = s.register_worker(&token, "w", &["linux"], 1).await;
    let w = reg["id"].as_str().unwrap().to_owned();
    let claimed = s
        .post(
            &format!("/api/v1/worker/{w}/claim"),
            &token,
            &json!({"free": 1, "wait_ms": 500}),
        )
        .await;
    let job = claimed.data()["jobs"][0].clone();
    let (id, lease) = (
        job["job"].as_str().unwrap().to_owned(),
        job["token"].as_i64().unwrap(),
    );
    let at = |tail: &str, lease: i64| format!("/api/v1/worker/{w}/jobs/{id}/{tail}?token={lease}");

    // Another request may not take longer than the timeout: a claim waiting 3 s is cut.
    let slow_claim = s
        .post(
            &format!("/api/v1/worker/{w}/claim"),
            &token,
            &json!({"free": 1, "wait_ms": 3000}),
        )
        .await;
    slow_claim.expect_error(504, "TIMEOUT");

    let bytes = b"tool-2.0.0 bytes".to_vec();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let offer = json!({
        "name": "tool", "file_name": "tool.tgz", "format": "file", "sha256": sha,
        "size": bytes.len(), "metadata": {"version": "2.0.0", "licenses": "MIT"}
    });
    s.post(&at("artifacts", lease), &token, &offer)
        .await
        .expect_error(409, "BLOB_MISSING");
    // Bytes that hash to something else are refused.
    let wrong = s
        .send(
            s.request(reqwest::Method::PUT, &at(&format!("blobs/{sha}"), lease))
                .bearer_auth(&token)
                .body(b"other bytes".to_vec()),
        )
        .await;
    wrong.expect_error(422, "DIGEST_MISMATCH");
    // A slow upload (2 s, past the 1 s request timeout) goes through.
    let chunks = bytes.chunks(4).map(<[u8]>::to_vec).collect::<Vec<_>>();
    let body = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        Ok::<_, std::io::Error>(c)
    });
    let put = s
        .send(
            s.request(reqwest::Method::PUT, &at(&format!("blobs/{sha}"), lease))
                .bearer_auth(&token)
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.data()["size"], bytes.len());
    let kept = s.post(&at("artifacts", lease), &token, &offer).await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    // Bad metadata is refused field by field.
    let mut bad = offer.clone();
    bad["metadata"]["licenses"] = json!("MIT OR");
    bad["name"] = json!("");
    let refused = s.post(&at("artifacts", lease), &token, &bad).await;
    let e = refused.expect_error(422, "VALIDATION_FAILED");
    let fields: Vec<&str> = e["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "metadata.licenses"]);

    let listed = s.get(&at("artifacts", lease), Some(&token)).await;
    assert_eq!(listed.data()["artifacts"][0]["sha256"], sha.as_str());
    let got = s
        .get(&at(&format!("blobs/{sha}"), lease), Some(&token))
        .await;
    assert_eq!(got.text.as_bytes(), bytes.as_slice());
    s.get(
        &at(&format!("blobs/{}", "0".repeat(64)), lease),
        Some(&token),
    )
    .await
    .expect_error(404, "ARTIFACT_NOT_FOUND");
    // Under a token that is not the lease's, nothing.
    s.get(&at("artifacts", lease + 1), Some(&token))
        .await
        .expect_error(409, "LEASE_LOST");
    s.post(&at("artifacts", lease + 1), &token, &offer)
        .await
        .expect_error(409, "LEASE_LOST");
    s.stop().await;
}
