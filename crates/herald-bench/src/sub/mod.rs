//! Subscribers: one task per connection, whatever the transport, and what they share — the
//! connection settings, the connect deadline and the receiver that turns arrived bytes into
//! counted deliveries.
//!
//! A transport module only moves bytes: it connects, says when the subscription is live
//! ([`Receiver::connected`]) or could not be made ([`Receiver::failed`]), and hands every
//! received frame, event or body to [`Receiver::on_bytes`]. It stops when the run's
//! cancellation token fires. Streaming transports do not reconnect: a dropped stream is an error
//! and the messages it would have carried count as lost. Herald's explicit gap signals
//! (`X-Herald-Gap`, SSE `event: gap`, WebSocket `{"type":"gap"…}`) are counted as errors of
//! their own kind, so a loss the server admitted can be told from a silent one.

mod poll;
mod sse;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::marker::{self, unix_nanos};
use crate::net::Connector;
use crate::scenario::Transport;
use crate::seq::{Seen, SeqTracker};
use crate::state::{Phase, RunState};
use crate::target::Template;

/// Settings every subscriber of a run shares.
#[derive(Debug)]
pub struct SubConfig {
    /// How to receive.
    pub transport: Transport,
    /// The subscribe URL template (scheme already fitted to the transport).
    pub template: Template,
    /// Opens sockets to the server.
    pub connector: Connector,
    /// Short-polling interval.
    pub poll_interval: Duration,
    /// No connection attempt may last past this.
    pub connect_deadline: Instant,
    /// Fires when the run ends.
    pub cancel: CancellationToken,
    /// The run's shared counters.
    pub state: Arc<RunState>,
}

impl SubConfig {
    /// Runs `attempt` until the connect deadline or the end of the run; the error is an error
    /// kind.
    async fn within_connect_deadline<T>(
        &self,
        attempt: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        tokio::select! {
            result = tokio::time::timeout_at(self.connect_deadline, attempt) => {
                result.unwrap_or_else(|_| Err("connect: time limit reached".to_string()))
            }
            () = self.cancel.cancelled() => Err("connect: run ended".to_string()),
        }
    }
}

/// What a subscriber reports when the run ends.
#[derive(Debug, Clone)]
pub struct SubOutcome {
    /// Its channel index.
    pub channel: usize,
    /// Whether its subscription was ever live.
    pub connected: bool,
    /// The sequences it received.
    pub tracker: SeqTracker,
}

/// Turns received bytes into counted deliveries for one subscriber.
#[derive(Debug)]
pub struct Receiver {
    index: usize,
    channel: usize,
    connected: bool,
    tracker: SeqTracker,
    state: Arc<RunState>,
}

impl Receiver {
    /// The receiver of subscriber `index` on `channel`.
    pub fn new(index: usize, channel: usize, state: Arc<RunState>) -> Self {
        Self {
            index,
            channel,
            connected: false,
            tracker: SeqTracker::default(),
            state,
        }
    }

    /// The subscription is live (counted once).
    pub fn connected(&mut self) {
        if !self.connected {
            self.connected = true;
            RunState::bump(&self.state.connected);
            RunState::bump(&self.state.subscribers_per_channel[self.channel]);
        }
    }

    /// The subscription could not be made (undoing [`Receiver::connected`] if a long poll
    /// counted itself live before its first answer showed otherwise).
    pub fn failed(&mut self, kind: impl Into<String>) {
        if std::mem::take(&mut self.connected) {
            RunState::drop_one(&self.state.connected);
            RunState::drop_one(&self.state.subscribers_per_channel[self.channel]);
        }
        RunState::bump(&self.state.failed);
        self.state.errors.add(kind);
    }

    /// An error after the subscription was live.
    pub fn error(&self, kind: impl Into<String>) {
        self.state.errors.add(kind);
    }

    /// Counts every marker in `bytes` (a frame, an event line or a response body).
    pub fn on_bytes(&mut self, bytes: &[u8]) {
        let now = unix_nanos();
        let state = &self.state;
        let tracker = &mut self.tracker;
        let index = self.index;
        let mut publishing = None;
        marker::scan(bytes, |m| {
            if m.sent_nanos < state.start_nanos {
                RunState::bump(&state.stale_received);
            } else if m.seq == 0 {
                RunState::bump(&state.warmup_received);
            } else if tracker.observe(m.seq) == Seen::New {
                RunState::bump(&state.received);
                if *publishing.get_or_insert_with(|| state.phase() == Phase::Publish) {
                    RunState::bump(&state.received_in_publish_phase);
                }
                state
                    .latency
                    .record(index, now.saturating_sub(m.sent_nanos) / 1000);
            }
        });
    }

    fn into_outcome(self) -> SubOutcome {
        SubOutcome {
            channel: self.channel,
            connected: self.connected,
            tracker: self.tracker,
        }
    }
}

/// Subscriber `index` on channel `channel` (named `name`), from connecting until the run ends.
pub async fn subscriber(
    config: Arc<SubConfig>,
    index: usize,
    channel: usize,
    name: String,
) -> SubOutcome {
    let mut receiver = Receiver::new(index, channel, Arc::clone(&config.state));
    match config.transport {
        Transport::Ws => ws::run(&config, &mut receiver, &name).await,
        Transport::Sse => sse::run(&config, &mut receiver, &name).await,
        Transport::Longpoll => poll::run(&config, &mut receiver, &name, true).await,
        Transport::Poll => poll::run(&config, &mut receiver, &name, false).await,
    }
    receiver.into_outcome()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marker::encode;

    #[test]
    fn counts_new_warmup_stale_and_duplicates() {
        let state = Arc::new(RunState::new(1, 1));
        state.set_phase(Phase::Publish);
        let mut rx = Receiver::new(0, 0, Arc::clone(&state));
        rx.connected();
        rx.connected();
        let now = unix_nanos();
        let body = format!(
            "[{},{},{},{}]",
            encode(1, now, 30),
            encode(0, now, 30),
            encode(2, state.start_nanos - 1, 30),
            encode(1, now, 30)
        );
        rx.on_bytes(body.as_bytes());
        assert_eq!(RunState::get(&state.connected), 1);
        assert_eq!(RunState::get(&state.received), 1);
        assert_eq!(RunState::get(&state.received_in_publish_phase), 1);
        assert_eq!(RunState::get(&state.warmup_received), 1);
        assert_eq!(RunState::get(&state.stale_received), 1);
        assert_eq!(state.latency.merged().len(), 1);
        let outcome = rx.into_outcome();
        assert!(outcome.connected);
        assert_eq!((outcome.tracker.unique, outcome.tracker.duplicates), (1, 1));
    }
}
