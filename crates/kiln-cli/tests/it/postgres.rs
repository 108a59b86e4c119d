//! `kiln run --database postgres://…`: the same run recorded in PostgreSQL (127.0.0.1:5432,
//! trust auth, database `test`), each test in a schema of its own.

use kiln_testkit::Project;
pub(crate) use kiln_testkit::pg::{Schema, psql};

use crate::{bin, job};

#[test]
fn a_run_is_recorded_in_postgres() {
    let schema = Schema::new();
    let p = Project::new().workflow(
        "ci.yml",
        r#"
on: push
jobs:
  a:
    runs-on: x
    outputs:
      v: ${{ steps.s.outputs.v }}
    steps:
      - id: s
        run: echo "v=from-a" >> "$GITHUB_OUTPUT"
  b:
    needs: a
    runs-on: x
    strategy:
      matrix:
        n: [1, 2]
    steps:
      - run: echo "b${{ matrix.n }} got ${{ needs.a.outputs.v }}"
"#,
    );
    let out = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--format", "json", "--database", &schema.url()])
        .with_data_dir()
        .output();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let run = out.json();
    assert_eq!(run["status"], "success");
    assert_eq!(job(&run, "b (2)")["status"], "success");

    let runs = p
        .kiln(bin())
        .args(["runs", "--format", "json", "--database", &schema.url()])
        .with_data_dir()
        .output();
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    assert_eq!(runs.json()["runs"][0]["id"], run["id"]);

    let logs = p
        .kiln(bin())
        .args([
            "logs",
            run["id"].as_str().unwrap(),
            "b (1)",
            "--database",
            &schema.url(),
        ])
        .with_data_dir()
        .output();
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(logs.stdout.contains("b1 got from-a"), "{}", logs.stdout);
}

#[test]
fn an_unreachable_database_exits_3() {
    let p = Project::new().workflow(
        "ci.yml",
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: true\n",
    );
    let out = p
        .kiln(bin())
        .args(["run"])
        .args([p.root()])
        .args(["--database", "postgres://postgres@127.0.0.1:1/none"])
        .with_data_dir()
        .output();
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("store"), "{}", out.stderr);
}

/// A server on PostgreSQL keeps webhook secrets sealed under a key its replicas share: with
/// no key it refuses to start (exit 2, saying how to give one), a malformed key likewise;
/// with one, a project's hook secret is shown once and stored sealed.
#[test]
fn serve_on_postgres_needs_a_shared_secrets_key_and_seals_hook_secrets() {
    let schema = Schema::new();
    let p = Project::new();
    let url = schema.url();
    let serve = |key: Option<&str>| {
        let mut k = p
            .kiln(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--database", &url])
            .args(["--egress-allow-local-paths"])
            .with_data_dir();
        if let Some(key) = key {
            k = k.env("KILN__SECRETS__KEY", key);
        }
        k
    };
    let out = serve(None).output();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("KILN__SECRETS__KEY"), "{}", out.stderr);
    assert!(out.stderr.contains("every replica"), "{}", out.stderr);
    assert!(!out.stdout.contains("listening"), "{}", out.stdout);

    let out = serve(Some("not-a-key")).output();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("KILN__SECRETS__KEY: the key of version 1 is not 64 hex digits"),
        "{}",
        out.stderr
    );

    let key = "ab".repeat(32);
    let mut cmd = serve(Some(&key)).command();
    for var in ["KILN_SERVER", "KILN_TOKEN", "KILN_ADMIN_TOKEN"] {
        cmd.env_remove(var);
    }
    let served = crate::serve::Served::from_command(&mut cmd);
    let admin = served
        .admin()
        .expect("the first start prints the admin token");
    let src = p.root().to_str().unwrap().to_owned();
    let out = served.call(
        &p,
        &admin,
        &[
            "project",
            "add",
            &src,
            "--provider",
            "github",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let added: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let secret = added["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64, "{added}");
    let stored = psql(&format!(
        "SELECT hook_secret FROM {}.projects WHERE id = '{}'",
        schema.name,
        added["id"].as_str().unwrap()
    ));
    let stored = String::from_utf8_lossy(&stored.stdout).into_owned();
    assert!(stored.contains("sealed:01"), "{stored}");
    assert!(
        !stored.contains(&secret),
        "the secret is stored in the clear: {stored}"
    );
    drop(served);
}
