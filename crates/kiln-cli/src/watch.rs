//! `kiln watch list|check NAME|ID`: a server's watches (`on.watch` entries of its projects'
//! workflows) over HTTP (`--server`/`KILN_SERVER`, `--token`/`KILN_TOKEN`), and the
//! `kiln serve` flags of the watch poller (registry base URLs, concurrency, sync interval).
//!
//! Watches come from the workflow files; these commands only show them and poll one now.
//! `check` exits 0 when the poll succeeded (new versions or not), 3 when the source failed
//! (the watch's error is printed, and kept by the server for its backoff). Not here: polling,
//! recording versions, starting runs (kiln-engine's, through the server).

use std::time::Duration;

use clap::{Args, Subcommand};
use kiln_engine::watch::{Registries, WatchConfig};
use kiln_proto::{WatchCheck, WatchList, WatchState, WatchVersion, WatchView, exit};
use serde_json::json;

use crate::Failure;
use crate::args::{Format, ServerArgs};
use crate::client::{Client, check_http_url, path_segment};
use crate::output::{print_json, stderr_line, stdout_line};

/// `kiln serve`: the token sent to the GitHub API by GitHub watches (higher rate limits).
/// Read from the environment only: a flag would show the secret to every `ps`.
pub(crate) const GITHUB_TOKEN_ENV: &str = "KILN__WATCH__GITHUB_TOKEN";

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(subcommand)]
    command: WatchCommand,
}

#[derive(Debug, Subcommand)]
enum WatchCommand {
    /// List the watches with their state, versions seen, last error and next poll.
    List(ListArgs),
    /// Poll a watch now: new versions are recorded and start their runs (maintainers).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    remote: ServerArgs,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The watch's `name:` (when unique among the watches the token sees) or its id.
    #[arg(value_name = "NAME|ID")]
    watch: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    remote: ServerArgs,
}

/// `kiln serve`'s flags for the watch poller. The registry URLs default to the public
/// registries; point them at mirrors (or, in tests, at a local server the egress policy
/// admits).
#[derive(Debug, Clone, Args)]
pub(crate) struct WatchFlags {
    /// The GitHub API base URL of `github-releases` and `github-tags` watches (default
    /// https://api.github.com). The token, if any, comes from KILN__WATCH__GITHUB_TOKEN.
    #[arg(long, env = "KILN__WATCH__GITHUB_URL", value_name = "URL")]
    watch_github_url: Option<String>,
    /// The PyPI base URL of `pypi` watches (default https://pypi.org).
    #[arg(long, env = "KILN__WATCH__PYPI_URL", value_name = "URL")]
    watch_pypi_url: Option<String>,
    /// The npm registry URL of `npm` watches (default https://registry.npmjs.org).
    #[arg(long, env = "KILN__WATCH__NPM_URL", value_name = "URL")]
    watch_npm_url: Option<String>,
    /// The crates.io base URL of `crates` watches (default https://crates.io).
    #[arg(long, env = "KILN__WATCH__CRATES_URL", value_name = "URL")]
    watch_crates_url: Option<String>,
    /// Watch polls at the same time, at most.
    #[arg(
        long,
        default_value_t = 16,
        env = "KILN__WATCH__CONCURRENCY",
        value_name = "N"
    )]
    watch_concurrency: usize,
    /// How often every project's `on.watch` entries are read again, in seconds.
    #[arg(
        long,
        default_value_t = 60,
        env = "KILN__WATCH__SYNC_INTERVAL",
        value_name = "SECONDS"
    )]
    watch_sync_interval: u64,
}

impl WatchFlags {
    /// The poller's settings (without the egress policy, which is the server's); a bad URL
    /// or a zero is exit 2 naming the flag. `github_token` is `KILN__WATCH__GITHUB_TOKEN`'s
    /// value, passed in so that tests need not touch the process environment.
    pub(crate) fn config(&self, github_token: Option<String>) -> Result<WatchConfig, Failure> {
        let defaults = Registries::default();
        let url = |flag: &str, value: &Option<String>, default: String| match value {
            Some(v) => check_http_url(flag, v),
            None => Ok(default),
        };
        let registries = Registries {
            github: url(
                "--watch-github-url",
                &self.watch_github_url,
                defaults.github,
            )?,
            pypi: url("--watch-pypi-url", &self.watch_pypi_url, defaults.pypi)?,
            npm: url("--watch-npm-url", &self.watch_npm_url, defaults.npm)?,
            crates: url(
                "--watch-crates-url",
                &self.watch_crates_url,
                defaults.crates,
            )?,
        };
        if self.watch_concurrency == 0 {
            return Err(Failure::invalid("--watch-concurrency must be at least 1"));
        }
        if self.watch_sync_interval == 0 {
            return Err(Failure::invalid(
                "--watch-sync-interval must be at least 1 second",
            ));
        }
        Ok(WatchConfig {
            registries,
            concurrency: self.watch_concurrency,
            github_token: github_token.filter(|t| !t.trim().is_empty()),
            ..WatchConfig::default()
        })
    }

    /// How often the poller re-reads the projects' workflow files.
    pub(crate) fn sync_interval(&self) -> Duration {
        Duration::from_secs(self.watch_sync_interval)
    }
}

pub(crate) async fn watch(a: WatchArgs) -> Result<i32, Failure> {
    match a.command {
        WatchCommand::List(c) => list(c).await,
        WatchCommand::Check(c) => check(c).await,
    }
}

async fn list(a: ListArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln watch list")?;
    let list: WatchList = client.get("/api/v1/watches").await?;
    match a.format {
        Format::Json => print_json(&list),
        Format::Text => {
            if list.watches.is_empty() {
                stdout_line("no watches");
            }
            for w in &list.watches {
                stdout_line(&line(w));
            }
        }
    }
    Ok(exit::OK)
}

async fn check(a: CheckArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln watch check")?;
    let path = format!("/api/v1/watches/{}/check", path_segment(&a.watch));
    let c: WatchCheck = client.post(&path, &json!({})).await?;
    match a.format {
        Format::Json => print_json(&c),
        Format::Text => {
            stdout_line(&line(&c.watch));
            if c.not_modified {
                stdout_line("not modified");
            } else if c.error.is_none() && c.new_versions.is_empty() {
                stdout_line("no new versions");
            }
            for v in &c.new_versions {
                stdout_line(&version_line(v));
            }
        }
    }
    match &c.error {
        Some(e) => {
            stderr_line(&format!("error: the poll of {} failed: {e}", c.watch.name));
            Ok(exit::INTERNAL)
        }
        None => Ok(exit::OK),
    }
}

/// `ID  NAME  PROJECT/WORKFLOW  SOURCE  STATE  N seen  next POLL  [error: …]`.
fn line(w: &WatchView) -> String {
    let state = match w.state {
        WatchState::New => "new",
        WatchState::Ok => "ok",
        WatchState::Failing => "failing",
        WatchState::Disabled => "disabled",
    };
    let next = w.next_poll_at.map_or_else(
        || "-".to_owned(),
        |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
    );
    let mut text = format!(
        "{}  {}  {}/{}  {}  {:<8}  {} seen  next {}",
        w.id, w.name, w.project_name, w.workflow, w.source, state, w.versions_seen, next
    );
    if let Some(e) = &w.last_error {
        text.push_str(&format!("  error: {}", one_line(e)));
    }
    text
}

/// `new VERSION  run ID` (or why no run started, or `recorded` on a first poll).
fn version_line(v: &WatchVersion) -> String {
    let what = match (&v.run, &v.error) {
        (Some(run), _) => format!("run {run}"),
        (None, Some(e)) => format!("no run: {}", one_line(e)),
        (None, None) => "recorded (no run)".to_owned(),
    };
    format!("new {}  {what}", v.version)
}

/// Errors of sources (a command's stderr) may span lines; a listing keeps one per watch.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn flags(args: &[&str]) -> Result<WatchConfig, Failure> {
        #[derive(Parser)]
        struct Probe {
            #[command(flatten)]
            watch: WatchFlags,
        }
        let mut argv = vec!["probe"];
        argv.extend(args);
        Probe::try_parse_from(argv)
            .unwrap()
            .watch
            .config(Some("ghp_x".to_owned()))
    }

    #[test]
    fn watch_flags_make_the_config() {
        let c = flags(&[]).unwrap();
        assert_eq!(c.registries, Registries::default());
        assert_eq!(c.concurrency, 16);
        assert_eq!(c.github_token.as_deref(), Some("ghp_x"));

        let c = flags(&[
            "--watch-pypi-url",
            "http://127.0.0.1:9000/",
            "--watch-github-url",
            "https://ghe.example/api/v3",
            "--watch-concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!(c.registries.pypi, "http://127.0.0.1:9000");
        assert_eq!(c.registries.github, "https://ghe.example/api/v3");
        assert_eq!(c.registries.npm, Registries::default().npm);
        assert_eq!(c.concurrency, 4);

        for (flag, bad) in [
            ("--watch-pypi-url", "pypi.org"),
            ("--watch-npm-url", "ftp://x"),
            ("--watch-crates-url", "http://"),
        ] {
            let f = flags(&[flag, bad]).unwrap_err();
            assert_eq!(f.code, exit::INVALID, "{bad}");
            assert!(f.message.starts_with(flag), "{}", f.message);
        }
        let f = flags(&["--watch-concurrency", "0"]).unwrap_err();
        assert_eq!(f.code, exit::INVALID);
    }
}
