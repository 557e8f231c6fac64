//! The connection front (`src/front.rs`) over real sockets: plain-TCP `GET /listen` requests
//! answered without hyper — long polls with `content-length` and keep-alive, pipelined
//! requests, `Connection: close`, errors as JSON, SSE and forever-iframe streams with chunked
//! framing, the client going away while a response is in flight, shutdown of an open stream —
//! publishes whose body came with the head (pipelined, JSON and text, refused ones, answered
//! before their fan-out and finished when the socket takes an answer only in part) — and the
//! requests the front reads on (a head split across writes, a publish body still on its way)
//! or hands to hyper for the rest of the connection (any other path, HTTP/1.0, a chunked
//! publish body, bodies on a listen, `Expect`, large heads, WebSocket upgrades).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::connect_async;

use common::raw::{self, read_more, read_response, roundtrip, wait_closed, RawResponse, STEP};
use common::{
    connect_crowd, publish_n, subscribers, wait_for_subscribers, ws_next_json, TestServer, Ws,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A raw connection to the server and the bytes read past the last response.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: SocketAddr,
}

impl Conn {
    async fn open(server: &TestServer) -> Self {
        let addr = server.server.local_addr();
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            addr,
        }
    }

    /// Writes `bytes` in one write.
    async fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Writes a `GET` of `target` (with `Host` and `headers`).
    async fn get(&mut self, target: &str, headers: &[(&str, &str)]) {
        let request = raw::get(target, self.addr, headers);
        self.send(&request).await;
    }

    /// Reads the next response (head, and body by `content-length`); panics after [`STEP`]
    /// or if the connection ends first.
    async fn response(&mut self) -> RawResponse {
        tokio::time::timeout(STEP, read_response(&mut self.stream, &mut self.buf))
            .await
            .expect("a response in time")
            .expect("a response before the connection ended")
    }

    /// Sends a `GET` and reads its response.
    async fn roundtrip_get(&mut self, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        let request = raw::get(target, self.addr, headers);
        roundtrip(&mut self.stream, &mut self.buf, &request).await
    }

    /// Reads one chunk of a chunked body, checking its framing (hex size line, the data, CRLF):
    /// `Some(data)`, or `None` for the last chunk (`0\r\n\r\n`). Panics after [`STEP`] or
    /// if the connection ends inside the body.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let Self { stream, buf, .. } = self;
        tokio::time::timeout(STEP, async {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(
                    read_more(stream, buf).await,
                    "connection ended before a chunk size line; have {:?}",
                    String::from_utf8_lossy(buf)
                );
            };
            let line = std::str::from_utf8(&buf[..line_end]).unwrap().to_string();
            let size = usize::from_str_radix(&line, 16)
                .unwrap_or_else(|_| panic!("chunk size line {line:?}"));
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                assert!(
                    read_more(stream, buf).await,
                    "connection ended inside a chunk of {size} bytes"
                );
            }
            assert_eq!(
                &buf[size..size + 2],
                b"\r\n",
                "a chunk of {size} bytes must end with CRLF: {:?}",
                String::from_utf8_lossy(buf)
            );
            let data: Vec<u8> = buf.drain(..size).collect();
            buf.drain(..2);
            (size > 0).then_some(data)
        })
        .await
        .expect("a chunk in time")
    }

    /// Reads chunks into `body` until it contains `needle`; panics if the body ends first.
    async fn chunks_until(&mut self, body: &mut String, needle: &str) {
        while !body.contains(needle) {
            let data = self
                .chunk()
                .await
                .unwrap_or_else(|| panic!("the body ended before {needle:?}; got {body:?}"));
            body.push_str(std::str::from_utf8(&data).unwrap());
        }
    }

    /// Reads chunks into `body` until it holds a whole SSE block (ending in a blank line)
    /// after `needle`.
    async fn chunks_until_block(&mut self, body: &mut String, needle: &str) {
        self.chunks_until(body, needle).await;
        let at = body.find(needle).unwrap();
        while !body[at..].contains("\n\n") {
            let data = self
                .chunk()
                .await
                .unwrap_or_else(|| panic!("the body ended inside a block: {body:?}"));
            body.push_str(std::str::from_utf8(&data).unwrap());
        }
    }

    /// Whether the server closes the connection within [`STEP`] (nothing more may arrive).
    async fn closed_by_server(&mut self) -> bool {
        tokio::time::timeout(STEP, read_more(&mut self.stream, &mut self.buf))
            .await
            .is_ok_and(|more| !more)
            && self.buf.is_empty()
    }
}

/// A streamed answer's head: 200, chunked, no `content-length`, a `date`.
/// A WebSocket subscribed to `cid`, once the server counts it among the channel's subscribers.
async fn subscribed_websocket(server: &TestServer, cid: &str) -> Ws {
    let url = server.ws_url(&format!("/listen?cid={cid}"));
    let (mut ws, _) = connect_async(url.as_str()).await.unwrap();
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
    wait_for_subscribers(server, cid, 1).await;
    ws
}

fn assert_chunked_head(response: &RawResponse, content_type: &str) {
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.header("transfer-encoding"),
        Some("chunked"),
        "{response:?}"
    );
    assert_eq!(response.header("content-length"), None, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with(content_type)),
        "{response:?}"
    );
    assert_date(response);
}

/// A complete answer: `content-length` equal to the body read, a valid `date`.
fn assert_complete(response: &RawResponse) {
    let length: usize = response
        .header("content-length")
        .unwrap_or_else(|| panic!("content-length expected: {response:?}"))
        .parse()
        .unwrap();
    assert_eq!(length, response.body.len());
    assert_eq!(response.header("transfer-encoding"), None, "{response:?}");
    assert_date(response);
}

fn assert_date(response: &RawResponse) {
    let date = response
        .header("date")
        .unwrap_or_else(|| panic!("a date header: {response:?}"));
    httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("date {date:?}: {e}"));
}

/// A 200 long-poll answer: its envelopes' `data` and its cursor.
fn messages(response: &RawResponse) -> (Vec<String>, String) {
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{response:?}"
    );
    let body = response.json();
    let data = body
        .as_array()
        .unwrap_or_else(|| panic!("a JSON array: {body}"))
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_string())
        .collect();
    let cursor = response
        .header("x-herald-cursor")
        .expect("x-herald-cursor")
        .to_string();
    (data, cursor)
}

/// The `(event, data)` of each SSE block in `body` that carries data.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event = Some(value.trim_start().to_string());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data = Some(value.trim_start().to_string());
                }
            }
            data.map(|data| (event, data))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Long polling answered by the front
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn long_polls_keep_the_connection_alive_across_requests() {
    let server = common::start().await;
    let mut conn = Conn::open(&server).await;

    conn.get("/listen?cid=a", &[]).await;
    wait_for_subscribers(&server, "a", 1).await;
    server.publish("a", "one").await;
    let first = conn.response().await;
    assert_complete(&first);
    assert_eq!(first.header("connection"), None, "{first:?}");
    let (data, cursor) = messages(&first);
    assert_eq!(data, ["one"]);
    assert!(cursor.ends_with(":1"), "{cursor}");

    // The same socket, a second long poll that waits for the next message.
    wait_for_subscribers(&server, "a", 0).await;
    conn.get(&format!("/listen?cid=a&since={cursor}"), &[])
        .await;
    wait_for_subscribers(&server, "a", 1).await;
    server.publish("a", "two").await;
    let second = conn.response().await;
    assert_complete(&second);
    let (data, cursor) = messages(&second);
    assert_eq!(data, ["two"]);
    assert!(cursor.ends_with(":2"), "{cursor}");
    assert_eq!(second.json()[0]["id"], 2);

    // And a third, answered from history.
    let third = conn.roundtrip_get("/listen/?cid=a&since=0", &[]).await;
    assert_complete(&third);
    assert_eq!(messages(&third).0, ["one", "two"]);
}

#[tokio::test]
async fn pipelined_long_polls_are_answered_in_order() {
    let server = common::start().await;
    publish_n(&server, "p", 3).await;
    let mut conn = Conn::open(&server).await;
    let addr = conn.addr;
    let both = format!(
        "{}{}",
        raw::get("/listen?cid=p&since=0", addr, &[]),
        raw::get("/listen?cid=p&since=2", addr, &[])
    );
    conn.send(&both).await;
    let first = conn.response().await;
    assert_complete(&first);
    assert_eq!(messages(&first).0, ["m1", "m2", "m3"]);
    let second = conn.response().await;
    assert_complete(&second);
    assert_eq!(messages(&second).0, ["m3"]);
    assert!(conn.buf.is_empty(), "nothing more: {:?}", conn.buf);
    // Still open for a third.
    let third = conn.roundtrip_get("/listen?cid=p&since=1", &[]).await;
    assert_eq!(messages(&third).0, ["m2", "m3"]);
}

#[tokio::test]
async fn a_request_pipelined_behind_a_waiting_long_poll_waits_its_turn() {
    let server = common::start().await;
    let mut conn = Conn::open(&server).await;
    conn.get("/listen?cid=w", &[]).await;
    wait_for_subscribers(&server, "w", 1).await;
    // The next request arrives while the first is waiting: it must not end the first (the
    // front only watches for the client going away) and is answered after it, although its
    // own answer (history of another channel) is ready at once.
    server.publish("w2", "zero").await;
    conn.get("/listen?cid=w2&since=0", &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        subscribers(&server, "w"),
        1,
        "the waiting long poll is still there"
    );
    server.publish("w", "first").await;
    let first = conn.response().await;
    assert_eq!(messages(&first).0, ["first"]);
    let second = conn.response().await;
    assert_eq!(messages(&second).0, ["zero"]);
}

#[tokio::test]
async fn a_publish_then_health_on_a_connection_the_front_started() {
    let server = common::start().await;
    server.publish("mx", "m1").await;
    let mut conn = Conn::open(&server).await;
    let listen = conn.roundtrip_get("/listen?cid=mx&since=0", &[]).await;
    assert_complete(&listen);
    assert_eq!(messages(&listen).0, ["m1"]);

    // A publish on the same socket (the front answers it too), then a request hyper serves
    // the connection for from there on.
    let request = raw::publish("mx", "m2", conn.addr);
    let published = roundtrip(&mut conn.stream, &mut conn.buf, &request).await;
    assert_eq!(published.status, 200, "{published:?}");
    let body = published.json();
    assert_eq!(body["published"][0]["id"], 2, "{body}");

    let health = conn.roundtrip_get("/health", &[]).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(health.json()["connections"].as_u64().is_some());

    // A long poll still works on the connection hyper now serves.
    let listen = conn.roundtrip_get("/listen?cid=mx&since=0", &[]).await;
    assert_eq!(messages(&listen).0, ["m1", "m2"]);
}

#[tokio::test]
async fn pipelined_publishes_are_answered_in_order_and_delivered() {
    let server = common::start().await;
    let mut ws = subscribed_websocket(&server, "pp").await;
    let mut conn = Conn::open(&server).await;
    let json = |body: &str| {
        format!(
            "POST /publish?cid=pp HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Three requests in one write: JSON, text, and JSON that is not valid.
    let pipelined = format!(
        "{}{}{}",
        json(r#"{"n":1}"#),
        raw::publish("pp", "two", conn.addr),
        json("{nope")
    );
    conn.send(&pipelined).await;
    for id in [1, 2] {
        let answer = conn.response().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_complete(&answer);
        let body = answer.json();
        assert_eq!(body["published"][0]["id"], id, "{body}");
        assert_eq!(body["published"][0]["subscribers"], 1, "{body}");
    }
    let refused = conn.response().await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.json()["error"].is_string(), "{refused:?}");
    assert_eq!(
        ws_next_json(&mut ws, STEP).await["data"],
        serde_json::json!({"n": 1})
    );
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "two");
    // The connection goes on, with a long poll the front answers.
    let listen = conn.roundtrip_get("/listen?cid=pp&since=0", &[]).await;
    assert_complete(&listen);
    let ids: Vec<_> = listen
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [1, 2], "{listen:?}");
}

/// A request the front does not take, read together with one it answers, is handed to hyper
/// with its bytes as soon as the first is answered: the client sent it whole and waits.
#[tokio::test]
async fn requests_for_hyper_pipelined_behind_answered_ones_are_answered() {
    let server = common::start().await;
    server.publish("ph", "m1").await;
    let mut conn = Conn::open(&server).await;
    let addr = conn.addr;
    let three = format!(
        "{}{}{}",
        raw::get("/listen?cid=ph&since=0", addr, &[]),
        raw::publish("ph", "m2", addr),
        raw::get("/health", addr, &[]),
    );
    conn.send(&three).await;
    assert_eq!(messages(&conn.response().await).0, ["m1"]);
    let published = conn.response().await;
    assert_eq!(published.json()["published"][0]["id"], 2, "{published:?}");
    let health = conn.response().await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        health.json()["connections"].as_u64().is_some(),
        "{health:?}"
    );

    // A WebSocket handshake behind a long poll, in the same write.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut both = raw::get("/listen?cid=ph&since=1", addr, &[]).into_bytes();
    both.extend(raw::upgrade_request(addr, "/listen?cid=ph&since=0", None));
    stream.write_all(&both).await.unwrap();
    let mut buf = Vec::new();
    let poll = tokio::time::timeout(STEP, read_response(&mut stream, &mut buf))
        .await
        .expect("long poll answered in time")
        .expect("a response");
    assert_eq!(messages(&poll).0, ["m2"]);
    let mut ws = raw::RawWs::upgraded(stream, buf).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    for id in [1, 2] {
        assert_eq!(ws.next_json().await["id"], id);
    }
}

/// Pipelined requests — some the front answers, then some it hands to hyper — arrive cut at
/// arbitrary bytes into separate writes; every one is answered, in order, whichever reads its
/// bytes end up in. The cuts come from a fixed-seed generator, so a failure repeats.
#[tokio::test]
async fn pipelined_requests_cut_at_arbitrary_bytes_are_answered_in_order() {
    let server = common::start().await;
    let addr = server.server.local_addr();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        // xorshift64: enough to spread cut points, no dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    for round in 0..24 {
        let cid = format!("cut{round}");
        server.publish(&cid, "m0").await;
        let requests = [
            raw::get(&format!("/listen?cid={cid}&since=0"), addr, &[]),
            raw::publish(&cid, "m1", addr),
            raw::get(&format!("/listen?cid={cid}&since=1"), addr, &[]),
            // hyper's from here on.
            raw::get(&format!("/messages?cid={cid}&since=0"), addr, &[]),
            raw::publish(&cid, "m2", addr),
            raw::get(&format!("/listen?cid={cid}&since=2"), addr, &[]),
        ]
        .concat()
        .into_bytes();
        let mut cuts: Vec<usize> = (0..1 + next(4))
            .map(|_| 1 + next(requests.len() - 1))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut conn = Conn::open(&server).await;
        let mut start = 0;
        for end in cuts.into_iter().chain([requests.len()]) {
            conn.stream.write_all(&requests[start..end]).await.unwrap();
            start = end;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let context = format!("round {round}");
        assert_eq!(messages(&conn.response().await).0, ["m0"], "{context}");
        let published = conn.response().await;
        assert_eq!(published.json()["published"][0]["id"], 2, "{context}");
        assert_eq!(messages(&conn.response().await).0, ["m1"], "{context}");
        let history = conn.response().await;
        assert_eq!(history.status, 200, "{context}: {history:?}");
        assert_eq!(
            history.json().as_array().map(Vec::len),
            Some(2),
            "{context}"
        );
        let published = conn.response().await;
        assert_eq!(published.json()["published"][0]["id"], 3, "{context}");
        assert_eq!(messages(&conn.response().await).0, ["m2"], "{context}");
    }
}

/// A pipelined request cut short by the end of a read is read on when the rest comes, and
/// the front still answers it.
#[tokio::test]
async fn a_pipelined_request_completed_by_a_later_write_is_answered() {
    let server = common::start().await;
    publish_n(&server, "pc", 2).await;
    let mut conn = Conn::open(&server).await;
    let second = raw::get("/listen?cid=pc&since=1", conn.addr, &[]);
    let (start, rest) = second.split_at(10);
    conn.send(&format!(
        "{}{start}",
        raw::get("/listen?cid=pc&since=0", conn.addr, &[])
    ))
    .await;
    assert_eq!(messages(&conn.response().await).0, ["m1", "m2"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(rest).await;
    let answer = conn.response().await;
    assert_complete(&answer);
    assert_eq!(messages(&answer).0, ["m2"]);
}

#[tokio::test]
/// Publishes the front reads on (a late body) or does not take (a chunked or `Expect` body:
/// `parse_head`'s unit tests show it hands them to hyper) and one it takes but refuses, each
/// on its own connection: every one gets its answer and leaves the connection usable.
async fn publishes_with_a_late_chunked_expecting_or_oversized_body_are_answered() {
    let server = common::start_with(|c| c.max_body = 16).await;
    let cases: Vec<(&str, Vec<&str>, u16)> = vec![
        (
            "a body sent after its head",
            vec!["POST /publish?cid=pb HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n", "hi"],
            200,
        ),
        (
            "a chunked body",
            vec!["POST /publish?cid=pb HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"],
            200,
        ),
        (
            "Expect: 100-continue",
            vec!["POST /publish?cid=pb HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", "hi"],
            200,
        ),
        (
            "a body over max-body, all there (the front answers 413)",
            vec!["POST /publish?cid=pb HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n\r\n01234567890123456"],
            413,
        ),
    ];
    let mut published = 0;
    for (name, parts, status) in cases {
        let mut conn = Conn::open(&server).await;
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            conn.send(part).await;
        }
        let mut answer = conn.response().await;
        if answer.status == 100 {
            answer = conn.response().await;
        }
        assert_eq!(answer.status, status, "{name}: {answer:?}");
        if status == 200 {
            published += 1;
            assert_eq!(answer.json()["published"][0]["id"], published, "{name}");
        } else {
            assert!(answer.json()["error"].is_string(), "{name}: {answer:?}");
        }
        // Still usable afterwards.
        let again = conn.roundtrip_get("/listen?cid=pb&since=0", &[]).await;
        assert_eq!(
            messages(&again).0.len(),
            published as usize,
            "{name}: the next request"
        );
    }
}

/// A publish body that comes after its head is read on by the front: bytes that came with its
/// end (a pipelined request) are the next request; a body that stops coming is bounded by the
/// head timeout, and the connection is closed without an answer, like a head that stops.
#[tokio::test]
async fn a_late_body_is_read_on_within_the_head_timeout() {
    let server = common::start_with(|c| c.header_read_timeout = Duration::from_millis(300)).await;
    let publish = raw::publish("late", "a body in two parts", server.server.local_addr());
    let (first, rest) = publish.split_at(publish.len() - 6);

    let mut conn = Conn::open(&server).await;
    conn.send(first).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(&format!(
        "{rest}{}",
        raw::get("/listen?cid=late&since=0", conn.addr, &[])
    ))
    .await;
    let answer = conn.response().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["published"][0]["id"], 1);
    let listened = conn.response().await;
    assert_complete(&listened);
    assert_eq!(messages(&listened).0, ["a body in two parts"]);

    let mut stalled = Conn::open(&server).await;
    stalled.send(first).await;
    let waited = wait_closed(&mut stalled.stream, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(
        common::history(&server, "late").await.len(),
        1,
        "not published"
    );
}

/// A body far larger than one read, sent in pieces, is read whole and published as sent.
#[tokio::test]
async fn a_large_body_in_pieces_is_published_whole() {
    let server = common::start().await;
    let body: String = (0..50_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let publish = raw::publish("large", &body, server.server.local_addr());
    let mut conn = Conn::open(&server).await;
    for piece in publish.as_bytes().chunks(12_000) {
        conn.stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = conn.response().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let history = common::history(&server, "large").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["data"], body.as_str());
    // The connection goes on.
    let again = conn.roundtrip_get("/listen?cid=large&since=0", &[]).await;
    assert_eq!(messages(&again).0.len(), 1);
}

#[tokio::test]
async fn connection_close_is_answered_and_the_server_closes() {
    let server = common::start().await;
    server.publish("cc", "m1").await;
    let mut conn = Conn::open(&server).await;
    let response = conn
        .roundtrip_get("/listen?cid=cc&since=0", &[("Connection", "close")])
        .await;
    assert_complete(&response);
    assert_eq!(messages(&response).0, ["m1"]);
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    assert!(conn.buf.is_empty());
    assert!(
        wait_closed(&mut conn.stream, STEP).await.is_some(),
        "the server closes the connection after a Connection: close answer"
    );

    // `close` as one token among others.
    let mut conn = Conn::open(&server).await;
    let response = conn
        .roundtrip_get("/listen?cid=cc&since=0", &[("Connection", "foo, Close")])
        .await;
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    assert!(conn.closed_by_server().await);
}

/// A publish the front answers before its fan-out (`src/answer_first.rs`) carries the same
/// head as any other answer, honours `Connection: close`, and is followed by its delivery.
#[tokio::test]
async fn an_early_publish_answer_is_a_whole_answer_and_honours_connection_close() {
    let server = common::start().await;
    let mut ws = subscribed_websocket(&server, "ea").await;

    let mut conn = Conn::open(&server).await;
    let request = raw::publish("ea", "kept", conn.addr);
    let answer = roundtrip(&mut conn.stream, &mut conn.buf, &request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_complete(&answer);
    assert_date(&answer);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("connection"), None, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["published"][0]["id"], 1, "{body}");
    assert_eq!(body["published"][0]["subscribers"], 1, "{body}");
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "kept");

    let request = raw::publish("ea", "last", conn.addr).replacen(
        "\r\n\r\n",
        "\r\nConnection: close\r\n\r\n",
        1,
    );
    let answer = roundtrip(&mut conn.stream, &mut conn.buf, &request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert_eq!(answer.json()["published"][0]["id"], 2);
    assert!(conn.closed_by_server().await);
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "last");
}

/// A publish the front serves is answered before its fan-out starts: the publisher writes a
/// quiet channel's subscribers in the order they came, and when the first of them has the
/// message, the answer is already in the publisher's socket (loopback delivers a write into
/// the receiving socket before the write returns). Answered after the fan-out instead, the
/// answer would come only after the other 1,999 subscribers' writes. The first subscriber and
/// the publisher are blocking clients on a thread of their own, so they see the sockets while
/// the server, in this test's runtime, is still writing.
#[tokio::test]
async fn a_publish_is_answered_before_its_fan_out_starts() {
    answered_before_fan_out(|_, _| {}).await;
}

/// A publish whose head, or whose body, comes in more than one segment is read on by the front
/// (not handed to hyper with the rest of its connection): the next publish on that connection
/// is still answered before its fan-out.
#[tokio::test]
async fn a_connection_whose_requests_come_in_pieces_keeps_its_early_answers() {
    answered_before_fan_out(|publisher, addr| {
        use std::io::{Read, Write};
        let cut_head = raw::publish("pieces", "cut head", addr);
        let cut_body = raw::publish("pieces", &"cut body ".repeat(300), addr);
        for (request, at) in [(cut_head, 10), (cut_body.clone(), cut_body.len() - 1000)] {
            let (first, rest) = request.split_at(at);
            publisher.write_all(first.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            publisher.write_all(rest.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let mut byte = [0u8; 1];
            while !answer.ends_with(br#""subscribers":0}]}"#) {
                assert_eq!(publisher.read(&mut byte).unwrap(), 1, "answered");
                answer.push(byte[0]);
            }
            assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
    })
    .await;
}

/// See `a_publish_is_answered_before_its_fan_out_starts`; `prelude` runs on the publisher's
/// connection first.
async fn answered_before_fan_out(prelude: fn(&mut std::net::TcpStream, std::net::SocketAddr)) {
    const CROWD: usize = 2_000;
    let server = common::start().await;
    let url = server.ws_url("/listen?cid=crowd");
    let (mut first, _) = tokio::task::spawn_blocking(move || {
        tokio_tungstenite::tungstenite::connect(url.as_str()).unwrap()
    })
    .await
    .unwrap();
    wait_for_subscribers(&server, "crowd", 1).await;
    let _rest = connect_crowd(&server, "crowd", CROWD - 1, |v| {
        assert_eq!(v["type"], "subscribed", "{v}");
    })
    .await;
    wait_for_subscribers(&server, "crowd", CROWD).await;

    let addr = server.server.local_addr();
    let observed = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        use tokio_tungstenite::tungstenite::Message;
        let mut publisher = std::net::TcpStream::connect(addr).unwrap();
        prelude(&mut publisher, addr);
        publisher
            .write_all(raw::publish("crowd", "first", addr).as_bytes())
            .unwrap();
        // The `subscribed` frame, then the message.
        let mut frames = Vec::new();
        while frames.len() < 2 {
            match first.read().unwrap() {
                Message::Text(text) => frames.push(text.to_string()),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
        // What the publisher's socket holds at this moment, without waiting for more.
        publisher.set_nonblocking(true).unwrap();
        let mut held = vec![0u8; 1024];
        let n = publisher
            .read(&mut held)
            .expect("the answer was in the socket when the first subscriber had the message");
        held.truncate(n);
        (frames, held)
    })
    .await
    .unwrap();
    let (frames, held) = observed;
    let message: Value = serde_json::from_str(&frames[1]).unwrap();
    assert_eq!(message["data"], "first", "{message}");
    let answer = String::from_utf8(held).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with(&format!(r#""subscribers":{CROWD}}}]}}"#)),
        "{answer}"
    );
}

/// A publisher that sends publishes and does not read their answers, through a small receive
/// buffer and small segments (so the server's send buffer stays small too): once that buffer
/// is full, an early answer the socket takes only in part is finished by the front before it
/// reads the next request, and every answer and every message arrives, in order.
#[tokio::test]
async fn early_answers_the_socket_cannot_take_at_once_are_finished_in_order() {
    // Far more answers than the buffers below hold (the server stops after about 700 here).
    const MAX_PUBLISHES: u64 = 5_000;
    let server = common::start().await;
    let mut ws = subscribed_websocket(&server, "slowpub").await;

    let addr = server.server.local_addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    // Small segments keep the server's send buffer from growing to megabytes on loopback.
    socket2::SockRef::from(&socket).set_tcp_mss(536).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    // One request at a time, the next once the subscriber has the message, so that each
    // reaches the server whole and the front answers it at once; no answer is read. When the
    // server's send buffer is full, an answer is left unfinished and the server reads no
    // further request: the last one sent is not published.
    let mut sent = 0;
    loop {
        sent += 1;
        assert!(
            sent <= MAX_PUBLISHES,
            "the server never stopped for its answers"
        );
        let request = raw::publish("slowpub", &sent.to_string(), addr);
        stream.write_all(request.as_bytes()).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(500), ws_next_json(&mut ws, STEP)).await {
            Ok(message) => assert_eq!(message["id"], sent, "{message}"),
            Err(_) => break,
        }
    }
    // Reading the answers lets the server finish the one it left, then go on.
    let mut buf = Vec::new();
    for id in 1..=sent {
        let answer = tokio::time::timeout(STEP, read_response(&mut stream, &mut buf))
            .await
            .expect("an answer in time")
            .expect("an answer before the connection ended");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["published"][0]["id"], id, "{answer:?}");
    }
    let message = ws_next_json(&mut ws, STEP).await;
    assert_eq!(
        message["id"], sent,
        "the waiting request published, in order: {message}"
    );
    let answer = roundtrip(
        &mut stream,
        &mut buf,
        &raw::publish("slowpub", "after", addr),
    )
    .await;
    assert_eq!(answer.json()["published"][0]["id"], sent + 1, "{answer:?}");
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "after");
}

#[tokio::test]
async fn a_long_poll_whose_client_goes_away_is_dropped() {
    let server = common::start().await;
    let baseline = raw::health(&server).await["connections"].as_u64().unwrap();
    let mut conn = Conn::open(&server).await;
    conn.get("/listen?cid=gone", &[]).await;
    wait_for_subscribers(&server, "gone", 1).await;
    drop(conn);
    wait_for_subscribers(&server, "gone", 0).await;
    raw::await_connections(&server, baseline).await;
    let published = server.publish("gone", "nobody").await;
    assert_eq!(published["subscribers"], 0, "{published}");

    // A half-close (end of stream) counts as going away too.
    let mut conn = Conn::open(&server).await;
    conn.get("/listen?cid=half", &[]).await;
    wait_for_subscribers(&server, "half", 1).await;
    conn.stream.shutdown().await.unwrap();
    wait_for_subscribers(&server, "half", 0).await;
}

#[tokio::test]
async fn errors_are_json_and_keep_the_connection() {
    let server = common::start().await;
    server.publish("ok", "m1").await;
    let mut conn = Conn::open(&server).await;

    let missing = conn.roundtrip_get("/listen", &[]).await;
    missing.expect_error(400);
    assert_complete(&missing);
    assert_eq!(missing.header("connection"), None, "{missing:?}");

    let bad_since = conn.roundtrip_get("/listen?cid=ok&since=x:y:z", &[]).await;
    bad_since.expect_error(400);
    assert_complete(&bad_since);

    let bad_cid = conn.roundtrip_get("/listen?cid=a%20b", &[]).await;
    bad_cid.expect_error(400);

    // The same connection still serves a valid request.
    let valid = conn.roundtrip_get("/listen?cid=ok&since=0", &[]).await;
    assert_complete(&valid);
    assert_eq!(messages(&valid).0, ["m1"]);
}

#[tokio::test]
async fn limits_apply_to_listen_requests() {
    let server = common::start_with(|c| {
        c.max_header_size = 4096;
        c.max_headers = 20;
        c.max_url_length = 1024;
    })
    .await;
    server.publish("a", "m1").await;
    let addr = server.server.local_addr();

    // URL length: a JSON 414, and the connection goes on.
    let base = "/listen?cid=a&since=0&pad=";
    let fits = format!("{base}{}", "x".repeat(1024 - base.len()));
    let mut conn = Conn::open(&server).await;
    let too_long = conn.roundtrip_get(&format!("{fits}x"), &[]).await;
    let error = too_long.expect_error(414);
    assert!(error.contains("1024"), "{error}");
    assert_complete(&too_long);
    let response = conn.roundtrip_get(&fits, &[]).await;
    assert_eq!(messages(&response).0, ["m1"]);

    // A head over max-header-size, and too many headers: 431.
    let big = "a".repeat(5000);
    let response = raw::once(addr, &raw::get("/listen?cid=a", addr, &[("X-Big", &big)])).await;
    assert_eq!(response.status, 431, "{response:?}");
    // Host and 20 more: 21.
    let names: Vec<String> = (0..20).map(|i| format!("X-H{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let response = raw::once(addr, &raw::get("/listen?cid=a", addr, &many)).await;
    assert_eq!(response.status, 431, "{response:?}");
    // Exactly 20 headers (Host and 19 more) are served by the front.
    let response = raw::once(addr, &raw::get("/listen?cid=a&since=0", addr, &many[..19])).await;
    assert_eq!(messages(&response).0, ["m1"]);
}

#[tokio::test]
async fn idle_keep_alive_after_a_native_answer_is_closed_after_the_idle_timeout() {
    let server = common::start_with(|c| {
        c.header_read_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    server.publish("idle", "m1").await;
    let mut conn = Conn::open(&server).await;
    let response = conn.roundtrip_get("/listen?cid=idle&since=0", &[]).await;
    assert_eq!(messages(&response).0, ["m1"]);
    // Longer than the header-read timeout, shorter than the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let response = conn.roundtrip_get("/listen?cid=idle&since=0", &[]).await;
    assert_eq!(messages(&response).0, ["m1"]);
    let closed = wait_closed(&mut conn.stream, STEP)
        .await
        .expect("closed after the idle timeout");
    assert!(
        closed >= Duration::from_millis(1000),
        "closed too early: {closed:?}"
    );

    // A connection that sends nothing is closed after the header-read timeout.
    let mut silent = Conn::open(&server).await;
    let closed = wait_closed(&mut silent.stream, STEP)
        .await
        .expect("a silent connection is closed");
    assert!(
        closed >= Duration::from_millis(250) && closed < Duration::from_millis(1200),
        "{closed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Streams answered by the front
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sse_over_raw_tcp_is_chunked_and_ends_when_the_client_leaves() {
    let server = common::start().await;
    let baseline = raw::health(&server).await["connections"].as_u64().unwrap();
    let mut conn = Conn::open(&server).await;
    conn.get("/listen?cid=s", &[("Accept", "text/event-stream")])
        .await;
    let head = conn.response().await;
    assert_chunked_head(&head, "text/event-stream");
    assert_eq!(head.header("connection"), Some("close"), "{head:?}");

    let mut body = String::new();
    conn.chunks_until(&mut body, "retry:").await;
    wait_for_subscribers(&server, "s", 1).await;
    server.publish("s", "hello").await;
    conn.chunks_until_block(&mut body, "\"hello\"").await;
    let events = sse_events(&body);
    assert_eq!(events.len(), 1, "{body:?}");
    assert_eq!(events[0].0, None, "{body:?}");
    let envelope: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(envelope["cid"], "s");
    assert_eq!(envelope["data"], "hello");
    assert_eq!(envelope["id"], 1);

    drop(conn);
    wait_for_subscribers(&server, "s", 0).await;
    // The stream's connection slot is given back too.
    raw::await_connections(&server, baseline).await;
}

#[tokio::test]
async fn the_transport_parameter_selects_sse_and_the_iframe() {
    let server = common::start().await;

    let mut sse = Conn::open(&server).await;
    sse.get("/listen/?cid=t&transport=sse", &[]).await;
    assert_chunked_head(&sse.response().await, "text/event-stream");
    let mut sse_body = String::new();
    sse.chunks_until(&mut sse_body, "retry:").await;

    let mut iframe = Conn::open(&server).await;
    iframe
        .get("/listen?cid=t&transport=iframe&callback=app.cb", &[])
        .await;
    assert_chunked_head(&iframe.response().await, "text/html");
    let mut iframe_body = String::new();

    wait_for_subscribers(&server, "t", 2).await;
    server.publish("t", "both").await;
    sse.chunks_until_block(&mut sse_body, "\"both\"").await;
    assert_eq!(sse_events(&sse_body).len(), 1, "{sse_body:?}");
    iframe.chunks_until(&mut iframe_body, "</script>").await;
    let first_call = iframe_body.find("parent.app.cb(").expect("a call");
    assert!(first_call >= 2048, "padding first: {iframe_body:?}");
    assert!(
        iframe_body.contains("<script>parent.app.cb({") && iframe_body.contains("\"both\""),
        "{iframe_body:?}"
    );

    drop(iframe);
    drop(sse);
    wait_for_subscribers(&server, "t", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_raw_sse_stream_with_disconnect_and_the_last_chunk() {
    let server = common::start_with(|c| c.shutdown_timeout = Duration::from_secs(3)).await;
    let mut conn = Conn::open(&server).await;
    conn.get("/listen?cid=bye", &[("Accept", "text/event-stream")])
        .await;
    assert_chunked_head(&conn.response().await, "text/event-stream");
    let mut body = String::new();
    conn.chunks_until(&mut body, "retry:").await;
    wait_for_subscribers(&server, "bye", 1).await;

    let started = Instant::now();
    let shutdown = tokio::spawn(server.server.shutdown());
    // Until the last chunk, `0\r\n\r\n`.
    while let Some(data) = conn.chunk().await {
        body.push_str(std::str::from_utf8(&data).unwrap());
    }
    let events = sse_events(&body);
    let (event, data) = events.last().unwrap_or_else(|| panic!("{body:?}"));
    assert_eq!(event.as_deref(), Some("disconnect"), "{body:?}");
    let object: Value = serde_json::from_str(data).unwrap();
    assert_eq!(object["type"], "disconnect");
    assert_eq!(object["reason"], "server shutting down");
    assert_eq!(object["reconnect"], true);
    assert!(
        conn.closed_by_server().await,
        "the stream's connection ends"
    );
    tokio::time::timeout(STEP, shutdown).await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown did not wait for the grace period: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_waiting_raw_long_poll_503_and_closes() {
    let server = common::start_with(|c| c.shutdown_timeout = Duration::from_secs(3)).await;
    let mut conn = Conn::open(&server).await;
    conn.get("/listen?cid=bye", &[]).await;
    wait_for_subscribers(&server, "bye", 1).await;
    let shutdown = tokio::spawn(server.server.shutdown());
    let response = conn.response().await;
    assert_eq!(response.status, 503, "{response:?}");
    assert!(response.header("retry-after").is_some(), "{response:?}");
    assert_complete(&response);
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    assert!(conn.closed_by_server().await);
    tokio::time::timeout(STEP, shutdown).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_an_idle_keep_alive_connection_at_once() {
    let server = common::start_with(|c| c.shutdown_timeout = Duration::from_secs(3)).await;
    server.publish("idle", "m1").await;
    let mut conn = Conn::open(&server).await;
    let response = conn.roundtrip_get("/listen?cid=idle&since=0", &[]).await;
    assert_eq!(messages(&response).0, ["m1"]);
    let started = Instant::now();
    let shutdown = tokio::spawn(server.server.shutdown());
    assert!(conn.closed_by_server().await);
    tokio::time::timeout(STEP, shutdown).await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown waited for an idle connection: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// What goes to hyper
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http_1_0_goes_to_hyper_and_is_answered() {
    let server = common::start().await;
    server.publish("x", "m1").await;
    let mut conn = Conn::open(&server).await;
    conn.send("GET /listen?cid=x&since=0 HTTP/1.0\r\nHost: herald\r\n\r\n")
        .await;
    let response = conn.response().await;
    assert_eq!(messages(&response).0, ["m1"]);
    // HTTP/1.0 without keep-alive: the server closes after the answer.
    assert!(conn.closed_by_server().await);
}

#[tokio::test]
async fn a_head_split_across_writes_is_answered() {
    let server = common::start().await;
    server.publish("x", "m1").await;
    let mut conn = Conn::open(&server).await;
    conn.send("GET /listen?cid=x&since=0 HTTP/1.1\r\nHo").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.send("st: herald\r\n\r\n").await;
    let response = conn.response().await;
    assert_complete(&response);
    assert_eq!(messages(&response).0, ["m1"]);
    // The connection goes on (hyper's now).
    let again = conn.roundtrip_get("/listen?cid=x&since=0", &[]).await;
    assert_eq!(messages(&again).0, ["m1"]);

    // A long poll split the same way waits and is answered too.
    let mut conn = Conn::open(&server).await;
    conn.send("GET /listen?cid=x&since=1 HTTP/1.1\r\nHo").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.send("st: herald\r\n\r\n").await;
    wait_for_subscribers(&server, "x", 1).await;
    server.publish("x", "m2").await;
    assert_eq!(messages(&conn.response().await).0, ["m2"]);
}

#[tokio::test]
async fn listen_requests_with_a_body_expect_or_a_large_head_are_answered() {
    let server = common::start().await;
    server.publish("x", "m1").await;
    let addr = server.server.local_addr();
    // Larger than what the front reads of a head (hyper answers), and between its first read on
    // the stack and that limit (the front answers after reading on).
    let big = "a".repeat(herald_server::front::READ_LIMIT + 1024);
    let medium = "a".repeat(4 * 1024);
    let cases: Vec<(&str, String)> = vec![
        (
            "a head larger than the front's read limit",
            raw::get("/listen?cid=x&since=0", addr, &[("X-Big", &big)]),
        ),
        (
            "a head of about 4 KiB",
            raw::get("/listen?cid=x&since=0", addr, &[("X-Medium", &medium)]),
        ),
        (
            "a body",
            "GET /listen?cid=x&since=0 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab".into(),
        ),
        (
            "Content-Length: 0 (the front's: no body)",
            raw::get("/listen?cid=x&since=0", addr, &[("Content-Length", "0")]),
        ),
        (
            "Expect: 100-continue",
            raw::get("/listen?cid=x&since=0", addr, &[("Expect", "100-continue")]),
        ),
    ];
    for (name, request) in cases {
        let mut conn = Conn::open(&server).await;
        conn.send(&request).await;
        let mut response = conn.response().await;
        if response.status == 100 {
            response = conn.response().await;
        }
        assert_eq!(messages(&response).0, ["m1"], "{name}");
        assert_complete(&response);
        // Still usable afterwards.
        let again = conn.roundtrip_get("/listen?cid=x&since=0", &[]).await;
        assert_eq!(messages(&again).0, ["m1"], "{name}: the next request");
    }
}

#[tokio::test]
async fn a_websocket_upgrade_still_works() {
    let server = common::start().await;
    let (mut ws, response) = tokio::time::timeout(
        STEP,
        connect_async(server.ws_url("/listen?cid=ws").as_str()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 101);
    let subscribed = ws_next_json(&mut ws, STEP).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    wait_for_subscribers(&server, "ws", 1).await;
    server.publish("ws", "hi").await;
    let envelope = ws_next_json(&mut ws, STEP).await;
    assert_eq!(envelope["data"], "hi", "{envelope}");
    drop(ws);
    wait_for_subscribers(&server, "ws", 0).await;

    // An upgrade after a native request on the same socket.
    let mut conn = Conn::open(&server).await;
    let listen = conn.roundtrip_get("/listen?cid=ws&since=0", &[]).await;
    assert_eq!(messages(&listen).0, ["hi"]);
    let mut ws =
        raw::RawWs::handshake_over(conn.stream, conn.addr, "/listen?cid=ws&since=0", &[]).await;
    let subscribed = ws.next_json().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let replayed = ws.next_json().await;
    assert_eq!(replayed["data"], "hi", "{replayed}");
}

/// The front reads a head before it knows who answers it; hyper must still see every byte of
/// a handshake larger than the front's first read, and the frames the client sent behind it.
#[tokio::test]
async fn a_large_upgrade_with_frames_behind_it_in_one_write_is_served_whole() {
    let server = common::start().await;
    let addr = server.server.local_addr();
    let padding = "p".repeat(5 * 1024);
    let mut headers = raw::UPGRADE_HEADERS.to_vec();
    headers.push(("X-Padding", &padding));
    let mut request = raw::upgrade_request(addr, "/listen?cid=big", Some(&headers));
    for reference in ["one", "two"] {
        let ping = format!(r#"{{"type":"ping","ref":"{reference}"}}"#);
        request.extend(raw::client_frame(true, 1, ping.as_bytes(), true));
    }
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut ws = raw::RawWs::upgraded(stream, Vec::new()).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    for reference in ["one", "two"] {
        assert_eq!(
            ws.next_json().await,
            serde_json::json!({"type": "pong", "ref": reference})
        );
    }
}

/// An idle SSE stream's chunks are written straight to its socket by the publisher; once the
/// socket is full, the rest of a chunk and everything after it go through the stream's task,
/// and the publisher writes directly again when the stream has caught up. A reader that stops
/// reading for a while must still get every message once, in order, in intact chunks.
#[tokio::test]
async fn a_stream_that_falls_behind_gets_every_chunk_intact_and_in_order() {
    const BEHIND: usize = 300;
    const AFTER: usize = 20;
    let server = common::start().await;
    let mut conn = Conn::open(&server).await;
    conn.get("/listen?cid=big", &[("Accept", "text/event-stream")])
        .await;
    assert_chunked_head(&conn.response().await, "text/event-stream");
    conn.chunks_until(&mut String::new(), "retry:").await;
    wait_for_subscribers(&server, "big", 1).await;
    // About 9 MB while the client reads nothing: more than loopback socket buffers hold.
    let filler = "x".repeat(30_000);
    for i in 1..=BEHIND {
        server.publish("big", &format!("{i:05}{filler}")).await;
    }
    let mut seen = Vec::new();
    read_messages(&mut conn, &mut seen, BEHIND, &filler).await;
    // Caught up: one message at a time, each written while the stream is idle.
    for i in BEHIND + 1..=BEHIND + AFTER {
        server.publish("big", &format!("{i:05}{filler}")).await;
        read_messages(&mut conn, &mut seen, i, &filler).await;
    }
    let expected: Vec<u64> = (1..=(BEHIND + AFTER) as u64).collect();
    assert_eq!(seen, expected);
}

/// Reads an SSE stream's chunks until `seen` holds `count` message ids, checking that each
/// message is whole (`{id:05}{filler}`) and only messages arrive. Blocks may span chunks: the
/// reader keeps a partial block for the next one. The stream must start at a block boundary.
async fn read_messages(conn: &mut Conn, seen: &mut Vec<u64>, count: usize, filler: &str) {
    let mut body = String::new();
    while seen.len() < count {
        let data = conn.chunk().await.expect("the stream goes on");
        body.push_str(std::str::from_utf8(&data).unwrap());
        let cut = body.rfind("\n\n").map_or(0, |i| i + 2);
        for (event, data) in sse_events(&body[..cut]) {
            assert_eq!(event, None, "only messages are expected");
            let envelope: Value = serde_json::from_str(&data).unwrap();
            let id = envelope["id"].as_u64().unwrap();
            let text = envelope["data"].as_str().unwrap();
            assert_eq!(text, format!("{id:05}{filler}"), "message {id} intact");
            seen.push(id);
        }
        body.drain(..cut);
    }
    assert!(
        body.is_empty(),
        "a partial block after message {count}: {body:?}"
    );
}
