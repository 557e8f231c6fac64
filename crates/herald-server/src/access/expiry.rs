//! One shared schedule of token deadlines, so that streams end when their token expires
//! without a timer per connection.
//!
//! A stream opened with a token puts `(deadline, id) → outbox` into one ordered map; one task
//! ([`ExpirySchedule::run`]) sleeps until the earliest deadline and raises
//! [`Signals::EXPIRE`] on every outbox that is due. The connection then re-checks its own
//! token (a refreshed one may have moved the deadline) and ends if it has expired, so an entry
//! left behind is harmless. An entry is removed when its [`ExpiryEntry`] is dropped (the
//! connection ended, or its token was replaced). Connections without a token pay nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_core::{now_ms, Outbox, Signals};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

type Key = (u64, u64);

/// The schedule; see the module documentation.
#[derive(Default)]
pub struct ExpirySchedule {
    entries: Mutex<BTreeMap<Key, Weak<Outbox>>>,
    next_id: AtomicU64,
    changed: Notify,
}

/// Keeps one outbox scheduled until dropped.
pub struct ExpiryEntry {
    schedule: Arc<ExpirySchedule>,
    key: Key,
}

impl ExpirySchedule {
    /// Raises [`Signals::EXPIRE`] on `outbox` at `deadline_ms` (Unix milliseconds), unless the
    /// returned entry is dropped first.
    pub fn schedule(self: &Arc<Self>, deadline_ms: u64, outbox: &Arc<Outbox>) -> ExpiryEntry {
        let key = (deadline_ms, self.next_id.fetch_add(1, Ordering::Relaxed));
        let earliest = {
            let mut entries = self.entries.lock();
            entries.insert(key, Arc::downgrade(outbox));
            entries.first_key_value().map(|(k, _)| *k) == Some(key)
        };
        if earliest {
            // The task may be sleeping towards a later deadline.
            self.changed.notify_one();
        }
        ExpiryEntry {
            schedule: Arc::clone(self),
            key,
        }
    }

    /// Scheduled entries.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Signals every entry due at `now`; returns the earliest deadline still ahead.
    fn fire_due(&self, now: u64) -> Option<u64> {
        let due = {
            let mut entries = self.entries.lock();
            let later = entries.split_off(&(now.saturating_add(1), 0));
            std::mem::replace(&mut *entries, later)
        };
        for outbox in due.values().filter_map(Weak::upgrade) {
            outbox.raise(Signals::EXPIRE);
        }
        self.entries.lock().first_key_value().map(|(k, _)| k.0)
    }

    /// The one task that ends expired streams, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = self
                .fire_due(now_ms())
                .map(|deadline| Duration::from_millis(deadline.saturating_sub(now_ms())));
            tokio::select! {
                () = async {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = self.changed.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

impl ExpiryEntry {
    /// The schedule the entry is on.
    pub fn schedule(&self) -> &Arc<ExpirySchedule> {
        &self.schedule
    }
}

impl Drop for ExpiryEntry {
    fn drop(&mut self) {
        self.schedule.entries.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    fn signals(outbox: &Outbox) -> Option<Signals> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match outbox.poll_drain(&mut cx, &mut Vec::new()) {
            Poll::Ready(Ok(drained)) => Some(drained.signals),
            _ => None,
        }
    }

    #[test]
    fn due_entries_are_signalled_once_and_dropped_entries_never() {
        let schedule = Arc::new(ExpirySchedule::default());
        let (a, b, c) = (Outbox::new(1), Outbox::new(1), Outbox::new(1));
        let _a = schedule.schedule(100, &a);
        let _b = schedule.schedule(200, &b);
        let dropped = schedule.schedule(100, &c);
        drop(dropped);
        assert_eq!(schedule.len(), 2);
        assert_eq!(schedule.fire_due(150), Some(200));
        assert_eq!(signals(&a), Some(Signals::EXPIRE));
        assert_eq!(signals(&b), None);
        assert_eq!(signals(&c), None, "its entry was dropped");
        assert_eq!(schedule.fire_due(250), None);
        assert_eq!(signals(&b), Some(Signals::EXPIRE));
        assert!(schedule.is_empty());
    }

    #[tokio::test]
    async fn the_task_wakes_for_an_earlier_deadline() {
        let schedule = Arc::new(ExpirySchedule::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&schedule).run(shutdown.clone()));
        let (late, soon) = (Outbox::new(1), Outbox::new(1));
        let _late = schedule.schedule(now_ms() + 3_600_000, &late);
        tokio::task::yield_now().await;
        let _soon = schedule.schedule(now_ms() + 20, &soon);
        let mut batch = Vec::new();
        let drained = tokio::time::timeout(Duration::from_secs(5), soon.drain(&mut batch))
            .await
            .expect("signalled in time")
            .expect("no overflow");
        assert!(drained.signals.contains(Signals::EXPIRE));
        assert_eq!(signals(&late), None);
        shutdown.cancel();
        task.await.expect("task ends on shutdown");
    }
}
