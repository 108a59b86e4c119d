//! `kiln project add|list|show|update|remove|fetch`: a server's projects over HTTP
//! (`--server`/`KILN_SERVER`, `--token`/`KILN_TOKEN`).
//!
//! A source that is not a URL is a folder: made absolute here (against the current folder)
//! before it is sent, since the server has no idea where the command ran. Whether the server
//! accepts it — who may register folders, what its egress policy admits — is the server's
//! decision. Not here: any check of a source beyond that.

use std::path::Path;

use kiln_proto::{NewProject, ProjectList, ProjectUpdate, ProjectView, exit};
use serde_json::json;

use crate::Failure;
use crate::args::{
    Format, ProjectAddArgs, ProjectArgs, ProjectCommand, ProjectListArgs, ProjectOneArgs,
    ProjectRotateHookArgs, ProjectUpdateArgs,
};
use crate::client::{Client, path_segment};
use crate::output::{print_json, stderr_line, stdout_line};

pub(crate) async fn project(a: ProjectArgs) -> Result<i32, Failure> {
    match a.command {
        ProjectCommand::Add(c) => add(c).await,
        ProjectCommand::List(c) => list(c).await,
        ProjectCommand::Show(c) => show(c).await,
        ProjectCommand::Update(c) => update(c).await,
        ProjectCommand::Remove(c) => remove(c).await,
        ProjectCommand::Fetch(c) => fetch(c).await,
        ProjectCommand::RotateHook(c) => rotate_hook(c).await,
    }
}

fn one_path(project: &str) -> String {
    format!("/api/v1/projects/{}", path_segment(project))
}

async fn add(a: ProjectAddArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln project add")?;
    let req = NewProject {
        source: absolute_source(&a.source)?,
        name: a.name,
        provider: Some(a.provider),
        secret: a.secret,
    };
    let p: ProjectView = client.post("/api/v1/projects", &req).await?;
    match a.format {
        Format::Json => print_json(&json!({
            "id": p.id,
            "name": p.name,
            "hook_url": p.hook_url,
            "secret": p.secret,
        })),
        Format::Text => {
            stdout_line(&format!(
                "added {} project `{}` ({})",
                p.kind.as_str(),
                p.name,
                p.id
            ));
            stdout_line(&format!("webhook URL: {} ({})", p.hook_url, p.provider));
            if let Some(secret) = &p.secret {
                stdout_line(&format!(
                    "webhook secret: {secret}  (shown once; `kiln project rotate-hook {}` draws a new one)",
                    p.name
                ));
            }
            if p.fetch_status == kiln_proto::FetchStatus::Pending {
                stderr_line(&format!(
                    "the server fetches it in the background; `kiln project show {}` tells how it went",
                    p.name
                ));
            }
        }
    }
    Ok(exit::OK)
}

async fn list(a: ProjectListArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln project list")?;
    let list: ProjectList = client.get("/api/v1/projects").await?;
    match a.format {
        Format::Json => print_json(&list),
        Format::Text => {
            if list.projects.is_empty() {
                stdout_line("no projects yet");
            }
            for p in &list.projects {
                stdout_line(&format!(
                    "{}  {:<20}  {:<4}  {:<7}  {}",
                    p.id,
                    p.name,
                    p.kind.as_str(),
                    p.fetch_status.as_str(),
                    p.source
                ));
            }
        }
    }
    Ok(exit::OK)
}

async fn show(a: ProjectOneArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln project show")?;
    let p: ProjectView = client.get(&one_path(&a.project)).await?;
    print_project(&p, a.format);
    Ok(exit::OK)
}

async fn update(a: ProjectUpdateArgs) -> Result<i32, Failure> {
    if a.name.is_none() && a.source.is_none() {
        return Err(Failure::invalid(
            "kiln project update needs --name, --source or both",
        ));
    }
    let client = Client::for_command(&a.remote, "kiln project update")?;
    let req = ProjectUpdate {
        name: a.name,
        source: a.source.as_deref().map(absolute_source).transpose()?,
    };
    let p: ProjectView = client.patch(&one_path(&a.project), &req).await?;
    print_project(&p, a.format);
    Ok(exit::OK)
}

async fn remove(a: ProjectOneArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln project remove")?;
    let p: ProjectView = client.delete(&one_path(&a.project)).await?;
    match a.format {
        Format::Json => print_json(&p),
        Format::Text => stdout_line(&format!(
            "removed project `{}` ({}): archived, its runs and logs stay readable",
            p.name, p.id
        )),
    }
    Ok(exit::OK)
}

async fn fetch(a: ProjectOneArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln project fetch")?;
    let path = format!("{}/fetch", one_path(&a.project));
    let p: ProjectView = client.post(&path, &json!({})).await?;
    match a.format {
        Format::Json => print_json(&p),
        Format::Text => stdout_line(&format!(
            "fetching project `{}` in the background; `kiln project show {}` tells how it went",
            p.name, p.name
        )),
    }
    Ok(exit::OK)
}

async fn rotate_hook(a: ProjectRotateHookArgs) -> Result<i32, Failure> {
    let client = Client::for_command(&a.remote, "kiln project rotate-hook")?;
    let path = format!("{}/hook/rotate", one_path(&a.project));
    let req = kiln_proto::HookRotate {
        hook_id: a.new_url.then_some(true),
        secret: Some(true),
        value: a.secret,
        provider: a.provider,
    };
    let h: kiln_proto::HookSecret = client.post(&path, &req).await?;
    match a.format {
        Format::Json => print_json(&json!({
            "id": h.id,
            "name": h.name,
            "hook_url": h.hook_url,
            "secret": h.secret,
        })),
        Format::Text => {
            stdout_line(&format!("webhook URL: {} ({})", h.hook_url, h.provider));
            stdout_line(&format!("webhook secret: {}  (shown once)", h.secret));
        }
    }
    Ok(exit::OK)
}

/// A project for people (`key: value` lines), or as JSON.
fn print_project(p: &ProjectView, format: Format) {
    if format == Format::Json {
        print_json(p);
        return;
    }
    let when = |t: Option<jiff::Timestamp>| t.map(|t| t.to_string());
    let rows = [
        ("id", Some(p.id.to_string())),
        ("name", Some(p.name.clone())),
        ("kind", Some(p.kind.as_str().to_owned())),
        ("source", Some(p.source.clone())),
        ("webhook URL", Some(p.hook_url.clone())),
        ("fetch", Some(p.fetch_status.as_str().to_owned())),
        ("default branch", p.default_branch.clone()),
        ("head", p.head_sha.clone()),
        ("fetched at", when(p.fetched_at)),
        ("fetch error", p.fetch_error.clone()),
        ("created at", when(Some(p.created_at))),
        ("updated at", when(p.updated_at)),
        ("archived at", when(p.archived_at)),
    ];
    for (key, value) in rows {
        if let Some(v) = value {
            stdout_line(&format!("{key:<15} {v}"));
        }
    }
}

/// `source` as the server is to get it: a URL as it is, a path made absolute (with symbolic
/// links resolved when it exists here).
fn absolute_source(source: &str) -> Result<String, Failure> {
    if is_url(source) {
        return Ok(source.to_owned());
    }
    let path = Path::new(source);
    let absolute = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .map_err(|e| Failure::invalid(format!("failed to make `{source}` absolute: {e}")))?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|p| Failure::invalid(format!("the path {} is not UTF-8", Path::new(&p).display())))
}

/// Whether git would read `source` as a URL rather than a path: `scheme://…`, or the scp-like
/// `[user@]host:path` (a colon before any slash).
fn is_url(source: &str) -> bool {
    if source.contains("://") {
        return true;
    }
    match (source.find(':'), source.find('/')) {
        (Some(colon), Some(slash)) => colon < slash,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_sent_as_they_are_and_paths_made_absolute() {
        for url in [
            "https://example.com/a.git",
            "git@example.com:org/a.git",
            "file:///srv/a",
            "host:a",
        ] {
            assert!(is_url(url), "{url}");
            assert_eq!(absolute_source(url).unwrap(), url);
        }
        for path in ["/srv/a", "a/b", "./a:b", "."] {
            assert!(!is_url(path), "{path}");
        }
        let here = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(absolute_source(".").unwrap(), here.to_str().unwrap());
        let missing = absolute_source("no/such/dir").unwrap();
        assert!(Path::new(&missing).is_absolute(), "{missing}");
        assert!(missing.ends_with("no/such/dir"), "{missing}");
    }
}
