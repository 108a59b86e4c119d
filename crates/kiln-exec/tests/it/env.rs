//! Environment files, env layering and what steps may see.

use kiln_core::ids::{JobStatus, StepStatus};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn outputs_in_both_forms_become_step_and_job_outputs() {
    let mut h = Harness::new(vec![
        with_id(
            run("echo 'simple=one' >> \"$GITHUB_OUTPUT\"\n\
                 { echo 'multi<<EOF'; echo 'line 1'; echo 'line 2'; echo 'EOF'; } >> \"$GITHUB_OUTPUT\"\n\
                 echo 'viakiln=yes' >> \"$KILN_OUTPUT\""),
            "produce",
        ),
        run("echo \"got ${{ steps.produce.outputs.simple }}\""),
    ]);
    h.job.outputs = map(&[
        ("simple", "${{ steps.produce.outputs.simple }}"),
        ("multi", "${{ steps.produce.outputs.multi }}"),
    ]);
    let ran = h.run().await;
    assert_eq!(ran.outcome.status, JobStatus::Success);
    let out = ran.outputs(0);
    assert_eq!(out.get("simple"), Some(&json!("one")));
    assert_eq!(out.get("multi"), Some(&json!("line 1\nline 2")));
    assert_eq!(out.get("viakiln"), Some(&json!("yes")));
    assert!(ran.log(1).contains("got one"));
    assert_eq!(
        ran.outcome.outputs.get("multi"),
        Some(&json!("line 1\nline 2"))
    );
}

#[tokio::test]
async fn a_heredoc_without_its_delimiter_fails_the_step() {
    let ran = Harness::new(vec![
        run("printf 'x<<EOF\\nvalue\\n' >> \"$GITHUB_OUTPUT\""),
        run("echo not-reached"),
    ])
    .run()
    .await;
    assert_eq!(ran.statuses(), [StepStatus::Failure, StepStatus::Skipped]);
    let err = ran.outcome.error.unwrap_or_default();
    assert!(
        err.contains("GITHUB_OUTPUT") && err.contains("EOF"),
        "{err}"
    );
}

#[tokio::test]
async fn github_env_and_path_reach_later_steps() {
    let ran = Harness::new(vec![
        run("echo 'FROM_FILE=hello' >> \"$GITHUB_ENV\"\n\
             mkdir -p \"$RUNNER_TEMP/bin\"\n\
             printf '#!/bin/sh\\necho tool-ran\\n' > \"$RUNNER_TEMP/bin/kiln-test-tool\"\n\
             chmod +x \"$RUNNER_TEMP/bin/kiln-test-tool\"\n\
             echo \"$RUNNER_TEMP/bin\" >> \"$GITHUB_PATH\"\n\
             echo \"same-step=${FROM_FILE:-unset}\""),
        run("echo \"later=$FROM_FILE ctx=${{ env.FROM_FILE }}\"\nkiln-test-tool"),
    ])
    .run()
    .await;
    assert_eq!(ran.outcome.status, JobStatus::Success, "{}", ran.all_logs());
    assert!(ran.log(0).contains("same-step=unset"));
    assert!(
        ran.log(1).contains("later=hello ctx=hello"),
        "{}",
        ran.log(1)
    );
    assert!(ran.log(1).contains("tool-ran"));
}

#[tokio::test]
async fn env_precedence_workflow_job_file_step() {
    let mut h = Harness::new(vec![
        run("echo \"1: $A $B $C $D\""),
        run("echo 'B=file' >> \"$GITHUB_ENV\"\necho 'D=file' >> \"$GITHUB_ENV\""),
        with_env(
            run("echo \"3: $A $B $C $D ${{ env.D }}\""),
            &[("D", "step"), ("E", "${{ env.A }}-e")],
        ),
        run("echo \"4: $B $D ${E:-none}\""),
    ]);
    h.workflow_env = map(&[("A", "wf"), ("B", "wf"), ("C", "wf")]);
    h.job.env = map(&[("B", "job"), ("C", "${{ env.A }}-job")]);
    let ran = h.run().await;
    assert_eq!(ran.outcome.status, JobStatus::Success, "{}", ran.all_logs());
    assert!(ran.log(0).contains("1: wf job wf-job \n"), "{}", ran.log(0));
    assert!(
        ran.log(2).contains("3: wf file wf-job step step"),
        "{}",
        ran.log(2)
    );
    assert!(ran.log(3).contains("4: file file none"), "{}", ran.log(3));
}

#[tokio::test]
async fn steps_see_runner_variables_but_no_kiln_client_variables() {
    // Each nextest test is its own process, so changing the environment here affects no
    // other test.
    set_env("KILN_TOKEN", "client-secret");
    let ran = Harness::new(vec![with_id(
        run("echo \"token=${KILN_TOKEN:-absent} ci=$CI action=$GITHUB_ACTION\"\n\
             test -d \"$GITHUB_WORKSPACE\" && test -d \"$RUNNER_TEMP\" && echo summary >> \"$GITHUB_STEP_SUMMARY\"\n\
             test -n \"$HOME\" && test -n \"$PATH\"\n\
             test \"$KILN_OUTPUT\" = \"$GITHUB_OUTPUT\"\n\
             test -f \"$KILN_ARTIFACT_METADATA\"\n\
             env | grep '^KILN_' | grep -v '^KILN_OUTPUT=' | grep -v '^KILN_ARTIFACT_METADATA=' && exit 1 || true"),
        "probe",
    )])
    .run()
    .await;
    assert_eq!(ran.outcome.status, JobStatus::Success, "{}", ran.all_logs());
    assert!(
        ran.log(0).contains("token=absent ci=true action=probe"),
        "{}",
        ran.log(0)
    );
}

#[expect(
    unsafe_code,
    reason = "set_var is unsafe with other threads; nextest runs each test in its own process"
)]
fn set_env(k: &str, v: &str) {
    unsafe { std::env::set_var(k, v) };
}

#[tokio::test]
async fn hash_files_reads_the_workspace() {
    use sha2::{Digest, Sha256};
    let h = Harness::new(vec![run("echo \"hash=${{ hashFiles('**/*.lock') }}\"")]);
    h.file("a/x.lock", "x");
    h.file("b.lock", "b");
    h.file("c.txt", "c");
    let mut total = Sha256::new();
    // Sorted: a/x.lock, b.lock.
    total.update(Sha256::digest(b"x"));
    total.update(Sha256::digest(b"b"));
    let want = hex::encode(total.finalize());
    let ran = h.run().await;
    assert!(
        ran.log(0).contains(&format!("hash={want}")),
        "{}",
        ran.log(0)
    );
}
