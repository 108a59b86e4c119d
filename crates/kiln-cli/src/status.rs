//! `kiln status`: whether a server is up (`GET /api/v1/status`), its version, store backend
//! and start time. Always a server's: there is no local status to report.

use kiln_proto::{ServerStatus, exit};
use serde_json::Value;

use crate::Failure;
use crate::args::{Format, StatusArgs};
use crate::client::Client;
use crate::output::{print_json, stdout_line};

pub(crate) async fn status(a: StatusArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln status")?;
    // Kept as JSON so that `--format json` passes on whatever a newer server adds.
    let data: Value = client.get("/api/v1/status").await?;
    match a.format {
        Format::Json => print_json(&data),
        Format::Text => {
            let s: ServerStatus = serde_json::from_value(data).map_err(|e| {
                Failure::internal(format!(
                    "failed to understand the status of {}: {e}",
                    client.base()
                ))
            })?;
            let secs = jiff::Timestamp::now().as_second() - s.started_at.as_second();
            let up = uptime(u64::try_from(secs).unwrap_or(0));
            stdout_line(&format!("{}: {}", client.base(), s.status));
            stdout_line(&format!("version  {}", s.version));
            stdout_line(&format!("store    {}", s.backend));
            stdout_line(&format!(
                "started  {} (up {up})",
                s.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
    }
    Ok(exit::OK)
}

/// `3d4h`, `2h05m`, `4m07s`, `12s`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_at_a_glance() {
        assert_eq!(uptime(12), "12s");
        assert_eq!(uptime(247), "4m07s");
        assert_eq!(uptime(2 * 3600 + 5 * 60 + 9), "2h05m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600 + 1), "3d4h");
    }
}
