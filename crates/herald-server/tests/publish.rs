//! `POST /publish` against a real server: how bodies become `data`, how ids are assigned (also
//! under concurrent publishers), the answer's shape and subscriber count, and every way a
//! publish can be refused — each refusal a JSON error, after which the server still serves.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_error, history, now_ms, wait_for_subscribers, SseReader, TestServer};

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// `POST /publish?{query}` with `body` and an optional content type.
async fn post(
    server: &TestServer,
    query: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = server
        .client
        .post(server.url(&format!("/publish?{query}")))
        .body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    request.send().await.unwrap()
}

/// The raw body of the history poll, to check the exact bytes of `data`.
async fn history_text(server: &TestServer, cid: &str) -> String {
    server
        .client
        .get(server.url(&format!("/messages?cid={cid}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// After a refused request the server still publishes and answers health checks.
async fn assert_still_serving(server: &TestServer) {
    server.assert_healthy().await;
    let published = server.publish("after-error", "ok").await;
    assert!(published["id"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn text_body_is_delivered_as_a_json_string() {
    let server = common::start().await;
    let text = "hello \"world\"\nsecond line\t€ 🎉 {not json}";
    let response = post(&server, "cid=t", Some("text/plain; charset=utf-8"), text).await;
    assert_eq!(response.status(), 200);
    // No content type at all is text as well.
    let response = post(&server, "cid=t", None, "[1, 2]").await;
    assert_eq!(response.status(), 200);
    let messages = history(&server, "t").await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["data"], json!(text));
    assert_eq!(messages[1]["data"], json!("[1, 2]"), "text stays a string");
    // The envelope stays on one line: the newline is escaped inside the string.
    let raw = history_text(&server, "t").await;
    assert!(!raw.contains('\n'), "{raw}");
}

#[tokio::test]
async fn json_body_is_delivered_as_the_json_value_compacted() {
    let server = common::start().await;
    let body =
        "{ \"a\" : [ 1,\n 2 , {\"b\" : \"x  y\\n\"} ],\r\n\t\"c\": null ,\"d\":\"\\\"q\\\" \"}";
    let response = post(&server, "cid=j", Some("application/json"), body).await;
    assert_eq!(response.status(), 200);
    for scalar in ["42", "\"s\"", " true ", "null", "[]"] {
        let response = post(&server, "cid=j", Some("application/json"), scalar).await;
        assert_eq!(response.status(), 200, "{scalar}");
    }
    let messages = history(&server, "j").await;
    let expected: Value = serde_json::from_str(body).unwrap();
    assert_eq!(messages[0]["data"], expected);
    let data: Vec<Value> = messages[1..].iter().map(|m| m["data"].clone()).collect();
    assert_eq!(
        data,
        [json!(42), json!("s"), json!(true), Value::Null, json!([])]
    );
    // Insignificant whitespace is gone; whitespace inside strings is kept.
    let raw = history_text(&server, "j").await;
    assert!(
        raw.contains(r#""data":{"a":[1,2,{"b":"x  y\n"}],"c":null,"d":"\"q\" "}"#),
        "{raw}"
    );
    assert!(raw.contains(r#""data":true,"#), "{raw}");
}

#[tokio::test]
async fn plus_json_media_types_and_parameters_are_json() {
    let server = common::start().await;
    for ct in [
        "application/vnd.api+json",
        "application/ld+json; charset=utf-8",
        "Application/JSON; charset=UTF-8",
    ] {
        let response = post(&server, "cid=pj", Some(ct), "{\"k\": [true]}").await;
        assert_eq!(response.status(), 200, "{ct}");
        // Treated as JSON: invalid JSON is refused.
        let response = post(&server, "cid=pj", Some(ct), "{\"k\": ").await;
        expect_error(response, 400).await;
    }
    let messages = history(&server, "pj").await;
    assert_eq!(messages.len(), 3);
    for m in &messages {
        assert_eq!(m["data"], json!({"k": [true]}));
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn answer_has_the_documented_shape() {
    // `shape:1` is in namespace `shape`, which must be configured.
    let server = common::start_with(|c| {
        c.namespaces.insert("shape".into(), Default::default());
    })
    .await;
    let before = now_ms();
    let response = post(&server, "cid=shape:1", None, "x").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    let after = now_ms();
    let object = body.as_object().unwrap();
    assert_eq!(object.keys().collect::<Vec<_>>(), ["published"]);
    let published = body["published"].as_array().unwrap();
    assert_eq!(published.len(), 1);
    let entry = published[0].as_object().unwrap();
    let keys: BTreeSet<&str> = entry.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["cid", "id", "epoch", "time", "subscribers"])
    );
    assert_eq!(entry["cid"], "shape:1");
    assert_eq!(entry["id"], 1);
    assert_eq!(entry["subscribers"], 0);
    let epoch = entry["epoch"].as_str().unwrap();
    assert!(
        !epoch.is_empty()
            && epoch
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "{epoch}"
    );
    let time = entry["time"].as_u64().unwrap();
    assert!(
        before <= time && time <= after,
        "{before} <= {time} <= {after}"
    );
    // The answer agrees with the envelope delivered to readers.
    let messages = history(&server, "shape:1").await;
    assert_eq!(messages[0]["epoch"], entry["epoch"]);
    assert_eq!(messages[0]["time"], entry["time"]);
    assert_eq!(messages[0]["id"], 1);
}

#[tokio::test]
async fn several_cids_number_their_messages_independently() {
    let server = common::start().await;
    let publish_many = |query: &'static str| {
        let server = &server;
        async move {
            let response = post(server, query, None, "m").await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["published"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["cid"].as_str().unwrap().to_string(),
                        p["id"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let first = publish_many("cid=a&cid=b").await;
    assert_eq!(first, [("a".into(), 1), ("b".into(), 1)]);
    let only_b = publish_many("cid=b").await;
    assert_eq!(only_b, [("b".into(), 2)]);
    let third = publish_many("cid=c&cid=a&cid=b").await;
    assert_eq!(third, [("c".into(), 1), ("a".into(), 2), ("b".into(), 3)]);
    let ids = |messages: Vec<Value>| -> Vec<u64> {
        messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
    };
    assert_eq!(ids(history(&server, "a").await), [1, 2]);
    assert_eq!(ids(history(&server, "b").await), [1, 2, 3]);
    assert_eq!(ids(history(&server, "c").await), [1]);
    // The same body went to every channel.
    assert!(history(&server, "c").await[0]["data"] == "m");
}

#[tokio::test]
async fn ids_start_at_one_and_grow_by_exactly_one() {
    let server = common::start().await;
    let mut epoch = None;
    for expected in 1..=30u64 {
        let published = server.publish("seq", &format!("n{expected}")).await;
        assert_eq!(published["id"], expected);
        let e = published["epoch"].as_str().unwrap().to_string();
        assert_eq!(
            *epoch.get_or_insert_with(|| e.clone()),
            e,
            "epoch is stable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_unique_gap_free_ids() {
    let server = common::start_with(|c| c.history_size = 1000).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..20 {
        let client = client.clone();
        let url = server.url("/publish?cid=race");
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..50 {
                let body = format!("t{task}-{i}");
                let response = client.post(&url).body(body.clone()).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let value: Value = response.json().await.unwrap();
                let published = &value["published"][0];
                got.push((
                    published["id"].as_u64().unwrap(),
                    published["epoch"].as_str().unwrap().to_string(),
                    body,
                ));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        // Each publisher sees its own ids increase.
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        all.extend(got);
    }
    all.sort();
    let ids: Vec<u64> = all.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    assert!(all.iter().all(|(_, e, _)| *e == all[0].1), "one epoch");
    // History holds each message once, in id order, under the id its publisher was given.
    let messages = history(&server, "race").await;
    assert_eq!(messages.len(), 1000);
    for (message, (id, _, body)) in messages.iter().zip(&all) {
        assert_eq!(message["id"], *id);
        assert_eq!(message["data"], json!(body));
    }
}

#[tokio::test]
async fn trailing_slash_publishes() {
    let server = common::start().await;
    let response = server
        .client
        .post(server.url("/publish/?cid=slash"))
        .body("s")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["published"][0]["id"], 1);
    assert_eq!(history(&server, "slash").await[0]["data"], "s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_counts_waiting_long_polls_and_sse_streams() {
    let server = common::start().await;
    assert_eq!(server.publish("subs", "nobody").await["subscribers"], 0);

    let poll_client = server.client.clone();
    let poll_url = server.url("/listen?cid=subs");
    let poll = tokio::spawn(async move {
        let response = poll_client.get(poll_url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Vec<Value>>().await.unwrap()
    });
    wait_for_subscribers(&server, "subs", 1).await;
    let sse = server
        .client
        .get(server.url("/listen?cid=subs"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(sse);
    sse.next_block(T).await.unwrap(); // the prelude: subscribed
    wait_for_subscribers(&server, "subs", 2).await;

    let published = server.publish("subs", "both").await;
    assert_eq!(published["subscribers"], 2);
    let answered = poll.await.unwrap();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0]["data"], "both");
    let event = sse.next_event(T).await.unwrap();
    assert!(event.data.contains("\"both\""), "{event:?}");

    // The long poll has answered; the stream remains.
    wait_for_subscribers(&server, "subs", 1).await;
    assert_eq!(server.publish("subs", "sse only").await["subscribers"], 1);
    drop(sse);
    wait_for_subscribers(&server, "subs", 0).await;
    assert_eq!(server.publish("subs", "gone").await["subscribers"], 0);
}

#[tokio::test]
async fn missing_cid_is_refused() {
    let server = common::start().await;
    for query in ["", "cid=", "foo=bar", "CID=x"] {
        let response = post(&server, query, None, "x").await;
        let error = expect_error(response, 400).await;
        assert!(error.contains("cid"), "{query}: {error}");
    }
    let response = server
        .client
        .post(server.url("/publish"))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(response, 400).await;
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn invalid_cid_characters_are_refused() {
    // The whole alphabet, `:` included, is checked below: configure that namespace.
    let server = common::start_with(|c| {
        c.namespaces.insert("AZaz09_-.".into(), Default::default());
    })
    .await;
    for (encoded, what) in [
        ("a%20b", "space"),
        ("a+b", "space (form encoding)"),
        ("a%2Cb", "comma"),
        ("a,b", "raw comma"),
        ("%3Cscript%3E", "<"),
        ("caf%C3%A9", "non-ASCII"),
        ("%E2%80%A8", "U+2028"),
        ("a%2Fb", "slash"),
        ("a%00b", "NUL"),
    ] {
        let response = post(&server, &format!("cid={encoded}"), None, "x").await;
        let error = expect_error(response, 400).await;
        assert!(error.contains("invalid cid"), "{what}: {error}");
    }
    // None of the refused names became a channel.
    let health: Value = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["channels"], 0, "{health}");
    // The whole allowed alphabet is accepted.
    let published = server.publish("AZaz09_-.:@=", "ok").await;
    assert_eq!(published["cid"], "AZaz09_-.:@=");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn cid_length_limit_is_255_bytes() {
    let server = common::start().await;
    let ok = "c".repeat(255);
    let response = post(&server, &format!("cid={ok}"), None, "x").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["published"][0]["cid"], ok.as_str());
    let long = "c".repeat(256);
    let response = post(&server, &format!("cid={long}"), None, "x").await;
    let error = expect_error(response, 400).await;
    assert!(error.contains("invalid cid"), "{error}");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn duplicate_cid_is_refused_and_nothing_is_published() {
    let server = common::start().await;
    let response = post(&server, "cid=d1&cid=d2&cid=d1", None, "x").await;
    let error = expect_error(response, 400).await;
    assert!(error.contains("duplicate"), "{error}");
    assert!(history(&server, "d1").await.is_empty());
    assert!(history(&server, "d2").await.is_empty());
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn too_many_cids_are_refused() {
    let server = common::start_with(|c| c.max_channels_per_connection = 3).await;
    let response = post(&server, "cid=m1&cid=m2&cid=m3", None, "x").await;
    assert_eq!(response.status(), 200, "exactly the limit is fine");
    let response = post(&server, "cid=m1&cid=m2&cid=m3&cid=m4", None, "y").await;
    let error = expect_error(response, 400).await;
    assert!(error.contains("too many"), "{error}");
    assert_eq!(
        history(&server, "m1").await.len(),
        1,
        "refused body not published"
    );
    assert!(history(&server, "m4").await.is_empty());
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn invalid_json_is_refused() {
    let server = common::start().await;
    for body in [
        "{",
        "",
        "{\"a\":1} {\"b\":2}",
        "[1,]",
        "'single'",
        "{\"a\":1}x",
        "NaN",
    ] {
        let response = post(&server, "cid=bad-json", Some("application/json"), body).await;
        let error = expect_error(response, 400).await;
        assert!(error.to_lowercase().contains("json"), "{body:?}: {error}");
    }
    assert!(history(&server, "bad-json").await.is_empty());
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn non_utf8_bodies_are_refused() {
    let server = common::start().await;
    let latin1: Vec<u8> = b"caf\xe9".to_vec();
    let response = post(&server, "cid=bytes", Some("text/plain"), latin1.clone()).await;
    let error = expect_error(response, 400).await;
    assert!(error.contains("UTF-8"), "{error}");
    let response = post(&server, "cid=bytes", None, vec![0xff, 0xfe, 0x00]).await;
    expect_error(response, 400).await;
    let response = post(
        &server,
        "cid=bytes",
        Some("application/json"),
        b"\"\xc3\"".to_vec(),
    )
    .await;
    expect_error(response, 400).await;
    assert!(history(&server, "bytes").await.is_empty());
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn body_over_max_body_is_413_with_content_length() {
    let server = common::start_with(|c| c.max_body = 1024).await;
    let response = post(&server, "cid=big", None, "a".repeat(1024)).await;
    assert_eq!(response.status(), 200, "exactly max-body is accepted");
    let response = post(&server, "cid=big", None, "a".repeat(1025)).await;
    let error = expect_error(response, 413).await;
    assert!(error.contains("1024"), "{error}");
    let response = post(&server, "cid=big", None, "b".repeat(200_000)).await;
    // Refused on its declared length, the body is left unread: the connection closes, and
    // the answer says so, or the client may send its next request on it.
    assert_eq!(response.headers()["connection"], "close");
    expect_error(response, 413).await;
    assert_eq!(history(&server, "big").await.len(), 1);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn body_over_max_body_is_413_when_chunked() {
    let server = common::start_with(|c| c.max_body = 1024).await;
    let chunked = |sizes: Vec<usize>| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            sizes.into_iter().map(|n| Ok(vec![b'z'; n])).collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    let response = post(&server, "cid=chunks", None, chunked(vec![500, 524])).await;
    assert_eq!(response.status(), 200, "1024 bytes in chunks are accepted");
    let response = post(&server, "cid=chunks", None, chunked(vec![600, 600])).await;
    expect_error(response, 413).await;
    let response = post(&server, "cid=chunks", None, chunked(vec![4096; 8])).await;
    expect_error(response, 413).await;
    let messages = history(&server, "chunks").await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["data"].as_str().unwrap().len(), 1024);
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let server = common::start().await;
    let response = server
        .client
        .get(server.url("/publish?cid=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    expect_error(response, 405).await;
    let response = server
        .client
        .put(server.url("/listen?cid=x"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, OPTIONS");
    expect_error(response, 405).await;
    let response = server
        .client
        .delete(server.url("/messages?cid=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, OPTIONS");
    expect_error(response, 405).await;
    assert!(
        history(&server, "x").await.is_empty(),
        "GET did not publish"
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let server = common::start().await;
    for path in [
        "/nope",
        "/publishx?cid=a",
        "/publish/extra?cid=a",
        "/health/x",
    ] {
        let response = server.client.post(server.url(path)).send().await.unwrap();
        expect_error(response, 404).await;
        let response = server.client.get(server.url(path)).send().await.unwrap();
        expect_error(response, 404).await;
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_wrong_key_is_401_even_from_loopback() {
    let server = common::start().await;
    for auth in ["Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer "] {
        let response = server
            .client
            .post(server.url("/publish?cid=auth"))
            .header("authorization", auth)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{auth}");
        expect_error(response, 401).await;
    }
    assert!(history(&server, "auth").await.is_empty());
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn configured_publish_keys_are_accepted() {
    let server = common::start_with(|c| {
        c.publish_keys = vec!["old-key".into(), "s3cret-key".into()];
    })
    .await;
    for (auth, status) in [
        ("Bearer s3cret-key", 200),
        ("Bearer old-key", 200),
        ("Bearer s3cret-ke", 401),
        ("Bearer s3cret-key2", 401),
        ("Bearer S3CRET-KEY", 401),
    ] {
        let response = server
            .client
            .post(server.url("/publish?cid=keyed"))
            .header("authorization", auth)
            .body(auth)
            .send()
            .await
            .unwrap();
        if status == 200 {
            assert_eq!(response.status(), 200, "{auth}");
        } else {
            expect_error(response, status).await;
        }
    }
    let data: Vec<Value> = history(&server, "keyed")
        .await
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, [json!("Bearer s3cret-key"), json!("Bearer old-key")]);
    // Loopback still publishes without a key.
    assert_eq!(server.publish("keyed", "no key").await["id"], 3);
}

#[tokio::test]
async fn the_server_channel_limit_is_503() {
    let server = common::start_with(|c| c.max_channels = 2).await;
    assert_eq!(server.publish("one", "x").await["id"], 1);
    assert_eq!(server.publish("two", "x").await["id"], 1);
    let response = post(&server, "cid=three", None, "x").await;
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, 503).await;
    // Existing channels keep working.
    assert_eq!(server.publish("one", "y").await["id"], 2);
    server.assert_healthy().await;
}

#[tokio::test]
async fn a_refusal_that_leaves_a_body_unread_says_the_connection_closes() {
    let server = common::start().await;
    // Refused before the body is read (no channel; no such path): hyper closes the connection
    // rather than read 200 KB nobody wants, and the answer must say so, or the client sends
    // its next request into the closing socket. Several times over, as the race is a timing.
    for _ in 0..10 {
        let response = post(&server, "", None, "b".repeat(200_000)).await;
        assert_eq!(response.headers()["connection"], "close");
        expect_error(response, 400).await;
        let response = server
            .client
            .post(server.url("/no-such-path"))
            .body("b".repeat(200_000))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["connection"], "close");
        expect_error(response, 404).await;
        assert_eq!(history(&server, "unrelated").await.len(), 0);
    }
    assert_still_serving(&server).await;
}
