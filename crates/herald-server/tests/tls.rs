//! TLS on the listener (docs/protocol.md, "TLS"): every transport over HTTPS / WSS with a
//! self-signed certificate generated per test (rcgen), clients that never finish the handshake
//! or speak plain HTTP to the TLS port, and the startup errors for unusable settings. Clients
//! are real: hyper's HTTP/1 client and tokio-tungstenite over tokio-rustls streams that trust
//! only the test certificate, and `common::raw::RawWs` over TLS for peers that misbehave. (reqwest's
//! rustls backend is not used: without a built-in crypto provider it would make every plain
//! `reqwest::Client` in the other test files panic.)
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_server::{Config, RunningServer};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::process::{Herald, BIN};
use common::raw::{RawWs, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use common::{wait_for_subscribers, ws_next_json, TestServer};

/// How long any single expected event may take before a test fails.
const STEP: Duration = Duration::from_secs(10);

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;
type Wss = WebSocketStream<ClientTls>;

// ---------------------------------------------------------------------------------------------
// Certificates and clients
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate for `localhost` in PEM files (test-only, made per test).
struct TestCert {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn test_cert() -> TestCert {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    TestCert {
        dir,
        cert,
        key,
        der: generated.cert.der().clone(),
    }
}

/// A client configuration that trusts only `cert` and offers ALPN `http/1.1`.
fn client_config(cert: &TestCert) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A server speaking TLS, with a connector that trusts its certificate.
struct TlsServer {
    inner: TestServer,
    connector: TlsConnector,
    _cert: TestCert,
}

/// Opens a TLS connection to `addr` as `localhost`.
async fn tls_connect(connector: &TlsConnector, addr: SocketAddr) -> ClientTls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .unwrap()
}

/// Sends one HTTPS request on a new connection; returns the response with its body unread.
async fn https(
    connector: &TlsConnector,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response<Incoming> {
    let stream = tls_connect(connector, addr).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    tokio::time::timeout(STEP, sender.send_request(request))
        .await
        .expect("a response in time")
        .unwrap()
}

/// The whole body of `response`.
async fn body_bytes(response: http::Response<Incoming>) -> Bytes {
    tokio::time::timeout(STEP, response.into_body().collect())
        .await
        .expect("the body in time")
        .unwrap()
        .to_bytes()
}

async fn body_json(response: http::Response<Incoming>) -> Value {
    serde_json::from_slice(&body_bytes(response).await).unwrap()
}

async fn start_tls(adjust: impl FnOnce(&mut Config)) -> TlsServer {
    let cert = test_cert();
    let inner = common::start_with(|config| {
        config.tls_cert = Some(cert.cert.clone());
        config.tls_key = Some(cert.key.clone());
        adjust(config);
    })
    .await;
    let connector = TlsConnector::from(Arc::new(client_config(&cert)));
    TlsServer {
        inner,
        connector,
        _cert: cert,
    }
}

impl TlsServer {
    fn addr(&self) -> SocketAddr {
        self.inner.server.local_addr()
    }

    /// `GET target` over HTTPS with `headers`.
    async fn get(&self, target: &str, headers: &[(&str, &str)]) -> http::Response<Incoming> {
        https(&self.connector, self.addr(), "GET", target, headers, "").await
    }

    /// Publishes a text body over HTTPS; returns the `published[0]` object.
    async fn publish(&self, cid: &str, body: &str) -> Value {
        let target = format!("/publish?cid={cid}");
        let response = https(&self.connector, self.addr(), "POST", &target, &[], body).await;
        assert_eq!(response.status(), 200, "publish to {cid}");
        body_json(response).await["published"][0].clone()
    }

    /// A TLS connection to the server (handshake complete).
    async fn tls_connect(&self) -> ClientTls {
        tls_connect(&self.connector, self.addr()).await
    }

    /// A raw WSS client that has completed the handshake for `target`.
    async fn raw_ws(&self, target: &str) -> RawWs<ClientTls> {
        RawWs::handshake_over(self.tls_connect().await, self.addr(), target, &[]).await
    }

    /// A `wss://` WebSocket to `path_and_query`.
    async fn wss(&self, path_and_query: &str) -> Wss {
        let stream = self.tls_connect().await;
        let url = format!("wss://localhost:{}{path_and_query}", self.addr().port());
        let (ws, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        assert_eq!(response.status(), 101);
        ws
    }

    async fn assert_healthy(&self) {
        let response = self.get("/health", &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(body_json(response).await["status"], "ok");
    }
}

async fn send_json(ws: &mut Wss, value: &Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// Reads until the close frame; returns its code.
async fn close_code(ws: &mut Wss) -> Option<u16> {
    tokio::time::timeout(STEP, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame in time")
}

// ---------------------------------------------------------------------------------------------
// HTTP transports over TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn https_publish_poll_and_health() {
    let server = start_tls(|_| {}).await;
    server.assert_healthy().await;
    let published = server.publish("secure", "hello").await;
    assert_eq!(published["id"], 1);
    let response = server.get("/messages?cid=secure&since=0", &[]).await;
    assert_eq!(response.status(), 200);
    let messages = body_json(response).await;
    assert_eq!(messages.as_array().unwrap().len(), 1);
    assert_eq!(messages[0]["data"], "hello");
    assert_eq!(messages[0]["epoch"], published["epoch"]);
    // Errors keep their JSON form over TLS.
    let response = server.get("/messages?cid=bad%20cid", &[]).await;
    assert_eq!(response.status(), 400);
    assert!(body_json(response).await["error"].is_string());
}

#[tokio::test]
async fn sse_over_https_receives_a_published_message() {
    let server = start_tls(|_| {}).await;
    let response = server
        .get("/listen?cid=feed", &[("accept", "text/event-stream")])
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = String::new();
    // The prelude: `retry:` and the starting `id:`.
    let prelude = next_sse_block(&mut body, &mut text).await;
    assert!(prelude.contains("retry:"), "{prelude}");
    wait_for_subscribers(&server.inner, "feed", 1).await;
    server.publish("feed", "over tls").await;
    let event = loop {
        let block = next_sse_block(&mut body, &mut text).await;
        if block.contains("data:") {
            break block;
        }
    };
    let data = event
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .unwrap();
    let envelope: Value = serde_json::from_str(data).unwrap();
    assert_eq!(envelope["data"], "over tls");
    let id = format!("id: {}:1", envelope["epoch"].as_str().unwrap());
    assert!(event.lines().any(|line| line == id), "{event}");
}

#[tokio::test]
async fn iframe_over_https_receives_a_published_message() {
    let server = start_tls(|_| {}).await;
    let response = server
        .get("/listen?cid=frame&transport=iframe&callback=cb", &[])
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let mut body = response.into_body();
    wait_for_subscribers(&server.inner, "frame", 1).await;
    server.publish("frame", "framed").await;
    let mut page = String::new();
    let script = tokio::time::timeout(STEP, async {
        loop {
            if let Some(start) = page.find("<script>parent.cb(") {
                if let Some(end) = page[start..].find("</script>") {
                    return page[start..start + end].to_string();
                }
            }
            let frame = body.frame().await.expect("the page goes on").unwrap();
            if let Ok(data) = frame.into_data() {
                page.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    })
    .await
    .expect("a script in time");
    let json = script
        .strip_prefix("<script>parent.cb(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap();
    let envelope: Value = serde_json::from_str(json).unwrap();
    assert_eq!(envelope["data"], "framed");
    assert!(page.len() >= 2048, "padding came first");
}

/// The next blank-line-terminated SSE block from `body` (`text` keeps what follows it).
async fn next_sse_block(body: &mut Incoming, text: &mut String) -> String {
    tokio::time::timeout(STEP, async {
        loop {
            if let Some(end) = text.find("\n\n") {
                return text.drain(..end + 2).collect();
            }
            let frame = body.frame().await.expect("the stream goes on").unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    })
    .await
    .expect("an SSE block in time")
}

#[tokio::test]
async fn long_poll_over_https_is_answered_by_a_publish() {
    let server = start_tls(|_| {}).await;
    let connector = server.connector.clone();
    let addr = server.addr();
    let waiting = tokio::spawn(async move {
        let target = "/listen?cid=lp&transport=longpoll";
        https(&connector, addr, "GET", target, &[], "").await
    });
    wait_for_subscribers(&server.inner, "lp", 1).await;
    server.publish("lp", "wake").await;
    let response = tokio::time::timeout(STEP, waiting)
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-herald-cursor"));
    let messages = body_json(response).await;
    assert_eq!(messages.as_array().unwrap().len(), 1);
    assert_eq!(messages[0]["data"], "wake");
}

// ---------------------------------------------------------------------------------------------
// WebSocket over TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wss_gets_backlog_live_messages_and_command_replies() {
    let server = start_tls(|c| c.client_publish = true).await;
    for i in 1..=3 {
        server.publish("room", &format!("old{i}")).await;
    }
    let mut ws = server.wss("/listen?cid=room&since=0").await;
    assert_eq!(
        ws.get_ref().get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN http/1.1"
    );
    let subscribed = ws_next_json(&mut ws, STEP).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["id"], 0);
    for i in 1..=3 {
        let envelope = ws_next_json(&mut ws, STEP).await;
        assert_eq!(envelope["id"], i);
        assert_eq!(envelope["data"], format!("old{i}"));
    }
    // Live messages, many in a row (each goes through the outbox and the connection's task).
    for i in 4..=200 {
        server.publish("room", &format!("live{i}")).await;
    }
    for i in 4..=200 {
        let envelope = ws_next_json(&mut ws, STEP).await;
        assert_eq!(envelope["id"], i);
        assert_eq!(envelope["data"], format!("live{i}"));
    }

    // Commands and their replies.
    send_json(&mut ws, &json!({"type": "ping", "ref": 7})).await;
    assert_eq!(
        ws_next_json(&mut ws, STEP).await,
        json!({"type": "pong", "ref": 7})
    );
    send_json(&mut ws, &json!({"type": "subscribe", "cid": "other"})).await;
    let reply = ws_next_json(&mut ws, STEP).await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["cid"], "other");
    send_json(
        &mut ws,
        &json!({"type": "publish", "cid": "other", "data": {"n": 1}}),
    )
    .await;
    // The reply and the envelope of our own publish, in either order.
    let (a, b) = (
        ws_next_json(&mut ws, STEP).await,
        ws_next_json(&mut ws, STEP).await,
    );
    let (reply, envelope) = if a["type"] == "published" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(reply["type"], "published");
    assert_eq!(envelope["data"], json!({"n": 1}));
    send_json(&mut ws, &json!({"type": "nonsense"})).await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "error");

    // A second subscriber on the same channel: both get the message.
    let mut second = server.wss("/listen?cid=room").await;
    assert_eq!(ws_next_json(&mut second, STEP).await["type"], "subscribed");
    server.publish("room", "both").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "both");
    assert_eq!(ws_next_json(&mut second, STEP).await["data"], "both");

    ws.close(None).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1000), "close echoed");
}

#[tokio::test]
async fn wss_answers_pings_and_echoes_a_close() {
    let server = start_tls(|_| {}).await;
    let mut raw = server.raw_ws("/listen?cid=pp").await;
    assert_eq!(raw.next_json().await["type"], "subscribed");

    raw.send_frame(true, OP_PING, b"are you there").await;
    let pong = raw.read_frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload),
        (OP_PONG, b"are you there".to_vec())
    );

    raw.send_frame(true, OP_CLOSE, &1000u16.to_be_bytes()).await;
    let close = raw.read_frame().await.unwrap();
    assert_eq!(close.opcode, OP_CLOSE);
    assert_eq!(close.close_code(), Some(1000));
    assert!(raw.read_frame().await.is_none(), "then the connection ends");
    server.assert_healthy().await;
}

#[tokio::test]
async fn wss_peer_that_never_answers_pings_is_closed_with_1008() {
    let interval = Duration::from_millis(200);
    let server = start_tls(|c| c.ws_ping_interval = interval).await;
    let mut deaf = server.raw_ws("/listen?cid=deaf").await;
    let started = Instant::now();
    let mut pings = 0;
    let code = loop {
        let frame = deaf.read_frame().await.expect("a close before the end");
        match frame.opcode {
            OP_TEXT => {}
            OP_PING => pings += 1,
            OP_CLOSE => break frame.close_code(),
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert!(pings >= 1, "pinged first");
    assert_eq!(code, Some(1008));
    assert!(started.elapsed() < interval * 5 + Duration::from_secs(1));
    assert!(
        deaf.read_frame().await.is_none(),
        "then the connection ends"
    );

    // A peer that answers stays: tungstenite answers each ping while it reads.
    let mut alive = server.wss("/listen?cid=alive").await;
    assert_eq!(ws_next_json(&mut alive, STEP).await["type"], "subscribed");
    let mut pings = 0;
    while pings < 4 {
        match tokio::time::timeout(STEP, alive.next())
            .await
            .expect("a ping in time")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected pings, got {other:?}"),
        }
    }
    server.publish("alive", "still here").await;
    assert_eq!(ws_next_json(&mut alive, STEP).await["data"], "still here");
}

#[tokio::test]
async fn wss_slow_consumer_is_closed_with_4008() {
    const MESSAGES: u64 = 400;
    let server = start_tls(|c| {
        c.outbox_capacity = 8;
        c.history_size = 1_000;
    })
    .await;
    let body = |i: u64| format!("{i:05}:{}", "z".repeat(60_000));
    let mut laggard = server.wss("/listen?cid=flood").await;
    assert_eq!(ws_next_json(&mut laggard, STEP).await["type"], "subscribed");
    // Far more than the socket buffers hold, while the laggard does not read.
    for i in 1..=MESSAGES {
        assert_eq!(server.publish("flood", &body(i)).await["id"], i);
    }
    let mut received = 0u64;
    let code = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match laggard.next().await {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    received += 1;
                    assert_eq!(v["id"], received, "in order, without holes");
                }
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("ended without a close: {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(4008));
    assert!(received < MESSAGES);
    // Publishing went on, and the server still serves TLS clients.
    server.assert_healthy().await;
}

#[tokio::test]
async fn shutdown_closes_wss_with_1001() {
    let server = start_tls(|_| {}).await;
    let mut ws = server.wss("/listen?cid=bye").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
    let TlsServer { inner, .. } = server;
    let shutdown = tokio::spawn(inner.server.shutdown());
    assert_eq!(close_code(&mut ws).await, Some(1001));
    drop(ws);
    tokio::time::timeout(STEP, shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Clients that do not speak TLS, or never finish
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_400_and_others_are_unaffected() {
    let server = start_tls(|_| {}).await;
    let mut ws = server.wss("/listen?cid=calm").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");

    let mut plain = TcpStream::connect(server.addr()).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, plain.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(body["error"].as_str().unwrap().contains("TLS"), "{body}");

    // Bytes that are neither TLS nor HTTP: closed too.
    let mut junk = TcpStream::connect(server.addr()).await.unwrap();
    junk.write_all(&[0x00, 0xff, 0x13, 0x37]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, junk.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .ok();

    // A TLS record header followed by garbage: the handshake fails, the socket closes.
    let mut broken = TcpStream::connect(server.addr()).await.unwrap();
    broken
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, broken.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .ok();

    // Everyone else is served as before.
    server.publish("calm", "undisturbed").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "undisturbed");
    server.assert_healthy().await;
}

#[tokio::test]
async fn a_client_that_never_completes_the_handshake_is_dropped_after_the_timeout() {
    let limit = Duration::from_millis(300);
    let server = start_tls(|c| c.tls_handshake_timeout = limit).await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    // Half a ClientHello: a record header that promises more than ever comes.
    let mut partial = TcpStream::connect(server.addr()).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();

    for stream in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(STEP, stream.read(&mut buf))
            .await
            .expect("dropped in time");
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    }
    assert!(
        started.elapsed() >= limit,
        "dropped after {:?}, before the timeout",
        started.elapsed()
    );
    // Their connection slots are released.
    common::wait_for_connections(&server.inner, 0).await;
    server.assert_healthy().await;
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

async fn start_error(cert: PathBuf, key: PathBuf) -> String {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..Config::default()
    };
    match RunningServer::start(config).await {
        Ok(_) => panic!("the server started with unusable TLS files"),
        Err(error) => {
            assert!(
                matches!(error, herald_server::StartError::Tls(_)),
                "{error:?}"
            );
            assert!(error.is_configuration());
            error.to_string()
        }
    }
}

#[tokio::test]
async fn unusable_certificate_or_key_files_are_startup_errors_naming_the_file() {
    let good = test_cert();
    let other = test_cert();
    let missing = good.dir.path().join("missing.pem");
    let garbled = good.dir.path().join("garbled.pem");
    std::fs::write(
        &garbled,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    )
    .unwrap();
    let empty = good.dir.path().join("empty.pem");
    std::fs::write(&empty, "just some text\n").unwrap();

    let error = start_error(missing.clone(), good.key.clone()).await;
    assert!(error.contains(missing.to_str().unwrap()), "{error}");
    assert!(error.contains("certificate"), "{error}");

    let error = start_error(garbled.clone(), good.key.clone()).await;
    assert!(error.contains(garbled.to_str().unwrap()), "{error}");

    let error = start_error(empty.clone(), good.key.clone()).await;
    assert!(error.contains(empty.to_str().unwrap()), "{error}");

    let error = start_error(good.cert.clone(), missing.clone()).await;
    assert!(error.contains(missing.to_str().unwrap()), "{error}");
    assert!(error.contains("key"), "{error}");

    // A certificate where the key belongs: no private key in it.
    let error = start_error(good.cert.clone(), good.cert.clone()).await;
    assert!(error.contains("key file"), "{error}");

    // A key that does not belong to the certificate.
    let error = start_error(good.cert.clone(), other.key.clone()).await;
    assert!(error.contains(good.cert.to_str().unwrap()), "{error}");
    assert!(error.contains(other.key.to_str().unwrap()), "{error}");
}

#[test]
fn only_one_of_cert_and_key_is_a_configuration_error() {
    let cert = test_cert();
    for (flag, value, names) in [
        ("--tls-cert", &cert.cert, "tls_key"),
        ("--tls-key", &cert.key, "tls_cert"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", flag])
            .arg(value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} alone");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(names), "{stderr}");
        assert!(stderr.contains("both or neither"), "{stderr}");
    }
}

#[test]
fn the_binary_serves_https_and_logs_that_tls_is_on() {
    let cert = test_cert();
    let (cert_path, key_path) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let herald = Herald::spawn(
        &[],
        &[("HERALD_TLS_CERT", cert_path), ("HERALD_TLS_KEY", key_path)],
    );
    assert!(
        herald
            .startup_log
            .iter()
            .any(|line| line.contains("TLS is on")),
        "the startup log says TLS is on: {:?}",
        herald.startup_log
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let connector = TlsConnector::from(Arc::new(client_config(&cert)));
    let status = runtime.block_on(async {
        https(&connector, herald.addr(), "GET", "/health", &[], "")
            .await
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
}
