//! Every live subscriber connection, by kind, so that server-wide events reach each of them
//! with one signal.
//!
//! WebSocket pings, stream keep-alives and shutdown are periodic or global. Rather than every
//! connection holding its own timer or registering with shared notifiers on each loop turn,
//! one ticker task walks this registry and raises a [`Signals`] bit on each connection's
//! [`Outbox`] — the one thing an idle connection already waits on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use herald_core::{Outbox, Signals};
use parking_lot::Mutex;
use slab::Slab;

const SHARDS: usize = 16;

type Shard = Mutex<Slab<(Kind, Arc<Outbox>)>>;

/// What a registered connection is, for kind-specific ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WebSocket: ticks are pings.
    WebSocket,
    /// An SSE or iframe stream: ticks are keep-alives.
    Stream,
    /// A waiting long-poll request: no ticks, only shutdown.
    LongPoll,
}

/// The registry. See the module documentation.
pub struct Registry {
    shards: Box<[Shard]>,
    next_shard: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Slab::new())).collect(),
            next_shard: AtomicUsize::new(0),
        }
    }
}

/// Keeps a connection registered until dropped.
pub struct Registration {
    registry: Arc<Registry>,
    shard: usize,
    key: usize,
}

impl Registry {
    /// Registers `outbox` as a connection of `kind`.
    pub fn register(self: &Arc<Self>, kind: Kind, outbox: &Arc<Outbox>) -> Registration {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let key = self.shards[shard].lock().insert((kind, Arc::clone(outbox)));
        Registration {
            registry: Arc::clone(self),
            shard,
            key,
        }
    }

    /// Raises `signals` on every connection of `kind` (all kinds when `None`).
    pub fn raise(&self, kind: Option<Kind>, signals: Signals) {
        for shard in self.shards.iter() {
            for (_, (k, outbox)) in shard.lock().iter() {
                if kind.is_none_or(|kind| kind == *k) {
                    outbox.raise(signals);
                }
            }
        }
    }

    /// Registered connections.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.shards[self.shard].lock().try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Drained;
    use std::task::{Context, Poll};

    #[test]
    fn signals_reach_the_right_kinds_and_registrations_end_on_drop() {
        let registry = Arc::new(Registry::default());
        let (ws, stream) = (Outbox::new(4), Outbox::new(4));
        let a = registry.register(Kind::WebSocket, &ws);
        let _b = registry.register(Kind::Stream, &stream);
        assert_eq!(registry.len(), 2);
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
        registry.raise(None, Signals::CLOSE);
        assert_eq!(
            stream.poll_drain(&mut cx, &mut out),
            Poll::Ready(Ok(Drained {
                signals: Signals::CLOSE,
                pending: None
            }))
        );
        drop(a);
        assert_eq!(registry.len(), 1);
    }
}
