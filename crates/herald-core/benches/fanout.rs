//! Micro-benchmark of the hot path: publish → assign a position → encode the envelope once →
//! hand the shared message to N subscriber outboxes (by the publisher, or in one share for the
//! connection thread that holds them, as a server does for channels of more than 32) → each
//! subscriber takes its batch and the pre-built WebSocket frame. Run with
//! `cargo bench -p herald-core`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use herald_core::{
    ChannelCursor, ChannelId, Engine, HistoryLimits, Left, Outbox, Payload, Share, ShareBacklog,
    ShareQueues,
};

fn main() {
    divan::main();
}

fn engine_with_subscribers(n: usize) -> (Engine, ChannelId, Vec<Arc<Outbox>>) {
    let engine = Engine::in_memory(HistoryLimits::default());
    let cid = ChannelId::parse("bench").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outboxes: Vec<_> = (0..n)
        .map(|_| {
            let outbox = Outbox::new(1024);
            runtime
                .block_on(engine.subscribe(&outbox, &cid, ChannelCursor::Latest))
                .unwrap();
            outbox
        })
        .collect();
    (engine, cid, outboxes)
}

/// One publish fanned out to `n` subscribers, including each subscriber draining its outbox
/// and taking the shared frame.
#[divan::bench(args = [1, 100, 2000])]
fn publish_and_fan_out(bencher: divan::Bencher, n: usize) {
    let (engine, cid, outboxes) = engine_with_subscribers(n);
    let publish = publisher(engine, cid, n);
    bencher.bench_local(|| {
        publish();
        take_all(&outboxes);
    });
}

/// Publishes a 100-byte message and checks that all `n` subscribers were counted.
fn publisher(engine: Engine, cid: ChannelId, n: usize) -> impl Fn() {
    let payload = Payload::from_text(&[b'x'; 100]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    move || {
        let published = runtime.block_on(engine.publish(&cid, &payload)).unwrap();
        assert_eq!(published.subscribers, n);
    }
}

/// Each subscriber takes its batch and the shared frame of each message in it.
fn take_all(outboxes: &[Arc<Outbox>]) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut batch = Vec::new();
    for outbox in outboxes {
        let _ = outbox.poll_drain(&mut cx, &mut batch);
        for message in batch.drain(..) {
            divan::black_box(message.websocket_frame());
        }
    }
}

/// The queue of one connection thread, kept for the benchmark to write.
#[derive(Default)]
struct OneThread(Mutex<Vec<Share>>);

impl ShareQueues for OneThread {
    fn threads(&self) -> u16 {
        1
    }

    fn send(&self, share: Share) -> Result<(), Share> {
        self.0.lock().unwrap().push(share);
        Ok(())
    }
}

/// [`publish_and_fan_out`] with the subscribers held by connection thread 0 (this one): the
/// publish hands them over as a share, which the thread then writes.
#[divan::bench(args = [100, 2000])]
fn publish_and_fan_out_in_shares(bencher: divan::Bencher, n: usize) {
    herald_core::home_thread::set_current(0);
    let (engine, cid, outboxes) = engine_with_subscribers(n);
    let queue = Arc::new(OneThread::default());
    engine.hub().share_with(queue.clone());
    let publish = publisher(engine, cid, n);
    let mut backlog = ShareBacklog::default();
    bencher.bench_local(|| {
        publish();
        for share in queue.0.lock().unwrap().drain(..) {
            backlog.push(share);
        }
        assert_eq!(backlog.step(usize::MAX), Left::Nothing);
        take_all(&outboxes);
    });
}

/// Validating and compacting a JSON publish body.
#[divan::bench]
fn json_payload(bencher: divan::Bencher) {
    let body =
        br#"{"user": "alice", "text": "hello there, this is a chat message", "n": [1, 2, 3]}"#;
    bencher.bench(|| Payload::from_json(divan::black_box(body)).unwrap());
}
