//! Artifacts: their rows on both backends (record, replace, refuse a name another job took,
//! list and filter) and their bytes in a local folder and on a local S3 (stored once per
//! digest, read whole, by range, and into a file).

use kiln_core::ids::{JobId, JobStatus};
use kiln_proto::ArtifactMeta;
use kiln_proto::artifacts::ArtifactFormat;
use kiln_store::{ArtifactFilter, ArtifactStore, NewArtifact, StoreError};
use kiln_testkit::s3::LocalS3;

use crate::harness::{Harness, both_backends, new_job, new_run};

both_backends!(artifacts_are_recorded_listed_and_named_once_per_run);

fn artifact(run: kiln_core::ids::RunId, job: JobId, name: &str, version: &str) -> NewArtifact {
    NewArtifact {
        run,
        job,
        name: name.to_owned(),
        file_name: format!("{name}.tgz"),
        format: ArtifactFormat::File,
        sha256: "a".repeat(64),
        size: 3,
        metadata: ArtifactMeta {
            version: Some(version.to_owned()),
            labels: [("channel".to_owned(), "lts".to_owned())].into(),
            ..ArtifactMeta::default()
        },
    }
}

async fn artifacts_are_recorded_listed_and_named_once_per_run(h: &Harness) {
    let s = &h.store;
    let project = s.upsert_project("p", "/src/p").await.unwrap();
    let run = s
        .create_run(new_run(
            project.id,
            "ci.yml",
            vec![
                new_job("a", JobStatus::Queued, 3),
                new_job("b", JobStatus::Queued, 3),
            ],
        ))
        .await
        .unwrap();
    let (a, b) = (run.jobs[0].id, run.jobs[1].id);
    let first = s
        .record_artifact(&artifact(run.id, a, "node", "v18.2"))
        .await
        .unwrap();
    let got = s.get_artifact(first).await.unwrap().unwrap();
    assert_eq!(got.project, "p");
    assert_eq!(got.semver.as_deref(), Some("18.2.0"));
    assert_eq!(got.metadata.labels["channel"], "lts");

    // The same job keeping the name again replaces it; another job may not take it.
    let again = s
        .record_artifact(&artifact(run.id, a, "node", "18.2.1"))
        .await
        .unwrap();
    assert!(s.get_artifact(first).await.unwrap().is_none());
    assert_eq!(
        s.get_artifact(again)
            .await
            .unwrap()
            .unwrap()
            .metadata
            .version
            .as_deref(),
        Some("18.2.1")
    );
    let taken = s.record_artifact(&artifact(run.id, b, "node", "1")).await;
    assert!(
        matches!(taken, Err(StoreError::NameTaken { .. })),
        "{taken:?}"
    );
    s.record_artifact(&artifact(run.id, b, "python", "3.12.0"))
        .await
        .unwrap();

    let all = s
        .list_artifacts(&ArtifactFilter::default(), None, 0)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["python", "node"],
        "newest first"
    );
    let by = |f: ArtifactFilter| async move {
        s.list_artifacts(&f, None, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by(ArtifactFilter {
            name: Some("node".into()),
            ..Default::default()
        })
        .await,
        ["node"]
    );
    assert_eq!(
        by(ArtifactFilter {
            job: Some(b),
            ..Default::default()
        })
        .await,
        ["python"]
    );
    assert_eq!(
        by(ArtifactFilter {
            version: Some("3.12.0".into()),
            ..Default::default()
        })
        .await,
        ["python"]
    );
    assert_eq!(
        by(ArtifactFilter {
            project: Some("other".into()),
            ..Default::default()
        })
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        by(ArtifactFilter {
            labels: vec![("channel".into(), "lts".into())],
            ..Default::default()
        })
        .await,
        ["python", "node"]
    );
    assert!(
        by(ArtifactFilter {
            labels: vec![("channel".into(), "edge".into())],
            ..Default::default()
        })
        .await
        .is_empty()
    );
    // Pages.
    let page = s
        .list_artifacts(&ArtifactFilter::default(), None, 1)
        .await
        .unwrap();
    let rest = s
        .list_artifacts(&ArtifactFilter::default(), Some(page[0].id), 10)
        .await
        .unwrap();
    assert_eq!(
        (page[0].name.as_str(), rest[0].name.as_str()),
        ("python", "node")
    );
    assert!(s.run_has_blob(run.id, &"a".repeat(64)).await.unwrap());
    assert!(!s.run_has_blob(run.id, &"b".repeat(64)).await.unwrap());
    // A run that does not exist has nothing to keep artifacts for.
    let missing = s
        .record_artifact(&artifact(kiln_core::ids::RunId::new(), a, "x", "1"))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
}

async fn blobs_are_stored_once_and_read_back(objects: &ArtifactStore) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let first = objects.put_file(&file).await.unwrap();
    assert!(!first.existed);
    assert_eq!(first.size, data.len() as u64);
    assert_eq!(
        first.sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
    );
    let second = objects.put_file(&file).await.unwrap();
    assert!(second.existed, "the same bytes are stored once");
    assert!(objects.exists(&first.sha256).await.unwrap());

    let read = objects
        .get(&first.sha256, Some(10..20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (read.total, read.range.clone()),
        (data.len() as u64, 10..20)
    );
    let mut body = Vec::new();
    let mut stream = read.body;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body, &data[10..20]);

    let out = dir.path().join("out.bin");
    assert_eq!(
        objects.get_to_file(&first.sha256, &out).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(objects.get(&"0".repeat(64), None).await.unwrap().is_none());
    let small = objects.put_bytes(b"hello".to_vec()).await.unwrap();
    assert!(!small.existed);
    assert!(objects.put_bytes(b"hello".to_vec()).await.unwrap().existed);
}

#[tokio::test]
async fn blobs_in_a_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let objects = ArtifactStore::open(None, dir.path()).unwrap();
    blobs_are_stored_once_and_read_back(&objects).await;
    // Content-addressed files under the folder.
    let stored: Vec<_> = walkdir::WalkDir::new(dir.path().join("artifacts"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(
        stored
            .iter()
            .all(|e| e.path().to_string_lossy().contains("/sha256/"))
    );
}

#[tokio::test]
async fn blobs_on_a_local_s3() {
    let s3 = LocalS3::start();
    let objects = ArtifactStore::s3_with(&s3.url("kiln/artifacts"), &|k| s3.var(k)).unwrap();
    blobs_are_stored_once_and_read_back(&objects).await;
}

#[test]
fn bad_artifact_locations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = ArtifactStore::open(Some("ftp://host/x"), dir.path()).unwrap_err();
    assert!(e.to_string().contains("s3://bucket/prefix"), "{e}");
    let e = ArtifactStore::open(Some("s3:///prefix"), dir.path()).unwrap_err();
    assert!(e.to_string().contains("bucket is missing"), "{e}");
}
