//! Server-Sent Events against a real server: negotiation, the prelude, message events, exact
//! resumption with `Last-Event-ID` / `last_event_id`, gap events, composite ids over several
//! channels, keep-alives, the shutdown `disconnect` event, and a slow consumer that must be cut
//! off without slowing the publisher or other subscribers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    expect_error, other_epoch, publish_n, wait_for_subscribers, SseEvent, SseReader, TestServer,
};

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);

/// Opens `GET /listen?{query}` with `Accept: text/event-stream` and an optional
/// `Last-Event-ID`.
async fn open(server: &TestServer, query: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = server
        .client
        .get(server.url(&format!("/listen?{query}")))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

/// Opens a stream, checks the headers and reads the prelude; returns the reader and the
/// prelude's `id:`.
async fn subscribe(
    server: &TestServer,
    query: &str,
    last_event_id: Option<&str>,
) -> (SseReader, String) {
    let response = open(server, query, last_event_id).await;
    assert_eq!(response.status(), 200, "{query}");
    assert_event_stream(&response);
    let mut reader = SseReader::new(response);
    let id = prelude(&mut reader).await;
    (reader, id)
}

fn assert_event_stream(response: &reqwest::Response) {
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
}

/// Reads the first block: a `retry:` hint and the starting cursor, no data.
async fn prelude(reader: &mut SseReader) -> String {
    let block = reader.next_block(T).await.expect("prelude");
    assert!(block.retry.is_some(), "{block:?}");
    assert!(block.data.is_empty() && block.event.is_none(), "{block:?}");
    block.id.expect("prelude id")
}

/// The next data event, which must be a message: returns its `id:` and envelope.
async fn message(reader: &mut SseReader) -> (String, Value) {
    let event = reader.next_event(T).await.expect("stream still open");
    assert_eq!(event.event, None, "a message, not {event:?}");
    let envelope: Value = serde_json::from_str(&event.data).unwrap();
    (event.id.expect("message id"), envelope)
}

/// Reads `n` messages; returns (`id:` line, `cid`, `id`) of each.
async fn messages(reader: &mut SseReader, n: usize) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (id, envelope) = message(reader).await;
        out.push((
            id,
            envelope["cid"].as_str().unwrap().to_string(),
            envelope["id"].as_u64().unwrap(),
        ));
    }
    out
}

fn offsets(events: &[(String, String, u64)]) -> Vec<u64> {
    events.iter().map(|e| e.2).collect()
}

/// Asserts that nothing but keep-alives arrives for a short while.
async fn assert_quiet(reader: &mut SseReader) {
    let quiet = tokio::time::timeout(Duration::from_millis(150), reader.next_event(T)).await;
    assert!(quiet.is_err(), "unexpected event: {quiet:?}");
}

#[tokio::test]
async fn accept_header_and_transport_parameter_select_sse() {
    let server = common::start().await;
    let epoch = publish_n(&server, "neg", 1).await;
    let (_, id) = subscribe(&server, "cid=neg", None).await;
    assert_eq!(id, format!("{epoch}:1"));
    for (query, accept) in [
        ("cid=neg&transport=sse", None),
        ("cid=neg&transport=eventsource", None),
        ("cid=neg", Some("text/html;q=0.9, text/event-stream")),
        ("cid=neg&_=1764167000123", Some("text/event-stream")),
    ] {
        let mut request = server.client.get(server.url(&format!("/listen/?{query}")));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{query}");
        assert_event_stream(&response);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let mut reader = SseReader::new(response);
        assert_eq!(prelude(&mut reader).await, format!("{epoch}:1"), "{query}");
    }
}

#[tokio::test]
async fn prelude_has_retry_and_the_start_cursor() {
    let server = common::start_with(|c| c.sse_retry = Duration::from_millis(1500)).await;
    let response = open(&server, "cid=pre", None).await;
    let mut reader = SseReader::new(response);
    let block = reader.next_block(T).await.unwrap();
    assert_eq!(block.retry, Some(1500));
    let id = block.id.unwrap();
    let (epoch, offset) = id.split_once(':').expect("EPOCH:ID");
    assert_eq!(offset, "0", "fresh channel");
    // The epoch in the prelude is the one messages then carry.
    let published = server.publish("pre", "first").await;
    assert_eq!(published["epoch"], epoch);
}

#[tokio::test]
async fn a_published_message_arrives_as_id_and_envelope() {
    // `chat:5` is in namespace `chat`, which must be configured.
    let server = common::start_with(|c| {
        c.namespaces.insert("chat".into(), Default::default());
    })
    .await;
    let (mut reader, start) = subscribe(&server, "cid=chat:5", None).await;
    let published = server
        .publish_json("chat:5", &json!({"text": "hi", "n": [1, 2]}))
        .await;
    let epoch = published["epoch"].as_str().unwrap();
    assert_eq!(start, format!("{epoch}:0"));
    let (id, envelope) = message(&mut reader).await;
    assert_eq!(id, format!("{epoch}:1"));
    assert_eq!(
        envelope,
        json!({
            "cid": "chat:5",
            "id": 1,
            "epoch": epoch,
            "data": {"text": "hi", "n": [1, 2]},
            "time": published["time"],
        })
    );
    // Byte for byte the envelope short polling returns.
    let polled = server
        .client
        .get(server.url("/messages?cid=chat:5"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let published_again = server.publish("chat:5", "second").await;
    let event = reader.next_event(T).await.unwrap();
    assert_eq!(event.id.unwrap(), format!("{epoch}:2"));
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap()["time"],
        published_again["time"]
    );
    assert!(polled.starts_with('[') && polled.contains("\"text\":\"hi\""));
}

#[tokio::test]
async fn resume_with_last_event_id_header_is_exact() {
    let server = common::start().await;
    let (mut reader, _) = subscribe(&server, "cid=res", None).await;
    publish_n(&server, "res", 2).await;
    let got = messages(&mut reader, 2).await;
    assert_eq!(offsets(&got), [1, 2]);
    let last_id = got[1].0.clone();
    drop(reader);
    wait_for_subscribers(&server, "res", 0).await;

    for i in 3..=5 {
        server.publish("res", &format!("missed {i}")).await;
    }
    let (mut reader, start) = subscribe(&server, "cid=res", Some(&last_id)).await;
    assert_eq!(start, last_id, "starts where the client stood");
    let got = messages(&mut reader, 3).await;
    assert_eq!(offsets(&got), [3, 4, 5]);
    server.publish("res", "live 6").await;
    let (id, envelope) = message(&mut reader).await;
    assert_eq!(envelope["id"], 6, "no duplicate of 3..5");
    assert_eq!(envelope["data"], "live 6");
    assert!(id.ends_with(":6"));
    assert_quiet(&mut reader).await;
}

#[tokio::test]
async fn resume_with_last_event_id_query_parameter_is_exact() {
    let server = common::start().await;
    let (mut reader, _) = subscribe(&server, "cid=q", None).await;
    publish_n(&server, "q", 3).await;
    let got = messages(&mut reader, 3).await;
    let last_id = got[2].0.clone();
    drop(reader);
    for i in 4..=6 {
        server.publish("q", &format!("missed {i}")).await;
    }
    let (mut reader, _) = subscribe(&server, &format!("cid=q&last_event_id={last_id}"), None).await;
    assert_eq!(offsets(&messages(&mut reader, 3).await), [4, 5, 6]);
    server.publish("q", "live").await;
    assert_eq!(message(&mut reader).await.1["id"], 7);
    assert_quiet(&mut reader).await;
}

#[tokio::test]
async fn cursor_sources_in_order_of_precedence() {
    let server = common::start().await;
    let epoch = publish_n(&server, "prec", 6).await;
    // Header over last_event_id over since.
    let (mut reader, start) = subscribe(
        &server,
        &format!("cid=prec&since=1&last_event_id={epoch}:3"),
        Some(&format!("{epoch}:4")),
    )
    .await;
    assert_eq!(start, format!("{epoch}:4"));
    assert_eq!(offsets(&messages(&mut reader, 2).await), [5, 6]);
    let (mut reader, _) = subscribe(&server, "cid=prec&since=1&last_event_id=3", None).await;
    assert_eq!(offsets(&messages(&mut reader, 3).await), [4, 5, 6]);
    let (mut reader, _) = subscribe(&server, "cid=prec&since=2", None).await;
    assert_eq!(offsets(&messages(&mut reader, 4).await), [3, 4, 5, 6]);
}

#[tokio::test]
async fn resume_from_the_prelude_id_when_nothing_had_arrived() {
    let server = common::start().await;
    let epoch = publish_n(&server, "idle", 2).await;
    let (mut reader, start) = subscribe(&server, "cid=idle", None).await;
    assert_eq!(start, format!("{epoch}:2"));
    assert_quiet(&mut reader).await; // no cursor: old messages are not replayed
    drop(reader);
    server.publish("idle", "three").await;
    server.publish("idle", "four").await;
    let (mut reader, _) = subscribe(&server, "cid=idle", Some(&start)).await;
    let got = messages(&mut reader, 2).await;
    assert_eq!(offsets(&got), [3, 4]);
    assert_eq!(got[0].0, format!("{epoch}:3"));
    assert_quiet(&mut reader).await;
}

/// Reads a gap event and checks it.
async fn gap(reader: &mut SseReader, cid: &str, epoch: &str, first: u64, requested: &str) {
    let event: SseEvent = reader.next_event(T).await.unwrap();
    assert_eq!(event.event.as_deref(), Some("gap"), "{event:?}");
    let object: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(
        object,
        json!({"type": "gap", "cid": cid, "epoch": epoch, "first": first, "requested": requested})
    );
}

#[tokio::test]
async fn a_too_old_cursor_gets_a_gap_event_then_the_retained_messages() {
    let server = common::start_with(|c| c.history_size = 5).await;
    let epoch = publish_n(&server, "old", 10).await;
    let cursor = format!("{epoch}:2");
    let (mut reader, _) = subscribe(&server, "cid=old", Some(&cursor)).await;
    gap(&mut reader, "old", &epoch, 6, &cursor).await;
    let got = messages(&mut reader, 5).await;
    assert_eq!(offsets(&got), [6, 7, 8, 9, 10]);
    assert_eq!(got[4].0, format!("{epoch}:10"));
    server.publish("old", "11").await;
    assert_eq!(message(&mut reader).await.1["id"], 11);
}

#[tokio::test]
async fn a_foreign_epoch_gets_a_gap_event_then_the_retained_messages() {
    let server = common::start_with(|c| c.history_size = 5).await;
    let epoch = publish_n(&server, "foreign", 7).await;
    let cursor = format!("{}:7", other_epoch(&epoch));
    let (mut reader, _) = subscribe(&server, "cid=foreign", Some(&cursor)).await;
    gap(&mut reader, "foreign", &epoch, 3, &cursor).await;
    assert_eq!(offsets(&messages(&mut reader, 5).await), [3, 4, 5, 6, 7]);
    assert_quiet(&mut reader).await;
}

#[tokio::test]
async fn several_channels_carry_a_composite_id_and_resume_exactly() {
    let server = common::start().await;
    let ea = publish_n(&server, "a", 1).await;
    let eb = publish_n(&server, "b", 1).await;
    let (mut reader, start) = subscribe(&server, "cid=a&cid=b", None).await;
    assert_eq!(start, format!("{ea}:1,{eb}:1"));
    server.publish("b", "b2").await;
    server.publish("a", "a2").await;
    let got = messages(&mut reader, 2).await;
    assert_eq!(
        got,
        [
            (format!("{ea}:1,{eb}:2"), "b".to_string(), 2),
            (format!("{ea}:2,{eb}:2"), "a".to_string(), 2),
        ]
    );
    let last = got[1].0.clone();
    drop(reader);

    server.publish("a", "a3").await;
    server.publish("b", "b3").await;
    server.publish("a", "a4").await;
    let (mut reader, start) = subscribe(&server, "cid=a&cid=b", Some(&last)).await;
    assert_eq!(start, last);
    let got = messages(&mut reader, 3).await;
    let per_channel = |cid: &str| -> Vec<u64> {
        got.iter()
            .filter(|e| e.1 == cid)
            .map(|e| e.2)
            .collect::<Vec<_>>()
    };
    assert_eq!(per_channel("a"), [3, 4]);
    assert_eq!(per_channel("b"), [3]);
    assert_eq!(got[2].0, format!("{ea}:4,{eb}:3"));
    server.publish("b", "b4").await;
    let (id, envelope) = message(&mut reader).await;
    assert_eq!(
        (envelope["cid"].as_str(), envelope["id"].as_u64()),
        (Some("b"), Some(4))
    );
    assert_eq!(id, format!("{ea}:4,{eb}:4"));
    assert_quiet(&mut reader).await;

    // The composite follows the order of the cids in the request.
    let (_, start) = subscribe(&server, "cid=b&cid=a", None).await;
    assert_eq!(start, format!("{eb}:4,{ea}:4"));
    // And resuming with a composite in that order is exact per channel.
    let (mut reader, _) = subscribe(&server, "cid=b&cid=a", Some(&format!("{eb}:3,{ea}:4"))).await;
    let got = messages(&mut reader, 1).await;
    assert_eq!(got[0], (format!("{eb}:4,{ea}:4"), "b".to_string(), 4));
    assert_quiet(&mut reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_while_messages_are_published_is_exact() {
    // Subscribing joins the live stream before reading the backlog; a message published in
    // between must arrive exactly once, whenever the client connects.
    const N: u64 = 300;
    const CLIENTS: u64 = 12;
    let server = common::start_with(|c| c.history_size = 1000).await;
    server.publish("busy", "m1").await;
    let (progress, published) = tokio::sync::watch::channel(1u64);
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let client = server.client.clone();
        let url = server.url("/listen?cid=busy&since=0");
        let mut published = published.clone();
        clients.push(tokio::spawn(async move {
            // Connect once the channel has reached a different point for each client.
            let at = k * N / CLIENTS;
            published.wait_for(|&n| n >= at).await.unwrap();
            let response = client
                .get(&url)
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            let mut reader = SseReader::new(response);
            let mut ids = Vec::new();
            while ids.last() != Some(&N) {
                let event = reader.next_event(T).await.expect("stream open");
                assert_eq!(event.event, None, "{event:?}");
                let envelope: Value = serde_json::from_str(&event.data).unwrap();
                ids.push(envelope["id"].as_u64().unwrap());
            }
            ids
        }));
    }
    for i in 2..=N {
        server.publish("busy", &format!("m{i}")).await;
        progress.send_replace(i);
    }
    for (k, client) in clients.into_iter().enumerate() {
        let ids = tokio::time::timeout(T, client).await.unwrap().unwrap();
        assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "client {k}");
    }
}

/// A channel of more than 32 streams has its fan-out handed to each connection thread as a
/// share (`herald_core::shares`); with publishers racing, a thread that falls behind writes
/// each stream several messages as one run of chunks. Every stream still gets every message
/// once, in history's order, each with its own `id:`: the channel's position, or for a stream
/// that follows a second channel too, the composite of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_on_a_large_channel_reach_every_stream_in_order_with_its_ids() {
    const ONE_CHANNEL: usize = 30;
    const TWO_CHANNELS: usize = 10;
    const PUBLISHERS: u64 = 8;
    const EACH: u64 = 25;
    const TOTAL: u64 = PUBLISHERS * EACH;
    let server = common::start_with(|c| {
        c.history_size = TOTAL as usize;
        c.workers = 2;
    })
    .await;
    let other_epoch = publish_n(&server, "other", 1).await;
    let mut streams = Vec::new();
    for i in 0..ONE_CHANNEL + TWO_CHANNELS {
        let query = if i < ONE_CHANNEL {
            "cid=big"
        } else {
            "cid=big&cid=other"
        };
        let (mut reader, _) = subscribe(&server, query, None).await;
        streams.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..TOTAL {
                let (id, envelope) = message(&mut reader).await;
                got.push((id, envelope["data"].as_str().unwrap().to_owned()));
            }
            assert_quiet(&mut reader).await;
            got
        }));
    }
    common::race_publishers(&server, "big", PUBLISHERS, EACH).await;
    let history = common::history(&server, "big").await;
    assert_eq!(history.len(), TOTAL as usize);
    let epoch = history[0]["epoch"].as_str().unwrap();
    for (i, stream) in streams.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), stream)
            .await
            .unwrap()
            .unwrap();
        let expected: Vec<(String, String)> = history
            .iter()
            .map(|m| {
                let n = m["id"].as_u64().unwrap();
                let id = if i < ONE_CHANNEL {
                    format!("{epoch}:{n}")
                } else {
                    format!("{epoch}:{n},{other_epoch}:1")
                };
                (id, m["data"].as_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(got, expected, "stream {i}");
    }
    server.assert_healthy().await;
}

#[tokio::test]
async fn keepalive_comments_arrive_when_idle() {
    let server = common::start_with(|c| c.keepalive = Duration::from_millis(200)).await;
    let (mut reader, _) = subscribe(&server, "cid=ka", None).await;
    let started = Instant::now();
    for _ in 0..3 {
        let block = reader.next_block(Duration::from_secs(2)).await.unwrap();
        assert!(block.comment_only, "{block:?}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "three keep-alives at 200 ms took {elapsed:?}"
    );
    // The stream is still live after the keep-alives.
    server.publish("ka", "still here").await;
    assert_eq!(message(&mut reader).await.1["data"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_a_disconnect_event_and_ends_the_stream() {
    let common::TestServer {
        server,
        base,
        client,
    } = common::start_with(|c| c.shutdown_timeout = Duration::from_secs(3)).await;
    let response = client
        .get(format!("{base}/listen?cid=bye"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    prelude(&mut reader).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    let event = reader.next_event(T).await.expect("disconnect event");
    assert_eq!(event.event.as_deref(), Some("disconnect"), "{event:?}");
    let object: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(object["type"], "disconnect");
    assert_eq!(object["reconnect"], true);
    assert!(object["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(reader.next_block(T).await.is_none(), "the stream ends");
    tokio::time::timeout(T, shutdown).await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown did not wait for the grace period: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn invalid_last_event_id_is_400() {
    let server = common::start().await;
    for (query, id) in [
        ("cid=a", "abc"),
        ("cid=a", "K:1"),
        ("cid=a", "-1"),
        ("cid=a", "1:2:3"),
        ("cid=a&cid=b", "1,2,3"),
    ] {
        let error = expect_error(open(&server, query, Some(id)).await, 400).await;
        assert!(error.contains("Last-Event-ID"), "{id}: {error}");
    }
    // Not ASCII.
    let response = server
        .client
        .get(server.url("/listen?cid=a"))
        .header("accept", "text/event-stream")
        .header(
            "last-event-id",
            reqwest::header::HeaderValue::from_bytes(b"\xe9t\xe9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    expect_error(response, 400).await;
    let error = expect_error(open(&server, "cid=a&last_event_id=x:y", None).await, 400).await;
    assert!(error.contains("last_event_id"), "{error}");
    expect_error(open(&server, "cid=a%20b", None).await, 400).await;
    server.assert_healthy().await;
}

/// Reads an HTTP/1.1 response from a raw socket until `needle` has arrived; returns all bytes.
async fn read_until(stream: &mut tokio::net::TcpStream, raw: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 16 * 1024];
    while !raw.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .expect("data within timeout")
            .unwrap();
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
        raw.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_without_slowing_anyone_else() {
    const MESSAGES: usize = 5000;
    const PUBLISHERS: usize = 8;
    let server = common::start_with(|c| {
        c.outbox_capacity = 4;
        c.history_size = MESSAGES;
    })
    .await;

    // The slow consumer: a raw socket with a small receive buffer that stops reading once its
    // stream has started.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(server.server.local_addr()).await.unwrap();
    slow.write_all(
        b"GET /listen?cid=flood HTTP/1.1\r\nHost: herald\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    let mut slow_bytes = Vec::new();
    read_until(&mut slow, &mut slow_bytes, b"retry:").await;
    assert!(slow_bytes.starts_with(b"HTTP/1.1 200"));

    // The reading subscriber, which reconnects with its cursor if it is cut off itself.
    let (mut reader, start) = subscribe(&server, "cid=flood", None).await;
    assert!(start.ends_with(":0"));
    wait_for_subscribers(&server, "flood", 2).await;
    let reader_client = server.client.clone();
    let reader_url = server.url("/listen?cid=flood");
    let reading = tokio::spawn(async move {
        let mut received: Vec<u64> = Vec::with_capacity(MESSAGES);
        let mut last_id = start;
        let mut reconnects = 0;
        while received.len() < MESSAGES {
            match reader.next_event(Duration::from_secs(20)).await {
                Some(event) if event.event.is_none() => {
                    let envelope: Value = serde_json::from_str(&event.data).unwrap();
                    received.push(envelope["id"].as_u64().unwrap());
                    last_id = event.id.unwrap();
                }
                Some(event) if event.event.as_deref() == Some("disconnect") => {
                    let object: Value = serde_json::from_str(&event.data).unwrap();
                    assert_eq!(object["reconnect"], true);
                }
                Some(event) => panic!("unexpected event {event:?}"),
                None => {
                    reconnects += 1;
                    let response = reader_client
                        .get(&reader_url)
                        .header("accept", "text/event-stream")
                        .header("last-event-id", &last_id)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    reader = SseReader::new(response);
                    reader.next_block(T).await.unwrap();
                }
            }
        }
        (received, reconnects)
    });

    // The publishers: every publish must answer 200 promptly.
    let body = "x".repeat(2000);
    let started = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let client = server.client.clone();
        let url = server.url("/publish?cid=flood");
        let body = body.clone();
        publishers.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut late_subscribers = Vec::new();
            for i in 0..MESSAGES / PUBLISHERS {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .body(format!("{p}-{i}-{body}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let value: Value = response.json().await.unwrap();
                slowest = slowest.max(sent.elapsed());
                if i >= MESSAGES / PUBLISHERS / 2 {
                    late_subscribers.push(value["published"][0]["subscribers"].as_u64().unwrap());
                }
            }
            (slowest, late_subscribers)
        }));
    }
    let mut slowest = Duration::ZERO;
    let mut late_subscribers = Vec::new();
    for publisher in publishers {
        let (s, late) = publisher.await.unwrap();
        slowest = slowest.max(s);
        late_subscribers.extend(late);
    }
    let publishing = started.elapsed();
    assert!(
        slowest < Duration::from_secs(1),
        "a publish took {slowest:?}"
    );
    assert!(
        publishing < Duration::from_secs(20),
        "publishing took {publishing:?}"
    );
    // Once the slow consumer's queue overflowed it took no more messages: its memory is
    // bounded by the queue, not by what was published.
    assert!(
        late_subscribers.iter().all(|&n| n <= 1),
        "the stalled connection kept accepting messages: {:?}",
        &late_subscribers[late_subscribers.len() - 10..]
    );

    // The reading subscriber got every message exactly once, in order.
    let (received, reconnects) = tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        received,
        (1..=MESSAGES as u64).collect::<Vec<_>>(),
        "after {reconnects} reconnects"
    );

    // The slow consumer, once it reads again, finds its stream ended with a disconnect.
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = slow.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return "closed";
            }
            slow_bytes.extend_from_slice(&buf[..n]);
            if slow_bytes.ends_with(b"\r\n0\r\n\r\n") {
                return "ended";
            }
        }
    })
    .await
    .expect("the slow stream ends");
    let text = String::from_utf8_lossy(&slow_bytes);
    let delivered = text.matches("\ndata: {\"cid\"").count();
    assert!(
        delivered < MESSAGES,
        "the slow consumer was never cut off ({outcome})"
    );
    if outcome == "ended" {
        let tail = &text[text.len().saturating_sub(300)..];
        let (_, after) = text
            .rsplit_once("event: disconnect\ndata: ")
            .unwrap_or_else(|| panic!("no disconnect event before the end: {tail}"));
        let line = after.lines().next().unwrap();
        let object: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            object,
            json!({"type": "disconnect", "reason": "slow consumer", "reconnect": true})
        );
    }
    wait_for_subscribers(&server, "flood", 0).await;
    server.assert_healthy().await;
}
