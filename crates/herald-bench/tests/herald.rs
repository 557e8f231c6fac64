//! herald-bench against the real Herald server, started in-process on a free port: a small
//! scenario per transport must see every message exactly once, with latencies recorded.

use std::time::Duration;

use clap::Parser;
use herald_bench::{Report, Scenario};
use herald_server::{Config, RunningServer};

/// Runs 50 subscribers on 2 channels at 100 publishes/s for 1 s over `transport`.
async fn small_run(transport: &str, sub_path: &str) -> anyhow::Result<Report> {
    let server = RunningServer::start(Config {
        listen: "127.0.0.1:0".parse()?,
        shutdown_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await?;
    let base = server.local_addr().to_string();
    let scheme = if transport == "ws" { "ws" } else { "http" };
    let sub_url = format!("{scheme}://{base}{sub_path}");
    let pub_url = format!("http://{base}/publish?cid={{ch}}");
    let scenario = Scenario::try_parse_from([
        "herald-bench",
        "--transport",
        transport,
        "--subscribers",
        "50",
        "--channels",
        "2",
        "--rate",
        "100",
        // One publisher connection per channel: each channel's messages reach the server in
        // order, so any reordering would be Herald's.
        "--pub-concurrency",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
        "--drain",
        "5s",
        "--poll-interval",
        "100ms",
        "--sub-url",
        &sub_url,
        "--pub-url",
        &pub_url,
        "--quiet",
    ])?;
    let report = herald_bench::run(&scenario).await?;
    server.shutdown().await;
    Ok(report)
}

fn assert_exact(report: &Report) {
    let summary = format!("{report}");
    assert_eq!(report.subscribers.connected, 50, "{summary}");
    assert_eq!(report.subscribers.failed, 0, "{summary}");
    // 100 are due; a loaded machine may fall a little behind (never counted as loss).
    assert!(report.publish.published >= 50, "{summary}");
    assert_eq!(report.publish.errors, 0, "{summary}");
    let d = &report.deliveries;
    // Every message reaches the 25 subscribers of its channel.
    assert_eq!(d.expected, report.publish.published * 25, "{summary}");
    assert_eq!(d.received, d.expected, "{summary}");
    assert_eq!(d.lost, 0, "{summary}");
    assert_eq!(d.duplicated, 0, "{summary}");
    assert_eq!(d.reordered, 0, "{summary}");
    assert_eq!(report.latency_us.count, d.received, "{summary}");
    assert!(report.latency_us.p50 > 0, "{summary}");
    assert!(report.errors.is_empty(), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_delivers_everything() {
    assert_exact(&small_run("ws", "/listen?cid={ch}").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_everything() {
    assert_exact(&small_run("sse", "/listen?cid={ch}").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longpoll_delivers_everything() {
    assert_exact(&small_run("longpoll", "/listen?cid={ch}").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_poll_delivers_everything() {
    let report = small_run("poll", "/messages?cid={ch}").await.unwrap();
    assert_exact(&report);
    // Polling every 100 ms: deliveries wait for the next poll.
    assert!(report.latency_us.max >= 10_000, "{report}");
}
