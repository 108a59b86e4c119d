//! The artifact host of jobs that run in this process: uploads go straight into the artifact
//! store and its rows, downloads come straight out of them. (A remote worker's jobs reach the
//! same store over HTTP, through the server's worker routes.) Not here: packing and
//! unpacking files (kiln-exec), serving artifacts (kiln-server).

use std::path::Path;

use kiln_core::ids::{JobId, RunId};
use kiln_exec::{ArtifactHost, HostFuture};
use kiln_proto::artifacts::{ArtifactUpload, RunArtifact};
use kiln_store::{ArtifactFilter, ArtifactStore, NewArtifact, Store, StoreError};

/// One job's view of the artifact store.
#[derive(Clone, Debug)]
pub(crate) struct StoreHost {
    pub(crate) store: Store,
    pub(crate) objects: ArtifactStore,
    pub(crate) run: RunId,
    pub(crate) job: JobId,
}

/// Records an artifact whose blob is in `objects` already, with the message a job shows
/// when its name is taken.
pub async fn record(store: &Store, new: &NewArtifact) -> Result<String, String> {
    match store.record_artifact(new).await {
        Ok(id) => Ok(id.to_string()),
        Err(StoreError::NameTaken { .. }) => Err(format!(
            "another job of this run kept an artifact named `{}` already; artifact names are unique in a run",
            new.name
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The artifacts of a run, as a job downloading them sees them.
pub async fn run_artifacts(store: &Store, run: RunId) -> Result<Vec<RunArtifact>, StoreError> {
    let filter = ArtifactFilter {
        run: Some(run),
        ..ArtifactFilter::default()
    };
    Ok(store
        .list_artifacts(&filter, None, 0)
        .await?
        .into_iter()
        .rev()
        .map(|a| RunArtifact {
            name: a.name,
            file_name: a.file_name,
            format: a.format,
            sha256: a.sha256,
            size: a.size,
        })
        .collect())
}

impl ArtifactHost for StoreHost {
    fn upload<'a>(&'a self, blob: &'a Path, upload: &'a ArtifactUpload) -> HostFuture<'a, String> {
        Box::pin(async move {
            let stored = self
                .objects
                .put_file(blob)
                .await
                .map_err(|e| e.to_string())?;
            let new = NewArtifact {
                run: self.run,
                job: self.job,
                name: upload.name.clone(),
                file_name: upload.file_name.clone(),
                format: upload.format,
                sha256: stored.sha256,
                size: stored.size,
                metadata: upload.metadata.clone(),
            };
            record(&self.store, &new).await
        })
    }

    fn list(&self) -> HostFuture<'_, Vec<RunArtifact>> {
        Box::pin(async move {
            run_artifacts(&self.store, self.run)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn fetch<'a>(&'a self, artifact: &'a RunArtifact, dest: &'a Path) -> HostFuture<'a, ()> {
        Box::pin(async move {
            self.objects
                .get_to_file(&artifact.sha256, dest)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
