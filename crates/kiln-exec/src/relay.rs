//! The inside half of a package `fetch` phase's network: the phase runs in a network
//! namespace of its own (loopback only), with one Unix socket of the host bound in, on which
//! kiln's egress proxy listens (the policy is checked there, outside the sandbox, where the
//! phase cannot change it). Programs in the phase speak to a proxy on `127.0.0.1`, so this
//! relay, started first in the sandbox, listens there and carries each connection to the
//! socket, byte for byte; then it runs the phase's command with the usual proxy variables
//! (`http_proxy`, `https_proxy`, `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) pointing at itself,
//! and exits as the command does. A program that ignores the proxy variables reaches
//! nothing: there is no other way out of the namespace.
//!
//! The `kiln` binary runs it as `kiln __egress-relay SOCKET -- PROGRAM ARGS…`
//! ([`relay_main`]); [`crate::sandbox::Confinement::egress`] puts that in front of the
//! command.

use std::ffi::OsString;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The argument that selects the relay in the `kiln` binary (hidden from its help).
pub const RELAY_ARG: &str = "__egress-relay";

/// Runs the relay for `args` (what follows [`RELAY_ARG`]): `SOCKET -- PROGRAM ARGS…`.
/// Returns the exit code: the command's, 128 + its signal, or 125 when the relay itself
/// could not start (a message on stderr says why: it runs as the phase's first process, and
/// its stderr is the phase's log).
#[expect(
    clippy::print_stderr,
    reason = "the relay's own errors go to the phase's log"
)]
pub fn relay_main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let mut args = args.into_iter();
    let socket = args.next().map(PathBuf::from);
    let dashes = args.next();
    let (Some(socket), Some(true), Some(program)) =
        (socket, dashes.map(|d| d == "--"), args.next())
    else {
        eprintln!("kiln {RELAY_ARG}: usage: SOCKET -- PROGRAM [ARGS…]");
        return 125;
    };
    match relay(&socket, program, args.collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "kiln {RELAY_ARG}: cannot relay to the egress proxy at {}: {e}",
                socket.display()
            );
            125
        }
    }
}

fn relay(socket: &Path, program: OsString, args: Vec<OsString>) -> io::Result<i32> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let proxy = format!("http://{}", listener.local_addr()?);
    let to = socket.to_owned();
    // Detached: the relay's process ends with the command, and its threads with it.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let to = to.clone();
            std::thread::spawn(move || {
                if let Ok(upstream) = UnixStream::connect(&to) {
                    carry(conn, upstream);
                }
            });
        }
    });
    let mut cmd = Command::new(program);
    cmd.args(args);
    for name in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env(name, &proxy);
    }
    for name in ["no_proxy", "NO_PROXY"] {
        cmd.env_remove(name);
    }
    let status = cmd.status()?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(125))
}

/// Copies both ways until each side has finished sending; a half-close is passed on.
fn carry(tcp: TcpStream, unix: UnixStream) {
    let (Ok(tcp_in), Ok(unix_in)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let (mut from, mut to) = (tcp_in, unix);
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    let (mut from, mut to) = (unix_in, tcp);
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = up.join();
}
