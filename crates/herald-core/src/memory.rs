//! The in-process broker: positions and history in memory, for a single node.
//!
//! Each channel has its own lock, taken for the whole of a publish: the offset is assigned, the
//! message stored and handed to the hub before the next publish to that channel can start, so
//! subscribers always see offsets in order, without gaps or duplicates, however many publishers
//! race. History is a ring bounded by count and age, both fixed per channel when it is created
//! (a [`ChannelLimitsResolver`] may pick them from the channel id). A channel with no history,
//! no subscriber and no activity for its history TTL is forgotten, and a later use starts a new
//! epoch.
//!
//! The bytes of all retained envelopes are bounded too (`max_memory`): a publish that takes
//! the total over it drops the oldest messages of its own channel — at most what it added,
//! amortised O(1) — down to the message itself, which is then still delivered but not kept.
//! Readers behind the dropped messages get the usual explicit gap. Every way a message leaves
//! history (count trim, age expiry, memory eviction, a forgotten channel) releases its bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::broker::{BeforeFanOut, BoxFuture, Broker, EngineError, Gap, HistoryRead, Published};
use crate::channel::ChannelId;
use crate::channel_map::{ChannelHasher, ChannelMap};
use crate::clock::now_ms;
use crate::contention::Contention;
use crate::hub::Hub;
use crate::message::{Message, Payload};
use crate::position::{ChannelCursor, Epoch, Position};

const SHARDS: usize = 64;

type Shard = Mutex<ChannelMap<Arc<Mutex<ChannelLog>>>>;

/// History limits of the memory broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept per channel (unless a resolver decides per channel).
    pub size: usize,
    /// How long a message is kept (unless a resolver decides per channel).
    pub ttl: Duration,
    /// Most channels the broker keeps state for; publishing to or subscribing to a new channel
    /// beyond this is refused.
    pub max_channels: usize,
    /// Most bytes of envelopes retained across all channels (see the module documentation).
    pub max_memory: usize,
}

/// The limits of the memory broker as a whole, whatever each channel's own history limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerBounds {
    /// Most channels the broker keeps state for.
    pub max_channels: usize,
    /// Most bytes of envelopes retained across all channels.
    pub max_memory: usize,
}

impl HistoryLimits {
    /// The limits on the whole broker.
    pub fn bounds(&self) -> BrokerBounds {
        BrokerBounds {
            max_channels: self.max_channels,
            max_memory: self.max_memory,
        }
    }
}

/// The history limits of one channel, fixed when the channel is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLimits {
    /// Messages kept.
    pub size: usize,
    /// How long a message is kept.
    pub ttl: Duration,
}

/// Decides a new channel's [`ChannelLimits`] from its id (for example from its namespace).
/// Called once per channel creation, never on the publish path.
pub type ChannelLimitsResolver = Arc<dyn Fn(&ChannelId) -> ChannelLimits + Send + Sync>;

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(600),
            max_channels: 1_000_000,
            max_memory: 256 * 1024 * 1024,
        }
    }
}

struct ChannelLog {
    /// The channel's id, shared by every message published to it (so that subscribers
    /// compare ids by pointer; see `Subscriptions`).
    cid: ChannelId,
    epoch: Epoch,
    last: u64,
    messages: VecDeque<Arc<Message>>,
    touched_ms: u64,
    /// This channel's history bound, resolved when it was created.
    size: usize,
    /// This channel's message age limit in milliseconds, resolved when it was created.
    ttl_ms: u64,
    contention: Contention,
}

impl ChannelLog {
    fn new(cid: ChannelId, now: u64, limits: ChannelLimits) -> Self {
        Self {
            cid,
            epoch: Epoch::random(),
            last: 0,
            messages: VecDeque::new(),
            touched_ms: now,
            size: limits.size.max(1),
            ttl_ms: u64::try_from(limits.ttl.as_millis()).unwrap_or(u64::MAX),
            contention: Contention::default(),
        }
    }

    /// Drops the messages beyond this channel's count bound and those older than its TTL;
    /// returns the bytes freed.
    fn trim(&mut self, now: u64) -> usize {
        let ttl_ms = self.ttl_ms;
        let mut over = self.messages.len().saturating_sub(self.size);
        self.drop_oldest_while(|m| {
            if over > 0 {
                over -= 1;
                return true;
            }
            m.time_ms().saturating_add(ttl_ms) <= now
        })
    }

    /// Drops the oldest messages while `drop` says so of each; returns the bytes freed. Every
    /// way a message leaves history goes through here, so the bytes are counted in one place.
    fn drop_oldest_while(&mut self, mut drop: impl FnMut(&Message) -> bool) -> usize {
        let mut freed = 0;
        while self.messages.front().is_some_and(|m| drop(m)) {
            freed += self.messages.pop_front().map_or(0, |m| retained_size(&m));
        }
        freed
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.last,
        }
    }

    fn read(&self, cid: &ChannelId, cursor: ChannelCursor, limit: usize) -> HistoryRead {
        let oldest = self.messages.front().map_or(self.last + 1, |m| m.offset());
        // The offset after which the reader wants messages, and whether that is a gap.
        let (after, gap) = match cursor {
            ChannelCursor::Latest => (self.last, false),
            ChannelCursor::Exact(p) if p.epoch != self.epoch => (oldest - 1, true),
            ChannelCursor::Exact(Position { offset, .. }) | ChannelCursor::Offset(offset) => {
                if offset > self.last {
                    // Ahead of this history: it belongs to a history that was lost.
                    (oldest - 1, true)
                } else if offset + 1 < oldest {
                    (oldest - 1, true)
                } else {
                    (offset, false)
                }
            }
        };
        let skip = usize::try_from(after + 1 - oldest).unwrap_or(usize::MAX);
        let messages: Vec<_> = self
            .messages
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect();
        // With nothing to return, `after` is the channel's last offset.
        let position = messages.last().map_or(self.position(), |m| m.position());
        HistoryRead {
            gap: gap.then(|| Gap {
                cid: cid.clone(),
                epoch: self.epoch,
                first: after + 1,
                requested: cursor,
            }),
            messages,
            position,
        }
    }
}

/// Positions and history in process memory. See the module documentation.
pub struct MemoryBroker {
    hub: Arc<Hub>,
    bounds: BrokerBounds,
    resolver: ChannelLimitsResolver,
    shards: Box<[Shard]>,
    hasher: ChannelHasher,
    channels: AtomicUsize,
    retained: AtomicUsize,
}

/// What a retained message counts against `max_memory`: its envelope.
fn retained_size(message: &Message) -> usize {
    message.envelope().len()
}

impl MemoryBroker {
    /// A broker that delivers into `hub`, every channel with `limits.size` and `limits.ttl`.
    pub fn new(hub: Arc<Hub>, limits: HistoryLimits) -> Self {
        let every_channel = ChannelLimits {
            size: limits.size,
            ttl: limits.ttl,
        };
        Self::with_resolver(hub, limits.bounds(), Arc::new(move |_| every_channel))
    }

    /// A broker that delivers into `hub`, within `bounds`, and gives each new channel the
    /// history limits `resolver` returns for it.
    pub fn with_resolver(
        hub: Arc<Hub>,
        bounds: BrokerBounds,
        resolver: ChannelLimitsResolver,
    ) -> Self {
        Self {
            hub,
            bounds,
            resolver,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: ChannelHasher::new(),
            channels: AtomicUsize::new(0),
            retained: AtomicUsize::new(0),
        }
    }

    /// Bytes of envelopes held in history now.
    pub fn retained_bytes(&self) -> usize {
        self.retained.load(Ordering::Relaxed)
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.retained.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Counts `added` bytes in and `freed` out in one update of the shared counter; returns
    /// the new total.
    fn account(&self, added: usize, freed: usize) -> usize {
        if added >= freed {
            let net = added - freed;
            self.retained.fetch_add(net, Ordering::Relaxed) + net
        } else {
            let net = freed - added;
            self.retained
                .fetch_sub(net, Ordering::Relaxed)
                .saturating_sub(net)
        }
    }

    fn log(&self, cid: &ChannelId, now: u64) -> Result<Arc<Mutex<ChannelLog>>, EngineError> {
        let hash = self.hasher.hash(cid);
        let mut shard = self.shards[hash.shard(SHARDS)].lock();
        if let Some(log) = shard.get(hash, cid) {
            return Ok(Arc::clone(log));
        }
        if self.channels.load(Ordering::Relaxed) >= self.bounds.max_channels {
            return Err(EngineError::Limit(format!(
                "the server holds its maximum of {} channels",
                self.bounds.max_channels
            )));
        }
        let log = Arc::new(Mutex::new(ChannelLog::new(
            cid.clone(),
            now,
            (self.resolver)(cid),
        )));
        shard.insert_new(&self.hasher, hash, cid.clone(), Arc::clone(&log));
        self.channels.fetch_add(1, Ordering::Relaxed);
        Ok(log)
    }

    fn publish_now(
        &self,
        cid: &ChannelId,
        payload: &Payload,
        before_fan_out: Option<BeforeFanOut<'_>>,
    ) -> Result<Published, EngineError> {
        let now = now_ms();
        let log = self.log(cid, now)?;
        // Publishes that keep having to wait for the channel make it hot (see `contention`).
        let (mut log, contended) = match log.try_lock() {
            Some(guard) => (guard, false),
            None => (log.lock(), true),
        };
        let load = log.contention.record(contended);
        log.last += 1;
        log.touched_ms = now;
        let message = Message::new(log.cid.clone(), log.position(), now, payload);
        log.messages.push_back(Arc::clone(&message));
        let freed = log.trim(now);
        let total = self.account(retained_size(&message), freed);
        if total > self.bounds.max_memory {
            // Make room from this channel's own history, oldest first.
            let mut excess = total - self.bounds.max_memory;
            self.release(log.drop_oldest_while(|m| {
                let more = excess > 0;
                excess = excess.saturating_sub(retained_size(m));
                more
            }));
        }
        // Still under the channel lock: the hub sees this channel's messages in order. Only a
        // publisher answered before the fan-out needs the subscribers counted first.
        let subscribers = match before_fan_out {
            Some(before_fan_out) => self.hub.deliver_after(&message, load, |subscribers| {
                before_fan_out(&Published {
                    message: Arc::clone(&message),
                    subscribers,
                });
            }),
            None => self.hub.deliver(&message, load),
        };
        Ok(Published {
            message,
            subscribers,
        })
    }

    fn read_now(
        &self,
        cid: &ChannelId,
        cursor: ChannelCursor,
        limit: usize,
    ) -> Result<HistoryRead, EngineError> {
        let now = now_ms();
        let log = self.log(cid, now)?;
        let mut log = log.lock();
        log.touched_ms = now;
        self.release(log.trim(now));
        Ok(log.read(cid, cursor, limit.max(1)))
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(
        &'a self,
        cid: &'a ChannelId,
        payload: &'a Payload,
        before_fan_out: Option<BeforeFanOut<'a>>,
    ) -> BoxFuture<'a, Result<Published, EngineError>> {
        let result = self.publish_now(cid, payload, before_fan_out);
        Box::pin(std::future::ready(result))
    }

    fn read<'a>(
        &'a self,
        cid: &'a ChannelId,
        cursor: ChannelCursor,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryRead, EngineError>> {
        let result = self.read_now(cid, cursor, limit);
        Box::pin(std::future::ready(result))
    }

    fn sweep(&self) {
        let now = now_ms();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|cid, log| {
                let mut log = log.lock();
                self.release(log.trim(now));
                // A forgotten channel holds no message, so no bytes.
                !log.messages.is_empty()
                    || self.hub.subscriber_count(cid) > 0
                    || log.touched_ms.saturating_add(log.ttl_ms) > now
            });
            self.channels
                .fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(size: usize) -> MemoryBroker {
        MemoryBroker::new(
            Arc::new(Hub::new()),
            HistoryLimits {
                size,
                ..HistoryLimits::default()
            },
        )
    }

    fn publish(b: &MemoryBroker, cid: &ChannelId, n: usize) -> Vec<Arc<Message>> {
        (0..n)
            .map(|i| {
                let p = Payload::from_text(i.to_string().as_bytes()).expect("payload");
                b.publish_now(cid, &p, None).expect("published").message
            })
            .collect()
    }

    fn offsets(read: &HistoryRead) -> Vec<u64> {
        read.messages.iter().map(|m| m.offset()).collect()
    }

    #[test]
    fn offsets_grow_by_one_from_one() {
        let b = broker(10);
        let cid = ChannelId::parse("c").expect("cid");
        let msgs = publish(&b, &cid, 3);
        assert_eq!(
            msgs.iter().map(|m| m.offset()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(msgs.iter().all(|m| m.epoch() == msgs[0].epoch()));
    }

    #[test]
    fn a_channels_messages_share_one_id() {
        let b = broker(10);
        let first = publish(&b, &ChannelId::parse("c").expect("cid"), 1);
        // Published with another, equal id: the message still carries the channel's own.
        let second = publish(&b, &ChannelId::parse("c").expect("cid"), 1);
        assert!(first[0].cid().shares(second[0].cid()));
        let other = publish(&b, &ChannelId::parse("d").expect("cid"), 1);
        assert!(!first[0].cid().shares(other[0].cid()));
    }

    #[test]
    fn reads_after_a_cursor_and_reports_gaps() {
        let b = broker(5);
        let cid = ChannelId::parse("c").expect("cid");
        let msgs = publish(&b, &cid, 8); // history holds 4..=8
        let epoch = msgs[0].epoch();

        let r = b
            .read_now(&cid, ChannelCursor::Offset(5), 100)
            .expect("read");
        assert_eq!((offsets(&r), r.gap.is_none()), (vec![6, 7, 8], true));

        let r = b
            .read_now(&cid, ChannelCursor::Offset(3), 100)
            .expect("read");
        assert_eq!((offsets(&r), r.gap.is_none()), (vec![4, 5, 6, 7, 8], true));

        let r = b
            .read_now(&cid, ChannelCursor::Offset(2), 100)
            .expect("read");
        assert_eq!(offsets(&r), [4, 5, 6, 7, 8]);
        let gap = r.gap.expect("gap");
        assert_eq!((gap.epoch, gap.first), (epoch, 4));

        let other = Position {
            epoch: Epoch::from_u64(epoch.as_u64() ^ 1),
            offset: 7,
        };
        let r = b
            .read_now(&cid, ChannelCursor::Exact(other), 100)
            .expect("read");
        assert!(r.gap.is_some());
        assert_eq!(offsets(&r), [4, 5, 6, 7, 8]);

        let r = b
            .read_now(&cid, ChannelCursor::Offset(99), 100)
            .expect("read");
        assert!(
            r.gap.is_some(),
            "a cursor ahead of history is from a lost epoch"
        );

        let r = b.read_now(&cid, ChannelCursor::Latest, 100).expect("read");
        assert!(r.messages.is_empty() && r.gap.is_none());
        assert_eq!(r.position, Position { epoch, offset: 8 });

        let r = b
            .read_now(&cid, ChannelCursor::Offset(8), 100)
            .expect("read");
        assert!(r.messages.is_empty() && r.gap.is_none());
        assert_eq!(r.position.offset, 8);
    }

    #[test]
    fn limit_returns_the_oldest_first_and_the_position_to_continue() {
        let b = broker(100);
        let cid = ChannelId::parse("c").expect("cid");
        publish(&b, &cid, 10);
        let r = b.read_now(&cid, ChannelCursor::Offset(0), 3).expect("read");
        assert_eq!(offsets(&r), [1, 2, 3]);
        assert_eq!(r.position.offset, 3);
    }

    #[test]
    fn new_channels_start_empty_with_an_epoch() {
        let b = broker(10);
        let cid = ChannelId::parse("fresh").expect("cid");
        let r = b
            .read_now(&cid, ChannelCursor::Offset(0), 10)
            .expect("read");
        assert!(r.messages.is_empty() && r.gap.is_none());
        assert_eq!(r.position.offset, 0);
        let m = publish(&b, &cid, 1);
        assert_eq!(m[0].epoch(), r.position.epoch);
    }

    #[test]
    fn channel_limit_is_enforced() {
        let b = MemoryBroker::new(
            Arc::new(Hub::new()),
            HistoryLimits {
                max_channels: 2,
                ..HistoryLimits::default()
            },
        );
        for name in ["a", "b"] {
            publish(&b, &ChannelId::parse(name).expect("cid"), 1);
        }
        let p = Payload::from_text(b"x").expect("payload");
        let third = ChannelId::parse("c").expect("cid");
        assert!(matches!(
            b.publish_now(&third, &p, None),
            Err(EngineError::Limit(_))
        ));
    }

    #[test]
    fn each_channel_keeps_the_limits_resolved_at_its_creation() {
        let resolver: ChannelLimitsResolver = Arc::new(|cid: &ChannelId| ChannelLimits {
            size: if cid.as_str().starts_with("short:") {
                2
            } else {
                5
            },
            ttl: Duration::from_secs(600),
        });
        let b = MemoryBroker::with_resolver(
            Arc::new(Hub::new()),
            HistoryLimits::default().bounds(),
            resolver,
        );
        let short = ChannelId::parse("short:1").expect("cid");
        let long = ChannelId::parse("long").expect("cid");
        publish(&b, &short, 4);
        publish(&b, &long, 4);
        let r = b
            .read_now(&short, ChannelCursor::Offset(0), 100)
            .expect("read");
        assert_eq!(offsets(&r), [3, 4]);
        let r = b
            .read_now(&long, ChannelCursor::Offset(0), 100)
            .expect("read");
        assert_eq!(offsets(&r), [1, 2, 3, 4]);
    }

    #[test]
    fn per_channel_limits_release_retained_bytes() {
        // Size trims and TTL expiry under per-channel limits keep the memory accounting exact.
        let resolver: ChannelLimitsResolver = Arc::new(|cid: &ChannelId| ChannelLimits {
            size: 2,
            ttl: if cid.as_str().starts_with("flash:") {
                Duration::ZERO
            } else {
                Duration::from_secs(600)
            },
        });
        let b = MemoryBroker::with_resolver(
            Arc::new(Hub::new()),
            HistoryLimits::default().bounds(),
            resolver,
        );
        let kept = ChannelId::parse("kept").expect("cid");
        let flash = ChannelId::parse("flash:1").expect("cid");
        publish(&b, &kept, 5);
        publish(&b, &flash, 3);
        let r = b
            .read_now(&kept, ChannelCursor::Offset(0), 100)
            .expect("read");
        assert_eq!(offsets(&r), [4, 5]);
        let held = r.messages.iter().map(|m| retained_size(m)).sum::<usize>();
        assert_eq!(b.retained_bytes(), held, "only what is held is counted");
        b.sweep();
        assert_eq!(b.channel_count(), 1, "the expired channel is forgotten");
        assert_eq!(b.retained_bytes(), held);
    }

    #[test]
    fn history_memory_is_bounded_by_dropping_the_publishing_channels_oldest() {
        let b = MemoryBroker::new(
            Arc::new(Hub::new()),
            HistoryLimits {
                max_memory: 1000,
                ..HistoryLimits::default()
            },
        );
        let big = ChannelId::parse("big").expect("cid");
        let small = ChannelId::parse("small").expect("cid");
        let p = Payload::from_text(&[b'x'; 200]).expect("payload");
        let first = b.publish_now(&small, &p, None).expect("published").message;
        let size = retained_size(&first);
        for _ in 0..20 {
            b.publish_now(&big, &p, None).expect("published");
            assert!(b.retained_bytes() <= 1000, "{}", b.retained_bytes());
        }
        // `big` paid for its own messages; `small` keeps its one.
        let r = b
            .read_now(&small, ChannelCursor::Offset(0), 100)
            .expect("read");
        assert_eq!(offsets(&r), [1]);
        let r = b
            .read_now(&big, ChannelCursor::Offset(0), 100)
            .expect("read");
        assert_eq!(r.messages.len(), 1000 / size - 1);
        assert_eq!(r.messages.last().map(|m| m.offset()), Some(20));
        assert!(r.gap.is_some(), "the dropped messages are an explicit gap");
        let held = r.messages.iter().map(|m| retained_size(m)).sum::<usize>() + size;
        assert_eq!(b.retained_bytes(), held, "accounting matches what is held");

        // A message larger than the whole budget is delivered but not kept.
        let huge = Payload::from_text(&[b'y'; 2000]).expect("payload");
        let m = b.publish_now(&big, &huge, None).expect("published").message;
        assert_eq!(m.offset(), 21);
        let r = b
            .read_now(&big, ChannelCursor::Offset(20), 100)
            .expect("read");
        assert!(r.messages.is_empty() && r.gap.is_some());
        assert!(b.retained_bytes() <= 1000);
    }

    #[test]
    fn expiry_releases_retained_bytes() {
        let b = MemoryBroker::new(
            Arc::new(Hub::new()),
            HistoryLimits {
                ttl: Duration::ZERO,
                ..HistoryLimits::default()
            },
        );
        publish(&b, &ChannelId::parse("gone").expect("cid"), 3);
        b.sweep();
        assert_eq!(b.retained_bytes(), 0);
    }

    #[test]
    fn sweep_forgets_expired_idle_channels() {
        let b = MemoryBroker::new(
            Arc::new(Hub::new()),
            HistoryLimits {
                ttl: Duration::ZERO,
                ..HistoryLimits::default()
            },
        );
        publish(&b, &ChannelId::parse("gone").expect("cid"), 2);
        assert_eq!(b.channel_count(), 1);
        b.sweep();
        assert_eq!(b.channel_count(), 0);
    }
}
