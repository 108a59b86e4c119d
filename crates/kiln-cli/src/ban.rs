//! `kiln ban list|lift ID`: the webhook senders a server banned for failing verification
//! (`GET /api/v1/bans`, `DELETE /api/v1/bans/{id}`; admin tokens), and the `kiln serve`
//! flags that decide bans.

use std::time::Duration;

use clap::{Args, Subcommand};
use kiln_proto::{Ban, BanList, exit};

use crate::Failure;
use crate::args::{Format, ServerArgs};
use crate::client::{Client, path_segment};
use crate::output::{print_json, stdout_line};

#[derive(Debug, Args)]
pub(crate) struct BanArgs {
    #[command(subcommand)]
    command: BanCommand,
}

#[derive(Debug, Subcommand)]
enum BanCommand {
    /// List the bans in force (`--all`: also those that ended or were lifted).
    List(BanListArgs),
    /// Lift a ban now.
    Lift(BanLiftArgs),
}

#[derive(Debug, Args)]
struct BanListArgs {
    /// Also the bans that ended or were lifted.
    #[arg(long)]
    all: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    remote: ServerArgs,
}

#[derive(Debug, Args)]
struct BanLiftArgs {
    /// The ban's id (from `kiln ban list`).
    #[arg(value_name = "ID")]
    id: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    remote: ServerArgs,
}

/// `kiln serve`'s flags for webhook bans (and how long delivery bodies are kept).
#[derive(Debug, Clone, Args)]
pub(crate) struct BanFlags {
    /// Failed webhook verifications (per address and hook), or unknown hook ids (per
    /// address), that ban the address.
    #[arg(
        long,
        default_value_t = 10,
        env = "KILN__HOOKS__BAN_THRESHOLD",
        value_name = "N"
    )]
    hook_ban_threshold: usize,
    /// Within how many seconds those failures count.
    #[arg(
        long,
        default_value_t = 600,
        env = "KILN__HOOKS__BAN_WINDOW",
        value_name = "SECONDS"
    )]
    hook_ban_window: u64,
    /// How long a ban lasts, in seconds.
    #[arg(
        long,
        default_value_t = 3600,
        env = "KILN__HOOKS__BAN_DURATION",
        value_name = "SECONDS"
    )]
    hook_ban_duration: u64,
    /// Addresses or CIDRs never banned, such as a provider's documented sender ranges
    /// (repeatable, or comma-separated).
    #[arg(
        long,
        env = "KILN__HOOKS__NEVER_BAN",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    hook_never_ban: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (repeatable, or comma-separated);
    /// without one, the connection's address is the sender's.
    #[arg(
        long,
        env = "KILN__HOOKS__TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    hook_trusted_proxy: Vec<String>,
    /// Days a webhook delivery that started no run keeps its body (its row, outcome and
    /// size stay for good; a body that started runs stays with them); 0 keeps bodies
    /// forever.
    #[arg(
        long,
        default_value_t = 30,
        env = "KILN__HOOKS__PAYLOAD_RETENTION_DAYS",
        value_name = "DAYS"
    )]
    hook_payload_retention: u64,
}

impl BanFlags {
    /// How long processed deliveries keep their bodies (`None`: for good).
    pub(crate) fn payload_retention(&self) -> Option<Duration> {
        (self.hook_payload_retention > 0)
            .then(|| Duration::from_secs(self.hook_payload_retention.saturating_mul(86_400)))
    }

    /// The server's ban settings; a bad CIDR or a zero threshold is exit 2 naming the flag.
    pub(crate) fn config(&self) -> Result<kiln_server::BanConfig, Failure> {
        let nets = |flag: &str, values: &[String]| {
            values
                .iter()
                .map(|v| {
                    let v = v.trim();
                    v.parse::<ipnet::IpNet>()
                        .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            Failure::invalid(format!(
                                "--{flag} `{v}`: expected an address or a CIDR such as 192.0.2.0/24"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if self.hook_ban_threshold == 0 {
            return Err(Failure::invalid("--hook-ban-threshold must be at least 1"));
        }
        if self.hook_ban_window == 0 || self.hook_ban_duration == 0 {
            return Err(Failure::invalid(
                "--hook-ban-window and --hook-ban-duration must be at least 1 second",
            ));
        }
        Ok(kiln_server::BanConfig {
            threshold: self.hook_ban_threshold,
            window: Duration::from_secs(self.hook_ban_window),
            duration: Duration::from_secs(self.hook_ban_duration),
            never: nets("hook-never-ban", &self.hook_never_ban)?,
            trusted_proxies: nets("hook-trusted-proxy", &self.hook_trusted_proxy)?,
        })
    }
}

pub(crate) async fn ban(a: BanArgs) -> Result<i32, Failure> {
    match a.command {
        BanCommand::List(a) => {
            let client = Client::for_command(&a.remote, "kiln ban list")?;
            let path = if a.all {
                "/api/v1/bans?all=true"
            } else {
                "/api/v1/bans"
            };
            let list: BanList = client.get(path).await?;
            match a.format {
                Format::Json => print_json(&list),
                Format::Text => {
                    if list.bans.is_empty() {
                        stdout_line("no bans");
                    }
                    for b in &list.bans {
                        stdout_line(&line(b));
                    }
                }
            }
        }
        BanCommand::Lift(a) => {
            let client = Client::for_command(&a.remote, "kiln ban lift")?;
            let b: Ban = client
                .delete(&format!("/api/v1/bans/{}", path_segment(&a.id)))
                .await?;
            match a.format {
                Format::Json => print_json(&b),
                Format::Text => stdout_line(&format!("lifted: {}", line(&b))),
            }
        }
    }
    Ok(exit::OK)
}

/// `ID  ADDRESS  HOOK|all hooks  UNTIL  REASON`.
fn line(b: &Ban) -> String {
    let until = match b.lifted_at {
        Some(t) => format!("lifted {}", t.strftime("%Y-%m-%d %H:%M UTC")),
        None => format!("until {}", b.expires_at.strftime("%Y-%m-%d %H:%M UTC")),
    };
    format!(
        "{}  {}  {}  {}  {}",
        b.id,
        b.address,
        b.hook_id.as_deref().unwrap_or("all hooks"),
        until,
        b.reason
    )
}
