//! Artifacts: files a job keeps (`jobs.<id>.artifacts`, `actions/upload-artifact`), stored
//! content-addressed by SHA-256 with their metadata, and the dependency read API a buildpack
//! queries (`GET /api/v1/dependencies`).
//!
//! An artifact is one stored blob: the file itself when its paths matched exactly one file
//! (so a release tarball's SHA-256 is the tarball's), else a tar of the matched files relative
//! to their deepest common folder. Metadata comes from the workflow (`metadata:`) and from the
//! job itself, through the file `$KILN_ARTIFACT_METADATA` names (one JSON object per line, with
//! `name` saying which artifact it describes); [`ArtifactMeta::check`] says what is wrong
//! with a value, by field. Not here: storing bytes (kiln-store), globbing (kiln-exec).

use std::collections::BTreeMap;

use jiff::Timestamp;
use kiln_core::ids::{JobId, ProjectId, RunId};
use serde::{Deserialize, Serialize};

kiln_core::typed_id!(
    /// One stored artifact.
    ArtifactId
);

/// How an artifact's bytes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ArtifactFormat {
    /// The one file the paths matched, as it was.
    File,
    /// A tar of several files, relative to their deepest common folder.
    Tar,
}

impl ArtifactFormat {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Tar => "tar",
        }
    }

    /// Reads [`ArtifactFormat::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "file" => Some(Self::File),
            "tar" => Some(Self::Tar),
            _ => None,
        }
    }
}

/// What a job says about an artifact. Every field is optional; a later source (the metadata
/// file) overrides an earlier one (the workflow) field by field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ArtifactMeta {
    /// The dependency's id for buildpacks (`node`); the artifact's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the artifact was built from (a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The SHA-256 of what `source` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// A package URL (`pkg:generic/node@18.0.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purl: Option<String>,
    /// CPE 2.3 names (`cpe:2.3:a:nodejs:node.js:18.0.0:*:*:*:*:*:*:*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpes: Vec<String>,
    /// An SPDX license expression (`MIT`, `Apache-2.0 OR MIT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licenses: Option<String>,
    /// From when the dependency should no longer be used (`YYYY-MM-DD` or an RFC 3339 time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_date: Option<String>,
    /// The stacks (buildpack base images) it works on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The fields of [`ArtifactMeta`], as the workflow and the metadata file spell them.
pub use kiln_core::workflow::ARTIFACT_META_FIELDS as META_FIELDS;

impl ArtifactMeta {
    /// Fields set in `later` replace this one's (lists and labels as a whole).
    pub fn merge(&mut self, later: ArtifactMeta) {
        fn take<T>(into: &mut Option<T>, from: Option<T>) {
            if from.is_some() {
                *into = from;
            }
        }
        take(&mut self.id, later.id);
        take(&mut self.version, later.version);
        take(&mut self.source, later.source);
        take(&mut self.source_sha256, later.source_sha256);
        take(&mut self.purl, later.purl);
        take(&mut self.licenses, later.licenses);
        take(&mut self.deprecation_date, later.deprecation_date);
        if !later.cpes.is_empty() {
            self.cpes = later.cpes;
        }
        if !later.stacks.is_empty() {
            self.stacks = later.stacks;
        }
        if !later.labels.is_empty() {
            self.labels = later.labels;
        }
    }

    /// What is wrong, as `(field, problem)` pairs; empty when nothing is.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let nonempty = |field: &'static str, v: &Option<String>, out: &mut Vec<_>| {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                out.push((field, "must not be empty".to_owned()));
            }
        };
        nonempty("id", &self.id, &mut out);
        nonempty("version", &self.version, &mut out);
        nonempty("source", &self.source, &mut out);
        if let Some(sha) = &self.source_sha256
            && !is_sha256(sha)
        {
            out.push((
                "source_sha256",
                format!("`{sha}` is not a SHA-256 (64 hexadecimal digits)"),
            ));
        }
        if let Some(purl) = &self.purl
            && !(purl.starts_with("pkg:") && purl[4..].contains('/'))
        {
            out.push((
                "purl",
                format!("`{purl}` is not a package URL (`pkg:<type>/<name>@<version>`)"),
            ));
        }
        for cpe in &self.cpes {
            if !(cpe.starts_with("cpe:2.3:") || cpe.starts_with("cpe:/")) {
                out.push((
                    "cpes",
                    format!("`{cpe}` is not a CPE name (`cpe:2.3:…` or `cpe:/…`)"),
                ));
            }
        }
        if let Some(expr) = &self.licenses
            && let Err(e) = spdx_ids(expr)
        {
            out.push(("licenses", e));
        }
        if let Some(date) = &self.deprecation_date
            && parse_date(date).is_none()
        {
            out.push((
                "deprecation_date",
                format!("`{date}` is neither a date (`YYYY-MM-DD`) nor an RFC 3339 time"),
            ));
        }
        for stack in &self.stacks {
            if stack.trim().is_empty() {
                out.push(("stacks", "a stack must not be empty".to_owned()));
            }
        }
        for key in self.labels.keys() {
            if key.trim().is_empty() {
                out.push(("labels", "a label's name must not be empty".to_owned()));
            }
        }
        out
    }
}

/// Whether `s` is 64 hexadecimal digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The license identifiers of an SPDX expression (`Apache-2.0 OR MIT` → both), in order,
/// or what is wrong with it.
pub fn spdx_ids(expr: &str) -> Result<Vec<String>, String> {
    // Tokens: identifiers (with an optional `+`), AND/OR/WITH, parentheses. The grammar is
    // checked as alternation of operands and operators with balanced parentheses.
    let spaced = expr.replace('(', " ( ").replace(')', " ) ");
    let mut ids = Vec::new();
    let mut depth = 0i32;
    let mut want_operand = true;
    let mut after_with = false;
    for token in spaced.split_whitespace() {
        match token {
            "(" if want_operand => depth += 1,
            ")" if !want_operand => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("`{expr}`: a `)` closes nothing"));
                }
            }
            "AND" | "OR" | "WITH" if !want_operand => {
                want_operand = true;
                after_with = token == "WITH";
            }
            t if want_operand
                && !matches!(t, "(" | ")" | "AND" | "OR" | "WITH")
                && t.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b':')
                }) =>
            {
                // The exception after WITH is not a license.
                if !after_with {
                    ids.push(t.to_owned());
                }
                after_with = false;
                want_operand = false;
            }
            t => {
                return Err(format!(
                    "`{expr}` is not an SPDX license expression (unexpected `{t}`)"
                ));
            }
        }
    }
    if want_operand || depth != 0 {
        return Err(format!(
            "`{expr}` is not an SPDX license expression (it ends too early)"
        ));
    }
    Ok(ids)
}

/// A deprecation date as a time: a day is its start in UTC.
pub fn parse_date(s: &str) -> Option<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    let date: jiff::civil::Date = s.parse().ok()?;
    jiff::tz::TimeZone::UTC
        .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .ok()
}

/// A version as semver, leniently: a leading `v` is dropped and missing minor and patch
/// numbers are zero (`v1.2` → `1.2.0`). `None` when it is not a version.
pub fn semver_of(version: &str) -> Option<semver::Version> {
    let v = version.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    if let Ok(parsed) = semver::Version::parse(v) {
        return Some(parsed);
    }
    // Fill in the missing numbers of the part before any pre-release or build suffix.
    let split = v.find(['-', '+']).unwrap_or(v.len());
    let (core, rest) = v.split_at(split);
    let parts = core.split('.').count();
    if core.is_empty() || parts >= 3 {
        return None;
    }
    let filled = format!("{core}{}{rest}", ".0".repeat(3 - parts));
    semver::Version::parse(&filled).ok()
}

/// An artifact as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: ArtifactId,
    /// The project's name.
    pub project: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub project_id: ProjectId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub run_id: RunId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub job_id: JobId,
    pub name: String,
    /// The name a download saves as: the file's own name, or `<name>.tar`.
    pub file_name: String,
    pub format: ArtifactFormat,
    pub sha256: String,
    pub size: u64,
    /// The version as semver (see [`semver_of`]), when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    pub metadata: ArtifactMeta,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

/// `GET /api/v1/artifacts`: newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactView>,
    /// Pass as `before` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One version of a dependency, with the fields a buildpack's `buildpack.toml` takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dependency {
    pub id: String,
    pub name: String,
    pub version: String,
    /// Where to download it (this server's artifact download URL).
    pub uri: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purl: Option<String>,
    pub cpes: Vec<String>,
    /// The license identifiers of the SPDX expression.
    pub licenses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_date: Option<String>,
    pub stacks: Vec<String>,
}

/// Worker protocol: an artifact whose blob the worker uploaded (`PUT …/blobs/{sha256}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactUpload {
    pub name: String,
    pub file_name: String,
    pub format: ArtifactFormat,
    pub sha256: String,
    pub size: u64,
    pub metadata: ArtifactMeta,
}

/// An artifact of the job's run, as a job downloading it sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunArtifact {
    pub name: String,
    pub file_name: String,
    pub format: ArtifactFormat,
    pub sha256: String,
    pub size: u64,
}

/// The answer to a worker's `GET …/artifacts`: the run's artifacts so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunArtifacts {
    pub artifacts: Vec<RunArtifact>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_expressions() {
        assert_eq!(spdx_ids("MIT").unwrap(), ["MIT"]);
        assert_eq!(
            spdx_ids("(Apache-2.0 OR MIT) AND BSD-3-Clause").unwrap(),
            ["Apache-2.0", "MIT", "BSD-3-Clause"]
        );
        assert_eq!(
            spdx_ids("GPL-2.0-or-later WITH Classpath-exception-2.0").unwrap(),
            ["GPL-2.0-or-later"]
        );
        assert!(spdx_ids("MIT OR").is_err());
        assert!(spdx_ids("(MIT").is_err());
        assert!(spdx_ids("MIT)").is_err());
        assert!(spdx_ids("MIT, BSD").is_err());
        assert!(spdx_ids("").is_err());
    }

    #[test]
    fn lenient_semver() {
        assert_eq!(semver_of("v1.2").unwrap().to_string(), "1.2.0");
        assert_eq!(semver_of("18").unwrap().to_string(), "18.0.0");
        assert_eq!(semver_of("1.2.3-rc.1").unwrap().to_string(), "1.2.3-rc.1");
        assert_eq!(semver_of("1.2-rc.1").unwrap().to_string(), "1.2.0-rc.1");
        assert!(semver_of("latest").is_none());
        assert!(semver_of("1.2.3.4").is_none());
    }

    #[test]
    fn meta_problems_name_their_field() {
        let meta = ArtifactMeta {
            source_sha256: Some("abc".into()),
            purl: Some("node".into()),
            cpes: vec!["node".into()],
            licenses: Some("MIT OR".into()),
            deprecation_date: Some("next year".into()),
            ..ArtifactMeta::default()
        };
        let fields: Vec<_> = meta.check().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "source_sha256",
                "purl",
                "cpes",
                "licenses",
                "deprecation_date"
            ]
        );
        let good = ArtifactMeta {
            version: Some("1.0.0".into()),
            source_sha256: Some("a".repeat(64)),
            purl: Some("pkg:generic/node@1.0.0".into()),
            cpes: vec!["cpe:2.3:a:nodejs:node.js:1.0.0:*:*:*:*:*:*:*".into()],
            licenses: Some("MIT".into()),
            deprecation_date: Some("2027-01-01".into()),
            ..ArtifactMeta::default()
        };
        assert!(good.check().is_empty());
    }

    #[test]
    fn later_metadata_wins_field_by_field() {
        let mut meta = ArtifactMeta {
            version: Some("1".into()),
            licenses: Some("MIT".into()),
            ..ArtifactMeta::default()
        };
        meta.merge(ArtifactMeta {
            version: Some("2".into()),
            ..ArtifactMeta::default()
        });
        assert_eq!(meta.version.as_deref(), Some("2"));
        assert_eq!(meta.licenses.as_deref(), Some("MIT"));
    }
}
