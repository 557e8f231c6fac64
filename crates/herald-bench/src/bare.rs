//! `herald-bench bare`: the floor reference — the least work a WebSocket fan-out can do.
//!
//! This is NOT a server to use. It exists to show what fan-out costs on this machine when
//! nothing else is done: no history, no envelopes, no queues, no pings, no backpressure, no
//! validation beyond the handshake. Run the same scenario against it and against Herald, and
//! the difference is the price of Herald's guarantees.
//!
//! It listens on one port. A request with `Upgrade: websocket` gets the minimal RFC 6455
//! handshake (`Sec-WebSocket-Accept` from tungstenite's `derive_accept_key`) and its socket is
//! put in the list of its `cid` query value; after that the socket is never read. `POST
//! /publish?cid=C` with a `Content-Length` body builds ONE unmasked text frame from the body and
//! writes it with a single non-blocking write to every socket of channel C, then answers
//! `200 {"subscribers":N}` on the keep-alive connection. A socket that cannot take the whole
//! frame at once, or fails, is dropped. Anything else gets `404`.
//!
//! Connections are dealt in turn to `--threads` threads, each with a single-threaded runtime of
//! its own, as Herald's are: on tokio's work-stealing runtime the wake-ups between workers cost
//! this loop about 28 % more CPU per delivery with 1,000 channels × 5 subscribers (15.6 against
//! 12.2 µs, medians of 3; the command is in BENCHMARKS.md), and a floor must not carry a cost
//! Herald does not.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use bytes::{Buf, BytesMut};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head or publish body accepted.
const MAX_REQUEST: usize = 1 << 20;

/// Options of `herald-bench bare`.
#[derive(Debug, Clone, Args)]
pub struct BareArgs {
    /// Address to listen on (WebSocket subscribers and POST /publish).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Threads serving connections (one single-threaded runtime each).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Subscriber sockets by channel.
type Channels = Arc<Mutex<HashMap<String, Vec<TcpStream>>>>;

/// Serves until the process is stopped.
pub async fn serve(args: &BareArgs) -> Result<()> {
    crate::limits::raise_nofile()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "bare fan-out floor listening on {} (ws://{0}/?cid=C, POST http://{0}/publish?cid=C)",
        listener.local_addr()?
    );
    let channels: Channels = Arc::default();
    let threads = connection_threads(args.threads)?;
    let mut turn = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                let channels = Arc::clone(&channels);
                threads[turn % threads.len()].spawn(async move {
                    if let Ok(stream) = TcpStream::from_std(stream) {
                        connection(stream, channels).await;
                    }
                });
                turn += 1;
            }
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Starts `count` (at least one) threads that each run a single-threaded runtime for as long
/// as the process lives; returns where to spawn on them.
fn connection_threads(count: usize) -> Result<Vec<tokio::runtime::Handle>> {
    (0..count.max(1))
        .map(|index| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("bare-{index}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            Ok(handle)
        })
        .collect()
}

/// One parsed request.
struct Request {
    upgrade: bool,
    publish: bool,
    cid: String,
    key: Option<String>,
    body_len: usize,
}

/// Serves requests on one connection until it becomes a subscriber or closes.
async fn connection(mut stream: TcpStream, channels: Channels) {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let (request, head_len) = loop {
            match parse(&buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) if buf.len() < MAX_REQUEST => {}
                _ => return,
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        buf.advance(head_len);
        if request.upgrade {
            let Some(key) = request.key else { return };
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            if stream.write_all(answer.as_bytes()).await.is_ok() {
                lock(&channels).entry(request.cid).or_default().push(stream);
            }
            return;
        }
        let answer = if request.publish && request.body_len <= MAX_REQUEST {
            while buf.len() < request.body_len {
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            let body = buf.split_to(request.body_len);
            let sent = fan_out(&channels, &request.cid, &text_frame(&body));
            let json = format!("{{\"subscribers\":{sent}}}");
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        };
        if stream.write_all(answer.as_bytes()).await.is_err() || !request.publish {
            return;
        }
    }
}

/// Parses a request head: the request and the head's length, or `None` when incomplete.
fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf)? else {
        return Ok(None);
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let cid = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("cid="))
        .unwrap_or("")
        .to_string();
    let request = Request {
        upgrade: header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        publish: req.method == Some("POST") && path.trim_end_matches('/') == "/publish",
        key: header("sec-websocket-key"),
        body_len: header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0),
        cid,
    };
    Ok(Some((request, len)))
}

/// One unmasked, final text frame holding `payload`.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        0..=125 => frame.push(payload.len() as u8),
        126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// Writes `frame` to every subscriber of `cid` with one non-blocking write each, dropping those
/// that cannot take it whole. Returns how many took it.
fn fan_out(channels: &Channels, cid: &str, frame: &[u8]) -> usize {
    let mut channels = lock(channels);
    let Some(sockets) = channels.get_mut(cid) else {
        return 0;
    };
    sockets.retain(|socket| matches!(socket.try_write(frame), Ok(n) if n == frame.len()));
    sockets.len()
}

fn lock(channels: &Channels) -> std::sync::MutexGuard<'_, HashMap<String, Vec<TcpStream>>> {
    channels.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn frames_every_length_class() {
        assert_eq!(text_frame(b"hi"), b"\x81\x02hi");
        let medium = text_frame(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
        let large = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(large.len(), 70_010);
    }

    #[test]
    fn parses_requests() {
        let raw = b"POST /publish?cid=b1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let (r, len) = parse(raw).unwrap().unwrap();
        assert!(r.publish && !r.upgrade);
        assert_eq!((r.cid.as_str(), r.body_len, len), ("b1", 5, raw.len() - 5));
        assert!(parse(b"GET / HTTP/1.1\r\n").unwrap().is_none());
    }

    #[tokio::test]
    async fn fans_out_to_websocket_clients() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let channels: Channels = Arc::default();
        let accept_channels = Arc::clone(&channels);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(connection(stream, Arc::clone(&accept_channels)));
            }
        });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/?cid=c"))
            .await
            .unwrap();
        let mut publisher = TcpStream::connect(addr).await.unwrap();
        // Publish until the subscription is registered (the handshake answer may come first).
        let mut answer = String::new();
        for _ in 0..100 {
            publisher
                .write_all(b"POST /publish?cid=c HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
                .await
                .unwrap();
            let mut buf = [0u8; 256];
            let n = publisher.read(&mut buf).await.unwrap();
            answer = String::from_utf8_lossy(&buf[..n]).to_string();
            if answer.ends_with("{\"subscribers\":1}") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(answer.ends_with("{\"subscribers\":1}"), "{answer}");
        let message = ws.next().await.unwrap().unwrap();
        assert_eq!(message.into_text().unwrap().as_str(), "hi");
    }
}
