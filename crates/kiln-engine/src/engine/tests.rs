//! The server's engine against a real store (SQLite, or PostgreSQL where replicas share it):
//! adopting a run whose holder died, and a run taken over from a stale view of the store.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiln_core::ids::{JobId, JobStatus, RunId, RunStatus};
use kiln_store::{Driver, NewJob, NewRun, Op, OpResult, Store};
use serde_json::Map;

use super::{Engine, EngineConfig};

const CI: &str = "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n  b:\n    needs: a\n    runs-on: x\n    steps: [{run: 'true'}]\n";

/// The folder (kept while it lives), the data dir, the store, the project.
type Fixture = (
    tempfile::TempDir,
    std::path::PathBuf,
    Store,
    kiln_proto::Project,
);

/// A folder project `p` with one workflow, on a fresh SQLite store in a temporary folder
/// (kept while the first value lives): the folder, the data dir, the store, the project.
async fn folder_project(file: &str, workflow: &str) -> Fixture {
    folder_project_on(None, file, workflow).await
}

/// [`folder_project`] on the store `database` names (`None`: SQLite in the data dir).
async fn folder_project_on(database: Option<&str>, file: &str, workflow: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join(".kiln/workflows")).unwrap();
    std::fs::write(src.join(".kiln/workflows").join(file), workflow).unwrap();
    let data = dir.path().join("data");
    let store = Store::open(database, &data).await.unwrap();
    let project = store
        .upsert_project("p", &src.to_string_lossy())
        .await
        .unwrap();
    (dir, data, store, project)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_expired_is_driven_on_by_the_server() {
    let (_dir, data, store, project) = folder_project("ci.yml", CI).await;
    let jobs = vec![
        new_job("a", &[], JobStatus::Queued),
        new_job("b", &["a"], JobStatus::Pending),
    ];
    let a = jobs[0].id;
    let run = create_run(&store, &project, jobs, None).await;
    // A `kiln run` that leased job a and died: its lease ran out long ago.
    let long_ago = Timestamp::now() - jiff::SignedDuration::from_secs(600);
    let granted = store
        .commit(vec![Op::GrantLease {
            job: a,
            owner: "kiln-run:dead".to_owned(),
            ttl_ms: 1_000,
            at: long_ago,
        }])
        .await
        .unwrap();
    assert!(matches!(granted[0], OpResult::Lease { .. }));

    let (engine, recovery) = Engine::start(store.clone(), engine_config(&data, 1))
        .await
        .unwrap();
    // Someone else's lease is not this engine's to take back at start-up.
    assert!(recovery.resumed.is_empty(), "{recovery:?}");
    assert_eq!(recovery.expired_leases, 0);

    engine.adopt_expired_every(Duration::from_millis(100));
    let done = ended(&store, run, "run not adopted").await;
    assert_eq!(done.status, RunStatus::Success, "{done:#?}");
    let a = done.jobs.iter().find(|j| j.key == "a").unwrap();
    assert_eq!(a.attempts, 2, "the dead holder's attempt counts: {a:#?}");
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A folder project holding `workflow` as `file`, and an engine of `slots` on its store.
async fn started(
    file: &str,
    workflow: &str,
    slots: usize,
) -> (tempfile::TempDir, Store, kiln_proto::Project, Engine) {
    let (dir, data, store, project) = folder_project(file, workflow).await;
    let (engine, _) = Engine::start(store.clone(), engine_config(&data, slots))
        .await
        .unwrap();
    (dir, store, project, engine)
}

/// `run` once it has ended (within 30 s, else the test fails saying `what`).
async fn ended(store: &Store, run: RunId, what: &str) -> kiln_proto::Run {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = store.get_run(run).await.unwrap().unwrap();
        if r.status.is_terminal() {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SEES_EVENT: &str = r#"on: pull_request
jobs:
  look:
    runs-on: x
    outputs:
      seen: ${{ steps.s.outputs.seen }}
    steps:
      - id: s
        run: |
          grep -q '"marker": *"from-the-hook"' "$GITHUB_EVENT_PATH"
          echo "seen=${{ github.event.marker }}/${{ github.head_ref }}/${{ github.actor }}" >> "$GITHUB_OUTPUT"
"#;

/// A webhook body as its sender laid it out: the same JSON as the trigger's payload.
const BODY: &str = "{ \"marker\": \"from-the-hook\",\n  \"number\": 7 }\n";

fn engine_config(data: &std::path::Path, slots: usize) -> EngineConfig {
    EngineConfig {
        slots,
        data_dir: data.to_owned(),
        max_attempts: 3,
        sandbox: crate::packages::Sandbox::off(),
        fetch_egress: None,
        lease_ttl: crate::dispatch::LEASE_TTL,
        artifacts: None,
    }
}

/// A pull request event as a GitHub webhook brings it: the body alone (parsed only when
/// something reads it), and the `github` fields its sender gave (`head_ref` feature-x,
/// `actor` octocat).
async fn trigger_pull_request(
    engine: &Engine,
    project: &kiln_proto::Project,
) -> Vec<kiln_proto::Run> {
    let mut github = Map::new();
    github.insert("head_ref".into(), "feature-x".into());
    github.insert("actor".into(), "octocat".into());
    engine
        .trigger_at(
            crate::TriggerRequest {
                project: project.id,
                workflow: None,
                event: "pull_request".to_owned(),
                git_ref: None,
                payload: None,
                // The body as a sender wrote it (a webhook's): stored as it is.
                payload_text: Some(kiln_store::PayloadText::of_json_text(BODY)),
                inputs: Default::default(),
            },
            crate::EventTarget {
                github,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

/// A run started by a webhook keeps its event across engines: one that never ran it stops,
/// the next drives it on, and its job sees the payload and the `github` fields the trigger
/// gave (not ones made up from the event name), in expressions and `GITHUB_EVENT_PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_driven_on_after_a_restart_sees_the_event_it_was_started_by() {
    let (_dir, data, store, project) = folder_project("pr.yml", SEES_EVENT).await;

    // No slots: the run waits, queued, for a worker that never comes.
    let (first, _) = Engine::start(store.clone(), engine_config(&data, 0))
        .await
        .unwrap();
    let runs = trigger_pull_request(&first, &project).await;
    assert_eq!(runs.len(), 1);
    let run = runs[0].id;
    first.shutdown(Duration::from_secs(5)).await.unwrap();
    let stored = store.run_context(run).await.unwrap().unwrap();
    // As it came (read back, JSON ends at its last brace).
    assert_eq!(stored.payload.as_ref().unwrap().as_str(), BODY.trim_end());
    assert_eq!(stored.payload.as_ref().unwrap().parse()["number"], 7);
    assert_eq!(stored.github["head_ref"], "feature-x");

    let (second, recovery) = Engine::start(store.clone(), engine_config(&data, 1))
        .await
        .unwrap();
    assert_eq!(recovery.resumed, vec![run], "{recovery:?}");
    let done = ended(&store, run, "run not driven on").await;
    assert_eq!(done.status, RunStatus::Success, "{done:#?}");
    assert_eq!(
        done.jobs[0].outputs.get("seen").and_then(|v| v.as_str()),
        Some("from-the-hook/feature-x/octocat"),
        "{done:#?}"
    );
    second.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A job decided after its run's first turn reads what the run keeps packed meanwhile.
const LATER_JOB_SEES_EVENT: &str = r#"on: pull_request
jobs:
  first:
    if: github.event.number == 7
    runs-on: x
    steps:
      - run: "true"
  later:
    needs: first
    if: github.event.number == 7 && github.head_ref == 'feature-x'
    runs-on: x
    outputs:
      seen: ${{ steps.s.outputs.seen }}
    steps:
      - id: s
        run: |
          grep -q '"marker": *"from-the-hook"' "$GITHUB_EVENT_PATH"
          echo "seen=${{ github.event.marker }}/${{ github.actor }}/${{ github.run_number }}/${{ github.event_name }}" >> "$GITHUB_OUTPUT"
"#;

/// A run's payload and shared contexts are packed once its first jobs are decided (a queue
/// of webhook runs would hold kilobytes each otherwise): a job decided and started after
/// that sees them whole, in its `if`, its expressions and `GITHUB_EVENT_PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_decided_after_the_runs_first_turn_sees_the_event_and_contexts() {
    let (_dir, store, project, engine) = started("pr.yml", LATER_JOB_SEES_EVENT, 1).await;
    // The body alone: parsed for planning (`first`'s `if` reads the event), then packed.
    let runs = trigger_pull_request(&engine, &project).await;
    let done = ended(&store, runs[0].id, "run not done").await;
    assert_eq!(done.status, RunStatus::Success, "{done:#?}");
    let first = done.jobs.iter().find(|j| j.key == "first").unwrap();
    assert_eq!(first.status, JobStatus::Success, "{done:#?}");
    let later = done.jobs.iter().find(|j| j.key == "later").unwrap();
    assert_eq!(later.status, JobStatus::Success, "{done:#?}");
    assert_eq!(
        later.outputs.get("seen").and_then(|v| v.as_str()),
        Some(format!("from-the-hook/octocat/{}/pull_request", done.run_number).as_str()),
        "{done:#?}"
    );
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Jobs of every kind of first decision: `a` needs nothing (queued as it is made), `b`
/// needs it, `c` decides on an `if`, `m`'s two instances go one at a time.
const FIRST_DECISIONS: &str = r#"on: pull_request
jobs:
  a:
    runs-on: x
    steps: [{run: 'true'}]
  b:
    needs: a
    runs-on: x
    steps: [{run: 'true'}]
  c:
    if: github.event_name == 'pull_request'
    runs-on: x
    steps: [{run: 'true'}]
  m:
    runs-on: x
    strategy:
      max-parallel: 1
      matrix:
        n: [1, 2]
    steps: [{run: 'true'}]
"#;

/// A job that needs nothing, with no `if` and no `max-parallel`, is recorded queued with
/// its run, in the same transaction; the others are recorded pending and decided by the
/// run's first turn, as before. Either way each queued job has one `job.queued` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_needs_nothing_is_queued_with_its_run() {
    let (_dir, store, project, engine) = started("pr.yml", FIRST_DECISIONS, 0).await;
    let runs = trigger_pull_request(&engine, &project).await;
    let statuses = |r: &kiln_proto::Run, key: &str| -> Vec<JobStatus> {
        r.jobs
            .iter()
            .filter(|j| j.key == key)
            .map(|j| j.status)
            .collect()
    };
    let created = &runs[0];
    assert_eq!(statuses(created, "a"), [JobStatus::Queued], "{created:#?}");
    assert_eq!(statuses(created, "b"), [JobStatus::Pending], "{created:#?}");
    assert_eq!(statuses(created, "c"), [JobStatus::Pending], "{created:#?}");
    assert_eq!(
        statuses(created, "m"),
        [JobStatus::Pending; 2],
        "{created:#?}"
    );

    // The first turn queues `c` and both of `m`'s (one held back); `b` waits for `a`, which
    // waits for a worker (the engine has no slots).
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let r = store.get_run(created.id).await.unwrap().unwrap();
        if statuses(&r, "c") == [JobStatus::Queued] {
            break r;
        }
        assert!(Instant::now() < deadline, "c never queued: {r:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(statuses(&run, "a"), [JobStatus::Queued], "{run:#?}");
    assert_eq!(statuses(&run, "b"), [JobStatus::Pending], "{run:#?}");
    assert_eq!(statuses(&run, "m"), [JobStatus::Queued; 2], "{run:#?}");
    let events = store.events_after(0, 1000).await.unwrap();
    let mut queued: Vec<JobId> = events
        .iter()
        .filter(|e| e.kind == "job.queued" && e.run == Some(run.id))
        .filter_map(|e| e.job)
        .collect();
    queued.sort();
    let mut want: Vec<JobId> = run
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Queued)
        .map(|j| j.id)
        .collect();
    want.sort();
    assert_eq!(queued, want, "one job.queued per queued job: {events:#?}");
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A run waiting for a worker stays claimed by its engine for as long as the engine lives:
/// with a lease of 2 s (renewed every half second, each claim when it is one to two periods
/// old), another replica looking for runs whose driver stopped renewing finds none over
/// twice the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_stays_claimed_past_its_lease_while_its_engine_lives() {
    let (_dir, data, store, project) = folder_project("pr.yml", FIRST_DECISIONS).await;
    let config = EngineConfig {
        lease_ttl: Duration::from_secs(2),
        ..engine_config(&data, 0)
    };
    let (engine, _) = Engine::start(store.clone(), config).await.unwrap();
    let runs = trigger_pull_request(&engine, &project).await;
    let until = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < until {
        let now = Timestamp::now();
        let taken = store
            .claim_runs(
                "replica:other",
                now + jiff::SignedDuration::from_secs(600),
                now,
            )
            .await
            .unwrap();
        assert!(taken.is_empty(), "the engine's claim lapsed: {taken:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = store.get_run(runs[0].id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Queued, "{run:#?}");
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

const ONE: &str = "on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n";

/// A job of the workflow's key `key` (its one instance) with `needs`, stored as `status`.
fn new_job(key: &str, needs: &[&str], status: JobStatus) -> NewJob {
    NewJob {
        id: JobId::new(),
        key: key.to_owned(),
        name: key.to_owned(),
        matrix: Map::new(),
        needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        status,
        max_attempts: 3,
        labels: Vec::new(),
    }
}

/// A queued push run of `.kiln/workflows/ci.yml` holding `jobs`, driven by `driver`.
async fn create_run(
    store: &Store,
    project: &kiln_proto::Project,
    jobs: Vec<NewJob>,
    driver: Option<Driver>,
) -> RunId {
    store
        .create_run(NewRun {
            id: RunId::new(),
            project: project.id,
            workflow: ".kiln/workflows/ci.yml".to_owned(),
            workflow_name: "ci".to_owned(),
            event: "push".to_owned(),
            git_ref: "refs/heads/main".to_owned(),
            sha: "0".repeat(40),
            inputs: Map::new(),
            status: RunStatus::Queued,
            jobs,
            at: Timestamp::now(),
            driver,
            context: Default::default(),
        })
        .await
        .unwrap()
        .id
}

/// A queued run of `ONE` (job `a`) that another replica claims to drive for ten minutes, so
/// that the engine under test leaves it alone until told to drive it: the run and job `a`.
async fn run_driven_elsewhere(store: &Store, project: &kiln_proto::Project) -> (RunId, JobId) {
    let job = new_job("a", &[], JobStatus::Queued);
    let a = job.id;
    let driver = Driver {
        owner: "replica:elsewhere".to_owned(),
        until: Timestamp::now() + jiff::SignedDuration::from_secs(600),
    };
    (create_run(store, project, vec![job], Some(driver)).await, a)
}

/// The engine takes `run` over from a view of the store in which a worker held job `a` (it
/// has given the job back since): what a replica reads when a worker's claim races its
/// take-over.
async fn drive_from_a_stale_view(engine: &Engine, store: &Store, run: RunId, a: JobId) {
    let mut seen = store.get_run(run).await.unwrap().unwrap();
    let job = seen.jobs.iter_mut().find(|j| j.id == a).unwrap();
    job.status = JobStatus::Leased;
    job.attempts = 1;
    engine.resume(seen).await.unwrap();
}

/// A worker that claims a job the engine last saw leased by someone else (the take-over's
/// stale view) is given it. Refused, the job went back to the queue, was claimed again, was
/// refused again, for ever: the oldest job of the queue, it held every claim of one job up,
/// and a replica that took a run over stalled with hundreds of jobs queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_engine_last_saw_held_is_given_to_the_worker_that_claims_it() {
    let (_dir, data, store, project) = folder_project("ci.yml", ONE).await;
    let (run, a) = run_driven_elsewhere(&store, &project).await;
    let (engine, _) = Engine::start(store.clone(), engine_config(&data, 0))
        .await
        .unwrap();
    drive_from_a_stale_view(&engine, &store, run, a).await;

    let granted = store
        .commit(vec![Op::GrantLease {
            job: a,
            owner: "worker:w2".to_owned(),
            ttl_ms: 60_000,
            at: Timestamp::now(),
        }])
        .await
        .unwrap();
    let OpResult::Lease { token } = granted[0] else {
        panic!("not granted: {granted:?}");
    };
    let assigned = engine.adopt_remote("worker:w2", a, token).await.unwrap();
    let assigned = assigned.expect("the claim is adopted, not refused");
    assert_eq!((assigned.job, assigned.token), (a, token));
    let lease = store.lease_of(a).await.unwrap().unwrap();
    assert_eq!(lease.owner.as_deref(), Some("worker:w2"));
    assert_eq!(lease.status, JobStatus::Leased);
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// On a store replicas share, a job the engine last saw leased by someone else, and which is
/// queued in the store, is found at the next lease check and run by the engine's own pool
/// (no worker need claim it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_engine_last_saw_held_but_queued_again_runs() {
    let schema = kiln_testkit::pg::Schema::new();
    let url = schema.url();
    let (_dir, data, store, project) = folder_project_on(Some(&url), "ci.yml", ONE).await;
    assert!(store.is_shared());
    let (run, a) = run_driven_elsewhere(&store, &project).await;
    let mut config = engine_config(&data, 1);
    config.lease_ttl = Duration::from_secs(2);
    let (engine, _) = Engine::start(store.clone(), config).await.unwrap();
    drive_from_a_stale_view(&engine, &store, run, a).await;

    let done = ended(&store, run, "job a never ran").await;
    assert_eq!(done.status, RunStatus::Success, "{done:#?}");
    assert_eq!(done.jobs[0].attempts, 1, "{done:#?}");
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

const DECIDES_ON_EVENT: &str = r#"on: push
jobs:
  first:
    runs-on: x
    steps: [{run: 'true'}]
  wanted:
    needs: first
    if: ${{ GitHub.event.head_commit.message == 'a change' }}
    name: for ${{ github.event.pusher.name }}
    runs-on: [x]
    steps: [{run: 'true'}]
  unwanted:
    needs: first
    if: github.event.head_commit.message != 'a change'
    runs-on: x
    steps: [{run: 'true'}]
  plain:
    needs: first
    runs-on: x
    strategy:
      matrix:
        n: [1, 2]
    steps: [{run: 'true'}]
"#;

/// A job decided after its needs (its `if`, name, labels and matrix evaluated then) reads
/// the event when its fields name `github` in any case; the others are decided without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_decided_after_their_needs_read_the_event_their_fields_name() {
    let (_dir, store, project, engine) = started("push.yml", DECIDES_ON_EVENT, 2).await;
    let runs = engine
        .trigger_at(
            crate::TriggerRequest {
                project: project.id,
                workflow: None,
                event: "push".to_owned(),
                git_ref: None,
                payload: Some(serde_json::json!({
                    "head_commit": {"message": "a change"},
                    "pusher": {"name": "octocat"},
                })),
                payload_text: None,
                inputs: Default::default(),
            },
            crate::EventTarget::default(),
        )
        .await
        .unwrap();
    let done = ended(&store, runs[0].id, "run did not end").await;
    assert_eq!(done.status, RunStatus::Success, "{done:#?}");
    let by_key = |key: &str| -> Vec<(String, JobStatus)> {
        done.jobs
            .iter()
            .filter(|j| j.key == key)
            .map(|j| (j.name.clone(), j.status))
            .collect()
    };
    assert_eq!(
        by_key("wanted"),
        vec![("for octocat".to_owned(), JobStatus::Success)]
    );
    assert_eq!(
        by_key("unwanted"),
        vec![("unwanted".to_owned(), JobStatus::Skipped)]
    );
    assert_eq!(by_key("plain").len(), 2, "{done:#?}");
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}
