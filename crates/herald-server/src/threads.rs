//! Connection threads: every accepted connection lives, for its whole life, on one of
//! `workers` threads, each running its own single-threaded tokio runtime (its own epoll, its
//! own timers, its own run queue).
//!
//! Why not tokio's work-stealing runtime: with it, a worker that takes a socket event may wake
//! an idle peer to steal work, which the peer mostly does not find before it parks again. For
//! a push server whose requests are many and short, those wake-ups are a large part of the
//! cost. With 1,000 channels × 5 WebSocket subscribers and 2,000 publishes/s (the `many`
//! benchmark), `bench/ab.sh --syscalls` counted 0.6 `futex` calls per publish on two
//! work-stealing workers and none on two connection threads, and server CPU per delivery went
//! from 16.5 to 14.1 µs and from 14.8 to 13.9 µs in two A/Bs of 3 rounds (BENCHMARKS.md).
//!
//! The threads share nothing but the hub and the engine. A publisher writes directly to any
//! idle subscriber's socket of a small channel, whatever thread holds it (see
//! `herald_core::Hub`); only a subscriber whose own task must write (a full socket, a backlog)
//! is woken across threads. A large channel's fan-out is handed to each thread as one share
//! of the subscribers it holds (`herald_core::home_thread`), which a task of that thread,
//! `write_shares`, writes between its connections' turns; see `herald_core`'s `shares`
//! module for why and for how order is kept. [`ConnectionThreads::share_queues`] is that
//! hand-over. The cost of threads of their own: a thread's connections wait while the OS runs
//! something else on its core, where a work-stealing worker would have taken them; publishing
//! flat out over 8 connections, with the load generator on the same two cores, reached 15–21 %
//! fewer publishes/s (BENCHMARKS.md). Most of that is sleeping and waking: a thread holding 4 of the
//! 8 connections runs out of work and sleeps far more often than one holding all 8, and on
//! a virtual machine each wake-up costs microseconds (the kernel's context switch took 22 % of
//! the server's profile with two threads, 1 % with one).
//!
//! Connections are dealt to the threads in turn, as nginx's and Netty's event loops are. The
//! accept loop, the tickers and the engine's own tasks stay on the runtime that started the
//! server.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use herald_core::{BoxFuture, Left, Share, ShareBacklog, ShareQueues};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The connection threads of one server. Dropping it stops them: each thread's runtime is
/// dropped on its own thread, which cancels the tasks still on it and closes their sockets.
pub struct ConnectionThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    shares: Arc<ThreadShares>,
}

/// The queue of fan-out shares of each connection thread (see the module documentation), with
/// how many shares each holds.
struct ThreadShares {
    queues: Vec<mpsc::UnboundedSender<Share>>,
    /// Per thread: shares it is behind with (`herald_core::ShareBacklog::behind`, as of its
    /// last step, plus those sent since).
    depths: Box<[AtomicUsize]>,
    /// Woken when a thread that had fallen behind is back within [`BACKLOG_MAX`].
    room: Notify,
}

/// The most shares a thread may have waiting before publishers wait for it (see
/// `herald_core::Hub::room`). Behind by this many messages of a channel, a thread writes them
/// to each subscriber in runs (`herald_core::ShareBacklog`), which is what keeps up at
/// saturation; further behind, messages would only wait longer.
const BACKLOG_MAX: usize = 32;

/// The longest a publisher waits for room: a safety net for a thread that stops writing (its
/// runtime shutting down), not a pace.
const ROOM_WAIT_MAX: Duration = Duration::from_secs(1);

impl ShareQueues for ThreadShares {
    fn threads(&self) -> u16 {
        u16::try_from(self.queues.len()).unwrap_or(u16::MAX)
    }

    fn send(&self, share: Share) -> Result<(), Share> {
        let thread = usize::from(share.thread());
        match self.queues.get(thread) {
            Some(queue) => {
                queue.send(share).map_err(|failed| failed.0)?;
                self.depths[thread].fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            None => Err(share),
        }
    }

    fn has_room(&self) -> bool {
        self.depths
            .iter()
            .all(|depth| depth.load(Ordering::Relaxed) <= BACKLOG_MAX)
    }

    fn room(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let caught_up = async {
                loop {
                    let notified = self.room.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if self.has_room() {
                        return;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(ROOM_WAIT_MAX, caught_up).await;
        })
    }
}

/// How many subscribers of a share a thread writes before it serves its connections again.
const SHARE_STEP: usize = 256;

/// Writes the shares handed to thread `index`, in the order they came, a step at a time, each
/// channel at most once per `window` (see `herald_core::ShareBacklog`); those that arrive
/// while it writes or waits join the backlog.
async fn write_shares(
    mut queue: mpsc::UnboundedReceiver<Share>,
    shares: Arc<ThreadShares>,
    index: usize,
    window: Duration,
) {
    let mut backlog = ShareBacklog::paced(window);
    let mut left = Left::Nothing;
    loop {
        let received = match left {
            Left::Nothing => Some(queue.recv().await),
            Left::Until(due) => tokio::select! {
                share = queue.recv() => Some(share),
                () = tokio::time::sleep_until(due.into()) => None,
            },
            Left::Work => None,
        };
        match received {
            Some(Some(share)) => backlog.push(share),
            Some(None) => return,
            None => {}
        }
        while let Ok(share) = queue.try_recv() {
            backlog.push(share);
        }
        left = backlog.step(SHARE_STEP);
        // Shares waiting for their channel's window are on time, not behind.
        let depth = backlog.behind(std::time::Instant::now()) + queue.len();
        shares.depths[index].store(depth, Ordering::Relaxed);
        if depth <= BACKLOG_MAX {
            shares.room.notify_waiters();
        }
        if left == Left::Work {
            // The connections' turn before the next step.
            tokio::task::yield_now().await;
        }
    }
}

impl ConnectionThreads {
    /// Starts `count` threads (at least one), named `herald-conn-N`, each writing one large
    /// channel's subscribers at most once per `fanout_window`.
    pub fn start(count: usize, fanout_window: Duration) -> io::Result<Self> {
        let stop = CancellationToken::new();
        // The threads log where the thread that starts them does: to its scoped subscriber,
        // if it has one (an embedding program's or a test's), else to the global one.
        let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
        let mut handles = Vec::new();
        let count = u16::try_from(count.max(1)).unwrap_or(u16::MAX);
        let (queues, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let shares = Arc::new(ThreadShares {
            queues,
            depths: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            room: Notify::new(),
        });
        for (index, receiver) in (0..count).zip(receivers) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            runtime.spawn(write_shares(
                receiver,
                Arc::clone(&shares),
                usize::from(index),
                fanout_window,
            ));
            let stop = stop.clone();
            let dispatch = dispatch.clone();
            // Not joined: the threads end by themselves once `stop` is cancelled, and joining
            // them could block an async task.
            let _detached: JoinHandle<()> = std::thread::Builder::new()
                .name(format!("herald-conn-{index}"))
                .spawn(move || {
                    let _logs = tracing::dispatcher::set_default(&dispatch);
                    herald_core::home_thread::set_current(index);
                    runtime.block_on(stop.cancelled());
                })?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
            shares,
        })
    }

    /// Where a hub hands the threads their shares of large fan-outs.
    pub fn share_queues(&self) -> Arc<dyn ShareQueues> {
        self.shares.clone()
    }

    /// The thread for the next connection: each in turn.
    pub fn next(&self) -> &Handle {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[turn % self.handles.len()]
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{ChannelId, Epoch, Hub, Load, Message, Outbox, Payload, Position};
    use std::ops::RangeInclusive;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Sends on drop: tells the test that the task holding it was dropped.
    struct Dropped(mpsc::Sender<()>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    #[test]
    fn connections_are_dealt_in_turn_and_run_on_their_threads() {
        let threads = ConnectionThreads::start(2, Duration::ZERO).expect("threads");
        let (sender, names) = mpsc::channel();
        for _ in 0..4 {
            let sender = sender.clone();
            threads.next().spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                sender
                    .send((name, herald_core::home_thread::current()))
                    .expect("send");
            });
        }
        let seen: Vec<_> = (0..4)
            .map(|_| names.recv_timeout(Duration::from_secs(5)).expect("ran"))
            .collect();
        for index in [0u16, 1] {
            let on_it = seen
                .iter()
                .filter(|(name, home)| {
                    name.as_deref() == Some(&*format!("herald-conn-{index}"))
                        && *home == Some(index)
                })
                .count();
            assert_eq!(on_it, 2, "thread {index}: {seen:?}");
        }
    }

    #[test]
    fn dropping_the_threads_ends_the_tasks_still_on_them() {
        let threads = ConnectionThreads::start(1, Duration::ZERO).expect("threads");
        let (sender, dropped) = mpsc::channel();
        let guard = Dropped(sender);
        threads.next().spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        assert!(dropped.recv_timeout(Duration::from_millis(100)).is_err());
        drop(threads);
        dropped
            .recv_timeout(Duration::from_secs(5))
            .expect("the task was dropped with its thread's runtime");
    }

    /// A direct path whose first delivery blocks its thread until the test releases it, then
    /// takes everything.
    struct Gate(parking_lot::Mutex<Option<mpsc::Receiver<()>>>);

    impl herald_core::DirectDelivery for Gate {
        fn deliver(&self, _: &Arc<herald_core::Message>) -> herald_core::DirectOutcome {
            if let Some(release) = self.0.lock().take() {
                let _ = release.recv_timeout(Duration::from_secs(10));
            }
            herald_core::DirectOutcome::Done
        }
    }

    /// A hub sharing with `threads`, and 40 subscribers of `cid` (a channel large enough to be
    /// shared) held by its first thread, each given `direct` if any.
    fn large_channel(
        threads: &ConnectionThreads,
        cid: &ChannelId,
        direct: Option<Arc<dyn herald_core::DirectDelivery>>,
    ) -> (Hub, Vec<Arc<Outbox>>) {
        let hub = Hub::new();
        hub.share_with(threads.share_queues());
        let (made, outboxes) = mpsc::channel();
        threads.next().spawn(async move {
            let outboxes: Vec<_> = (0..40).map(|_| Outbox::new(1000)).collect();
            made.send(outboxes).expect("send");
        });
        let outboxes = outboxes.recv_timeout(Duration::from_secs(5)).expect("made");
        for outbox in &outboxes {
            outbox.set_direct(direct.clone());
            hub.subscribe(cid, outbox);
        }
        (hub, outboxes)
    }

    /// Publishes the messages at `offsets` of `cid` through `hub`; each reaches all
    /// `subscribers`.
    fn publish(hub: &Hub, cid: &ChannelId, offsets: RangeInclusive<u64>, subscribers: usize) {
        let payload = Payload::from_text(b"x").expect("payload");
        for offset in offsets {
            let position = Position {
                epoch: Epoch::from_u64(1),
                offset,
            };
            let message = Message::new(cid.clone(), position, 0, &payload);
            assert_eq!(hub.deliver(&message, Load::Quiet), subscribers);
        }
    }

    #[test]
    fn publishers_wait_for_a_thread_far_behind_with_its_shares_until_it_catches_up() {
        let threads = ConnectionThreads::start(1, Duration::ZERO).expect("threads");
        let cid = ChannelId::parse("behind").expect("cid");
        let (release, released) = mpsc::channel();
        let gate = Arc::new(Gate(parking_lot::Mutex::new(Some(released))));
        let (hub, outboxes) = large_channel(&threads, &cid, Some(gate));
        publish(&hub, &cid, 1..=BACKLOG_MAX as u64 + 2, outboxes.len());
        let queues = threads.share_queues();
        assert!(!queues.has_room(), "the thread is stuck on its first share");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let waited = tokio::time::timeout(Duration::from_millis(200), hub.room()).await;
            assert!(
                waited.is_err(),
                "a publisher waits while the thread is behind"
            );
            release.send(()).expect("release");
            tokio::time::timeout(Duration::from_secs(5), hub.room())
                .await
                .expect("room");
        });
        assert!(queues.has_room(), "room because the thread caught up");
    }

    #[test]
    fn shares_waiting_for_their_channels_window_do_not_hold_publishers_back() {
        let threads = ConnectionThreads::start(1, Duration::from_secs(60)).expect("threads");
        let cid = ChannelId::parse("paced").expect("cid");
        let (hub, outboxes) = large_channel(&threads, &cid, None);
        let queues = threads.share_queues();
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // The first message is written at once and opens the channel's window.
        publish(&hub, &cid, 1..=1, outboxes.len());
        wait_for("the first message written", &|| {
            outboxes.iter().all(|o| o.len() == 1)
        });
        // More than the bound within the window: they wait for it, on time, and leave room.
        publish(&hub, &cid, 2..=BACKLOG_MAX as u64 + 2, outboxes.len());
        wait_for("room", &|| queues.has_room());
        assert!(
            outboxes.iter().all(|o| o.len() == 1),
            "the others wait for the window"
        );
    }

    #[test]
    fn at_least_one_thread() {
        let threads = ConnectionThreads::start(0, Duration::ZERO).expect("threads");
        let (sender, name) = mpsc::channel();
        threads.next().spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            sender.send(name).expect("send");
        });
        let name = name.recv_timeout(Duration::from_secs(5)).expect("ran");
        assert_eq!(name.as_deref(), Some("herald-conn-0"));
    }
}
