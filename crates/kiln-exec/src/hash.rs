//! `hashFiles(...)` over a job's workspace, as GitHub computes it: the files matching the
//! glob patterns (`**` crosses directories, `*` does not, `!pattern` excludes what earlier
//! patterns included), sorted by path; the result is the SHA-256 of the concatenated raw
//! SHA-256 digests of each file, in lowercase hex, or `""` when nothing matches.
//!
//! Not here: evaluating the expression that calls it (kiln-core does, through
//! [`FileHasher`]).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use globset::GlobMatcher;
use kiln_core::expr::FileHasher;
use sha2::{Digest, Sha256};

/// Hashes files under one root directory (the job's workspace).
#[derive(Clone, Debug)]
pub struct WorkspaceHasher {
    root: PathBuf,
}

impl WorkspaceHasher {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

struct Pattern {
    negate: bool,
    matcher: GlobMatcher,
    /// The leading components without glob characters: where a walk for this pattern starts.
    base: PathBuf,
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}'])
}

impl WorkspaceHasher {
    fn compile(&self, raw: &str, what: &str) -> Result<Option<Pattern>, String> {
        let raw = raw.trim();
        let (negate, pat) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, raw),
        };
        if pat.is_empty() {
            return Ok(None);
        }
        // Patterns are relative to the workspace; an absolute one must point inside it.
        let rel = if Path::new(pat).is_absolute() {
            let root = self.root.to_string_lossy();
            let root = root.trim_end_matches('/');
            match pat.strip_prefix(root) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                    rest.trim_start_matches('/').to_owned()
                }
                _ => {
                    return Err(format!(
                        "{what} pattern `{pat}` is outside the workspace {}",
                        self.root.display()
                    ));
                }
            }
        } else {
            pat.trim_start_matches("./").to_owned()
        };
        let rel = rel.trim_end_matches('/');
        let matcher = globset::GlobBuilder::new(rel)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("invalid {what} pattern `{raw}`: {e}"))?
            .compile_matcher();
        let base: PathBuf = rel.split('/').take_while(|c| !has_glob_chars(c)).collect();
        Ok(Some(Pattern {
            negate,
            matcher,
            base,
        }))
    }

    /// Later patterns win, as in @actions/glob; a pattern naming a directory also matches
    /// everything below it.
    fn matches(patterns: &[Pattern], rel: &Path) -> bool {
        let mut included = false;
        for p in patterns {
            let hit = p.matcher.is_match(rel)
                || rel
                    .ancestors()
                    .skip(1)
                    .any(|a| !a.as_os_str().is_empty() && p.matcher.is_match(a));
            if hit {
                included = !p.negate;
            }
        }
        included
    }
}

/// The files some patterns match, and where their including patterns start.
pub(crate) struct Matched {
    /// Relative to the root, sorted, without duplicates.
    pub(crate) files: Vec<PathBuf>,
    /// The folders the including patterns search (a pattern naming one file: its folder).
    pub(crate) roots: Vec<PathBuf>,
}

impl WorkspaceHasher {
    /// The files under the root that `patterns` match (`what` names the caller in errors).
    pub(crate) fn find_files(&self, patterns: &[String], what: &str) -> Result<Matched, String> {
        let mut compiled = Vec::new();
        for p in patterns {
            if let Some(c) = self.compile(p, what)? {
                compiled.push(c);
            }
        }
        let roots = compiled
            .iter()
            .filter(|p| !p.negate)
            .map(|p| {
                if self.root.join(&p.base).is_file() {
                    p.base.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    p.base.clone()
                }
            })
            .collect();
        // Walk only from the literal prefixes of the including patterns, so that
        // `hashFiles('Cargo.lock')` does not read the whole tree (`.git` included).
        let mut bases: Vec<&Path> = compiled
            .iter()
            .filter(|p| !p.negate)
            .map(|p| p.base.as_path())
            .collect();
        bases.sort();
        bases.dedup_by(|later, earlier| later.starts_with(*earlier));
        let mut files: Vec<PathBuf> = Vec::new();
        for base in bases {
            let start = self.root.join(base);
            if !start.exists() {
                continue;
            }
            for entry in walkdir::WalkDir::new(&start).follow_links(true) {
                let entry =
                    entry.map_err(|e| format!("{what}: cannot read {}: {e}", start.display()))?;
                if !entry.file_type().is_file() {
                    continue;
                }
                let Ok(rel) = entry.path().strip_prefix(&self.root) else {
                    continue;
                };
                if Self::matches(&compiled, rel) {
                    files.push(rel.to_path_buf());
                }
            }
        }
        files.sort();
        files.dedup();
        Ok(Matched { files, roots })
    }

    /// The root folder.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
}

impl FileHasher for WorkspaceHasher {
    fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
        let files = self.find_files(patterns, "hashFiles")?.files;
        if files.is_empty() {
            return Ok(String::new());
        }
        let mut total = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        for rel in &files {
            let path = self.root.join(rel);
            let mut file = File::open(&path)
                .map_err(|e| format!("hashFiles: cannot open {}: {e}", path.display()))?;
            let mut one = Sha256::new();
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| format!("hashFiles: cannot read {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                one.update(&buf[..n]);
            }
            total.update(one.finalize());
        }
        Ok(hex::encode(total.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in [
            ("a.txt", "A"),
            ("src/x.rs", "X"),
            ("src/deep/y.rs", "Y"),
            ("src/deep/z.txt", "Z"),
            (".hidden/h.rs", "H"),
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        dir
    }

    fn expected(contents: &[&str]) -> String {
        let mut total = Sha256::new();
        for c in contents {
            total.update(Sha256::digest(c.as_bytes()));
        }
        hex::encode(total.finalize())
    }

    fn hash(dir: &Path, pats: &[&str]) -> String {
        let pats: Vec<String> = pats.iter().map(|s| (*s).to_owned()).collect();
        WorkspaceHasher::new(dir).hash_files(&pats).unwrap()
    }

    #[test]
    fn globs_negation_and_order() {
        let dir = tree();
        let d = dir.path();
        assert_eq!(hash(d, &["a.txt"]), expected(&["A"]));
        // Sorted by path: .hidden/h.rs, src/deep/y.rs, src/x.rs.
        assert_eq!(hash(d, &["**/*.rs"]), expected(&["H", "Y", "X"]));
        assert_eq!(hash(d, &["src/*.rs"]), expected(&["X"]));
        assert_eq!(hash(d, &["src/**", "!**/*.txt"]), expected(&["Y", "X"]));
        assert_eq!(hash(d, &["src/deep"]), expected(&["Y", "Z"]));
        assert_eq!(hash(d, &["nothing/**"]), "");
        let abs = format!("{}/a.txt", d.display());
        assert_eq!(hash(d, &[&abs]), expected(&["A"]));
        assert!(
            WorkspaceHasher::new(d)
                .hash_files(&["/elsewhere/x".into()])
                .is_err()
        );
    }
}
