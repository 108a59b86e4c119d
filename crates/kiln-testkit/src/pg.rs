//! PostgreSQL for tests: a schema of a test's own on the shared server (127.0.0.1:5432,
//! trust auth, database `test`), and a cluster of a test's own for tests that stop and start
//! the database (never the shared server other tests use): `initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/*/bin` run as the `postgres` user, in a temporary folder, on a free
//! port. Stopped on drop.

use std::path::PathBuf;
use std::process::Command;

/// `psql -c sql` on the shared server's database `test`, as `postgres`.
pub fn psql(sql: &str) -> std::process::Output {
    Command::new("psql")
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

/// A schema of its own on the shared server, dropped (with everything in it) on drop.
pub struct Schema {
    pub name: String,
}

impl Default for Schema {
    fn default() -> Self {
        Self::new()
    }
}

impl Schema {
    /// A new schema with a unique name.
    pub fn new() -> Self {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let out = psql(&format!("CREATE SCHEMA {name}"));
        assert!(
            out.status.success(),
            "PostgreSQL must run on 127.0.0.1:5432: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    /// The URL of the database `test` with this schema (`?schema=`, as kiln takes it).
    pub fn url(&self) -> String {
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

/// A running private cluster with trust authentication.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn as_postgres(program: &std::path::Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

impl PrivatePostgres {
    /// `initdb` and start.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries in /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::Builder::new()
            .prefix("kiln-pg-")
            .tempdir()
            .expect("a temporary folder");
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown the cluster's folder to postgres");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let out = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self { dir, bin, port };
        pg.pg_ctl_start();
        pg
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the cluster (`fast`: every connection is cut).
    pub fn stop(&self) {
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it again after [`PrivatePostgres::stop`].
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}
