//! A load generator for `bench/sse.sh`: opens many SSE clients on a kiln server, starts a
//! run, and measures how far behind each client is when a log line reaches it.
//!
//! Every log line the benchmark's jobs print carries the time it was printed (`tick
//! <unix nanoseconds>`); a client's lag for that line is when it read the line minus that
//! time. The clients are raw HTTP/1.1 connections (a minimal chunked decoder, no JSON
//! parsing) so that the generator costs the machine as little as it can.
//!
//! usage: sse-load URL TOKEN CLIENTS EVENTS_PATH TRIGGER_PATH
//! prints one JSON object: clients, finished, dropped, lines, lag percentiles (ms).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    lags_ms: Vec<u32>,
    finished: bool,
    dropped: bool,
}

async fn connect(addr: &str, token: &str, path: &str) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                 Accept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    // Read the head; keep what follows it.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 200") {
                return Err(std::io::Error::other(head));
            }
            return Ok((stream, buf.split_off(end + 4)));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads the chunked body, frame by frame, until `run.completed` or an `error` frame.
async fn follow(mut stream: TcpStream, mut raw: Vec<u8>) -> Seen {
    let mut seen = Seen::default();
    let mut body: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Decode whole chunks out of `raw` into `body`.
        while let Some(line_end) = find(&raw, b"\r\n") {
            let size_text = String::from_utf8_lossy(&raw[..line_end]).into_owned();
            let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                seen.dropped = true;
                return seen;
            };
            if raw.len() < line_end + 2 + size + 2 {
                break;
            }
            if size == 0 {
                return seen;
            }
            body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
            raw.drain(..line_end + 2 + size + 2);
        }
        // Frames out of `body`.
        let mut start = 0;
        while let Some(end) = find(&body[start..], b"\n\n") {
            let frame = &body[start..start + end];
            start += end + 2;
            if frame.starts_with(b":") {
                continue;
            }
            let text = String::from_utf8_lossy(frame);
            if text.contains("\nevent: log.line\n") {
                let now = now_ns();
                let mut rest = text.as_ref();
                while let Some(i) = rest.find("tick ") {
                    rest = &rest[i + 5..];
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(stamp) = digits.parse::<u128>() {
                        let lag = now.saturating_sub(stamp) / 1_000_000;
                        seen.lags_ms.push(u32::try_from(lag).unwrap_or(u32::MAX));
                    }
                }
            } else if text.contains("event: run.completed\n") {
                seen.finished = true;
                return seen;
            } else if text.contains("event: error\n") {
                seen.dropped = true;
                return seen;
            }
        }
        body.drain(..start);
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn post(addr: &str, token: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = "{}";
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, token, clients, events_path, trigger_path] = &args[..] else {
        return Err(std::io::Error::other(
            "usage: sse-load URL TOKEN CLIENTS EVENTS_PATH TRIGGER_PATH",
        ));
    };
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let clients: usize = clients.parse().map_err(std::io::Error::other)?;
    let mut streams = Vec::with_capacity(clients);
    for _ in 0..clients {
        streams.push(connect(&addr, token, events_path).await?);
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(s, rest)| tokio::spawn(follow(s, rest)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = post(&addr, token, trigger_path).await?;
    if !answer.starts_with("HTTP/1.1 201") {
        return Err(std::io::Error::other(answer));
    }
    let mut all = Vec::new();
    let (mut finished, mut dropped, mut worst_client) = (0, 0, 0u32);
    let mut behind = 0;
    for t in tasks {
        let seen = t.await.map_err(std::io::Error::other)?;
        finished += usize::from(seen.finished);
        dropped += usize::from(seen.dropped);
        let max = seen.lags_ms.iter().copied().max().unwrap_or(0);
        worst_client = worst_client.max(max);
        behind += usize::from(max > 1000);
        all.extend(seen.lags_ms);
    }
    all.sort_unstable();
    let report = serde_json::json!({
        "clients": clients,
        "finished": finished,
        "dropped": dropped,
        "clients_over_1s": behind,
        "lines": all.len(),
        "lag_ms": {
            "p50": percentile(&all, 50.0),
            "p99": percentile(&all, 99.0),
            "max": worst_client,
        },
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    Ok(())
}
