//! The artifact host of a job on this worker: its artifacts go to the server, and the run's
//! artifacts come from it, under the job's lease token. A blob the server has already (the
//! same bytes kept before) is not sent again: the worker offers the artifact by digest first
//! and uploads the bytes only when the server answers `BLOB_MISSING`.

use std::path::Path;
use std::time::Duration;

use kiln_core::ids::JobId;
use kiln_exec::{ArtifactHost, HostFuture};
use kiln_proto::artifacts::{ArtifactUpload, RunArtifact, RunArtifacts};
use kiln_proto::workers::WorkerId;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::{Answer, Api};

/// Long enough for a large artifact on a slow link.
const TRANSFER: Duration = Duration::from_secs(3600);
const CALL: Duration = Duration::from_secs(60);

/// One job's artifacts, over HTTP.
#[derive(Clone)]
pub(crate) struct HttpHost {
    pub(crate) api: Api,
    pub(crate) worker: WorkerId,
    pub(crate) job: JobId,
    pub(crate) token: i64,
}

impl std::fmt::Debug for HttpHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHost")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Kept {
    id: String,
}

fn message(a: Answer) -> String {
    match a {
        Answer::Refused { code, message, .. } => format!("{code}: {message}"),
        Answer::Failed(m) => m,
    }
}

/// A file's SHA-256 and size.
async fn digest(path: &Path) -> Result<(String, u64), String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

impl HttpHost {
    fn path(&self, tail: &str) -> String {
        format!(
            "/api/v1/worker/{}/jobs/{}/{tail}{}token={}",
            self.worker,
            self.job,
            if tail.contains('?') { "&" } else { "?" },
            self.token
        )
    }
}

impl ArtifactHost for HttpHost {
    fn upload<'a>(&'a self, blob: &'a Path, upload: &'a ArtifactUpload) -> HostFuture<'a, String> {
        Box::pin(async move {
            let (sha256, size) = digest(blob).await?;
            let offer = ArtifactUpload {
                sha256: sha256.clone(),
                size,
                ..upload.clone()
            };
            let first: Result<Kept, Answer> =
                self.api.post(&self.path("artifacts"), &offer, CALL).await;
            match first {
                Ok(kept) => return Ok(kept.id),
                Err(Answer::Refused { code, .. }) if code == "BLOB_MISSING" => {}
                Err(e) => return Err(message(e)),
            }
            self.api
                .put_file(&self.path(&format!("blobs/{sha256}")), blob, TRANSFER)
                .await
                .map_err(message)?;
            let kept: Kept = self
                .api
                .post(&self.path("artifacts"), &offer, CALL)
                .await
                .map_err(message)?;
            Ok(kept.id)
        })
    }

    fn list(&self) -> HostFuture<'_, Vec<RunArtifact>> {
        Box::pin(async move {
            let list: RunArtifacts = self
                .api
                .get_json(&self.path("artifacts"), CALL)
                .await
                .map_err(message)?;
            Ok(list.artifacts)
        })
    }

    fn fetch<'a>(&'a self, artifact: &'a RunArtifact, dest: &'a Path) -> HostFuture<'a, ()> {
        Box::pin(async move {
            self.api
                .get_to_file(
                    &self.path(&format!("blobs/{}", artifact.sha256)),
                    dest,
                    TRANSFER,
                )
                .await
                .map_err(message)?;
            let (got, _) = digest(dest).await?;
            if got != artifact.sha256 {
                return Err(format!(
                    "the bytes received hash to {got}, not {}",
                    artifact.sha256
                ));
            }
            Ok(())
        })
    }
}
