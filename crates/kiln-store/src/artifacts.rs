//! Artifacts: the object store that holds their bytes ([`ArtifactStore`]: a folder in the
//! data dir by default, S3-compatible storage with `--artifacts s3://bucket/prefix`) and the
//! rows that say which run kept what under which name ([`Store::record_artifact`] and the
//! queries beside it).
//!
//! Bytes are content-addressed: an artifact's blob is stored under `sha256/<hex>` (below the
//! configured prefix), written only when no blob of that digest exists yet, so the same bytes
//! kept by a thousand runs are stored once. A blob is written before the row that names it,
//! so a row never names missing bytes; a blob no row names (a crash in between) is harmless.
//! S3 settings come from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` for
//! a store other than AWS, `AWS_ALLOW_HTTP`). Not here: which files a job keeps (kiln-exec),
//! HTTP (kiln-server).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use kiln_core::ids::{JobId, ProjectId, RunId};
use kiln_proto::artifacts::{ArtifactFormat, ArtifactMeta, ArtifactView};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::StoreError;

/// Where artifact bytes live.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// For people: the folder or `s3://bucket/prefix`.
    location: String,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// A blob just stored (or found already there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    pub sha256: String,
    pub size: u64,
    /// The same bytes were stored before: nothing was written.
    pub existed: bool,
}

/// A blob being read: its whole size, the part sent, and that part's bytes.
pub struct BlobRead {
    pub total: u64,
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<bytes::Bytes, StoreError>>,
}

fn objects(
    operation: &'static str,
    key: &ObjectPath,
) -> impl FnOnce(object_store::Error) -> StoreError {
    let key = key.to_string();
    move |e| StoreError::Objects {
        operation,
        key,
        detail: e.to_string(),
    }
}

impl ArtifactStore {
    /// `None` or a plain path: a local folder (`<data dir>/artifacts` when `None`);
    /// `s3://bucket[/prefix]`: S3 with the AWS environment variables; `file:///abs/path`:
    /// that folder.
    pub fn open(url: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        match url {
            None => Self::local(&data_dir.join("artifacts")),
            Some(u) if u.starts_with("s3://") => Self::s3(u),
            Some(u) if u.starts_with("file://") => Self::local(Path::new(&u["file://".len()..])),
            Some(u) if u.contains("://") => Err(StoreError::BadUrl {
                url: u.to_owned(),
                reason: "artifacts go to a folder (a path or file:///path) or to S3 \
                         (s3://bucket/prefix)"
                    .to_owned(),
            }),
            Some(path) => Self::local(Path::new(path)),
        }
    }

    /// A local folder, created if missing.
    pub fn local(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::CreateDir {
            path: root.to_owned(),
            source,
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(root).map_err(|e| {
            StoreError::BadUrl {
                url: root.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            inner: Arc::new(fs),
            prefix: ObjectPath::default(),
            location: root.display().to_string(),
        })
    }

    /// `s3://bucket[/prefix]`, configured from the AWS environment variables. A plain-HTTP
    /// endpoint (a local S3) is allowed when the endpoint says `http://`.
    pub fn s3(url: &str) -> Result<Self, StoreError> {
        Self::s3_with(url, &|key| std::env::var(key).ok())
    }

    /// [`ArtifactStore::s3`] reading the AWS settings through `var` instead of the process
    /// environment (tests give each store its own local S3).
    pub fn s3_with(url: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<Self, StoreError> {
        use object_store::aws::AmazonS3ConfigKey as Key;
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = &url["s3://".len()..];
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket is missing: s3://bucket/prefix"));
        }
        // The workspace's reqwest has rustls without a provider: ring is kiln's (STACK.md).
        // Installing it is a no-op when the binary did already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Credentials from web identity, containers and the like: object_store reads them.
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (name, key) in [
            ("AWS_ACCESS_KEY_ID", Key::AccessKeyId),
            ("AWS_SECRET_ACCESS_KEY", Key::SecretAccessKey),
            ("AWS_SESSION_TOKEN", Key::Token),
        ] {
            if let Some(v) = var(name) {
                builder = builder.with_config(key, v);
            }
        }
        let endpoint = var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| var("AWS_ENDPOINT"));
        if let Some(endpoint) = endpoint {
            if endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
            builder = builder.with_endpoint(endpoint);
        }
        if var("AWS_ALLOW_HTTP").is_some_and(|v| v == "true") {
            builder = builder.with_allow_http(true);
        }
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        builder = builder.with_region(region);
        let s3 = builder.build().map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            inner: Arc::new(s3),
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            location: url.to_owned(),
        })
    }

    /// The folder or URL, for people.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn key(&self, sha256: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in ["sha256", sha256] {
            key = key.clone().join(part);
        }
        key
    }

    /// Whether a blob with this digest is stored.
    pub async fn exists(&self, sha256: &str) -> Result<bool, StoreError> {
        let key = self.key(sha256);
        match self.inner.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(objects("look up a blob", &key)(e)),
        }
    }

    /// Stores a file's bytes under their SHA-256: reads it once to hash it and, unless that
    /// digest is stored already, once more to upload it (in parts when it is large).
    pub async fn put_file(&self, path: &Path) -> Result<StoredBlob, StoreError> {
        let read_err = |source| StoreError::BlobRead {
            path: path.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(read_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let sha256 = hex::encode(hasher.finalize());
        if self.exists(&sha256).await? {
            return Ok(StoredBlob {
                sha256,
                size,
                existed: true,
            });
        }
        let key = self.key(&sha256);
        let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
        let mut writer = object_store::buffered::BufWriter::new(self.inner.clone(), key.clone());
        let copied = tokio::io::copy(&mut file, &mut writer).await;
        if let Err(e) = copied {
            let _ = writer.abort().await;
            return Err(StoreError::Objects {
                operation: "upload a blob",
                key: key.to_string(),
                detail: e.to_string(),
            });
        }
        writer.shutdown().await.map_err(|e| StoreError::Objects {
            operation: "finish uploading a blob",
            key: key.to_string(),
            detail: e.to_string(),
        })?;
        Ok(StoredBlob {
            sha256,
            size,
            existed: false,
        })
    }

    /// Stores bytes held in memory (small blobs; tests).
    pub async fn put_bytes(&self, data: Vec<u8>) -> Result<StoredBlob, StoreError> {
        let sha256 = hex::encode(Sha256::digest(&data));
        let size = data.len() as u64;
        if self.exists(&sha256).await? {
            return Ok(StoredBlob {
                sha256,
                size,
                existed: true,
            });
        }
        let key = self.key(&sha256);
        self.inner
            .put(&key, data.into())
            .await
            .map_err(objects("upload a blob", &key))?;
        Ok(StoredBlob {
            sha256,
            size,
            existed: false,
        })
    }

    /// Reads a blob, or the bytes `range` names of it (`start..end`, end exclusive and cut
    /// to the blob's size). `None`: no such blob.
    pub async fn get(
        &self,
        sha256: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, StoreError> {
        let key = self.key(sha256);
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = match self.inner.get_opts(&key, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(objects("read a blob", &key)(e)),
        };
        let total = got.meta.size;
        let range = got.range.clone();
        let key_text = key.to_string();
        let body = got
            .into_stream()
            .map(move |chunk| {
                chunk.map_err(|e| StoreError::Objects {
                    operation: "read a blob",
                    key: key_text.clone(),
                    detail: e.to_string(),
                })
            })
            .boxed();
        Ok(Some(BlobRead { total, range, body }))
    }

    /// Copies a blob into a file (created or truncated); checks the digest on the way.
    pub async fn get_to_file(&self, sha256: &str, dest: &Path) -> Result<u64, StoreError> {
        let Some(mut read) = self.get(sha256, None).await? else {
            return Err(StoreError::NotFound {
                what: "blob",
                id: sha256.to_owned(),
            });
        };
        let write_err = |source| StoreError::BlobWrite {
            path: dest.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = read.body.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(write_err)?;
        }
        file.flush().await.map_err(write_err)?;
        let got = hex::encode(hasher.finalize());
        if got != sha256 {
            return Err(StoreError::Objects {
                operation: "check a blob's digest",
                key: self.key(sha256).to_string(),
                detail: format!("its bytes hash to {got}: the stored blob is damaged"),
            });
        }
        Ok(size)
    }
}

/// An artifact to record; its blob is stored already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewArtifact {
    pub run: RunId,
    pub job: JobId,
    pub name: String,
    pub file_name: String,
    pub format: ArtifactFormat,
    pub sha256: String,
    pub size: u64,
    pub metadata: ArtifactMeta,
}

/// Which artifacts to list; every field narrows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArtifactFilter {
    /// The project's name.
    pub project: Option<String>,
    /// The project's id (a token limited to one project sees only its artifacts).
    pub project_id: Option<ProjectId>,
    pub run: Option<RunId>,
    pub job: Option<JobId>,
    pub name: Option<String>,
    /// The version exactly as recorded.
    pub version: Option<String>,
    pub sha256: Option<String>,
    /// Labels the artifact must have, with these values.
    pub labels: Vec<(String, String)>,
}

impl ArtifactFilter {
    pub(crate) fn labels_match(&self, a: &ArtifactView) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| a.metadata.labels.get(k) == Some(v))
    }
}
