//! `uses:`: the built-in checkout, local composite actions, and what is refused.

use kiln_core::ids::{JobStatus, StepStatus};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn checkout_is_a_no_op_and_remote_actions_are_refused() {
    let ran = Harness::new(vec![
        uses("actions/checkout@v4", &[]),
        uses("someone/something@v1", &[]),
    ])
    .run()
    .await;
    assert_eq!(ran.statuses(), [StepStatus::Success, StepStatus::Failure]);
    assert!(ran.log(0).contains("nothing to check out"));
    let err = ran.outcome.error.unwrap_or_default();
    assert!(
        err.contains("someone/something@v1") && err.contains("run:"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_local_action_names_its_path() {
    let ran = Harness::new(vec![uses("./nowhere", &[])]).run().await;
    assert_eq!(ran.outcome.status, JobStatus::Failure);
    let err = ran.outcome.error.unwrap_or_default();
    assert!(
        err.contains("./nowhere") && err.contains("action.yml"),
        "{err}"
    );
}

#[tokio::test]
async fn composite_action_with_inputs_outputs_and_nesting() {
    let h = Harness::new(vec![
        with_id(
            with_env(
                uses("./.kiln/actions/greet", &[("who", "${{ env.WHO }}")]),
                &[("WHO", "world")],
            ),
            "greet",
        ),
        run(
            "echo \"result=${{ steps.greet.outputs.greeting }} inner=${{ steps.inner.outputs.x }}\"",
        ),
    ]);
    h.file(
        ".kiln/actions/greet/action.yml",
        r#"name: Greet
inputs:
  who:
    description: whom to greet
    required: true
  punctuation:
    default: "!"
outputs:
  greeting:
    value: ${{ steps.say.outputs.text }}
  nested:
    value: ${{ steps.deeper.outputs.shout }}
runs:
  using: composite
  steps:
    - id: say
      shell: bash
      run: |
        echo "hello ${{ inputs.who }}${{ inputs.punctuation }}"
        echo "text=hello ${{ inputs.who }}${{ inputs.punctuation }}" >> "$GITHUB_OUTPUT"
    - id: deeper
      uses: ./.kiln/actions/shout
      with:
        word: ${{ steps.say.outputs.text }}
"#,
    );
    h.file(
        ".kiln/actions/shout/action.yaml",
        r#"name: Shout
inputs:
  word: {}
outputs:
  shout:
    value: ${{ steps.up.outputs.v }}
runs:
  using: composite
  steps:
    - id: up
      shell: sh
      run: echo "v=$(echo '${{ inputs.word }}' | tr a-z A-Z)" >> "$GITHUB_OUTPUT"
"#,
    );
    let ran = h.run().await;
    assert_eq!(
        ran.outcome.status,
        JobStatus::Success,
        "{:?} {}",
        ran.outcome,
        ran.all_logs()
    );
    assert!(ran.log(0).contains("hello world!"), "{}", ran.log(0));
    let out = ran.outputs(0);
    assert_eq!(out.get("greeting"), Some(&json!("hello world!")));
    assert_eq!(out.get("nested"), Some(&json!("HELLO WORLD!")));
    // The action's inner steps are not the job's.
    assert!(
        ran.log(1).contains("result=hello world! inner=\n"),
        "{}",
        ran.log(1)
    );
}

#[tokio::test]
async fn a_failing_step_inside_a_composite_action_fails_the_calling_step() {
    let h = Harness::new(vec![uses("./act", &[]), run("echo skipped")]);
    h.file(
        "act/action.yml",
        "name: Fails\nruns:\n  using: composite\n  steps:\n    - run: exit 7\n      shell: bash\n    - run: echo after-fail\n      shell: bash\n",
    );
    let ran = h.run().await;
    assert_eq!(ran.statuses(), [StepStatus::Failure, StepStatus::Skipped]);
    assert!(!ran.log(0).contains("after-fail"), "{}", ran.log(0));
}
