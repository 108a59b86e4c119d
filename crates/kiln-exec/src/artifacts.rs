//! Artifacts from inside a job: which files a `jobs.<id>.artifacts` entry or an
//! `actions/upload-artifact` step keeps and how they are packed, the metadata the job gives
//! them (its workflow's `metadata:` and the `$KILN_ARTIFACT_METADATA` file), and
//! `actions/download-artifact` unpacking the run's artifacts into the workspace.
//!
//! Where the bytes go is the caller's [`ArtifactHost`]: the server's artifact store for its
//! own pool, HTTP for a remote worker. Not here: storing, deduplicating, serving.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;

use kiln_proto::artifacts::{ArtifactFormat, ArtifactMeta, ArtifactUpload, RunArtifact};
use serde_json::{Map, Value};

use crate::hash::WorkspaceHasher;

/// What an [`ArtifactHost`] call returns: a future of its answer or a message saying what
/// failed.
pub type HostFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where a job's artifacts are kept, and where the run's artifacts are read back from.
pub trait ArtifactHost: Send + Sync + fmt::Debug {
    /// Keeps the file `blob` as the artifact `upload` describes; the artifact's id.
    fn upload<'a>(&'a self, blob: &'a Path, upload: &'a ArtifactUpload) -> HostFuture<'a, String>;
    /// The artifacts of the job's run so far.
    fn list(&self) -> HostFuture<'_, Vec<RunArtifact>>;
    /// Writes an artifact's bytes into the file `dest`.
    fn fetch<'a>(&'a self, artifact: &'a RunArtifact, dest: &'a Path) -> HostFuture<'a, ()>;
}

/// The environment variable naming the file a job writes artifact metadata to.
pub const METADATA_ENV: &str = "KILN_ARTIFACT_METADATA";

/// What an artifact's paths matched, ready to upload.
#[derive(Debug)]
pub(crate) struct Packed {
    /// The one file matched, or the tar written in the temp folder.
    pub(crate) blob: PathBuf,
    pub(crate) file_name: String,
    pub(crate) format: ArtifactFormat,
    pub(crate) files: usize,
}

/// Finds what `paths` match in the workspace and packs it: the file itself when exactly one
/// matched, else a tar (written to `scratch`) of every file relative to the deepest folder
/// the searches share. `None`: nothing matched.
pub(crate) fn pack(
    hasher: &WorkspaceHasher,
    name: &str,
    paths: &[String],
    scratch: &Path,
) -> Result<Option<Packed>, String> {
    let what = format!("artifact `{name}`");
    let matched = hasher.find_files(paths, &what)?;
    let root = hasher.root();
    match matched.files.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(Packed {
            blob: root.join(one),
            file_name: one
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.to_owned()),
            format: ArtifactFormat::File,
            files: 1,
        })),
        files => {
            let common = common_folder(&matched.roots);
            let tar_path = scratch.join(format!("artifact-{}.tar", safe_file_name(name)));
            write_tar(root, &common, files, &tar_path)
                .map_err(|e| format!("{what}: cannot write {}: {e}", tar_path.display()))?;
            Ok(Some(Packed {
                blob: tar_path,
                file_name: format!("{}.tar", safe_file_name(name)),
                format: ArtifactFormat::Tar,
                files: files.len(),
            }))
        }
    }
}

/// An artifact name as a file name: separators and odd characters become `_`.
fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The deepest folder every one of `roots` is in (`""` for the workspace itself).
fn common_folder(roots: &[PathBuf]) -> PathBuf {
    let mut iter = roots.iter();
    let Some(first) = iter.next() else {
        return PathBuf::new();
    };
    let mut common: Vec<Component<'_>> = first.components().collect();
    for other in iter {
        let n = common
            .iter()
            .zip(other.components())
            .take_while(|(a, b)| **a == *b)
            .count();
        common.truncate(n);
    }
    common.iter().collect()
}

/// A tar of `files` (relative to `root`), named relative to `common`, sorted, with times
/// and owners zeroed so that the same files make the same bytes (and are stored once).
fn write_tar(root: &Path, common: &Path, files: &[PathBuf], dest: &Path) -> std::io::Result<()> {
    let out = std::fs::File::create(dest)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(out));
    for rel in files {
        let name = rel.strip_prefix(common).unwrap_or(rel);
        let path = root.join(rel);
        let meta = std::fs::metadata(&path)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(meta.len());
        header.set_mode(mode_of(&meta));
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        let file = std::fs::File::open(&path)?;
        builder.append_data(&mut header, name, file)?;
    }
    builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    Ok(())
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Renders a workflow's `metadata:` (string leaves are templates) into [`ArtifactMeta`].
pub(crate) fn render_meta(
    name: &str,
    template: &Map<String, Value>,
    render: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<ArtifactMeta, String> {
    fn walk(
        v: &Value,
        render: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => Value::String(render(s)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| walk(i, render))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), walk(v, render)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
    let mut rendered = Map::new();
    for (k, v) in template {
        let value = walk(v, render).map_err(|e| format!("artifact `{name}`: metadata.{k}: {e}"))?;
        // An expression that came out empty leaves the field unset.
        if value.as_str().is_some_and(str::is_empty) {
            continue;
        }
        rendered.insert(k.clone(), value);
    }
    serde_json::from_value(Value::Object(rendered))
        .map_err(|e| format!("artifact `{name}`: metadata: {e}"))
}

/// Reads the metadata file: one JSON object per line, each with the `name` of the artifact
/// it describes; later lines win field by field. A missing file is no metadata.
pub(crate) fn read_metadata_file(path: &Path) -> Result<HashMap<String, ArtifactMeta>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(format!(
                "cannot read ${METADATA_ENV} ({}): {e}",
                path.display()
            ));
        }
    };
    let mut out: HashMap<String, ArtifactMeta> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("${METADATA_ENV} line {}", i + 1);
        let mut object: Map<String, Value> =
            serde_json::from_str(line).map_err(|e| format!("{at}: not a JSON object: {e}"))?;
        let name = match object.remove("name") {
            Some(Value::String(n)) if !n.is_empty() => n,
            _ => {
                return Err(format!(
                    "{at}: `name` (the artifact this line describes) is missing or not a string"
                ));
            }
        };
        let meta: ArtifactMeta =
            serde_json::from_value(Value::Object(object)).map_err(|e| format!("{at}: {e}"))?;
        out.entry(name).or_default().merge(meta);
    }
    Ok(out)
}

/// The first problem of a metadata value, as a message naming the artifact and field.
pub(crate) fn check_meta(name: &str, meta: &ArtifactMeta) -> Result<(), String> {
    match meta.check().into_iter().next() {
        Some((field, problem)) => Err(format!("artifact `{name}`: metadata.{field}: {problem}")),
        None => Ok(()),
    }
}

/// Whether an artifact name matches a download's `pattern` (a glob over names).
pub(crate) fn name_matches(pattern: &str, name: &str) -> Result<bool, String> {
    let glob = globset::Glob::new(pattern)
        .map_err(|e| format!("download-artifact: invalid `pattern` `{pattern}`: {e}"))?;
    Ok(glob.compile_matcher().is_match(name))
}

/// Puts a fetched artifact into `dest`: a file as `dest/<file name>`, a tar unpacked.
pub(crate) fn place(artifact: &RunArtifact, fetched: &Path, dest: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    match artifact.format {
        ArtifactFormat::File => {
            let target = dest.join(&artifact.file_name);
            std::fs::rename(fetched, &target)
                .or_else(|_| std::fs::copy(fetched, &target).map(|_| ()))
                .map_err(|e| format!("cannot write {}: {e}", target.display()))
        }
        ArtifactFormat::Tar => {
            let file = std::fs::File::open(fetched)
                .map_err(|e| format!("cannot read {}: {e}", fetched.display()))?;
            // `unpack` keeps every entry inside `dest` (no `..`, no absolute paths).
            tar::Archive::new(std::io::BufReader::new(file))
                .unpack(dest)
                .map_err(|e| {
                    format!(
                        "cannot unpack artifact `{}` into {}: {e}",
                        artifact.name,
                        dest.display()
                    )
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        dir
    }

    fn names(tar: &Path) -> Vec<String> {
        let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn one_file_is_kept_as_it_is_and_several_as_a_tar_below_their_common_folder() {
        let ws = tree(&[
            ("dist/app.tar.gz", "A"),
            ("dist/docs/readme.md", "R"),
            ("dist/docs/skip.tmp", "T"),
            ("other.txt", "O"),
        ]);
        let scratch = tempfile::tempdir().unwrap();
        let h = WorkspaceHasher::new(ws.path());

        let one = pack(&h, "app", &["dist/app.tar.gz".into()], scratch.path())
            .unwrap()
            .unwrap();
        assert_eq!(one.format, ArtifactFormat::File);
        assert_eq!(one.file_name, "app.tar.gz");
        assert_eq!(one.blob, ws.path().join("dist/app.tar.gz"));

        let many = pack(
            &h,
            "dist/all",
            &["dist/".into(), "!**/*.tmp".into()],
            scratch.path(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(many.format, ArtifactFormat::Tar);
        assert_eq!(many.file_name, "dist_all.tar");
        assert_eq!(names(&many.blob), ["app.tar.gz", "docs/readme.md"]);

        let globbed = pack(
            &h,
            "g",
            &["**/*.md".into(), "other.txt".into()],
            scratch.path(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(names(&globbed.blob), ["dist/docs/readme.md", "other.txt"]);

        assert!(
            pack(&h, "none", &["missing/**".into()], scratch.path())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_same_files_pack_to_the_same_bytes() {
        let ws = tree(&[("a/x", "1"), ("a/y", "2")]);
        let scratch = tempfile::tempdir().unwrap();
        let h = WorkspaceHasher::new(ws.path());
        let first = std::fs::read(
            pack(&h, "a", &["a".into()], scratch.path())
                .unwrap()
                .unwrap()
                .blob,
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(ws.path().join("a/x"), "1").unwrap();
        let second = std::fs::read(
            pack(&h, "a", &["a".into()], scratch.path())
                .unwrap()
                .unwrap()
                .blob,
        )
        .unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn the_metadata_file_is_read_line_by_line_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        std::fs::write(
            &path,
            "{\"name\":\"node\",\"version\":\"18.0.0\",\"licenses\":\"MIT\"}\n\n{\"name\":\"node\",\"version\":\"18.0.1\"}\n",
        )
        .unwrap();
        let got = read_metadata_file(&path).unwrap();
        assert_eq!(got["node"].version.as_deref(), Some("18.0.1"));
        assert_eq!(got["node"].licenses.as_deref(), Some("MIT"));

        std::fs::write(
            &path,
            "{\"name\":\"x\"}\n{\"name\":\"x\",\"colour\":\"red\"}\n",
        )
        .unwrap();
        let err = read_metadata_file(&path).unwrap_err();
        assert!(err.contains("line 2") && err.contains("colour"), "{err}");
        std::fs::write(&path, "{\"version\":\"1\"}\n").unwrap();
        assert!(read_metadata_file(&path).unwrap_err().contains("line 1"));
        assert!(
            read_metadata_file(&dir.path().join("absent"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn names_match_globs() {
        assert!(name_matches("node-*", "node-18").unwrap());
        assert!(!name_matches("node-*", "python").unwrap());
        assert!(name_matches("[", "x").is_err());
    }
}
