//! `kiln trigger PROJECT`: asks a server to run a project's workflow(s), and with `--wait`
//! waits for the runs to end (exit code: the runs' verdict) — with `--follow`, printing the
//! jobs' logs as they come.
//!
//! Not here: any decision about the run (the server's engine makes them).

use std::time::Duration;

use kiln_core::ids::RunStatus;
use kiln_proto::{Run, exit};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Failure;
use crate::args::{Format, TriggerArgs};
use crate::client::{Client, path_segment};
use crate::output::{print_json, stdout_line};

#[derive(Deserialize)]
struct Triggered {
    runs: Vec<Run>,
}

#[derive(Deserialize)]
struct LogSliceJson {
    data: String,
    next_offset: u64,
}

/// How often `--wait` asks for the runs' state.
const POLL: Duration = Duration::from_millis(300);

pub(crate) async fn trigger(a: TriggerArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln trigger")?;
    let mut inputs = Map::new();
    for i in &a.inputs {
        let (k, v) =
            kiln_engine::contexts::parse_assignment("--input", i).map_err(Failure::invalid)?;
        inputs.insert(k, Value::String(v));
    }
    let mut body = json!({ "inputs": inputs });
    if let Some(w) = &a.workflow {
        body["workflow"] = json!(w);
    }
    if let Some(r) = &a.git_ref {
        body["ref"] = json!(r);
    }
    if let Some(e) = &a.event {
        body["event"] = json!(e);
    }
    let path = format!("/api/v1/projects/{}/runs", path_segment(&a.project));
    let created: Triggered = client.post(&path, &body).await?;
    if !(a.wait || a.follow) {
        match a.format {
            Format::Json => print_json(&json!({ "runs": created.runs })),
            Format::Text => {
                for run in &created.runs {
                    stdout_line(&format!(
                        "{} {} #{} {}",
                        run.id,
                        run.workflow_name,
                        run.run_number,
                        run.status.as_str()
                    ));
                }
            }
        }
        return Ok(exit::OK);
    }

    let mut runs = created.runs;
    let mut offsets: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    loop {
        let mut all_done = true;
        for run in &mut runs {
            *run = client.get(&format!("/api/v1/runs/{}", run.id)).await?;
            if a.follow {
                for job in &run.jobs {
                    let key = job.id.to_string();
                    let offset = offsets.get(&key).copied().unwrap_or(0);
                    let slice: LogSliceJson = client
                        .get(&format!("/api/v1/logs/{}?offset={offset}", job.id))
                        .await?;
                    if !slice.data.is_empty() {
                        for line in slice.data.lines() {
                            crate::output::stderr_line(&format!("[{}] {line}", job.name));
                        }
                    }
                    offsets.insert(key, slice.next_offset);
                }
            }
            if !run.status.is_terminal() {
                all_done = false;
            }
        }
        if all_done {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    match a.format {
        Format::Json if runs.len() == 1 => print_json(&runs[0]),
        Format::Json => print_json(&json!({ "runs": runs })),
        Format::Text => {
            for run in &runs {
                stdout_line(&format!(
                    "{} {} #{} {}",
                    run.id,
                    run.workflow_name,
                    run.run_number,
                    run.status.as_str()
                ));
                for job in &run.jobs {
                    stdout_line(&format!("  {:<10} {}", job.status.as_str(), job.name));
                }
            }
        }
    }
    Ok(verdict(&runs))
}

/// The exit code of the runs: 0 all succeeded, 130 one was cancelled, 1 otherwise.
pub(crate) fn verdict(runs: &[Run]) -> i32 {
    if runs.iter().all(|r| r.status == RunStatus::Success) {
        exit::OK
    } else if runs.iter().any(|r| r.status == RunStatus::Cancelled) {
        exit::CANCELLED
    } else {
        exit::FAILED
    }
}
