//! Herald's core: channels, positions, messages, history and fan-out, with no HTTP in sight.
//!
//! The server crate turns HTTP requests into calls on an [`Engine`] and turns what arrives in
//! an [`Outbox`] into bytes on a socket. Everything in between is here, so that it can be
//! tested without sockets and reused by every transport and every backend:
//!
//! - [`ChannelId`]: a validated channel name.
//! - [`Position`], [`Epoch`], [`ChannelCursor`]: where a reader stands, and the text grammar
//!   clients use to say so.
//! - [`Payload`], [`Message`]: a validated body and the envelope built from it once.
//! - [`Hub`] and [`Outbox`]: who is subscribed, and each connection's bounded queue.
//! - [`Broker`] and [`MemoryBroker`]: positions and history behind a trait.
//! - [`Subscriptions`]: per-connection exactly-once and gap detection.
//! - [`shares`]: a large channel's fan-out handed to each connection thread, written in runs.

mod broker;
mod channel;
mod channel_map;
mod clock;
mod contention;
mod engine;
pub mod home_thread;
mod hub;
mod memory;
mod message;
mod outbox;
mod position;
pub mod shares;
mod subscriptions;

pub use broker::{BeforeFanOut, BoxFuture, Broker, EngineError, Gap, HistoryRead, Published};
pub use channel::{ChannelId, ChannelIdError, MAX_CHANNEL_ID_LEN};
pub use clock::now_ms;
pub use contention::Load;
pub use engine::Engine;
pub use hub::Hub;
pub use memory::{BrokerBounds, ChannelLimits, ChannelLimitsResolver, HistoryLimits, MemoryBroker};
pub use message::{
    in_sequence, script_safe_json, websocket_frame, Message, Payload, PayloadError, OPCODE_TEXT,
};
pub use outbox::{DirectDelivery, DirectOutcome, Drained, Outbox, Overflow, RunOutcome, Signals};
pub use position::{
    format_cursor, parse_cursor, parse_entry, ChannelCursor, CursorError, Epoch, EpochText,
    Position,
};
pub use shares::{Left, Share, ShareBacklog, ShareQueues};
pub use subscriptions::{Accept, Subscriptions};
