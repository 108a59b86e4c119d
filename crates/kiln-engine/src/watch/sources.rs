//! What each source kind fetches and how its answer becomes versions. The extraction
//! functions are pure (bytes in, versions out) so each registry's shape is tested on its
//! own; [`run_command`] runs a scanning command.
//!
//! Versions come out in the order the source lists them, each with the URL of its release or
//! tarball where the source names one (`inputs.source_uri` of its run).

use std::path::Path;
use std::time::Duration;

use kiln_core::watch::WatchSource;
use serde_json::Value;

/// A version a source listed, and where it can be downloaded or read about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub version: String,
    pub source_uri: Option<String>,
}

impl Found {
    fn new(version: impl Into<String>, uri: Option<&str>) -> Self {
        Found {
            version: version.into(),
            source_uri: uri.map(str::to_owned),
        }
    }
}

/// The base URLs of the registries (configuration; tests point them at a local server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registries {
    pub github: String,
    pub pypi: String,
    pub npm: String,
    pub crates: String,
}

impl Default for Registries {
    fn default() -> Self {
        Registries {
            github: "https://api.github.com".to_owned(),
            pypi: "https://pypi.org".to_owned(),
            npm: "https://registry.npmjs.org".to_owned(),
            crates: "https://crates.io".to_owned(),
        }
    }
}

/// The URL a source is polled at (`None`: a command).
pub fn url_of(source: &WatchSource, reg: &Registries) -> Option<String> {
    let base = |b: &str| b.trim_end_matches('/').to_owned();
    Some(match source {
        // The newest 100 (GitHub's first page): older releases are seen on a first poll of
        // a project that has fewer, and are not new later.
        WatchSource::GithubReleases { repository } => {
            format!(
                "{}/repos/{repository}/releases?per_page=100",
                base(&reg.github)
            )
        }
        WatchSource::GithubTags { repository } => {
            format!("{}/repos/{repository}/tags?per_page=100", base(&reg.github))
        }
        WatchSource::Pypi { package } => format!("{}/pypi/{package}/json", base(&reg.pypi)),
        // A scoped name's `/` is escaped, as npm's own client does.
        WatchSource::Npm { package } => {
            format!("{}/{}", base(&reg.npm), package.replace('/', "%2F"))
        }
        WatchSource::Crates { package } => {
            format!("{}/api/v1/crates/{package}", base(&reg.crates))
        }
        WatchSource::Url { url, .. } => url.clone(),
        WatchSource::Command { .. } => return None,
    })
}

fn json(bytes: &[u8], what: &str) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the {what} answer is not JSON: {e}"))
}

/// The versions in an answer of `source`'s URL.
pub fn extract(source: &WatchSource, reg: &Registries, bytes: &[u8]) -> Result<Vec<Found>, String> {
    match source {
        WatchSource::GithubReleases { .. } => {
            let v = json(bytes, "GitHub releases")?;
            let list = v
                .as_array()
                .ok_or("the GitHub releases answer is not a list")?;
            Ok(list
                .iter()
                .filter(|r| r["draft"].as_bool() != Some(true))
                .filter_map(|r| {
                    let tag = r["tag_name"].as_str()?;
                    let uri = r["tarball_url"].as_str().or(r["html_url"].as_str());
                    Some(Found::new(tag, uri))
                })
                .collect())
        }
        WatchSource::GithubTags { .. } => {
            let v = json(bytes, "GitHub tags")?;
            let list = v.as_array().ok_or("the GitHub tags answer is not a list")?;
            Ok(list
                .iter()
                .filter_map(|t| Some(Found::new(t["name"].as_str()?, t["tarball_url"].as_str())))
                .collect())
        }
        WatchSource::Pypi { .. } => {
            let v = json(bytes, "PyPI")?;
            let releases = v["releases"]
                .as_object()
                .ok_or("the PyPI answer has no `releases` object")?;
            Ok(releases
                .iter()
                .filter_map(|(ver, files)| {
                    let files = files.as_array();
                    // A release whose every file is yanked is gone.
                    if files.is_some_and(|f| {
                        !f.is_empty() && f.iter().all(|x| x["yanked"].as_bool() == Some(true))
                    }) {
                        return None;
                    }
                    let sdist = files.and_then(|f| {
                        f.iter()
                            .find(|x| x["packagetype"].as_str() == Some("sdist"))
                            .or_else(|| f.first())
                            .and_then(|x| x["url"].as_str())
                    });
                    Some(Found::new(ver.as_str(), sdist))
                })
                .collect())
        }
        WatchSource::Npm { .. } => {
            let v = json(bytes, "npm")?;
            let versions = v["versions"]
                .as_object()
                .ok_or("the npm answer has no `versions` object")?;
            Ok(versions
                .iter()
                .map(|(ver, meta)| Found::new(ver.as_str(), meta["dist"]["tarball"].as_str()))
                .collect())
        }
        WatchSource::Crates { package } => {
            let v = json(bytes, "crates.io")?;
            let versions = v["versions"]
                .as_array()
                .ok_or("the crates.io answer has no `versions` list")?;
            let base = reg.crates.trim_end_matches('/');
            Ok(versions
                .iter()
                .filter(|x| x["yanked"].as_bool() != Some(true))
                .filter_map(|x| {
                    let num = x["num"].as_str()?;
                    let uri = match x["dl_path"].as_str() {
                        Some(p) => format!("{base}{p}"),
                        None => format!("{base}/api/v1/crates/{package}/{num}/download"),
                    };
                    Some(Found::new(num, Some(&uri)))
                })
                .collect())
        }
        WatchSource::Url {
            regex,
            json_pointer,
            ..
        } => {
            if let Some(pointer) = json_pointer {
                let v = json(bytes, "URL")?;
                let at = v
                    .pointer(pointer)
                    .ok_or_else(|| format!("the answer has nothing at `{pointer}`"))?;
                return match at {
                    Value::String(s) => Ok(vec![Found::new(s.as_str(), None)]),
                    Value::Array(items) => Ok(items
                        .iter()
                        .filter_map(|i| match i {
                            Value::String(s) => Some(Found::new(s.as_str(), None)),
                            Value::Number(n) => Some(Found::new(n.to_string(), None)),
                            _ => None,
                        })
                        .collect()),
                    other => Err(format!(
                        "`{pointer}` is neither a string nor a list but {}",
                        kind_of(other)
                    )),
                };
            }
            let pattern = regex.as_deref().unwrap_or("");
            let re = regex::Regex::new(pattern)
                .map_err(|e| format!("`{pattern}` is not a regular expression: {e}"))?;
            let text = String::from_utf8_lossy(bytes);
            Ok(re
                .captures_iter(&text)
                .filter_map(|c| c.get(1).or_else(|| c.get(0)))
                .map(|m| Found::new(m.as_str(), None))
                .collect())
        }
        WatchSource::Command { .. } => Ok(lines(bytes)),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// One version a line, trimmed; blank lines skipped.
fn lines(bytes: &[u8]) -> Vec<Found> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| Found::new(l, None))
        .collect()
}

/// The most a scanning command may print.
const MAX_OUTPUT: usize = 1 << 20;

/// Runs a scanning command with `sh -c` in `dir`, its own process group killed when it
/// runs past `timeout`. A non-zero exit is an error naming its status and stderr's tail.
pub async fn run_command(
    command: &str,
    dir: &Path,
    timeout: Duration,
) -> Result<Vec<Found>, String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("failed to run `{command}` in {}: {e}", dir.display()))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: String = err
                    .trim()
                    .chars()
                    .rev()
                    .take(500)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err(format!("`{command}` failed ({}): {tail}", out.status));
            }
            if out.stdout.len() > MAX_OUTPUT {
                return Err(format!("`{command}` printed more than {MAX_OUTPUT} bytes"));
            }
            Ok(lines(&out.stdout))
        }
        Ok(Err(e)) => Err(format!("failed to wait for `{command}`: {e}")),
        Err(_) => {
            // The whole group: a shell's children would otherwise keep running.
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(format!(
                "`{command}` did not finish within {} s",
                timeout.as_secs()
            ))
        }
    }
}
