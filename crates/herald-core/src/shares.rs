//! A large channel's fan-out, handed to each connection thread as one share.
//!
//! Why: a publisher that writes every subscriber of a large channel itself holds its thread
//! for the whole fan-out and caps the channel at what one core writes one message at a time.
//! From one publisher connection (a backend usually holds one), 2,000 subscribers took 69
//! publishes/s on the AMD machine, at 7.1 µs of server CPU per delivery, where nchan reached
//! 122 (BENCHMARKS.md). Queueing each subscriber of another thread for its own task instead
//! cost one cross-thread wake-up per subscriber (tried, and dropped, in BENCHMARKS.md). A
//! [`Share`] costs one wake-up per publish and thread: the publisher gathers the subscribers
//! each thread holds (its own thread's too) and hands them over in one piece; the thread writes
//! them between its connections' turns, each idle socket directly, as the publisher would have.
//!
//! **Runs.** A thread that falls behind finds several shares of a channel waiting and writes
//! each subscriber all its messages in one system call ([`ShareBacklog`]): the further behind,
//! the cheaper each message. With that, one publisher connection reached 333 publishes/s at
//! 2.0 µs per delivery in the same A/B.
//!
//! **A window per channel.** A thread that always writes what is waiting at once is never
//! behind enough to gather runs: at 400 publishes/s to 2,000 subscribers it wrote each
//! subscriber 4–5 messages at a time, busy all the time, and took the cores the subscribers'
//! own side needed. So a thread starts a run of a channel no sooner than a window (the
//! server's `fanout-window`) after the start of its last run of that channel that took every
//! share waiting; messages that come faster wait at most that long and go to each subscriber
//! together. The window counts from the start of that run, unless the run had one message:
//! then from that message's hand-over. A thread a little late with a quiet channel's message
//! must not make the next one, published a window later, wait for what it was late by
//! (counted from every run's start, each message of a channel at 50 publishes/s waited about
//! 6 ms with a 20 ms window). A run cut short (by its bound, or by a change of subscribers)
//! leaves the channel due at once, so a thread behind is never slowed down. Measured in
//! BENCHMARKS.md.
//!
//! **Order.** A subscriber must not be handed a newer message of a channel by another path
//! while an older one waits in a share. Each channel counts, per thread, the shares handed over
//! and not yet written (`PendingShares`); while a thread has one, every message of that
//! channel for that thread's subscribers goes the same way, even when the channel has become
//! small. A thread writes its shares in the order it was handed them (a run takes a channel's
//! consecutive shares for the same subscribers, and stops at the first that differs), so each
//! subscriber sees each channel in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::BoxFuture;
use crate::message::Message;
use crate::outbox::Outbox;

/// The subscribers of one channel held by one connection thread, and the message to hand them.
pub struct Share {
    message: Arc<Message>,
    /// The thread's list of the channel's subscribers (see [`ThreadLists`]), shared, not copied.
    outboxes: Arc<[Arc<Outbox>]>,
    pending: Arc<PendingShares>,
    thread: u16,
    /// When the publisher handed it over.
    handed: Instant,
}

impl Share {
    /// The connection thread that must write this share.
    pub fn thread(&self) -> u16 {
        self.thread
    }

    /// True if `later`, a later share of the same thread, is the next message of the same
    /// channel for the same subscribers (the same list: it is made anew whenever they change):
    /// the two can be written as one run.
    fn continued_by(&self, later: &Share) -> bool {
        self.same_channel(later) && Arc::ptr_eq(&self.outboxes, &later.outboxes)
    }

    /// True if `other` is a share of the same channel.
    fn same_channel(&self, other: &Share) -> bool {
        Arc::ptr_eq(&self.pending, &other.pending)
    }

    /// Hands the message to every subscriber now, from wherever the caller runs (for a thread
    /// that no longer runs, whose connections are gone).
    fn deliver_here(self) {
        for outbox in self.outboxes.iter() {
            outbox.push(&self.message);
        }
    }
}

/// Once written (or dropped with its thread), a share no longer holds back its thread's later
/// messages of the channel.
impl Drop for Share {
    fn drop(&mut self) {
        self.pending.done(self.thread);
    }
}

/// The most messages of one channel written to a subscriber as one run.
const RUN_MAX: usize = 64;

/// The shares a connection thread was handed and has not written yet, written a step at a
/// time so that the thread serves its connections in between.
///
/// Consecutive shares of one channel for the same subscribers are written as one run: each
/// subscriber gets all their messages in one write. Messages of a channel that come faster
/// than its window are gathered into one run (see the module documentation); a thread that
/// falls behind finds several waiting and writes them together too. Either way each message
/// costs far less (the system calls are most of the cost).
///
/// One backlog per thread: each channel keeps, per thread, when its next run may start.
pub struct ShareBacklog {
    waiting: VecDeque<Share>,
    writing: Option<Run>,
    /// The least time between the starts of two runs of one channel.
    window: Duration,
    /// What the run times kept in each channel's [`PendingShares`] count from.
    origin: Instant,
}

/// What a [`ShareBacklog`] has left to write after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Nothing: every share handed over so far is written.
    Nothing,
    /// Runs that may be written now.
    Work,
    /// Only shares of channels whose window is still open: none may be written before then.
    Until(Instant),
}

impl Default for ShareBacklog {
    /// A backlog without a window: every channel's shares are written as soon as the thread
    /// gets to them.
    fn default() -> Self {
        Self::paced(Duration::ZERO)
    }
}

/// Shares being written as one run, and how far.
struct Run {
    shares: Vec<Share>,
    messages: Vec<Arc<Message>>,
    done: usize,
}

impl ShareBacklog {
    /// A backlog that starts a run of a channel no sooner than `window` after its last run
    /// that took every share of the channel waiting (see the module documentation for where
    /// the window counts from).
    pub fn paced(window: Duration) -> Self {
        Self {
            waiting: VecDeque::new(),
            writing: None,
            window,
            origin: Instant::now(),
        }
    }

    /// Adds a share handed to this thread, after those already waiting.
    pub fn push(&mut self, share: Share) {
        self.waiting.push_back(share);
    }

    /// True when nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.writing.is_none()
    }

    /// The number of shares not written yet.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.writing.as_ref().map_or(0, |run| run.shares.len())
    }

    /// The shares the thread is behind with at `now`: those of the run being written, and
    /// those waiting whose channel's window has closed. (Shares waiting for their window are
    /// on time.)
    pub fn behind(&self, now: Instant) -> usize {
        let at = self.since_origin(now);
        let due = self
            .waiting
            .iter()
            .filter(|share| share.pending.due(share.thread, at))
            .count();
        due + self.writing.as_ref().map_or(0, |run| run.shares.len())
    }

    /// [`ShareBacklog::step_at`] now.
    pub fn step(&mut self, max: usize) -> Left {
        self.step_at(max, Instant::now())
    }

    /// Writes to at most `max` more subscribers (each getting a run of messages), starting
    /// only runs whose channel is due at `now`; says what is left.
    pub fn step_at(&mut self, max: usize, now: Instant) -> Left {
        let mut budget = max.max(1);
        while budget > 0 {
            let mut run = match self.writing.take() {
                Some(run) => run,
                None => match self.next_run(now) {
                    Ok(run) => run,
                    Err(left) => return left,
                },
            };
            let outboxes = &run.shares[0].outboxes;
            let end = outboxes.len().min(run.done + budget);
            for outbox in &outboxes[run.done..end] {
                outbox.push_run(&run.messages, true);
            }
            budget -= end - run.done;
            run.done = end;
            // A run written to the end is dropped, which releases its shares (see `Share`'s
            // `Drop`).
            if end < outboxes.len() {
                self.writing = Some(run);
            }
        }
        if self.is_empty() {
            Left::Nothing
        } else {
            Left::Work
        }
    }

    /// Time since the origin, in nanoseconds (what [`PendingShares`] keeps).
    fn since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes the first waiting share whose channel is due and the later ones of its channel
    /// that continue it, up to the first that does not (the channel's order is kept) or
    /// `RUN_MAX` messages. Without one, says when the first channel will be due.
    fn next_run(&mut self, now: Instant) -> Result<Run, Left> {
        let at = self.since_origin(now);
        let Some(start) = self
            .waiting
            .iter()
            .position(|share| share.pending.due(share.thread, at))
        else {
            let next = self
                .waiting
                .iter()
                .map(|share| share.pending.not_before(share.thread))
                .min();
            return Err(next.map_or(Left::Nothing, |nanos| {
                Left::Until(self.origin + Duration::from_nanos(nanos))
            }));
        };
        let Some(first) = self.waiting.remove(start) else {
            return Err(Left::Nothing);
        };
        let mut messages = vec![Arc::clone(&first.message)];
        let mut shares = vec![first];
        let mut i = start;
        let mut cut = false;
        while i < self.waiting.len() {
            let later = &self.waiting[i];
            if !later.same_channel(&shares[0]) {
                i += 1;
                continue;
            }
            if messages.len() == RUN_MAX || !shares[0].continued_by(later) {
                cut = true;
                break;
            }
            if let Some(later) = self.waiting.remove(i) {
                messages.push(Arc::clone(&later.message));
                shares.push(later);
            }
        }
        // A run that took every share of its channel opens the next window (see the module
        // documentation); one cut short leaves the rest due at once.
        let first = &shares[0];
        let not_before = if cut {
            0
        } else {
            let window = u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX);
            let opens = if shares.len() == 1 {
                self.since_origin(first.handed)
            } else {
                at
            };
            opens.saturating_add(window)
        };
        first.pending.set_not_before(first.thread, not_before);
        Ok(Run {
            shares,
            messages,
            done: 0,
        })
    }
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("thread", &self.thread)
            .field("subscribers", &self.outboxes.len())
            .finish_non_exhaustive()
    }
}

/// Where shares go: one queue per connection thread, each written by its thread in order.
/// Implemented by the server that runs the connection threads.
pub trait ShareQueues: Send + Sync {
    /// The number of connection threads, numbered from 0.
    fn threads(&self) -> u16;

    /// Queues `share` for its thread ([`Share::thread`]). Gives it back if that thread no
    /// longer runs (its connections are gone; the caller delivers it itself).
    fn send(&self, share: Share) -> Result<(), Share>;

    /// True while every thread's queue is short enough to take more shares (always, unless
    /// the queues are bounded).
    fn has_room(&self) -> bool {
        true
    }

    /// Resolves once [`ShareQueues::has_room`] holds again (or after a bound on the wait).
    /// Publishers await it after each publish (see [`crate::Hub::room`]).
    fn room(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Per thread, how many shares of one channel were handed over and are not written yet, and
/// when the thread may start its next run of the channel.
pub(crate) struct PendingShares(Box<[ThreadSlot]>);

#[derive(Default)]
struct ThreadSlot {
    shares: AtomicU32,
    /// Nanoseconds since the thread's backlog's origin; 0: at once. Only that thread's
    /// backlog reads and writes it.
    not_before: AtomicU64,
}

impl PendingShares {
    pub(crate) fn new(threads: u16) -> Self {
        Self((0..threads).map(|_| ThreadSlot::default()).collect())
    }

    /// Shares of thread `thread` not written yet (0 for a thread it does not know).
    pub(crate) fn count(&self, thread: u16) -> u32 {
        self.0
            .get(usize::from(thread))
            .map_or(0, |slot| slot.shares.load(Ordering::Acquire))
    }

    fn added(&self, thread: u16) {
        if let Some(slot) = self.0.get(usize::from(thread)) {
            slot.shares.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn done(&self, thread: u16) {
        if let Some(slot) = self.0.get(usize::from(thread)) {
            slot.shares.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// When thread `thread` may start its next run of the channel (0 for a thread it does
    /// not know: at once).
    fn not_before(&self, thread: u16) -> u64 {
        self.0
            .get(usize::from(thread))
            .map_or(0, |slot| slot.not_before.load(Ordering::Relaxed))
    }

    fn due(&self, thread: u16, at: u64) -> bool {
        self.not_before(thread) <= at
    }

    fn set_not_before(&self, thread: u16, at: u64) {
        if let Some(slot) = self.0.get(usize::from(thread)) {
            slot.not_before.store(at, Ordering::Relaxed);
        }
    }
}

/// A channel's subscribers grouped by the connection thread that holds them, as the hand-over
/// uses them: made once per change of the subscribers, not once per message. A share holds its
/// thread's list by reference count, and shares for the same subscribers are told from others
/// by comparing two pointers.
pub(crate) struct ThreadLists {
    threads: Vec<Arc<[Arc<Outbox>]>>,
    /// Made on no connection thread, or on one the queues do not know: the publisher's to write.
    elsewhere: Vec<Arc<Outbox>>,
}

impl ThreadLists {
    pub(crate) fn new<'a>(outboxes: impl Iterator<Item = &'a Arc<Outbox>>, threads: u16) -> Self {
        let mut by_thread: Vec<Vec<Arc<Outbox>>> = (0..threads).map(|_| Vec::new()).collect();
        let mut elsewhere = Vec::new();
        for outbox in outboxes {
            let list = outbox
                .home()
                .and_then(|thread| by_thread.get_mut(usize::from(thread)));
            list.unwrap_or(&mut elsewhere).push(Arc::clone(outbox));
        }
        Self {
            threads: by_thread.into_iter().map(Arc::from).collect(),
            elsewhere,
        }
    }

    /// The subscribers held by no connection thread the queues know.
    pub(crate) fn elsewhere(&self) -> &[Arc<Outbox>] {
        &self.elsewhere
    }

    /// Each connection thread with the subscribers it holds.
    pub(crate) fn threads(&self) -> impl Iterator<Item = (u16, &Arc<[Arc<Outbox>]>)> {
        (0u16..).zip(&self.threads)
    }
}

/// Hands `message` to `outboxes`, thread `thread`'s subscribers of the channel whose shares
/// `pending` counts, as one share handed over at `at`; if that thread no longer runs, delivers
/// it here. Called while the channel is still held, so shares of one channel are queued in the
/// order of its messages.
pub(crate) fn hand_over(
    queues: &dyn ShareQueues,
    pending: &Arc<PendingShares>,
    thread: u16,
    outboxes: &Arc<[Arc<Outbox>]>,
    message: &Arc<Message>,
    at: Instant,
) {
    if outboxes.is_empty() {
        return;
    }
    pending.added(thread);
    let share = Share {
        message: Arc::clone(message),
        outboxes: Arc::clone(outboxes),
        pending: Arc::clone(pending),
        thread,
        handed: at,
    };
    if let Err(share) = queues.send(share) {
        share.deliver_here();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::outbox::{DirectDelivery, DirectOutcome, RunOutcome};
    use crate::{ChannelId, Epoch, Payload, Position};
    use parking_lot::Mutex;
    use std::time::{Duration, Instant};

    /// Share queues that keep what they are handed, for `threads` threads.
    pub(crate) struct Kept {
        threads: u16,
        shares: Mutex<Vec<Share>>,
    }

    impl Kept {
        pub(crate) fn new(threads: u16) -> Arc<Self> {
            Arc::new(Self {
                threads,
                shares: Mutex::new(Vec::new()),
            })
        }

        /// The shares kept so far, oldest first.
        pub(crate) fn take(&self) -> Vec<Share> {
            std::mem::take(&mut *self.shares.lock())
        }

        /// A backlog of the shares kept so far, in the order they came.
        pub(crate) fn backlog(&self) -> ShareBacklog {
            let mut backlog = ShareBacklog::default();
            for share in self.take() {
                backlog.push(share);
            }
            backlog
        }

        /// (thread, subscribers, offset) of each share kept so far.
        pub(crate) fn summary(&self) -> Vec<(u16, usize, u64)> {
            self.shares
                .lock()
                .iter()
                .map(|s| (s.thread, s.outboxes.len(), s.message.offset()))
                .collect()
        }
    }

    impl ShareQueues for Kept {
        fn threads(&self) -> u16 {
            self.threads
        }

        fn send(&self, share: Share) -> Result<(), Share> {
            self.shares.lock().push(share);
            Ok(())
        }
    }

    /// A direct path that takes everything and records the length of each run it is given.
    #[derive(Default)]
    struct Runs(Mutex<Vec<usize>>);

    impl DirectDelivery for Runs {
        fn deliver(&self, _: &Arc<Message>) -> DirectOutcome {
            self.0.lock().push(1);
            DirectOutcome::Done
        }

        fn deliver_run(&self, messages: &[Arc<Message>]) -> RunOutcome {
            self.0.lock().push(messages.len());
            RunOutcome {
                taken: messages.len(),
                rest: None,
            }
        }
    }

    fn message(cid: &str, offset: u64) -> Arc<Message> {
        Message::new(
            ChannelId::parse(cid).expect("cid"),
            Position {
                epoch: Epoch::from_u64(1),
                offset,
            },
            0,
            &Payload::from_text(b"x").expect("payload"),
        )
    }

    /// Hands `message` to `outboxes` as thread 0's share of the channel counted by `pending`.
    fn share(
        kept: &Kept,
        pending: &Arc<PendingShares>,
        outboxes: &Arc<[Arc<Outbox>]>,
        message: &Arc<Message>,
    ) {
        hand_over(kept, pending, 0, outboxes, message, Instant::now());
    }

    /// A list of `n` outboxes whose direct path records its runs.
    fn recorded(n: usize) -> (Arc<[Arc<Outbox>]>, Vec<Arc<Runs>>) {
        let (outboxes, runs): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let outbox = Outbox::new(1000);
                let runs = Arc::new(Runs::default());
                outbox.set_direct(Some(runs.clone()));
                (outbox, runs)
            })
            .unzip();
        (outboxes.into(), runs)
    }

    #[test]
    fn shares_waiting_for_the_same_subscribers_are_written_as_one_run_each() {
        let kept = Kept::new(1);
        let (a, b) = (
            Arc::new(PendingShares::new(1)),
            Arc::new(PendingShares::new(1)),
        );
        let (outboxes, runs) = recorded(3);
        let (others, other_runs) = recorded(1);
        // Channel a: 1, 2, 3, with a share of channel b between them.
        share(&kept, &a, &outboxes, &message("a", 1));
        share(&kept, &b, &others, &message("b", 1));
        share(&kept, &a, &outboxes, &message("a", 2));
        share(&kept, &a, &outboxes, &message("a", 3));
        assert_eq!((a.count(0), b.count(0)), (3, 1));
        let mut backlog = kept.backlog();
        assert_eq!(backlog.step(usize::MAX), Left::Nothing, "nothing left");
        for runs in &runs {
            assert_eq!(*runs.0.lock(), [3], "one run of three");
        }
        assert_eq!(*other_runs[0].0.lock(), [1]);
        assert_eq!((a.count(0), b.count(0)), (0, 0), "all written");
    }

    #[test]
    fn a_run_stops_where_the_subscribers_change_and_at_its_bound() {
        let kept = Kept::new(1);
        let pending = Arc::new(PendingShares::new(1));
        let (outboxes, runs) = recorded(2);
        share(&kept, &pending, &outboxes, &message("c", 1));
        let first: Arc<[Arc<Outbox>]> = Arc::from(&outboxes[..1]);
        share(&kept, &pending, &first, &message("c", 2));
        share(&kept, &pending, &outboxes, &message("c", 3));
        for offset in 4..4 + RUN_MAX as u64 {
            share(&kept, &pending, &outboxes, &message("c", offset));
        }
        let mut backlog = kept.backlog();
        assert_eq!(backlog.step(usize::MAX), Left::Nothing);
        assert_eq!(*runs[0].0.lock(), [1, 1, RUN_MAX, 1]);
        assert_eq!(*runs[1].0.lock(), [1, RUN_MAX, 1]);
        assert_eq!(pending.count(0), 0);
    }

    #[test]
    fn each_step_writes_at_most_its_number_of_subscribers() {
        let kept = Kept::new(1);
        let pending = Arc::new(PendingShares::new(1));
        let (outboxes, runs) = recorded(5);
        share(&kept, &pending, &outboxes, &message("s", 1));
        share(&kept, &pending, &outboxes, &message("s", 2));
        let mut backlog = ShareBacklog::default();
        let mut shares = kept.take().into_iter();
        backlog.push(shares.next().expect("first"));
        assert_eq!(backlog.step(2), Left::Work);
        let written = |runs: &[Arc<Runs>]| runs.iter().filter(|r| !r.0.lock().is_empty()).count();
        assert_eq!(written(&runs), 2);
        // A share arriving while its channel's run is being written waits for the next run.
        backlog.push(shares.next().expect("second"));
        assert_eq!(backlog.step(3), Left::Work);
        assert_eq!(written(&runs), 5);
        assert_eq!(pending.count(0), 1, "the first share is written");
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog.step(10), Left::Nothing);
        assert!(backlog.is_empty());
        assert_eq!(backlog.len(), 0);
        for runs in &runs {
            assert_eq!(*runs.0.lock(), [1, 1]);
        }
        assert_eq!(pending.count(0), 0);
    }

    /// An empty paced backlog, and the time its windows count from.
    fn paced(window_ms: u64) -> (ShareBacklog, Instant) {
        let backlog = ShareBacklog::paced(Duration::from_millis(window_ms));
        let origin = backlog.origin;
        (backlog, origin)
    }

    /// Hands `message` to `outboxes` at `at` as thread 0's share of the channel counted by
    /// `pending`, into `backlog`.
    fn hand_at(
        backlog: &mut ShareBacklog,
        pending: &Arc<PendingShares>,
        outboxes: &Arc<[Arc<Outbox>]>,
        message: &Arc<Message>,
        at: Instant,
    ) {
        let kept = Kept::new(1);
        hand_over(&*kept, pending, 0, outboxes, message, at);
        for share in kept.take() {
            backlog.push(share);
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_channels_messages_that_come_within_its_window_wait_and_go_as_one_run() {
        let pending = Arc::new(PendingShares::new(1));
        let (outboxes, runs) = recorded(2);
        let (mut backlog, t0) = paced(10);
        let hand = |backlog: &mut ShareBacklog, offset, at| {
            hand_at(
                backlog,
                &pending,
                &outboxes,
                &message("w", offset),
                t0 + ms(at),
            );
        };
        hand(&mut backlog, 1, 0);
        assert_eq!(backlog.step_at(usize::MAX, t0 + ms(1)), Left::Nothing);
        hand(&mut backlog, 2, 2);
        hand(&mut backlog, 3, 3);
        // After a run of one message, the window counts from its hand-over.
        assert_eq!(
            backlog.step_at(usize::MAX, t0 + ms(3)),
            Left::Until(t0 + ms(10))
        );
        assert_eq!(backlog.behind(t0 + ms(3)), 0, "on time, not behind");
        assert_eq!(
            backlog.behind(t0 + ms(10)),
            2,
            "behind once the window has closed"
        );
        // After a run of several, from the run's start.
        assert_eq!(backlog.step_at(usize::MAX, t0 + ms(12)), Left::Nothing);
        hand(&mut backlog, 4, 14);
        assert_eq!(
            backlog.step_at(usize::MAX, t0 + ms(14)),
            Left::Until(t0 + ms(22))
        );
        // A run of one message written late (at 25, handed over at 14) lets the next go from
        // 24 on, not from 35.
        assert_eq!(backlog.step_at(usize::MAX, t0 + ms(25)), Left::Nothing);
        hand(&mut backlog, 5, 26);
        assert_eq!(backlog.step_at(usize::MAX, t0 + ms(26)), Left::Nothing);
        for runs in &runs {
            assert_eq!(*runs.0.lock(), [1, 2, 1, 1]);
        }
        assert_eq!(pending.count(0), 0);
    }

    #[test]
    fn a_channels_window_holds_back_no_other_channel() {
        let (a, b) = (
            Arc::new(PendingShares::new(1)),
            Arc::new(PendingShares::new(1)),
        );
        let (a_outboxes, a_runs) = recorded(1);
        let (b_outboxes, b_runs) = recorded(1);
        let (mut backlog, t0) = paced(10);
        hand_at(&mut backlog, &a, &a_outboxes, &message("a", 1), t0);
        assert_eq!(backlog.step_at(usize::MAX, t0), Left::Nothing);
        // a's next message waits for its window; b's, queued behind it, does not.
        hand_at(&mut backlog, &a, &a_outboxes, &message("a", 2), t0 + ms(2));
        hand_at(&mut backlog, &b, &b_outboxes, &message("b", 1), t0 + ms(3));
        assert_eq!(
            backlog.step_at(usize::MAX, t0 + ms(3)),
            Left::Until(t0 + ms(10))
        );
        assert_eq!(*b_runs[0].0.lock(), [1]);
        assert_eq!(*a_runs[0].0.lock(), [1]);
        assert_eq!(backlog.step_at(usize::MAX, t0 + ms(10)), Left::Nothing);
        assert_eq!(*a_runs[0].0.lock(), [1, 1]);
    }

    #[test]
    fn a_run_cut_short_leaves_its_channel_due_at_once() {
        let kept = Kept::new(1);
        let pending = Arc::new(PendingShares::new(1));
        let (outboxes, runs) = recorded(2);
        for offset in 1..=RUN_MAX as u64 + 1 {
            share(&kept, &pending, &outboxes, &message("cut", offset));
        }
        // The subscribers change: the next message's share is for the first one alone.
        let first: Arc<[Arc<Outbox>]> = Arc::from(&outboxes[..1]);
        share(&kept, &pending, &first, &message("cut", RUN_MAX as u64 + 2));
        let (mut backlog, t0) = paced(10);
        for share in kept.take() {
            backlog.push(share);
        }
        // Cut at its bound, then by the change: three runs at once, no window between them.
        assert_eq!(backlog.step_at(usize::MAX, t0), Left::Nothing);
        assert_eq!(*runs[0].0.lock(), [RUN_MAX, 1, 1]);
        assert_eq!(*runs[1].0.lock(), [RUN_MAX, 1]);
        assert_eq!(pending.count(0), 0);
    }

    #[test]
    fn a_share_its_thread_cannot_take_is_delivered_by_the_sender_and_released() {
        struct Stopped;
        impl ShareQueues for Stopped {
            fn threads(&self) -> u16 {
                1
            }
            fn send(&self, share: Share) -> Result<(), Share> {
                Err(share)
            }
        }
        let pending = Arc::new(PendingShares::new(1));
        let (outboxes, runs) = recorded(2);
        hand_over(
            &Stopped,
            &pending,
            0,
            &outboxes,
            &message("gone", 1),
            Instant::now(),
        );
        assert!(runs.iter().all(|r| *r.0.lock() == [1]));
        assert_eq!(pending.count(0), 0);
        // And a share dropped unwritten (its thread stopped) is released too.
        let kept = Kept::new(1);
        share(&kept, &pending, &outboxes, &message("gone", 2));
        assert_eq!(pending.count(0), 1);
        drop(kept.take());
        assert_eq!(pending.count(0), 0);
    }

    #[test]
    fn thread_lists_group_subscribers_by_the_thread_that_holds_them() {
        let made_on = |index: Option<u16>| {
            std::thread::spawn(move || {
                if let Some(index) = index {
                    crate::home_thread::set_current(index);
                }
                Outbox::new(1)
            })
            .join()
            .expect("thread")
        };
        let outboxes = [
            made_on(Some(1)),
            made_on(None),
            made_on(Some(0)),
            made_on(Some(5)),
            made_on(Some(1)),
        ];
        let lists = ThreadLists::new(outboxes.iter(), 2);
        let addresses =
            |list: &[Arc<Outbox>]| -> Vec<*const Outbox> { list.iter().map(Arc::as_ptr).collect() };
        let threads: Vec<(u16, Vec<*const Outbox>)> = lists
            .threads()
            .map(|(thread, list)| (thread, addresses(list)))
            .collect();
        let at = |i: usize| Arc::as_ptr(&outboxes[i]);
        assert_eq!(threads, [(0, vec![at(2)]), (1, vec![at(0), at(4)])]);
        // Thread 5 is not one of the 2: the publisher writes it, as one made on no thread.
        assert_eq!(addresses(lists.elsewhere()), [at(1), at(3)]);
    }
}
