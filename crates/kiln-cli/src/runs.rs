//! `kiln runs`: runs newest first, from a server or the local store (`source.rs`), printed
//! the same way from either — `--format json` is `{"runs":[run…]}` both ways.

use kiln_core::ids::RunStatus;
use kiln_proto::exit;
use serde_json::json;

use crate::Failure;
use crate::args::{Format, RunsArgs};
use crate::output::{print_json, stdout_line};
use crate::source::{RunQuery, Source};

pub(crate) async fn runs(a: RunsArgs) -> Result<i32, Failure> {
    let status = match &a.status {
        Some(s) => Some(
            s.parse::<RunStatus>()
                .map_err(|e| Failure::invalid(format!("--status: {e}")))?,
        ),
        None => None,
    };
    let filtered = a.project.is_some() || status.is_some() || a.workflow.is_some();
    let source = Source::open(&a.remote, &a.store).await?;
    let runs = source
        .runs(&RunQuery {
            project: a.project,
            status,
            workflow: a.workflow,
            limit: a.limit,
        })
        .await?;
    match a.format {
        Format::Json => print_json(&json!({ "runs": runs })),
        Format::Text => {
            if runs.is_empty() {
                stdout_line(if filtered {
                    "no runs match"
                } else {
                    "no runs yet"
                });
            }
            for r in &runs {
                stdout_line(&format!(
                    "{}  {:<9}  #{:<4} {}  {}  {}",
                    r.id,
                    r.status.as_str(),
                    r.run_number,
                    r.workflow_name,
                    r.event,
                    r.created_at.strftime("%Y-%m-%d %H:%M:%S")
                ));
            }
        }
    }
    Ok(exit::OK)
}
