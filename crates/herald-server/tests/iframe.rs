//! The forever iframe against a real server: negotiation, the padding before the first script,
//! one `parent.NAME(…)` call per message, script-safe escaping of published data, callback
//! validation, gap calls, keep-alive comments, resumption with `since`, and shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_error, publish_n, TestServer};

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// Reads a forever-iframe page incrementally.
struct IframeReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    /// Everything received so far.
    raw: String,
    /// How much of `raw` has been consumed by `next_call`.
    consumed: usize,
}

impl IframeReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            stream: response.bytes_stream().boxed(),
            raw: String::new(),
            consumed: 0,
        }
    }

    /// Reads one more chunk; false when the page has ended.
    async fn read_more(&mut self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.stream.next())
            .await
            .expect("iframe data within timeout")
        {
            Some(Ok(chunk)) => {
                self.raw.push_str(std::str::from_utf8(&chunk).unwrap());
                true
            }
            Some(Err(_)) | None => false,
        }
    }

    /// Reads until at least `n` bytes have arrived.
    async fn read_at_least(&mut self, n: usize) {
        while self.raw.len() < n {
            assert!(
                self.read_more(T).await,
                "page ended after {} bytes",
                self.raw.len()
            );
        }
    }

    /// The next `<script>parent.NAME(JSON)</script>`: returns NAME and the raw JSON text.
    /// Only padding, comments and whitespace may come before it.
    async fn next_call(&mut self) -> Option<(String, String)> {
        loop {
            let rest = &self.raw[self.consumed..];
            if let Some(start) = rest.find("<script>") {
                if let Some(len) = rest[start..].find("</script>") {
                    let between = &rest[..start];
                    assert!(
                        strip_comments(between).trim().is_empty()
                            || between.contains("<!DOCTYPE html>"),
                        "unexpected markup before a call: {between:?}"
                    );
                    let inner = &rest[start + "<script>".len()..start + len];
                    self.consumed += start + len + "</script>".len();
                    let call = inner.strip_prefix("parent.").expect("parent.NAME(…)");
                    let open = call.find('(').expect("(");
                    let json = call[open + 1..].strip_suffix(')').expect(")");
                    return Some((call[..open].to_string(), json.to_string()));
                }
            }
            if !self.read_more(T).await {
                return None;
            }
        }
    }

    /// The next call, which must be to `name` with a message envelope.
    async fn next_message(&mut self, name: &str) -> Value {
        let (called, json) = self.next_call().await.expect("page still open");
        assert_eq!(called, name);
        let value: Value = serde_json::from_str(&json).unwrap();
        assert!(value.get("type").is_none(), "a message, not {value}");
        value
    }
}

/// Removes `<!-- … -->` comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start..].find("-->") {
            Some(end) => rest = &rest[start + end + 3..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

async fn get(server: &TestServer, query: &str) -> reqwest::Response {
    server
        .client
        .get(server.url(&format!("/listen?{query}")))
        .send()
        .await
        .unwrap()
}

/// Opens an iframe page and checks its headers and padding; the padding has arrived when this
/// returns, so the subscription is in place.
async fn open(server: &TestServer, query: &str) -> IframeReader {
    let response = get(server, query).await;
    assert_eq!(response.status(), 200, "{query}");
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let mut reader = IframeReader::new(response);
    reader.read_at_least(2048).await;
    reader
}

#[tokio::test]
async fn padding_of_two_kib_comes_before_any_script() {
    let server = common::start().await;
    let response = get(&server, "cid=pad&transport=iframe&callback=cb").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let mut reader = IframeReader::new(response);
    // Nothing is published: the padding must arrive on its own, at once.
    reader.read_at_least(2048).await;
    assert!(!reader.raw.contains("<script"), "no script yet");
    assert!(reader.raw.starts_with("<!DOCTYPE html>") || reader.raw.starts_with("<html"));
    server.publish("pad", "first").await;
    let message = reader.next_message("cb").await;
    assert_eq!(message["data"], "first");
    let first_script = reader.raw.find("<script").unwrap();
    assert!(first_script >= 2048, "script at byte {first_script}");

    // With a backlog the padding still comes first.
    let mut reader = open(&server, "cid=pad&transport=iframe&callback=cb&since=0").await;
    assert_eq!(reader.next_message("cb").await["id"], 1);
    assert!(reader.raw.find("<script").unwrap() >= 2048);
}

#[tokio::test]
async fn each_message_is_a_call_of_the_callback_with_the_envelope() {
    let server = common::start().await;
    let mut reader = open(&server, "cid=room&transport=iframe&callback=onMessage").await;
    let published = server
        .publish_json("room", &json!({"text": "hi", "list": [1, 2]}))
        .await;
    let second = server.publish("room", "plain").await;
    let first = reader.next_message("onMessage").await;
    assert_eq!(
        first,
        json!({
            "cid": "room",
            "id": 1,
            "epoch": published["epoch"],
            "data": {"text": "hi", "list": [1, 2]},
            "time": published["time"],
        })
    );
    let next = reader.next_message("onMessage").await;
    assert_eq!(next["id"], 2);
    assert_eq!(next["data"], "plain");
    assert_eq!(next["time"], second["time"]);
    // Exact shape of one call on the wire.
    assert!(
        reader
            .raw
            .contains("<script>parent.onMessage({\"cid\":\"room\",\"id\":2,"),
        "{}",
        &reader.raw[2000..]
    );
}

#[tokio::test]
async fn published_markup_cannot_close_the_script_element() {
    let server = common::start().await;
    let mut reader = open(&server, "cid=xss&transport=iframe&callback=cb").await;
    let evil = "</script><script>alert(1)</script>";
    server.publish("xss", evil).await;
    let tricky = "a & b > c <!-- d \u{2028} e \u{2029} </SCRIPT >";
    server
        .publish_json("xss", &json!({"html": tricky, evil: 1}))
        .await;

    let (_, raw_json) = reader.next_call().await.unwrap();
    assert!(raw_json.contains("\\u003c/script\\u003e"), "{raw_json}");
    let value: Value = serde_json::from_str(&raw_json).unwrap();
    assert_eq!(value["data"], evil, "decodes back to the original");

    let (_, raw_json) = reader.next_call().await.unwrap();
    for forbidden in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
        assert!(!raw_json.contains(forbidden), "{forbidden:?} in {raw_json}");
    }
    let value: Value = serde_json::from_str(&raw_json).unwrap();
    assert_eq!(value["data"], json!({"html": tricky, evil: 1}));

    assert!(!reader.raw.contains(evil), "the markup reached the page");
    assert!(!reader.raw.contains("<script>alert"));
    assert_eq!(
        reader.raw.matches("<script>").count(),
        2,
        "one script element per message"
    );
    assert_eq!(reader.raw.matches("</script>").count(), 2);
}

#[tokio::test]
async fn callback_paths_are_accepted_and_other_names_refused() {
    let server = common::start().await;
    let mut reader = open(&server, "cid=cb&transport=iframe&callback=a.b.c").await;
    let max = "x".repeat(128);
    let mut longest = open(&server, &format!("cid=cb&transport=iframe&callback={max}")).await;
    let mut dollar = open(&server, "cid=cb&callback=%24_.on%24Msg1").await;
    server.publish("cb", "to all").await;
    assert_eq!(reader.next_message("a.b.c").await["data"], "to all");
    assert_eq!(longest.next_message(&max).await["data"], "to all");
    assert_eq!(dollar.next_message("$_.on$Msg1").await["data"], "to all");

    for bad in [
        "alert(1)",
        "alert%281%29",
        "a%3Bb",
        "a;b",
        "1a",
        "",
        "a..b",
        "a.",
        ".a",
        "a%20b",
        "a[0]",
        "%C3%A9",
        "a-b",
        "parent.x%3Cscript",
        &"x".repeat(129),
    ] {
        for query in [
            format!("cid=cb&transport=iframe&callback={bad}"),
            format!("cid=cb&callback={bad}"),
        ] {
            let error = expect_error(get(&server, &query).await, 400).await;
            assert!(error.contains("callback"), "{query}: {error}");
        }
    }
    expect_error(
        get(&server, "cid=cb&transport=iframe&callback=a&callback=b").await,
        400,
    )
    .await;
    server.assert_healthy().await;
}

#[tokio::test]
async fn a_callback_alone_selects_the_iframe() {
    let server = common::start().await;
    let mut reader = open(&server, "cid=alone&callback=recv").await;
    server.publish("alone", "x").await;
    assert_eq!(reader.next_message("recv").await["data"], "x");
    let mut slash = open(&server, "cid=alone&callback=recv2&since=0").await;
    assert_eq!(slash.next_message("recv2").await["id"], 1);
}

#[tokio::test]
async fn transport_iframe_without_callback_calls_handle() {
    let server = common::start().await;
    let mut reader = open(&server, "cid=h&transport=iframe").await;
    server.publish("h", "lecture").await;
    assert_eq!(reader.next_message("handle").await["data"], "lecture");
    assert!(reader.raw.contains("<script>parent.handle({"));
}

#[tokio::test]
async fn a_too_old_since_gets_a_gap_call_first() {
    let server = common::start_with(|c| c.history_size = 5).await;
    let epoch = publish_n(&server, "gap", 10).await;
    let mut reader = open(&server, "cid=gap&transport=iframe&callback=cb&since=2").await;
    let (name, json) = reader.next_call().await.unwrap();
    assert_eq!(name, "cb");
    let gap: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        gap,
        json!({"type": "gap", "cid": "gap", "epoch": epoch, "first": 6, "requested": "2"})
    );
    for id in 6..=10 {
        assert_eq!(reader.next_message("cb").await["id"], id);
    }
    server.publish("gap", "11").await;
    assert_eq!(reader.next_message("cb").await["id"], 11);
}

#[tokio::test]
async fn keepalive_comments_are_written_when_idle() {
    let server = common::start_with(|c| c.keepalive = Duration::from_millis(200)).await;
    let mut reader = open(&server, "cid=ka&transport=iframe&callback=cb").await;
    let after_prelude = reader.raw.len();
    let started = Instant::now();
    while reader.raw[after_prelude..].matches("<!-- -->").count() < 2 {
        assert!(reader.read_more(Duration::from_secs(2)).await);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(!reader.raw.contains("<script"));
    server.publish("ka", "after idle").await;
    assert_eq!(reader.next_message("cb").await["data"], "after idle");
}

#[tokio::test]
async fn resume_with_since_is_exact() {
    let server = common::start().await;
    let mut reader = open(&server, "cid=r&transport=iframe&callback=cb").await;
    publish_n(&server, "r", 2).await;
    let second = {
        reader.next_message("cb").await;
        reader.next_message("cb").await
    };
    let cursor = format!("{}:{}", second["epoch"].as_str().unwrap(), second["id"]);
    drop(reader);
    for i in 3..=5 {
        server.publish("r", &format!("missed {i}")).await;
    }
    let mut reader = open(
        &server,
        &format!("cid=r&transport=iframe&callback=cb&since={cursor}"),
    )
    .await;
    for id in 3..=5 {
        let message = reader.next_message("cb").await;
        assert_eq!(message["id"], id);
        assert_eq!(message["data"], format!("missed {id}"));
    }
    server.publish("r", "live").await;
    let live = reader.next_message("cb").await;
    assert_eq!(
        (live["id"].as_u64(), live["data"].as_str()),
        (Some(6), Some("live"))
    );
    // Plain offsets work too.
    let mut reader = open(&server, "cid=r&transport=iframe&callback=cb&since=4").await;
    assert_eq!(reader.next_message("cb").await["id"], 5);
    assert_eq!(reader.next_message("cb").await["id"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_calls_the_callback_with_a_disconnect_and_ends_the_page() {
    let common::TestServer {
        server,
        base,
        client,
    } = common::start_with(|c| c.shutdown_timeout = Duration::from_secs(3)).await;
    let response = client
        .get(format!(
            "{base}/listen?cid=bye&transport=iframe&callback=cb"
        ))
        .send()
        .await
        .unwrap();
    let mut reader = IframeReader::new(response);
    reader.read_at_least(2048).await;
    let shutdown = tokio::spawn(server.shutdown());
    let (name, json) = reader.next_call().await.expect("disconnect call");
    assert_eq!(name, "cb");
    let object: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(object["type"], "disconnect");
    assert_eq!(object["reconnect"], true);
    while reader.read_more(T).await {}
    assert!(
        reader.raw.trim_end().ends_with("</html>"),
        "{}",
        &reader.raw[2000..]
    );
    tokio::time::timeout(T, shutdown).await.unwrap().unwrap();
}
