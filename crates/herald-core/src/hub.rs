//! The hub: which local connections follow which channel.
//!
//! The hub is the fan-out point. It maps each channel to the outboxes of the local connections
//! subscribed to it, split over shards so that subscribing to a channel waits only on
//! deliveries to channels of the same shard (one of 64). Delivery hands one shared
//! `Arc<Message>` to each outbox and never blocks: an idle connection's outbox may write it to
//! the socket at once (one non-blocking system call), a busy one queues it (a reference-count
//! increment and a short lock). A large channel's outboxes are handed, per connection thread,
//! to the thread that holds them ([`crate::shares`]).
//!
//! A channel's subscribers are an insertion-ordered hash set of outboxes by address: delivery
//! walks them as one contiguous array, and a subscribe or an unsubscribe costs the same however
//! many subscribers the channel has. (With a vector searched on every change, each long poll's
//! subscribe and unsubscribe walked the whole channel: measured in BENCHMARKS.md, 16 % of the
//! user time at 8,000 long pollers on one channel.)

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use indexmap::IndexSet;
use parking_lot::{Mutex, RwLock};

use crate::channel::ChannelId;
use crate::channel_map::{ChannelHash, ChannelHasher, ChannelMap};
use crate::contention::Load;
use crate::message::Message;
use crate::outbox::Outbox;
use crate::shares::{self, PendingShares, ShareQueues, ThreadLists};

const SHARDS: usize = 64;

/// Channels with at most this many local subscribers are written entirely by the publisher;
/// larger ones are shared between the connection threads (see [`crate::shares`]). A share
/// costs a task wake-up on its thread (often a cross-thread one) and delays the writes to
/// that thread's turn; that is worth it only when the fan-out is large enough to keep a core
/// busy. The bound was measured for the mechanism before shares, which queued the other
/// thread's subscribers for their own tasks (many-channels benchmark, 5 subscribers per
/// channel, 2 workers: writing all 5 directly took 22.3 µs of server CPU per delivery against
/// 25.0 µs when 2 of the 5 were queued, and cut p99 latency from 0.68 to 0.55 ms); it has not
/// been measured again for shares.
const SHARE_ABOVE: usize = 32;

/// The most subscribers a publisher writes itself in one delivery, whatever the channel's
/// load; the rest are queued for their connections' tasks. The writes hold the publisher's
/// thread and the channel's shard of the hub (a subscribe to any
/// channel of that shard waits for them), so their number is bounded: at the 4–7 µs of server
/// CPU per delivery BENCHMARKS.md measures for one channel of 2,000 subscribers at 50
/// publishes/s, 2,048 writes take 8–14 ms.
const DIRECT_MAX: usize = 2048;

type Shard = RwLock<ChannelMap<Channel>>;

/// One channel of the hub: its subscribers and, once it is large enough to share (see
/// [`crate::shares`]), the shares of its fan-out not written yet and its subscribers by thread.
#[derive(Default)]
struct Channel {
    subscribers: Subscribers,
    pending: OnceLock<Arc<PendingShares>>,
    /// Made at the first hand-over that needs it after the subscribers changed.
    by_thread: Mutex<Option<Arc<ThreadLists>>>,
}

impl Channel {
    /// The subscribers, with the lists by thread forgotten (they are about to change).
    fn subscribers_mut(&mut self) -> &mut Subscribers {
        *self.by_thread.get_mut() = None;
        &mut self.subscribers
    }

    /// The subscribers by thread, made now if they changed since the last time.
    fn by_thread(&self, threads: u16) -> Arc<ThreadLists> {
        let mut lists = self.by_thread.lock();
        let lists = lists.get_or_insert_with(|| {
            let outboxes = self.subscribers.iter().map(|Subscriber(o)| o);
            Arc::new(ThreadLists::new(outboxes, threads))
        });
        Arc::clone(lists)
    }
}

/// One channel's subscribers, in the order they came (see the module documentation). Hashed
/// with foldhash (hashbrown's default hasher) instead of SipHash: the keys are addresses of
/// the server's own allocations, which no client chooses, so hash flooding is no concern, and
/// a long poll looks its outbox up twice (in, then out).
type Subscribers = IndexSet<Subscriber, hashbrown::DefaultHashBuilder>;

/// An outbox as a member of a channel's subscribers: equal and hashed by address.
struct Subscriber(Arc<Outbox>);

// Equality and hash are [`ByAddress`]'s, as the set's lookups require.
impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        indexmap::Equivalent::equivalent(&ByAddress(&self.0), other)
    }
}

impl Eq for Subscriber {}

impl Hash for Subscriber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        ByAddress(&self.0).hash(state);
    }
}

/// A subscriber looked up by its outbox's address, without touching the reference count.
struct ByAddress<'a>(&'a Arc<Outbox>);

impl Hash for ByAddress<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(self.0).hash(state);
    }
}

impl indexmap::Equivalent<Subscriber> for ByAddress<'_> {
    fn equivalent(&self, key: &Subscriber) -> bool {
        Arc::ptr_eq(self.0, &key.0)
    }
}

/// The local subscriber sets of all channels.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: ChannelHasher,
    /// The connection threads' share queues, once a server runs them (see [`Hub::share_with`]).
    queues: OnceLock<Arc<dyn ShareQueues>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: ChannelHasher::new(),
            queues: OnceLock::new(),
        }
    }

    /// Shares large fan-outs with the connection threads behind `queues` from now on (see
    /// [`crate::shares`]). Only the first call counts: a hub serves one set of threads.
    pub fn share_with(&self, queues: Arc<dyn ShareQueues>) {
        let _ = self.queues.set(queues);
    }

    /// Resolves at once unless some connection thread has fallen far behind with its shares;
    /// then once it has caught up (see [`ShareQueues::room`]). A publisher that awaits it after
    /// each publish cannot run ahead of the fan-out by more than that bound: past it, its
    /// messages would only wait longer in the queues.
    pub async fn room(&self) {
        if let Some(queues) = self.queues.get() {
            if !queues.has_room() {
                queues.room().await;
            }
        }
    }

    /// The shard of `cid` and the id's hash, which finds it there.
    fn shard(&self, cid: &ChannelId) -> (&Shard, ChannelHash) {
        let hash = self.hasher.hash(cid);
        (&self.shards[hash.shard(SHARDS)], hash)
    }

    /// Adds `outbox` to the channel's subscribers. Returns true if it was not there already.
    pub fn subscribe(&self, cid: &ChannelId, outbox: &Arc<Outbox>) -> bool {
        self.subscribe_bounded(cid, outbox, 0).unwrap_or(false)
    }

    /// Adds `outbox` to the channel's subscribers unless the channel already has `max` of
    /// them (`0`: no bound); counting and adding are one step. `Some(true)` if it was added,
    /// `Some(false)` if it was there already, `None` if the channel is full.
    pub fn subscribe_bounded(
        &self,
        cid: &ChannelId,
        outbox: &Arc<Outbox>,
        max: usize,
    ) -> Option<bool> {
        let (shard, hash) = self.shard(cid);
        let mut shard = shard.write();
        match shard.get_mut(hash, cid).map(Channel::subscribers_mut) {
            Some(subscribers) => {
                if subscribers.contains(&ByAddress(outbox)) {
                    return Some(false);
                }
                if max > 0 && subscribers.len() >= max {
                    return None;
                }
                subscribers.insert(Subscriber(Arc::clone(outbox)));
            }
            None => {
                let mut subscribers = Subscribers::default();
                subscribers.insert(Subscriber(Arc::clone(outbox)));
                let channel = Channel {
                    subscribers,
                    ..Channel::default()
                };
                shard.insert_new(&self.hasher, hash, cid.clone(), channel);
            }
        }
        Some(true)
    }

    /// Removes `outbox` from the channel's subscribers. Returns true if it was there.
    pub fn unsubscribe(&self, cid: &ChannelId, outbox: &Arc<Outbox>) -> bool {
        let (shard, hash) = self.shard(cid);
        let mut shard = shard.write();
        let Some(subscribers) = shard.get_mut(hash, cid).map(Channel::subscribers_mut) else {
            return false;
        };
        if !subscribers.swap_remove(&ByAddress(outbox)) {
            return false;
        }
        if subscribers.is_empty() {
            shard.remove(hash, cid);
        }
        true
    }

    /// Hands `message` to every subscriber of its channel; returns how many accepted it (a
    /// connection cut off for falling behind takes no more). A large channel is handed to the
    /// connection threads as one share each; a small one is written by the publisher: directly
    /// to every idle subscriber (never more than `DIRECT_MAX`) unless the channel's `load` is
    /// hot (see [`Load`]: a channel whose publishes queue up is better served by each
    /// connection writing its backlog in one system call).
    pub fn deliver(&self, message: &Arc<Message>, load: Load) -> usize {
        let (shard, hash) = self.shard(message.cid());
        let shard = shard.read();
        shard
            .get(hash, message.cid())
            .map_or(0, |channel| self.hand_over(channel, message, load))
    }

    /// [`Hub::deliver`], calling `before` first with the number of subscribers that will accept
    /// the message: those not cut off yet (one that falls behind with this very message is
    /// counted and then refuses it). The set is fixed from that moment until every one of
    /// them has been handed the message.
    pub fn deliver_after(
        &self,
        message: &Arc<Message>,
        load: Load,
        before: impl FnOnce(usize),
    ) -> usize {
        let (shard, hash) = self.shard(message.cid());
        let shard = shard.read();
        let Some(channel) = shard.get(hash, message.cid()) else {
            before(0);
            return 0;
        };
        before(
            channel
                .subscribers
                .iter()
                .filter(|Subscriber(o)| !o.has_overflowed())
                .count(),
        );
        self.hand_over(channel, message, load)
    }

    /// The hand-over of [`Hub::deliver`] to a channel's subscribers. Unless the channel is
    /// hot, the publisher writes each idle subscriber directly (at most `DIRECT_MAX`; the rest
    /// are queued for their connections' tasks); hot, it queues every message. In a channel of
    /// more than `SHARE_ABOVE`, the subscribers held by another connection thread are that
    /// thread's share, handed to it in one piece (see [`crate::shares`]); so are a thread's
    /// subscribers while an earlier share of this channel waits for it, so that none of them
    /// gets a message before an older one.
    fn hand_over(&self, channel: &Channel, message: &Arc<Message>, load: Load) -> usize {
        let direct = load != Load::Hot;
        let mut direct_left = if direct { DIRECT_MAX } else { 0 };
        let mut write_here = |o: &Arc<Outbox>| {
            if direct_left > 0 {
                direct_left -= 1;
                o.push(message)
            } else {
                o.push_queued(message)
            }
        };
        let subscribers = &channel.subscribers;
        let large = subscribers.len() > SHARE_ABOVE;
        let sharing = self.queues.get().and_then(|queues| {
            let pending = if large {
                Some(
                    channel
                        .pending
                        .get_or_init(|| Arc::new(PendingShares::new(queues.threads()))),
                )
            } else {
                channel.pending.get()
            };
            pending.map(|pending| (queues, pending))
        });
        let Some((queues, pending)) = sharing else {
            return subscribers
                .iter()
                .filter(|Subscriber(o)| write_here(o))
                .count();
        };
        let lists = channel.by_thread(queues.threads());
        let mut taken = lists.elsewhere().iter().filter(|o| write_here(o)).count();
        let handed = Instant::now();
        for (thread, outboxes) in lists.threads() {
            if large || pending.count(thread) > 0 {
                // Counted now: the share hands the message over later.
                taken += outboxes.iter().filter(|o| !o.has_overflowed()).count();
                shares::hand_over(queues.as_ref(), pending, thread, outboxes, message, handed);
            } else {
                taken += outboxes.iter().filter(|o| write_here(o)).count();
            }
        }
        taken
    }

    /// Number of local subscribers of `cid`.
    pub fn subscriber_count(&self, cid: &ChannelId) -> usize {
        let (shard, hash) = self.shard(cid);
        shard
            .read()
            .get(hash, cid)
            .map_or(0, |channel| channel.subscribers.len())
    }

    /// Number of channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shares::tests::Kept;
    use crate::shares::Left;
    use crate::{DirectDelivery, DirectOutcome, Epoch, Payload, Position};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counter(AtomicUsize);

    impl DirectDelivery for Counter {
        fn deliver(&self, _: &Arc<Message>) -> DirectOutcome {
            self.0.fetch_add(1, Ordering::Relaxed);
            DirectOutcome::Done
        }
    }

    /// A message at offset 1 of `cid` with the text `text`.
    fn message(cid: ChannelId, text: &[u8]) -> Arc<Message> {
        let position = Position {
            epoch: Epoch::from_u64(1),
            offset: 1,
        };
        Message::new(
            cid,
            position,
            0,
            &Payload::from_text(text).expect("payload"),
        )
    }

    /// The message at `offset` of `cid`.
    fn message_at(cid: &ChannelId, offset: u64) -> Arc<Message> {
        let position = Position {
            epoch: Epoch::from_u64(1),
            offset,
        };
        let payload = Payload::from_text(b"x").expect("payload");
        Message::new(cid.clone(), position, 0, &payload)
    }

    /// A hub, `n` subscribers of channel `name` (made on no connection thread) whose direct
    /// writes are counted, and a message for that channel.
    fn counted_channel(
        name: &str,
        n: usize,
    ) -> (Hub, Arc<Counter>, Vec<Arc<Outbox>>, Arc<Message>) {
        let outboxes: Vec<_> = (0..n).map(|_| Outbox::new(8)).collect();
        let (hub, counter, m) = counted_subscribers(name, &outboxes);
        (hub, counter, outboxes, m)
    }

    /// A hub where `outboxes`, in this order, subscribe to channel `name` with their direct
    /// writes counted, and a message for that channel.
    fn counted_subscribers<'a>(
        name: &str,
        outboxes: impl IntoIterator<Item = &'a Arc<Outbox>>,
    ) -> (Hub, Arc<Counter>, Arc<Message>) {
        let hub = Hub::new();
        let cid = ChannelId::parse(name).expect("cid");
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        for outbox in outboxes {
            outbox.set_direct(Some(counter.clone()));
            hub.subscribe(&cid, outbox);
        }
        (hub, counter, message(cid, b"x"))
    }

    /// `n` outboxes made on connection thread `index`.
    fn made_on(index: u16, n: usize) -> Vec<Arc<Outbox>> {
        std::thread::spawn(move || {
            crate::home_thread::set_current(index);
            (0..n).map(|_| Outbox::new(8)).collect()
        })
        .join()
        .expect("thread")
    }

    /// `hub.deliver(m, load)` from connection thread `index`.
    fn publish_on(index: u16, hub: &Hub, m: &Arc<Message>, load: Load) -> usize {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::home_thread::set_current(index);
                    hub.deliver(m, load)
                })
                .join()
                .expect("publisher")
        })
    }

    #[test]
    fn publishers_write_small_channels_alone() {
        // Subscribers of another thread than the publisher's: a large channel would be theirs
        // to write.
        let outboxes = made_on(1, SHARE_ABOVE);
        let (hub, counter, m) = counted_subscribers("small", &outboxes);
        let kept = Kept::new(2);
        hub.share_with(kept.clone());
        assert_eq!(publish_on(0, &hub, &m, Load::Quiet), SHARE_ABOVE);
        assert_eq!(counter.0.load(Ordering::Relaxed), SHARE_ABOVE);
        assert_eq!(publish_on(0, &hub, &m, Load::Hot), SHARE_ABOVE);
        assert_eq!(outboxes.iter().map(|o| o.len()).sum::<usize>(), SHARE_ABOVE);
        assert!(kept.summary().is_empty(), "no share");
    }

    #[test]
    fn publishers_of_quiet_channels_write_every_subscriber_up_to_the_bound() {
        for (total, direct) in [
            (SHARE_ABOVE * 4, SHARE_ABOVE * 4),
            (DIRECT_MAX + 10, DIRECT_MAX),
        ] {
            let (hub, counter, outboxes, m) = counted_channel("quiet", total);
            assert_eq!(hub.deliver(&m, Load::Quiet), total);
            assert_eq!(counter.0.load(Ordering::Relaxed), direct, "of {total}");
            let queued: usize = outboxes.iter().map(|o| o.len()).sum();
            assert_eq!(queued, total - direct, "of {total}");
        }
    }

    #[test]
    fn large_channels_are_handed_to_each_thread_as_one_share() {
        // Outboxes made on connection threads 0 and 1, interleaved in the channel, and one
        // made on no connection thread.
        let (mine, theirs) = (made_on(0, SHARE_ABOVE), made_on(1, SHARE_ABOVE + 5));
        assert!(mine.iter().all(|o| o.home() == Some(0)));
        let nowhere = [Outbox::new(8)];
        let interleaved = mine.iter().zip(&theirs).flat_map(|(a, b)| [a, b]);
        let (hub, counter, m) = counted_subscribers(
            "threads",
            interleaved.chain(&theirs[mine.len()..]).chain(&nowhere),
        );
        let kept = Kept::new(2);
        hub.share_with(kept.clone());
        let total = mine.len() + theirs.len() + 1;
        // The publisher's own thread's subscribers too: its share is written between its
        // connections' turns, not before the publisher reads its next request.
        for load in [Load::Quiet, Load::Hot] {
            assert_eq!(publish_on(0, &hub, &m, load), total);
        }
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            1,
            "only the threadless one"
        );
        assert_eq!(
            kept.summary(),
            [
                (0, mine.len(), 1),
                (1, theirs.len(), 1),
                (0, mine.len(), 1),
                (1, theirs.len(), 1)
            ]
        );
        assert!(mine.iter().chain(&theirs).all(|o| o.is_empty()));
        // Each thread writes its shares: both messages to each subscriber, as one run.
        let mut backlog = kept.backlog();
        assert_eq!(backlog.step(usize::MAX), Left::Nothing);
        assert_eq!(counter.0.load(Ordering::Relaxed), 1 + 2 * (total - 1));
        // A subscriber who joins is in the next share of its thread.
        let joined = made_on(1, 1);
        hub.subscribe(m.cid(), &joined[0]);
        assert_eq!(publish_on(0, &hub, &m, Load::Quiet), total + 1);
        assert_eq!(
            kept.summary(),
            [(0, mine.len(), 1), (1, theirs.len() + 1, 1)]
        );
    }

    #[test]
    fn a_thread_with_a_share_waiting_gets_the_channels_later_messages_the_same_way() {
        let (mine, theirs) = (made_on(0, SHARE_ABOVE), made_on(1, 3));
        let hub = Hub::new();
        let kept = Kept::new(2);
        hub.share_with(kept.clone());
        let cid = ChannelId::parse("order").expect("cid");
        for outbox in mine.iter().chain(&theirs) {
            hub.subscribe(&cid, outbox);
        }
        assert_eq!(
            hub.deliver(&message_at(&cid, 1), Load::Quiet),
            SHARE_ABOVE + 3
        );
        // The channel becomes small while both shares wait: its next message still goes to
        // each thread as a share, behind the first.
        for outbox in &mine[1..] {
            hub.unsubscribe(&cid, outbox);
        }
        assert_eq!(hub.deliver(&message_at(&cid, 2), Load::Quiet), 4);
        assert_eq!(
            kept.summary(),
            [(0, SHARE_ABOVE, 1), (1, 3, 1), (0, 1, 2), (1, 3, 2)]
        );
        let mut backlog = kept.backlog();
        assert_eq!(backlog.step(usize::MAX), Left::Nothing);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for outbox in mine[..1].iter().chain(&theirs) {
            let mut out = Vec::new();
            assert!(outbox.poll_drain(&mut cx, &mut out).is_ready());
            let offsets: Vec<u64> = out.iter().map(|m| m.offset()).collect();
            assert_eq!(offsets, [1, 2]);
        }
        // Once its shares are written, a small channel is the publisher's to write again.
        hub.deliver(&message_at(&cid, 3), Load::Quiet);
        assert!(kept.summary().is_empty());
        assert_eq!(theirs[0].len(), 1);
    }

    #[test]
    fn bounded_subscribe_refuses_beyond_the_bound() {
        let hub = Hub::new();
        let cid = ChannelId::parse("c").expect("cid");
        let (x, y, z) = (Outbox::new(1), Outbox::new(1), Outbox::new(1));
        assert_eq!(hub.subscribe_bounded(&cid, &x, 2), Some(true));
        assert_eq!(hub.subscribe_bounded(&cid, &y, 2), Some(true));
        assert_eq!(
            hub.subscribe_bounded(&cid, &x, 2),
            Some(false),
            "already in"
        );
        assert_eq!(hub.subscribe_bounded(&cid, &z, 2), None, "full");
        assert_eq!(hub.subscriber_count(&cid), 2);
        hub.unsubscribe(&cid, &y);
        assert_eq!(hub.subscribe_bounded(&cid, &z, 2), Some(true));
        assert_eq!(
            hub.subscribe_bounded(&cid, &y, 0),
            Some(true),
            "0: unbounded"
        );
    }

    #[test]
    fn delivers_to_subscribers_of_the_channel_only() {
        let hub = Hub::new();
        let a = ChannelId::parse("a").expect("cid");
        let b = ChannelId::parse("b").expect("cid");
        let (x, y) = (Outbox::new(8), Outbox::new(8));
        assert!(hub.subscribe(&a, &x));
        assert!(!hub.subscribe(&a, &x), "idempotent");
        assert!(hub.subscribe(&b, &y));
        let m = message(a.clone(), b"hi");
        assert_eq!(hub.deliver(&m, Load::Quiet), 1);
        assert_eq!((x.len(), y.len()), (1, 0));
        assert!(hub.unsubscribe(&a, &x));
        assert!(!hub.unsubscribe(&a, &x));
        assert_eq!(hub.deliver(&m, Load::Quiet), 0);
        assert_eq!(hub.channel_count(), 1);
    }

    #[test]
    fn connections_cut_off_for_falling_behind_are_not_counted() {
        let hub = Hub::new();
        let cid = ChannelId::parse("slow").expect("cid");
        let (reader, laggard) = (Outbox::new(8), Outbox::new(1));
        hub.subscribe(&cid, &reader);
        hub.subscribe(&cid, &laggard);
        let m = message(cid, b"x");
        let mut counted = Vec::new();
        // The laggard takes one message, then overflows on the second and refuses it.
        assert_eq!(hub.deliver_after(&m, Load::Hot, |n| counted.push(n)), 2);
        assert_eq!(hub.deliver_after(&m, Load::Hot, |n| counted.push(n)), 1);
        assert!(laggard.has_overflowed());
        // From then on it is counted neither before nor after the hand-over.
        assert_eq!(hub.deliver_after(&m, Load::Hot, |n| counted.push(n)), 1);
        assert_eq!(counted, [2, 2, 1], "counted before each hand-over");
        assert_eq!(hub.deliver(&m, Load::Hot), 1);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        proptest! {
            /// Any sequence of subscribes and unsubscribes leaves exactly the model's members,
            /// each handed a delivered message once.
            #[test]
            fn membership_follows_subscribes_and_unsubscribes(
                ops in proptest::collection::vec((any::<bool>(), 0..24usize), 0..200)
            ) {
                let hub = Hub::new();
                let cid = ChannelId::parse("m").expect("cid");
                let outboxes: Vec<_> = (0..24).map(|_| Outbox::new(4)).collect();
                let mut members = BTreeSet::new();
                for (subscribe, i) in ops {
                    if subscribe {
                        prop_assert_eq!(hub.subscribe(&cid, &outboxes[i]), members.insert(i));
                    } else {
                        prop_assert_eq!(hub.unsubscribe(&cid, &outboxes[i]), members.remove(&i));
                    }
                    prop_assert_eq!(hub.subscriber_count(&cid), members.len());
                }
                prop_assert_eq!(hub.channel_count(), usize::from(!members.is_empty()));
                let m = message(cid, b"x");
                prop_assert_eq!(hub.deliver(&m, Load::Quiet), members.len());
                for (i, outbox) in outboxes.iter().enumerate() {
                    prop_assert_eq!(outbox.len(), usize::from(members.contains(&i)), "outbox {}", i);
                }
            }
        }
    }
}
