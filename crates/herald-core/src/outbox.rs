//! The bounded outgoing queue of one connection.
//!
//! Every connection, whatever its transport and however many channels it follows, has exactly
//! one [`Outbox`]. The hub pushes shared messages into it without blocking; the transport drains
//! everything queued in one go and writes it as one batch. An idle outbox holds no allocation
//! (an empty `VecDeque` does not allocate). When a consumer falls more than `capacity` messages
//! behind, the queue is emptied and marked overflowed: the transport ends the connection with a
//! reason and the client resumes from history with its cursor. A slow reader therefore never
//! grows memory without bound, and never slows the publisher or other subscribers.
//!
//! A connection that can write without blocking (a WebSocket over TCP) may also install a
//! [`DirectDelivery`]: when nothing is queued and the connection is not writing, the publisher
//! hands the message straight to it — one non-blocking write from the publishing thread, with
//! no task wake-up, no scheduling and no queue. Whatever it cannot finish (a full socket, a
//! message that needs the connection's judgement) goes back through the queue, in order.
//!
//! The outbox also carries [`Signals`] — a timer tick, a request to close — so that a
//! connection waits on exactly one thing of its own besides its socket. Server-wide timers and
//! shutdown raise signals on every outbox instead of every connection registering with shared
//! timers and notifiers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::message::Message;

/// One connection's queue of messages waiting to be written.
pub struct Outbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    signals: AtomicU8,
    /// Set (under the state's lock) when the queue overflowed; never cleared. Readable without
    /// the lock (see [`Outbox::has_overflowed`]).
    overflowed: AtomicBool,
    /// The connection thread the outbox was made on (see [`crate::home_thread`]).
    home: Option<u16>,
    capacity: usize,
}

/// Out-of-band signals to a connection, raised with [`Outbox::raise`] and returned by
/// [`Outbox::poll_drain`]. A set of bits; several may arrive together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signals(u8);

impl Signals {
    /// No signal.
    pub const NONE: Self = Self(0);
    /// A periodic timer ticked (keep-alive, ping).
    pub const TICK: Self = Self(1);
    /// The connection should end (server shutdown).
    pub const CLOSE: Self = Self(2);
    /// A deadline of the connection may have passed (its access token's expiry): the
    /// connection re-checks it and ends if it has.
    pub const EXPIRE: Self = Self(4);
    /// The deadline the connection was registered with has passed (a long poll's timeout).
    pub const DEADLINE: Self = Self(8);

    /// The bits, to keep in an atomic.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The signals of `bits` (as returned by [`Signals::bits`]).
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// True if every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// True when no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Signals {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

struct State {
    items: VecDeque<Arc<Message>>,
    /// The consumer is writing (or about to): no direct delivery may interleave.
    busy: bool,
    /// The unwritten rest of a direct delivery; the consumer writes it before anything else.
    pending: Option<Bytes>,
    direct: Option<Arc<dyn DirectDelivery>>,
}

/// Immediate delivery from the publisher's thread; see the module documentation.
pub trait DirectDelivery: Send + Sync {
    /// Delivers `message` now if possible, without blocking. Called with the outbox locked, and
    /// only when nothing is queued, nothing is pending and the consumer is not writing.
    fn deliver(&self, message: &Arc<Message>) -> DirectOutcome;

    /// Delivers a run of `messages`, oldest first, as far as possible without blocking (one
    /// system call for all of them is the point: override it). Called as
    /// [`DirectDelivery::deliver`] is, with two messages or more ([`Outbox::push_run`] hands a
    /// single one to `deliver`). The default delivers them one by one.
    fn deliver_run(&self, messages: &[Arc<Message>]) -> RunOutcome {
        for (i, message) in messages.iter().enumerate() {
            match self.deliver(message) {
                DirectOutcome::Done => {}
                DirectOutcome::Queue => {
                    return RunOutcome {
                        taken: i,
                        rest: None,
                    }
                }
                DirectOutcome::Partial(rest) => {
                    return RunOutcome {
                        taken: i + 1,
                        rest: Some(rest),
                    }
                }
            }
        }
        RunOutcome {
            taken: messages.len(),
            rest: None,
        }
    }
}

/// What became of a run of direct deliveries ([`DirectDelivery::deliver_run`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// How many of the messages, from the first, were taken; the others must be queued.
    pub taken: usize,
    /// The unwritten bytes of the last message taken, which the consumer writes first.
    pub rest: Option<Bytes>,
}

impl RunOutcome {
    /// For a run whose messages are `lens` bytes each, written in one go of which the socket
    /// took `written` bytes: how many messages were taken (wholly, or the last one in part:
    /// at least one, since a message whose write was tried is the connection's to finish), and
    /// where the last one taken was cut, if it was.
    pub fn after_write(
        lens: impl IntoIterator<Item = usize>,
        mut written: usize,
    ) -> (usize, Option<usize>) {
        let mut taken = 0;
        for len in lens {
            if written == 0 && taken > 0 {
                // The write ended exactly after a message: the rest were not touched.
                return (taken, None);
            }
            taken += 1;
            if written < len {
                return (taken, Some(written));
            }
            written -= len;
        }
        (taken, None)
    }
}

/// A single direct delivery as a run of one.
impl From<DirectOutcome> for RunOutcome {
    fn from(outcome: DirectOutcome) -> Self {
        match outcome {
            DirectOutcome::Done => Self {
                taken: 1,
                rest: None,
            },
            DirectOutcome::Queue => Self::default(),
            DirectOutcome::Partial(rest) => Self {
                taken: 1,
                rest: Some(rest),
            },
        }
    }
}

/// What became of a direct delivery.
#[derive(Debug)]
pub enum DirectOutcome {
    /// Handled completely.
    Done,
    /// Not handled: queue the message for the consumer.
    Queue,
    /// Partly written: the consumer must write these bytes before anything else.
    Partial(Bytes),
}

/// What [`Outbox::poll_drain`] hands the consumer besides the messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Signals raised since the last drain.
    pub signals: Signals,
    /// Bytes of a partial direct delivery, to write first.
    pub pending: Option<Bytes>,
}

/// The consumer fell too far behind and its queue was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("slow consumer: more than {0} messages waiting to be written")]
pub struct Overflow(pub usize);

impl Outbox {
    /// A new, empty outbox that holds at most `capacity` (≥ 1) waiting messages.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                busy: false,
                pending: None,
                direct: None,
            }),
            waker: AtomicWaker::new(),
            signals: AtomicU8::new(0),
            overflowed: AtomicBool::new(false),
            home: crate::home_thread::current(),
            capacity: capacity.max(1),
        })
    }

    /// True once the queue overflowed: the outbox takes no more messages. Read without the
    /// lock, so a hand-over racing with this call may make it true just after.
    pub fn has_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// The connection thread the outbox was made on, if any (see [`crate::home_thread`]).
    pub fn home(&self) -> Option<u16> {
        self.home
    }

    /// Installs (or removes) the direct delivery path.
    pub fn set_direct(&self, direct: Option<Arc<dyn DirectDelivery>>) {
        self.state.lock().direct = direct;
    }

    /// Hands `message` to the connection: directly when possible, else through the queue.
    /// Returns false if the outbox overflowed and the message was not taken.
    pub fn push(&self, message: &Arc<Message>) -> bool {
        self.push_run(std::slice::from_ref(message), true)
    }

    /// Hands `message` to the connection through the queue only, for the consumer's own task
    /// to write (fan-out work the publisher leaves to other threads).
    pub fn push_queued(&self, message: &Arc<Message>) -> bool {
        self.push_run(std::slice::from_ref(message), false)
    }

    /// Hands a run of messages of one channel, oldest first, to the connection: directly as
    /// far as possible when `direct_allowed` (one write for all of them where the connection
    /// can; a single message goes to [`DirectDelivery::deliver`]), the rest through the queue.
    /// Returns false if the outbox overflowed and they were not taken.
    pub fn push_run(&self, messages: &[Arc<Message>], direct_allowed: bool) -> bool {
        if messages.is_empty() {
            return true;
        }
        let accepted = {
            let mut state = self.state.lock();
            if self.overflowed.load(Ordering::Relaxed) {
                return false;
            }
            let idle = state.items.is_empty() && !state.busy && state.pending.is_none();
            let mut left = messages;
            if direct_allowed && idle {
                if let Some(direct) = &state.direct {
                    let outcome = match messages {
                        [message] => RunOutcome::from(direct.deliver(message)),
                        _ => direct.deliver_run(messages),
                    };
                    left = &messages[outcome.taken.min(messages.len())..];
                    state.pending = outcome.rest;
                    if left.is_empty() && state.pending.is_none() {
                        return true;
                    }
                }
            }
            if state.items.len() + left.len() > self.capacity {
                self.overflowed.store(true, Ordering::Relaxed);
                state.items = VecDeque::new();
                false
            } else {
                state.items.extend(left.iter().cloned());
                true
            }
        };
        self.waker.wake();
        accepted
    }

    /// Marks the consumer as writing, so no direct delivery interleaves with its bytes, and
    /// returns the pending bytes it must write first.
    pub fn begin_write(&self) -> Option<Bytes> {
        let mut state = self.state.lock();
        state.busy = true;
        state.pending.take()
    }

    /// Marks the consumer as done writing: direct delivery may resume.
    pub fn end_write(&self) {
        self.state.lock().busy = false;
    }

    /// Raises `signals` and wakes the consumer.
    pub fn raise(&self, signals: Signals) {
        self.signals.fetch_or(signals.0, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Moves every queued message into `out` and returns the signals raised and the pending
    /// bytes; pending while there is nothing of either. With a direct path installed, a
    /// successful drain also marks the consumer as writing (see [`Outbox::end_write`]), in the
    /// same step, so no direct delivery can overtake what was just drained.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Arc<Message>>,
    ) -> Poll<Result<Drained, Overflow>> {
        if let Some(result) = self.try_drain(out) {
            return Poll::Ready(result);
        }
        self.waker.register(cx.waker());
        match self.try_drain(out) {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }

    /// Waits for messages, signals or pending bytes; see [`Outbox::poll_drain`].
    pub async fn drain(&self, out: &mut Vec<Arc<Message>>) -> Result<Drained, Overflow> {
        std::future::poll_fn(|cx| self.poll_drain(cx, out)).await
    }

    fn try_drain(&self, out: &mut Vec<Arc<Message>>) -> Option<Result<Drained, Overflow>> {
        let signals = Signals(self.signals.swap(0, Ordering::AcqRel));
        let mut state = self.state.lock();
        if self.overflowed.load(Ordering::Relaxed) {
            return Some(Err(Overflow(self.capacity)));
        }
        if state.items.is_empty() && state.pending.is_none() && signals.is_empty() {
            return None;
        }
        out.extend(state.items.drain(..));
        if state.items.capacity() > 64 {
            // A burst is over; give its memory back rather than keep it while idle.
            state.items = VecDeque::new();
        }
        if state.direct.is_some() {
            state.busy = true;
        }
        Some(Ok(Drained {
            signals,
            pending: state.pending.take(),
        }))
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelId, Epoch, Payload, Position};

    fn message(offset: u64) -> Arc<Message> {
        Message::new(
            ChannelId::parse("c").expect("cid"),
            Position {
                epoch: Epoch::from_u64(1),
                offset,
            },
            0,
            &Payload::from_text(b"x").expect("payload"),
        )
    }

    #[tokio::test]
    async fn drains_everything_in_order() {
        let outbox = Outbox::new(10);
        for i in 1..=3 {
            assert!(outbox.push(&message(i)));
        }
        let mut out = Vec::new();
        let drained = outbox.drain(&mut out).await.expect("no overflow");
        assert!(drained.signals.is_empty());
        let offsets: Vec<u64> = out.iter().map(|m| m.offset()).collect();
        assert_eq!(offsets, [1, 2, 3]);
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn wakes_a_waiting_consumer() {
        let outbox = Outbox::new(10);
        let producer = Arc::clone(&outbox);
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            producer.drain(&mut out).await.map(|_| out.len())
        });
        tokio::task::yield_now().await;
        outbox.push(&message(1));
        assert_eq!(task.await.expect("joined"), Ok(1));
    }

    #[tokio::test]
    async fn signals_wake_the_consumer_and_arrive_once() {
        let outbox = Outbox::new(10);
        let consumer = Arc::clone(&outbox);
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            consumer.drain(&mut out).await
        });
        tokio::task::yield_now().await;
        outbox.raise(Signals::TICK);
        outbox.raise(Signals::CLOSE);
        let signals = task.await.expect("joined").expect("no overflow").signals;
        assert!(signals.contains(Signals::CLOSE));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        let again = outbox.poll_drain(&mut cx, &mut out);
        // Both signals were taken by the first drain.
        assert!(again.is_pending());
        assert!(outbox.poll_drain(&mut cx, &mut out).is_pending());
        outbox.push(&message(1));
        outbox.raise(Signals::TICK);
        let drained = outbox.poll_drain(&mut cx, &mut out);
        let expected = Drained {
            signals: Signals::TICK,
            pending: None,
        };
        assert_eq!(drained, Poll::Ready(Ok(expected)));
        assert_eq!(out.len(), 1);
    }

    /// A direct path that records what it was given and answers as told.
    struct Recorder {
        answer: Mutex<Vec<DirectOutcome>>,
        seen: Mutex<Vec<u64>>,
    }

    impl DirectDelivery for Recorder {
        fn deliver(&self, message: &Arc<Message>) -> DirectOutcome {
            self.seen.lock().push(message.offset());
            self.answer.lock().pop().unwrap_or(DirectOutcome::Done)
        }
    }

    #[test]
    fn direct_delivery_only_when_idle_and_in_order() {
        let outbox = Outbox::new(10);
        let recorder = Arc::new(Recorder {
            answer: Mutex::new(vec![DirectOutcome::Queue, DirectOutcome::Done]),
            seen: Mutex::new(Vec::new()),
        });
        outbox.set_direct(Some(recorder.clone()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();

        assert!(outbox.push(&message(1)), "delivered directly");
        assert!(outbox.is_empty());
        assert!(outbox.push(&message(2)), "direct path declines: queued");
        assert_eq!(outbox.len(), 1);
        assert!(
            outbox.push(&message(3)),
            "queue not empty: queued, not direct"
        );
        assert_eq!(*recorder.seen.lock(), [1, 2]);

        // Draining marks the consumer busy: nothing may overtake 2 and 3.
        assert!(outbox.poll_drain(&mut cx, &mut out).is_ready());
        assert!(outbox.push(&message(4)));
        assert_eq!(*recorder.seen.lock(), [1, 2]);
        assert_eq!(outbox.len(), 1);
        outbox.end_write();
        assert!(
            outbox.push(&message(5)),
            "4 still queued: 5 queues behind it"
        );
        assert_eq!(outbox.len(), 2);
        out.clear();
        assert!(outbox.poll_drain(&mut cx, &mut out).is_ready());
        let offsets: Vec<u64> = out.iter().map(|m| m.offset()).collect();
        assert_eq!(offsets, [4, 5]);
        outbox.end_write();
        assert!(outbox.push(&message(6)));
        assert_eq!(*recorder.seen.lock(), [1, 2, 6]);
    }

    #[test]
    fn partial_direct_writes_are_finished_by_the_consumer_first() {
        let outbox = Outbox::new(10);
        let recorder = Arc::new(Recorder {
            answer: Mutex::new(vec![DirectOutcome::Partial(Bytes::from_static(b"rest"))]),
            seen: Mutex::new(Vec::new()),
        });
        outbox.set_direct(Some(recorder.clone()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        assert!(outbox.push(&message(1)));
        assert!(outbox.push(&message(2)), "pending bytes: queue");
        let Poll::Ready(Ok(drained)) = outbox.poll_drain(&mut cx, &mut out) else {
            panic!("drain ready");
        };
        assert_eq!(drained.pending.as_deref(), Some(&b"rest"[..]));
        assert_eq!(out.len(), 1);
        outbox.end_write();
        assert_eq!(outbox.begin_write(), None);
    }

    /// A direct path that takes the first `takes` messages of a run, cutting the last one
    /// taken when `cut` (its rest: `b"rest"`), and records the runs it is offered.
    struct Taker {
        takes: usize,
        cut: bool,
        offered: Mutex<Vec<Vec<u64>>>,
    }

    impl DirectDelivery for Taker {
        fn deliver(&self, message: &Arc<Message>) -> DirectOutcome {
            self.offered.lock().push(vec![message.offset()]);
            DirectOutcome::Done
        }

        fn deliver_run(&self, messages: &[Arc<Message>]) -> RunOutcome {
            self.offered
                .lock()
                .push(messages.iter().map(|m| m.offset()).collect());
            RunOutcome {
                taken: self.takes.min(messages.len()),
                rest: self.cut.then(|| Bytes::from_static(b"rest")),
            }
        }
    }

    fn taker(takes: usize, cut: bool) -> Arc<Taker> {
        Arc::new(Taker {
            takes,
            cut,
            offered: Mutex::new(Vec::new()),
        })
    }

    fn offsets(out: &[Arc<Message>]) -> Vec<u64> {
        out.iter().map(|m| m.offset()).collect()
    }

    #[test]
    fn a_run_goes_to_the_direct_path_whole_and_what_it_leaves_is_queued_in_order() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let run: Vec<_> = (1..=4).map(message).collect();

        // Taken whole: nothing queued, nothing pending.
        let outbox = Outbox::new(10);
        let direct = taker(4, false);
        outbox.set_direct(Some(direct.clone()));
        assert!(outbox.push_run(&run, true));
        assert_eq!(*direct.offered.lock(), [vec![1, 2, 3, 4]]);
        assert!(outbox.is_empty());
        assert!(outbox.poll_drain(&mut cx, &mut Vec::new()).is_pending());

        // Two taken, the second cut: its rest comes first, then 3 and 4.
        let outbox = Outbox::new(10);
        outbox.set_direct(Some(taker(2, true)));
        assert!(outbox.push_run(&run, true));
        let mut out = Vec::new();
        let Poll::Ready(Ok(drained)) = outbox.poll_drain(&mut cx, &mut out) else {
            panic!("drain ready");
        };
        assert_eq!(drained.pending.as_deref(), Some(&b"rest"[..]));
        assert_eq!(offsets(&out), [3, 4]);
        outbox.end_write();

        // Not offered directly while something is queued, nor when not allowed.
        let outbox = Outbox::new(10);
        let direct = taker(4, false);
        outbox.set_direct(Some(direct.clone()));
        assert!(outbox.push_run(&run[..2], false));
        assert!(outbox.push_run(&run[2..], true));
        assert!(direct.offered.lock().is_empty());
        let mut out = Vec::new();
        assert!(outbox.poll_drain(&mut cx, &mut out).is_ready());
        assert_eq!(offsets(&out), [1, 2, 3, 4]);
        // A run of one is a plain push; an empty one is nothing.
        outbox.end_write();
        assert!(outbox.push_run(&run[..1], true));
        assert!(outbox.push_run(&[], true));
        assert_eq!(*direct.offered.lock(), [vec![1]]);
    }

    #[test]
    fn after_write_tells_which_messages_a_write_took() {
        let lens = [3, 4, 5];
        assert_eq!(RunOutcome::after_write(lens, 12), (3, None), "all");
        assert_eq!(RunOutcome::after_write(lens, 7), (2, None), "two exactly");
        assert_eq!(
            RunOutcome::after_write(lens, 8),
            (3, Some(1)),
            "into the third"
        );
        assert_eq!(RunOutcome::after_write(lens, 2), (1, Some(2)));
        assert_eq!(
            RunOutcome::after_write(lens, 0),
            (1, Some(0)),
            "a write tried is the connection's to finish"
        );
    }

    #[test]
    fn a_run_beyond_the_capacity_overflows() {
        let outbox = Outbox::new(3);
        let run: Vec<_> = (1..=4).map(message).collect();
        assert!(outbox.push_run(&run[..2], true));
        assert!(!outbox.push_run(&run[2..], true), "2 + 2 > 3");
        assert!(outbox.has_overflowed());
        assert_eq!(outbox.len(), 0);
        assert!(!outbox.push_run(&run[..2], true));
    }

    #[tokio::test]
    async fn overflow_is_reported_and_frees_the_queue() {
        let outbox = Outbox::new(2);
        assert!(outbox.push(&message(1)));
        assert!(outbox.push(&message(2)));
        assert!(!outbox.push(&message(3)));
        assert!(!outbox.push(&message(4)));
        assert_eq!(outbox.len(), 0);
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Err(Overflow(2)));
        assert!(out.is_empty());
    }
}
