//! Raw sockets for tests that need exact control of the bytes sent and of the connection:
//! HTTP/1.1 requests written by hand (limits, timeouts, headers a client library would not
//! send, malformed input), a WebSocket client that frames by hand, and the bystander checks
//! every hostile-input case ends with (a well-behaved subscriber got every message, `/health`
//! is back to its baseline). One module for every suite, so there is one response parser and
//! one frame codec to trust.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{SseReader, TestServer};

/// How long any single expected event may take before a test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// One HTTP response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts a JSON error with `status` (content type exactly `application/json`); returns
    /// the error text.
    pub fn expect_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        self.json()["error"]
            .as_str()
            .expect("error text")
            .to_string()
    }

    /// The `{"error": …}` text of a JSON error response; panics on anything else.
    pub fn json_error(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "JSON error expected: {self:?}"
        );
        self.json()["error"]
            .as_str()
            .expect("error is a string")
            .to_string()
    }

    /// Asserts a JSON error response with `status` and a non-empty error text.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        let content_type = self.header("content-type").unwrap_or("");
        assert!(content_type.starts_with("application/json"), "{self:?}");
        let body = self.json();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
}

/// A `GET` request with `Host` and extra headers.
pub fn get(target: &str, addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    let mut text = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text
}

/// A text `POST /publish` of `body` to `cid` (keep-alive).
pub fn publish(cid: &str, body: &str, addr: SocketAddr) -> String {
    format!(
        "POST /publish?cid={cid} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one response (head, then a body by Content-Length) from `stream`, with what was
/// already read in `buf`; bytes after it stay in `buf`. None: the connection ended first.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<RawResponse> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !read_more(stream, buf).await {
            assert!(buf.is_empty(), "connection ended inside a response head");
            return None;
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
    while buf.len() < length {
        assert!(
            read_more(stream, buf).await,
            "connection ended inside a body"
        );
    }
    let body = buf.drain(..length).collect();
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Reads what arrives into `buf`; false at the end of the stream (or a reset).
pub async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Sends `request` on `stream` and reads the response (panics after 10 s or on EOF).
pub async fn roundtrip(stream: &mut TcpStream, buf: &mut Vec<u8>, request: &str) -> RawResponse {
    stream.write_all(request.as_bytes()).await.expect("send");
    tokio::time::timeout(Duration::from_secs(10), read_response(stream, buf))
        .await
        .expect("response within 10 s")
        .expect("a response before the connection closed")
}

/// One request on a new connection.
pub async fn once(addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    roundtrip(&mut stream, &mut Vec::new(), request).await
}

/// Waits until the server closes `stream` (end of stream or reset), discarding what it sends;
/// returns how long that took, or `None` if it is still open after `limit`.
pub async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

/// The test process' resident set size in KiB (server and clients together).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .expect("VmRSS in /proc/self/status")
}

/// What the server did with some raw bytes.
#[derive(Debug)]
pub struct Exchange {
    /// The responses, in order.
    pub responses: Vec<RawResponse>,
    /// Whether the server ended the connection afterwards.
    pub closed: bool,
}

/// Opens a connection, writes `bytes` (then half-closes if `eof`), and reads up to `expected`
/// responses; then checks whether the server closed the connection (within a short wait only
/// when it said `connection: close` or the request was cut off).
pub async fn exchange(addr: SocketAddr, bytes: &[u8], eof: bool, expected: usize) -> Exchange {
    tokio::time::timeout(STEP, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before it read everything (a 431 at the limit):
        // a failed write is part of what is being tested, not an error of the test.
        let _ = stream.write_all(bytes).await;
        if eof {
            let _ = stream.shutdown().await;
        }
        let mut buf = Vec::new();
        let mut responses = Vec::new();
        while responses.len() < expected {
            match read_response(&mut stream, &mut buf).await {
                Some(response) => responses.push(response),
                None => break,
            }
        }
        let says_close = responses.last().is_some_and(|r: &RawResponse| {
            r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        });
        let closed = if says_close || eof || responses.len() < expected {
            // The server must end the connection by itself.
            !read_more(&mut stream, &mut buf).await && buf.is_empty()
        } else {
            false
        };
        Exchange { responses, closed }
    })
    .await
    .expect("the server answered or closed in time")
}

// ---------------------------------------------------------------------------------------------
// Bystanders: the server keeps serving everyone else and releases what the abuse held
// ---------------------------------------------------------------------------------------------

/// `GET /health` as JSON.
pub async fn health(server: &TestServer) -> Value {
    let response = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls `/health` until `connections` is `expected`; fails after a few seconds.
pub async fn await_connections(server: &TestServer, expected: u64) {
    let started = Instant::now();
    loop {
        let now = health(server).await["connections"].as_u64().unwrap();
        if now == expected {
            return;
        }
        assert!(
            started.elapsed() < STEP,
            "/health reports {now} connections, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A well-behaved SSE subscriber connected throughout the abuse, and the messages published
/// to it meanwhile.
pub struct Bystander {
    cid: String,
    reader: SseReader,
    published: usize,
}

impl Bystander {
    /// Subscribes to `cid` (a cid without `:`) and waits until the hub counts it.
    pub async fn join(server: &TestServer, cid: &str) -> Self {
        let response = server
            .client
            .get(server.url(&format!("/listen?cid={cid}")))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        super::wait_for_subscribers(server, cid, 1).await;
        Self {
            cid: cid.to_string(),
            reader: SseReader::new(response),
            published: 0,
        }
    }

    /// Publishes the next message to the bystander's channel (between abuse cases).
    pub async fn publish(&mut self, server: &TestServer) {
        self.published += 1;
        let published = server
            .publish(&self.cid, &format!("m{}", self.published))
            .await;
        assert_eq!(published["subscribers"], 1, "the bystander is still there");
    }

    /// Asserts that the bystander received every message published to it, once, in order.
    pub async fn assert_received_everything(mut self) {
        for i in 1..=self.published {
            let event = self
                .reader
                .next_event(STEP)
                .await
                .expect("the stream is still open");
            let envelope: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(envelope["id"], i as u64, "{envelope}");
            assert_eq!(envelope["data"], format!("m{i}"), "{envelope}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket framing by hand
// ---------------------------------------------------------------------------------------------

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The RFC 6455 example key and its accept value.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The handshake headers of a valid WebSocket request.
pub const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
];

/// A WebSocket upgrade request for `target` with `headers` instead of the standard ones
/// when given.
pub fn upgrade_request(
    addr: SocketAddr,
    target: &str,
    headers: Option<&[(&str, &str)]>,
) -> Vec<u8> {
    get(target, addr, headers.unwrap_or(&UPGRADE_HEADERS)).into_bytes()
}

/// A client frame with the given first byte (FIN, RSV and opcode) and payload: masked (as
/// RFC 6455 requires of clients) unless `masked` is false.
pub fn encode_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | u8::try_from(n).unwrap()),
        n if n <= 0xFFFF => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&u64::try_from(n).unwrap().to_be_bytes());
        }
    }
    if masked {
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// A masked client frame with the given first byte (FIN, RSV and opcode) and payload.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(first, payload, true)
}

/// A masked client frame: `fin` and `opcode`.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, opcode, payload, true)
}

/// A client frame: `fin` and `opcode`, masked unless `masked` is false.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    encode_frame((u8::from(fin) << 7) | opcode, payload, masked)
}

/// A frame read from the server.
#[derive(Debug)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame with one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Parses one server frame (unmasked, as RFC 6455 requires) from the start of `buf`.
pub fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (length, mut at) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            let n = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            assert!(
                n >= 126,
                "length {n} not in the minimal form (RFC 6455 §5.2)"
            );
            (n, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(n);
            assert!(
                n > 0xFFFF,
                "length {n} not in the minimal form (RFC 6455 §5.2)"
            );
            (usize::try_from(n).unwrap(), 10)
        }
        n => (usize::from(n), 2),
    };
    if buf.len() < at + length {
        return None;
    }
    let payload = buf[at..at + length].to_vec();
    at += length;
    Some((
        RawFrame {
            fin: buf[0] & 0x80 != 0,
            opcode: buf[0] & 0x0F,
            payload,
        },
        at,
    ))
}

/// A WebSocket client that writes whatever bytes it is given and does nothing on its own,
/// over plain TCP or any other byte stream (TLS).
pub struct RawWs<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl RawWs {
    /// Handshakes on `target` and checks the `101`.
    pub async fn connect(server: &TestServer, target: &str) -> Self {
        let stream = TcpStream::connect(server.server.local_addr())
            .await
            .unwrap();
        Self::handshake(stream, server, target).await
    }

    /// A client on a connection whose handshake the test made itself; `read` holds the bytes
    /// read past the response head.
    pub fn after_handshake(stream: TcpStream, read: Vec<u8>) -> Self {
        Self { stream, buf: read }
    }

    /// The handshake on an already connected `stream`.
    pub async fn handshake(stream: TcpStream, server: &TestServer, target: &str) -> Self {
        Self::handshake_then(stream, server, target, &[]).await
    }

    /// The handshake, with `first_frames` written in the same `write` as the request.
    pub async fn handshake_then(
        stream: TcpStream,
        server: &TestServer,
        target: &str,
        first_frames: &[u8],
    ) -> Self {
        RawWs::handshake_over(stream, server.server.local_addr(), target, first_frames).await
    }

    /// Connects to `/listen?cid=CID` and consumes the `subscribed` frame.
    pub async fn subscribe(server: &TestServer, cid: &str) -> Self {
        let mut ws = Self::connect(server, &format!("/listen?cid={cid}")).await;
        let subscribed = ws.next_json().await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        ws
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    /// The handshake over `stream` (already connected to the server at `addr`), with
    /// `first_frames` written in the same `write` as the request.
    pub async fn handshake_over(
        mut stream: S,
        addr: SocketAddr,
        target: &str,
        first_frames: &[u8],
    ) -> Self {
        let mut request = upgrade_request(addr, target, None);
        request.extend_from_slice(first_frames);
        stream.write_all(&request).await.unwrap();
        Self::upgraded(stream, Vec::new()).await
    }

    /// Reads the `101` answering an upgrade request (with [`UPGRADE_HEADERS`]' key) already
    /// written to `stream`, and checks its accept key; `buf` holds bytes read from `stream`
    /// past earlier responses.
    pub async fn upgraded(mut stream: S, mut buf: Vec<u8>) -> Self {
        let response = tokio::time::timeout(STEP, read_response(&mut stream, &mut buf))
            .await
            .expect("handshake response in time")
            .expect("connection closed before the response head");
        assert_eq!(response.status, 101, "{response:?}");
        assert_eq!(response.header("sec-websocket-accept"), Some(ACCEPT));
        Self { stream, buf }
    }

    /// Writes `bytes` as they are; a write the server refused (it closed) is ignored.
    pub async fn send(&mut self, bytes: &[u8]) {
        if self.stream.write_all(bytes).await.is_ok() {
            let _ = self.stream.flush().await;
        }
    }

    /// Writes `bytes` as they are; the write must succeed.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Writes one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_frame_masked(fin, opcode, payload, true).await;
    }

    /// Writes one frame, masked or not.
    pub async fn send_frame_masked(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        self.send_bytes(&client_frame(fin, opcode, payload, masked))
            .await;
    }

    /// The next frame, or None when the connection ended (cleanly, by reset, or inside a
    /// frame). Panics after `timeout`.
    pub async fn read_frame_within(&mut self, timeout: Duration) -> Option<RawFrame> {
        tokio::time::timeout(timeout, async {
            loop {
                if let Some((frame, used)) = parse_frame(&self.buf) {
                    self.buf.drain(..used);
                    return Some(frame);
                }
                if !read_more(&mut self.stream, &mut self.buf).await {
                    return None;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("a frame or the end of the connection within {timeout:?}"))
    }

    /// The next frame, or None when the connection ended.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        self.read_frame_within(STEP).await
    }

    /// The next text frame as JSON (pings and pongs skipped); it must be a whole message.
    pub async fn next_json(&mut self) -> Value {
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < STEP, "no text frame within {STEP:?}");
            let frame = self.read_frame().await.expect("a frame, not the end");
            match frame.opcode {
                OP_PING | OP_PONG => {}
                OP_TEXT => {
                    assert!(frame.fin);
                    return serde_json::from_slice(&frame.payload).unwrap();
                }
                _ => panic!("expected a text frame, got {frame:?}"),
            }
        }
    }

    /// Reads until the server closes, without answering; returns the close code (None: ended
    /// without a close frame). Panics on text frames.
    pub async fn expect_closed(&mut self) -> Option<u16> {
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < STEP, "the connection was not closed");
            match self.read_frame().await {
                None => return None,
                Some(frame) if frame.opcode == OP_CLOSE => return frame.close_code(),
                Some(frame) if matches!(frame.opcode, OP_PING | OP_PONG) => {}
                Some(frame) => panic!("expected a close, got {frame:?}"),
            }
        }
    }

    /// Reads until the server closes; the close code it sent, and whether it then ended the
    /// TCP connection (it must not wait for the peer forever). None: no close frame.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.read_frame().await {
                None => return None,
                Some(frame) if frame.opcode == OP_CLOSE => {
                    let code = frame.close_code();
                    // Answer as a client does, then the server ends the connection.
                    self.send(&masked_frame(
                        0x88,
                        &frame.payload[..frame.payload.len().min(2)],
                    ))
                    .await;
                    assert!(
                        self.read_frame().await.is_none(),
                        "the server ends the connection after the closing handshake"
                    );
                    return code;
                }
                Some(frame) if matches!(frame.opcode, OP_PING | OP_PONG | OP_TEXT) => {}
                Some(frame) => panic!("expected a close, got {frame:?}"),
            }
        }
    }
}
