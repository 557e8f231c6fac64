//! Access control against a real server over real sockets: publisher keys, subscriber tokens
//! (HS256, RS256, ES256) from every source, private namespaces, per-namespace history and
//! subscriber bounds, streams ended when their token expires, WebSocket auth and refresh.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use common::{expect_error, now_ms, ws_next_json, SseReader, TestServer};
use herald_server::{Config, NamespaceOptions};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const STEP: Duration = Duration::from_secs(5);
const SECRET: &str = "test-hmac-secret-of-a-decent-length";
/// The server's clock-skew allowance (`access::LEEWAY_SECS`).
const LEEWAY: u64 = herald_server::access::LEEWAY_SECS;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

/// A token with these claims, signed with `alg` by the matching test key.
fn sign(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(fixture("jwt_rsa_private.pem")).unwrap())
                .unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(fixture("jwt_ec_private.pem")).unwrap())
                .unwrap()
        }
        other => panic!("no test key for {other:?}"),
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

/// An HS256 token for `sub` valid for an hour with these subscribe patterns.
fn token(sub: &str, channels: &[&str]) -> String {
    sign(
        Algorithm::HS256,
        &json!({"sub": sub, "exp": now_secs() + 3600, "channels": channels}),
    )
}

/// An HS256 token whose deadline (exp + leeway) is `seconds` from now (rounded down to a
/// whole second, so between `seconds - 1` and `seconds`).
fn expiring_token(sub: &str, channels: &[&str], seconds: u64) -> String {
    sign(
        Algorithm::HS256,
        &json!({"sub": sub, "exp": now_secs() + seconds - LEEWAY, "channels": channels}),
    )
}

/// A server with the three token keys, a private namespace `priv`, a public namespace `pub`.
async fn start() -> TestServer {
    start_adjusted(|_| {}).await
}

async fn start_adjusted(adjust: impl FnOnce(&mut Config)) -> TestServer {
    common::start_with(|c| {
        c.jwt_hmac_secret = Some(SECRET.into());
        c.jwt_rsa_public_key = Some(fixture("jwt_rsa_public.pem"));
        c.jwt_ec_public_key = Some(fixture("jwt_ec_public.pem"));
        c.namespaces.insert(
            "priv".into(),
            NamespaceOptions {
                private: Some(true),
                ..NamespaceOptions::default()
            },
        );
        c.namespaces
            .insert("pub".into(), NamespaceOptions::default());
        adjust(c);
    })
    .await
}

async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    server.client.get(server.url(path)).send().await.unwrap()
}

async fn get_bearer(server: &TestServer, path: &str, token: &str) -> reqwest::Response {
    server
        .client
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hs256_rs256_and_es256_tokens_are_accepted() {
    let server = start().await;
    server.publish("priv:a", "hello").await;
    let claims = json!({"sub": "u1", "exp": now_secs() + 60, "channels": ["priv:a"]});
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let t = sign(alg, &claims);
        let response = get(&server, &format!("/messages?cid=priv:a&token={t}")).await;
        assert_eq!(response.status(), 200, "{alg:?}");
        let messages: Value = response.json().await.unwrap();
        assert_eq!(messages[0]["data"], "hello", "{alg:?}");
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let server = start_adjusted(|c| {
        c.jwt_audience = Some("herald".into());
        c.jwt_issuer = Some("backend".into());
    })
    .await;
    let exp = now_secs() + 60;
    let good =
        json!({"sub": "u", "exp": exp, "channels": ["*"], "aud": "herald", "iss": "backend"});
    let t = sign(Algorithm::HS256, &good);
    let response = get(&server, &format!("/messages?cid=priv:a&token={t}")).await;
    assert_eq!(response.status(), 200, "the valid token passes");

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    let mut tampered = good.clone();
    tampered["channels"] = json!(["priv:other"]);
    let forged = {
        let parts: Vec<&str> = t.split('.').collect();
        format!("{}.{}.{}", parts[0], b64(&tampered), parts[2])
    };
    let mut cases = vec![
        ("alg none", unsigned),
        ("wrong alg (HS384)", sign(Algorithm::HS384, &good)),
        ("forged claims", forged),
        ("garbage", "not.a.token".to_string()),
    ];
    for (what, change) in [
        ("expired", json!({"exp": now_secs() - 3600})),
        ("no exp", json!({"exp": null})),
        ("no sub", json!({"sub": null})),
        ("wrong audience", json!({"aud": "other"})),
        ("wrong issuer", json!({"iss": "other"})),
        ("bad channel pattern", json!({"channels": ["a b"]})),
    ] {
        let mut claims = good.as_object().unwrap().clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
        cases.push((what, sign(Algorithm::HS256, &Value::Object(claims))));
    }
    for (what, t) in cases {
        // Presented tokens must be valid for public channels too.
        for cid in ["priv:a", "pub:a", "plain"] {
            let response = get(&server, &format!("/messages?cid={cid}&token={t}")).await;
            assert_eq!(
                response.headers().get("www-authenticate").unwrap(),
                "Bearer"
            );
            let error = expect_error(response, 401).await;
            if what == "expired" {
                assert_eq!(error, "token expired");
            } else {
                assert!(error.starts_with("invalid token"), "{what}: {error}");
            }
        }
    }
    server.assert_healthy().await;
}

#[tokio::test]
async fn an_algorithm_without_a_configured_key_is_refused() {
    let server = common::start_with(|c| c.jwt_hmac_secret = Some(SECRET.into())).await;
    let claims = json!({"sub": "u", "exp": now_secs() + 60});
    let t = sign(Algorithm::RS256, &claims);
    let error = expect_error(
        get(&server, &format!("/messages?cid=a&token={t}")).await,
        401,
    )
    .await;
    assert!(error.contains("no RS256 key"), "{error}");
    let t = sign(Algorithm::HS256, &claims);
    assert_eq!(
        get(&server, &format!("/messages?cid=a&token={t}"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn private_namespace_needs_a_covering_token() {
    let server = start().await;
    server.publish("priv:room", "x").await;
    let error = expect_error(get(&server, "/messages?cid=priv:room").await, 401).await;
    assert!(error.contains("private"), "{error}");
    let other = token("u", &["priv:elsewhere", "pub:*"]);
    let error = expect_error(
        get(&server, &format!("/messages?cid=priv:room&token={other}")).await,
        403,
    )
    .await;
    assert!(error.contains("priv:room"), "{error}");
    // Public channels need no coverage; a valid token is fine there.
    for path in ["/messages?cid=pub:x", "/messages?cid=plain"] {
        assert_eq!(get(&server, path).await.status(), 200, "{path}");
        let with = format!("{path}&token={other}");
        assert_eq!(get(&server, &with).await.status(), 200, "{with}");
    }
    // Every transport refuses before subscribing.
    for path in [
        "/listen?cid=priv:room",
        "/listen?cid=priv:room&transport=sse",
        "/listen?cid=priv:room&transport=iframe",
        "/listen?cid=pub:x&cid=priv:room",
    ] {
        expect_error(get(&server, path).await, 401).await;
        expect_error(get(&server, &format!("{path}&token={other}")).await, 403).await;
    }
    assert_eq!(server.publish("priv:room", "y").await["subscribers"], 0);
}

#[tokio::test]
async fn exact_names_and_prefixes_grant_channels() {
    let server = start().await;
    let t = token("u", &["priv:news", "priv:chat:*"]);
    for (cid, status) in [
        ("priv:news", 200),
        ("priv:newsroom", 403),
        ("priv:chat:1", 200),
        ("priv:chat:", 200),
        ("priv:chatter", 403),
    ] {
        let response = get(&server, &format!("/messages?cid={cid}&token={t}")).await;
        assert_eq!(response.status(), status, "{cid}");
    }
    let all = token("u", &["*"]);
    let response = get(&server, &format!("/messages?cid=priv:any&token={all}")).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn token_sources_query_bearer_and_not_both() {
    let server = start().await;
    server.publish("priv:s", "one").await;
    let t = token("u", &["priv:s"]);
    // Short poll and long poll (immediate: history has a message after 0).
    for path in ["/messages?cid=priv:s&since=0", "/listen?cid=priv:s&since=0"] {
        let response = get(&server, &format!("{path}&token={t}")).await;
        assert_eq!(response.status(), 200, "{path} with token=");
        let response = get_bearer(&server, path, &t).await;
        assert_eq!(response.status(), 200, "{path} with Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body[0]["data"], "one");
        let both = get_bearer(&server, &format!("{path}&token={t}"), &t).await;
        expect_error(both, 400).await;
        let wrong = get_bearer(&server, path, "nonsense").await;
        expect_error(wrong, 401).await;
    }
    // SSE with a bearer token.
    let response = server
        .client
        .get(server.url("/listen?cid=priv:s&since=0"))
        .header("accept", "text/event-stream")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let event = reader.next_event(STEP).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap()["data"],
        "one"
    );
}

#[tokio::test]
async fn poll_and_long_poll_check_the_token_on_every_request() {
    let server = start().await;
    let t = expiring_token("u", &["priv:p"], 2);
    let poll = format!("/messages?cid=priv:p&token={t}");
    assert_eq!(get(&server, &poll).await.status(), 200);
    // The same token, once expired, is refused by the next request of either kind.
    tokio::time::timeout(Duration::from_secs(10), async {
        while get(&server, &poll).await.status() == 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the token expires");
    let error = expect_error(get(&server, &poll).await, 401).await;
    assert_eq!(error, "token expired");
    let longpoll = format!("/listen?cid=priv:p&since=0&token={t}");
    expect_error(get(&server, &longpoll).await, 401).await;
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_namespace_is_400_everywhere() {
    let server = start().await;
    let expected = "unknown namespace \"x\" in channel \"x:1\"";
    let response = server
        .client
        .post(server.url("/publish?cid=x:1"))
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_error(response, 400).await, expected);
    // Nothing published when one of several channels is unknown.
    let response = server
        .client
        .post(server.url("/publish?cid=plain&cid=x:1"))
        .body("b")
        .send()
        .await
        .unwrap();
    expect_error(response, 400).await;
    assert_eq!(server.publish("plain", "first").await["id"], 1);
    for path in [
        "/messages?cid=x:1",
        "/listen?cid=x:1",
        "/listen?cid=x:1&transport=sse",
        "/listen?cid=x:1&transport=iframe",
    ] {
        assert_eq!(
            expect_error(get(&server, path).await, 400).await,
            expected,
            "{path}"
        );
    }
    match connect_async(server.ws_url("/listen?cid=x:1").as_str()).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected an HTTP 400, got {other:?}"),
    }
    let health: Value = get(&server, "/health").await.json().await.unwrap();
    assert_eq!(health["channels"], 1, "only `plain` exists: {health}");
}

#[tokio::test]
async fn history_size_and_ttl_are_per_namespace() {
    let server = start_adjusted(|c| {
        c.history_size = 10;
        c.namespaces.insert(
            "short".into(),
            NamespaceOptions {
                history_size: Some(2),
                ..NamespaceOptions::default()
            },
        );
        c.namespaces.insert(
            "brief".into(),
            NamespaceOptions {
                history_ttl: Some(Duration::from_millis(300)),
                ..NamespaceOptions::default()
            },
        );
    })
    .await;
    for cid in ["short:1", "plain"] {
        common::publish_n(&server, cid, 4).await;
    }
    let ids = |v: Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };
    let short: Value = get(&server, "/messages?cid=short:1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(short), [3, 4], "namespace history_size 2");
    let plain: Value = get(&server, "/messages?cid=plain")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(plain), [1, 2, 3, 4], "default history_size 10");

    server.publish("brief:1", "soon gone").await;
    server.publish("plain2", "stays").await;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let brief: Value = get(&server, "/messages?cid=brief:1")
                .await
                .json()
                .await
                .unwrap();
            if brief.as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("namespace history_ttl expires the message");
    let plain2: Value = get(&server, "/messages?cid=plain2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(plain2), [1], "default ttl (10 min) keeps it");
}

#[tokio::test]
async fn max_subscribers_is_enforced_per_channel() {
    let server = start_adjusted(|c| {
        c.namespaces.insert(
            "duo".into(),
            NamespaceOptions {
                max_subscribers: Some(2),
                ..NamespaceOptions::default()
            },
        );
    })
    .await;
    let sse = |cid: &'static str| {
        server
            .client
            .get(server.url(&format!("/listen?cid={cid}")))
            .header("accept", "text/event-stream")
            .send()
    };
    let first = sse("duo:1").await.unwrap();
    let second = sse("duo:1").await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    common::wait_for_subscribers(&server, "duo:1", 2).await;
    let error = expect_error(sse("duo:1").await.unwrap(), 403).await;
    assert!(error.contains("maximum of 2 subscribers"), "{error}");
    expect_error(get(&server, "/listen?cid=duo:1").await, 403).await;
    // Another channel of the namespace has its own count; the default namespace is unbounded.
    assert_eq!(sse("duo:2").await.unwrap().status(), 200);
    // A WebSocket subscribe command gets an error reply and stays open.
    let mut ws = connect(&server, "/listen").await;
    send(
        &mut ws,
        json!({"type": "subscribe", "cid": "duo:1", "ref": 1}),
    )
    .await;
    let reply = ws_next_json(&mut ws, STEP).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["ref"], 1);
    // One leaves: there is room again.
    drop(first);
    common::wait_for_subscribers(&server, "duo:1", 1).await;
    send(&mut ws, json!({"type": "subscribe", "cid": "duo:1"})).await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
    drop(second);
}

// ---------------------------------------------------------------------------------------------
// Streams end at the token's expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sse_and_iframe_streams_end_when_their_token_expires() {
    let server = start().await;
    let t = expiring_token("u", &["priv:*"], 2);
    let open = |extra: &'static str| {
        let t = t.clone();
        let request = server
            .client
            .get(server.url(&format!("/listen?cid=priv:e&token={t}{extra}")));
        async move {
            if extra.is_empty() {
                request.header("accept", "text/event-stream").send().await
            } else {
                request.send().await
            }
        }
    };
    let sse = open("").await.unwrap();
    let iframe = open("&transport=iframe&callback=cb").await.unwrap();
    assert_eq!(
        (sse.status().as_u16(), iframe.status().as_u16()),
        (200, 200)
    );
    let mut reader = SseReader::new(sse);
    // Still delivering before the deadline.
    common::wait_for_subscribers(&server, "priv:e", 2).await;
    server.publish("priv:e", "before").await;
    let event = reader.next_event(STEP).await.unwrap();
    assert!(event.data.contains("before"), "{event:?}");
    let event = reader.next_event(STEP).await.unwrap();
    assert_eq!(event.event.as_deref(), Some("disconnect"));
    let notice: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(
        notice,
        json!({"type": "disconnect", "reason": "token expired", "reconnect": true})
    );
    assert!(reader.next_block(STEP).await.is_none(), "the stream ended");
    let page = tokio::time::timeout(STEP, iframe.text())
        .await
        .unwrap()
        .unwrap();
    assert!(
        page.contains(
            r#"parent.cb({"reason":"token expired","reconnect":true,"type":"disconnect"})"#
        ),
        "{page}"
    );
    common::wait_for_subscribers(&server, "priv:e", 0).await;
    assert!(server.server.app().access.expiry.is_empty());
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

async fn connect(server: &TestServer, path: &str) -> Ws {
    let (ws, response) = tokio::time::timeout(STEP, connect_async(server.ws_url(path).as_str()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 101);
    ws
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// Reads until the server closes; returns the close code and reason.
async fn next_close(ws: &mut Ws) -> (u16, String) {
    tokio::time::timeout(STEP, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_owned())
                }
                Some(Ok(Message::Text(text))) => panic!("unexpected frame {text}"),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame in time")
}

#[tokio::test]
async fn websocket_handshake_checks_the_token_before_upgrading() {
    let server = start().await;
    for (path, status) in [
        ("/listen?cid=priv:w".to_string(), 401),
        (format!("/listen?cid=priv:w&token={}", token("u", &[])), 403),
        ("/listen?cid=plain&token=bad".to_string(), 401),
    ] {
        match connect_async(server.ws_url(&path).as_str()).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), status, "{path}");
            }
            other => panic!("{path}: expected HTTP {status}, got {other:?}"),
        }
    }
    let t = token("u", &["priv:w"]);
    let mut ws = connect(&server, &format!("/listen?cid=priv:w&token={t}")).await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
    server.publish("priv:w", "hi").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "hi");
}

#[tokio::test]
async fn websocket_auth_command_then_subscribe() {
    let server = start().await;
    // No channel in the URL: allowed for WebSocket only.
    let mut ws = connect(&server, "/listen").await;
    send(
        &mut ws,
        json!({"type": "subscribe", "cid": "priv:c", "ref": "a"}),
    )
    .await;
    let reply = ws_next_json(&mut ws, STEP).await;
    assert_eq!(
        (reply["type"].as_str(), reply["ref"].as_str()),
        (Some("error"), Some("a"))
    );
    assert!(
        reply["error"].as_str().unwrap().contains("private"),
        "{reply}"
    );
    let t = sign(
        Algorithm::ES256,
        &json!({"sub": "user-7", "exp": now_secs() + 600, "channels": ["priv:c"], "extra": 1}),
    );
    send(&mut ws, json!({"type": "auth", "token": t, "ref": 2})).await;
    let authed = ws_next_json(&mut ws, STEP).await;
    assert_eq!(
        authed,
        json!({"type": "authed", "sub": "user-7", "exp": now_secs_of(&t), "ref": 2})
    );
    send(&mut ws, json!({"type": "auth", "token": t})).await;
    assert_eq!(
        ws_next_json(&mut ws, STEP).await["type"],
        "error",
        "auth twice"
    );
    send(&mut ws, json!({"type": "subscribe", "cid": "priv:d"})).await;
    let reply = ws_next_json(&mut ws, STEP).await;
    assert!(
        reply["error"].as_str().unwrap().contains("does not allow"),
        "{reply}"
    );
    send(&mut ws, json!({"type": "subscribe", "cid": "priv:c"})).await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
    send(&mut ws, json!({"type": "subscribe", "cid": "y:1"})).await;
    let reply = ws_next_json(&mut ws, STEP).await;
    assert_eq!(reply["error"], "unknown namespace \"y\" in channel \"y:1\"");
    server.publish("priv:c", "in").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "in");
}

fn now_secs_of(token: &str) -> u64 {
    let claims = token.split('.').nth(1).unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    serde_json::from_slice::<Value>(&claims).unwrap()["exp"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn websocket_auth_with_a_bad_token_closes_4001() {
    let server = start().await;
    let expired = sign(
        Algorithm::HS256,
        &json!({"sub": "u", "exp": now_secs() - 3600}),
    );
    for (t, reason) in [
        ("garbage", "invalid token"),
        (expired.as_str(), "token expired"),
    ] {
        let mut ws = connect(&server, "/listen?cid=plain").await;
        assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
        send(&mut ws, json!({"type": "auth", "token": t})).await;
        assert_eq!(next_close(&mut ws).await, (4001, reason.to_string()));
    }
    server.assert_healthy().await;
}

#[tokio::test]
async fn websocket_ends_with_4002_when_its_token_expires() {
    let server = start().await;
    let t = expiring_token("u", &["priv:*"], 2);
    let mut ws = connect(&server, &format!("/listen?cid=priv:x&token={t}")).await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
    server.publish("priv:x", "before").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "before");
    assert_eq!(
        next_close(&mut ws).await,
        (4002, "token expired".to_string())
    );
    common::wait_for_subscribers(&server, "priv:x", 0).await;
}

#[tokio::test]
async fn websocket_refresh_extends_and_replaces_rights() {
    let server = start().await;
    let t = expiring_token("u", &["priv:a", "priv:b"], 2);
    let mut ws = connect(
        &server,
        &format!("/listen?cid=priv:a&cid=priv:b&cid=pub:c&token={t}"),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
    }
    // Refresh errors leave the connection and its rights as they were.
    let stranger = token("someone-else", &["*"]);
    send(
        &mut ws,
        json!({"type": "refresh", "token": stranger, "ref": 1}),
    )
    .await;
    let reply = ws_next_json(&mut ws, STEP).await;
    assert_eq!(
        (reply["type"].as_str(), reply["ref"].as_i64()),
        (Some("error"), Some(1))
    );
    send(&mut ws, json!({"type": "refresh", "token": "bad"})).await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "error");
    // A newer token that no longer covers priv:b.
    let newer = token("u", &["priv:a"]);
    send(
        &mut ws,
        json!({"type": "refresh", "token": newer, "ref": 2}),
    )
    .await;
    let refreshed = ws_next_json(&mut ws, STEP).await;
    assert_eq!(
        refreshed,
        json!({"type": "refreshed", "exp": now_secs_of(&newer), "ref": 2})
    );
    let unsubscribed = ws_next_json(&mut ws, STEP).await;
    assert_eq!(
        unsubscribed,
        json!({"type": "unsubscribed", "cid": "priv:b", "reason": "not allowed by the refreshed token"})
    );
    assert_eq!(server.publish("priv:b", "gone").await["subscribers"], 0);
    // Past the first token's deadline the connection still lives and delivers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "pong");
    server.publish("priv:a", "still here").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "still here");
    server.publish("pub:c", "public").await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["data"], "public");
}

#[tokio::test]
async fn refresh_needs_a_token_to_replace() {
    let server = start().await;
    let mut ws = connect(&server, "/listen").await;
    send(
        &mut ws,
        json!({"type": "refresh", "token": token("u", &[])}),
    )
    .await;
    let reply = ws_next_json(&mut ws, STEP).await;
    assert!(
        reply["error"].as_str().unwrap().contains("auth first"),
        "{reply}"
    );
}

#[tokio::test]
async fn client_publish_follows_namespace_and_token_rights() {
    let server = start_adjusted(|c| {
        c.namespaces.insert(
            "talk".into(),
            NamespaceOptions {
                client_publish: Some(true),
                ..NamespaceOptions::default()
            },
        );
    })
    .await;
    let t = sign(
        Algorithm::HS256,
        &json!({"sub": "u", "exp": now_secs() + 600, "publish": ["priv:out"]}),
    );
    let mut ws = connect(&server, &format!("/listen?token={t}")).await;
    for (cid, allowed) in [
        ("talk:1", true),   // the namespace allows client publishing
        ("plain", false),   // the default namespace does not
        ("priv:out", true), // the token's publish claim allows it
        ("priv:other", false),
        ("zz:1", false), // unknown namespace
    ] {
        send(
            &mut ws,
            json!({"type": "publish", "cid": cid, "data": {"n": 1}}),
        )
        .await;
        let reply = ws_next_json(&mut ws, STEP).await;
        let expected = if allowed { "published" } else { "error" };
        assert_eq!(reply["type"], expected, "{cid}: {reply}");
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher keys
// ---------------------------------------------------------------------------------------------

async fn publish_with(server: &TestServer, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = server.client.post(server.url("/publish?cid=k")).body("b");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn publisher_keys_header_alternative_and_loopback_switch() {
    let server = common::start_with(|c| {
        c.publish_keys = vec!["old-key".into(), "new-key".into()];
        c.publish_from_loopback = false;
    })
    .await;
    let error = expect_error(publish_with(&server, &[]).await, 403).await;
    assert!(error.contains("X-Herald-Key"), "{error}");
    for headers in [
        vec![("authorization", "Bearer old-key")],
        vec![("authorization", "Bearer new-key")],
        vec![("x-herald-key", "new-key")],
    ] {
        assert_eq!(
            publish_with(&server, &headers).await.status(),
            200,
            "{headers:?}"
        );
    }
    for headers in [
        vec![("authorization", "Bearer wrong")],
        vec![("x-herald-key", "wrong")],
        vec![
            ("x-herald-key", "new-key"),
            ("authorization", "Bearer wrong"),
        ],
        vec![("authorization", "Basic b2xkLWtleQ==")],
    ] {
        let error = expect_error(publish_with(&server, &headers).await, 401).await;
        assert!(!error.contains("wrong"), "the key is not echoed: {error}");
    }
    // The default lets loopback publish without a key.
    let open = common::start().await;
    assert_eq!(publish_with(&open, &[]).await.status(), 200);
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime is single-threaded, so the server's tasks log through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = start_adjusted(|c| c.publish_keys = vec!["PUBLISH-KEY-SECRET".into()]).await;
    tracing::debug!(config = ?server.server.app().config, "configuration");
    publish_with(&server, &[("x-herald-key", "PUBLISH-KEY-SECRET")]).await;
    publish_with(&server, &[("authorization", "Bearer WRONG-KEY-SECRET")]).await;
    let t = token("u", &["priv:*"]);
    get(&server, &format!("/messages?cid=priv:l&token={t}")).await;
    get(&server, "/messages?cid=priv:l&token=BAD-TOKEN-SECRET").await;
    let mut ws = connect(&server, "/listen").await;
    send(
        &mut ws,
        json!({"type": "auth", "token": "BAD-TOKEN-SECRET"}),
    )
    .await;
    next_close(&mut ws).await;
    let logged = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("configuration"), "logs were captured");
    // The server's own events reached the capture too, not only this test's: its start and
    // the refusals of the wrong key and the bad token.
    assert!(logged.contains("herald listening"), "{logged}");
    assert!(logged.contains("request refused"), "{logged}");
    for secret in [
        "PUBLISH-KEY-SECRET",
        "WRONG-KEY-SECRET",
        "BAD-TOKEN-SECRET",
        SECRET,
        t.as_str(),
    ] {
        assert!(!logged.contains(secret), "{secret} in the logs:\n{logged}");
    }
}

#[tokio::test]
async fn a_bad_key_file_stops_the_server_from_starting() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        // An RSA key where an EC key belongs.
        jwt_ec_public_key: Some(fixture("jwt_rsa_public.pem")),
        ..Config::default()
    };
    let error = herald_server::RunningServer::start(config)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("jwt_rsa_public.pem"), "{error}");
    assert!(error.is_configuration(), "{error:?}");
}

#[tokio::test]
async fn streams_leave_the_expiry_schedule_when_they_end_and_tokenless_ones_never_join() {
    let server = start().await;
    let schedule = &server.server.app().access.expiry;
    let t = token("u", &["priv:*"]);
    let open = |query: String| {
        server
            .client
            .get(server.url(&format!("/listen?{query}")))
            .header("accept", "text/event-stream")
            .send()
    };
    let plain = open("cid=plain".into()).await.unwrap();
    let with_token = open(format!("cid=priv:q&token={t}")).await.unwrap();
    let mut ws = connect(&server, &format!("/listen?cid=pub:q&token={t}")).await;
    assert_eq!(ws_next_json(&mut ws, STEP).await["type"], "subscribed");
    // A long poll with a token is checked per request, not scheduled.
    let longpoll = tokio::spawn({
        let request = server
            .client
            .get(server.url(&format!("/listen?cid=priv:lp&token={t}")));
        async move { request.send().await }
    });
    common::wait_for_subscribers(&server, "priv:lp", 1).await;
    assert_eq!(
        schedule.len(),
        2,
        "the SSE stream and the WebSocket with a token"
    );
    drop((plain, with_token));
    ws.close(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !schedule.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("entries removed when their connections end");
    server.publish("priv:lp", "done").await;
    assert_eq!(longpoll.await.unwrap().unwrap().status(), 200);
}
