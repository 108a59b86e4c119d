//! The `kiln` command line: argument parsing, the documented exit codes, and what is printed.
//!
//! Thin by design: every decision is made in `kiln-engine`/`kiln-core`, every byte stored by
//! `kiln-store`. This crate turns flags into requests and results into text or JSON. Results
//! go to stdout; progress, logs and errors go to stderr, so `--format json` output can be piped.
//! `kiln serve` hands the store to `kiln-server`; commands that talk to a server go through
//! `client`; `kiln runs` and `kiln logs` read a server or the local store through `source`.
//!
//! Exit codes (DESIGN.md "Command line"): 0 success, 1 a run or job failed, 2 invalid input
//! (nothing ran), 3 kiln itself could not work, 130 cancelled by Ctrl-C.

mod args;
mod ban;
mod build;
mod client;
mod local;
mod logs;
mod output;
mod project;
mod receiver;
mod runs;
mod schedule;
mod serve;
mod source;
mod status;
mod token;
mod trigger;
mod watch;
mod worker;

use std::io::Write;

use clap::Parser;
use kiln_proto::exit;

pub use args::Cli;

/// An error that ends the command, with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: i32,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: exit::INVALID,
            message: message.into(),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self {
            code: exit::INTERNAL,
            message: message.into(),
        }
    }
}

impl From<kiln_engine::EngineError> for Failure {
    fn from(e: kiln_engine::EngineError) -> Self {
        let code = if e.is_user_error() {
            exit::INVALID
        } else {
            exit::INTERNAL
        };
        Self {
            code,
            message: e.to_string(),
        }
    }
}

impl From<kiln_store::StoreError> for Failure {
    fn from(e: kiln_store::StoreError) -> Self {
        Self::internal(format!("failed to use the store: {e}"))
    }
}

/// Run the `kiln` binary; returns the process exit code.
pub fn main() -> i32 {
    // The relay a sandboxed `fetch` phase starts first (kiln-exec's `relay`): not a command
    // people type, so not in the help.
    let mut argv = std::env::args_os().skip(1);
    if argv
        .next()
        .is_some_and(|a| a == kiln_exec::relay::RELAY_ARG)
    {
        return kiln_exec::relay::relay_main(argv);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::INVALID
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&format!("failed to start the async runtime: {e}"));
            return exit::INTERNAL;
        }
    };
    let result = runtime.block_on(args::dispatch(cli));
    // Executors that are still draining (a cancelled run) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(f) => {
            report(&f.message);
            f.code
        }
    }
}

fn report(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {message}");
}

/// Logs go to stderr, filtered by `KILN_LOG` (default: warnings).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
