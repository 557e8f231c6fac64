//! Browser boundaries over real sockets: the Origin allowlist on every subscriber transport
//! (cross-site WebSocket hijacking, SSE, long-poll, poll, iframe with Referer), CORS answers
//! and preflights, and the iframe's `frame-ancestors` policy.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::raw::{self, RawResponse};
use common::{subscribers, TestServer};

async fn get(server: &TestServer, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    let addr = server.server.local_addr();
    raw::once(addr, &raw::get(target, addr, headers)).await
}

/// A WebSocket handshake from a page at `origin`; returns the response head (and body).
async fn ws_handshake(server: &TestServer, cid: &str, origin: &str) -> RawResponse {
    let mut headers = raw::UPGRADE_HEADERS.to_vec();
    headers.push(("Origin", origin));
    get(server, &format!("/listen?cid={cid}"), &headers).await
}

fn own_origin(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[tokio::test]
async fn cross_site_websocket_handshakes_are_refused_before_subscribing() {
    let server = common::start_with(|c| {
        c.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
        ];
    })
    .await;
    let response = ws_handshake(&server, "secret", "https://evil.example").await;
    let error = response.expect_error(403);
    assert_eq!(error, "origin https://evil.example not allowed");
    assert_eq!(subscribers(&server, "secret"), 0, "nothing was subscribed");

    // The server's own pages, listed origins and subdomains of a wildcard entry are allowed;
    // clients that send no Origin (not a browser page) too.
    let own = own_origin(server.server.local_addr());
    for origin in [
        own.as_str(),
        "https://app.example.com",
        "https://a.b.example.org",
    ] {
        let response = ws_handshake(&server, "secret", origin).await;
        assert_eq!(response.status, 101, "{origin}: {response:?}");
    }
    let response = get(&server, "/listen?cid=secret", &raw::UPGRADE_HEADERS).await;
    assert_eq!(response.status, 101, "{response:?}");
    for refused in [
        "http://app.example.com",
        "https://example.org",
        "https://app.example.com.evil.example",
        "null",
    ] {
        ws_handshake(&server, "secret", refused)
            .await
            .expect_error(403);
    }
    server.assert_healthy().await;
}

#[tokio::test]
async fn sse_long_poll_and_poll_answer_allowed_origins_with_cors_headers() {
    let server =
        common::start_with(|c| c.allowed_origins = vec!["https://app.example.com".into()]).await;
    server.publish("news", "hello").await;
    let origin = ("Origin", "https://app.example.com");

    let response = get(&server, "/messages?cid=news&since=0", &[origin]).await;
    assert_eq!(response.status, 200);
    assert_cors(&response, "https://app.example.com");
    assert_eq!(response.json()[0]["data"], "hello");

    // Long poll with a backlog answers at once.
    let response = get(&server, "/listen?cid=news&since=0", &[origin]).await;
    assert_eq!(response.status, 200);
    assert_cors(&response, "https://app.example.com");

    // SSE: `get` reads only the head of the endless stream (it has no Content-Length).
    let response = get(
        &server,
        "/listen?cid=news",
        &[origin, ("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_cors(&response, "https://app.example.com");

    // Errors reach the page too (it can read why), still with the CORS headers.
    let response = get(&server, "/messages?cid=bad!", &[origin]).await;
    response.expect_error(400);
    assert_cors(&response, "https://app.example.com");

    // A refused origin gets a 403 without them, on every subscriber endpoint.
    let evil = ("Origin", "https://evil.example");
    for target in ["/messages?cid=quiet", "/listen?cid=quiet&since=0"] {
        let response = get(&server, target, &[evil]).await;
        let error = response.expect_error(403);
        assert!(error.contains("https://evil.example"), "{error}");
        assert_eq!(response.header("access-control-allow-origin"), None);
    }
    let response = get(
        &server,
        "/listen?cid=quiet",
        &[evil, ("Accept", "text/event-stream")],
    )
    .await;
    response.expect_error(403);
    assert_eq!(
        subscribers(&server, "quiet"),
        0,
        "refused before subscribing"
    );
}

fn assert_cors(response: &RawResponse, origin: &str) {
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some(origin),
        "{response:?}"
    );
    assert_eq!(response.header("vary"), Some("Origin"));
    let exposed = response
        .header("access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("x-herald-cursor") && exposed.contains("x-herald-gap"),
        "{exposed}"
    );
    assert_eq!(response.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn preflights_are_204_for_allowed_origins_and_403_otherwise() {
    let server = common::start_with(|c| {
        c.allowed_origins = vec!["https://app.example.com".into()];
        c.cors_credentials = true;
    })
    .await;
    let addr = server.server.local_addr();
    let preflight = |origin: &str, method: &str| {
        format!(
            "OPTIONS /listen?cid=x HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: authorization, last-event-id\r\n\r\n"
        )
    };
    let response = raw::once(addr, &preflight("https://app.example.com", "GET")).await;
    assert_eq!(response.status, 204, "{response:?}");
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(response.header("access-control-allow-methods"), Some("GET"));
    let allowed = response
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("last-event-id"),
        "{allowed}"
    );
    assert!(response.header("access-control-max-age").is_some());
    assert_eq!(
        response.header("access-control-allow-credentials"),
        Some("true")
    );

    raw::once(addr, &preflight("https://evil.example", "GET"))
        .await
        .expect_error(403);
    raw::once(addr, &preflight("https://app.example.com", "DELETE"))
        .await
        .expect_error(403);

    // Publishing is not a browser API: OPTIONS /publish is a 405 like any other method.
    let response = raw::once(
        addr,
        &format!(
            "OPTIONS /publish?cid=x HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\n\r\n"
        ),
    )
    .await;
    response.expect_error(405);
    assert_eq!(response.header("allow"), Some("POST"));
    assert_eq!(response.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn the_forever_iframe_is_framed_only_by_allowed_pages() {
    let server = common::start().await;
    let target = "/listen?cid=f&transport=iframe&callback=onMessage";
    let page = own_origin(server.server.local_addr());

    // Frame navigations carry no Origin; the Referer names the embedding page. (`get` reads
    // only the head of the endless page.)
    let referer = format!("{page}/chat.html");
    let response = get(&server, target, &[("Referer", &referer)]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.header("content-security-policy"),
        Some("frame-ancestors 'self'")
    );

    let response = get(
        &server,
        target,
        &[("Referer", "https://evil.example/embed.html")],
    )
    .await;
    let error = response.expect_error(403);
    assert_eq!(error, "origin https://evil.example not allowed");

    // The allowlist becomes the frame-ancestors list.
    let server = common::start_with(|c| {
        c.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
        ];
    })
    .await;
    let response = get(
        &server,
        "/listen?cid=f&transport=iframe",
        &[("Referer", "https://x.example.org/")],
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-security-policy"),
        Some("frame-ancestors 'self' https://app.example.com https://*.example.org")
    );
}
