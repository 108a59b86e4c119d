//! Flags of every command, and which code handles each.
//!
//! Environment variables the binary reads are declared here, once: `KILN_LOG` (log filter),
//! `KILN_DATA_DIR`, `KILN_DATABASE`. Steps never see any `KILN_*` variable of kiln's own
//! process (kiln-exec strips them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::Failure;

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
    /// List recorded runs, newest first.
    Runs(RunsArgs),
    /// Print the log of a run's jobs (or of one job).
    Logs(LogsArgs),
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
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Only runs of this workflow (its file path as recorded).
    #[arg(long, value_name = "FILE")]
    pub(crate) workflow: Option<String>,
    /// Only runs with this status.
    #[arg(long, value_name = "STATUS")]
    pub(crate) status: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: u32,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The run: its id or a unique prefix of it.
    #[arg(value_name = "RUN")]
    pub(crate) run: String,
    /// One job: its id (or prefix), its key, or its display name.
    #[arg(value_name = "JOB")]
    pub(crate) job: Option<String>,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
}

pub(crate) async fn dispatch(cli: Cli) -> Result<i32, Failure> {
    match cli.command {
        Command::Run(a) => crate::local::run(a).await,
        Command::Runs(a) => crate::local::runs(a).await,
        Command::Logs(a) => crate::local::logs(a).await,
    }
}
