//! Limits over real sockets: connection floods (total and per IP), slowloris and idle
//! keep-alive connections, header size and count, URL length, the WebSocket client publish
//! rate and the history memory bound. Each limit answers with its documented status or close
//! code, and while it is being hit the server keeps delivering every message to a subscriber
//! that stays within the limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{self, RawResponse};
use common::{ws_next_json, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const STEP: Duration = Duration::from_secs(5);

async fn ws_subscribe(server: &TestServer, cid: &str) -> Ws {
    let (mut ws, _) = connect_async(server.ws_url(&format!("/listen?cid={cid}")))
        .await
        .unwrap();
    let subscribed = ws_next_json(&mut ws, STEP).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    ws
}

/// The close code the server ends `ws` with, skipping any frames before it.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    tokio::time::timeout(STEP, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("closed in time")
}

/// Asserts that `ws` receives exactly the text messages `m1..=mN` of `cid`, in order.
async fn expect_messages(ws: &mut Ws, cid: &str, n: usize) {
    for i in 1..=n {
        let envelope = ws_next_json(ws, STEP).await;
        assert_eq!(envelope["cid"], cid, "{envelope}");
        assert_eq!(envelope["data"], format!("m{i}"), "{envelope}");
    }
}

/// A connection from another loopback address (127.0.0.2), so per-IP limits can be observed.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A keep-alive publisher on its own raw connection.
struct Publisher {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: SocketAddr,
    sent: usize,
}

impl Publisher {
    async fn connect(stream: TcpStream, addr: SocketAddr) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            addr,
            sent: 0,
        }
    }

    /// Publishes the next `m{n}` to `cid` and checks the 200.
    async fn next(&mut self, cid: &str) {
        self.sent += 1;
        let body = format!("m{}", self.sent);
        let response = raw::roundtrip(
            &mut self.stream,
            &mut self.buf,
            &raw::publish(cid, &body, self.addr),
        )
        .await;
        assert_eq!(response.status, 200, "{response:?}");
    }
}

#[tokio::test]
async fn a_connection_flood_beyond_max_connections_gets_503_and_others_are_served() {
    let server = common::start_with(|c| c.max_connections = Some(40)).await;
    let addr = server.server.local_addr();
    let rss_before = raw::rss_kib();
    let mut ws = ws_subscribe(&server, "live").await;
    let mut publisher = Publisher::connect(TcpStream::connect(addr).await.unwrap(), addr).await;
    publisher.next("live").await;
    // Fill the server up with idle connections.
    let mut idle = Vec::new();
    for _ in 0..38 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    common::wait_for_connections(&server, 40).await;

    // The flood: every extra connection is answered 503 with a JSON error and closed, while
    // the subscriber keeps getting every message.
    for i in 0..300 {
        let response = raw::once(addr, &raw::get("/health", addr, &[])).await;
        let error = response.expect_error(503);
        assert!(error.contains("at most 40 connections"), "{error}");
        assert_eq!(response.header("connection"), Some("close"));
        if i % 30 == 0 {
            publisher.next("live").await;
        }
    }
    expect_messages(&mut ws, "live", publisher.sent).await;

    // Closing connections frees their slots: the server accepts again, and its gauges are
    // back where they were.
    drop(idle);
    common::wait_for_connections(&server, 2).await;
    server.assert_healthy().await;
    let rss_after = raw::rss_kib();
    // RSS of this process (server and clients together, allocator caches included): a few
    // hundred refused connections must not leave more than a few MiB behind.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[tokio::test]
async fn a_flood_from_one_address_gets_429_and_other_addresses_are_served() {
    let server = common::start_with(|c| c.max_connections_per_ip = 10).await;
    let addr = server.server.local_addr();
    // The WebSocket keeps its slot of 127.0.0.1 after the upgrade.
    let mut ws = ws_subscribe(&server, "live").await;
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    common::wait_for_connections(&server, 10).await;
    // Another address is not affected: it publishes during the flood.
    let mut publisher = Publisher::connect(connect_from("127.0.0.2", addr).await, addr).await;
    for i in 0..200 {
        let response = raw::once(addr, &raw::get("/health", addr, &[])).await;
        let error = response.expect_error(429);
        assert!(error.contains("at most 10"), "{error}");
        if i % 20 == 0 {
            publisher.next("live").await;
        }
    }
    expect_messages(&mut ws, "live", publisher.sent).await;
    // The WebSocket counts until it closes: with it gone, one more connection is admitted.
    drop(ws);
    common::wait_for_connections(&server, 10).await;
    let response = raw::once(addr, &raw::get("/health", addr, &[])).await;
    assert_eq!(response.status, 200, "{response:?}");
    drop(held);
    common::wait_for_connections(&server, 1).await;
}

#[tokio::test]
async fn slowloris_connections_are_closed_after_the_header_read_timeout() {
    let server = common::start_with(|c| c.header_read_timeout = Duration::from_millis(300)).await;
    let addr = server.server.local_addr();
    let mut ws = ws_subscribe(&server, "live").await;

    // Many clients dribble one header byte every 50 ms; one sends nothing at all.
    let mut dribblers = Vec::new();
    for _ in 0..50 {
        dribblers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let start = std::time::Instant::now();
            stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
            for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if stream.write_all(&[*byte]).await.is_err() {
                    return start.elapsed();
                }
            }
            panic!(
                "the server let a client dribble headers for {:?}",
                start.elapsed()
            );
        }));
    }
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Meanwhile publishing and delivery go on.
    let mut publisher = Publisher::connect(TcpStream::connect(addr).await.unwrap(), addr).await;
    for _ in 1..=5 {
        publisher.next("live").await;
    }
    expect_messages(&mut ws, "live", 5).await;
    drop(publisher);
    for dribbler in dribblers {
        let elapsed = dribbler.await.unwrap();
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }
    let closed = raw::wait_closed(&mut silent, Duration::from_secs(3)).await;
    assert!(
        closed.is_some(),
        "a connection that never sends a request is closed"
    );
    common::wait_for_connections(&server, 1).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let server = common::start_with(|c| {
        c.header_read_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let addr = server.server.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let request = raw::get("/health", addr, &[]);
    assert_eq!(
        raw::roundtrip(&mut stream, &mut buf, &request).await.status,
        200
    );
    // Longer than the header-read timeout, shorter than the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        raw::roundtrip(&mut stream, &mut buf, &request).await.status,
        200
    );
    let closed = raw::wait_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("closed after the idle timeout");
    assert!(
        closed >= Duration::from_millis(1000),
        "closed too early: {closed:?}"
    );
}

#[tokio::test]
async fn a_request_in_flight_is_not_idle() {
    let server = common::start_with(|c| {
        c.idle_timeout = Duration::from_millis(200);
        c.header_read_timeout = Duration::from_millis(200);
        c.longpoll_timeout = Duration::from_millis(800);
    })
    .await;
    let addr = server.server.local_addr();
    let started = std::time::Instant::now();
    let response = raw::once(addr, &raw::get("/listen?cid=wait", addr, &[])).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"[]");
    // It was held for the whole long-poll timeout, four times the idle timeout.
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(750),
        "answered after {held:?}"
    );
}

#[tokio::test]
async fn oversized_heads_are_431_and_long_urls_414() {
    let server = common::start_with(|c| {
        c.max_header_size = 4096;
        c.max_headers = 20;
        c.max_url_length = 1024;
    })
    .await;
    let addr = server.server.local_addr();

    let big = "a".repeat(5000);
    let response = raw::once(addr, &raw::get("/health", addr, &[("X-Big", &big)])).await;
    assert_eq!(response.status, 431, "{response:?}");

    let names: Vec<String> = (0..30).map(|i| format!("X-H{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let response = raw::once(addr, &raw::get("/health", addr, &many)).await;
    assert_eq!(response.status, 431, "{response:?}");

    // URL length counts path and query: exactly the limit is served, one byte more is 414.
    let base = "/messages?cid=a&pad=";
    let fits = format!("{base}{}", "x".repeat(1024 - base.len()));
    let response = raw::once(addr, &raw::get(&fits, addr, &[])).await;
    assert_eq!(response.status, 200, "{response:?}");
    let response = raw::once(addr, &raw::get(&format!("{fits}x"), addr, &[])).await;
    let error = response.expect_error(414);
    assert!(error.contains("1024"), "{error}");
    server.assert_healthy().await;
}

async fn ws_publish(ws: &mut Ws, cid: &str, n: usize) {
    let command = json!({"type": "publish", "cid": cid, "data": format!("m{n}"), "ref": n});
    ws.send(Message::text(command.to_string())).await.unwrap();
}

#[tokio::test]
async fn client_publishes_over_the_rate_get_error_frames_and_a_flood_is_closed_with_4029() {
    let server = common::start_with(|c| {
        c.client_publish = true;
        // One per second: the refill during this test's few milliseconds is negligible.
        c.client_publish_rate = 1;
    })
    .await;
    let mut subscriber = ws_subscribe(&server, "room").await;
    let mut publisher = ws_subscribe(&server, "other").await;

    // A burst of the rate is accepted, the next one is refused with an error naming the limit.
    ws_publish(&mut publisher, "room", 1).await;
    let reply = ws_next_json(&mut publisher, STEP).await;
    assert_eq!(reply["type"], "published", "{reply}");
    ws_publish(&mut publisher, "room", 2).await;
    let reply = ws_next_json(&mut publisher, STEP).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["ref"], 2);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("client-publish-rate"),
        "{reply}"
    );
    expect_messages(&mut subscriber, "room", 1).await;

    // Publishing on regardless is a flood: the connection is closed with 4029.
    for n in 3..=60 {
        if publisher
            .send(Message::text(
                json!({"type": "publish", "cid": "room", "data": "flood", "ref": n}).to_string(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut publisher).await, Some(4029));

    // The subscriber got only the accepted messages, and keeps getting the server's.
    let published = server.publish("room", "after").await;
    assert_eq!(published["id"], 2, "refused publishes took no ids");
    let envelope = ws_next_json(&mut subscriber, STEP).await;
    assert_eq!(envelope["data"], "after", "{envelope}");
}

#[tokio::test]
async fn history_memory_is_bounded_and_resumers_get_a_gap() {
    let server = common::start_with(|c| c.max_history_memory = 8 * 1024).await;
    server.publish("small", "keep me").await;
    let payload = "x".repeat(1000);
    for _ in 0..40 {
        server.publish("big", &payload).await;
    }
    let retained = |response: &reqwest::Response| response.headers().get("x-herald-gap").cloned();
    // The publishing channel paid for its own messages: it holds what fits, after a gap.
    let response = server
        .client
        .get(server.url("/messages?cid=big&since=0"))
        .send()
        .await
        .unwrap();
    let gap = retained(&response).expect("a gap header");
    let messages: Vec<Value> = response.json().await.unwrap();
    assert!(
        !messages.is_empty() && messages.len() < 8,
        "{}",
        messages.len()
    );
    assert_eq!(messages.last().unwrap()["id"], 40);
    let gap: Value = serde_json::from_slice(gap.as_bytes()).unwrap();
    assert_eq!(gap[0]["first"], messages[0]["id"]);
    // Another channel keeps its history.
    let response = server
        .client
        .get(server.url("/messages?cid=small&since=0"))
        .send()
        .await
        .unwrap();
    assert!(retained(&response).is_none());
    let messages: Vec<Value> = response.json().await.unwrap();
    assert_eq!(messages.len(), 1);
}

#[tokio::test]
async fn refusals_answer_raw_clients_without_reading_their_request() {
    // A refused client that sends a large request first still gets the JSON answer.
    let server = common::start_with(|c| c.max_connections = Some(1)).await;
    let addr = server.server.local_addr();
    let _hold = TcpStream::connect(addr).await.unwrap();
    common::wait_for_connections(&server, 1).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let padding = "p".repeat(16 * 1024);
    let request = raw::get("/health", addr, &[("X-Pad", &padding)]);
    let _ = stream.write_all(request.as_bytes()).await;
    let response: RawResponse = raw::read_response(&mut stream, &mut Vec::new())
        .await
        .expect("an answer");
    response.expect_error(503);
}
