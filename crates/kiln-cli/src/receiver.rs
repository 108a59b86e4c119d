//! `kiln receiver add PROJECT URL --events … | list PROJECT | remove PROJECT ID`: a project's
//! notification receivers over HTTP (`--server`/`KILN_SERVER`, `--token`/`KILN_TOKEN`).
//!
//! `add` prints the receiver's signing secret once (the server never shows it again). Not
//! here: checking the URL or the patterns (the server's, which answers 422 naming the field).

use clap::{Args, Subcommand};
use kiln_proto::{NewReceiver, ReceiverList, ReceiverView, exit};
use serde_json::Value;

use crate::Failure;
use crate::args::{Format, ServerArgs};
use crate::client::{Client, path_segment};
use crate::output::{print_json, stdout_line};

/// `kiln serve`'s flags for the notifier, which sends receivers their events.
#[derive(Debug, Clone, Args)]
pub(crate) struct NotifyFlags {
    /// Attempts at a notification before it is `failed` (its attempts stay listed, and
    /// `POST /api/v1/notifications/{id}/retry` sends it again).
    #[arg(
        long,
        default_value_t = 6,
        env = "KILN__NOTIFY__ATTEMPTS",
        value_name = "N"
    )]
    notify_attempts: u32,
    /// Seconds to wait after the 1st, 2nd, … failed attempt (comma-separated; the last
    /// repeats).
    #[arg(
        long,
        default_value = "5,30,120,600,3600",
        env = "KILN__NOTIFY__BACKOFF",
        value_delimiter = ',',
        value_name = "SECONDS,…"
    )]
    notify_backoff: Vec<u64>,
    /// Seconds one attempt may take, connection and answer included.
    #[arg(
        long,
        default_value_t = 10,
        env = "KILN__NOTIFY__TIMEOUT",
        value_name = "SECONDS"
    )]
    notify_timeout: u64,
    /// Send no notifications from this server (another replica sends them; nothing is lost:
    /// they wait in the store).
    #[arg(long, env = "KILN__NOTIFY__DISABLED")]
    no_notify: bool,
}

impl NotifyFlags {
    /// The notifier's settings; a zero count or time is exit 2 naming the flag.
    pub(crate) fn config(&self) -> Result<kiln_server::NotifyConfig, Failure> {
        if self.notify_attempts == 0 {
            return Err(Failure::invalid("--notify-attempts must be at least 1"));
        }
        if self.notify_backoff.is_empty() || self.notify_backoff.contains(&0) {
            return Err(Failure::invalid(
                "--notify-backoff: every wait must be at least 1 second",
            ));
        }
        if self.notify_timeout == 0 {
            return Err(Failure::invalid(
                "--notify-timeout must be at least 1 second",
            ));
        }
        let timeout = std::time::Duration::from_secs(self.notify_timeout);
        let defaults = kiln_server::NotifyConfig::default();
        Ok(kiln_server::NotifyConfig {
            enabled: !self.no_notify,
            backoff: self
                .notify_backoff
                .iter()
                .map(|&s| std::time::Duration::from_secs(s))
                .collect(),
            max_attempts: self.notify_attempts,
            timeout,
            // A claim outlives the attempt it covers, so a live sender never loses it.
            lease: defaults.lease.max(timeout * 2),
            ..defaults
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct ReceiverArgs {
    #[command(subcommand)]
    command: ReceiverCommand,
}

#[derive(Debug, Subcommand)]
enum ReceiverCommand {
    /// Send the project's events of the named types to URL, signed (X-Kiln-Signature).
    Add(AddArgs),
    /// List the project's receivers (without their secrets).
    List(ListArgs),
    /// Remove a receiver: nothing more is sent to it.
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
struct AddArgs {
    /// The project's id or name.
    #[arg(value_name = "PROJECT")]
    project: String,
    /// Where to POST (http:// or https://; the server's egress policy must allow it).
    #[arg(value_name = "URL")]
    url: String,
    /// Event types or patterns, comma-separated: run.completed, run.failed, run.*, job.*, *.
    #[arg(long, value_delimiter = ',', required = true, value_name = "TYPES")]
    events: Vec<String>,
    /// The signing secret (at least 16 characters); drawn at random when left out.
    #[arg(long, value_name = "S")]
    secret: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    remote: ServerArgs,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The project's id or name.
    #[arg(value_name = "PROJECT")]
    project: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    remote: ServerArgs,
}

#[derive(Debug, Args)]
struct RemoveArgs {
    /// The project's id or name.
    #[arg(value_name = "PROJECT")]
    project: String,
    /// The receiver's id (from `kiln receiver list`).
    #[arg(value_name = "ID")]
    id: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    remote: ServerArgs,
}

pub(crate) async fn receiver(a: ReceiverArgs) -> Result<i32, Failure> {
    match a.command {
        ReceiverCommand::Add(c) => add(c).await,
        ReceiverCommand::List(c) => list(c).await,
        ReceiverCommand::Remove(c) => remove(c).await,
    }
}

async fn add(a: AddArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln receiver add")?;
    let path = format!("/api/v1/projects/{}/receivers", path_segment(&a.project));
    let body = NewReceiver {
        url: a.url,
        events: a.events.into_iter().map(|e| e.trim().to_owned()).collect(),
        secret: a.secret,
    };
    let r: ReceiverView = client.post(&path, &body).await?;
    match a.format {
        Format::Json => print_json(&r),
        Format::Text => {
            stdout_line(&line(&r));
            if let Some(secret) = &r.secret {
                stdout_line(&format!("secret: {secret}"));
            }
        }
    }
    Ok(exit::OK)
}

async fn list(a: ListArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln receiver list")?;
    let path = format!("/api/v1/projects/{}/receivers", path_segment(&a.project));
    let list: ReceiverList = client.get(&path).await?;
    match a.format {
        Format::Json => print_json(&list),
        Format::Text => {
            if list.receivers.is_empty() {
                stdout_line("no receivers");
            }
            for r in &list.receivers {
                stdout_line(&line(r));
            }
        }
    }
    Ok(exit::OK)
}

async fn remove(a: RemoveArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln receiver remove")?;
    let path = format!(
        "/api/v1/projects/{}/receivers/{}",
        path_segment(&a.project),
        path_segment(&a.id)
    );
    let answer: Value = client.delete(&path).await?;
    match a.format {
        Format::Json => print_json(&answer),
        Format::Text => stdout_line(&format!("removed {}", a.id)),
    }
    Ok(exit::OK)
}

/// `ID  URL  EVENTS`.
fn line(r: &ReceiverView) -> String {
    format!("{}  {}  {}", r.id, r.url, r.events.join(","))
}
