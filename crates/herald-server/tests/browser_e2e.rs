//! Real-browser tests: headless Chromium, driven by `tests/browser/driver.mjs`
//! (playwright-core), uses every transport from web pages of three kinds — Herald's own origin,
//! an allowed other origin and a refused one — while this test publishes and asserts on what
//! each page received. `tests/browser.rs` checks the same boundaries header by header; this
//! file proves that a real browser draws the conclusions we expect from those headers (CORS,
//! `frame-ancestors`, `EventSource` reconnects with `Last-Event-ID`).
//!
//! Gating: these tests run only with `HERALD_BROWSER_TESTS=1` (CI sets it) and then fail if
//! Chromium, node or `tests/browser/node_modules` is missing; without it they pass with a
//! one-line note, so `cargo test --workspace` works on a machine without a browser.
//!
//! Pages of another origin come from a tiny page server in this file (a blank HTML page on its
//! own port). A page of Herald's own origin is any document Herald serves — the tests open
//! `/health` — so Herald needs no static file serving. Nothing here stands in for Herald or
//! the browser: both talk over real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex, Once};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

/// One browser at a time: the suite runs on 2 cores, and parallel Chromiums would only make
/// every test slower and its timeouts tighter.
static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Longest wait for one driver reply (each driver step has its own shorter timeout).
const STEP_TIMEOUT: Duration = Duration::from_secs(40);
/// Deadline of a whole driver run, after which it kills the browser and exits.
const DRIVER_DEADLINE_MS: u64 = 90_000;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium_path() -> PathBuf {
    std::env::var_os("HERALD_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// True when the browser tests are to run; panics when they are asked for but cannot run.
fn browser_tests_enabled() -> bool {
    if std::env::var("HERALD_BROWSER_TESTS").as_deref() != Ok("1") {
        static NOTE: Once = Once::new();
        NOTE.call_once(|| {
            // Straight to stderr, past the test harness's capture, so the note is seen.
            let _ = writeln!(
                std::io::stderr(),
                "note: browser_e2e skipped: set HERALD_BROWSER_TESTS=1 to run them (needs /usr/bin/chromium and `npm ci` in crates/herald-server/tests/browser)"
            );
        });
        return false;
    }
    let chromium = chromium_path();
    assert!(
        chromium.is_file(),
        "HERALD_BROWSER_TESTS=1 but {} is missing: apt-get install chromium (or set HERALD_CHROMIUM)",
        chromium.display()
    );
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "HERALD_BROWSER_TESTS=1 but {} is missing: run `npm ci` in {}",
        playwright.display(),
        browser_dir().display()
    );
    true
}

/// The node driver and its browser. Killed on drop (Chromium exits when its DevTools pipe
/// to node closes), so a failing test leaves no browser behind.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    stderr: Arc<StdMutex<String>>,
}

impl Driver {
    async fn launch() -> Self {
        let mut child = Command::new("node")
            .arg(browser_dir().join("driver.mjs"))
            .current_dir(browser_dir())
            .env("HERALD_CHROMIUM", chromium_path())
            .env("HERALD_BROWSER_DEADLINE_MS", DRIVER_DEADLINE_MS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (HERALD_BROWSER_TESTS=1 needs node on PATH)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(StdMutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf).await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Sends one command; returns its `ok` value, or panics with the driver's error.
    async fn run(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        let reply = tokio::time::timeout(STEP_TIMEOUT, async {
            self.stdin.write_all(line.as_bytes()).await.ok()?;
            self.stdout.next_line().await.ok().flatten()
        })
        .await;
        let stderr = self.stderr.lock().unwrap().clone();
        let reply = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => panic!("driver exited during {command}; stderr:\n{stderr}"),
            Err(_) => {
                panic!("driver gave no answer to {command} in {STEP_TIMEOUT:?}; stderr:\n{stderr}")
            }
        };
        let reply: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("driver said {reply:?} ({e}); stderr:\n{stderr}"));
        if let Some(error) = reply.get("error") {
            panic!("driver failed {command}: {error}");
        }
        reply["ok"].clone()
    }

    /// Opens page `name` at `url`; returns the page's origin as the browser sees it.
    async fn open(&mut self, name: &str, url: &str) -> String {
        let opened = self
            .run(json!({"op": "open", "page": name, "url": url}))
            .await;
        assert_eq!(opened["status"], 200, "{url}: {opened}");
        opened["origin"].as_str().unwrap().to_string()
    }

    /// Calls `harness.<function>(key, args…)` in page `name`.
    async fn call(&mut self, name: &str, function: &str, args: Value) -> Value {
        self.run(json!({"op": "call", "page": name, "fn": function, "args": args}))
            .await
    }

    /// Waits until `key` in page `name` has recorded `count` × `event`; returns its log.
    async fn wait(&mut self, name: &str, key: &str, event: &str, count: usize) -> Vec<Value> {
        let log = self
            .run(json!({"op": "wait", "page": name, "key": key, "event": event, "count": count, "timeout_ms": 20000}))
            .await;
        log.as_array().unwrap().clone()
    }

    /// Everything page `name` recorded: `log`, `net` (answers and failures), `console`.
    async fn state(&mut self, name: &str) -> Value {
        self.run(json!({"op": "state", "page": name})).await
    }

    /// The child frames of page `name`, after the named ones have committed a document.
    async fn frames(&mut self, name: &str, names: &[&str]) -> Vec<Value> {
        let frames = self
            .run(json!({"op": "frames", "page": name, "names": names, "timeout_ms": 20000}))
            .await;
        frames.as_array().unwrap().clone()
    }

    /// Closes the browser and waits for node to exit.
    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"op\":\"quit\"}\n").await;
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "driver exit: {status:?}; stderr:\n{}",
            self.stderr.lock().unwrap()
        );
    }
}

/// A page server: every `GET` is answered with the same blank HTML page, so each listener is
/// one more web origin (`http://127.0.0.1:PORT`).
async fn page_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match socket.read(&mut buf).await {
                        Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let page =
                    "<!doctype html><html><head><title>page</title></head><body></body></html>";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A TCP proxy in front of Herald that can drop every connection and hold new ones, as a
/// network outage would, and that records what the browser sent.
struct Proxy {
    addr: SocketAddr,
    /// Incremented to drop every connection open at that moment.
    cut: watch::Sender<u64>,
    /// While true, new connections wait before reaching Herald.
    hold: watch::Sender<bool>,
    sent: Arc<StdMutex<String>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let (hold, _) = watch::channel(false);
        let sent = Arc::new(StdMutex::new(String::new()));
        let (cut_tx, hold_tx, log) = (cut.clone(), hold.clone(), Arc::clone(&sent));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cut_tx.subscribe();
                let mut hold = hold_tx.subscribe();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    if hold.wait_for(|held| !held).await.is_err() {
                        return;
                    }
                    let generation = *cut.borrow_and_update();
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = relay(client, server, log) => {}
                        _ = cut.wait_for(|g| *g != generation) => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            hold,
            sent,
        }
    }

    /// Drops every open connection and holds new ones until [`release`](Self::release).
    fn cut_and_hold(&self) {
        self.hold.send_replace(true);
        self.cut.send_modify(|g| *g += 1);
    }

    fn release(&self) {
        self.hold.send_replace(false);
    }

    /// Everything browsers sent through the proxy so far.
    fn sent(&self) -> String {
        self.sent.lock().unwrap().clone()
    }
}

async fn relay(mut client: TcpStream, mut server: TcpStream, log: Arc<StdMutex<String>>) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let upstream = async {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            log.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        () = upstream => {}
        _ = downstream => {}
    }
}

/// The `message` entries of a harness log.
fn messages(log: &[Value]) -> Vec<&Value> {
    log.iter().filter(|e| e["event"] == "message").collect()
}

/// The `data` of the envelopes among `entries` (WebSocket control objects left out).
fn texts<'a>(entries: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    entries
        .into_iter()
        .filter(|m| m.get("type").is_none())
        .map(|m| m["data"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn count(log: &[Value], event: &str) -> usize {
    log.iter().filter(|e| e["event"] == event).count()
}

async fn publish_all(server: &TestServer, cid: &str, bodies: &[&str]) -> Vec<Value> {
    let mut published = Vec::new();
    for body in bodies {
        published.push(server.publish(cid, body).await);
    }
    published
}

#[tokio::test]
async fn a_page_of_heralds_own_origin_uses_every_transport() {
    if !browser_tests_enabled() {
        return;
    }
    let _one_browser = BROWSER_LOCK.lock().await;
    let started = Instant::now();
    let server = common::start().await;
    let mut driver = Driver::launch().await;
    let origin = driver.open("own", &server.url("/health")).await;
    assert_eq!(origin, server.base, "the page is of Herald's own origin");

    let ws_url = server.ws_url("/listen?cid=same");
    driver.call("own", "ws", json!(["ws", ws_url])).await;
    driver
        .call("own", "sse", json!(["sse", "/listen?cid=same"]))
        .await;
    driver
        .call("own", "longpoll", json!(["lp", "/listen?cid=same"]))
        .await;
    driver
        .call(
            "own",
            "iframe",
            json!([
                "frame",
                "/listen?cid=same&transport=iframe&callback=onHerald",
                "onHerald"
            ]),
        )
        .await;
    common::wait_for_subscribers(&server, "same", 4).await;

    let published = publish_all(&server, "same", &["m1", "m2", "m3"]).await;
    assert_eq!(published[0]["subscribers"], 4, "{published:?}");
    let epoch = published[0]["epoch"].as_str().unwrap().to_string();
    let want = ["m1", "m2", "m3"];

    let ws = driver.wait("own", "ws", "message", 4).await;
    assert_eq!(ws[0]["event"], "open");
    let ws_messages: Vec<&Value> = messages(&ws).into_iter().map(|m| &m["data"]).collect();
    assert_eq!(ws_messages[0]["type"], "subscribed", "{ws:?}");
    assert_eq!(texts(ws_messages), want, "{ws:?}");

    let sse = driver.wait("own", "sse", "message", 3).await;
    let sse_messages = messages(&sse);
    assert_eq!(texts(sse_messages.iter().map(|m| &m["data"])), want);
    let ids: Vec<&str> = sse_messages
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3].map(|i| format!("{epoch}:{i}")), "id: lines");

    let lp = driver.wait("own", "lp", "message", 3).await;
    assert_eq!(
        texts(messages(&lp).into_iter().map(|m| &m["data"])),
        want,
        "{lp:?}"
    );
    // The loop goes on with `since` = the cursor it read; a later message arrives once.
    server.publish("same", "m4").await;
    let lp = driver.wait("own", "lp", "message", 4).await;
    assert_eq!(
        texts(messages(&lp).into_iter().map(|m| &m["data"])),
        ["m1", "m2", "m3", "m4"]
    );
    let last_answer = lp.iter().rev().find(|e| e["event"] == "answer").unwrap();
    assert!(last_answer["since"].is_string(), "{lp:?}");
    assert_eq!(last_answer["cursor"], format!("{epoch}:4"));

    let frame = driver.wait("own", "frame", "message", 4).await;
    assert_eq!(
        texts(messages(&frame).into_iter().map(|m| &m["data"])),
        ["m1", "m2", "m3", "m4"],
        "the iframe called parent.onHerald"
    );

    // Short polling: the history after `since`, and the cursor to continue from.
    let poll_url = format!("/messages?cid=same&since={epoch}:1");
    driver.call("own", "fetch", json!(["poll", poll_url])).await;
    let poll = driver.wait("own", "poll", "response", 1).await;
    assert_eq!(poll[0]["status"], 200);
    assert_eq!(poll[0]["cursor"], format!("{epoch}:4"));
    let bodies: Vec<&Value> = poll[0]["body"].as_array().unwrap().iter().collect();
    assert_eq!(texts(bodies), ["m2", "m3", "m4"]);

    let state = driver.state("own").await;
    assert_eq!(count(&ws, "error") + count(&sse, "error"), 0, "{state}");
    driver.quit().await;
    eprintln!("own-origin browser test took {:?}", started.elapsed());
}

#[tokio::test]
async fn event_source_reconnects_after_a_drop_and_resumes_with_last_event_id() {
    if !browser_tests_enabled() {
        return;
    }
    let _one_browser = BROWSER_LOCK.lock().await;
    let server = common::start_with(|c| c.sse_retry = Duration::from_millis(100)).await;
    // The page reaches Herald through the proxy (whose origin it is), so the test can drop
    // the stream the way a network outage would and decide when the reconnect gets through.
    let proxy = Proxy::start(server.server.local_addr()).await;
    let mut driver = Driver::launch().await;
    let page_url = format!("http://{}/health", proxy.addr);
    driver.open("page", &page_url).await;
    driver
        .call("page", "sse", json!(["sse", "/listen?cid=resume"]))
        .await;
    driver.wait("page", "sse", "open", 1).await;
    common::wait_for_subscribers(&server, "resume", 1).await;
    let epoch = server.publish("resume", "m1").await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    driver.wait("page", "sse", "message", 1).await;

    proxy.cut_and_hold();
    let log = driver.wait("page", "sse", "error", 1).await;
    let error = log.iter().find(|e| e["event"] == "error").unwrap();
    assert_eq!(
        error["readyState"], 0,
        "EventSource is reconnecting: {log:?}"
    );
    // Published while the page is cut off: only a resume can bring these.
    publish_all(&server, "resume", &["m2", "m3"]).await;
    proxy.release();

    let log = driver.wait("page", "sse", "message", 3).await;
    assert_eq!(count(&log, "open"), 2, "reconnected once: {log:?}");
    server.publish("resume", "m4").await;
    let log = driver.wait("page", "sse", "message", 4).await;
    let received = messages(&log);
    assert_eq!(
        texts(received.iter().map(|m| &m["data"])),
        ["m1", "m2", "m3", "m4"],
        "nothing lost, nothing twice: {log:?}"
    );
    let ids: Vec<&str> = received.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4].map(|i| format!("{epoch}:{i}")));
    let sent = proxy.sent().to_ascii_lowercase();
    assert!(
        sent.contains(&format!("last-event-id: {epoch}:1\r\n")),
        "the reconnect carried Last-Event-ID: {sent}"
    );
    driver.quit().await;
}

#[tokio::test]
async fn event_source_follows_a_server_restart_and_is_told_of_the_gap() {
    if !browser_tests_enabled() {
        return;
    }
    let _one_browser = BROWSER_LOCK.lock().await;
    let fast = |c: &mut herald_server::Config| {
        c.sse_retry = Duration::from_millis(100);
        c.shutdown_timeout = Duration::from_secs(2);
    };
    let server = common::start_with(fast).await;
    let addr = server.server.local_addr();
    let mut driver = Driver::launch().await;
    driver.open("page", &server.url("/health")).await;
    driver
        .call("page", "sse", json!(["sse", "/listen?cid=restart"]))
        .await;
    driver.wait("page", "sse", "open", 1).await;
    common::wait_for_subscribers(&server, "restart", 1).await;
    let old_epoch = server.publish("restart", "m1").await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    driver.wait("page", "sse", "message", 1).await;

    // The server ends the stream (shutdown), and a new one, whose history is empty, takes
    // its place on the same port.
    server.server.shutdown().await;
    let log = driver.wait("page", "sse", "disconnect", 1).await;
    let disconnect = log.iter().find(|e| e["event"] == "disconnect").unwrap();
    assert_eq!(disconnect["data"]["reconnect"], true, "{log:?}");
    let server = common::start_with(|c| {
        fast(c);
        c.listen = addr;
    })
    .await;
    driver.wait("page", "sse", "open", 2).await;
    common::wait_for_subscribers(&server, "restart", 1).await;
    let new_epoch = server.publish("restart", "m2").await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_epoch, old_epoch);

    let log = driver.wait("page", "sse", "message", 2).await;
    let received = messages(&log);
    assert_eq!(texts(received.iter().map(|m| &m["data"])), ["m1", "m2"]);
    assert_eq!(received[1]["id"], format!("{new_epoch}:1"));
    // The reconnect sent Last-Event-ID of the lost history: an explicit gap, never silence.
    let gap = log
        .iter()
        .find(|e| e["event"] == "gap")
        .expect("a gap event");
    assert_eq!(
        gap["data"]["requested"],
        format!("{old_epoch}:1"),
        "{log:?}"
    );
    assert_eq!(gap["data"]["epoch"], new_epoch.as_str());
    let gap_at = log.iter().position(|e| e["event"] == "gap").unwrap();
    let m2_at = log.iter().rposition(|e| e["event"] == "message").unwrap();
    assert!(gap_at < m2_at, "the gap comes before the message: {log:?}");
    driver.quit().await;
}

/// Herald with `allowed` on its allowlist.
async fn start_allowing(allowed: SocketAddr) -> TestServer {
    common::start_with(|c| c.allowed_origins = vec![format!("http://{allowed}")]).await
}

#[tokio::test]
async fn a_page_of_an_allowed_origin_uses_herald_cross_site() {
    if !browser_tests_enabled() {
        return;
    }
    let _one_browser = BROWSER_LOCK.lock().await;
    let allowed = page_server().await;
    let server = start_allowing(allowed).await;
    let mut driver = Driver::launch().await;
    let origin = driver.open("app", &format!("http://{allowed}/")).await;
    assert_eq!(origin, format!("http://{allowed}"));
    assert_ne!(origin, server.base, "a different origin from Herald's");

    driver
        .call("app", "ws", json!(["ws", server.ws_url("/listen?cid=x")]))
        .await;
    driver
        .call("app", "sse", json!(["sse", server.url("/listen?cid=x")]))
        .await;
    driver
        .call(
            "app",
            "longpoll",
            json!(["lp", server.url("/listen?cid=x")]),
        )
        .await;
    // Cross-origin, the frame's `parent.onHerald(…)` cannot reach this page (same-origin
    // policy); what `frame-ancestors` decides is whether the frame is rendered at all.
    let frame_url = server.url("/listen?cid=x&transport=iframe&callback=onHerald");
    driver
        .call("app", "iframe", json!(["frame", frame_url, "onHerald"]))
        .await;
    common::wait_for_subscribers(&server, "x", 4).await;
    let published = publish_all(&server, "x", &["m1", "m2"]).await;
    assert_eq!(published[0]["subscribers"], 4);
    let epoch = published[0]["epoch"].as_str().unwrap().to_string();

    let ws = driver.wait("app", "ws", "message", 3).await;
    let ws_data: Vec<&Value> = messages(&ws).into_iter().map(|m| &m["data"]).collect();
    assert_eq!(texts(ws_data), ["m1", "m2"], "{ws:?}");
    let sse = driver.wait("app", "sse", "message", 2).await;
    assert_eq!(
        texts(messages(&sse).into_iter().map(|m| &m["data"])),
        ["m1", "m2"]
    );
    let lp = driver.wait("app", "lp", "message", 2).await;
    assert_eq!(
        texts(messages(&lp).into_iter().map(|m| &m["data"])),
        ["m1", "m2"]
    );
    let answer = lp.iter().find(|e| e["event"] == "answer").unwrap();
    assert!(
        answer["cursor"].as_str().unwrap().starts_with(&epoch),
        "the page read X-Herald-Cursor: {lp:?}"
    );

    let poll_url = server.url("/messages?cid=x&since=0");
    driver.call("app", "fetch", json!(["poll", poll_url])).await;
    let poll = driver.wait("app", "poll", "response", 1).await;
    assert_eq!(poll[0]["status"], 200, "{poll:?}");
    assert_eq!(
        poll[0]["cursor"],
        format!("{epoch}:2"),
        "X-Herald-Cursor is exposed"
    );
    let bodies: Vec<&Value> = poll[0]["body"].as_array().unwrap().iter().collect();
    assert_eq!(texts(bodies), ["m1", "m2"]);

    // The allowed page may embed the stream: the frame holds the calls for both messages.
    let frames = driver.frames("app", &["frame"]).await;
    let frame = frames.iter().find(|f| f["name"] == "frame").unwrap();
    let content = frame["content"].as_str().unwrap();
    assert!(
        frame["url"].as_str().unwrap().starts_with(&server.base),
        "{frame}"
    );
    assert!(
        content.contains("parent.onHerald(") && content.contains(r#""data":"m2""#),
        "{frame}"
    );
    let state = driver.state("app").await;
    assert_eq!(count(&ws, "error") + count(&sse, "error"), 0, "{state}");
    driver.quit().await;
}

#[tokio::test]
async fn a_page_of_a_refused_origin_gets_nothing() {
    if !browser_tests_enabled() {
        return;
    }
    let _one_browser = BROWSER_LOCK.lock().await;
    let allowed = page_server().await;
    let refused = page_server().await;
    // A keep-alive every second: Herald notices at the latest then that a stream was dropped.
    let server = common::start_with(|c| {
        c.allowed_origins = vec![format!("http://{allowed}")];
        c.keepalive = Duration::from_secs(1);
    })
    .await;
    let mut driver = Driver::launch().await;
    driver.open("evil", &format!("http://{refused}/")).await;

    driver
        .call("evil", "ws", json!(["ws", server.ws_url("/listen?cid=y")]))
        .await;
    driver
        .call("evil", "sse", json!(["sse", server.url("/listen?cid=y")]))
        .await;
    driver
        .call(
            "evil",
            "longpoll",
            json!(["lp", server.url("/listen?cid=y")]),
        )
        .await;
    let poll_url = server.url("/messages?cid=y&since=0");
    driver
        .call("evil", "fetch", json!(["poll", poll_url]))
        .await;
    // A frame navigation sends the page's origin as `Referer`: refused with 403.
    let frame_url = server.url("/listen?cid=y&transport=iframe&callback=onHerald");
    driver
        .call("evil", "iframe", json!(["frame", frame_url, "onHerald"]))
        .await;
    // Without a Referer Herald cannot tell a foreign page and serves the stream, but its
    // `frame-ancestors` policy keeps the browser from rendering it inside this page.
    let hidden_url = server.url("/listen?cid=z&transport=iframe&callback=onHerald");
    driver
        .call(
            "evil",
            "iframe",
            json!(["hidden", hidden_url, "onHerald", "no-referrer"]),
        )
        .await;

    let ws = driver.wait("evil", "ws", "close", 1).await;
    assert_eq!(count(&ws, "open"), 0, "{ws:?}");
    assert_eq!(ws.last().unwrap()["code"], 1006, "{ws:?}");
    let sse = driver.wait("evil", "sse", "error", 1).await;
    assert_eq!(
        sse.last().unwrap()["readyState"],
        2,
        "EventSource gave up: {sse:?}"
    );
    let lp = driver.wait("evil", "lp", "error", 1).await;
    assert_eq!(lp[0]["error"], "TypeError", "fetch blocked by CORS: {lp:?}");
    let poll = driver.wait("evil", "poll", "error", 1).await;
    assert_eq!(poll[0]["error"], "TypeError", "{poll:?}");

    let frames = driver.frames("evil", &["frame", "hidden"]).await;
    let frame = frames.iter().find(|f| f["name"] == "frame").unwrap();
    let content = frame["content"].as_str().unwrap();
    assert!(
        content.contains("not allowed") && !content.contains("parent.onHerald"),
        "the frame shows the 403: {frame}"
    );
    let hidden = frames.iter().find(|f| f["name"] == "hidden").unwrap();
    let content = hidden["content"].as_str().unwrap();
    assert!(
        !content.contains("parent.onHerald") && !content.contains(r#""cid":"z""#),
        "frame-ancestors kept the stream out of this page: {hidden}"
    );
    let state = driver.state("evil").await;
    let blocked =
        state["net"].as_array().unwrap().iter().any(|n| {
            n["url"] == hidden_url.as_str() && n["failure"] == "net::ERR_BLOCKED_BY_RESPONSE"
        });
    assert!(blocked, "Chromium blocked the Referer-less frame: {state}");
    let console = state["console"].to_string();
    assert!(console.contains("frame-ancestors"), "{console}");

    // Chromium dropped that stream, and Herald subscribed none of this page's other
    // requests: publishing reaches no one.
    common::wait_for_subscribers(&server, "z", 0).await;
    for cid in ["y", "z"] {
        let published = server.publish(cid, "secret").await;
        assert_eq!(published["subscribers"], 0, "{cid}: {published}");
    }
    let state = driver.state("evil").await;
    // (The iframes' logs cannot show anything either way: a cross-origin frame cannot call
    // back into the page. The frame contents and the blocked-response check above are their
    // evidence.)
    for key in ["ws", "sse", "lp", "poll"] {
        let log = state["log"][key].as_array().cloned().unwrap_or_default();
        assert_eq!(count(&log, "message"), 0, "{key} received nothing: {state}");
    }
    driver.quit().await;
}
