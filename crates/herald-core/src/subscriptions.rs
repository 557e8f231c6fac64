//! What one connection has received, channel by channel.
//!
//! A connection subscribes in the hub first and reads the backlog from history second, so a
//! message published in between can arrive twice: once in the backlog and once live. And when
//! history is lost (a new epoch) or the live stream skips offsets, the client must be told.
//! [`Subscriptions`] tracks each channel's last delivered position and decides, per message,
//! whether to deliver it, drop it as a duplicate, or deliver it after a gap signal. It is
//! transport-agnostic: every transport feeds its messages through it.

use crate::broker::Gap;
use crate::channel::ChannelId;
use crate::message::Message;
use crate::position::{format_cursor, ChannelCursor, Position};

/// The decision for one incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// Deliver it.
    Deliver,
    /// Deliver it, after telling the client that messages before it are lost.
    GapThenDeliver(Gap),
    /// Already delivered (or older than where the client stands): drop it.
    Duplicate,
    /// The connection does not follow this channel (any more): drop it.
    NotSubscribed,
}

/// Per-channel positions of one connection, in subscription order.
#[derive(Debug, Default, Clone)]
pub struct Subscriptions {
    entries: Vec<(ChannelId, Position)>,
}

impl Subscriptions {
    /// No subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the connection stands at `position` in `cid` (after its backlog).
    /// Replaces the position if the channel is already followed.
    pub fn insert(&mut self, cid: ChannelId, position: Position) {
        match self.entries.iter_mut().find(|(c, _)| *c == cid) {
            Some(entry) => entry.1 = position,
            None => self.entries.push((cid, position)),
        }
    }

    /// Stops following `cid`; returns true if it was followed.
    pub fn remove(&mut self, cid: &ChannelId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(c, _)| c != cid);
        before != self.entries.len()
    }

    /// True if `cid` is followed.
    pub fn contains(&self, cid: &ChannelId) -> bool {
        self.entries.iter().any(|(c, _)| c == cid)
    }

    /// Number of channels followed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no channel is followed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The followed channels, in subscription order.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelId> {
        self.entries.iter().map(|(c, _)| c)
    }

    /// The position of `message`'s channel when `message` is exactly the next one of it (same
    /// epoch, next offset: the one case that needs no decision), for a caller that sends it and
    /// then stores `message.position()` there: one lookup instead of a check and then
    /// [`Self::accept`].
    pub fn next_position(&mut self, message: &Message) -> Option<&mut Position> {
        let (cid, position) = self
            .entries
            .iter_mut()
            .find(|(c, p)| c == message.cid() && follows(p, message.position()))?;
        adopt(cid, message);
        Some(position)
    }

    /// Decides what to do with `message` and, unless it is dropped, advances the channel's
    /// position to it.
    pub fn accept(&mut self, message: &Message) -> Accept {
        let Some((cid, position)) = self.entries.iter_mut().find(|(c, _)| c == message.cid())
        else {
            return Accept::NotSubscribed;
        };
        adopt(cid, message);
        let incoming = message.position();
        let same_epoch = incoming.epoch == position.epoch;
        let decision = if same_epoch && incoming.offset <= position.offset {
            return Accept::Duplicate;
        } else if follows(position, incoming) {
            Accept::Deliver
        } else {
            // Another epoch, or offsets skipped.
            Accept::GapThenDeliver(Gap {
                cid: message.cid().clone(),
                epoch: incoming.epoch,
                first: incoming.offset,
                requested: ChannelCursor::Exact(*position),
            })
        };
        *position = incoming;
        decision
    }

    /// The composite cursor of all followed channels, in subscription order; what a client
    /// passes back as `since` or `Last-Event-ID` to resume every channel exactly.
    pub fn cursor(&self) -> String {
        format_cursor(self.entries.iter().map(|(_, p)| p))
    }
}

/// Keeps `message`'s id in place of the equal one the subscription started with. The messages
/// of a channel share one id, so every later comparison with them is a pointer comparison,
/// not a read of both texts: on a large fan-out that is a cache line less per subscriber and
/// delivery.
fn adopt(cid: &mut ChannelId, message: &Message) {
    if !cid.shares(message.cid()) {
        *cid = message.cid().clone();
    }
}

/// True if `incoming` comes right after `position`: same epoch, next offset.
fn follows(position: &Position, incoming: Position) -> bool {
    position.epoch == incoming.epoch && position.offset.checked_add(1) == Some(incoming.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Epoch, Payload};
    use std::sync::Arc;

    fn message(cid: &str, epoch: u64, offset: u64) -> Arc<Message> {
        Message::new(
            ChannelId::parse(cid).expect("cid"),
            Position {
                epoch: Epoch::from_u64(epoch),
                offset,
            },
            0,
            &Payload::from_text(b"x").expect("payload"),
        )
    }

    fn at(epoch: u64, offset: u64) -> Position {
        Position {
            epoch: Epoch::from_u64(epoch),
            offset,
        }
    }

    #[test]
    fn a_delivered_message_s_id_replaces_the_equal_one_subscribed_with() {
        let mut subs = Subscriptions::new();
        subs.insert(ChannelId::parse("a").expect("cid"), at(1, 5));
        let first = message("a", 1, 6);
        assert!(!subs.channels().any(|c| c.shares(first.cid())));
        *subs.next_position(&first).expect("the next message") = first.position();
        assert!(subs.channels().any(|c| c.shares(first.cid())));
        let second = message("a", 1, 7);
        assert_eq!(subs.accept(&second), Accept::Deliver);
        assert!(subs.channels().any(|c| c.shares(second.cid())));
        assert_eq!(subs.len(), 1);
    }

    #[test]
    fn delivers_in_order_and_drops_duplicates() {
        let mut subs = Subscriptions::new();
        subs.insert(ChannelId::parse("a").expect("cid"), at(1, 5));
        assert!(subs.next_position(&message("a", 1, 7)).is_none());
        assert!(subs.next_position(&message("b", 1, 6)).is_none());
        assert!(subs.next_position(&message("a", 1, 6)).is_some());
        assert!(
            subs.next_position(&message("a", 2, 6)).is_none(),
            "another epoch"
        );
        assert_eq!(subs.accept(&message("a", 1, 4)), Accept::Duplicate);
        assert_eq!(subs.accept(&message("a", 1, 5)), Accept::Duplicate);
        assert_eq!(subs.accept(&message("a", 1, 6)), Accept::Deliver);
        assert_eq!(subs.accept(&message("a", 1, 6)), Accept::Duplicate);
        assert_eq!(subs.accept(&message("b", 1, 1)), Accept::NotSubscribed);
        assert_eq!(subs.cursor(), "1:6");
    }

    #[test]
    fn skipped_offsets_and_new_epochs_are_gaps() {
        let mut subs = Subscriptions::new();
        subs.insert(ChannelId::parse("a").expect("cid"), at(1, 5));
        assert!(
            matches!(subs.accept(&message("a", 1, 8)), Accept::GapThenDeliver(g) if g.first == 8)
        );
        assert!(
            matches!(subs.accept(&message("a", 2, 1)), Accept::GapThenDeliver(g) if g.epoch == Epoch::from_u64(2))
        );
        assert_eq!(subs.accept(&message("a", 2, 2)), Accept::Deliver);
    }

    #[test]
    fn composite_cursor_follows_subscription_order() {
        let mut subs = Subscriptions::new();
        subs.insert(ChannelId::parse("b").expect("cid"), at(2, 0));
        subs.insert(ChannelId::parse("a").expect("cid"), at(1, 3));
        assert_eq!(subs.cursor(), "2:0,1:3");
        assert!(subs.remove(&ChannelId::parse("b").expect("cid")));
        assert_eq!(subs.cursor(), "1:3");
    }
}
