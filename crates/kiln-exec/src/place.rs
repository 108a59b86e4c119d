//! What a job's contexts and environment say about where it runs: its workspace, its temp
//! folder, the event file, the machine. The server's local pool and a remote worker both fill
//! these in just before running a job; everything else about a job is decided by the server.

use serde_json::{Map, Value, json};

/// Where one job runs on this machine.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    /// The job's copy of the project (`GITHUB_WORKSPACE`, `github.workspace`).
    pub workspace: &'a str,
    /// Its scratch folder (`RUNNER_TEMP`, `runner.temp`).
    pub temp: &'a str,
    /// The event payload's file (`GITHUB_EVENT_PATH`).
    pub event_path: &'a str,
    /// `RUNNER_NAME`, `runner.name`.
    pub runner_name: &'a str,
}

/// GitHub's name for this machine's architecture (`runner.arch`, `RUNNER_ARCH`).
pub fn runner_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "X64",
        "aarch64" => "ARM64",
        "x86" => "X86",
        "arm" => "ARM",
        other => other,
    }
}

/// The `runner` context of a job whose temp folder is `temp`.
pub fn runner_context(temp: &str, name: &str) -> Value {
    json!({
        "os": "Linux",
        "arch": runner_arch(),
        "name": name,
        "environment": "self-hosted",
        "temp": temp,
        "tool_cache": temp,
        "debug": "",
    })
}

/// Fills in `github.workspace`, the `runner` context and the environment variables that
/// name folders or the machine.
pub fn place_job(
    contexts: &mut Map<String, Value>,
    env: &mut Vec<(String, String)>,
    at: Place<'_>,
) {
    if let Some(Value::Object(gh)) = contexts.get_mut("github") {
        gh.insert("workspace".into(), Value::String(at.workspace.to_owned()));
    }
    contexts.insert("runner".into(), runner_context(at.temp, at.runner_name));
    let placed = [
        ("GITHUB_WORKSPACE", at.workspace),
        ("GITHUB_EVENT_PATH", at.event_path),
        ("RUNNER_OS", "Linux"),
        ("RUNNER_ARCH", runner_arch()),
        ("RUNNER_NAME", at.runner_name),
        ("RUNNER_TEMP", at.temp),
        ("RUNNER_TOOL_CACHE", at.temp),
    ];
    env.retain(|(k, _)| !placed.iter().any(|(p, _)| p == k));
    env.extend(
        placed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placing_a_job_names_its_folders_once() {
        let mut contexts = Map::new();
        contexts.insert("github".into(), json!({"sha": "abc"}));
        let mut env = vec![
            ("CI".to_owned(), "true".to_owned()),
            ("RUNNER_TEMP".to_owned(), "/elsewhere".to_owned()),
        ];
        let at = Place {
            workspace: "/w/ws",
            temp: "/w/tmp",
            event_path: "/w/event.json",
            runner_name: "builder-1",
        };
        place_job(&mut contexts, &mut env, at);
        assert_eq!(contexts["github"]["workspace"], "/w/ws");
        assert_eq!(contexts["github"]["sha"], "abc");
        assert_eq!(contexts["runner"]["temp"], "/w/tmp");
        assert_eq!(contexts["runner"]["name"], "builder-1");
        let get = |k: &str| {
            let all: Vec<&str> = env
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(all.len(), 1, "{k} once");
            all[0].to_owned()
        };
        assert_eq!(get("RUNNER_TEMP"), "/w/tmp");
        assert_eq!(get("GITHUB_WORKSPACE"), "/w/ws");
        assert_eq!(get("GITHUB_EVENT_PATH"), "/w/event.json");
        assert_eq!(get("CI"), "true");
    }
}
