//! Blob storage for bytes that do not belong in the database: log chunks now, artifacts later.
//!
//! A [`BlobStore`] maps a key (`logs/<job>/<attempt>-<offset>`) to bytes. Today the only kind
//! is a local folder; it is an enum so that an S3-compatible store can be added without
//! touching callers. Writes are atomic (temp file + rename) so a reader never sees half a
//! blob, but not fsynced one by one: log chunks are small and many, and the database row that
//! points at a blob is itself only as durable as SQLite's `synchronous=NORMAL`.
//! Not here: which blobs exist (the database's index says) or deleting them (retention).

use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// Where blobs live.
#[derive(Clone, Debug)]
pub enum BlobStore {
    /// A folder on this machine (`<data-dir>/blobs`).
    Local(LocalBlobs),
}

/// Blobs as files under one root folder, one file per key.
#[derive(Clone, Debug)]
pub struct LocalBlobs {
    root: PathBuf,
}

impl BlobStore {
    /// A local folder, created if missing.
    pub fn local(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::CreateDir {
            path: root.to_owned(),
            source,
        })?;
        Ok(Self::Local(LocalBlobs {
            root: root.to_owned(),
        }))
    }

    /// Stores one blob, replacing any blob under the same key.
    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.put_many(vec![(key.to_owned(), data)]).await
    }

    /// Stores several blobs in one trip to the blocking pool (how a batch of log chunks is
    /// written: one hop for the whole group commit, not one per chunk).
    pub async fn put_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        match self {
            Self::Local(local) => {
                let local = local.clone();
                tokio::task::spawn_blocking(move || {
                    items
                        .iter()
                        .try_for_each(|(key, data)| local.put_sync(key, data))
                })
                .await
                .map_err(|e| StoreError::BlobTask(e.to_string()))?
            }
        }
    }

    /// Reads one whole blob.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        match self {
            Self::Local(local) => {
                let path = local.path_of(key)?;
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| StoreError::BlobRead { path, source })
            }
        }
    }
}

impl BlobStore {
    /// Reads `len` bytes of a blob from `start` (a log chunk inside its segment).
    pub async fn get_range(
        &self,
        key: &str,
        start: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        match self {
            Self::Local(local) => {
                let path = local.path_of(key)?;
                tokio::task::spawn_blocking(move || {
                    use std::io::{Read, Seek, SeekFrom};
                    let read = || -> std::io::Result<Vec<u8>> {
                        let mut file = std::fs::File::open(&path)?;
                        file.seek(SeekFrom::Start(start))?;
                        let mut buf = vec![0; len];
                        file.read_exact(&mut buf)?;
                        Ok(buf)
                    };
                    read().map_err(|source| StoreError::BlobRead {
                        path: path.clone(),
                        source,
                    })
                })
                .await
                .map_err(|e| StoreError::BlobTask(e.to_string()))?
            }
        }
    }
}

impl LocalBlobs {
    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn put_sync(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        // The temp name is unique per write so two writers of one key never share a temp
        // file; the rename then makes the whole blob appear at once.
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&tmp, data).map_err(|source| StoreError::BlobWrite {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::BlobWrite {
                path: path.clone(),
                source,
            }
        })
    }
}

/// Keys are relative, `/`-separated, made of `[A-Za-z0-9._-]`, with no `.`/`..` segments and
/// no leading dot (temp files start with one), so a key can never leave the root.
fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::BadBlobKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("it is empty");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return bad("it has an empty segment");
        }
        if segment.starts_with('.') {
            return bad("a segment starts with `.`");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("only letters, digits, `.`, `_`, `-` and `/` are allowed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        assert!(check_key("logs/abc/1-0").is_ok());
        for key in [
            "", "/abs", "a//b", "../x", "a/../b", "a/.tmp", "a/b c", "a\\b",
        ] {
            assert!(check_key(key).is_err(), "{key:?} should be refused");
        }
    }

    #[tokio::test]
    async fn put_then_get_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::local(&dir.path().join("blobs")).unwrap();
        blobs.put("logs/j/1-0", b"hello".to_vec()).await.unwrap();
        assert_eq!(blobs.get("logs/j/1-0").await.unwrap(), b"hello");
        blobs.put("logs/j/1-0", b"again".to_vec()).await.unwrap();
        assert_eq!(blobs.get("logs/j/1-0").await.unwrap(), b"again");
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("blobs/logs/j"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("1-0")]);
        assert_eq!(blobs.get_range("logs/j/1-0", 1, 3).await.unwrap(), b"gai");
        assert!(matches!(
            blobs.get_range("logs/j/1-0", 3, 3).await,
            Err(StoreError::BlobRead { .. })
        ));
        assert!(matches!(
            blobs.get("logs/j/missing").await,
            Err(StoreError::BlobRead { .. })
        ));
    }
}
