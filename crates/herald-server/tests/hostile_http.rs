//! Hostile HTTP input against a real server over raw sockets: malformed and truncated requests,
//! junk in paths and query strings, bad cursors and bad publish bodies. Each gets the right
//! status (a JSON `{"error": …}` body whenever the request got far enough to reach Herald's
//! router; hyper answers requests it cannot parse with a bare status and closes), while a
//! well-behaved subscriber connected throughout receives every message published during the
//! abuse, no channel is created by a refused request, and `/health` shows the connection count
//! back at its baseline afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::raw::{await_connections, exchange, health, Bystander, RawResponse};

/// What a case must get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// hyper refused to parse the request: this status, no body, connection closed.
    Refused(u16),
    /// Herald answered with this status and a JSON error.
    Json(u16),
    /// A successful answer (the junk was harmless).
    Ok,
    /// No answer at all; the server just closes the connection.
    Nothing,
}

fn get(target: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: herald\r\n{extra_headers}\r\n").into_bytes()
}

fn publish(target: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request =
        format!("POST {target} HTTP/1.1\r\nHost: herald\r\n{headers}\r\n").into_bytes();
    request.extend_from_slice(body);
    request
}

fn publish_sized(target: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    publish(
        target,
        &format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ),
        body,
    )
}

/// The abuse cases: name, bytes, whether the client half-closes after writing, expectation.
#[rustfmt::skip]
fn cases() -> Vec<(&'static str, Vec<u8>, bool, Expect)> {
    use Expect::{Json, Nothing, Ok, Refused};
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_cids: String = (0..1000).map(|i| format!("cid=c{i}&")).collect();
    vec![
        // --- requests hyper cannot parse ---
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec(), false, Refused(400)),
        ("bad method token", b"G(T /health HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), false, Refused(400)),
        ("unknown HTTP version", b"GET /health HTTP/9.9\r\nHost: h\r\n\r\n".to_vec(), false, Refused(400)),
        ("NUL in a header value", get("/health", "X-A: a\0b\r\n"), false, Refused(400)),
        ("header line without a colon", get("/health", "X-A b\r\n"), false, Refused(400)),
        ("space before the colon", get("/health", "X-A : b\r\n"), false, Refused(400)),
        ("obsolete line folding", get("/health", "X-A: a\r\n b\r\n"), false, Refused(400)),
        ("NUL in the path", b"GET /hea\0lth HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), false, Refused(400)),
        ("space in the path", b"GET /he alth HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), false, Refused(400)),
        ("non-ASCII in the path", b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), false, Json(404)),
        ("Content-Length not a number", publish("/publish?cid=hx", "Content-Length: abc\r\n", b""), false, Refused(400)),
        ("negative Content-Length", publish("/publish?cid=hx", "Content-Length: -1\r\n", b""), false, Refused(400)),
        ("conflicting Content-Lengths", publish("/publish?cid=hx", "Content-Length: 1\r\nContent-Length: 2\r\n", b"ab"), false, Refused(400)),
        ("101 headers", get("/health", &many_headers), false, Refused(431)),
        ("a 200 KB header line", get("/health", &format!("X-Big: {}\r\n", "a".repeat(200_000))), false, Refused(431)),
        // --- cut off ---
        ("connect then EOF", Vec::new(), true, Nothing),
        ("request line then EOF", b"GET /health HTTP/1.1\r\n".to_vec(), true, Nothing),
        ("headers cut off then EOF", b"GET /health HTTP/1.1\r\nHost: h\r\nAcc".to_vec(), true, Nothing),
        ("body cut off then EOF", publish("/publish?cid=hx", "Content-Length: 10\r\n", b"abc"), true, Json(400)),
        ("chunked body cut off then EOF", publish("/publish?cid=hx", "Transfer-Encoding: chunked\r\n", b"5\r\nab"), true, Json(400)),
        // --- broken chunked encoding ---
        ("chunk size not hex", publish("/publish?cid=hx", "Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"), false, Json(400)),
        ("chunk size overflows", publish("/publish?cid=hx", "Transfer-Encoding: chunked\r\n", b"fffffffffffffffffffff\r\nabc\r\n"), false, Json(400)),
        ("chunk without its CRLF", publish("/publish?cid=hx", "Transfer-Encoding: chunked\r\n", b"3\r\nabcXX0\r\n\r\n"), false, Json(400)),
        // --- junk in paths and query strings (reaches the router) ---
        ("percent junk in the path", get("/%zz%%/health", ""), false, Json(404)),
        // Just under max-url-length (16 KiB by default): reaches the router.
        ("long path", get(&format!("/{}", "a".repeat(16_000)), ""), false, Json(404)),
        ("path over max-url-length", get(&format!("/{}", "a".repeat(20_000)), ""), false, Json(414)),
        ("dot segments", get("/../../etc/passwd", ""), false, Json(404)),
        ("invalid UTF-8 percent-encoding in a cid", get("/messages?cid=%ff%fe", ""), false, Json(400)),
        ("encoded NUL in a cid", get("/messages?cid=a%00b", ""), false, Json(400)),
        ("percent junk in a cid", get("/messages?cid=a%zz", ""), false, Json(400)),
        ("encoded newline in a cid", get("/listen?cid=a%0d%0aX-Injected:%201", ""), false, Json(400)),
        ("empty cid", get("/messages?cid=", ""), false, Json(400)),
        ("256-byte cid", get(&format!("/messages?cid={}", "c".repeat(256)), ""), false, Json(400)),
        ("no cid", get("/listen?since=1", ""), false, Json(400)),
        ("duplicate cid", get("/messages?cid=hx&cid=hx", ""), false, Json(400)),
        ("a thousand cids", get(&format!("/messages?{many_cids}"), ""), false, Json(400)),
        ("URL over max-url-length", get(&format!("/messages?cid=hx&_={}", "j".repeat(20_000)), ""), false, Json(414)),
        // Over max-header-size (32 KiB by default): hyper refuses the head before Herald sees it.
        ("URL over 64 KiB", get(&format!("/messages?cid=hx&_={}", "j".repeat(70_000)), ""), false, Refused(431)),
        ("repeated since", get("/messages?cid=hx&since=1&since=2", ""), false, Json(400)),
        ("repeated limit", get("/messages?cid=hx&limit=1&limit=2", ""), false, Json(400)),
        ("repeated transport", get("/listen?cid=hx&transport=sse&transport=sse", ""), false, Json(400)),
        ("repeated callback", get("/listen?cid=hx&callback=a&callback=b", ""), false, Json(400)),
        ("unknown transport", get("/listen?cid=hx&transport=%00", ""), false, Json(400)),
        ("script in the iframe callback", get("/listen?cid=hx&transport=iframe&callback=%3C/script%3E", ""), false, Json(400)),
        ("limit zero", get("/messages?cid=hx&limit=0", ""), false, Json(400)),
        ("limit beyond 64 bits", get("/messages?cid=hx&limit=99999999999999999999999", ""), false, Json(400)),
        ("limit over the maximum", get("/messages?cid=hx&limit=1001", ""), false, Json(400)),
        ("junk parameters are ignored", get("/messages?cid=hx&%ff=%fe&=&&&_=1", ""), false, Ok),
        // --- bad cursors ---
        ("cursor not a number", get("/messages?cid=hx&since=abc", ""), false, Json(400)),
        ("negative cursor", get("/messages?cid=hx&since=-1", ""), false, Json(400)),
        ("cursor beyond 64 bits", get("/messages?cid=hx&since=99999999999999999999", ""), false, Json(400)),
        ("epoch with capitals", get("/messages?cid=hx&since=ABC:1", ""), false, Json(400)),
        ("epoch too long", get("/messages?cid=hx&since=zzzzzzzzzzzzzz:1", ""), false, Json(400)),
        ("epoch beyond 64 bits", get("/messages?cid=hx&since=zzzzzzzzzzzzz:1", ""), false, Json(400)),
        ("two colons", get("/messages?cid=hx&since=a:b:1", ""), false, Json(400)),
        ("empty epoch", get("/messages?cid=hx&since=:1", ""), false, Json(400)),
        ("wrong number of entries", get("/messages?cid=hx&cid=hy&since=1,2,3", ""), false, Json(400)),
        ("cursor far too long", get(&format!("/messages?cid=hx&since={}", "1,".repeat(5000)), ""), false, Json(400)),
        ("junk last_event_id", get("/listen?cid=hx&transport=sse&last_event_id=%ff", ""), false, Json(400)),
        ("non-ASCII Last-Event-ID", get("/listen?cid=hx", "Accept: text/event-stream\r\nLast-Event-ID: \u{e9}\r\n"), false, Json(400)),
        ("junk Last-Event-ID", get("/listen?cid=hx", "Accept: text/event-stream\r\nLast-Event-ID: k3f9:17:x\r\n"), false, Json(400)),
        ("huge Last-Event-ID", get("/listen?cid=hx", &format!("Accept: text/event-stream\r\nLast-Event-ID: {}\r\n", "9".repeat(10_000))), false, Json(400)),
        // --- bad publish bodies ---
        ("invalid JSON", publish_sized("/publish?cid=hx", "application/json", b"{\"a\":"), false, Json(400)),
        ("JSON with trailing junk", publish_sized("/publish?cid=hx", "application/json", b"{} x"), false, Json(400)),
        ("two JSON values", publish_sized("/publish?cid=hx", "application/json", b"1 2"), false, Json(400)),
        ("empty JSON body", publish_sized("/publish?cid=hx", "application/json", b""), false, Json(400)),
        ("deeply nested JSON", publish_sized("/publish?cid=hx", "application/json", "[".repeat(5000).as_bytes()), false, Json(400)),
        ("JSON with a BOM", publish_sized("/publish?cid=hx", "application/json", b"\xef\xbb\xbf{}"), false, Json(400)),
        ("JSON with a raw control character", publish_sized("/publish?cid=hx", "application/json", b"\"a\x01b\""), false, Json(400)),
        ("JSON with invalid UTF-8 in a string", publish_sized("/publish?cid=hx", "application/json", b"\"\xc3\x28\""), false, Json(400)),
        ("JSON with a bad escape", publish_sized("/publish?cid=hx", "application/json", b"\"\\x41\""), false, Json(400)),
        ("non-UTF-8 text", publish_sized("/publish?cid=hx", "text/plain", b"ok\xff"), false, Json(400)),
        ("overlong UTF-8 in text", publish_sized("/publish?cid=hx", "text/plain", b"\xc0\xaf"), false, Json(400)),
        ("UTF-16 surrogate encoded in UTF-8", publish_sized("/publish?cid=hx", "text/plain", b"\xed\xa0\x80"), false, Json(400)),
        ("publish with a GET", get("/publish?cid=hx", ""), false, Json(405)),
        ("publish without a cid", publish_sized("/publish", "text/plain", b"x"), false, Json(400)),
        ("publish with a bad cid", publish_sized("/publish?cid=a%20b", "text/plain", b"x"), false, Json(400)),
        ("Authorization that is not Bearer", publish("/publish?cid=hx", "Authorization: Basic eA==\r\nContent-Length: 1\r\n", b"x"), false, Json(401)),
        ("Authorization with bytes beyond ASCII", publish("/publish?cid=hx", "Authorization: Bearer \u{e9}\r\nContent-Length: 1\r\n", b"x"), false, Json(401)),
    ]
}

async fn check(addr: SocketAddr, name: &str, bytes: &[u8], eof: bool, expect: Expect) {
    let expected_responses = usize::from(!matches!(expect, Expect::Nothing));
    let exchange = exchange(addr, bytes, eof, expected_responses).await;
    let response: Option<&RawResponse> = exchange.responses.first();
    match expect {
        Expect::Nothing => {
            assert!(response.is_none(), "{name}: {response:?}");
            assert!(exchange.closed, "{name}: the server closes the connection");
        }
        Expect::Refused(status) => {
            let response = response.unwrap_or_else(|| panic!("{name}: no response"));
            assert_eq!(response.status, status, "{name}: {response:?}");
            assert!(exchange.closed, "{name}: the server closes the connection");
        }
        Expect::Json(status) => {
            let response = response.unwrap_or_else(|| panic!("{name}: no response"));
            assert_eq!(response.status, status, "{name}: {response:?}");
            let error = response.json_error();
            assert!(!error.is_empty(), "{name}");
            assert!(
                error.len() < 1000,
                "{name}: the error does not echo the junk: {error}"
            );
        }
        Expect::Ok => {
            let response = response.unwrap_or_else(|| panic!("{name}: no response"));
            assert_eq!(response.status, 200, "{name}: {response:?}");
        }
    }
}

#[tokio::test]
async fn malformed_requests_get_the_right_status_and_nobody_else_notices() {
    let server = common::start().await;
    let addr = server.server.local_addr();
    let mut bystander = Bystander::join(&server, "bystander").await;
    // The one case that is served reads channel `hx`, which creates it (as any poll does).
    assert_eq!(
        exchange(addr, &get("/messages?cid=hx", ""), false, 1)
            .await
            .responses[0]
            .status,
        200
    );
    let baseline = health(&server).await;
    let baseline_connections = baseline["connections"].as_u64().unwrap();
    for (name, bytes, eof, expect) in cases() {
        check(addr, name, &bytes, eof, expect).await;
        bystander.publish(&server).await;
    }
    // Every case once more, all at the same time.
    let mut tasks = Vec::new();
    for (name, bytes, eof, expect) in cases() {
        tasks.push(tokio::spawn(async move {
            check(addr, name, &bytes, eof, expect).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    bystander.publish(&server).await;

    await_connections(&server, baseline_connections).await;
    let after = health(&server).await;
    assert_eq!(
        after["channels"], baseline["channels"],
        "no refused request created a channel"
    );
    bystander.assert_received_everything().await;
}

#[tokio::test]
async fn pipelined_junk_after_a_good_request_answers_the_good_one_then_400() {
    let server = common::start().await;
    let mut bytes = get("/health", "");
    bytes.extend_from_slice(b"JUNK JUNK JUNK\r\n\r\n");
    let exchange = exchange(server.server.local_addr(), &bytes, false, 2).await;
    let statuses: Vec<u16> = exchange.responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400]);
    assert!(exchange.closed);
    server.assert_healthy().await;
}

#[tokio::test]
async fn a_refused_request_on_a_keep_alive_connection_leaves_it_usable() {
    let server = common::start().await;
    // A Herald-level error (not a parse error) does not cost the client its connection.
    let mut bytes = get("/messages?cid=%ff", "");
    bytes.extend_from_slice(&publish_sized(
        "/publish?cid=kept",
        "application/json",
        b"{",
    ));
    bytes.extend_from_slice(&get("/messages?cid=kept&since=0", ""));
    let exchange = exchange(server.server.local_addr(), &bytes, false, 3).await;
    let statuses: Vec<u16> = exchange.responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 400, 200]);
    assert_eq!(exchange.responses[2].body, b"[]");
    assert!(!exchange.closed);
}

#[tokio::test]
async fn json_that_strict_parsers_reject_is_refused_at_publish() {
    // A lone UTF-16 surrogate escape is valid JSON grammar, but not valid Unicode text: serde
    // (and every other strict parser) refuses the whole envelope, so one such publish would
    // break every strict subscriber. The same for numbers beyond a double's range.
    let server = common::start().await;
    for body in [
        br#""\ud800""#.as_slice(),
        br#"{"a":"x\udc00y"}"#,
        br#"["\ud83d"]"#,
        br#"1e400"#,
        br#"{"n":-1e309}"#,
    ] {
        let response = server
            .client
            .post(server.url("/publish?cid=strict"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let error = common::expect_error(response, 400).await;
        assert!(error.contains("JSON"), "{error}");
    }
    // Well-formed pairs, escaped or not, and large but finite numbers are fine.
    for body in [
        br#""\ud83d\ude00""#.as_slice(),
        "\"\u{1F600}\"".as_bytes(),
        br#"1.7976931348623157e308"#,
        br#"123456789012345678901234567890"#,
    ] {
        let response = server
            .client
            .post(server.url("/publish?cid=strict"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(body));
    }
    let history: serde_json::Value = server
        .client
        .get(server.url("/messages?cid=strict&since=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("every stored envelope parses strictly");
    assert_eq!(history.as_array().unwrap().len(), 4);
}
