//! The WebSocket transport against docs/protocol.md ("Subscribing: `GET /listen`" →
//! "WebSocket", "Gaps", "Slow consumers", "Operations"). Every test starts its own server on a
//! free port and talks to it over real sockets: tokio-tungstenite for well-behaved clients, a
//! raw TCP client (below) for malformed handshakes and frames and for peers that misbehave.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::{self, Message};

use common::raw::{
    client_frame, read_response, RawResponse, RawWs, ACCEPT, KEY, OP_CLOSE,
    OP_CONT as OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, UPGRADE_HEADERS,
};
use common::{connect_crowd, TestServer, Ws};

/// How long any single expected event may take before a test fails.
const STEP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// tokio-tungstenite helpers
// ---------------------------------------------------------------------------------------------

/// Opens a WebSocket to `path_and_query` and checks the `101`.
async fn connect(server: &TestServer, path_and_query: &str) -> Ws {
    let url = server.ws_url(path_and_query);
    let (ws, response) = tokio::time::timeout(STEP, connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("handshake with {url} within {STEP:?}"))
        .unwrap_or_else(|e| panic!("handshake with {url}: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// Connects and consumes the `subscribed` frame of a single channel; returns it too.
async fn subscribe(server: &TestServer, cid: &str) -> (Ws, Value) {
    let mut ws = connect(server, &format!("/listen?cid={cid}")).await;
    let subscribed = next_json(&mut ws).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["cid"], cid, "{subscribed}");
    (ws, subscribed)
}

/// The next frame of any kind (pings and pongs included); None when the stream ended.
async fn next_any(ws: &mut Ws) -> Option<Result<Message, tungstenite::Error>> {
    tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap_or_else(|_| panic!("a frame within {STEP:?}"))
}

/// The next text frame's text; pings and pongs are skipped. Panics on anything else.
async fn next_text(ws: &mut Ws) -> String {
    tokio::time::timeout(STEP, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a text frame within {STEP:?}"))
}

/// The next text frame, parsed as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
}

async fn send_json(ws: &mut Ws, value: &Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
}

/// Reads until the connection ends. Returns the text frames received before the end and the
/// close code (None when the connection ended without a close frame).
async fn read_until_close(ws: &mut Ws) -> (Vec<String>, Option<u16>) {
    let started = Instant::now();
    let mut texts = Vec::new();
    loop {
        assert!(
            started.elapsed() < STEP * 2,
            "the connection was not closed"
        );
        match next_any(ws).await {
            Some(Ok(Message::Text(text))) => texts.push(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                // Keep polling so tungstenite writes the close reply and sees the end, as a
                // well-behaved client does.
                while let Some(Ok(_)) = next_any(ws).await {}
                return (texts, Some(frame.map_or(1005, |f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (texts, None),
        }
    }
}

/// Asserts that the server closes `ws` with `code` and sends no text frame before that.
async fn expect_close(ws: &mut Ws, code: u16) {
    let (texts, got) = read_until_close(ws).await;
    assert!(
        texts.is_empty(),
        "unexpected frames before the close: {texts:?}"
    );
    assert_eq!(got, Some(code), "close code");
}

/// Asserts that no text frame arrives within `wait` (a short wait proves something did NOT
/// happen).
async fn assert_silent(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return,
            frame = ws.next() => match frame {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected silence, got {other:?}"),
            },
        }
    }
}

/// Sends a `ping` command with `reference` and expects exactly its `pong` as the next frame:
/// the connection is open and the command stream is in sync.
async fn ping_pong(ws: &mut Ws, reference: &Value) {
    send_json(ws, &json!({"type": "ping", "ref": reference})).await;
    let pong = next_json(ws).await;
    assert_eq!(pong, json!({"type": "pong", "ref": reference}));
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Asserts that `v` is exactly an envelope `{cid,id,epoch,data,time}` (no `type`, nothing else).
fn assert_envelope(v: &Value, cid: &str, id: u64, epoch: &str, data: &Value) {
    let object = v.as_object().unwrap_or_else(|| panic!("envelope {v}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["cid", "data", "epoch", "id", "time"], "{v}");
    assert_eq!(v["cid"], cid, "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["epoch"], epoch, "{v}");
    assert_eq!(&v["data"], data, "{v}");
    let time = v["time"].as_u64().unwrap_or_else(|| panic!("time {v}"));
    assert!(
        time.abs_diff(now_ms()) < 60_000,
        "time is the server clock in ms: {v}"
    );
}

/// Asserts that `v` is exactly `{"type":"subscribed","cid":cid,"epoch":…,"id":id}`; returns
/// the epoch.
fn assert_subscribed(v: &Value, cid: &str, id: u64) -> String {
    let object = v.as_object().unwrap_or_else(|| panic!("subscribed {v}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["cid", "epoch", "id", "type"], "{v}");
    assert_eq!(v["type"], "subscribed", "{v}");
    assert_eq!(v["cid"], cid, "{v}");
    assert_eq!(v["id"], id, "{v}");
    let epoch = v["epoch"].as_str().unwrap_or_else(|| panic!("epoch {v}"));
    assert!(
        !epoch.is_empty()
            && epoch
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "epoch is base 36: {v}"
    );
    epoch.to_owned()
}

/// Asserts that `v` is an error reply: `{"type":"error","error":"…"}` (plus `ref` if given).
fn assert_error_frame(v: &Value, reference: Option<&Value>) {
    assert_eq!(v["type"], "error", "{v}");
    let error = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error text {v}"));
    assert!(!error.is_empty(), "{v}");
    match reference {
        Some(r) => assert_eq!(&v["ref"], r, "ref is echoed: {v}"),
        None => assert!(v.get("ref").is_none(), "{v}"),
    }
}

/// An epoch text that is valid but differs from `epoch`.
fn other_epoch(epoch: &str) -> &'static str {
    if epoch == "1" {
        "2"
    } else {
        "1"
    }
}

/// After bad input: the server answers `/health` and still delivers to a fresh subscriber.
async fn assert_still_serves(server: &TestServer) {
    server.assert_healthy().await;
    let (mut ws, subscribed) = subscribe(server, "after-check").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    let next = subscribed["id"].as_u64().unwrap() + 1;
    let published = server.publish("after-check", "still serving").await;
    assert_eq!(published["id"], next);
    let envelope = next_json(&mut ws).await;
    assert_envelope(
        &envelope,
        "after-check",
        next,
        &epoch,
        &json!("still serving"),
    );
}

// ---------------------------------------------------------------------------------------------
// Raw TCP WebSocket client (frames and responses parsed by common::raw): handshakes and
// frames exactly as written here.
// ---------------------------------------------------------------------------------------------

/// Writes `GET target` with `headers` and reads the response head (and body, by
/// Content-Length). Bytes after the response stay in `buf`.
async fn raw_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let request = common::raw::get(target, addr, headers);
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(STEP, read_response(stream, buf))
        .await
        .expect("HTTP response in time")
        .expect("connection closed before the response head")
}

/// A request on a fresh connection.
async fn raw_get(server: &TestServer, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    let addr = server.server.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    raw_request(&mut stream, &mut buf, addr, target, headers).await
}

// ---------------------------------------------------------------------------------------------
// Connecting and the envelope
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn first_frame_is_subscribed_then_each_message_is_one_exact_envelope() {
    // `chat:5` is in namespace `chat`, which must be configured.
    let server = common::start_with(|c| {
        c.namespaces.insert("chat".into(), Default::default());
    })
    .await;
    let mut ws = connect(&server, "/listen?cid=chat:5").await;
    let epoch = assert_subscribed(&next_json(&mut ws).await, "chat:5", 0);

    // JSON payload: delivered as that value, the frame is exactly the envelope.
    let data = json!({"text": "hi", "n": [1, 2.5, {"x": null}], "ok": true});
    let published = server.publish_json("chat:5", &data).await;
    assert_eq!(published["id"], 1);
    assert_eq!(published["epoch"], epoch.as_str());
    let text = next_text(&mut ws).await;
    let envelope: Value = serde_json::from_str(&text).unwrap();
    assert_envelope(&envelope, "chat:5", 1, &epoch, &data);
    assert_eq!(
        text,
        format!(
            r#"{{"cid":"chat:5","id":1,"epoch":"{epoch}","data":{},"time":{}}}"#,
            data, published["time"]
        ),
        "the frame is the envelope, in the documented field order"
    );

    // Text payload: delivered as a JSON string.
    let body = "hello \"world\" ✓ <b>&</b>\nline 2";
    let published = server.publish("chat:5", body).await;
    assert_eq!(published["id"], 2);
    let envelope = next_json(&mut ws).await;
    assert_envelope(&envelope, "chat:5", 2, &epoch, &json!(body));
    assert_eq!(envelope["time"], published["time"]);

    // JSON with insignificant whitespace is delivered compact.
    let response = server
        .client
        .post(server.url("/publish?cid=chat:5"))
        .header("content-type", "application/json")
        .body("{ \"a\" : [ 1 , 2 ] ,\n \"b\" : \"x y\" }")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = next_text(&mut ws).await;
    assert!(
        text.contains(r#""data":{"a":[1,2],"b":"x y"}"#),
        "compact data: {text}"
    );
    assert_envelope(
        &serde_json::from_str(&text).unwrap(),
        "chat:5",
        3,
        &epoch,
        &json!({"a": [1, 2], "b": "x y"}),
    );
    assert_silent(&mut ws, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn without_since_only_new_messages_and_since_zero_gets_the_history() {
    let server = common::start().await;
    for i in 1..=3 {
        server.publish("news", &format!("old {i}")).await;
    }
    let epoch = server.publish("news", "old 4").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut fresh = connect(&server, "/listen?cid=news").await;
    assert_eq!(
        assert_subscribed(&next_json(&mut fresh).await, "news", 4),
        epoch
    );
    let mut replay = connect(&server, "/listen?cid=news&since=0").await;
    assert_eq!(
        assert_subscribed(&next_json(&mut replay).await, "news", 0),
        epoch
    );
    for i in 1..=4 {
        let envelope = next_json(&mut replay).await;
        assert_envelope(&envelope, "news", i, &epoch, &json!(format!("old {i}")));
    }

    server.publish("news", "new 5").await;
    assert_envelope(
        &next_json(&mut fresh).await,
        "news",
        5,
        &epoch,
        &json!("new 5"),
    );
    assert_envelope(
        &next_json(&mut replay).await,
        "news",
        5,
        &epoch,
        &json!("new 5"),
    );
    assert_silent(&mut fresh, Duration::from_millis(100)).await;
    assert_silent(&mut replay, Duration::from_millis(10)).await;
}

#[tokio::test]
async fn transport_ws_trailing_slash_and_unknown_parameters_all_upgrade() {
    let server = common::start().await;
    let mut clients = Vec::new();
    for target in [
        "/listen?cid=t&transport=ws",
        "/listen?cid=t&transport=websocket",
        "/listen/?cid=t",
        "/listen/?cid=t&transport=ws&_=1764167000123",
    ] {
        let mut ws = connect(&server, target).await;
        assert_subscribed(&next_json(&mut ws).await, "t", 0);
        clients.push(ws);
    }
    let published = server.publish("t", "to all").await;
    assert_eq!(published["subscribers"], 4);
    let epoch = published["epoch"].as_str().unwrap();
    for ws in &mut clients {
        assert_envelope(&next_json(ws).await, "t", 1, epoch, &json!("to all"));
    }
}

#[tokio::test]
async fn browser_style_handshake_headers_are_accepted() {
    // The page's origin is another site: it must be on the allowlist (see tests/browser.rs).
    let server =
        common::start_with(|c| c.allowed_origins = vec!["http://example.com".into()]).await;
    // Firefox sends `Connection: keep-alive, Upgrade`; header values are case-insensitive; an
    // offered extension the server does not implement is simply not accepted.
    let headers = [
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        (
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        ),
        ("Origin", "http://example.com"),
        ("User-Agent", "Mozilla/5.0"),
    ];
    let addr = server.server.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let response = raw_request(&mut stream, &mut buf, addr, "/listen?cid=browser", &headers).await;
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("sec-websocket-accept"), Some(ACCEPT));
    assert!(
        response
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{response:?}"
    );
    assert!(
        response.header("sec-websocket-extensions").is_none(),
        "no extension is negotiated: {response:?}"
    );
    let mut raw = RawWs::after_handshake(stream, buf);
    assert_subscribed(&raw.next_json().await, "browser", 0);
    server.publish("browser", "hi").await;
    assert_eq!(raw.next_json().await["data"], "hi");
}

#[tokio::test]
async fn an_upgrade_on_a_reused_keep_alive_connection_works() {
    let server = common::start().await;
    let addr = server.server.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    // Two ordinary requests first, on the same connection.
    for _ in 0..2 {
        let health = raw_request(&mut stream, &mut buf, addr, "/health", &[]).await;
        assert_eq!(health.status, 200, "{health:?}");
    }
    let response = raw_request(
        &mut stream,
        &mut buf,
        addr,
        "/listen?cid=reuse",
        &UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(response.status, 101, "{response:?}");
    let mut raw = RawWs::after_handshake(stream, buf);
    assert_subscribed(&raw.next_json().await, "reuse", 0);
    raw.send_frame(true, OP_TEXT, br#"{"type":"ping","ref":"r"}"#)
        .await;
    assert_eq!(raw.next_json().await, json!({"type": "pong", "ref": "r"}));
    server.publish("reuse", "hi").await;
    assert_eq!(raw.next_json().await["data"], "hi");
}

#[tokio::test]
async fn a_large_backlog_arrives_complete_on_connect() {
    const MESSAGES: u64 = 500;
    let server = common::start_with(|c| c.history_size = 1_000).await;
    let body = |i: u64| format!("{i:04}{}", "z".repeat(20_000));
    for i in 1..=MESSAGES {
        server.publish("backlog", &body(i)).await;
    }
    let mut ws = connect(&server, "/listen?cid=backlog&since=0").await;
    let epoch = assert_subscribed(&next_json(&mut ws).await, "backlog", 0);
    // Publish while the backlog is being written: live messages follow it without loss.
    let live = server.publish("backlog", "live 1").await;
    assert_eq!(live["subscribers"], 1);
    for i in 1..=MESSAGES {
        assert_envelope(
            &next_json(&mut ws).await,
            "backlog",
            i,
            &epoch,
            &json!(body(i)),
        );
    }
    assert_envelope(
        &next_json(&mut ws).await,
        "backlog",
        MESSAGES + 1,
        &epoch,
        &json!("live 1"),
    );
    assert_silent(&mut ws, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn transport_ws_without_an_upgrade_is_a_json_400() {
    let server = common::start().await;
    for target in [
        "/listen?cid=a&transport=ws",
        "/listen/?cid=a&transport=websocket&since=0",
    ] {
        let response = server.client.get(server.url(target)).send().await.unwrap();
        common::expect_error(response, 400).await;
    }
    // Upgrade: websocket without `Connection: Upgrade`, and without a key: not a handshake.
    let headers = [
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ];
    raw_get(&server, "/listen?cid=a", &headers)
        .await
        .assert_json_error(400);
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
    ];
    raw_get(&server, "/listen?cid=a", &headers)
        .await
        .assert_json_error(400);
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn unsupported_websocket_version_is_426_naming_version_13() {
    let server = common::start().await;
    let mut headers = UPGRADE_HEADERS.to_vec();
    headers.retain(|(n, _)| *n != "Sec-WebSocket-Version");
    headers.push(("Sec-WebSocket-Version", "8"));
    let response = raw_get(&server, "/listen?cid=a", &headers).await;
    assert_eq!(response.status, 426, "{response:?}");
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    response.assert_json_error(426);
    assert!(response.header("sec-websocket-accept").is_none());
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn bad_cid_or_cursor_is_400_before_upgrading() {
    let server = common::start_with(|c| c.max_channels_per_connection = 2).await;
    server.publish("a", "one").await;
    for target in [
        "/listen?since=0",
        "/listen?cid=",
        "/listen?cid=nope:1",
        "/listen?cid=a%20b",
        "/listen?cid=a/b",
        &format!("/listen?cid={}", "x".repeat(256)),
        "/listen?cid=a&cid=a",
        "/listen?cid=a&cid=b&cid=c",
        "/listen?cid=a&since=x",
        "/listen?cid=a&since=-1",
        "/listen?cid=a&since=K:1",
        "/listen?cid=a&since=1&since=2",
        "/listen?cid=a&cid=b&since=1,2,3",
        "/listen?cid=a&transport=carrier-pigeon",
    ] {
        let response = raw_get(&server, target, &UPGRADE_HEADERS).await;
        assert_eq!(response.status, 400, "{target}: {response:?}");
        response.assert_json_error(400);
        assert!(
            response.header("sec-websocket-accept").is_none(),
            "{target}"
        );
        // The same through a real client: the handshake fails with the HTTP error.
        match connect_async(server.ws_url(target).as_str()).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "{target}");
            }
            other => panic!("{target}: expected an HTTP 400, got {other:?}"),
        }
    }
    // Nothing was subscribed by the refused requests.
    let published = server.publish("a", "two").await;
    assert_eq!(published["subscribers"], 0);
    assert_still_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Resuming
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn resume_with_the_last_cursor_gets_exactly_the_missed_messages() {
    let server = common::start().await;
    let (mut ws, subscribed) = subscribe(&server, "r").await;
    let epoch = assert_subscribed(&subscribed, "r", 0);
    for i in 1..=5 {
        server.publish("r", &format!("m{i}")).await;
    }
    for i in 1..=5 {
        assert_envelope(
            &next_json(&mut ws).await,
            "r",
            i,
            &epoch,
            &json!(format!("m{i}")),
        );
    }
    ws.close(None).await.unwrap();
    drop(ws);

    for i in 6..=9 {
        server.publish("r", &format!("m{i}")).await;
    }
    let mut ws = connect(&server, &format!("/listen?cid=r&since={epoch}:5")).await;
    assert_eq!(assert_subscribed(&next_json(&mut ws).await, "r", 5), epoch);
    for i in 6..=9 {
        assert_envelope(
            &next_json(&mut ws).await,
            "r",
            i,
            &epoch,
            &json!(format!("m{i}")),
        );
    }
    server.publish("r", "m10").await;
    assert_envelope(&next_json(&mut ws).await, "r", 10, &epoch, &json!("m10"));
    assert_silent(&mut ws, Duration::from_millis(150)).await;
    drop(ws);

    // The offset-only form (the lecture's `since=N`) resumes in the current epoch.
    let mut ws = connect(&server, "/listen?cid=r&since=7").await;
    assert_subscribed(&next_json(&mut ws).await, "r", 7);
    for i in 8..=10 {
        assert_envelope(
            &next_json(&mut ws).await,
            "r",
            i,
            &epoch,
            &json!(format!("m{i}")),
        );
    }
    // Resuming at the head: nothing to replay, then live.
    let mut head = connect(&server, &format!("/listen?cid=r&since={epoch}:10")).await;
    assert_subscribed(&next_json(&mut head).await, "r", 10);
    server.publish("r", "m11").await;
    assert_envelope(&next_json(&mut ws).await, "r", 11, &epoch, &json!("m11"));
    assert_envelope(&next_json(&mut head).await, "r", 11, &epoch, &json!("m11"));
    assert_silent(&mut ws, Duration::from_millis(100)).await;
    assert_silent(&mut head, Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_race_with_continuous_publishers_is_exactly_once_and_in_order() {
    const PUBLISHERS: u64 = 2;
    const PER_PUBLISHER: u64 = 1_500;
    const TOTAL: u64 = PUBLISHERS * PER_PUBLISHER;
    const CLIENTS: u64 = 8;
    let server = Arc::new(common::start_with(|c| c.history_size = 10_000).await);

    // Publishers run flat out; each remembers which id its payloads got.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for j in 0..PER_PUBLISHER {
                    let data = format!("p{p}-{j}");
                    let published = server.publish("race", &data).await;
                    ids.push((published["id"].as_u64().unwrap(), data));
                }
                ids
            })
        })
        .collect();

    // Clients reconnect over and over with their cursor while the publishers run.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let mut received: Vec<String> = Vec::new();
                let mut epoch: Option<String> = None;
                let mut connections = 0u64;
                while (received.len() as u64) < TOTAL {
                    let last = received.len() as u64;
                    let cursor = match &epoch {
                        Some(e) => format!("{e}:{last}"),
                        None => "0".to_owned(),
                    };
                    let mut ws =
                        connect(&server, &format!("/listen?cid=race&since={cursor}")).await;
                    connections += 1;
                    let subscribed = next_json(&mut ws).await;
                    let e = assert_subscribed(&subscribed, "race", last);
                    if let Some(known) = &epoch {
                        assert_eq!(&e, known, "epoch changed");
                    }
                    epoch = Some(e);
                    // Read a varying number of frames, then go away (politely or not).
                    let take = 1 + (connections * 7 + client * 3) % 9;
                    for _ in 0..take {
                        if received.len() as u64 == TOTAL {
                            break;
                        }
                        let envelope = next_json(&mut ws).await;
                        assert!(
                            envelope.get("type").is_none(),
                            "client {client}: {envelope}"
                        );
                        let id = received.len() as u64 + 1;
                        assert_eq!(envelope["id"], id, "client {client}: {envelope}");
                        received.push(envelope["data"].as_str().unwrap().to_owned());
                    }
                    if connections % 2 == 0 {
                        ws.close(None).await.unwrap();
                    }
                    drop(ws);
                }
                (received, connections)
            })
        })
        .collect();

    let mut expected = vec![String::new(); usize::try_from(TOTAL).unwrap()];
    for publisher in publishers {
        let ids = tokio::time::timeout(Duration::from_secs(30), publisher)
            .await
            .expect("publisher finishes")
            .unwrap();
        for (id, data) in ids {
            let slot = &mut expected[usize::try_from(id - 1).unwrap()];
            assert!(slot.is_empty(), "id {id} given twice");
            *slot = data;
        }
    }
    for client in clients {
        let (received, connections) = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("client finishes")
            .unwrap();
        assert_eq!(
            received, expected,
            "every message once, in id order, with its payload"
        );
        assert!(connections >= TOTAL / 9, "{connections} connections");
    }
    server.assert_healthy().await;
}

// ---------------------------------------------------------------------------------------------
// Gaps
// ---------------------------------------------------------------------------------------------

/// Publishes `m1..=m10` to `g` on a server that keeps 3 messages; returns the epoch.
async fn gap_fixture() -> (TestServer, String) {
    let server = common::start_with(|c| c.history_size = 3).await;
    let mut epoch = String::new();
    for i in 1..=10 {
        epoch = server.publish("g", &format!("m{i}")).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    (server, epoch)
}

/// Connects with `since` and expects subscribed(7), a gap (first 8, `requested`), 8, 9, 10.
async fn expect_gap_then_retained(server: &TestServer, epoch: &str, since: &str) -> Ws {
    let mut ws = connect(server, &format!("/listen?cid=g&since={since}")).await;
    assert_subscribed(&next_json(&mut ws).await, "g", 7);
    let gap = next_json(&mut ws).await;
    assert_eq!(
        gap,
        json!({"type": "gap", "cid": "g", "epoch": epoch, "first": 8, "requested": since}),
        "since={since}"
    );
    for i in 8..=10 {
        assert_envelope(
            &next_json(&mut ws).await,
            "g",
            i,
            epoch,
            &json!(format!("m{i}")),
        );
    }
    ws
}

#[tokio::test]
async fn a_too_old_cursor_gets_a_gap_before_the_retained_messages() {
    let (server, epoch) = gap_fixture().await;
    let mut ws = expect_gap_then_retained(&server, &epoch, &format!("{epoch}:2")).await;
    expect_gap_then_retained(&server, &epoch, "2").await;
    expect_gap_then_retained(&server, &epoch, &format!("{epoch}:6")).await;

    // The oldest cursor that history can still serve exactly: no gap.
    let mut exact = connect(&server, &format!("/listen?cid=g&since={epoch}:7")).await;
    assert_subscribed(&next_json(&mut exact).await, "g", 7);
    for i in 8..=10 {
        assert_envelope(
            &next_json(&mut exact).await,
            "g",
            i,
            &epoch,
            &json!(format!("m{i}")),
        );
    }

    // The subscribe command reports the gap the same way, after its reply.
    let (mut command, _) = subscribe(&server, "other").await;
    send_json(
        &mut command,
        &json!({"type": "subscribe", "cid": "g", "since": format!("{epoch}:1"), "ref": "old"}),
    )
    .await;
    assert_eq!(
        next_json(&mut command).await,
        json!({"type": "subscribed", "cid": "g", "epoch": epoch, "id": 7, "ref": "old"})
    );
    assert_eq!(
        next_json(&mut command).await,
        json!({"type": "gap", "cid": "g", "epoch": epoch, "first": 8, "requested": format!("{epoch}:1")})
    );
    for i in 8..=10 {
        assert_envelope(
            &next_json(&mut command).await,
            "g",
            i,
            &epoch,
            &json!(format!("m{i}")),
        );
    }

    // Live messages after the gap continue without another gap.
    server.publish("g", "m11").await;
    assert_envelope(&next_json(&mut ws).await, "g", 11, &epoch, &json!("m11"));
    assert_envelope(&next_json(&mut exact).await, "g", 11, &epoch, &json!("m11"));
    assert_silent(&mut ws, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_foreign_epoch_or_a_cursor_ahead_of_the_channel_gets_a_gap() {
    let (server, epoch) = gap_fixture().await;
    let foreign = other_epoch(&epoch);
    expect_gap_then_retained(&server, &epoch, &format!("{foreign}:5")).await;
    expect_gap_then_retained(&server, &epoch, &format!("{foreign}:9")).await;
    // Ahead of the channel (a cursor from a previous, longer life of it).
    expect_gap_then_retained(&server, &epoch, &format!("{epoch}:50")).await;
    expect_gap_then_retained(&server, &epoch, "50").await;

    // A foreign epoch on a channel with no history: the gap says the next message is 1.
    let mut ws = connect(&server, "/listen?cid=fresh&since=1:4").await;
    let fresh_epoch = assert_subscribed(&next_json(&mut ws).await, "fresh", 0);
    let gap = next_json(&mut ws).await;
    assert_eq!(
        gap,
        json!({"type": "gap", "cid": "fresh", "epoch": fresh_epoch, "first": 1, "requested": "1:4"})
    );
    server.publish("fresh", "first").await;
    assert_envelope(
        &next_json(&mut ws).await,
        "fresh",
        1,
        &fresh_epoch,
        &json!("first"),
    );
}

// ---------------------------------------------------------------------------------------------
// Several channels on one connection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn several_channels_each_subscribed_and_each_resumed_exactly() {
    let server = common::start().await;
    for i in 1..=3 {
        server.publish("a", &format!("a{i}")).await;
    }
    for i in 1..=2 {
        server.publish("b", &format!("b{i}")).await;
    }
    let ea = server.publish("a", "a4").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let eb = server.publish("b", "b3").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    // a from after 2, b from the beginning.
    let mut ws = connect(&server, &format!("/listen?cid=a&cid=b&since={ea}:2,{eb}:0")).await;
    let mut a_ids = Vec::new();
    let mut b_ids = Vec::new();
    let mut subscribed = Vec::new();
    for _ in 0..(2 + 2 + 3) {
        let v = next_json(&mut ws).await;
        match (v["type"].as_str(), v["cid"].as_str().unwrap()) {
            (Some("subscribed"), "a") => {
                assert!(a_ids.is_empty(), "subscribed precedes the backlog");
                assert_eq!(assert_subscribed(&v, "a", 2), ea);
                subscribed.push("a");
            }
            (Some("subscribed"), "b") => {
                assert!(b_ids.is_empty(), "subscribed precedes the backlog");
                assert_eq!(assert_subscribed(&v, "b", 0), eb);
                subscribed.push("b");
            }
            (None, "a") => {
                let id = v["id"].as_u64().unwrap();
                assert_envelope(&v, "a", id, &ea, &json!(format!("a{id}")));
                a_ids.push(id);
            }
            (None, "b") => {
                let id = v["id"].as_u64().unwrap();
                assert_envelope(&v, "b", id, &eb, &json!(format!("b{id}")));
                b_ids.push(id);
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
    assert_eq!(
        subscribed,
        ["a", "b"],
        "one subscribed frame per channel, in cid order"
    );
    assert_eq!(a_ids, [3, 4]);
    assert_eq!(b_ids, [1, 2, 3]);

    // Live messages of both channels.
    server.publish("b", "b4").await;
    server.publish("a", "a5").await;
    assert_envelope(&next_json(&mut ws).await, "b", 4, &eb, &json!("b4"));
    assert_envelope(&next_json(&mut ws).await, "a", 5, &ea, &json!("a5"));
    drop(ws);

    // Missed messages in both; resume each from its own cursor.
    for i in 6..=7 {
        server.publish("a", &format!("a{i}")).await;
    }
    server.publish("b", "b5").await;
    let mut ws = connect(&server, &format!("/listen?cid=a&cid=b&since={ea}:5,{eb}:4")).await;
    let mut frames = Vec::new();
    for _ in 0..(2 + 2 + 1) {
        frames.push(next_json(&mut ws).await);
    }
    let of =
        |cid: &str| -> Vec<Value> { frames.iter().filter(|v| v["cid"] == cid).cloned().collect() };
    let a = of("a");
    assert_subscribed(&a[0], "a", 5);
    assert_envelope(&a[1], "a", 6, &ea, &json!("a6"));
    assert_envelope(&a[2], "a", 7, &ea, &json!("a7"));
    let b = of("b");
    assert_subscribed(&b[0], "b", 4);
    assert_envelope(&b[1], "b", 5, &eb, &json!("b5"));
    assert_eq!(a.len() + b.len(), frames.len());
    assert_silent(&mut ws, Duration::from_millis(100)).await;
    drop(ws);

    // A single cursor entry applies to every channel.
    let mut ws = connect(&server, "/listen?cid=a&cid=b&since=6").await;
    let mut frames = Vec::new();
    for _ in 0..(2 + 1) {
        frames.push(next_json(&mut ws).await);
    }
    assert_subscribed(&frames[0], "a", 6);
    assert_envelope(&frames[1], "a", 7, &ea, &json!("a7"));
    // b is at 5: a cursor ahead of it is a gap, and all its history follows.
    assert_subscribed(&frames[2], "b", 0);
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["cid"], "b");
    assert_eq!(gap["first"], 1);
    for i in 1..=5 {
        assert_envelope(
            &next_json(&mut ws).await,
            "b",
            i,
            &eb,
            &json!(format!("b{i}")),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_command_with_and_without_since_echoes_ref() {
    let server = common::start().await;
    for i in 1..=3 {
        server.publish("second", &format!("s{i}")).await;
    }
    let e2 = server.publish("second", "s4").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut ws, _) = subscribe(&server, "first").await;

    // With since: subscribed (with ref) at the cursor, then the backlog.
    let reference = json!({"k": [1, "x"], "n": null});
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "cid": "second", "since": format!("{e2}:1"), "ref": reference}),
    )
    .await;
    let reply = next_json(&mut ws).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "cid": "second", "epoch": e2, "id": 1, "ref": reference})
    );
    for i in 2..=4 {
        assert_envelope(
            &next_json(&mut ws).await,
            "second",
            i,
            &e2,
            &json!(format!("s{i}")),
        );
    }

    // Without since: subscribed at the current position, no backlog; ref of any JSON type.
    server.publish("third", "t1").await;
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "cid": "third", "ref": 42}),
    )
    .await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["cid"], "third");
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["ref"], 42);
    let e3 = reply["epoch"].as_str().unwrap().to_owned();
    // Without ref: no ref in the reply.
    send_json(&mut ws, &json!({"type": "subscribe", "cid": "fourth"})).await;
    assert_subscribed(&next_json(&mut ws).await, "fourth", 0);

    // All subscriptions are live.
    server.publish("third", "t2").await;
    assert_envelope(&next_json(&mut ws).await, "third", 2, &e3, &json!("t2"));
    server.publish("second", "s5").await;
    assert_envelope(&next_json(&mut ws).await, "second", 5, &e2, &json!("s5"));
    let published = server.publish("fourth", "f1").await;
    assert_envelope(
        &next_json(&mut ws).await,
        "fourth",
        1,
        published["epoch"].as_str().unwrap(),
        &json!("f1"),
    );
    let published = server.publish("first", "x1").await;
    assert_envelope(
        &next_json(&mut ws).await,
        "first",
        1,
        published["epoch"].as_str().unwrap(),
        &json!("x1"),
    );
}

#[tokio::test]
async fn unsubscribe_command_stops_that_channel_only() {
    let server = common::start().await;
    let mut ws = connect(&server, "/listen?cid=keep&cid=drop").await;
    let ek = assert_subscribed(&next_json(&mut ws).await, "keep", 0);
    let ed = assert_subscribed(&next_json(&mut ws).await, "drop", 0);
    server.publish("drop", "d1").await;
    assert_envelope(&next_json(&mut ws).await, "drop", 1, &ed, &json!("d1"));

    send_json(
        &mut ws,
        &json!({"type": "unsubscribe", "cid": "drop", "ref": "u"}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "unsubscribed", "cid": "drop", "ref": "u"})
    );
    let published = server.publish("drop", "d2").await;
    assert_eq!(
        published["subscribers"], 0,
        "the connection left the channel"
    );
    server.publish("keep", "k1").await;
    // The next frame is keep's message: drop's message never came.
    assert_envelope(&next_json(&mut ws).await, "keep", 1, &ek, &json!("k1"));
    assert_silent(&mut ws, Duration::from_millis(100)).await;

    // Unsubscribing again is an error; subscribing again works and resumes from a cursor.
    send_json(
        &mut ws,
        &json!({"type": "unsubscribe", "cid": "drop", "ref": 2}),
    )
    .await;
    assert_error_frame(&next_json(&mut ws).await, Some(&json!(2)));
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "cid": "drop", "since": format!("{ed}:1")}),
    )
    .await;
    assert_subscribed(&next_json(&mut ws).await, "drop", 1);
    assert_envelope(&next_json(&mut ws).await, "drop", 2, &ed, &json!("d2"));
    // The last channel can be unsubscribed too; the connection stays open.
    for cid in ["keep", "drop"] {
        send_json(&mut ws, &json!({"type": "unsubscribe", "cid": cid})).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"type": "unsubscribed", "cid": cid})
        );
    }
    assert_eq!(server.publish("keep", "k2").await["subscribers"], 0);
    ping_pong(&mut ws, &json!("still open")).await;
}

#[tokio::test]
async fn ping_command_gets_pong() {
    let server = common::start().await;
    let (mut ws, _) = subscribe(&server, "p").await;
    send_json(&mut ws, &json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
    for reference in [json!("abc"), json!(7), json!([1, {"a": true}]), json!(null)] {
        send_json(&mut ws, &json!({"type": "ping", "ref": reference})).await;
        let pong = next_json(&mut ws).await;
        assert_eq!(pong["type"], "pong");
        if !reference.is_null() {
            assert_eq!(pong, json!({"type": "pong", "ref": reference}));
        }
    }
}

#[tokio::test]
async fn client_publish_is_an_error_frame_when_disabled() {
    let server = common::start().await;
    let (mut ws, _) = subscribe(&server, "room").await;
    let (mut other, _) = subscribe(&server, "room").await;
    send_json(
        &mut ws,
        &json!({"type": "publish", "cid": "room", "data": {"x": 1}, "ref": "p1"}),
    )
    .await;
    assert_error_frame(&next_json(&mut ws).await, Some(&json!("p1")));
    ping_pong(&mut ws, &json!(1)).await;
    // Nothing was published: the next message is id 1 and it is the only one.
    let published = server.publish("room", "from http").await;
    assert_eq!(published["id"], 1);
    let epoch = published["epoch"].as_str().unwrap();
    assert_envelope(
        &next_json(&mut other).await,
        "room",
        1,
        epoch,
        &json!("from http"),
    );
    assert_envelope(
        &next_json(&mut ws).await,
        "room",
        1,
        epoch,
        &json!("from http"),
    );
    assert_silent(&mut other, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn client_publish_when_enabled_reaches_other_subscribers() {
    let server = common::start_with(|c| c.client_publish = true).await;
    let (mut publisher, _) = subscribe(&server, "elsewhere").await;
    let (mut listener, subscribed) = subscribe(&server, "room").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();

    let data = json!({"text": "hi from a client", "n": [1, 2]});
    send_json(
        &mut publisher,
        &json!({"type": "publish", "cid": "room", "data": data, "ref": "p1"}),
    )
    .await;
    assert_eq!(
        next_json(&mut publisher).await,
        json!({"type": "published", "cid": "room", "id": 1, "epoch": epoch, "ref": "p1"})
    );
    assert_envelope(&next_json(&mut listener).await, "room", 1, &epoch, &data);

    // Insignificant whitespace inside data is removed, as for HTTP publishing.
    send_text(
        &mut publisher,
        r#"{"type":"publish","cid":"room","data": { "a" : [ 1 , 2 ] } }"#,
    )
    .await;
    assert_eq!(next_json(&mut publisher).await["id"], 2);
    let text = next_text(&mut listener).await;
    assert!(
        text.contains(r#""data":{"a":[1,2]}"#),
        "compact data: {text}"
    );

    // Any JSON value; a string stays a string.
    send_json(
        &mut publisher,
        &json!({"type": "publish", "cid": "room", "data": "plain"}),
    )
    .await;
    let reply = next_json(&mut publisher).await;
    assert_eq!(
        reply,
        json!({"type": "published", "cid": "room", "id": 3, "epoch": epoch})
    );
    assert_envelope(
        &next_json(&mut listener).await,
        "room",
        3,
        &epoch,
        &json!("plain"),
    );

    // Bad publish commands are error frames; nothing is published.
    for (command, reference) in [
        (
            json!({"type": "publish", "cid": "room", "ref": 1}),
            json!(1),
        ),
        (json!({"type": "publish", "data": 1, "ref": 2}), json!(2)),
        (
            json!({"type": "publish", "cid": "bad cid", "data": 1, "ref": 3}),
            json!(3),
        ),
    ] {
        send_json(&mut publisher, &command).await;
        assert_error_frame(&next_json(&mut publisher).await, Some(&reference));
    }
    assert_silent(&mut listener, Duration::from_millis(100)).await;

    // The HTTP side sees the client's messages in the same stream.
    assert_eq!(server.publish("room", "from http").await["id"], 4);
    assert_envelope(
        &next_json(&mut listener).await,
        "room",
        4,
        &epoch,
        &json!("from http"),
    );
}

#[tokio::test]
async fn bad_commands_get_error_frames_and_the_connection_stays_usable() {
    let server = common::start().await;
    let mut ws = connect(&server, "/listen?cid=a").await;
    let epoch = assert_subscribed(&next_json(&mut ws).await, "a", 0);

    let long_cid = "x".repeat(256);
    let cases: Vec<(String, Option<Value>)> = vec![
        ("not json".into(), None),
        ("{\"type\":\"subscribe\"".into(), None),
        ("".into(), None),
        ("[1,2]".into(), None),
        ("\"ping\"".into(), None),
        ("{}".into(), None),
        (r#"{"type":123}"#.into(), None),
        (r#"{"type":"dance","ref":1}"#.into(), Some(json!(1))),
        (r#"{"type":"subscribe","ref":2}"#.into(), Some(json!(2))),
        (r#"{"type":"unsubscribe","ref":3}"#.into(), Some(json!(3))),
        (
            r#"{"type":"subscribe","cid":"bad cid!","ref":4}"#.into(),
            Some(json!(4)),
        ),
        (
            r#"{"type":"subscribe","cid":"","ref":5}"#.into(),
            Some(json!(5)),
        ),
        (
            format!(r#"{{"type":"subscribe","cid":"{long_cid}","ref":6}}"#),
            Some(json!(6)),
        ),
        (
            r#"{"type":"subscribe","cid":"b","since":"nope","ref":7}"#.into(),
            Some(json!(7)),
        ),
        (
            r#"{"type":"subscribe","cid":"a","ref":8}"#.into(),
            Some(json!(8)),
        ),
        (
            r#"{"type":"unsubscribe","cid":"never","ref":9}"#.into(),
            Some(json!(9)),
        ),
        (
            r#"{"type":"unsubscribe","cid":"bad cid","ref":10}"#.into(),
            Some(json!(10)),
        ),
    ];
    for (i, (command, reference)) in cases.iter().enumerate() {
        send_text(&mut ws, command).await;
        let reply = next_json(&mut ws).await;
        assert_error_frame(&reply, reference.as_ref());
        // Exactly one reply per command, and the connection is still usable.
        ping_pong(&mut ws, &json!(i)).await;
    }

    // The refused subscription to b did not happen; a still delivers.
    assert_eq!(server.publish("b", "b1").await["subscribers"], 0);
    server.publish("a", "a1").await;
    assert_envelope(&next_json(&mut ws).await, "a", 1, &epoch, &json!("a1"));
    assert_silent(&mut ws, Duration::from_millis(100)).await;
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn error_replies_echo_ref_even_when_the_command_is_malformed() {
    // docs/protocol.md: "`ref` (any JSON value) is echoed in the reply"; an error frame is the
    // reply to a command object that carried one, whatever else is wrong with it.
    let server = common::start().await;
    let (mut ws, _) = subscribe(&server, "a").await;
    for (command, reference) in [
        (r#"{"type":"subscribe","cid":5,"ref":9}"#, json!(9)),
        (
            r#"{"type":"subscribe","cid":"b","since":17,"ref":"s"}"#,
            json!("s"),
        ),
        (
            r#"{"type":"unsubscribe","cid":["a"],"ref":{"n":1}}"#,
            json!({"n": 1}),
        ),
        (r#"{"ref":3}"#, json!(3)),
        (r#"{"type":null,"ref":[4]}"#, json!([4])),
    ] {
        send_text(&mut ws, command).await;
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{command}: {reply}");
        assert_eq!(
            reply["ref"], reference,
            "ref is echoed for {command}: {reply}"
        );
        ping_pong(&mut ws, &json!("usable")).await;
    }
}

#[tokio::test]
async fn the_default_limit_of_64_channels_per_connection() {
    let server = common::start().await;
    let cids: Vec<String> = (0..64).map(|i| format!("ch{i:02}")).collect();
    let query: Vec<String> = cids.iter().map(|c| format!("cid={c}")).collect();
    let mut ws = connect(&server, &format!("/listen?{}", query.join("&"))).await;
    for cid in &cids {
        assert_subscribed(&next_json(&mut ws).await, cid, 0);
    }
    // Interleaved messages on every channel arrive, each channel in order.
    for round in 1..=2u64 {
        for cid in cids.iter().rev() {
            server.publish(cid, &format!("{cid}/{round}")).await;
        }
        for cid in cids.iter().rev() {
            let envelope = next_json(&mut ws).await;
            assert_eq!(envelope["cid"], cid.as_str());
            assert_eq!(envelope["id"], round);
            assert_eq!(envelope["data"], format!("{cid}/{round}"));
        }
    }
    // A 65th: by command an error frame, in the URL a 400.
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "cid": "ch64", "ref": 65}),
    )
    .await;
    assert_error_frame(&next_json(&mut ws).await, Some(&json!(65)));
    let target = format!("/listen?{}&cid=ch64", query.join("&"));
    raw_get(&server, &target, &UPGRADE_HEADERS)
        .await
        .assert_json_error(400);
    ping_pong(&mut ws, &json!("still fine")).await;
}

#[tokio::test]
async fn channel_limit_per_connection_is_an_error_frame() {
    let server = common::start_with(|c| c.max_channels_per_connection = 2).await;
    let (mut ws, _) = subscribe(&server, "one").await;
    send_json(&mut ws, &json!({"type": "subscribe", "cid": "two"})).await;
    assert_subscribed(&next_json(&mut ws).await, "two", 0);
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "cid": "three", "ref": "over"}),
    )
    .await;
    assert_error_frame(&next_json(&mut ws).await, Some(&json!("over")));
    assert_eq!(server.publish("three", "x").await["subscribers"], 0);

    // Unsubscribing frees a slot.
    send_json(&mut ws, &json!({"type": "unsubscribe", "cid": "one"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "unsubscribed");
    send_json(&mut ws, &json!({"type": "subscribe", "cid": "three"})).await;
    assert_subscribed(&next_json(&mut ws).await, "three", 1);
    let published = server.publish("three", "y").await;
    assert_envelope(
        &next_json(&mut ws).await,
        "three",
        2,
        published["epoch"].as_str().unwrap(),
        &json!("y"),
    );
    // Full again.
    send_json(&mut ws, &json!({"type": "subscribe", "cid": "four"})).await;
    assert_error_frame(&next_json(&mut ws).await, None);
    ping_pong(&mut ws, &json!("ok")).await;
}

#[tokio::test]
async fn the_server_channel_limit_refuses_new_channels_cleanly() {
    let server = common::start_with(|c| c.max_channels = 2).await;
    let (mut ws, subscribed) = subscribe(&server, "one").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    server.publish("two", "fills the server").await;

    // A handshake naming a new channel is refused before the upgrade, and leaves nothing behind.
    let response = raw_get(&server, "/listen?cid=one&cid=three", &UPGRADE_HEADERS).await;
    response.assert_json_error(503);
    assert!(response.header("sec-websocket-accept").is_none());
    // The subscribe command gets an error frame; the connection stays usable.
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "cid": "three", "ref": "full"}),
    )
    .await;
    assert_error_frame(&next_json(&mut ws).await, Some(&json!("full")));
    ping_pong(&mut ws, &json!("usable")).await;
    let published = server.publish("one", "only me").await;
    assert_eq!(
        published["subscribers"], 1,
        "the refused handshake did not stay subscribed"
    );
    assert_envelope(
        &next_json(&mut ws).await,
        "one",
        1,
        &epoch,
        &json!("only me"),
    );
    server.assert_healthy().await;
}

// ---------------------------------------------------------------------------------------------
// Protocol level
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_binary_frame_is_closed_with_1003() {
    let server = common::start().await;
    let (mut ws, _) = subscribe(&server, "bin").await;
    ws.send(Message::binary(vec![0x7b, 0x7d])).await.unwrap();
    expect_close(&mut ws, 1003).await;
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_is_closed_with_1007() {
    let server = common::start().await;
    let mut raw = RawWs::connect(&server, "/listen?cid=utf").await;
    assert_subscribed(&raw.next_json().await, "utf", 0);

    // Control: valid UTF-8 split across two fragments is fine (é = C3 A9).
    raw.send_frame(false, OP_TEXT, b"{\"type\":\"ping\",\"ref\":\"\xC3")
        .await;
    raw.send_frame(true, OP_CONTINUATION, b"\xA9\"}").await;
    assert_eq!(raw.next_json().await, json!({"type": "pong", "ref": "é"}));

    raw.send_frame(true, OP_TEXT, b"{\"type\":\"ping\",\"ref\":\"\xFF\xFE\"}")
        .await;
    assert_eq!(raw.expect_closed().await, Some(1007));
    assert!(raw.read_frame().await.is_none(), "the connection ends");
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn an_unmasked_client_frame_is_a_protocol_error() {
    let server = common::start().await;
    let mut raw = RawWs::connect(&server, "/listen?cid=mask").await;
    assert_subscribed(&raw.next_json().await, "mask", 0);
    raw.send_frame_masked(true, OP_TEXT, br#"{"type":"ping"}"#, false)
        .await;
    // RFC 6455 §5.1: the server must close the connection (1002 if it sends a code).
    let code = raw.expect_closed().await;
    assert!(matches!(code, None | Some(1002)), "close code {code:?}");
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn a_message_larger_than_max_body_is_closed_with_1009() {
    let server = common::start_with(|c| c.max_body = 1024).await;
    let padded_ping = |len: usize| {
        let mut command = json!({"type": "ping", "ref": 1, "pad": ""}).to_string();
        let pad = "x".repeat(len - command.len());
        command = json!({"type": "ping", "ref": 1, "pad": pad}).to_string();
        assert_eq!(command.len(), len);
        command
    };

    // Exactly max_body is accepted.
    let (mut ws, _) = subscribe(&server, "big").await;
    send_text(&mut ws, &padded_ping(1024)).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong", "ref": 1}));
    // One byte more closes with 1009.
    send_text(&mut ws, &padded_ping(1025)).await;
    expect_close(&mut ws, 1009).await;

    // Also when the fragments are each small but the message is not.
    let mut raw = RawWs::connect(&server, "/listen?cid=big").await;
    assert_subscribed(&raw.next_json().await, "big", 0);
    let command = padded_ping(1200);
    raw.send_frame(false, OP_TEXT, &command.as_bytes()[..600])
        .await;
    raw.send_frame(true, OP_CONTINUATION, &command.as_bytes()[600..])
        .await;
    assert_eq!(raw.expect_closed().await, Some(1009));
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn the_server_answers_client_pings_with_pongs() {
    let server = common::start().await;
    let (mut ws, _) = subscribe(&server, "pp").await;
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    match next_any(&mut ws).await {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    // Raw: a ping frame gets a pong frame with the same payload.
    let mut raw = RawWs::connect(&server, "/listen?cid=pp").await;
    assert_subscribed(&raw.next_json().await, "pp", 0);
    raw.send_frame(true, OP_PING, b"raw ping").await;
    let frame = raw.read_frame().await.expect("a pong");
    assert_eq!(
        (frame.opcode, &frame.payload[..]),
        (OP_PONG, &b"raw ping"[..])
    );
    // The largest control payload (125 bytes) and an empty one.
    for payload in [vec![0xA5u8; 125], Vec::new()] {
        raw.send_frame(true, OP_PING, &payload).await;
        let frame = raw.read_frame().await.expect("a pong");
        assert_eq!((frame.fin, frame.opcode), (true, OP_PONG));
        assert_eq!(frame.payload, payload);
    }
    // Unsolicited pongs are ignored.
    raw.send_frame(true, OP_PONG, b"unasked").await;
    // Both still receive messages.
    server.publish("pp", "after pings").await;
    assert_eq!(next_json(&mut ws).await["data"], "after pings");
    assert_eq!(raw.next_json().await["data"], "after pings");
}

#[tokio::test]
async fn the_server_pings_and_a_client_that_answers_stays_connected() {
    let interval = Duration::from_millis(200);
    let server = common::start_with(|c| c.ws_ping_interval = interval).await;
    let (mut ws, subscribed) = subscribe(&server, "alive").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    // A raw client that answers every ping with a pong, by hand.
    let mut raw = RawWs::connect(&server, "/listen?cid=alive").await;
    assert_subscribed(&raw.next_json().await, "alive", 0);
    let raw_task = tokio::spawn(async move {
        let mut pings = 0;
        while pings < 5 {
            let frame = raw.read_frame().await.expect("still connected");
            assert_eq!(frame.opcode, OP_PING, "expected pings only: {frame:?}");
            assert!(frame.fin && frame.payload.len() <= 125);
            raw.send_frame(true, OP_PONG, &frame.payload).await;
            pings += 1;
        }
        raw
    });
    let started = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        assert!(started.elapsed() < STEP, "{pings} pings");
        match next_any(&mut ws).await {
            // tungstenite queues the pong and writes it on the next read.
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected pings only, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= interval * 4,
        "pings come every interval"
    );
    let mut raw = tokio::time::timeout(STEP, raw_task).await.unwrap().unwrap();
    server.publish("alive", "still here").await;
    assert_envelope(
        &next_json(&mut ws).await,
        "alive",
        1,
        &epoch,
        &json!("still here"),
    );
    assert_eq!(raw.next_json().await["data"], "still here");
}

#[tokio::test]
async fn the_server_closes_a_peer_that_never_answers_pings() {
    let interval = Duration::from_millis(200);
    let server = common::start_with(|c| c.ws_ping_interval = interval).await;

    // A peer that reads but never answers: pings, then a close, within a few intervals.
    let mut deaf = RawWs::connect(&server, "/listen?cid=deaf").await;
    let started = Instant::now();
    assert_subscribed(&deaf.next_json().await, "deaf", 0);
    let mut pings = 0;
    let code = loop {
        assert!(
            started.elapsed() < STEP,
            "a peer that never answers is still open"
        );
        let frame = deaf
            .read_frame()
            .await
            .expect("a close frame before the end");
        match frame.opcode {
            OP_PING => pings += 1,
            OP_CLOSE => break frame.close_code(),
            _ => panic!("unexpected {frame:?}"),
        }
    };
    let closed_after = started.elapsed();
    assert!(pings >= 1, "the server pinged first");
    assert!(
        closed_after < interval * 5,
        "closed after {closed_after:?} (interval {interval:?})"
    );
    assert_eq!(code, Some(1008), "policy close for a dead peer");
    assert!(
        deaf.read_frame().await.is_none(),
        "then the connection ends"
    );

    // A peer that completes the handshake and then never reads nor answers: it is dropped
    // (its subscription ends) within a few intervals.
    let _mute = RawWs::connect(&server, "/listen?cid=mute").await;
    let started = Instant::now();
    assert_eq!(server.publish("mute", "x").await["subscribers"], 1);
    loop {
        let subscribers = server.publish("mute", "x").await["subscribers"]
            .as_u64()
            .unwrap();
        if subscribers == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a peer that never answers pings is still subscribed after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped_after = started.elapsed();
    // A close frame after at most two intervals, then up to a second for the peer's close
    // reply (which never comes), then the TCP connection.
    assert!(
        dropped_after < interval * 5 + Duration::from_millis(1_500),
        "dropped after {dropped_after:?}"
    );
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn server_frames_use_the_minimal_length_form_at_every_boundary() {
    let server = common::start_with(|c| c.max_body = 200_000).await;
    let mut raw = RawWs::connect(&server, "/listen?cid=len").await;
    assert_subscribed(&raw.next_json().await, "len", 0);

    // The envelope of a text payload of n ASCII letters is `overhead + digits(id) + n` bytes;
    // learn the overhead from a first message, then aim at each boundary exactly.
    server.publish("len", "a").await;
    let first = raw.read_frame().await.expect("a frame");
    assert_eq!((first.fin, first.opcode), (true, OP_TEXT));
    let overhead = first.payload.len() - 1 - 1;
    let mut id = 1u64;
    for target in [125usize, 126, 127, 65_535, 65_536, 65_537, 150_000] {
        id += 1;
        let digits = id.to_string().len();
        let data = "b".repeat(target - overhead - digits);
        let published = server.publish("len", &data).await;
        assert_eq!(published["id"], id);
        // parse_frame checks the length form; here the exact size and content.
        let frame = raw.read_frame().await.expect("a frame");
        assert_eq!((frame.fin, frame.opcode), (true, OP_TEXT));
        assert_eq!(frame.payload.len(), target, "envelope length");
        let envelope: Value = serde_json::from_slice(&frame.payload).unwrap();
        assert_envelope(
            &envelope,
            "len",
            id,
            published["epoch"].as_str().unwrap(),
            &json!(data),
        );
    }
    // tungstenite agrees on the largest one.
    let (mut ws, _) = subscribe(&server, "len").await;
    let data = "\"quoted\" ".repeat(20_000);
    server.publish("len", &data).await;
    assert_eq!(next_json(&mut ws).await["data"], data.as_str());
    assert_eq!(raw.next_json().await["data"], data.as_str());
}

#[tokio::test]
async fn client_frames_in_every_length_form_fragmented_or_split_are_understood() {
    let server = common::start_with(|c| c.max_body = 100_000).await;

    // Frames written in the same TCP write as the handshake request.
    let stream = TcpStream::connect(server.server.local_addr())
        .await
        .unwrap();
    let early = [
        client_frame(true, OP_TEXT, br#"{"type":"ping","ref":"early"}"#, true),
        client_frame(
            true,
            OP_TEXT,
            br#"{"type":"subscribe","cid":"late","ref":"s"}"#,
            true,
        ),
    ]
    .concat();
    let mut raw = RawWs::handshake_then(stream, &server, "/listen?cid=len", &early).await;
    assert_subscribed(&raw.next_json().await, "len", 0);
    assert_eq!(
        raw.next_json().await,
        json!({"type": "pong", "ref": "early"})
    );
    let reply = raw.next_json().await;
    assert_eq!(
        (&reply["type"], &reply["ref"]),
        (&json!("subscribed"), &json!("s"))
    );

    // 7-bit, 16-bit and 64-bit payload lengths (a ping command padded to each size).
    for size in [125usize, 126, 65_535, 65_536, 99_999] {
        let skeleton = json!({"type": "ping", "ref": size, "pad": ""}).to_string();
        let command =
            json!({"type": "ping", "ref": size, "pad": "p".repeat(size - skeleton.len())})
                .to_string();
        assert_eq!(command.len(), size);
        raw.send_frame(true, OP_TEXT, command.as_bytes()).await;
        assert_eq!(
            raw.next_json().await,
            json!({"type": "pong", "ref": size}),
            "size {size}"
        );
    }

    // A fragmented command with a ping between its fragments: the ping is answered at once.
    raw.send_frame(false, OP_TEXT, br#"{"type":"pi"#).await;
    raw.send_frame(true, OP_PING, b"between").await;
    raw.send_frame(false, OP_CONTINUATION, br#"ng","re"#).await;
    raw.send_frame(true, OP_CONTINUATION, br#"f":"frag"}"#)
        .await;
    let pong = raw.read_frame().await.expect("a pong");
    assert_eq!((pong.opcode, &pong.payload[..]), (OP_PONG, &b"between"[..]));
    assert_eq!(
        raw.next_json().await,
        json!({"type": "pong", "ref": "frag"})
    );

    // A frame dribbled one byte per write.
    let frame = client_frame(true, OP_TEXT, br#"{"type":"ping","ref":"slowly"}"#, true);
    for byte in &frame {
        raw.send_bytes(std::slice::from_ref(byte)).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(
        raw.next_json().await,
        json!({"type": "pong", "ref": "slowly"})
    );

    // Many commands in one write: one reply each, in order.
    let batch: Vec<u8> = (0..50)
        .flat_map(|i| {
            client_frame(
                true,
                OP_TEXT,
                json!({"type": "ping", "ref": i}).to_string().as_bytes(),
                true,
            )
        })
        .collect();
    raw.send_bytes(&batch).await;
    for i in 0..50 {
        assert_eq!(raw.next_json().await, json!({"type": "pong", "ref": i}));
    }

    // And messages still flow to both subscriptions.
    server.publish("late", "to late").await;
    assert_eq!(raw.next_json().await["data"], "to late");
    server.publish("len", "to len").await;
    assert_eq!(raw.next_json().await["data"], "to len");
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let server = common::start().await;
    let mut reserved_bits = client_frame(true, OP_TEXT, br#"{"type":"ping"}"#, true);
    reserved_bits[0] |= 0x40;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("reserved bits without an extension", reserved_bits),
        ("reserved data opcode", client_frame(true, 0x3, b"", true)),
        (
            "reserved control opcode",
            client_frame(true, 0xB, b"", true),
        ),
        ("fragmented ping", client_frame(false, OP_PING, b"x", true)),
        (
            "ping longer than 125 bytes",
            client_frame(true, OP_PING, &[b'x'; 126], true),
        ),
        (
            "continuation without a message",
            client_frame(true, OP_CONTINUATION, b"x", true),
        ),
        (
            "a new message inside a fragmented one",
            [
                client_frame(false, OP_TEXT, b"{", true),
                client_frame(true, OP_TEXT, b"{}", true),
            ]
            .concat(),
        ),
        (
            "close with a 1-byte payload",
            client_frame(true, OP_CLOSE, &[0x03], true),
        ),
        (
            "close with code 1005",
            client_frame(true, OP_CLOSE, &[0x03, 0xED], true),
        ),
        (
            "close with code 999",
            client_frame(true, OP_CLOSE, &[0x03, 0xE7], true),
        ),
    ];
    for (what, bytes) in cases {
        let mut raw = RawWs::connect(&server, "/listen?cid=violations").await;
        assert_subscribed(&raw.next_json().await, "violations", 0);
        raw.send_bytes(&bytes).await;
        assert_eq!(raw.expect_closed().await, Some(1002), "{what}");
    }
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn a_client_close_is_echoed_and_ends_the_subscription() {
    let server = common::start().await;
    let mut raw = RawWs::connect(&server, "/listen?cid=bye").await;
    assert_subscribed(&raw.next_json().await, "bye", 0);
    raw.send_frame(
        true,
        OP_CLOSE,
        &[&1000u16.to_be_bytes()[..], b"done"].concat(),
    )
    .await;
    assert_eq!(raw.expect_closed().await, Some(1000), "the close is echoed");
    assert!(
        raw.read_frame().await.is_none(),
        "then the server closes the TCP connection"
    );

    // tokio-tungstenite's close handshake completes too.
    let (mut ws, _) = subscribe(&server, "bye").await;
    ws.close(None).await.unwrap();
    let (texts, code) = read_until_close(&mut ws).await;
    assert!(texts.is_empty(), "{texts:?}");
    assert!(
        code.is_some(),
        "the server answers the close with a close frame"
    );

    assert_eq!(server.publish("bye", "anyone?").await["subscribers"], 0);
    assert_still_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_while_a_reader_gets_everything() {
    const MESSAGES: u64 = 600;
    let server = Arc::new(
        common::start_with(|c| {
            c.outbox_capacity = 32;
            c.ws_ping_interval = Duration::from_secs(1);
        })
        .await,
    );
    let body = |i: u64| format!("{i:05}:{}", "x".repeat(60_000));

    // The slow consumer: a small receive buffer, and it does not read until the end.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.server.local_addr()).await.unwrap();
    let mut slow = RawWs::handshake(stream, &server, "/listen?cid=firehose").await;

    // The reader reports its progress so the publisher stays within its outbox.
    let (mut reader, _) = subscribe(&server, "firehose").await;
    let (progress, mut progress_rx) = tokio::sync::watch::channel(0u64);
    let reader_task = tokio::spawn(async move {
        for i in 1..=MESSAGES {
            let envelope = next_json(&mut reader).await;
            assert_eq!(envelope["id"], i);
            assert_eq!(envelope["data"], body(i));
            progress.send_replace(i);
        }
        reader
    });

    let mut slowest = Duration::ZERO;
    for i in 1..=MESSAGES {
        tokio::time::timeout(STEP, progress_rx.wait_for(|&done| done + 8 >= i))
            .await
            .expect("the reader keeps up")
            .unwrap();
        let started = Instant::now();
        let published = server.publish("firehose", &body(i)).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(published["id"], i);
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a publish took {slowest:?}"
    );
    let mut reader = tokio::time::timeout(Duration::from_secs(20), reader_task)
        .await
        .expect("the reader receives everything")
        .unwrap();

    // Now the slow consumer reads: a prefix of the stream, then the end.
    let mut received = 0u64;
    let reading = Instant::now();
    let end = loop {
        assert!(
            reading.elapsed() < Duration::from_secs(10),
            "the slow consumer is still connected"
        );
        match slow.read_frame_within(Duration::from_secs(10)).await {
            None => break None,
            Some(frame) if frame.opcode == OP_CLOSE => break frame.close_code(),
            Some(frame) if frame.opcode == OP_PING => {}
            Some(frame) if frame.opcode == OP_TEXT => {
                let v: Value = serde_json::from_slice(&frame.payload).unwrap();
                if v["type"] == "subscribed" {
                    continue;
                }
                received += 1;
                assert_eq!(v["id"], received, "in order, without holes");
            }
            Some(frame) => panic!("unexpected {frame:?}"),
        }
    };
    assert!(
        received < MESSAGES,
        "the slow consumer was never cut off: it received all {MESSAGES} messages"
    );
    assert!(
        matches!(end, None | Some(4008)),
        "slow consumer close code {end:?}"
    );

    // The reader is still live; the server still serves.
    let published = server.publish("firehose", "after").await;
    assert_eq!(published["subscribers"], 1, "only the reader is left");
    assert_eq!(next_json(&mut reader).await["data"], "after");
    assert_still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_falls_behind_is_closed_with_4008_and_resumes_from_history() {
    const MESSAGES: u64 = 400;
    let server = Arc::new(
        common::start_with(|c| {
            c.outbox_capacity = 8;
            c.history_size = 1_000;
        })
        .await,
    );
    let body = |i: u64| format!("{i:05}:{}", "y".repeat(60_000));

    // The laggard stops reading while the messages are published (far more than the socket
    // buffers hold), then reads again; the reader keeps up and paces the publisher.
    let (mut laggard, subscribed) = subscribe(&server, "stream").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    let (mut reader, _) = subscribe(&server, "stream").await;
    let (progress, mut progress_rx) = tokio::sync::watch::channel(0u64);
    let reader_task = tokio::spawn(async move {
        for i in 1..=MESSAGES {
            let envelope = next_json(&mut reader).await;
            assert_eq!(envelope["id"], i);
            assert_eq!(envelope["data"], body(i));
            progress.send_replace(i);
        }
        reader
    });

    for i in 1..=MESSAGES {
        tokio::time::timeout(STEP, progress_rx.wait_for(|&done| done + 4 >= i))
            .await
            .expect("the reader keeps up")
            .unwrap();
        assert_eq!(server.publish("stream", &body(i)).await["id"], i);
    }
    let mut reader = tokio::time::timeout(Duration::from_secs(20), reader_task)
        .await
        .expect("the reader receives everything")
        .unwrap();

    // The laggard reads again: what was already on its way, then the close.
    let mut received = 0u64;
    let started = Instant::now();
    let code = loop {
        assert!(started.elapsed() < Duration::from_secs(20), "never closed");
        match next_any(&mut laggard).await {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                received += 1;
                assert_eq!(v["id"], received, "in order, without holes");
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("the laggard's connection ended without a close: {other:?}"),
        }
    };
    assert_eq!(code, Some(4008), "slow consumer close code");
    assert!(
        received < MESSAGES,
        "closed only after receiving everything"
    );

    // It resumes with its cursor and catches up from history, exactly.
    let mut resumed = connect(
        &server,
        &format!("/listen?cid=stream&since={epoch}:{received}"),
    )
    .await;
    assert_subscribed(&next_json(&mut resumed).await, "stream", received);
    for i in received + 1..=MESSAGES {
        let envelope = next_json(&mut resumed).await;
        assert_eq!(envelope["id"], i);
        assert_eq!(envelope["data"], body(i));
    }
    // Both are live.
    server.publish("stream", "live").await;
    assert_eq!(next_json(&mut resumed).await["data"], "live");
    assert_eq!(next_json(&mut reader).await["data"], "live");
}

/// `/health` → `connections`.
async fn health_connections(server: &TestServer) -> u64 {
    common::raw::health(server).await["connections"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn closed_and_vanished_connections_are_released() {
    let server = common::start().await;
    let baseline = health_connections(&server).await;
    let mut polite = Vec::new();
    for _ in 0..3 {
        polite.push(subscribe(&server, "gone").await.0);
    }
    let mut vanishing = Vec::new();
    for _ in 0..2 {
        let mut raw = RawWs::connect(&server, "/listen?cid=gone").await;
        assert_subscribed(&raw.next_json().await, "gone", 0);
        vanishing.push(raw);
    }
    common::raw::await_connections(&server, baseline + 5).await;
    assert_eq!(server.publish("gone", "x").await["subscribers"], 5);

    for mut ws in polite {
        ws.close(None).await.unwrap();
        read_until_close(&mut ws).await;
    }
    // The raw clients just disappear: no close frame, the TCP connection is dropped.
    drop(vanishing);
    // Clients that leave right after the 101, before reading any frame: they were subscribed
    // before the 101, and that subscription must not outlive them.
    for _ in 0..3 {
        let addr = server.server.local_addr();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let response = raw_request(
            &mut stream,
            &mut buf,
            addr,
            "/listen?cid=gone",
            &UPGRADE_HEADERS,
        )
        .await;
        assert_eq!(response.status, 101);
        drop(stream);
    }
    common::raw::await_connections(&server, baseline).await;
    assert_eq!(server.publish("gone", "y").await["subscribers"], 0);
    assert_still_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_promptly() {
    let server = common::start().await;
    let mut clients = Vec::new();
    for cid in ["s1", "s2", "s2"] {
        clients.push(subscribe(&server, cid).await.0);
    }
    // A peer that will not take part in the closing handshake.
    let mut silent = RawWs::connect(&server, "/listen?cid=s1").await;
    assert_subscribed(&silent.next_json().await, "s1", 0);
    let url = server.ws_url("/listen?cid=s1");
    let TestServer { server, .. } = server;

    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    for ws in &mut clients {
        let (texts, code) = read_until_close(ws).await;
        assert!(texts.is_empty(), "{texts:?}");
        assert_eq!(code, Some(1001), "going away");
    }
    tokio::time::timeout(STEP, shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert_eq!(silent.expect_closed().await, Some(1001), "going away");
    assert!(
        silent.read_frame().await.is_none(),
        "and the connection is closed"
    );
    // No longer accepting.
    assert!(connect_async(url.as_str()).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Scale
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_receive_all_messages_in_order() {
    const CLIENTS: usize = 1_000;
    const MESSAGES: u64 = 100;
    let started = Instant::now();
    let server = common::start().await;

    let clients = connect_crowd(&server, "crowd", CLIENTS, |v| {
        assert_subscribed(v, "crowd", 0);
    })
    .await;
    assert_eq!(clients.len(), CLIENTS);

    let payload = |i: u64| json!({"seq": i, "text": format!("message {i} of {MESSAGES}")});
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut epoch = None;
                for i in 1..=MESSAGES {
                    let v = next_json(&mut ws).await;
                    let e = epoch.get_or_insert_with(|| v["epoch"].as_str().unwrap().to_owned());
                    assert_envelope(&v, "crowd", i, e, &payload(i));
                }
                ws
            })
        })
        .collect();

    for i in 1..=MESSAGES {
        let published = server.publish_json("crowd", &payload(i)).await;
        assert_eq!(published["id"], i);
        assert_eq!(published["subscribers"], CLIENTS);
    }
    let mut complete = 0;
    for reader in readers {
        let mut ws = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("every subscriber receives everything")
            .unwrap();
        // Nothing extra was queued behind the 100 messages.
        if complete == 0 {
            assert_silent(&mut ws, Duration::from_millis(50)).await;
        }
        complete += 1;
    }
    assert_eq!(complete, CLIENTS);
    // Speed is measured by the benchmarks (BENCHMARKS.md), not asserted here; the timeouts
    // above only guard against a hang.
    eprintln!("took {:?}", started.elapsed());
    server.assert_healthy().await;
}

/// A task per subscriber that reads messages 1..=`total` in id order; each returns their
/// bodies.
fn read_in_order(clients: Vec<Ws>, total: u64) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                for id in 1..=total {
                    let v = next_json(&mut ws).await;
                    assert_eq!(v["id"], id, "{v}");
                    bodies.push(v["data"].as_str().unwrap().to_owned());
                }
                bodies
            })
        })
        .collect()
}

/// Publishers racing on one large channel: its fan-out is handed to each connection thread as
/// a share per message (`herald_core::shares`), and a thread that falls behind writes each
/// subscriber several messages as one run, while subscribers whose sockets are full are
/// written by their own tasks. Every subscriber still gets every message once, in id order.
/// (Which paths a run takes depends on timing; with 8 publishers on one channel, runs and
/// full sockets are the rule.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_on_a_large_channel_reach_every_subscriber_in_order() {
    const CLIENTS: usize = 200;
    const PUBLISHERS: usize = 8;
    const EACH: u64 = 40;
    const TOTAL: u64 = PUBLISHERS as u64 * EACH;
    // Each message written as it comes (the test below has the default fan-out window).
    let server = common::start_with(|c| {
        c.history_size = TOTAL as usize;
        c.fanout_window = Duration::ZERO;
    })
    .await;
    let clients = connect_crowd(&server, "race", CLIENTS, |v| {
        assert_subscribed(v, "race", 0);
    })
    .await;
    let readers = read_in_order(clients, TOTAL);
    common::race_publishers(&server, "race", PUBLISHERS as u64, EACH).await;
    let history: Vec<String> = common::history(&server, "race")
        .await
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(history.len(), TOTAL as usize);
    for reader in readers {
        let bodies = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("every subscriber receives everything")
            .unwrap();
        assert_eq!(bodies, history, "every subscriber gets history's order");
    }
    server.assert_healthy().await;
}

/// A large channel's messages published sooner than `fanout-window` after its last write wait
/// for the window and then arrive together; a message of a channel with no recent write does
/// not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_channels_messages_published_within_its_window_wait_for_it() {
    const WINDOW: Duration = Duration::from_secs(1);
    let server = common::start_with(|c| c.fanout_window = WINDOW).await;
    let mut clients = connect_crowd(&server, "paced", 40, |v| {
        assert_subscribed(v, "paced", 0);
    })
    .await;
    let published = Instant::now();
    server.publish("paced", "first").await;
    for ws in &mut clients {
        assert_eq!(next_json(ws).await["id"], 1);
    }
    assert!(
        published.elapsed() < WINDOW,
        "the first write does not wait"
    );
    server.publish("paced", "second").await;
    server.publish("paced", "third").await;
    for ws in &mut clients {
        assert_eq!(next_json(ws).await["id"], 2);
        assert_eq!(next_json(ws).await["id"], 3);
    }
    // The window opened when the first message's write started, after it was published.
    assert!(
        published.elapsed() >= WINDOW,
        "the next write waits for the window: {:?}",
        published.elapsed()
    );
    server.assert_healthy().await;
}

/// Subscribers coming and going while publishers race change a channel's subscribers under
/// the shares of its fan-out (`herald_core::shares`: each change makes new per-thread lists, a
/// run must stop where they differ) and take its size across the bound between a fan-out
/// shared with the connection threads and one the publisher writes, both ways, while shares
/// may still wait. Those who stay get every message once, in id order; those who leave and come
/// back with their cursor go on exactly where they left; those who come without one get the
/// messages right after the id their `subscribed` frame names, in order, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_coming_and_going_on_a_large_channel_lose_nothing_and_keep_order() {
    // 20 stay; 16 + 8 come and go: the channel has between 20 and 44 subscribers, either side
    // of the 32 above which a fan-out is shared.
    const STAYING: usize = 20;
    const RESUMING: u64 = 16;
    const ARRIVING: u64 = 8;
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 100;
    const TOTAL: u64 = PUBLISHERS * EACH;
    let server = common::start_with(|c| {
        c.history_size = TOTAL as usize;
        c.workers = 2;
    })
    .await;
    let staying = connect_crowd(&server, "churn", STAYING, |v| {
        assert_subscribed(v, "churn", 0);
    })
    .await;
    let staying = read_in_order(staying, TOTAL);
    // On one connection each: subscribe from the last id seen, read a few messages,
    // unsubscribe, again, until the last message. Returns how many times it subscribed.
    let resuming: Vec<_> = (0..RESUMING)
        .map(|r| {
            let url = server.ws_url("/listen");
            tokio::spawn(async move {
                let (mut ws, _) = connect_async(url.as_str()).await.unwrap();
                let mut last = 0;
                let mut epoch: Option<String> = None;
                let mut rounds = 0;
                while last < TOTAL {
                    let since = epoch
                        .as_ref()
                        .map_or(last.to_string(), |e| format!("{e}:{last}"));
                    send_json(
                        &mut ws,
                        &json!({"type": "subscribe", "cid": "churn", "since": since}),
                    )
                    .await;
                    let subscribed = next_json(&mut ws).await;
                    let e = assert_subscribed(&subscribed, "churn", last);
                    epoch.get_or_insert(e);
                    rounds += 1;
                    let read = (1 + (r * 7 + rounds) % 13).min(TOTAL - last);
                    for _ in 0..read {
                        let v = next_json(&mut ws).await;
                        assert_eq!(v["id"], last + 1, "resumed after {last}: {v}");
                        last += 1;
                    }
                    send_json(&mut ws, &json!({"type": "unsubscribe", "cid": "churn"})).await;
                    // Messages handed over before the unsubscribe may still come first.
                    loop {
                        let v = next_json(&mut ws).await;
                        if v["type"] == "unsubscribed" {
                            break;
                        }
                        assert_eq!(v["id"], last + 1, "before unsubscribed, after {last}: {v}");
                        last += 1;
                    }
                }
                rounds
            })
        })
        .collect();
    // New connections without a cursor: each reads a few messages after the id its
    // `subscribed` frame names (only as many as will still be published), then leaves.
    let arriving: Vec<_> = (0..ARRIVING)
        .map(|a| {
            let url = server.ws_url("/listen?cid=churn");
            tokio::spawn(async move {
                let mut connections = 0;
                loop {
                    let (mut ws, _) = connect_async(url.as_str()).await.unwrap();
                    connections += 1;
                    let subscribed = next_json(&mut ws).await;
                    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
                    let after = subscribed["id"].as_u64().unwrap();
                    if after == TOTAL {
                        return connections;
                    }
                    let read = (1 + (a * 5 + connections) % 11).min(TOTAL - after);
                    for id in after + 1..=after + read {
                        let v = next_json(&mut ws).await;
                        assert_eq!(v["id"], id, "live after {after}: {v}");
                    }
                    ws.close(None).await.unwrap();
                }
            })
        })
        .collect();
    common::race_publishers(&server, "churn", PUBLISHERS, EACH).await;
    let history: Vec<String> = common::history(&server, "churn")
        .await
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(history.len(), TOTAL as usize);
    let within = Duration::from_secs(60);
    for reader in staying {
        let bodies = tokio::time::timeout(within, reader).await.unwrap().unwrap();
        assert_eq!(
            bodies, history,
            "every subscriber who stays gets history's order"
        );
    }
    let mut subscribes = 0;
    for task in resuming.into_iter().chain(arriving) {
        subscribes += tokio::time::timeout(within, task).await.unwrap().unwrap();
    }
    // They did come and go: more subscribes than subscribers.
    assert!(subscribes > RESUMING + ARRIVING, "{subscribes} subscribes");
    server.assert_healthy().await;
}
