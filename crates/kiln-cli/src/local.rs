//! `kiln run`: a project's workflows run here, without a server, recorded in the local store.
//! (`kiln runs` and `kiln logs` read that store through `source.rs`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use kiln_core::ids::RunStatus;
use kiln_engine::contexts::{Trigger, parse_assignment, parse_dotenv, resolve_inputs};
use kiln_engine::project::{load_project, snapshot};
use kiln_engine::{LocalRun, Progress};
use kiln_proto::exit;
use kiln_store::Store;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::args::{Format, RunArgs, StoreArgs};
use crate::output::{Reporter, print_json, print_run_summary, stdout_line};

/// The store of `args`, its data folder created if need be.
pub(crate) async fn open_store(args: &StoreArgs) -> Result<Store, Failure> {
    if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
        return Err(Failure::internal(format!(
            "failed to create the data folder {}: {e}",
            args.data_dir.display()
        )));
    }
    Store::open(args.database.as_deref(), &args.data_dir)
        .await
        .map_err(|e| Failure::internal(format!("failed to open the store: {e}")))
}

fn read_file(flag: &str, path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::invalid(format!("{flag} {}: {e}", path.display())))
}

pub(crate) async fn run(a: RunArgs) -> Result<i32, Failure> {
    let root = a
        .dir
        .canonicalize()
        .map_err(|e| Failure::invalid(format!("project folder {}: {e}", a.dir.display())))?;
    let project = load_project(&root)?;
    let selected = project.select(a.workflow.as_deref(), &a.event)?;

    let mut inputs = IndexMap::new();
    for i in &a.inputs {
        let (k, v) = parse_assignment("--input", i).map_err(Failure::invalid)?;
        inputs.insert(k, v);
    }
    let mut secrets = IndexMap::new();
    if let Some(file) = &a.secret_file {
        let text = read_file("--secret-file", file)?;
        for (k, v) in parse_dotenv(&file.display().to_string(), &text).map_err(Failure::invalid)? {
            secrets.insert(k, v);
        }
    }
    for s in &a.secrets {
        let (k, v) = parse_assignment("--secret", s).map_err(Failure::invalid)?;
        secrets.insert(k, v);
    }
    let payload = match &a.event_file {
        Some(file) => {
            let text = read_file("--event-file", file)?;
            Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                Failure::invalid(format!(
                    "--event-file {}: not JSON: {e} (line {}, column {})",
                    file.display(),
                    e.line(),
                    e.column()
                ))
            })?)
        }
        None => None,
    };

    let folder = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_owned());
    let data_dir = absolute(&a.store.data_dir);

    if a.dry_run {
        return dry_run(&selected, &inputs, &a, &folder, &root, &data_dir).await;
    }

    let (snap, revision) = snapshot(&root, std::slice::from_ref(&data_dir))?;
    let store = open_store(&a.store).await?;
    let project_row = store
        .upsert_project(
            &project_name(&store, &folder, &root).await?,
            &root.to_string_lossy(),
        )
        .await?;

    let git_ref = payload
        .as_ref()
        .and_then(|p| p.get("ref"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or(revision.git_ref);
    let trigger = Trigger {
        event: a.event.clone(),
        payload,
        payload_text: None,
        inputs,
        git_ref,
        sha: revision.sha,
        repository: format!("local/{folder}"),
    };
    let slots = a.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    if slots == 0 {
        return Err(Failure::invalid("--jobs must be at least 1"));
    }
    // Probed only when a workflow builds packages (its warning is about them).
    let sandbox = if selected
        .iter()
        .any(|wf| wf.jobs.values().any(|j| j.packages.is_some()))
    {
        crate::build::detect_sandbox(a.sandbox).await?
    } else {
        kiln_engine::packages::Sandbox::off()
    };
    let work_dir = std::env::temp_dir().join(format!("kiln-work-{}", uuid::Uuid::now_v7()));
    let req = LocalRun {
        project: project_row.id,
        workflows: selected.iter().map(|wf| (*wf).clone()).collect(),
        trigger,
        secrets,
        snapshot: Arc::new(snap),
        slots,
        work_dir: work_dir.clone(),
        owner: format!("kiln-run:{}:{}", std::process::id(), uuid::Uuid::now_v7()),
        max_attempts: 1,
        data_dir: data_dir.clone(),
        sandbox,
        fetch_egress: crate::build::fetch_egress(&a.egress)?,
        artifacts: None,
    };

    let (cancel, ctrl_c) = cancel_on_ctrl_c();
    let (ptx, prx) = mpsc::unbounded_channel::<Progress>();
    let reporter = tokio::spawn(Reporter::new(a.format == Format::Text).consume(prx));
    let outcome = kiln_engine::run_local(store.clone(), req, ptx, cancel).await;
    ctrl_c.abort();
    let _ = reporter.await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let outcome = outcome?;

    let mut runs = Vec::new();
    for id in &outcome.runs {
        if let Some(mut run) = store.get_run(*id).await? {
            // Jobs in the order the workflow declares them (a matrix that waited for its
            // needs is recorded later than the jobs after it); instances keep their order.
            if let Some(wf) = selected.iter().find(|wf| wf.file == run.workflow) {
                run.jobs
                    .sort_by_key(|j| wf.jobs.get_index_of(&j.key).unwrap_or(usize::MAX));
            }
            runs.push(run);
        }
    }
    match a.format {
        Format::Json => {
            if runs.len() == 1 {
                print_json(&runs[0]);
            } else {
                print_json(&json!({ "runs": runs }));
            }
        }
        Format::Text => {
            for run in &runs {
                print_run_summary(&store, run).await;
            }
        }
    }
    Ok(if outcome.cancelled {
        exit::CANCELLED
    } else if runs.iter().any(|r| r.status != RunStatus::Success) {
        exit::FAILED
    } else {
        exit::OK
    })
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The project's name in the store: its folder name, made unique when another folder of the
/// same name is already registered.
async fn project_name(store: &Store, folder: &str, root: &Path) -> Result<String, Failure> {
    let source = root.to_string_lossy();
    match store.find_project(folder).await? {
        Some(p) if p.source != source => {
            let mut h = 0u32;
            for b in source.bytes() {
                h = h.wrapping_mul(31).wrapping_add(u32::from(b));
            }
            Ok(format!("{folder}-{h:08x}"))
        }
        _ => Ok(folder.to_owned()),
    }
}

async fn dry_run(
    selected: &[&kiln_core::workflow::Workflow],
    inputs: &IndexMap<String, String>,
    a: &RunArgs,
    folder: &str,
    root: &Path,
    data_dir: &Path,
) -> Result<i32, Failure> {
    let mut jobs = Vec::new();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for wf in selected {
        let typed = resolve_inputs(wf, inputs).map_err(Failure::invalid)?;
        let trigger = Trigger {
            event: a.event.clone(),
            payload: None,
            payload_text: None,
            inputs: inputs.clone(),
            git_ref: "refs/heads/main".to_owned(),
            sha: String::new(),
            repository: format!("local/{folder}"),
        };
        let mut ctx = serde_json::Map::new();
        ctx.insert(
            "github".into(),
            kiln_engine::contexts::github_context(&trigger, wf, "", 0, 1, ""),
        );
        ctx.insert("inputs".into(), Value::Object(typed));
        ctx.insert("vars".into(), json!({}));
        ctx.insert("env".into(), json!({}));
        let planned = match kiln_core::plan::dry_run(wf, &ctx) {
            Ok(planned) => planned,
            Err(d) => {
                problems.extend(d.0);
                continue;
            }
        };
        // A `packages:` job becomes its packages' jobs (planned against the store, as a run
        // plans it: cached packages get none).
        let previews = if wf.jobs.values().any(|j| j.packages.is_some()) {
            let store = open_store(&a.store).await?;
            kiln_engine::packages::preview_workflow(&store, wf, root, data_dir)
                .await
                .map_err(|e| match e.is_user_error() {
                    true => Failure::invalid(e.to_string()),
                    false => Failure::internal(e.to_string()),
                })?
        } else {
            Default::default()
        };
        for j in planned {
            let Some(preview) = previews.get(&j.id) else {
                jobs.push(j);
                continue;
            };
            let base = wf.jobs[&j.id]
                .name
                .as_deref()
                .filter(|n| !n.contains("${{"))
                .unwrap_or(&j.id)
                .to_owned();
            for (origin, version) in &preview.jobs {
                let mut matrix = serde_json::Map::new();
                matrix.insert("package".into(), origin.clone().into());
                matrix.insert("version".into(), version.clone().into());
                jobs.push(kiln_core::plan::PlannedJob {
                    workflow: j.workflow.clone(),
                    id: j.id.clone(),
                    name: format!("{base} ({origin})"),
                    needs: j.needs.clone(),
                    labels: j.labels.clone(),
                    matrix: Some(matrix),
                });
            }
            if preview.cached > 0 {
                notes.push(format!(
                    "{}  {base}: {} cached package(s) get no job",
                    j.workflow, preview.cached
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Failure::invalid(
            kiln_core::workflow::Diagnostics(problems).to_string(),
        ));
    }
    match a.format {
        Format::Json => print_json(&json!({ "jobs": jobs })),
        Format::Text => {
            for j in &jobs {
                let matrix = match &j.matrix {
                    None => " (matrix from a job not yet run)".to_owned(),
                    Some(m) if m.is_empty() => String::new(),
                    Some(m) => format!(" {}", Value::Object(m.clone())),
                };
                let needs = if j.needs.is_empty() {
                    String::new()
                } else {
                    format!(" needs: {}", j.needs.join(", "))
                };
                stdout_line(&format!("{}  {}{}{}", j.workflow, j.name, needs, matrix));
            }
            for n in &notes {
                stdout_line(n);
            }
        }
    }
    Ok(exit::OK)
}

/// A token cancelled at the first Ctrl-C, and the task listening for it (abort it once the
/// work is done).
pub(crate) fn cancel_on_ctrl_c() -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let listener = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        })
    };
    (cancel, listener)
}
