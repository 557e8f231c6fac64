//! Hostile WebSocket input against a real server over raw sockets: bad handshakes and every
//! kind of invalid frame RFC 6455 names. Each gets the close code §7.4 prescribes (or the
//! handshake's HTTP status), the server completes the closing handshake and ends the TCP
//! connection, a well-behaved WebSocket subscriber connected throughout receives every message
//! published during the abuse, and `/health` is back at its baseline afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{json, Value};

use common::raw::{
    self, await_connections, exchange, frame, health, masked_frame, upgrade_request, RawWs,
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
use common::TestServer;

/// What the server must do with the bytes a case sends after the handshake.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Close with this code.
    Close(u16),
    /// End the connection without a close frame (the peer vanished mid-frame).
    Drop,
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A frame header announcing `length` bytes (64-bit form) and a mask, without the payload.
fn header_only(first: u8, length: u64) -> Vec<u8> {
    let mut bytes = vec![first, 0x80 | 127];
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    bytes
}

/// One frame case: name, bytes written after the handshake, whether the client then
/// half-closes (EOF), expectation.
type FrameCase = (String, Vec<u8>, bool, Expect);

#[rustfmt::skip]
fn frame_cases() -> Vec<FrameCase> {
    use Expect::{Close, Drop};
    let mut cases: Vec<FrameCase> = vec![
        ("unmasked text frame".into(), vec![0x81, 2, b'h', b'i'], false, Close(1002)),
        ("unmasked close frame".into(), vec![0x88, 2, 0x03, 0xe8], false, Close(1002)),
        ("RSV1 set".into(), masked_frame(0x80 | 0x40 | OP_TEXT, b"{}"), false, Close(1002)),
        ("RSV2 set".into(), masked_frame(0x80 | 0x20 | OP_TEXT, b"{}"), false, Close(1002)),
        ("RSV3 set on a ping".into(), masked_frame(0x80 | 0x10 | OP_PING, b""), false, Close(1002)),
        ("64-bit length with the top bit set".into(), header_only(0x81, 1 << 63), false, Close(1002)),
        ("64-bit length of 2^62".into(), header_only(0x81, 1 << 62), false, Close(1009)),
        ("length just over max_body".into(), header_only(0x81, 64 * 1024 + 1), false, Close(1009)),
        ("fragments adding up to over max_body".into(), [frame(false, OP_TEXT, &[b'a'; 40_000]), frame(true, OP_CONT, &[b'a'; 40_000])].concat(), false, Close(1009)),
        ("fragmented ping".into(), frame(false, OP_PING, b"p"), false, Close(1002)),
        ("fragmented close".into(), frame(false, OP_CLOSE, &close_payload(1000, b"")), false, Close(1002)),
        ("ping of 126 bytes".into(), frame(true, OP_PING, &[b'p'; 126]), false, Close(1002)),
        ("pong of 126 bytes".into(), frame(true, OP_PONG, &[b'p'; 126]), false, Close(1002)),
        ("close of 126 bytes".into(), frame(true, OP_CLOSE, &close_payload(1000, &[b'r'; 124])), false, Close(1002)),
        ("continuation without a start".into(), frame(true, OP_CONT, b"x"), false, Close(1002)),
        ("non-final continuation without a start".into(), frame(false, OP_CONT, b"x"), false, Close(1002)),
        ("text inside a fragmented text".into(), [frame(false, OP_TEXT, b"{"), frame(true, OP_TEXT, b"}")].concat(), false, Close(1002)),
        ("binary inside a fragmented text".into(), [frame(false, OP_TEXT, b"{"), frame(true, OP_BINARY, b"}")].concat(), false, Close(1002)),
        ("invalid UTF-8 in a text frame".into(), frame(true, OP_TEXT, b"{\"type\":\"\xff\"}"), false, Close(1007)),
        ("UTF-8 surrogate in a text frame".into(), frame(true, OP_TEXT, b"\xed\xa0\x80"), false, Close(1007)),
        ("overlong UTF-8 in a text frame".into(), frame(true, OP_TEXT, b"\xc0\xaf"), false, Close(1007)),
        ("invalid UTF-8 split across fragments".into(), [frame(false, OP_TEXT, b"\xe2\x82"), frame(true, OP_CONT, b"\x28")].concat(), false, Close(1007)),
        ("invalid UTF-8 in a fragment that is not the last".into(), frame(false, OP_TEXT, b"ok\xff"), false, Close(1007)),
        ("invalid UTF-8 in a middle fragment".into(), [frame(false, OP_TEXT, b"{"), frame(false, OP_CONT, b"\xf8\x88\x80\x80\x80")].concat(), false, Close(1007)),
        ("close with a 1-byte payload".into(), frame(true, OP_CLOSE, &[0x03]), false, Close(1002)),
        ("close with invalid UTF-8 in its reason".into(), frame(true, OP_CLOSE, &close_payload(1000, b"bye\xff")), false, Close(1007)),
        ("binary frame".into(), frame(true, OP_BINARY, b"\x00\x01"), false, Close(1003)),
        ("fragmented binary message".into(), [frame(false, OP_BINARY, b"\x00"), frame(true, OP_CONT, b"\x01")].concat(), false, Close(1003)),
        ("connect then EOF".into(), Vec::new(), true, Drop),
        ("one header byte then EOF".into(), vec![0x81], true, Drop),
        ("header without the mask then EOF".into(), vec![0x81, 0x85], true, Drop),
        ("half a payload then EOF".into(), frame(true, OP_TEXT, b"{\"type\":\"ping\"}")[..10].to_vec(), true, Drop),
        ("half of a 16-bit length then EOF".into(), vec![0x81, 0x80 | 126, 0x01], true, Drop),
        ("first fragment then EOF".into(), frame(false, OP_TEXT, b"{\"ty"), true, Drop),
    ];
    // Every reserved opcode, data (0x3-0x7) and control (0xB-0xF).
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push((format!("reserved opcode {opcode:#x}"), frame(true, opcode, b""), false, Close(1002)));
    }
    // Close codes an endpoint must not send (RFC 6455 §7.4.1, §7.4.2).
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        cases.push((format!("close with invalid code {code}"), frame(true, OP_CLOSE, &close_payload(code, b"")), false, Close(1002)));
    }
    cases
}

/// Connects, sends `bytes`, and checks the outcome.
async fn check(server: &TestServer, name: &str, bytes: &[u8], eof: bool, expect: Expect) {
    let mut ws = RawWs::subscribe(server, "abuser").await;
    ws.send(bytes).await;
    if eof {
        use tokio::io::AsyncWriteExt;
        let _ = ws.stream.shutdown().await;
    }
    let code = ws.expect_close().await;
    match expect {
        Expect::Close(expected) => assert_eq!(code, Some(expected), "{name}"),
        Expect::Drop => assert_eq!(code, None, "{name}"),
    }
}

/// A well-behaved WebSocket subscriber that is connected throughout the abuse.
struct WsBystander {
    ws: RawWs,
    published: u64,
}

impl WsBystander {
    async fn join(server: &TestServer) -> Self {
        let ws = RawWs::subscribe(server, "wsbystander").await;
        Self { ws, published: 0 }
    }

    async fn publish(&mut self, server: &TestServer) {
        self.published += 1;
        let published = server
            .publish("wsbystander", &format!("m{}", self.published))
            .await;
        assert!(published["subscribers"].as_u64().unwrap() >= 1);
    }

    async fn assert_received_everything(mut self) {
        for i in 1..=self.published {
            let envelope = self.ws.next_json().await;
            assert_eq!(envelope["id"], i, "{envelope}");
            assert_eq!(envelope["data"], format!("m{i}"), "{envelope}");
        }
    }
}

#[tokio::test]
async fn invalid_frames_get_the_rfc_close_code_and_nobody_else_notices() {
    let server = common::start().await;
    let mut bystander = WsBystander::join(&server).await;
    // The abusers subscribe to `abuser` (each handshake is valid): that channel may exist.
    server.publish("abuser", "before").await;
    let baseline = health(&server).await;
    let baseline_connections = baseline["connections"].as_u64().unwrap();
    for (name, bytes, eof, expect) in frame_cases() {
        check(&server, &name, &bytes, eof, expect).await;
        bystander.publish(&server).await;
    }
    // All of them at once.
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for (name, bytes, eof, expect) in frame_cases() {
        let server = std::sync::Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            check(&server, &name, &bytes, eof, expect).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    bystander.publish(&server).await;

    await_connections(&server, baseline_connections).await;
    assert_eq!(health(&server).await["channels"], baseline["channels"]);
    assert_eq!(
        server.publish("abuser", "after").await["subscribers"],
        0,
        "no abuser's subscription outlived its connection"
    );
    bystander.assert_received_everything().await;
}

#[tokio::test]
async fn a_fragmented_text_with_invalid_utf8_is_failed_at_once_not_at_its_end() {
    // RFC 6455 §8.1: an endpoint that finds invalid UTF-8 fails the connection. The message
    // never ends here: a server that only validates complete messages would wait forever.
    let server = common::start().await;
    let mut ws = RawWs::subscribe(&server, "failfast").await;
    ws.send(&frame(false, OP_TEXT, b"{\"type\":")).await;
    ws.send(&frame(false, OP_CONT, b"\"\xed\xbf\xbf")).await;
    assert_eq!(ws.expect_close().await, Some(1007));
}

#[tokio::test]
async fn valid_close_frames_are_echoed_with_their_code() {
    let server = common::start().await;
    for (payload, echoed) in [
        (Vec::new(), 1000),
        (close_payload(1000, b""), 1000),
        (close_payload(1001, "bye \u{1F44B}".as_bytes()), 1001),
        (close_payload(1011, b""), 1011),
        (close_payload(3000, b"app"), 3000),
        (close_payload(4999, b""), 4999),
        (close_payload(1000, &[b'r'; 123]), 1000),
    ] {
        let mut ws = RawWs::subscribe(&server, "closer").await;
        ws.send(&frame(true, OP_CLOSE, &payload)).await;
        let reply = ws.read_frame().await.expect("the close is echoed");
        assert_eq!(reply.opcode, OP_CLOSE);
        assert_eq!(reply.close_code(), Some(echoed));
        assert!(
            ws.read_frame().await.is_none(),
            "then the server ends the connection"
        );
    }
}

#[tokio::test]
async fn control_frames_between_fragments_are_answered_and_the_message_still_arrives() {
    let server = common::start().await;
    let mut ws = RawWs::subscribe(&server, "interleave").await;
    let command = br#"{"type":"ping","ref":"r1"}"#;
    let mut bytes = frame(false, OP_TEXT, &command[..5]);
    bytes.extend(frame(true, OP_PING, b"p1"));
    bytes.extend(frame(false, OP_CONT, &command[5..12]));
    bytes.extend(frame(true, OP_PONG, b"unsolicited"));
    bytes.extend(frame(true, OP_CONT, &command[12..]));
    // Split the whole sequence into 3-byte writes.
    for chunk in bytes.chunks(3) {
        ws.send(chunk).await;
    }
    let pong = ws.read_frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"p1"[..])
    );
    assert_eq!(ws.next_json().await, json!({"type": "pong", "ref": "r1"}));
}

#[tokio::test]
async fn a_message_in_one_byte_fragments_is_reassembled_in_linear_time() {
    // 60 000 fragments of one byte each (a multi-byte character split across them too): the
    // per-fragment UTF-8 check looks only at the new bytes, so this is as cheap as one frame.
    let server = common::start().await;
    let mut ws = RawWs::subscribe(&server, "tiny").await;
    let padding = "\u{e9}".repeat(30_000);
    let command = format!(r#"{{"type":"ping","ref":"{padding}"}}"#);
    let bytes = command.as_bytes();
    let mut stream = Vec::with_capacity(bytes.len() * 7);
    for (i, byte) in bytes.iter().enumerate() {
        let opcode = if i == 0 { OP_TEXT } else { OP_CONT };
        stream.extend(frame(i + 1 == bytes.len(), opcode, &[*byte]));
    }
    let started = std::time::Instant::now();
    ws.send(&stream).await;
    let reply = ws.next_json().await;
    assert_eq!(reply["type"], "pong");
    assert_eq!(reply["ref"], padding);
    assert!(started.elapsed() < raw::STEP);
}

#[tokio::test]
async fn a_client_publish_strict_parsers_reject_is_an_error_frame() {
    let server = common::start_with(|c| c.client_publish = true).await;
    let mut ws = RawWs::subscribe(&server, "strictws").await;
    let command = br#"{"type":"publish","cid":"strictws","data":"\udc00","ref":1}"#;
    ws.send(&frame(true, OP_TEXT, command)).await;
    let reply: Value = ws.next_json().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["ref"], 1);
    ws.send(&frame(true, OP_TEXT, br#"{"type":"ping"}"#)).await;
    assert_eq!(
        ws.next_json().await["type"],
        "pong",
        "the connection stays usable"
    );
}

// ---------------------------------------------------------------------------------------------
// Handshakes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_handshakes_are_refused_with_a_json_error_and_subscribe_nobody() {
    let server = common::start().await;
    let addr = server.server.local_addr();
    let baseline = health(&server).await;
    let h = |pairs: &[(&'static str, &'static str)]| pairs.to_vec();
    type Headers = Vec<(&'static str, &'static str)>;
    let cases: Vec<(&str, Headers, u16)> = vec![
        (
            "missing key",
            h(&[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"),
            ]),
            400,
        ),
        (
            "key of wrong length",
            h(&[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "c2hvcnQ="),
                ("Sec-WebSocket-Version", "13"),
            ]),
            400,
        ),
        (
            "key that is not base64",
            h(&[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!=="),
                ("Sec-WebSocket-Version", "13"),
            ]),
            400,
        ),
        (
            "key of 24 characters that is not 16 bytes",
            h(&[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=A"),
                ("Sec-WebSocket-Version", "13"),
            ]),
            400,
        ),
        (
            "empty key",
            h(&[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", ""),
                ("Sec-WebSocket-Version", "13"),
            ]),
            400,
        ),
        (
            "wrong version",
            h(&[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", raw::KEY),
                ("Sec-WebSocket-Version", "8"),
            ]),
            426,
        ),
        (
            "missing version",
            h(&[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", raw::KEY),
            ]),
            426,
        ),
        (
            "missing Connection: Upgrade",
            h(&[
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", raw::KEY),
                ("Sec-WebSocket-Version", "13"),
            ]),
            400,
        ),
        (
            "Connection without upgrade",
            h(&[
                ("Upgrade", "websocket"),
                ("Connection", "keep-alive"),
                ("Sec-WebSocket-Key", raw::KEY),
                ("Sec-WebSocket-Version", "13"),
            ]),
            400,
        ),
    ];
    for (name, headers, status) in cases {
        let request = upgrade_request(addr, "/listen?cid=handshake", Some(&headers));
        let exchange = exchange(addr, &request, false, 1).await;
        let response = exchange
            .responses
            .first()
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(response.status, status, "{name}: {response:?}");
        response.json_error();
        if status == 426 {
            assert_eq!(
                response.header("sec-websocket-version"),
                Some("13"),
                "{name}"
            );
        }
    }
    for (name, target, status) in [
        ("bad cid", "/listen?cid=a%20b", 400),
        ("bad cursor", "/listen?cid=handshake&since=x", 400),
        ("unknown path", "/ws", 404),
    ] {
        let request = upgrade_request(addr, target, None);
        let exchange = exchange(addr, &request, false, 1).await;
        let response = exchange
            .responses
            .first()
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(response.status, status, "{name}: {response:?}");
        response.json_error();
    }
    let post = String::from_utf8(upgrade_request(addr, "/listen?cid=handshake", None))
        .unwrap()
        .replacen("GET", "POST", 1);
    let exchange = exchange(addr, post.as_bytes(), false, 1).await;
    assert_eq!(exchange.responses[0].status, 405);

    await_connections(&server, baseline["connections"].as_u64().unwrap()).await;
    assert_eq!(
        server.publish("handshake", "x").await["subscribers"],
        0,
        "no refused handshake left a subscription behind"
    );
}
