//! Flags of every command, and which code handles each.
//!
//! Environment variables the binary reads are declared here, once: `KILN_LOG` (log filter),
//! `KILN_DATA_DIR`, `KILN_DATABASE`; `KILN_SERVER` and `KILN_TOKEN` (the server a client
//! command talks to, and the API token it sends); `KILN_ADMIN_TOKEN` (`kiln serve`: the
//! first admin token of an empty store, instead of a random one it prints). Steps never see
//! any `KILN_*` variable of kiln's own process (kiln-exec strips them).
//!
//! `kiln serve`'s egress policy (what its own outbound connections, such as git fetches, may
//! reach), named as the configuration file will name them: `KILN__EGRESS__ALLOW` (host names,
//! `*.domain` wildcards, IP addresses and CIDRs, comma-separated; `--egress-allow`),
//! `KILN__EGRESS__ALLOW_LOOPBACK`, `KILN__EGRESS__ALLOW_PRIVATE` and
//! `KILN__EGRESS__ALLOW_LOCAL_PATHS` (`true`/`false`; the `--egress-allow-…` flags).
//!
//! `kiln serve`'s watch poller (declared with its flags in `watch.rs`):
//! `KILN__WATCH__GITHUB_URL`, `KILN__WATCH__PYPI_URL`, `KILN__WATCH__NPM_URL`,
//! `KILN__WATCH__CRATES_URL`, `KILN__WATCH__CONCURRENCY`, `KILN__WATCH__SYNC_INTERVAL`, and
//! `KILN__WATCH__GITHUB_TOKEN` (environment only: the token sent to the GitHub API).
//!
//! `kiln build`'s toolchain (declared with its flags in `build.rs`): `KILN_TOOLCHAIN` (a
//! label in every package's key; `--toolchain`) and `KILN_TOOLCHAIN_ENV` (variables passed to
//! builds and keyed, comma-separated; `--toolchain-env`).
//!
//! `kiln serve`'s package tree, which the API's `/packages/…/deps` reads:
//! `KILN__PACKAGES__TREE` (`--tree`).
//!
//! `kiln serve`'s artifact store: `KILN__ARTIFACTS__URL` (`--artifacts`); for S3 the standard
//! AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), read by kiln-store's `ArtifactStore::s3`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_core::ids::ProjectId;
use kiln_engine::egress::EgressPolicy;
use kiln_proto::Role;
use kiln_store::{Store, StoreError};

use crate::Failure;

/// `kiln serve`: the first admin token of an empty store (at least 32 printable characters),
/// instead of a random one printed once. Read from the environment only: a flag would show
/// the secret to every `ps`.
pub(crate) const ADMIN_TOKEN_ENV: &str = "KILN_ADMIN_TOKEN";

/// kiln — a self-hosted build and automation server.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a project's workflow(s) here, without a server, recorded in the local store.
    Run(RunArgs),
    /// Build a package tree here (all packages, or the named ones with what they need),
    /// rebuilding only what changed; `kiln build status` and `kiln build history ORIGIN`
    /// read what was built.
    Build(crate::build::BuildArgs),
    /// List runs, newest first (a server's with `--server`, else the local store's).
    Runs(RunsArgs),
    /// Print the log of a run's jobs (or of one job); `-f` follows it until the run ends.
    Logs(LogsArgs),
    /// Ask a server whether it is up: its version, store and start time.
    Status(StatusArgs),
    /// Run the server: the HTTP API on `--listen`, recorded in the store.
    Serve(ServeArgs),
    /// Create, list or revoke API tokens (on a server with `--server`, else in the store).
    Token(TokenArgs),
    /// Ask a server to run a project's workflow(s).
    Trigger(TriggerArgs),
    /// Add, list, show, change or remove a server's projects.
    Project(ProjectArgs),
    /// List a server's schedules (`on.schedule` entries) with their next fire; stop or
    /// start one.
    Schedule(ScheduleArgs),
    /// Add, list or remove a project's notification receivers (signed POSTs of its events).
    Receiver(crate::receiver::ReceiverArgs),
    /// List the webhook senders a server banned for failing verification; lift a ban.
    Ban(crate::ban::BanArgs),
    /// List a server's watches (`on.watch` entries) with their state; poll one now.
    Watch(crate::watch::WatchArgs),
    /// Run a server's jobs here: claim jobs whose `runs-on` labels this worker has, run them,
    /// report back (SIGTERM drains: no new jobs, running ones finish).
    Worker(crate::worker::WorkerArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleArgs {
    #[command(subcommand)]
    pub(crate) command: ScheduleCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// List the schedules: active ones by next fire, then stopped ones.
    List(ScheduleListArgs),
    /// Stop a schedule: it fires no more until started, whatever its workflow file says.
    Stop(ScheduleOneArgs),
    /// Start a stopped schedule; its next fire counts from now.
    Start(ScheduleOneArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleListArgs {
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleOneArgs {
    /// The schedule's id (from `kiln schedule list`).
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TriggerArgs {
    /// The project's id or name.
    #[arg(value_name = "PROJECT")]
    pub(crate) project: String,
    /// Run only this workflow: its file name, stem, path or `name:`.
    #[arg(long, short = 'w', value_name = "NAME")]
    pub(crate) workflow: Option<String>,
    /// A branch, tag or commit (git projects; default: the default branch).
    #[arg(long = "ref", value_name = "REF")]
    pub(crate) git_ref: Option<String>,
    /// The event (default `workflow_dispatch`).
    #[arg(long, short = 'e', value_name = "EVENT")]
    pub(crate) event: Option<String>,
    /// A `workflow_dispatch` input (repeatable).
    #[arg(long = "input", short = 'i', value_name = "K=V")]
    pub(crate) inputs: Vec<String>,
    /// Wait for the runs to end; the exit code is theirs (0, 1, or 130 when cancelled).
    #[arg(long)]
    pub(crate) wait: bool,
    /// Wait, printing the jobs' logs (on stderr) as they come.
    #[arg(long)]
    pub(crate) follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

/// Where the store lives.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// The data folder (SQLite database, logs and blobs).
    #[arg(
        long,
        env = "KILN_DATA_DIR",
        default_value = "kiln-data",
        value_name = "DIR"
    )]
    pub(crate) data_dir: PathBuf,
    /// A PostgreSQL URL (`postgres://…`) to use instead of the embedded SQLite.
    #[arg(long, env = "KILN_DATABASE", value_name = "URL")]
    pub(crate) database: Option<String>,
}

impl StoreArgs {
    /// Opens (creating and migrating if needed) the store these flags name.
    pub(crate) async fn open(&self) -> Result<Store, Failure> {
        Store::open(self.database.as_deref(), &self.data_dir)
            .await
            .map_err(|e| match e {
                // A key given but malformed, or not the one the stored secrets were sealed
                // with: the configuration is wrong, not kiln.
                StoreError::Secrets(_) => {
                    Failure::invalid(format!("failed to open the store: {e}"))
                }
                e => Failure::internal(format!("failed to open the store: {e}")),
            })
    }
}

/// The server a client command talks to.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// The kiln server's URL (`http://host:port`). Without it, `runs`, `logs` and `token`
    /// read the local store.
    #[arg(long, env = "KILN_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// The API token to send (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Text for people.
    #[default]
    Text,
    /// JSON on stdout (progress and logs go to stderr).
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The project folder (default: the current folder).
    #[arg(value_name = "DIR", default_value = ".")]
    pub(crate) dir: PathBuf,
    /// Run only this workflow: its file name, stem, path or `name:`.
    #[arg(long, short = 'w', value_name = "NAME")]
    pub(crate) workflow: Option<String>,
    /// The event that triggers the run.
    #[arg(long, short = 'e', default_value = "push", value_name = "EVENT")]
    pub(crate) event: String,
    /// A JSON file with the event payload (`github.event`).
    #[arg(long, value_name = "FILE")]
    pub(crate) event_file: Option<PathBuf>,
    /// A `workflow_dispatch` input (repeatable).
    #[arg(long = "input", short = 'i', value_name = "K=V")]
    pub(crate) inputs: Vec<String>,
    /// A secret for the `secrets` context, masked in every log line (repeatable).
    #[arg(long = "secret", short = 's', value_name = "NAME=VALUE")]
    pub(crate) secrets: Vec<String>,
    /// A dotenv file of secrets (`NAME=VALUE` lines).
    #[arg(long, value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// How many jobs run at once (default: the number of cores).
    #[arg(long, short = 'j', value_name = "N")]
    pub(crate) jobs: Option<usize>,
    /// How `packages:` jobs confine their builds: `auto` with bubblewrap where it works here
    /// (warning loudly when not), `require` (refuse to run without it), `off`.
    #[arg(long, default_value = "auto", value_name = "auto|require|off")]
    pub(crate) sandbox: kiln_engine::packages::SandboxMode,
    /// What `packages:` jobs' sandboxed `fetch` phases may reach.
    #[command(flatten)]
    pub(crate) egress: EgressArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Print the jobs that would run, run nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    /// Only runs of this project (its id or name).
    #[arg(long, value_name = "ID|NAME")]
    pub(crate) project: Option<String>,
    /// Only runs of this workflow (its file path as recorded, or its name).
    #[arg(long, value_name = "FILE|NAME")]
    pub(crate) workflow: Option<String>,
    /// Only runs with this status: pending, queued, running, waiting, success, failure or
    /// cancelled.
    #[arg(long, value_name = "STATUS")]
    pub(crate) status: Option<String>,
    /// At most this many runs (0: all).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub(crate) limit: u32,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The run: its id or a unique prefix of it.
    #[arg(value_name = "RUN")]
    pub(crate) run: String,
    /// One job: its id (or prefix), its key, or its display name.
    #[arg(value_name = "JOB")]
    pub(crate) job: Option<String>,
    /// Keep printing lines as they come until the run ends (jobs that start later too);
    /// the exit code is then the run's: 0 success, 1 failure, 130 cancelled.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on; port 0 picks a free one (the line `listening on …` names it).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub(crate) listen: String,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// How clients reach this server (default: `http://` and the address it listens on).
    #[arg(long, value_name = "URL")]
    pub(crate) public_url: Option<String>,
    /// How remote workers reach this replica when several share a database (default:
    /// `--public-url`); needed when `--public-url` is a load balancer's address.
    #[arg(long, env = "KILN_REPLICA_URL", value_name = "URL")]
    pub(crate) replica_url: Option<String>,
    /// Where artifacts are kept: a folder (default `<data dir>/artifacts`), or S3-compatible
    /// storage as `s3://bucket/prefix`, configured by the standard AWS environment variables
    /// (`AWS_ENDPOINT_URL` for a store other than AWS).
    #[arg(long, env = "KILN__ARTIFACTS__URL", value_name = "URL")]
    pub(crate) artifacts: Option<String>,
    /// Local worker slots (default: one per core). 0: no job runs here, remote workers
    /// (`kiln worker`) run them all (but `packages:` jobs, which need the local pool).
    #[arg(long, value_name = "N")]
    pub(crate) workers: Option<usize>,
    /// How long a job's lease lasts without a heartbeat: how soon the job of a remote worker
    /// that vanished goes back to the queue (seconds, at least 1).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) lease_ttl: u64,
    /// How `packages:` jobs confine their builds: `auto` with bubblewrap where it works here
    /// (warning loudly at start-up when not), `require` (refuse to start without it), `off`.
    #[arg(
        long,
        env = "KILN_SANDBOX",
        default_value = "auto",
        value_name = "auto|require|off"
    )]
    pub(crate) sandbox: kiln_engine::packages::SandboxMode,
    /// At shutdown (SIGINT/SIGTERM), how long running jobs may take to finish before they
    /// are cancelled.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub(crate) shutdown_grace: u64,
    /// Make `/metrics` ask for a token like the API (it is open by default).
    #[arg(long, env = "KILN__METRICS__NEED_TOKEN")]
    pub(crate) metrics_need_token: bool,
    #[command(flatten)]
    pub(crate) egress: EgressArgs,
    #[command(flatten)]
    pub(crate) bans: crate::ban::BanFlags,
    #[command(flatten)]
    pub(crate) notify: crate::receiver::NotifyFlags,
    #[command(flatten)]
    pub(crate) watch: crate::watch::WatchFlags,
    /// The package tree (`CATEGORY/NAME/kiln-package.toml` folders) whose dependencies
    /// `GET /api/v1/packages/{category}/{name}/deps` answers with, read as it is at each
    /// request. Package history needs no tree.
    #[arg(long, env = "KILN__PACKAGES__TREE", value_name = "DIR")]
    pub(crate) tree: Option<PathBuf>,
}

/// What the server's own outbound connections, and the sandboxed `fetch` phases of package
/// builds, may reach (DESIGN.md "Security model"). By default: any public address; never
/// loopback, private or link-local ones; no local paths.
#[derive(Debug, Clone, Args)]
pub(crate) struct EgressArgs {
    /// Allow only these hosts (`git.example.com`, `*.example.com`) among public addresses,
    /// and admit these addresses or CIDRs (`10.1.0.0/16`) whatever their range (repeatable,
    /// or comma-separated).
    #[arg(
        long = "egress-allow",
        env = "KILN__EGRESS__ALLOW",
        value_delimiter = ',',
        value_name = "HOST|CIDR"
    )]
    pub(crate) allow: Vec<String>,
    /// Admit loopback addresses (127.0.0.0/8, ::1): for tests.
    #[arg(long = "egress-allow-loopback", env = "KILN__EGRESS__ALLOW_LOOPBACK")]
    pub(crate) allow_loopback: bool,
    /// Admit private addresses (10/8, 172.16/12, 192.168/16, fc00::/7, …).
    #[arg(long = "egress-allow-private", env = "KILN__EGRESS__ALLOW_PRIVATE")]
    pub(crate) allow_private: bool,
    /// Admit projects on the server's own disk: folders and `file://` URLs (admins only).
    #[arg(
        long = "egress-allow-local-paths",
        env = "KILN__EGRESS__ALLOW_LOCAL_PATHS"
    )]
    pub(crate) allow_local_paths: bool,
}

impl EgressArgs {
    /// The policy these flags describe; an unusable entry is invalid input naming it.
    pub(crate) fn policy(&self) -> Result<EgressPolicy, Failure> {
        let entries = self.allow.iter().map(|e| e.trim().to_owned());
        let (cidrs, hosts): (Vec<String>, Vec<String>) = entries
            .filter(|e| !e.is_empty())
            .partition(|e| e.contains('/'));
        let mut policy = EgressPolicy::from_config(&hosts, &cidrs)
            .map_err(|e| Failure::invalid(format!("--egress-allow: {e}")))?;
        policy.allow_loopback = self.allow_loopback;
        policy.allow_private = self.allow_private;
        policy.allow_local_paths = self.allow_local_paths;
        Ok(policy)
    }
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    pub(crate) command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token; its secret is printed this once.
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    List(TokenListArgs),
    /// Revoke a token for good.
    Revoke(TokenRevokeArgs),
}

/// Where a token command works: a server, or the local store.
#[derive(Debug, Clone, Args)]
pub(crate) struct TokenTarget {
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TokenCreateArgs {
    /// What the token is for (shown in listings).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: String,
    /// admin, maintainer, developer, viewer or worker.
    #[arg(long, value_name = "ROLE", value_parser = |s: &str| s.parse::<Role>())]
    pub(crate) role: Role,
    /// Limit the role to one project (its id).
    #[arg(long, value_name = "ID")]
    pub(crate) project: Option<ProjectId>,
    #[command(flatten)]
    pub(crate) target: TokenTarget,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct TokenListArgs {
    #[command(flatten)]
    pub(crate) target: TokenTarget,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct TokenRevokeArgs {
    /// The token's id (as `kiln token list` shows it), not its secret.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) target: TokenTarget,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectArgs {
    #[command(subcommand)]
    pub(crate) command: ProjectCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
    /// Register a folder on the server (admins) or a git repository (fetched by the server in
    /// the background); prints its id, name and webhook URL.
    Add(ProjectAddArgs),
    /// List the projects (removed ones are left out).
    List(ProjectListArgs),
    /// Show one project, its source and how its last fetch went.
    Show(ProjectOneArgs),
    /// Rename a project or give it another source.
    Update(ProjectUpdateArgs),
    /// Remove a project: it is archived, its runs and logs stay readable. Refused while any of
    /// its runs has not finished.
    Remove(ProjectOneArgs),
    /// Have the server fetch a git project again now (in the background).
    Fetch(ProjectOneArgs),
    /// Give a project's webhook a new secret (shown once), and with --new-url a new hook id.
    RotateHook(ProjectRotateHookArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ProjectRotateHookArgs {
    /// The project's id or name.
    #[arg(value_name = "ID|NAME")]
    pub(crate) project: String,
    /// The new secret (at least 16 printable characters; default: 32 random bytes in hex).
    #[arg(long, value_name = "SECRET")]
    pub(crate) secret: Option<String>,
    /// Also give the webhook a new URL (hook id); the old one stops working.
    #[arg(long)]
    pub(crate) new_url: bool,
    /// Switch the provider whose signature scheme the webhook verifies.
    #[arg(long, value_name = "github|gitlab|gitea|generic")]
    pub(crate) provider: Option<kiln_proto::HookProvider>,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectAddArgs {
    /// A folder (on the server; a relative path is made absolute here) or a git URL
    /// (`https://…`, `ssh://…`, `user@host:path`, `git://…`, `file://…`).
    #[arg(value_name = "PATH|GIT_URL")]
    pub(crate) source: String,
    /// The project's name (default: the last segment of the path or URL, without `.git`).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Whose signature scheme the project's webhook verifies.
    #[arg(
        long,
        value_name = "github|gitlab|gitea|generic",
        default_value = "github"
    )]
    pub(crate) provider: kiln_proto::HookProvider,
    /// The webhook secret (at least 16 printable characters; default: 32 random bytes in
    /// hex). Printed once, here.
    #[arg(long, value_name = "SECRET")]
    pub(crate) secret: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectListArgs {
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectOneArgs {
    /// The project's id or name.
    #[arg(value_name = "ID|NAME")]
    pub(crate) project: String,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectUpdateArgs {
    /// The project's id or name.
    #[arg(value_name = "ID|NAME")]
    pub(crate) project: String,
    /// A new name.
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// A new folder or git URL (as for `kiln project add`).
    #[arg(long, value_name = "PATH|GIT_URL")]
    pub(crate) source: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    #[command(flatten)]
    pub(crate) remote: ServerArgs,
}

pub(crate) async fn dispatch(cli: Cli) -> Result<i32, Failure> {
    match cli.command {
        Command::Run(a) => crate::local::run(a).await,
        Command::Build(a) => crate::build::build_command(a).await,
        Command::Runs(a) => crate::runs::runs(a).await,
        Command::Logs(a) => crate::logs::logs(a).await,
        Command::Status(a) => crate::status::status(a).await,
        Command::Serve(a) => crate::serve::serve(a).await,
        Command::Token(a) => crate::token::token(a).await,
        Command::Trigger(a) => crate::trigger::trigger(a).await,
        Command::Project(a) => crate::project::project(a).await,
        Command::Schedule(a) => crate::schedule::schedule(a).await,
        Command::Receiver(a) => crate::receiver::receiver(a).await,
        Command::Ban(a) => crate::ban::ban(a).await,
        Command::Watch(a) => crate::watch::watch(a).await,
        Command::Worker(a) => crate::worker::worker(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(args: &[&str]) -> Result<EgressPolicy, Failure> {
        #[derive(Parser)]
        struct Probe {
            #[command(flatten)]
            egress: EgressArgs,
        }
        let mut argv = vec!["probe"];
        argv.extend(args);
        Probe::try_parse_from(argv).unwrap().egress.policy()
    }

    #[test]
    fn egress_flags_make_the_policy() {
        let p = egress(&[]).unwrap();
        assert!(!p.allow_loopback && !p.allow_private && !p.allow_local_paths);
        assert!(p.hosts().is_empty() && p.cidrs().is_empty());

        let p = egress(&[
            "--egress-allow",
            "git.example.com,*.example.org",
            "--egress-allow",
            "10.1.0.0/16",
            "--egress-allow",
            "192.0.2.7",
            "--egress-allow-loopback",
            "--egress-allow-local-paths",
        ])
        .unwrap();
        assert_eq!(p.hosts(), ["git.example.com", "*.example.org"]);
        let cidrs: Vec<String> = p.cidrs().iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["192.0.2.7/32", "10.1.0.0/16"]);
        assert!(p.allow_loopback && p.allow_local_paths && !p.allow_private);

        for bad in ["https://git.example.com", "10.1.0.0/33", "a b"] {
            let f = egress(&["--egress-allow", bad]).unwrap_err();
            assert_eq!(f.code, kiln_proto::exit::INVALID, "{bad}");
            assert!(f.message.starts_with("--egress-allow: "), "{}", f.message);
        }
    }
}
