//! Short polling (`GET /messages`) and long polling (`GET /listen` without a streaming
//! transport) against a real server: envelopes, cursors, paging, gaps, multi-channel requests,
//! waiting and timing out, exact resumption under a live publisher, and many waiters at once.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_error, now_ms, other_epoch, publish_n, wait_for_subscribers, TestServer};

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

const T: Duration = Duration::from_secs(5);

/// One poll answer: status, body, cursor and gap headers.
#[derive(Debug)]
struct Answer {
    status: u16,
    messages: Vec<Value>,
    cursor: Option<String>,
    gap: Option<Vec<Value>>,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let cursor = header("x-herald-cursor");
        let gap = header("x-herald-gap").map(|g| serde_json::from_str(&g).unwrap());
        let content_type = header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let messages = response.json().await.unwrap();
        Self {
            status,
            messages,
            cursor,
            gap,
        }
    }

    fn ids(&self) -> Vec<u64> {
        ids(&self.messages)
    }

    fn cursor(&self) -> &str {
        self.cursor.as_deref().expect("X-Herald-Cursor header")
    }
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

async fn get(server: &TestServer, path_and_query: &str) -> reqwest::Response {
    server
        .client
        .get(server.url(path_and_query))
        .send()
        .await
        .unwrap()
}

async fn poll(server: &TestServer, path_and_query: &str) -> Answer {
    let answer = Answer::read(get(server, path_and_query).await).await;
    assert_eq!(answer.status, 200, "{path_and_query}: {answer:?}");
    answer
}

/// Starts a long poll in the background.
fn spawn_long_poll(
    server: &TestServer,
    path_and_query: &str,
) -> tokio::task::JoinHandle<(Answer, Instant)> {
    let client = server.client.clone();
    let url = server.url(path_and_query);
    tokio::spawn(async move {
        let response = client.get(url).send().await.unwrap();
        let answer = Answer::read(response).await;
        (answer, Instant::now())
    })
}

/// Asserts a background request is still waiting after a short while.
async fn assert_still_waiting<T>(task: &tokio::task::JoinHandle<T>) {
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !task.is_finished(),
        "answered before anything was published"
    );
}

// ---------------------------------------------------------------- short polling

#[tokio::test]
async fn short_poll_returns_envelopes_after_since_oldest_first() {
    let server = common::start().await;
    let before = now_ms();
    let epoch = publish_n(&server, "room", 5).await;
    let after = now_ms();
    let answer = poll(&server, "/messages?cid=room&since=2").await;
    assert_eq!(answer.ids(), [3, 4, 5]);
    assert!(answer.gap.is_none());
    assert_eq!(answer.cursor(), format!("{epoch}:5"));
    for (m, i) in answer.messages.iter().zip(3..) {
        let keys: BTreeSet<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["cid", "id", "epoch", "data", "time"]));
        assert_eq!(m["cid"], "room");
        assert_eq!(m["epoch"], epoch.as_str());
        assert_eq!(m["data"], format!("m{i}"));
        let time = m["time"].as_u64().unwrap();
        assert!(before <= time && time <= after, "{before} {time} {after}");
    }
    // At the head: nothing, and the cursor stays.
    let answer = poll(&server, "/messages?cid=room&since=5").await;
    assert!(answer.messages.is_empty());
    assert_eq!(answer.cursor(), format!("{epoch}:5"));
    assert!(answer.gap.is_none());
}

#[tokio::test]
async fn short_poll_accepts_epoch_and_id_cursors() {
    let server = common::start().await;
    let epoch = publish_n(&server, "ep", 4).await;
    let answer = poll(&server, &format!("/messages?cid=ep&since={epoch}:1")).await;
    assert_eq!(answer.ids(), [2, 3, 4]);
    assert!(answer.gap.is_none());
    let answer = poll(&server, &format!("/messages?cid=ep&since={epoch}:0")).await;
    assert_eq!(answer.ids(), [1, 2, 3, 4]);
    assert!(answer.gap.is_none());
    let answer = poll(&server, "/messages/?cid=ep&since=0").await;
    assert_eq!(answer.ids(), [1, 2, 3, 4], "trailing slash");
}

#[tokio::test]
async fn short_poll_without_since_returns_the_whole_history_without_gap() {
    let server = common::start_with(|c| c.history_size = 5).await;
    let epoch = publish_n(&server, "all", 3).await;
    let answer = poll(&server, "/messages?cid=all").await;
    assert_eq!(answer.ids(), [1, 2, 3]);
    assert!(answer.gap.is_none());
    assert_eq!(answer.cursor(), format!("{epoch}:3"));
    // Once history has dropped the oldest, "everything" is what is retained — still no gap.
    publish_n(&server, "all", 5).await;
    let answer = poll(&server, "/messages?cid=all").await;
    assert_eq!(answer.ids(), [4, 5, 6, 7, 8]);
    assert!(answer.gap.is_none(), "{:?}", answer.gap);
    // A channel nobody used yet: an empty array and a usable cursor.
    let answer = poll(&server, "/messages?cid=fresh").await;
    assert!(answer.messages.is_empty());
    assert!(answer.cursor().ends_with(":0"), "{}", answer.cursor());
}

#[tokio::test]
async fn cursor_header_is_the_next_since() {
    let server = common::start().await;
    publish_n(&server, "next", 3).await;
    let first = poll(&server, "/messages?cid=next&since=0").await;
    assert_eq!(first.ids(), [1, 2, 3]);
    let empty = poll(
        &server,
        &format!("/messages?cid=next&since={}", first.cursor()),
    )
    .await;
    assert!(empty.messages.is_empty());
    assert!(empty.gap.is_none());
    server.publish("next", "m4").await;
    server.publish("next", "m5").await;
    let second = poll(
        &server,
        &format!("/messages?cid=next&since={}", empty.cursor()),
    )
    .await;
    assert_eq!(second.ids(), [4, 5]);
    assert!(second.gap.is_none());
}

#[tokio::test]
async fn limit_caps_the_answer_and_paging_yields_every_message_once() {
    let server = common::start_with(|c| c.history_size = 1000).await;
    publish_n(&server, "page", 23).await;
    let answer = poll(&server, "/messages?cid=page&since=0&limit=1").await;
    assert_eq!(answer.ids(), [1]);
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let answer = poll(
            &server,
            &format!("/messages?cid=page&since={cursor}&limit=5"),
        )
        .await;
        assert!(answer.gap.is_none());
        assert!(answer.messages.len() <= 5);
        cursor = answer.cursor().to_string();
        if answer.messages.is_empty() {
            break;
        }
        pages += 1;
        seen.extend(answer.ids());
    }
    assert_eq!(seen, (1..=23).collect::<Vec<_>>());
    assert_eq!(pages, 5);
    // The default limit is 100; 1000 is the largest allowed.
    publish_n(&server, "page", 200).await;
    let answer = poll(&server, "/messages?cid=page&since=0").await;
    assert_eq!(answer.ids(), (1..=100).collect::<Vec<_>>());
    let answer = poll(&server, "/messages?cid=page&since=0&limit=1000").await;
    assert_eq!(answer.ids(), (1..=223).collect::<Vec<_>>());
}

#[tokio::test]
async fn short_poll_reports_a_gap_when_history_has_moved_on() {
    let server = common::start_with(|c| c.history_size = 5).await;
    let epoch = publish_n(&server, "g", 10).await;
    let answer = poll(&server, "/messages?cid=g&since=2").await;
    assert_eq!(answer.ids(), [6, 7, 8, 9, 10]);
    let gaps = answer.gap.clone().expect("X-Herald-Gap header");
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0]["type"], "gap");
    assert_eq!(gaps[0]["cid"], "g");
    assert_eq!(gaps[0]["epoch"], epoch.as_str());
    assert_eq!(gaps[0]["first"], 6);
    assert_eq!(gaps[0]["requested"], "2");
    assert_eq!(answer.cursor(), format!("{epoch}:10"));
    // Exactly at the edge of history (5 is the last lost one) is not a gap.
    let answer = poll(&server, "/messages?cid=g&since=5").await;
    assert_eq!(answer.ids(), [6, 7, 8, 9, 10]);
    assert!(answer.gap.is_none());
    let answer = poll(&server, "/messages?cid=g&since=4").await;
    assert!(answer.gap.is_some());
}

#[tokio::test]
async fn short_poll_gap_with_a_limit_then_continues_without_one() {
    let server = common::start_with(|c| c.history_size = 5).await;
    let epoch = publish_n(&server, "gl", 10).await;
    let answer = poll(&server, "/messages?cid=gl&since=2&limit=2").await;
    assert_eq!(answer.ids(), [6, 7]);
    assert_eq!(answer.gap.as_ref().expect("gap")[0]["first"], 6);
    assert_eq!(answer.cursor(), format!("{epoch}:7"));
    let answer = poll(
        &server,
        &format!("/messages?cid=gl&since={}&limit=2", answer.cursor()),
    )
    .await;
    assert_eq!(answer.ids(), [8, 9]);
    assert!(answer.gap.is_none());
}

#[tokio::test]
async fn short_poll_reports_a_gap_for_a_foreign_epoch() {
    let server = common::start().await;
    let epoch = publish_n(&server, "fe", 3).await;
    let foreign = format!("{}:2", other_epoch(&epoch));
    let answer = poll(&server, &format!("/messages?cid=fe&since={foreign}")).await;
    assert_eq!(answer.ids(), [1, 2, 3], "everything history holds");
    let gaps = answer.gap.clone().expect("gap header");
    assert_eq!(gaps[0]["type"], "gap");
    assert_eq!(gaps[0]["first"], 1);
    assert_eq!(gaps[0]["epoch"], epoch.as_str());
    assert_eq!(gaps[0]["requested"], foreign.as_str());
}

#[tokio::test]
async fn short_poll_reports_a_gap_for_a_cursor_ahead_of_history() {
    let server = common::start().await;
    let epoch = publish_n(&server, "ahead", 3).await;
    for since in ["50".to_string(), format!("{epoch}:4")] {
        let answer = poll(&server, &format!("/messages?cid=ahead&since={since}")).await;
        assert_eq!(answer.ids(), [1, 2, 3], "{since}");
        let gaps = answer.gap.clone().expect("gap header");
        assert_eq!(gaps[0]["first"], 1, "{since}");
        assert_eq!(gaps[0]["requested"], since.as_str());
    }
}

#[tokio::test]
async fn short_poll_over_several_channels() {
    let server = common::start().await;
    let ea = publish_n(&server, "a", 4).await;
    let eb = publish_n(&server, "b", 2).await;
    let answer = poll(&server, "/messages?cid=a&cid=b&since=2,0").await;
    let got: Vec<(String, u64)> = answer
        .messages
        .iter()
        .map(|m| (m["cid"].as_str().unwrap().into(), m["id"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(String, u64)> = vec![
        ("a".into(), 3),
        ("a".into(), 4),
        ("b".into(), 1),
        ("b".into(), 2),
    ];
    assert_eq!(got, expected);
    assert_eq!(answer.cursor(), format!("{ea}:4,{eb}:2"));
    // The cursor is in cid order and resumes each channel exactly.
    server.publish("b", "b3").await;
    let answer = poll(
        &server,
        &format!("/messages?cid=a&cid=b&since={}", answer.cursor()),
    )
    .await;
    assert_eq!(answer.messages.len(), 1);
    assert_eq!(answer.messages[0]["cid"], "b");
    assert_eq!(answer.messages[0]["id"], 3);
    let answer = poll(
        &server,
        &format!("/messages?cid=b&cid=a&since={eb}:3,{ea}:3"),
    )
    .await;
    assert_eq!(answer.ids(), [4]);
    assert_eq!(answer.cursor(), format!("{eb}:3,{ea}:4"));
    // A single entry applies to every channel; an empty entry means "nothing old".
    let answer = poll(&server, "/messages?cid=a&cid=b&since=1").await;
    assert_eq!(answer.ids(), [2, 3, 4, 2, 3]);
    let answer = poll(&server, "/messages?cid=a&cid=b&since=,1").await;
    assert_eq!(answer.ids(), [2, 3]);
    assert!(answer.gap.is_none());
}

#[tokio::test]
async fn limit_caps_the_whole_answer_over_several_channels() {
    let server = common::start().await;
    publish_n(&server, "la", 3).await;
    publish_n(&server, "lb", 3).await;
    // "a JSON array of envelopes … at most `limit`": the array, not each channel's part.
    let answer = poll(&server, "/messages?cid=la&cid=lb&since=0&limit=2").await;
    assert!(
        answer.messages.len() <= 2,
        "limit=2 answered {} envelopes: {:?}",
        answer.messages.len(),
        answer
            .messages
            .iter()
            .map(|m| format!("{}#{}", m["cid"].as_str().unwrap(), m["id"]))
            .collect::<Vec<_>>()
    );
    // Paging with the cursor still yields every message of both channels exactly once.
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let answer = poll(
            &server,
            &format!("/messages?cid=la&cid=lb&since={cursor}&limit=2"),
        )
        .await;
        cursor = answer.cursor().to_string();
        if answer.messages.is_empty() {
            break;
        }
        for m in &answer.messages {
            seen.push((
                m["cid"].as_str().unwrap().to_string(),
                m["id"].as_u64().unwrap(),
            ));
        }
    }
    seen.sort();
    let expected: Vec<(String, u64)> = ["la", "lb"]
        .iter()
        .flat_map(|c| (1..=3).map(move |i| (c.to_string(), i)))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn short_poll_refuses_a_wrong_number_of_cursor_entries() {
    let server = common::start().await;
    for query in [
        "cid=a&cid=b&since=1,2,3",
        "cid=a&cid=b&cid=c&since=1,2",
        "cid=a&since=1,2",
    ] {
        let error = expect_error(get(&server, &format!("/messages?{query}")).await, 400).await;
        assert!(error.contains("since"), "{query}: {error}");
    }
    server.assert_healthy().await;
}

#[tokio::test]
async fn short_poll_refuses_bad_since() {
    let server = common::start().await;
    publish_n(&server, "s", 1).await;
    for since in [
        "-1",
        "abc",
        "K:1",
        "1.5",
        "%2B1",
        ":1",
        "a:",
        "a:b:1",
        "99999999999999999999",
    ] {
        let response = get(&server, &format!("/messages?cid=s&since={since}")).await;
        let error = expect_error(response, 400).await;
        assert!(error.contains("since"), "{since}: {error}");
    }
    let response = get(&server, "/messages?cid=s&since=1&since=2").await;
    expect_error(response, 400).await;
    server.assert_healthy().await;
}

#[tokio::test]
async fn short_poll_refuses_bad_limits() {
    let server = common::start().await;
    publish_n(&server, "l", 1).await;
    for limit in [
        "0",
        "1001",
        "x",
        "-1",
        "",
        "1e3",
        "100000000000000000000000",
    ] {
        let response = get(&server, &format!("/messages?cid=l&since=0&limit={limit}")).await;
        let error = expect_error(response, 400).await;
        assert!(error.contains("limit"), "{limit}: {error}");
    }
    assert_eq!(poll(&server, "/messages?cid=l&limit=1000").await.ids(), [1]);
}

#[tokio::test]
async fn short_poll_refuses_bad_cids() {
    let server = common::start().await;
    for query in [
        "",
        "cid=",
        "cid=a%20b",
        "cid=a&cid=a",
        &format!("cid={}", "x".repeat(256)),
    ] {
        let response = get(&server, &format!("/messages?{query}")).await;
        expect_error(response, 400).await;
    }
    server.assert_healthy().await;
}

// ---------------------------------------------------------------- long polling

#[tokio::test]
async fn long_poll_answers_at_once_when_messages_are_waiting() {
    let server = common::start().await;
    let epoch = publish_n(&server, "lp", 3).await;
    for query in [
        "/listen?cid=lp&since=1",
        "/listen?cid=lp&since=1&transport=longpoll",
    ] {
        let started = Instant::now();
        let answer = tokio::time::timeout(T, poll(&server, query)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(answer.ids(), [2, 3], "{query}");
        assert_eq!(answer.messages[0]["data"], "m2");
        assert_eq!(answer.cursor(), format!("{epoch}:3"));
        assert!(answer.gap.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_is_held_until_a_publish() {
    let server = common::start().await;
    let epoch = publish_n(&server, "hold", 2).await;
    let task = spawn_long_poll(&server, &format!("/listen?cid=hold&since={epoch}:2"));
    wait_for_subscribers(&server, "hold", 1).await;
    assert_still_waiting(&task).await;
    let published_at = Instant::now();
    let published = server.publish("hold", "wake up").await;
    let (answer, answered_at) = tokio::time::timeout(T, task).await.unwrap().unwrap();
    assert!(answered_at >= published_at);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.messages.len(), 1);
    assert_eq!(answer.messages[0]["id"], 3);
    assert_eq!(answer.messages[0]["data"], "wake up");
    assert_eq!(answer.messages[0]["epoch"], published["epoch"]);
    assert_eq!(answer.cursor(), format!("{epoch}:3"));
    assert!(answer.gap.is_none());
    wait_for_subscribers(&server, "hold", 0).await;
}

#[tokio::test]
async fn long_poll_times_out_with_an_empty_array() {
    let server = common::start_with(|c| c.longpoll_timeout = Duration::from_millis(500)).await;
    let epoch = publish_n(&server, "quiet", 2).await;
    let started = Instant::now();
    let answer = poll(&server, "/listen?cid=quiet&since=2").await;
    let waited = started.elapsed();
    assert!(answer.messages.is_empty());
    assert!(answer.gap.is_none());
    assert_eq!(answer.cursor(), format!("{epoch}:2"));
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    wait_for_subscribers(&server, "quiet", 0).await;
}

/// Timeouts longer than an instant can hold ("never") are accepted and never fire: a long
/// poll waits for its message, and requests on keep-alive connections (the front's and
/// hyper's) are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_too_long_to_reach_never_fire() {
    let server = common::start_with(|c| {
        c.longpoll_timeout = Duration::MAX;
        c.idle_timeout = Duration::MAX;
        c.header_read_timeout = Duration::MAX;
    })
    .await;
    let epoch = publish_n(&server, "forever", 1).await;
    let task = spawn_long_poll(&server, &format!("/listen?cid=forever&since={epoch}:1"));
    wait_for_subscribers(&server, "forever", 1).await;
    assert_still_waiting(&task).await;
    server.publish("forever", "at last").await;
    let (answer, _) = tokio::time::timeout(T, task).await.unwrap().unwrap();
    assert_eq!(answer.ids(), [2]);
    for _ in 0..2 {
        assert_eq!(get(&server, "/health").await.status(), 200);
        let answer = poll(&server, "/messages?cid=forever&since=0").await;
        assert_eq!(answer.messages.len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_without_since_waits_for_the_next_new_message() {
    let server = common::start().await;
    let epoch = publish_n(&server, "new", 3).await;
    let task = spawn_long_poll(&server, "/listen?cid=new");
    wait_for_subscribers(&server, "new", 1).await;
    assert_still_waiting(&task).await;
    server.publish("new", "fresh").await;
    let (answer, _) = tokio::time::timeout(T, task).await.unwrap().unwrap();
    assert_eq!(answer.ids(), [4]);
    assert_eq!(answer.messages[0]["data"], "fresh");
    assert_eq!(answer.cursor(), format!("{epoch}:4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_resume_loop_receives_every_message_once_in_order() {
    const N: u64 = 200;
    let server = common::start_with(|c| c.history_size = 1000).await;
    let client = server.client.clone();
    let base = server.url("/listen?cid=loop&since=");
    let consumer = tokio::spawn(async move {
        let mut cursor = "0".to_string();
        let mut received = Vec::new();
        let mut requests = 0;
        while received.len() < N as usize {
            let response = client.get(format!("{base}{cursor}")).send().await.unwrap();
            let answer = Answer::read(response).await;
            assert_eq!(answer.status, 200);
            assert!(answer.gap.is_none(), "{:?}", answer.gap);
            for m in &answer.messages {
                received.push((m["id"].as_u64().unwrap(), m["data"].clone()));
            }
            cursor = answer.cursor().to_string();
            requests += 1;
        }
        (received, requests)
    });
    // Random pauses of 0–2 ms between publishes (xorshift, seeded from the clock).
    let mut state = now_ms() | 1;
    for i in 1..=N {
        server.publish("loop", &format!("n{i}")).await;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let pause = state % 3;
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    let (received, requests) = tokio::time::timeout(T, consumer).await.unwrap().unwrap();
    let expected: Vec<(u64, Value)> = (1..=N)
        .map(|i| (i, Value::String(format!("n{i}"))))
        .collect();
    assert_eq!(received, expected);
    assert!(requests >= 2, "it really was a loop ({requests} requests)");
}

#[tokio::test]
async fn long_poll_reports_a_gap_for_a_too_old_cursor() {
    let server = common::start_with(|c| c.history_size = 5).await;
    let epoch = publish_n(&server, "old", 10).await;
    let answer = tokio::time::timeout(T, poll(&server, "/listen?cid=old&since=2"))
        .await
        .unwrap();
    assert_eq!(answer.ids(), [6, 7, 8, 9, 10]);
    let gaps = answer.gap.clone().expect("X-Herald-Gap");
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0]["type"], "gap");
    assert_eq!(gaps[0]["first"], 6);
    assert_eq!(gaps[0]["epoch"], epoch.as_str());
    assert_eq!(answer.cursor(), format!("{epoch}:10"));
    // A foreign epoch, too.
    let since = format!("{}:10", other_epoch(&epoch));
    let answer = tokio::time::timeout(T, poll(&server, &format!("/listen?cid=old&since={since}")))
        .await
        .unwrap();
    assert_eq!(answer.ids(), [6, 7, 8, 9, 10]);
    assert_eq!(answer.gap.expect("gap")[0]["requested"], since.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_over_several_channels_answers_for_either() {
    let server = common::start().await;
    let ea = publish_n(&server, "x", 1).await;
    let eb = publish_n(&server, "y", 1).await;
    let task = spawn_long_poll(&server, "/listen?cid=x&cid=y&since=1");
    wait_for_subscribers(&server, "y", 1).await;
    assert_still_waiting(&task).await;
    server.publish("y", "for y").await;
    let (answer, _) = tokio::time::timeout(T, task).await.unwrap().unwrap();
    assert_eq!(answer.messages.len(), 1);
    assert_eq!(answer.messages[0]["cid"], "y");
    assert_eq!(answer.messages[0]["id"], 2);
    assert_eq!(answer.cursor(), format!("{ea}:1,{eb}:2"));

    let task = spawn_long_poll(
        &server,
        &format!("/listen?cid=x&cid=y&since={}", answer.cursor()),
    );
    wait_for_subscribers(&server, "x", 1).await;
    assert_still_waiting(&task).await;
    server.publish("x", "for x").await;
    let (answer, _) = tokio::time::timeout(T, task).await.unwrap().unwrap();
    assert_eq!(answer.messages.len(), 1);
    assert_eq!(answer.messages[0]["cid"], "x");
    assert_eq!(answer.messages[0]["data"], "for x");
    assert_eq!(answer.cursor(), format!("{ea}:2,{eb}:2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_trailing_slash() {
    let server = common::start().await;
    publish_n(&server, "ts", 1).await;
    let answer = poll(&server, "/listen/?cid=ts&since=0").await;
    assert_eq!(answer.ids(), [1]);
    let task = spawn_long_poll(&server, "/listen/?cid=ts");
    wait_for_subscribers(&server, "ts", 1).await;
    server.publish("ts", "two").await;
    let (answer, _) = tokio::time::timeout(T, task).await.unwrap().unwrap();
    assert_eq!(answer.ids(), [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiting_long_polls_all_get_the_message() {
    const WAITERS: usize = 1000;
    let server = common::start().await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(WAITERS)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = server.url("/listen?cid=crowd");
    let mut tasks = Vec::with_capacity(WAITERS);
    for _ in 0..WAITERS {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            Answer::read(response).await
        }));
    }
    wait_for_subscribers(&server, "crowd", WAITERS).await;
    let published = server.publish("crowd", "hello, everyone").await;
    assert_eq!(published["subscribers"], WAITERS);
    for task in tasks {
        let answer = tokio::time::timeout(T, task).await.unwrap().unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.ids(), [1]);
        assert_eq!(answer.messages[0]["data"], "hello, everyone");
    }
    wait_for_subscribers(&server, "crowd", 0).await;
    server.assert_healthy().await;
}

#[tokio::test]
async fn long_poll_refuses_bad_cids_and_cursors() {
    let server = common::start().await;
    for query in [
        "",
        "cid=",
        "cid=a%20b",
        "cid=%3C",
        "cid=caf%C3%A9",
        "cid=a&cid=a",
        "cid=a&since=-1",
        "cid=a&since=K:1",
        "cid=a&cid=b&since=1,2,3",
        "cid=a&transport=pigeon",
        "cid=a&since=1&since=2",
    ] {
        let response = get(&server, &format!("/listen?{query}")).await;
        expect_error(response, 400).await;
    }
    let long = format!("/listen?cid={}", "x".repeat(256));
    expect_error(get(&server, &long).await, 400).await;
    server.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_is_503_with_retry_after_on_shutdown() {
    let common::TestServer {
        server,
        base,
        client,
    } = common::start_with(|c| c.shutdown_timeout = Duration::from_secs(2)).await;
    let url = format!("{base}/listen?cid=bye");
    let waiting = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    let hub = std::sync::Arc::clone(server.app());
    tokio::time::timeout(T, async {
        while hub.engine.hub().subscriber_count(&"bye".parse().unwrap()) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap();
    let shutdown = tokio::spawn(server.shutdown());
    let response = tokio::time::timeout(T, waiting).await.unwrap().unwrap();
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, 503).await;
    tokio::time::timeout(T, shutdown).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_expired_channel_starts_a_new_epoch_and_old_cursors_get_a_gap() {
    let server = common::start_with(|c| c.history_ttl = Duration::from_millis(300)).await;
    let old = publish_n(&server, "ttl", 3).await;
    // Wait until the sweeper has forgotten the channel (health does not touch channels).
    tokio::time::timeout(T, async {
        loop {
            let health: Value = get(&server, "/health").await.json().await.unwrap();
            if health["channels"] == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle channel is forgotten");
    for since in [format!("{old}:3"), "3".to_string()] {
        let answer = poll(&server, &format!("/messages?cid=ttl&since={since}")).await;
        assert!(answer.messages.is_empty());
        let gaps = answer.gap.expect("the old history is gone: a gap");
        assert_eq!(gaps[0]["requested"], since.as_str());
        assert_eq!(gaps[0]["first"], 1);
        assert_ne!(gaps[0]["epoch"], old.as_str(), "a new epoch");
    }
    let published = server.publish("ttl", "again").await;
    assert_eq!(published["id"], 1, "ids restart in the new epoch");
    assert_ne!(published["epoch"], old.as_str());
}

#[tokio::test]
async fn gaps_of_several_channels_are_listed_together() {
    let server = common::start_with(|c| c.history_size = 2).await;
    let ea = publish_n(&server, "ga", 5).await;
    let eb = publish_n(&server, "gb", 5).await;
    let answer = poll(&server, "/messages?cid=ga&cid=gb&since=1,4").await;
    assert_eq!(answer.ids(), [4, 5, 5]);
    let gaps = answer.gap.expect("gap header");
    assert_eq!(gaps.len(), 1, "gb's cursor 4 is still served: {gaps:?}");
    assert_eq!(gaps[0]["cid"], "ga");
    let answer = poll(&server, "/messages?cid=ga&cid=gb&since=1").await;
    let gaps = answer.gap.expect("gap header");
    let summary: Vec<(&str, &str, u64)> = gaps
        .iter()
        .map(|g| {
            (
                g["cid"].as_str().unwrap(),
                g["epoch"].as_str().unwrap(),
                g["first"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [("ga", ea.as_str(), 4), ("gb", eb.as_str(), 4)]);
    assert!(gaps.iter().all(|g| g["type"] == "gap"));
}
