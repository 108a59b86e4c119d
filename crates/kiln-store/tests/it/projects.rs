//! Projects as the API keeps them: unique names, kinds that follow the source, the fetch
//! state of a git mirror (guarded by the source it was fetched from), updates, and archiving,
//! which is refused while runs are unfinished and otherwise keeps the runs readable.

use std::time::Duration;

use kiln_core::ids::{JobStatus, RunStatus};
use kiln_proto::{FetchStatus, ProjectKind};
use kiln_store::{Archived, FetchOutcome, Op, OpResult, ProjectChange, StoreError};

use crate::harness::{Harness, at, both_backends, new_job, new_run};

both_backends!(
    projects_are_created_listed_and_read,
    a_taken_name_is_refused_and_nothing_changes,
    updates_rename_and_resource_projects,
    fetches_are_recorded_for_the_source_they_fetched,
    archiving_waits_for_runs_and_keeps_them_readable,
);

/// Lets the millisecond clock move on, so that "asked after it ended" is visible.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

async fn projects_are_created_listed_and_read(h: &Harness) {
    let s = &h.store;
    let git = s
        .create_project("web", "https://example.invalid/org/web.git")
        .await
        .unwrap();
    assert_eq!(git.kind(), ProjectKind::Git);
    assert_eq!(git.fetch_status(), FetchStatus::Pending);
    assert!(git.fetch_requested_at.is_some());
    assert_eq!((git.fetched_at, git.head_sha.as_deref()), (None, None));
    assert_eq!(
        uuid::Uuid::parse_str(&git.project.hook_id)
            .unwrap()
            .get_version_num(),
        4
    );

    let folder = s.create_project("api", "/srv/api").await.unwrap();
    assert_eq!(folder.kind(), ProjectKind::Path);
    assert_eq!(folder.fetch_status(), FetchStatus::None);
    assert_eq!(folder.fetch_requested_at, None);
    assert_ne!(folder.project.hook_id, git.project.hook_id);

    // `kiln run` keeps registering through upsert; its projects list beside the others.
    let local = s.upsert_project("cli", "/home/me/cli").await.unwrap();

    let names: Vec<String> = s
        .list_projects(false)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.project.name)
        .collect();
    assert_eq!(names, ["api", "cli", "web"]);
    assert_eq!(
        s.project_record(git.project.id).await.unwrap(),
        Some(git.clone())
    );
    assert_eq!(
        s.project_record_by_name("api").await.unwrap(),
        Some(folder.clone())
    );
    assert_eq!(s.project_record_by_name("nope").await.unwrap(), None);
    let cli = s.project_record(local.id).await.unwrap().unwrap();
    assert_eq!((cli.project, cli.archived_at), (local, None));
    // The record's `project` is what the existing reads answer.
    assert_eq!(
        s.get_project(git.project.id).await.unwrap(),
        Some(git.project.clone())
    );
    assert_eq!(
        s.find_project("web").await.unwrap(),
        Some(git.project.clone())
    );
}

async fn a_taken_name_is_refused_and_nothing_changes(h: &Harness) {
    let s = &h.store;
    let first = s.create_project("app", "/srv/app").await.unwrap();
    let err = s
        .create_project("app", "https://example.invalid/app.git")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NameTaken { what: "project", name } if name == "app"),
        "{err}"
    );
    assert!(err.to_string().starts_with("failed to name project `app`"));
    let all = s.list_projects(true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0], first);
}

async fn updates_rename_and_resource_projects(h: &Harness) {
    let s = &h.store;
    let p = s
        .create_project("one", "https://example.invalid/one.git")
        .await
        .unwrap();
    let other = s.create_project("two", "/srv/two").await.unwrap();
    let id = p.project.id;
    s.record_fetch(
        id,
        &p.project.source,
        &FetchOutcome::Fetched {
            default_branch: Some("main".to_owned()),
            head_sha: Some("a".repeat(40)),
        },
    )
    .await
    .unwrap();

    let renamed = s
        .update_project(
            id,
            ProjectChange {
                name: Some("uno"),
                source: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.project.name, "uno");
    assert_eq!(renamed.project.hook_id, p.project.hook_id);
    assert!(renamed.updated_at.is_some());
    assert_eq!(
        renamed.head_sha.as_deref(),
        Some("a".repeat(40).as_str()),
        "a rename keeps the fetch state"
    );

    // The same source again is no change of source.
    let same = s
        .update_project(
            id,
            ProjectChange {
                name: None,
                source: Some(&p.project.source),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same.fetch_status(), FetchStatus::Ok);

    let err = s
        .update_project(
            id,
            ProjectChange {
                name: Some("two"),
                source: Some("/srv/elsewhere"),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
    assert_eq!(
        s.project_record(id).await.unwrap().unwrap().project,
        renamed.project,
        "a refused update changes nothing"
    );

    let moved = s
        .update_project(
            id,
            ProjectChange {
                name: None,
                source: Some("/srv/one"),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.kind(), ProjectKind::Path);
    assert_eq!(moved.fetch_status(), FetchStatus::None);
    assert_eq!(
        (moved.head_sha, moved.default_branch, moved.fetched_at),
        (None, None, None),
        "a new source forgets the old one's mirror"
    );
    let back = s
        .update_project(
            id,
            ProjectChange {
                name: None,
                source: Some("https://example.invalid/uno.git"),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.fetch_status(), FetchStatus::Pending);

    assert_eq!(
        s.update_project(kiln_core::ids::ProjectId::new(), ProjectChange::default())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.project_record(other.project.id).await.unwrap(),
        Some(other)
    );
}

async fn fetches_are_recorded_for_the_source_they_fetched(h: &Harness) {
    let s = &h.store;
    let p = s
        .create_project("lib", "https://example.invalid/lib.git")
        .await
        .unwrap();
    let id = p.project.id;
    let source = p.project.source.clone();
    let fetched = FetchOutcome::Fetched {
        default_branch: Some("main".to_owned()),
        head_sha: Some("b".repeat(40)),
    };
    tick().await;
    assert!(s.record_fetch(id, &source, &fetched).await.unwrap());
    let r = s.project_record(id).await.unwrap().unwrap();
    assert_eq!(r.fetch_status(), FetchStatus::Ok);
    assert_eq!(r.default_branch.as_deref(), Some("main"));
    assert_eq!(r.head_sha.as_deref(), Some("b".repeat(40).as_str()));
    assert!(r.fetched_at.is_some());

    tick().await;
    let asked = s.request_fetch(id).await.unwrap().unwrap();
    assert_eq!(asked.fetch_status(), FetchStatus::Pending);
    tick().await;
    let failed = FetchOutcome::Failed("failed to run `git fetch`: no route".to_owned());
    assert!(s.record_fetch(id, &source, &failed).await.unwrap());
    let r = s.project_record(id).await.unwrap().unwrap();
    assert_eq!(r.fetch_status(), FetchStatus::Failed);
    assert_eq!(
        r.fetch_error.as_deref(),
        Some("failed to run `git fetch`: no route")
    );
    assert_eq!(
        r.head_sha.as_deref(),
        Some("b".repeat(40).as_str()),
        "a failed fetch keeps what the last good one found"
    );
    tick().await;
    assert!(s.record_fetch(id, &source, &fetched).await.unwrap());
    let r = s.project_record(id).await.unwrap().unwrap();
    assert_eq!((r.fetch_status(), r.fetch_error), (FetchStatus::Ok, None));

    // A fetch that ends after the source changed records nothing.
    s.update_project(
        id,
        ProjectChange {
            name: None,
            source: Some("https://example.invalid/lib2.git"),
        },
    )
    .await
    .unwrap();
    assert!(!s.record_fetch(id, &source, &fetched).await.unwrap());
    let r = s.project_record(id).await.unwrap().unwrap();
    assert_eq!((r.fetch_status(), r.head_sha), (FetchStatus::Pending, None));
}

async fn archiving_waits_for_runs_and_keeps_them_readable(h: &Harness) {
    let s = &h.store;
    let p = s
        .create_project("svc", "https://example.invalid/svc.git")
        .await
        .unwrap();
    let id = p.project.id;
    let run = s
        .create_run(new_run(
            id,
            "ci.yml",
            vec![new_job("build", JobStatus::Queued, 1)],
        ))
        .await
        .unwrap();
    assert_eq!(
        s.archive_project(id).await.unwrap(),
        Some(Archived::Busy { active_runs: 1 })
    );
    let r = s.project_record(id).await.unwrap().unwrap();
    assert_eq!(r, p, "a refused archive changes nothing");

    let ended = s
        .commit(vec![
            Op::SetJobStatus {
                job: run.jobs[0].id,
                status: JobStatus::Cancelled,
                at: at(5),
            },
            Op::SetRunStatus {
                run: run.id,
                status: RunStatus::Cancelled,
                at: at(5),
            },
        ])
        .await
        .unwrap();
    assert_eq!(ended, [OpResult::Done, OpResult::Done]);

    let Some(Archived::Done(archived)) = s.archive_project(id).await.unwrap() else {
        panic!("a project without unfinished runs is archived")
    };
    let archived = *archived;
    let when = archived.archived_at.expect("archived_at is set");
    assert_eq!(archived.project, p.project);
    assert!(s.list_projects(false).await.unwrap().is_empty());
    assert_eq!(
        s.list_projects(true).await.unwrap(),
        std::slice::from_ref(&archived)
    );
    // Its history stays readable, and it can still be read by id and by name.
    let kept = s.get_run(run.id).await.unwrap().expect("the run is kept");
    assert_eq!(kept.status, RunStatus::Cancelled);
    assert_eq!(kept.jobs.len(), 1);
    assert_eq!(
        s.project_record_by_name("svc").await.unwrap(),
        Some(archived.clone())
    );

    // Archiving again keeps the first time; the name stays taken; nothing else changes it.
    let Some(Archived::Done(again)) = s.archive_project(id).await.unwrap() else {
        panic!("archiving twice is no error")
    };
    assert_eq!(again.archived_at, Some(when));
    assert!(matches!(
        s.create_project("svc", "/srv/svc").await,
        Err(StoreError::NameTaken { .. })
    ));
    assert_eq!(s.request_fetch(id).await.unwrap(), None);
    assert_eq!(
        s.update_project(
            id,
            ProjectChange {
                name: Some("svc2"),
                source: None
            }
        )
        .await
        .unwrap(),
        None
    );
    let outcome = FetchOutcome::Failed("late".to_owned());
    assert!(
        !s.record_fetch(id, &p.project.source, &outcome)
            .await
            .unwrap()
    );
    assert_eq!(s.project_record(id).await.unwrap(), Some(archived));
    assert_eq!(
        s.archive_project(kiln_core::ids::ProjectId::new())
            .await
            .unwrap(),
        None
    );
}
