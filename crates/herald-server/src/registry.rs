//! Every live subscriber connection, by kind, so that server-wide events reach each of them
//! with one signal.
//!
//! WebSocket pings, stream keep-alives and shutdown are periodic or global. Rather than every
//! connection holding its own timer or registering with shared notifiers on each loop turn,
//! one ticker task walks this registry and raises a [`Signals`] bit on each connection's
//! [`Outbox`] — the one thing an idle connection already waits on.
//!
//! A connection waiting with a deadline (a long poll, a connection between requests) is on
//! the registry's [`Wheel`] instead, which rings it when its deadline passes and at shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;

use herald_core::{Outbox, Signals};
use parking_lot::Mutex;
use slab::Slab;
use tokio::time::Instant;

use crate::deadlines::{Place, Ring, Wheel};

const SHARDS: usize = 16;

type Shard = Mutex<Slab<(Kind, Arc<Outbox>)>>;

/// What a registered connection is, for kind-specific ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WebSocket: ticks are pings.
    WebSocket,
    /// An SSE or iframe stream: ticks are keep-alives.
    Stream,
    /// A waiting long-poll request: no ticks, a deadline and shutdown (see
    /// [`Registry::register_until`]).
    LongPoll,
}

/// The registry. See the module documentation.
pub struct Registry {
    shards: Box<[Shard]>,
    next_shard: AtomicUsize,
    deadlines: Wheel,
}

/// Keeps a connection registered until dropped.
pub struct Registration {
    registry: Arc<Registry>,
    place: Registered,
}

enum Registered {
    Shard { shard: usize, key: usize },
    Wheel(Place),
}

impl Registry {
    /// An empty registry whose deadlines ring within `granularity` after they pass.
    pub fn new(granularity: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Slab::new())).collect(),
            next_shard: AtomicUsize::new(0),
            deadlines: Wheel::new(granularity),
        }
    }

    /// The wheel of deadlines, for its ticker task.
    pub fn deadlines(&self) -> &Wheel {
        &self.deadlines
    }

    /// Registers `target` until `deadline`: it is rung with [`Signals::DEADLINE`] once the
    /// deadline has passed (within the wheel's granularity), and with every server-wide
    /// signal raised on all kinds (shutdown), never with a kind's ticks.
    pub fn register_until(
        self: &Arc<Self>,
        target: Arc<dyn Ring>,
        deadline: Instant,
    ) -> Registration {
        Registration {
            registry: Arc::clone(self),
            place: Registered::Wheel(self.deadlines.insert(target, deadline)),
        }
    }

    /// Registers `outbox` as a connection of `kind`.
    pub fn register(self: &Arc<Self>, kind: Kind, outbox: &Arc<Outbox>) -> Registration {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let key = self.shards[shard].lock().insert((kind, Arc::clone(outbox)));
        Registration {
            registry: Arc::clone(self),
            place: Registered::Shard { shard, key },
        }
    }

    /// Raises `signals` on every connection of `kind`; with `None`, on every connection,
    /// those waiting with a deadline too.
    pub fn raise(&self, kind: Option<Kind>, signals: Signals) {
        for shard in self.shards.iter() {
            for (_, (k, outbox)) in shard.lock().iter() {
                if kind.is_none_or(|kind| kind == *k) {
                    outbox.raise(signals);
                }
            }
        }
        if kind.is_none() {
            self.deadlines.ring_all(signals);
        }
    }

    /// Registered connections.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum::<usize>() + self.deadlines.len()
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        match self.place {
            Registered::Shard { shard, key } => {
                self.registry.shards[shard].lock().try_remove(key);
            }
            Registered::Wheel(place) => self.registry.deadlines.remove(place),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Drained;
    use std::task::{Context, Poll};

    #[test]
    fn signals_reach_the_right_kinds_and_registrations_end_on_drop() {
        let registry = Arc::new(Registry::new(Duration::from_secs(1)));
        let (ws, stream, poll) = (Outbox::new(4), Outbox::new(4), Outbox::new(4));
        let a = registry.register(Kind::WebSocket, &ws);
        let _b = registry.register(Kind::Stream, &stream);
        let c = registry.register_until(poll.clone(), Instant::now() + Duration::from_secs(60));
        assert_eq!(registry.len(), 3);
        registry.raise(Some(Kind::WebSocket), Signals::TICK);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        assert_eq!(
            ws.poll_drain(&mut cx, &mut out),
            Poll::Ready(Ok(Drained {
                signals: Signals::TICK,
                pending: None
            }))
        );
        assert!(stream.poll_drain(&mut cx, &mut out).is_pending());
        assert!(
            poll.poll_drain(&mut cx, &mut out).is_pending(),
            "no ticks on the wheel"
        );
        registry.raise(None, Signals::CLOSE);
        for outbox in [&stream, &poll] {
            assert_eq!(
                outbox.poll_drain(&mut cx, &mut out),
                Poll::Ready(Ok(Drained {
                    signals: Signals::CLOSE,
                    pending: None
                }))
            );
        }
        drop(a);
        drop(c);
        assert_eq!(registry.len(), 1);
    }
}
