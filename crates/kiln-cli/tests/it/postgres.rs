//! `kiln run --database postgres://…`: the same run recorded in PostgreSQL (127.0.0.1:5432,
//! trust auth, database `test`), each test in a schema of its own.

use kiln_testkit::Project;

use crate::{bin, job};

struct Schema {
    name: String,
}

fn psql(sql: &str) -> std::process::Output {
    std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql")
}

impl Schema {
    fn new() -> Self {
        let name = format!("cli_{}", uuid::Uuid::new_v4().simple());
        let out = psql(&format!("CREATE SCHEMA {name}"));
        assert!(
            out.status.success(),
            "PostgreSQL must run on 127.0.0.1:5432: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:5432/test?schema={}",
            self.name
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(&format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

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
