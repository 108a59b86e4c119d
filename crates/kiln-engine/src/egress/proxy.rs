//! The egress proxy of a package's `fetch` phase: an HTTP proxy on a Unix socket that the
//! phase's sandbox reaches through kiln-exec's relay (its only way out). Every request is
//! checked against the [`EgressPolicy`] before kiln connects, and kiln connects to the
//! addresses it checked, so a name that resolves differently a second time gains nothing.
//!
//! - `CONNECT host:port` (HTTPS and anything else tunnelled): checked, connected, then bytes
//!   both ways; the proxy never sees inside TLS.
//! - `GET http://host[:port]/path` and the other methods with an absolute `http://` target:
//!   checked, connected, the request passed on in origin form with `Connection: close` (one
//!   request per connection, so a second request cannot go to the first one's host), then
//!   bytes both ways.
//!
//! A refusal answers `403` with the policy's reason in the body and tells the caller (for the
//! package's log); a target that does not parse answers `400`, one that cannot be reached
//! `502`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use super::EgressPolicy;

/// The largest request head the proxy reads (request line and headers).
const MAX_HEAD: usize = 64 * 1024;

/// How long the phase's client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting to a checked address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the proxy on `listener` until the task is dropped. `refused` hears a line for each
/// request the policy refused.
pub async fn serve(
    listener: UnixListener,
    policy: EgressPolicy,
    refused: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let policy = std::sync::Arc::new(policy);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else {
                    // Out of descriptors, say: not a reason to spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let policy = policy.clone();
                let refused = refused.clone();
                conns.spawn(async move {
                    if let Err(line) = handle(conn, &policy).await {
                        let _ = refused.send(line);
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One client connection. `Err`: a refusal to report.
async fn handle(mut client: UnixStream, policy: &EgressPolicy) -> Result<(), String> {
    let Ok(Ok((head, rest))) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await
    else {
        return Ok(());
    };
    let request = match Request::parse(&head) {
        Ok(r) => r,
        Err(why) => {
            answer(&mut client, "400 Bad Request", &why).await;
            return Ok(());
        }
    };
    let target = format!("{}:{}", request.host, request.port);
    let addrs = match policy.check_host(&request.host, request.port).await {
        Ok(addrs) => addrs,
        Err(e) => {
            answer(
                &mut client,
                "403 Forbidden",
                &format!("kiln egress policy: {e}"),
            )
            .await;
            return Err(format!("egress refused {target}: {e}"));
        }
    };
    let mut upstream = None;
    for addr in addrs {
        let at = SocketAddr::new(addr, request.port);
        if let Ok(Ok(conn)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(at)).await {
            upstream = Some(conn);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        answer(
            &mut client,
            "502 Bad Gateway",
            &format!("cannot connect to {target}"),
        )
        .await;
        return Ok(());
    };
    match &request.forward {
        None => {
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        Some(head) => {
            if upstream.write_all(head.as_bytes()).await.is_err() {
                return Ok(());
            }
        }
    }
    if !rest.is_empty() && upstream.write_all(&rest).await.is_err() {
        return Ok(());
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

/// Reads up to the end of the request head; returns it and whatever came after it.
async fn read_head(client: &mut UnixStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(client: &mut UnixStream, status: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    );
    let _ = client.write_all(text.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// A proxy request: where to, and for a plain HTTP request the head to send there.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    host: String,
    port: u16,
    /// `None` for `CONNECT`.
    forward: Option<String>,
}

impl Request {
    fn parse(head: &str) -> Result<Self, String> {
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("not an HTTP request line: `{line}`"));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(format!("unsupported HTTP version `{version}`"));
        }
        if method.eq_ignore_ascii_case("CONNECT") {
            let (host, port) = host_port(target, None)?;
            return Ok(Self {
                host,
                port,
                forward: None,
            });
        }
        let Some(after) = target.strip_prefix("http://") else {
            return Err(format!(
                "`{target}`: a proxy request needs an absolute http:// URL (https goes through CONNECT)"
            ));
        };
        let (authority, path) = match after.find('/') {
            Some(i) => after.split_at(i),
            None => (after, "/"),
        };
        if authority.contains('@') {
            return Err(format!(
                "`{target}`: credentials in a proxy URL are not passed on"
            ));
        }
        let (host, port) = host_port(authority, Some(80))?;
        let mut forward = format!("{method} {path} {version}\r\n");
        for header in lines.filter(|l| !l.is_empty()) {
            let name = header.split(':').next().unwrap_or_default().trim();
            let dropped = [
                "connection",
                "proxy-connection",
                "proxy-authorization",
                "keep-alive",
            ];
            if !dropped.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                forward.push_str(header);
                forward.push_str("\r\n");
            }
        }
        forward.push_str("Connection: close\r\n\r\n");
        Ok(Self {
            host,
            port,
            forward: Some(forward),
        })
    }
}

/// `host:port`, `[v6]:port`, or a bare host when `default` gives the port.
fn host_port(authority: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("`{authority}` is not host:port");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match (port, default) {
        (Some(p), _) => p.parse::<u16>().map_err(|_| bad())?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad()),
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_absolute_requests_parse() {
        let r =
            Request::parse("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.forward),
            ("example.com", 443, None)
        );
        let r = Request::parse("CONNECT [::1]:8443 HTTP/1.1").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 8443));
        let r = Request::parse(
            "GET http://dl.example.org/a/b.tar.gz?x=1 HTTP/1.1\r\nHost: dl.example.org\r\n\
             Proxy-Connection: keep-alive\r\nUser-Agent: curl",
        )
        .unwrap();
        assert_eq!((r.host.as_str(), r.port), ("dl.example.org", 80));
        assert_eq!(
            r.forward.unwrap(),
            "GET /a/b.tar.gz?x=1 HTTP/1.1\r\nHost: dl.example.org\r\nUser-Agent: curl\r\n\
             Connection: close\r\n\r\n"
        );
        let r = Request::parse("HEAD http://h:8080 HTTP/1.0").unwrap();
        assert_eq!(
            (
                r.port,
                r.forward.unwrap().starts_with("HEAD / HTTP/1.0\r\n")
            ),
            (8080, true)
        );
    }

    /// A proxy on a fresh socket with `policy`; its socket and where refusals arrive.
    fn proxy(
        policy: EgressPolicy,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        tokio::sync::mpsc::UnboundedReceiver<String>,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("egress.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(serve(listener, policy, tx));
        (dir, socket, rx, task)
    }

    /// Sends `request` through the proxy at `socket`; everything it answers.
    async fn through(socket: &std::path::Path, request: &str) -> String {
        let mut conn = UnixStream::connect(socket).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn admitted_requests_go_through_and_refused_ones_get_403_and_a_reason() {
        // An upstream on loopback that echoes the request line it got, once per connection.
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let closing = head.contains("Connection: close");
                    let body = format!("{line} close={closing}");
                    let _ = conn
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });

        // Loopback refused (the default policy): 403, the reason, and a line for the log.
        let (_dir, socket, mut refused, task) = proxy(EgressPolicy::default());
        let answer = through(
            &socket,
            &format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: h\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden"), "{answer}");
        assert!(answer.contains("a loopback address"), "{answer}");
        let line = refused.recv().await.unwrap();
        assert!(
            line.starts_with(&format!("egress refused 127.0.0.1:{port}: ")),
            "{line}"
        );
        let answer = through(
            &socket,
            &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        let answer = through(&socket, "GET /relative HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        task.abort();

        // Admitted: a plain request goes on in origin form with `Connection: close`; a
        // CONNECT tunnel carries bytes both ways.
        let policy = EgressPolicy {
            allow_loopback: true,
            ..EgressPolicy::default()
        };
        let (_dir, socket, _refused, task) = proxy(policy);
        let answer = through(
            &socket,
            &format!(
                "GET http://127.0.0.1:{port}/a?b HTTP/1.1\r\nHost: h\r\nProxy-Connection: keep-alive\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.ends_with("GET /a?b HTTP/1.1 close=true"), "{answer}");
        let answer = through(
            &socket,
            &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nGET /t HTTP/1.1\r\n\r\n"),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 200 Connection established\r\n\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("GET /t HTTP/1.1 close=false"), "{answer}");
        task.abort();
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (head, says) in [
            ("GET /relative HTTP/1.1", "absolute http:// URL"),
            ("GET https://h/ HTTP/1.1", "CONNECT"),
            ("CONNECT host HTTP/1.1", "host:port"),
            ("CONNECT h:99999 HTTP/1.1", "host:port"),
            ("GET http://u:p@h/ HTTP/1.1", "credentials"),
            ("hello", "request line"),
            ("GET http://h/ SPDY/3", "version"),
        ] {
            let e = Request::parse(head).unwrap_err();
            assert!(e.contains(says), "{head}: {e}");
        }
    }
}
