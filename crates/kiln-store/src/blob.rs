//! Blob storage for bytes that do not belong in the database: log chunks now, artifacts later.
//!
//! A [`BlobStore`] maps a key (`logs/<job>/<attempt>-<offset>`) to bytes. Today the only kind
//! is a local folder; it is an enum so that an S3-compatible store can be added without
//! touching callers. Writes are atomic (temp file + rename) so a reader never sees half a
//! blob, but not fsynced one by one: log chunks are small and many, and the database row that
//! points at a blob is itself only as durable as SQLite's `synchronous=NORMAL`.
//! Package outputs and build logs are content-addressed instead ([`ContentBlob`]): stored under
//! the SHA-256 of their bytes, so an unchanged output is stored once and a damaged one is
//! noticed when read.
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

/// A blob stored under the SHA-256 of its bytes ([`BlobStore::put_content_with`]): the same
/// bytes stored twice are one blob, and a reader can check what it read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContentBlob {
    /// SHA-256 of the bytes, lowercase hex.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
}

/// The key of the content-addressed blob `digest`: `sha256/<first two digits>/<digest>`, so
/// that no folder holds more than a 256th of them.
pub fn content_key(digest: &str) -> Result<String, StoreError> {
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(StoreError::BadBlobKey {
            key: digest.to_owned(),
            reason: "a content digest is 64 lowercase hex digits",
        });
    }
    Ok(format!("sha256/{}/{digest}", &digest[..2]))
}

/// Content-addressed blobs (package outputs and build logs): written and read as streams,
/// because a package's output can be far larger than memory should hold.
impl BlobStore {
    /// Stores what `write` writes under its SHA-256 (computed while writing, so the bytes
    /// pass once). `write` runs on the blocking pool; if it fails nothing is stored and its
    /// error is returned. Storing bytes that are there already leaves one blob.
    pub async fn put_content_with<E>(
        &self,
        write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), E> + Send + 'static,
    ) -> Result<ContentBlob, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        match self {
            Self::Local(local) => {
                let local = local.clone();
                tokio::task::spawn_blocking(move || local.put_content_sync(write))
                    .await
                    .map_err(|e| StoreError::BlobTask(e.to_string()))?
            }
        }
    }

    /// Stores `data` under its SHA-256 (a build's log).
    pub async fn put_content(&self, data: Vec<u8>) -> Result<ContentBlob, StoreError> {
        self.put_content_with(move |w: &mut dyn std::io::Write| {
            w.write_all(&data).map_err(|source| StoreError::BlobWrite {
                path: PathBuf::from("sha256"),
                source,
            })
        })
        .await
    }

    /// Runs `read` over the content-addressed blob `digest` on the blocking pool, then reads
    /// what `read` left and checks the whole against the digest: a blob damaged on disk is an
    /// error ([`StoreError::BlobRead`], `InvalidData`) even when `read` itself succeeded.
    pub async fn read_content_with<T, E>(
        &self,
        digest: &str,
        read: impl FnOnce(&mut dyn std::io::Read) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let key = content_key(digest)?;
        match self {
            Self::Local(local) => {
                let path = local.path_of(&key)?;
                let digest = digest.to_owned();
                tokio::task::spawn_blocking(move || read_checked(&path, &digest, read))
                    .await
                    .map_err(|e| StoreError::BlobTask(e.to_string()))?
            }
        }
    }

    /// The whole content-addressed blob `digest`, checked against it.
    pub async fn get_content(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        self.read_content_with(digest, |r: &mut dyn std::io::Read| {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf)
                .map(|_| buf)
                .map_err(|source| StoreError::BlobRead {
                    path: PathBuf::from("sha256"),
                    source,
                })
        })
        .await
    }

    /// The content-addressed blob `digest` opened for streaming, with its size. Not checked
    /// against the digest here: whoever receives the stream checks it (a remote worker does).
    pub async fn open_content(&self, digest: &str) -> Result<(tokio::fs::File, u64), StoreError> {
        let key = content_key(digest)?;
        match self {
            Self::Local(local) => {
                let path = local.path_of(&key)?;
                let read = |source| StoreError::BlobRead {
                    path: path.clone(),
                    source,
                };
                let file = tokio::fs::File::open(&path).await.map_err(read)?;
                let size = file.metadata().await.map_err(read)?.len();
                Ok((file, size))
            }
        }
    }

    /// Whether the content-addressed blob `digest` is stored (a cache hit is only as good as
    /// its output: retention may have pruned it).
    pub async fn contains_content(&self, digest: &str) -> Result<bool, StoreError> {
        let key = content_key(digest)?;
        match self {
            Self::Local(local) => {
                let path = local.path_of(&key)?;
                tokio::fs::try_exists(&path)
                    .await
                    .map_err(|source| StoreError::BlobRead { path, source })
            }
        }
    }
}

/// Counts and hashes what passes through to the temp file of a content-addressed blob; its
/// errors name that file (a full disk must not read as a failure of the caller's source).
/// Up to this many bytes a content blob is held in memory while it is written: when the same
/// bytes are stored already (an empty package output, a log written again), nothing is
/// written. A file made and renamed per blob is an inode made per blob, which ext4 makes
/// slower with every inode deleted in the last seconds.
const SMALL_BLOB: usize = 64 * 1024;

/// What a content blob's writer writes: in memory while it is small, then into the temp file
/// `tmp`, made then.
struct Spill<'a> {
    small: Vec<u8>,
    file: Option<std::io::BufWriter<std::fs::File>>,
    tmp: &'a Path,
}

impl Spill<'_> {
    fn file(&mut self) -> std::io::Result<&mut std::io::BufWriter<std::fs::File>> {
        use std::io::Write as _;
        if self.file.is_none() {
            let mut file = std::io::BufWriter::new(std::fs::File::create(self.tmp)?);
            file.write_all(&std::mem::take(&mut self.small))?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("made above"))
    }
}

impl std::io::Write for Spill<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file.is_none() && self.small.len() + buf.len() <= SMALL_BLOB {
            self.small.extend_from_slice(buf);
            return Ok(buf.len());
        }
        self.file()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

struct HashingWriter<'a> {
    inner: Spill<'a>,
    path: &'a Path,
    hasher: sha2::Sha256,
    size: u64,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.write(buf).map_err(|e| blob_io(self.path, e))?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().map_err(|e| blob_io(self.path, e))
    }
}

fn blob_io(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("blob file {}: {e}", path.display()))
}

/// Reads the file `path` through `read`, then the rest of it, and compares its SHA-256 with
/// `digest`.
fn read_checked<T, E: From<StoreError>>(
    path: &Path,
    digest: &str,
    read: impl FnOnce(&mut dyn std::io::Read) -> Result<T, E>,
) -> Result<T, E> {
    use sha2::Digest as _;
    struct Hashing<R> {
        inner: R,
        hasher: sha2::Sha256,
    }
    impl<R: std::io::Read> std::io::Read for Hashing<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.hasher.update(&buf[..n]);
            Ok(n)
        }
    }
    let read_err = |source| StoreError::BlobRead {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut r = Hashing {
        inner: std::io::BufReader::new(file),
        hasher: sha2::Sha256::new(),
    };
    let value = read(&mut r)?;
    std::io::copy(&mut r, &mut std::io::sink()).map_err(read_err)?;
    if hex::encode(r.hasher.finalize()) != digest {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "its content does not match its SHA-256 digest: the blob is damaged",
        ))
        .into());
    }
    Ok(value)
}

impl LocalBlobs {
    fn put_content_sync<E: From<StoreError>>(
        &self,
        write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), E>,
    ) -> Result<ContentBlob, E> {
        use sha2::Digest as _;
        use std::io::Write as _;
        let dir = self.root.join("sha256");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        // A temp name of its own, in the blobs' file system, so the rename below is atomic.
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let mut w = HashingWriter {
            inner: Spill {
                small: Vec::new(),
                file: None,
                tmp: &tmp,
            },
            path: &tmp,
            hasher: sha2::Sha256::new(),
            size: 0,
        };
        let written = write(&mut w).and_then(|()| {
            w.flush().map_err(|source| {
                E::from(StoreError::BlobWrite {
                    path: tmp.clone(),
                    source,
                })
            })
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let blob = ContentBlob {
            digest: hex::encode(w.hasher.finalize()),
            size: w.size,
        };
        let path = self.path_of(&content_key(&blob.digest)?)?;
        let mut spill = w.inner;
        if spill.file.is_none() {
            // Small: there already (whole, by its length), or written now.
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == blob.size) {
                return Ok(blob);
            }
            let written = spill.file().and_then(|f| f.flush());
            if let Err(source) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(StoreError::BlobWrite { path: tmp, source }.into());
            }
        }
        drop(spill);
        let placed = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(source) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::BlobWrite { path, source }.into());
        }
        Ok(blob)
    }

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

    #[test]
    fn content_keys_are_digests_only() {
        let digest = "ab".repeat(32);
        assert_eq!(content_key(&digest).unwrap(), format!("sha256/ab/{digest}"));
        for bad in [
            "",
            "ab",
            &"AB".repeat(32),
            &"zz".repeat(32),
            &"ab".repeat(33),
        ] {
            assert!(content_key(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// Small content already stored whole is not written again (the same file stays); one
    /// stored short (damaged) is replaced; content past [`SMALL_BLOB`] is streamed through a
    /// temp file. None leaves a temp file behind.
    #[tokio::test]
    async fn small_content_already_stored_is_not_written_again() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::local(&dir.path().join("blobs")).unwrap();
        let first = blobs.put_content(b"empty output".to_vec()).await.unwrap();
        let path = dir
            .path()
            .join("blobs")
            .join(content_key(&first.digest).unwrap());
        let ino = std::fs::metadata(&path).unwrap().ino();
        let again = blobs.put_content(b"empty output".to_vec()).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            ino,
            "not rewritten"
        );

        std::fs::write(&path, b"empty").unwrap();
        blobs.put_content(b"empty output".to_vec()).await.unwrap();
        assert_eq!(
            blobs.get_content(&first.digest).await.unwrap(),
            b"empty output"
        );

        let big: Vec<u8> = (0..SMALL_BLOB * 3 + 7).map(|i| (i % 251) as u8).collect();
        let stored = blobs.put_content(big.clone()).await.unwrap();
        assert_eq!(stored.size, big.len() as u64);
        assert_eq!(blobs.get_content(&stored.digest).await.unwrap(), big);
        let mut temps = Vec::new();
        for entry in walkdir::WalkDir::new(dir.path()) {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                temps.push(entry.path().to_owned());
            }
        }
        assert!(temps.is_empty(), "{temps:?}");
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
