//! `if:`, continue-on-error, timeouts and cancellation.

use std::time::{Duration, Instant};

use kiln_core::ids::{JobStatus, StepStatus};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn after_a_failure_only_failure_and_always_steps_run() {
    let ran = Harness::new(vec![
        run("exit 3"),
        run("echo normal"),
        with_if(run("echo on-failure"), "failure()"),
        with_if(run("echo always"), "${{ always() }}"),
        with_if(run("echo on-success"), "success()"),
    ])
    .run()
    .await;
    assert_eq!(
        ran.statuses(),
        [
            StepStatus::Failure,
            StepStatus::Skipped,
            StepStatus::Success,
            StepStatus::Success,
            StepStatus::Skipped
        ]
    );
    assert!(ran.log(0).contains("exit code 3"));
    assert!(ran.log(2).contains("on-failure"));
    assert_eq!(ran.outcome.status, JobStatus::Failure);
    // Skipped steps are reported finished without having started.
    let started = ran
        .events
        .iter()
        .filter(|e| matches!(e, kiln_exec::ExecEvent::StepStarted { .. }))
        .count();
    assert_eq!(started, 3);
}

#[tokio::test]
async fn continue_on_error_keeps_the_job_going() {
    let ran = Harness::new(vec![
        {
            let mut s = with_id(run("exit 1"), "flaky");
            s.continue_on_error = Some(json!(true));
            s
        },
        run("echo \"seen ${{ steps.flaky.outcome }}/${{ steps.flaky.conclusion }}\""),
    ])
    .run()
    .await;
    assert_eq!(ran.statuses(), [StepStatus::Failure, StepStatus::Success]);
    assert!(
        ran.log(1).contains("seen failure/success"),
        "{}",
        ran.log(1)
    );
    assert_eq!(ran.outcome.status, JobStatus::Success);
}

#[tokio::test]
async fn job_continue_on_error_is_evaluated() {
    let mut h = Harness::new(vec![run("true")]);
    h.job.continue_on_error = Some(json!("${{ true }}"));
    assert!(h.run().await.outcome.continue_on_error);
}

#[tokio::test]
async fn a_timed_out_step_kills_grandchildren_holding_the_pipe() {
    let start = Instant::now();
    let mut step = run("bash -c 'sleep 3001 & sleep 3002'\necho not-reached");
    step.timeout_minutes = Some(json!(0.02));
    let ran = Harness::new(vec![
        step,
        with_if(run("echo cleanup"), "always()"),
        run("echo skipped"),
    ])
    .run()
    .await;
    let took = start.elapsed();
    assert_eq!(
        ran.statuses(),
        [
            StepStatus::TimedOut,
            StepStatus::Success,
            StepStatus::Skipped
        ]
    );
    assert_eq!(ran.outcome.status, JobStatus::TimedOut);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(gone(&["sleep", "3001"]).await, "sleep 3001 left running");
    assert!(gone(&["sleep", "3002"]).await, "sleep 3002 left running");
}

#[tokio::test]
async fn the_job_timeout_bounds_every_step() {
    let mut h = Harness::new(vec![run("sleep 3003"), run("echo after")]);
    h.job.timeout_minutes = Some(json!("0.02"));
    let ran = h.run().await;
    assert_eq!(ran.outcome.status, JobStatus::TimedOut);
    assert_eq!(ran.statuses(), [StepStatus::TimedOut, StepStatus::Skipped]);
    assert!(gone(&["sleep", "3003"]).await);
}

#[tokio::test]
async fn a_background_child_holding_output_does_not_hang_a_finished_step() {
    let start = Instant::now();
    let ran = Harness::new(vec![run("sleep 3004 &\necho started"), run("echo next")])
        .run()
        .await;
    assert_eq!(ran.statuses(), [StepStatus::Success, StepStatus::Success]);
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(gone(&["sleep", "3004"]).await, "sleep 3004 left running");
}

#[tokio::test]
async fn a_background_child_with_redirected_output_lives_until_the_job_ends() {
    let ran = Harness::new(vec![
        run("sleep 3005 >/dev/null 2>&1 &\necho $! > \"$RUNNER_TEMP/bg.pid\""),
        run("kill -0 \"$(cat \"$RUNNER_TEMP/bg.pid\")\" && echo still-alive"),
    ])
    .run()
    .await;
    assert_eq!(ran.statuses(), [StepStatus::Success, StepStatus::Success]);
    assert!(ran.log(1).contains("still-alive"));
    assert!(
        gone(&["sleep", "3005"]).await,
        "sleep 3005 outlived its job"
    );
}

#[tokio::test]
async fn cancel_stops_the_running_step_and_skips_the_rest() {
    let h = Harness::new(vec![
        run("echo running\nsleep 3006"),
        run("echo not-run"),
        with_if(run("echo cleanup"), "always()"),
        with_if(run("echo cancelled-step"), "cancelled()"),
    ]);
    let cancel = h.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cancel.cancel();
    });
    let ran = h.run().await;
    assert_eq!(
        ran.statuses(),
        [
            StepStatus::Cancelled,
            StepStatus::Skipped,
            StepStatus::Success,
            StepStatus::Success
        ]
    );
    assert_eq!(ran.outcome.status, JobStatus::Cancelled);
    assert!(ran.log(0).contains("running"));
    assert!(ran.log(2).contains("cleanup"));
    assert!(gone(&["sleep", "3006"]).await);
}

#[tokio::test]
async fn expression_errors_fail_the_step_and_name_it() {
    let mut step = run("echo ${{ bad }}");
    step.name = Some("Broken".into());
    let ran = Harness::new(vec![step]).run().await;
    assert_eq!(ran.statuses(), [StepStatus::Failure]);
    let err = ran.outcome.error.clone().unwrap_or_default();
    assert!(err.contains("Broken"), "{err}");
    assert!(ran.log(0).contains("Broken"));
}
