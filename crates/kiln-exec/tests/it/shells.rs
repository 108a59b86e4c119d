//! Which command runs a script: the default shell, `shell:` keywords, custom templates.

use kiln_core::ids::{JobStatus, StepStatus};

use crate::common::*;

#[tokio::test]
async fn default_shell_stops_at_the_first_failing_command() {
    let ran = Harness::new(vec![run("echo before\nfalse\necho after")])
        .run()
        .await;
    assert_eq!(ran.statuses(), [StepStatus::Failure]);
    assert_eq!(ran.outcome.status, JobStatus::Failure);
    let log = ran.log(0);
    assert!(log.contains("before"), "{log}");
    assert!(!log.contains("after"), "{log}");
    assert!(log.contains("exit code 1"), "{log}");
    // An exit code is not an error of kiln's.
    assert_eq!(ran.outcome.error, None);
}

#[tokio::test]
async fn default_shell_has_no_pipefail_but_bash_keyword_has() {
    let ran = Harness::new(vec![
        run("false | true\necho default-ok"),
        with_if(
            with_shell(run("false | true\necho bash-ok"), "bash"),
            "always()",
        ),
    ])
    .run()
    .await;
    assert_eq!(ran.statuses(), [StepStatus::Success, StepStatus::Failure]);
    assert!(ran.log(0).contains("default-ok"));
    assert!(!ran.log(1).contains("bash-ok"));
}

#[tokio::test]
async fn sh_python_and_custom_templates() {
    let ran = Harness::new(vec![
        with_shell(run("echo \"script=$0\"\nfalse\necho after"), "sh"),
        with_if(
            with_shell(
                run("import sys\nprint('py', sys.version_info[0])"),
                "python",
            ),
            "always()",
        ),
        with_if(with_shell(run("echo traced"), "bash -x {0}"), "always()"),
        with_if(with_shell(run("echo appended"), "bash -x"), "always()"),
        with_if(with_shell(run("echo never"), "pwsh"), "always()"),
    ])
    .run()
    .await;
    assert_eq!(
        ran.statuses(),
        [
            StepStatus::Failure,
            StepStatus::Success,
            StepStatus::Success,
            StepStatus::Success,
            StepStatus::Failure
        ]
    );
    let sh = ran.log(0);
    assert!(sh.contains("script=") && sh.contains(".sh"), "{sh}");
    assert!(!sh.contains("after"), "{sh}");
    assert!(ran.log(1).contains("py 3"), "{}", ran.log(1));
    // `-x` traces to stderr: both streams reach the log.
    assert!(ran.log(2).contains("+ echo traced"), "{}", ran.log(2));
    assert!(ran.log(3).contains("+ echo appended"), "{}", ran.log(3));
    let err = ran.outcome.error.as_deref().unwrap_or_default();
    assert!(
        err.contains("pwsh") && err.contains("not supported"),
        "{err}"
    );
}

#[tokio::test]
async fn defaults_choose_shell_and_working_directory() {
    let mut h = Harness::new(vec![
        run("echo \"pwd=$(pwd)\"\nfalse | true"),
        with_if(
            {
                let mut s = run("echo \"pwd=$(pwd)\"");
                s.working_directory = Some("sub/deeper".into());
                s
            },
            "always()",
        ),
        with_if(
            {
                let mut s = run("true");
                s.working_directory = Some("missing".into());
                s
            },
            "always()",
        ),
    ]);
    std::fs::create_dir_all(h.workspace().join("sub/deeper")).unwrap();
    h.job.defaults.working_directory = Some("sub".into());
    h.workflow_defaults.shell = Some("bash".into());
    let ws = h.workspace().canonicalize().unwrap();
    let ran = h.run().await;
    // `shell: bash` from the workflow defaults: pipefail makes the first step fail.
    assert_eq!(
        ran.statuses(),
        [
            StepStatus::Failure,
            StepStatus::Success,
            StepStatus::Failure
        ]
    );
    assert!(
        ran.log(0).contains(&format!("pwd={}/sub\n", ws.display())),
        "{}",
        ran.log(0)
    );
    assert!(
        ran.log(1)
            .contains(&format!("pwd={}/sub/deeper\n", ws.display()))
    );
    assert!(ran.log(2).contains("missing"), "{}", ran.log(2));
}
