//! `kiln worker`: a remote worker (kiln-worker) with its flags, signals and exit codes.
//!
//! It prints `worker <id> registered with <server>` once the server took it, then runs jobs
//! until SIGINT or SIGTERM, after which it claims nothing more, lets its running jobs finish
//! and report, and exits 0. Exit 2: the server refused it (a bad token, another protocol,
//! bad flags); 3: the server could not be reached.

use std::path::PathBuf;

use clap::Args;
use kiln_proto::exit;
use kiln_worker::{WorkerConfig, WorkerError, run_worker};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::client::check_http_url;
use crate::output::stdout_line;

#[derive(Debug, Clone, Args)]
pub(crate) struct WorkerArgs {
    /// The server's URL (`http://host:port`); or several replicas of one database,
    /// comma-separated. The worker registers with the first that answers, learns the other
    /// replicas from it, takes jobs from each, and carries on with the others when one is down.
    #[arg(long, env = "KILN_SERVER", value_name = "URL[,URL…]")]
    server: String,
    /// A `worker`-role token (`kiln token create --role worker`); prefer the environment
    /// variable: flags show in `ps`.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: String,
    /// The labels this worker runs jobs for, comma-separated: a job runs here only when its
    /// `runs-on` labels are all among them.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    labels: Vec<String>,
    /// Jobs at once.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    slots: u32,
    /// Where jobs get their folders (each removed when its job ends).
    #[arg(long, value_name = "DIR", default_value = "kiln-worker")]
    work_dir: PathBuf,
    /// A name for people (default: the host's name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// How many MiB of the dependency outputs package jobs fetched are kept in the work dir
    /// for later builds; past it, the least recently used go.
    #[arg(long, value_name = "MIB", default_value_t = 10240)]
    output_cache_mib: u64,
}

pub(crate) async fn worker(a: WorkerArgs) -> Result<i32, Failure> {
    let servers = a
        .server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| check_http_url("--server", s))
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(Failure::invalid("--server: give the server's URL"));
    }
    let server = servers.join(", ");
    let labels: Vec<String> = a
        .labels
        .iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let name = a.name.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kiln-worker".to_owned())
    });
    let work_dir = std::path::absolute(&a.work_dir).map_err(|e| {
        Failure::internal(format!(
            "failed to resolve --work-dir {}: {e}",
            a.work_dir.display()
        ))
    })?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let drain = CancellationToken::new();
    let watch = |kind: SignalKind, what: &str| {
        signal(kind).map_err(|e| Failure::internal(format!("failed to watch for {what}: {e}")))
    };
    let mut interrupt = watch(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = watch(SignalKind::terminate(), "SIGTERM")?;
    {
        let drain = drain.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("draining: finishing the running jobs, claiming none");
            drain.cancel();
        });
    }
    let config = WorkerConfig {
        servers,
        token: a.token,
        name,
        labels,
        slots: a.slots,
        work_dir,
        output_cache: a.output_cache_mib.saturating_mul(1024 * 1024),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let announce = |id| stdout_line(&format!("worker {id} registered with {server}"));
    match run_worker(config, drain, announce).await {
        Ok(()) => Ok(exit::OK),
        Err(e @ WorkerError::Refused(_)) => Err(Failure::invalid(e.to_string())),
        Err(e @ WorkerError::Unreachable(_)) => Err(Failure::internal(e.to_string())),
    }
}
