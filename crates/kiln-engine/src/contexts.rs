//! The run-level expression contexts (`github`, `inputs`, `secrets`, `vars`, `runner`) and the
//! checks on what a user passes in (`--input`, `--secret`, `--event-file`).
//!
//! Inputs are typed as the workflow's `workflow_dispatch.inputs` declare them (booleans become
//! JSON booleans, numbers numbers, choices must be one of their options), so that expressions
//! compare them the way GitHub does.

use indexmap::IndexMap;
use kiln_core::workflow::{InputKind, Workflow};
use serde_json::{Map, Value, json};

/// What started a run.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// `push`, `workflow_dispatch`, …
    pub event: String,
    /// The event payload (`github.event`); `--event-file` or one kiln makes up.
    pub payload: Option<Value>,
    /// `payload`'s JSON text when the caller has it (a webhook's body, a stored run's
    /// context): the run stores and writes this instead of serialising the payload again.
    /// Alone (no `payload`), it is the payload, parsed only when something reads it.
    pub payload_text: Option<kiln_store::PayloadText>,
    /// `--input K=V` as given, in order.
    pub inputs: IndexMap<String, String>,
    pub git_ref: String,
    pub sha: String,
    /// The repository's name as `owner/name` (a local folder: its folder name).
    pub repository: String,
}

/// Type and check `--input` values against the workflow's declared dispatch inputs, filling
/// defaults. Undeclared inputs are kept as strings (a workflow may read them via `inputs`
/// without declaring them under other events). Errors name the input.
pub fn resolve_inputs(
    wf: &Workflow,
    given: &IndexMap<String, String>,
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut errors = Vec::new();
    for (name, spec) in &wf.on.dispatch_inputs {
        let raw = given.get(name);
        let value = match (raw, &spec.default) {
            (Some(v), _) => match &spec.kind {
                InputKind::Boolean => match v.to_ascii_lowercase().as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => {
                        errors.push(format!(
                            "input `{name}` is a boolean: give true or false, not `{v}`"
                        ));
                        continue;
                    }
                },
                InputKind::Number => match v.trim().parse::<f64>() {
                    Ok(n) => json_number(n),
                    Err(_) => {
                        errors.push(format!("input `{name}` is a number, not `{v}`"));
                        continue;
                    }
                },
                InputKind::Choice(options) => {
                    if !options.iter().any(|o| o == v) {
                        errors.push(format!(
                            "input `{name}` must be one of {}, not `{v}`",
                            options.join(", ")
                        ));
                        continue;
                    }
                    Value::String(v.clone())
                }
                InputKind::String | InputKind::Environment => Value::String(v.clone()),
            },
            (None, Some(default)) => match (&spec.kind, default) {
                (InputKind::Boolean, Value::String(s)) => {
                    Value::Bool(s.eq_ignore_ascii_case("true"))
                }
                (InputKind::Number, Value::String(s)) => s
                    .trim()
                    .parse::<f64>()
                    .map(json_number)
                    .unwrap_or(Value::String(s.clone())),
                (_, v) => v.clone(),
            },
            (None, None) if spec.required && wf.on.events.contains_key("workflow_dispatch") => {
                errors.push(format!(
                    "input `{name}` is required: pass --input {name}=VALUE"
                ));
                continue;
            }
            (None, None) => match spec.kind {
                InputKind::Boolean => Value::Bool(false),
                _ => Value::String(String::new()),
            },
        };
        out.insert(name.clone(), value);
    }
    for (name, v) in given {
        if !wf.on.dispatch_inputs.contains_key(name) {
            out.insert(name.clone(), Value::String(v.clone()));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(format!("{}: {}", wf.file, errors.join("; ")))
    }
}

fn json_number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

/// The `github` context for one run (job-specific fields are added per job).
pub fn github_context(
    trigger: &Trigger,
    wf: &Workflow,
    run_id: &str,
    run_number: i64,
    run_attempt: i64,
    workspace: &str,
) -> Value {
    let ref_name = trigger
        .git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| trigger.git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(&trigger.git_ref);
    let ref_type = if trigger.git_ref.starts_with("refs/tags/") {
        "tag"
    } else {
        "branch"
    };
    let owner = trigger.repository.split('/').next().unwrap_or("");
    let actor = std::env::var("USER").unwrap_or_else(|_| "kiln".to_owned());
    json!({
        "event_name": trigger.event,
        "event": trigger
            .payload
            .clone()
            .or_else(|| trigger.payload_text.as_ref().map(kiln_store::PayloadText::parse))
            .unwrap_or_else(|| default_payload(trigger)),
        "sha": trigger.sha,
        "ref": trigger.git_ref,
        "ref_name": ref_name,
        "ref_type": ref_type,
        "ref_protected": false,
        "head_ref": "",
        "base_ref": "",
        "repository": trigger.repository,
        "repository_owner": owner,
        "actor": actor,
        "triggering_actor": actor,
        "workflow": wf.display_name(),
        "workflow_ref": format!("{}/{}@{}", trigger.repository, wf.file, trigger.git_ref),
        "run_id": run_id,
        "run_number": run_number.to_string(),
        "run_attempt": run_attempt.to_string(),
        "server_url": "",
        "api_url": "",
        "graphql_url": "",
        "workspace": workspace,
        "action": "",
        "retention_days": "90",
        "secret_source": "None",
    })
}

/// The payload kiln makes up when none is given: enough of GitHub's shape that workflows
/// reading `github.event.ref`, `head_commit` or `inputs` behave.
fn default_payload(trigger: &Trigger) -> Value {
    let mut p = json!({
        "ref": trigger.git_ref,
        "after": trigger.sha,
        "repository": {"full_name": trigger.repository, "name": trigger.repository.rsplit('/').next().unwrap_or("")},
        "head_commit": {"id": trigger.sha},
    });
    if trigger.event == "workflow_dispatch"
        && let Some(obj) = p.as_object_mut()
    {
        let inputs: Map<String, Value> = trigger
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        obj.insert("inputs".to_owned(), Value::Object(inputs));
    }
    p
}

/// Parse `NAME=VALUE` (for `--input` and `--secret`); the value may contain `=`.
pub fn parse_assignment(flag: &str, text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{flag} takes NAME=VALUE, got `{text}`")),
    }
}

/// Parse a dotenv file (`NAME=VALUE` lines, `#` comments, optional `export `, optional single
/// or double quotes around the value). Errors name the file's line.
pub fn parse_dotenv(file: &str, text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("{file}:{}: expected NAME=VALUE", i + 1));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{file}:{}: `{k}` is not a valid name", i + 1));
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            let inner = &v[1..v.len() - 1];
            if v.starts_with('"') {
                inner.replace("\\n", "\n").replace("\\\"", "\"")
            } else {
                inner.to_owned()
            }
        } else {
            v.to_owned()
        };
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_reads_quotes_comments_and_export() {
        let got = parse_dotenv(
            "s.env",
            "# comment\nA=1\nexport B=\"two words\"\nC='x=y'\n\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        let err = parse_dotenv("s.env", "A=1\nnot a line\n").unwrap_err();
        assert!(err.contains("s.env:2"), "{err}");
    }

    #[test]
    fn assignment_keeps_equals_in_value() {
        assert_eq!(
            parse_assignment("--input", "a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert!(parse_assignment("--input", "novalue").is_err());
    }
}
