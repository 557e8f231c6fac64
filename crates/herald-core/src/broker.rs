//! The seam between the engine and where positions and history live.
//!
//! A [`Broker`] assigns positions, keeps each channel's history and hands every published
//! message to the local [`Hub`](crate::Hub) in position order. The in-process
//! [`MemoryBroker`](crate::MemoryBroker) is the default; persistent and Redis-backed brokers
//! implement the same trait, so transports never change when the backend does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::channel::ChannelId;
use crate::message::{Message, Payload};
use crate::position::{ChannelCursor, Epoch, Position};

/// A boxed future, as brokers return from their trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the engine could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The backend that stores history is unreachable or failed.
    #[error("history backend unavailable: {0}")]
    Backend(String),
    /// A configured limit was reached.
    #[error("limit reached: {0}")]
    Limit(String),
    /// The channel has as many subscribers as it may have.
    #[error("channel {cid} has its maximum of {max} subscribers")]
    ChannelFull {
        /// The channel.
        cid: ChannelId,
        /// Its subscriber bound.
        max: usize,
    },
}

/// The outcome of one publish.
#[derive(Debug, Clone)]
pub struct Published {
    /// The message with its position.
    pub message: Arc<Message>,
    /// Local subscribers it was handed to (a connection cut off for falling behind takes no
    /// more messages and is not counted).
    pub subscribers: usize,
}

/// Called by [`Broker::publish`] with the outcome of a publish as soon as it is known, before
/// the message is handed to any local subscriber: a publisher answered from here does not
/// wait for the fan-out (see `answer_first` in the server). Its `subscribers` are counted just
/// before the hand-over (see `Hub::deliver_after`). It runs while the channel is held, so it
/// must be quick and must not block.
pub type BeforeFanOut<'a> = &'a mut (dyn FnMut(&Published) + Send);

/// A cursor that cannot be served exactly: messages the client asked for are gone, or the
/// history it refers to was replaced (another epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The channel.
    pub cid: ChannelId,
    /// The channel's current epoch.
    pub epoch: Epoch,
    /// The offset of the first message the client gets after the gap.
    pub first: u64,
    /// What the client asked for.
    pub requested: ChannelCursor,
}

impl Gap {
    /// The gap as a JSON object: `{"type":"gap","cid":…,"epoch":…,"first":…,"requested":…}`.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"type":"gap","cid":"{}","epoch":"{}","first":{},"requested":"{}"}}"#,
            self.cid, self.epoch, self.first, self.requested
        )
    }
}

/// Messages read from a channel's history after a cursor.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    /// Messages after the cursor, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// Where a reader that received `messages` stands: the last message's position, or the
    /// channel's current position when nothing was returned.
    pub position: Position,
    /// Set when the cursor could not be served exactly.
    pub gap: Option<Gap>,
}

/// Where positions and history live. See the module documentation.
pub trait Broker: Send + Sync + 'static {
    /// Gives `payload` the channel's next position, stores it in history and hands it to the
    /// hub. Messages of one channel must reach the hub in position order. `before_fan_out`,
    /// if given, is called once with the outcome before the hub gets the message.
    fn publish<'a>(
        &'a self,
        cid: &'a ChannelId,
        payload: &'a Payload,
        before_fan_out: Option<BeforeFanOut<'a>>,
    ) -> BoxFuture<'a, Result<Published, EngineError>>;

    /// Reads at most `limit` messages after `cursor`, oldest first. Reading a channel that does
    /// not exist yet creates it (with a fresh epoch), so every subscriber has a position.
    fn read<'a>(
        &'a self,
        cid: &'a ChannelId,
        cursor: ChannelCursor,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryRead, EngineError>>;

    /// Drops expired history and forgets idle channels; called periodically.
    fn sweep(&self);

    /// Number of channels with state in the broker.
    fn channel_count(&self) -> usize;
}
