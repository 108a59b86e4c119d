//! `kiln schedule list|stop ID|start ID`: a server's schedules (`on.schedule` entries of its
//! projects' workflows) over HTTP (`--server`/`KILN_SERVER`, `--token`/`KILN_TOKEN`).
//!
//! Schedules come from the workflow files; these commands only read them and stop or start
//! them. Not here: anything the server decides (who may stop, when a schedule fires).

use kiln_proto::{ScheduleList, ScheduleState, ScheduleView, exit};
use serde_json::json;

use crate::Failure;
use crate::args::{Format, ScheduleArgs, ScheduleCommand, ScheduleListArgs, ScheduleOneArgs};
use crate::client::{Client, path_segment};
use crate::output::{print_json, stdout_line};

pub(crate) async fn schedule(a: ScheduleArgs) -> Result<i32, Failure> {
    match a.command {
        ScheduleCommand::List(c) => list(c).await,
        ScheduleCommand::Stop(c) => change(c, "stop").await,
        ScheduleCommand::Start(c) => change(c, "start").await,
    }
}

async fn list(a: ScheduleListArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln schedule list")?;
    let list: ScheduleList = client.get("/api/v1/schedules").await?;
    match a.format {
        Format::Json => print_json(&list),
        Format::Text => {
            if list.schedules.is_empty() {
                stdout_line("no schedules");
            }
            for s in &list.schedules {
                stdout_line(&line(s));
            }
        }
    }
    Ok(exit::OK)
}

async fn change(a: ScheduleOneArgs, verb: &str) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, &format!("kiln schedule {verb}"))?;
    let path = format!("/api/v1/schedules/{}/{verb}", path_segment(&a.id));
    let s: ScheduleView = client.post(&path, &json!({})).await?;
    match a.format {
        Format::Json => print_json(&s),
        Format::Text => stdout_line(&line(&s)),
    }
    Ok(exit::OK)
}

/// `ID  STATE  NEXT-FIRE  CRON (ZONE)  PROJECT  WORKFLOW[INDEX]`.
fn line(s: &ScheduleView) -> String {
    let state = match s.state {
        ScheduleState::Active => "active",
        ScheduleState::Stopped => "stopped",
    };
    let next = s.next_fire_at.map_or_else(
        || "-".to_owned(),
        |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
    );
    format!(
        "{}  {:<7}  {:<20}  {:<16}  {:<14}  {}  {}[{}]",
        s.id, state, next, s.cron, s.timezone, s.project_name, s.workflow, s.index
    )
}
