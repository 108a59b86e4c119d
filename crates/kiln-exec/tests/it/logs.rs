//! Masking in the logs of real steps.

use kiln_core::ids::JobStatus;

use crate::common::*;

#[tokio::test]
async fn secrets_and_add_mask_values_never_reach_the_log() {
    let mut h = Harness::new(vec![
        run(
            "echo \"password is s3cr3t-value\"\necho 'partial: s3cr3t' >&2\n\
             echo '::add-mask::tok-98765'\necho \"token tok-98765 here\"",
        ),
        run("printf 'no newline tok-98765'"),
    ]);
    h.masks = vec!["s3cr3t-value".into(), String::new()];
    let ran = h.run().await;
    assert_eq!(ran.outcome.status, JobStatus::Success);
    let log = ran.log(0);
    assert!(log.contains("password is ***\n"), "{log}");
    assert!(log.contains("partial: s3cr3t\n"), "{log}");
    assert!(log.contains("token *** here"), "{log}");
    assert!(!log.contains("add-mask"), "{log}");
    // Masks registered by one step apply to the later ones; a last partial line is flushed.
    assert_eq!(ran.log(1), "no newline ***");
}
