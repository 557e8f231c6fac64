//! Shared helpers for the integration tests: a real server on port 0, an HTTP client, an SSE
//! reader and a WebSocket client. Nothing here stands in for the server; every helper talks
//! to it over real sockets.
#![allow(dead_code, clippy::unwrap_used)]

pub mod process;
pub mod raw;

use std::time::Duration;

use futures_util::StreamExt;
use herald_server::{Config, RunningServer};
use serde_json::Value;

/// A server running in this process on a free loopback port.
pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub client: reqwest::Client,
}

/// Starts a server with the default settings.
pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// Starts a server with settings adjusted by `adjust`.
pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    adjust(&mut config);
    // Scale tests hold thousands of sockets; lift the soft limit to the hard one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let server = RunningServer::start(config).await.expect("server starts");
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    TestServer {
        server,
        base,
        client,
    }
}

impl TestServer {
    /// `http://127.0.0.1:PORT` + `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// `ws://127.0.0.1:PORT` + `path_and_query`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.server.local_addr(), path_and_query)
    }

    /// Publishes a text body to one channel; returns the `published[0]` object.
    pub async fn publish(&self, cid: &str, body: &str) -> Value {
        self.publish_as(cid, "text/plain", body.to_string()).await
    }

    /// Publishes a JSON body to one channel; returns the `published[0]` object.
    pub async fn publish_json(&self, cid: &str, body: &Value) -> Value {
        self.publish_as(cid, "application/json", body.to_string())
            .await
    }

    async fn publish_as(&self, cid: &str, content_type: &str, body: String) -> Value {
        let response = self
            .client
            .post(self.url(&format!("/publish?cid={cid}")))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "publish to {cid}");
        let value: Value = response.json().await.unwrap();
        value["published"][0].clone()
    }

    /// `GET /health` still answers 200: the server is serving.
    pub async fn assert_healthy(&self) {
        let response = self.client.get(self.url("/health")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Asserts that `response` is an error with `status` and a JSON `{"error": "…"}` body;
/// returns the error text.
pub async fn expect_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().expect("error field is a string");
    assert!(!error.is_empty());
    error.to_string()
}

/// One parsed Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
    /// True for a block that only carried comments.
    pub comment_only: bool,
}

/// Reads an SSE response incrementally and splits it into events (blank-line separated
/// blocks), as EventSource does.
pub struct SseReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next block, or None when the stream ends; panics after `timeout`.
    pub async fn next_block(&mut self, timeout: Duration) -> Option<SseEvent> {
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    return Some(parse_block(&block));
                }
                match self.stream.next().await {
                    Some(Ok(chunk)) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .expect("SSE block within timeout")
    }

    /// The next block that has data (skips keep-alive comments and id-only blocks).
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        loop {
            let block = self.next_block(timeout).await?;
            if !block.data.is_empty() {
                return Some(block);
            }
        }
    }
}

fn parse_block(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    let mut data_lines = Vec::new();
    let mut fields = 0;
    for line in block.lines() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        fields += 1;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => event.id = Some(value.to_string()),
            "event" => event.event = Some(value.to_string()),
            "data" => data_lines.push(value.to_string()),
            "retry" => event.retry = value.parse().ok(),
            _ => {}
        }
    }
    event.data = data_lines.join("\n");
    event.comment_only = fields == 0;
    event
}

/// The whole retained history of `cid` (up to 1,000 messages) as envelopes, oldest first.
pub async fn history(server: &TestServer, cid: &str) -> Vec<Value> {
    let response = server
        .client
        .get(server.url(&format!("/messages?cid={cid}&limit=1000")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Publishes from `publishers` tasks at once, each posting `each` text messages `p{p}-{i}`
/// to `cid` in turn; returns once every one has been answered `200`.
#[allow(dead_code)] // not every test binary races publishers
pub async fn race_publishers(server: &TestServer, cid: &str, publishers: u64, each: u64) {
    let url = server.url(&format!("/publish?cid={cid}"));
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let client = server.client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    let response = client.post(&url).body(format!("p{p}-{i}")).send().await;
                    assert_eq!(response.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Publishes `n` text messages `m1`… to `cid`; returns the channel's epoch.
pub async fn publish_n(server: &TestServer, cid: &str, n: usize) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        epoch = server.publish(cid, &format!("m{i}")).await["epoch"]
            .as_str()
            .unwrap()
            .to_string();
    }
    epoch
}

/// An epoch that is valid text but not `epoch`.
pub fn other_epoch(epoch: &str) -> &'static str {
    if epoch == "zz" {
        "yy"
    } else {
        "zz"
    }
}

/// The wall clock in milliseconds since the Unix epoch, as envelopes carry it.
pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// How many local subscribers the hub counts on `cid`.
pub fn subscribers(server: &TestServer, cid: &str) -> usize {
    server
        .server
        .app()
        .engine
        .hub()
        .subscriber_count(&cid.parse().unwrap())
}

/// Waits until the hub counts `n` local subscribers on `cid` (the server gives clients no
/// signal that a long poll is parked).
pub async fn wait_for_subscribers(server: &TestServer, cid: &str, n: usize) {
    let hub_count = || subscribers(server, cid);
    tokio::time::timeout(Duration::from_secs(10), async {
        while hub_count() != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{cid} never had {n} subscribers (has {})", hub_count()));
}

/// Waits until the server counts `n` open connections.
pub async fn wait_for_connections(server: &TestServer, n: usize) {
    let app = server.server.app();
    tokio::time::timeout(Duration::from_secs(10), async {
        while app.connections() != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never {n} connections (has {})", app.connections()));
}

/// The next text frame of a WebSocket client (plain or TLS) as JSON, pings and pongs
/// skipped; panics on any other frame, at the end of the stream or after `within`.
pub async fn ws_next_json<S>(ws: &mut S, within: Duration) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a frame in time")
}

/// A WebSocket client of the test server.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `n` WebSocket subscribers of `cid`, each past its `subscribed` frame, which goes to `check`
/// (100 handshakes at a time).
pub async fn connect_crowd(
    server: &TestServer,
    cid: &str,
    n: usize,
    check: impl Fn(&Value) + Copy,
) -> Vec<Ws> {
    let url = server.ws_url(&format!("/listen?cid={cid}"));
    futures_util::stream::iter(0..n)
        .map(|_| {
            let url = url.clone();
            async move {
                let connecting = tokio_tungstenite::connect_async(url.as_str());
                let (mut ws, _) = tokio::time::timeout(raw::STEP, connecting)
                    .await
                    .expect("handshake in time")
                    .unwrap();
                check(&ws_next_json(&mut ws, raw::STEP).await);
                ws
            }
        })
        .buffer_unordered(100)
        .collect()
        .await
}
