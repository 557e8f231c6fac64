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
//! The outbox also carries [`Signals`] — a timer tick, a request to close — so that a
//! connection waits on exactly one thing of its own besides its socket. Server-wide timers and
//! shutdown raise signals on every outbox instead of every connection registering with shared
//! timers and notifiers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::message::Message;

/// One connection's queue of messages waiting to be written.
pub struct Outbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    signals: AtomicU8,
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
    overflowed: bool,
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
                overflowed: false,
            }),
            waker: AtomicWaker::new(),
            signals: AtomicU8::new(0),
            capacity: capacity.max(1),
        })
    }

    /// Queues `message`; returns false if it was not queued because the outbox overflowed.
    pub fn push(&self, message: &Arc<Message>) -> bool {
        let accepted = {
            let mut state = self.state.lock();
            if state.overflowed {
                return false;
            }
            if state.items.len() >= self.capacity {
                state.overflowed = true;
                state.items = VecDeque::new();
                false
            } else {
                state.items.push_back(Arc::clone(message));
                true
            }
        };
        self.waker.wake();
        accepted
    }

    /// Raises `signals` and wakes the consumer.
    pub fn raise(&self, signals: Signals) {
        self.signals.fetch_or(signals.0, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Moves every queued message into `out` and returns the signals raised since the last
    /// call; pending while there is neither a message nor a signal.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Arc<Message>>,
    ) -> Poll<Result<Signals, Overflow>> {
        if let Some(result) = self.try_drain(out) {
            return Poll::Ready(result);
        }
        self.waker.register(cx.waker());
        match self.try_drain(out) {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }

    /// Waits for messages or signals; moves every queued message into `out` and returns the
    /// signals.
    pub async fn drain(&self, out: &mut Vec<Arc<Message>>) -> Result<Signals, Overflow> {
        std::future::poll_fn(|cx| self.poll_drain(cx, out)).await
    }

    fn try_drain(&self, out: &mut Vec<Arc<Message>>) -> Option<Result<Signals, Overflow>> {
        let signals = Signals(self.signals.swap(0, Ordering::AcqRel));
        let mut state = self.state.lock();
        if state.overflowed {
            return Some(Err(Overflow(self.capacity)));
        }
        if state.items.is_empty() {
            return (!signals.is_empty()).then_some(Ok(signals));
        }
        out.extend(state.items.drain(..));
        if state.items.capacity() > 64 {
            // A burst is over; give its memory back rather than keep it while idle.
            state.items = VecDeque::new();
        }
        Some(Ok(signals))
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
        let signals = outbox.drain(&mut out).await.expect("no overflow");
        assert!(signals.is_empty());
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
        let signals = task.await.expect("joined").expect("no overflow");
        assert!(signals.contains(Signals::CLOSE));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        let again = outbox.poll_drain(&mut cx, &mut out);
        assert!(again.is_pending() || again == Poll::Ready(Ok(Signals::TICK)));
        assert!(outbox.poll_drain(&mut cx, &mut out).is_pending());
        outbox.push(&message(1));
        outbox.raise(Signals::TICK);
        assert_eq!(
            outbox.poll_drain(&mut cx, &mut out),
            Poll::Ready(Ok(Signals::TICK))
        );
        assert_eq!(out.len(), 1);
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
