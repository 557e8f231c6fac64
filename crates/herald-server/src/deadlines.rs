//! One coarse timer for every per-request deadline: a long poll's timeout, a connection's wait
//! for its next request head.
//!
//! Each of those waits used to hold a tokio timer: registered in the runtime's timer wheel
//! when the wait began, removed when it ended, which for a long poll is every request, and
//! almost always before the timer fired. Here a waiting connection puts one entry in a slot
//! of a [`Wheel`] chosen by its deadline (one short lock, no allocation once the slot has
//! grown), and takes it out when the wait ends. One task ticks at the wheel's granularity and
//! rings what is due in the slot of each tick; shutdown rings everything. What is rung is the
//! thing the connection waits on anyway: a long poll's outbox, or a [`Bell`] beside a
//! connection's socket read.
//!
//! The price is precision: a deadline rings at or after its time, at most one granularity
//! late (plus scheduling). The server picks the granularity as a tenth of its shortest
//! configured timeout, between 10 ms and 1 s (see [`granularity_for`]).

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use herald_core::{Outbox, Signals};
use parking_lot::Mutex;
use slab::Slab;
use tokio::time::Instant;

/// Slots in the wheel. Deadlines more than this many ticks ahead share a slot with nearer
/// ones and wait there for their turn.
const SLOTS: usize = 256;
/// Locks per slot. Connections that begin waiting in the same tick (every long poller after a
/// publish) have the same slot; each thread has a lane of its own (see [`lane`]), so the
/// connection threads neither queue on one lock nor pass its cache line and entries back and
/// forth.
const LANES: usize = 8;

/// This thread's lane, given out in turn on its first use.
fn lane() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % LANES;
    }
    LANE.with(|lane| *lane)
}
/// The finest and the coarsest granularity the server uses.
const FINEST: Duration = Duration::from_millis(10);
const COARSEST: Duration = Duration::from_secs(1);

/// Something a connection waits on that a timer or shutdown can ring.
pub trait Ring: Send + Sync {
    /// Raises `signals` and wakes the waiting task.
    fn ring(&self, signals: Signals);
}

impl Ring for Outbox {
    fn ring(&self, signals: Signals) {
        self.raise(signals);
    }
}

/// What a connection with no outbox waits on beside its socket: signals and one waker.
#[derive(Debug, Default)]
pub struct Bell {
    signals: AtomicU8,
    waker: AtomicWaker,
}

impl Ring for Bell {
    fn ring(&self, signals: Signals) {
        self.signals.fetch_or(signals.bits(), Ordering::AcqRel);
        self.waker.wake();
    }
}

impl Bell {
    /// Forgets what was rung before, so a new wait starts quiet.
    pub fn clear(&self) {
        self.signals.store(0, Ordering::Release);
    }

    /// What was rung (cleared), or pending with the task's waker registered.
    pub fn poll_rung(&self, cx: &mut Context<'_>) -> Poll<Signals> {
        if let Some(signals) = self.take() {
            return Poll::Ready(signals);
        }
        self.waker.register(cx.waker());
        self.take().map_or(Poll::Pending, Poll::Ready)
    }

    fn take(&self) -> Option<Signals> {
        let bits = self.signals.swap(0, Ordering::AcqRel);
        (bits != 0).then_some(Signals::from_bits(bits))
    }
}

/// Where a deadline `wait` after `now` falls: about 30 years from now when `now + wait` is
/// beyond what an instant holds, so that a timeout configured absurdly long never fires (as
/// tokio's own timers treat it) instead of overflowing.
pub fn deadline_after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or_else(|| now + FAR_FUTURE)
}

/// "Never", for [`deadline_after`].
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The granularity for a server whose shortest timeout is `shortest`.
pub fn granularity_for(shortest: Duration) -> Duration {
    (shortest / 10).clamp(FINEST, COARSEST)
}

struct Entry {
    /// The first tick at or after the deadline.
    due: u64,
    target: Arc<dyn Ring>,
}

/// The deadlines of waiting connections. See the module documentation.
pub struct Wheel {
    start: Instant,
    granularity: Duration,
    /// `SLOTS` × `LANES` entry sets: slot `s`, lane `l` at `s * LANES + l`.
    slots: Box<[Mutex<Slab<Entry>>]>,
}

/// Where an entry is, for its removal.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    set: usize,
    key: usize,
}

impl Wheel {
    /// An empty wheel ticking every `granularity` (at least 1 ms) from now.
    pub fn new(granularity: Duration) -> Self {
        Self {
            start: Instant::now(),
            granularity: granularity.max(Duration::from_millis(1)),
            slots: (0..SLOTS * LANES)
                .map(|_| Mutex::new(Slab::new()))
                .collect(),
        }
    }

    /// The ticks since the start, rounded down (the last tick that has begun at `at`).
    fn tick_at(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos() / self.granularity.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The first tick at or after `deadline`.
    fn due_tick(&self, deadline: Instant) -> u64 {
        let elapsed = deadline.saturating_duration_since(self.start);
        let nanos = elapsed.as_nanos().div_ceil(self.granularity.as_nanos());
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// Puts `target` on the wheel, to be rung with [`Signals::DEADLINE`] once `deadline` has
    /// passed. Take it off with [`Wheel::remove`].
    pub fn insert(&self, target: Arc<dyn Ring>, deadline: Instant) -> Place {
        let due = self.due_tick(deadline);
        let set = Self::slot_of(due) * LANES + lane();
        let key = self.slots[set].lock().insert(Entry { due, target });
        Place { set, key }
    }

    /// Takes an entry off the wheel.
    pub fn remove(&self, place: Place) {
        self.slots[place.set].lock().try_remove(place.key);
    }

    fn slot_of(tick: u64) -> usize {
        (tick % SLOTS as u64) as usize
    }

    /// Rings every entry due at or before tick `now` in the slots of ticks `from..=now`
    /// (all slots when that is more than a turn). Returns the next tick to expire from.
    pub fn expire(&self, from: u64, now: u64) -> u64 {
        if from > now {
            return from;
        }
        let turns = (now - from).min(SLOTS as u64 - 1);
        for tick in now - turns..=now {
            let first = Self::slot_of(tick) * LANES;
            for lane in &self.slots[first..first + LANES] {
                for (_, entry) in lane.lock().iter() {
                    if entry.due <= now {
                        entry.target.ring(Signals::DEADLINE);
                    }
                }
            }
        }
        now + 1
    }

    /// Rings every entry with `signals`, due or not.
    pub fn ring_all(&self, signals: Signals) {
        for slot in self.slots.iter() {
            for (_, entry) in slot.lock().iter() {
                entry.target.ring(signals);
            }
        }
    }

    /// Entries on the wheel.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|s| s.lock().len()).sum()
    }

    /// True when no entry is on the wheel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the ticks until `stop` completes.
    pub async fn run(&self, stop: impl Future<Output = ()>) {
        let period = self.granularity;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = 0;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                now = tick.tick() => next = self.expire(next, self.tick_at(now)),
                () = &mut stop => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bell() -> Arc<Bell> {
        Arc::new(Bell::default())
    }

    fn rung_now(bell: &Bell) -> Option<Signals> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match bell.poll_rung(&mut cx) {
            Poll::Ready(signals) => Some(signals),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_deadline_beyond_what_an_instant_holds_is_far_away_not_an_overflow() {
        let now = Instant::now();
        assert_eq!(
            deadline_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(deadline_after(now, Duration::MAX), now + FAR_FUTURE);
    }

    #[test]
    fn granularity_is_a_tenth_of_the_shortest_timeout_within_bounds() {
        assert_eq!(granularity_for(Duration::from_secs(10)), COARSEST);
        assert_eq!(
            granularity_for(Duration::from_millis(500)),
            Duration::from_millis(50)
        );
        assert_eq!(granularity_for(Duration::from_millis(20)), FINEST);
    }

    #[tokio::test]
    async fn a_deadline_rings_at_its_tick_never_before() {
        let wheel = Wheel::new(Duration::from_millis(100));
        let (early, late) = (bell(), bell());
        // Due at tick 3 (250 ms rounds up) and tick 5.
        wheel.insert(early.clone(), wheel.start + Duration::from_millis(250));
        wheel.insert(late.clone(), wheel.start + Duration::from_millis(500));
        let next = wheel.expire(0, 2);
        assert_eq!(rung_now(&early), None);
        let next = wheel.expire(next, 3);
        assert_eq!(rung_now(&early), Some(Signals::DEADLINE));
        assert_eq!(rung_now(&late), None);
        wheel.expire(next, 5);
        assert_eq!(rung_now(&late), Some(Signals::DEADLINE));
    }

    #[tokio::test]
    async fn a_removed_entry_never_rings_and_a_late_ticker_catches_up() {
        let wheel = Wheel::new(Duration::from_millis(10));
        let (kept, removed, far) = (bell(), bell(), bell());
        wheel.insert(kept.clone(), wheel.start + Duration::from_millis(30));
        let place = wheel.insert(removed.clone(), wheel.start + Duration::from_millis(30));
        // More than a turn ahead: shares a slot with nearer ticks and waits for its own.
        let far_tick = SLOTS as u64 + 3;
        wheel.insert(
            far.clone(),
            wheel.start + Duration::from_millis(10 * far_tick),
        );
        wheel.remove(place);
        assert_eq!(wheel.len(), 2);
        // The ticker missed ticks 1..=9: one call covers them.
        let next = wheel.expire(1, 9);
        assert_eq!(rung_now(&kept), Some(Signals::DEADLINE));
        assert_eq!(rung_now(&removed), None);
        assert_eq!(rung_now(&far), None);
        // A ticker more than a turn late still sweeps every slot once.
        wheel.expire(next, far_tick + 5 * SLOTS as u64);
        assert_eq!(rung_now(&far), Some(Signals::DEADLINE));
    }

    #[tokio::test]
    async fn ring_all_reaches_every_entry_and_a_cleared_bell_is_quiet() {
        let wheel = Wheel::new(Duration::from_secs(1));
        let a = bell();
        let outbox = Outbox::new(4);
        wheel.insert(a.clone(), wheel.start + Duration::from_secs(3600));
        wheel.insert(outbox.clone(), wheel.start + Duration::from_secs(1));
        wheel.ring_all(Signals::CLOSE);
        assert_eq!(rung_now(&a), Some(Signals::CLOSE));
        assert_eq!(rung_now(&a), None, "taking the signals clears them");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let drained = outbox.poll_drain(&mut cx, &mut Vec::new());
        assert!(matches!(drained, Poll::Ready(Ok(d)) if d.signals.contains(Signals::CLOSE)));
        a.ring(Signals::DEADLINE);
        a.clear();
        assert_eq!(rung_now(&a), None);
    }

    #[tokio::test]
    async fn the_ticker_rings_a_deadline_in_real_time() {
        let wheel = Arc::new(Wheel::new(Duration::from_millis(10)));
        let waiting = bell();
        let started = Instant::now();
        wheel.insert(waiting.clone(), started + Duration::from_millis(50));
        let stop = Arc::new(tokio::sync::Notify::new());
        let ticker = {
            let (wheel, stop) = (Arc::clone(&wheel), Arc::clone(&stop));
            tokio::spawn(async move { wheel.run(stop.notified()).await })
        };
        let rung = std::future::poll_fn(|cx| waiting.poll_rung(cx));
        let signals = tokio::time::timeout(Duration::from_secs(5), rung)
            .await
            .expect("the deadline rings");
        assert_eq!(signals, Signals::DEADLINE);
        assert!(started.elapsed() >= Duration::from_millis(50));
        stop.notify_one();
        ticker.await.expect("the ticker stops");
    }
}
