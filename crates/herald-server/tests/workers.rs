//! Several worker threads (`workers`): connections are spread over them, and a publish on any
//! worker reaches subscribers on every worker, in order and without loss, over every
//! transport; shutdown ends the connections of every worker. The server runs in this process
//! with more workers than most machines' default, so the cross-worker paths are exercised
//! whatever the CPU count.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

use common::{start_with, ws_next_json, SseReader, TestServer};

const STEP: Duration = Duration::from_secs(10);
const WORKERS: usize = 4;

async fn server() -> TestServer {
    start_with(|config| config.workers = WORKERS).await
}

/// Publishes `m1`…`mN` to `cid`, each on a new connection (so the publishes are handled by
/// different workers).
async fn publish_each_on_its_own_connection(server: &TestServer, cid: &str, n: usize) {
    for i in 1..=n {
        let client = reqwest::Client::new();
        let response = client
            .post(server.url(&format!("/publish?cid={cid}")))
            .body(format!("m{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn websocket_subscribers_on_every_worker_get_every_message_in_order() {
    let server = server().await;
    // More subscribers than a publisher writes alone (the hub shares large fan-outs with the
    // connections' own tasks), on connections spread over all the workers.
    let subscribers = 48;
    let mut sockets = join_all((0..subscribers).map(|_| async {
        let (mut ws, _) = connect_async(server.ws_url("/listen?cid=wide"))
            .await
            .unwrap();
        let subscribed = ws_next_json(&mut ws, STEP).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        ws
    }))
    .await;
    let messages = 20;
    publish_each_on_its_own_connection(&server, "wide", messages).await;
    for ws in &mut sockets {
        for i in 1..=messages {
            let message = ws_next_json(ws, STEP).await;
            assert_eq!(message["data"], format!("m{i}"), "{message}");
            assert_eq!(message["id"], i, "{message}");
        }
    }
}

#[tokio::test]
async fn sse_and_long_poll_subscribers_on_every_worker_get_the_message() {
    let server = server().await;
    let mut streams = Vec::new();
    for _ in 0..WORKERS * 2 {
        let response = server
            .client
            .get(server.url("/listen?cid=mixed&transport=sse"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        streams.push(SseReader::new(response));
    }
    // Each long poll on its own client, so each is its own connection.
    let polls: Vec<_> = (0..WORKERS * 2)
        .map(|_| {
            let url = server.url("/listen?cid=mixed&transport=longpoll");
            tokio::spawn(async move { reqwest::Client::new().get(url).send().await })
        })
        .collect();
    common::wait_for_subscribers(&server, "mixed", WORKERS * 4).await;
    publish_each_on_its_own_connection(&server, "mixed", 1).await;
    for stream in &mut streams {
        let event = stream.next_event(STEP).await.expect("an event");
        let message: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(message["data"], "m1", "{message}");
    }
    for poll in polls {
        let response = tokio::time::timeout(STEP, poll)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body[0]["data"], "m1", "{body}");
    }
}

#[tokio::test]
async fn shutdown_ends_the_connections_of_every_worker() {
    let server = server().await;
    let mut sockets = join_all((0..WORKERS * 2).map(|_| async {
        let (mut ws, _) = connect_async(server.ws_url("/listen?cid=bye"))
            .await
            .unwrap();
        ws_next_json(&mut ws, STEP).await;
        ws
    }))
    .await;
    let TestServer { server, .. } = server;
    let shutdown = tokio::spawn(server.shutdown());
    for ws in &mut sockets {
        let closed = tokio::time::timeout(STEP, async {
            while let Some(frame) = ws.next().await {
                match frame {
                    Ok(Message::Close(close)) => return close.map(|c| u16::from(c.code)),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
            None
        })
        .await
        .expect("the socket ends");
        assert_eq!(closed, Some(1001), "going away");
    }
    tokio::time::timeout(STEP, shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
}
