//! The live state of a run that every task shares: the phase, counters for progress and early
//! stop, error counts and the delivery-latency histogram.
//!
//! Everything here is atomics or short critical sections, so subscribers on any runtime thread
//! can update it per delivery. The final per-subscriber accounting does not live here: each
//! subscriber returns its own sequence tracker when the run ends.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::errors::ErrorCounts;
use crate::latency::ShardedHistogram;

/// Phases of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Opening subscriber connections.
    Connecting = 0,
    /// Publishing sequence-0 messages that are not counted.
    Warmup = 1,
    /// The measured publish phase.
    Publish = 2,
    /// Publishing stopped; waiting for late deliveries.
    Drain = 3,
    /// Closing everything.
    Done = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Connecting,
            1 => Phase::Warmup,
            2 => Phase::Publish,
            3 => Phase::Drain,
            _ => Phase::Done,
        }
    }

    /// Lower-case name for progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connect",
            Phase::Warmup => "warmup",
            Phase::Publish => "publish",
            Phase::Drain => "drain",
            Phase::Done => "done",
        }
    }
}

/// Shared state of one run.
#[derive(Debug)]
pub struct RunState {
    phase: AtomicU8,
    /// Markers sent before this instant (ns since the epoch) belong to an earlier run.
    pub start_nanos: u64,
    /// Subscribers that connected.
    pub connected: AtomicU64,
    /// Subscribers that could not connect.
    pub failed: AtomicU64,
    /// Connected subscribers per channel.
    pub subscribers_per_channel: Vec<AtomicU64>,
    /// Measured messages published successfully, per channel.
    pub published_per_channel: Vec<AtomicU64>,
    /// Measured messages published successfully.
    pub published: AtomicU64,
    /// Warm-up messages published successfully.
    pub warmup_published: AtomicU64,
    /// Measured messages dropped unsent because the publishers fell behind.
    pub unsent: AtomicU64,
    /// Publishes handed to a publisher and not finished yet.
    pub publishes_in_flight: AtomicU64,
    /// First deliveries of measured messages.
    pub received: AtomicU64,
    /// First deliveries of measured messages that arrived during the publish phase.
    pub received_in_publish_phase: AtomicU64,
    /// Deliveries of warm-up messages.
    pub warmup_received: AtomicU64,
    /// Deliveries of messages from earlier runs (history replayed by the server).
    pub stale_received: AtomicU64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Delivery latency of first deliveries of measured messages, µs.
    pub latency: ShardedHistogram,
}

impl RunState {
    /// Fresh state for `channels` channels, starting now.
    pub fn new(channels: usize, latency_shards: usize) -> Self {
        let zeros = || (0..channels).map(|_| AtomicU64::new(0)).collect();
        Self {
            phase: AtomicU8::new(Phase::Connecting as u8),
            start_nanos: crate::marker::unix_nanos(),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            subscribers_per_channel: zeros(),
            published_per_channel: zeros(),
            published: AtomicU64::new(0),
            warmup_published: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            publishes_in_flight: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_in_publish_phase: AtomicU64::new(0),
            warmup_received: AtomicU64::new(0),
            stale_received: AtomicU64::new(0),
            errors: ErrorCounts::default(),
            latency: ShardedHistogram::new(latency_shards),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Enters `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one from a counter.
    pub fn drop_one(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Deliveries the connected subscribers should have had so far: for each channel, its
    /// successful measured publishes times its connected subscribers.
    pub fn expected_so_far(&self) -> u64 {
        self.published_per_channel
            .iter()
            .zip(&self.subscribers_per_channel)
            .map(|(p, s)| Self::get(p) * Self::get(s))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip() {
        let s = RunState::new(2, 1);
        assert_eq!(s.phase(), Phase::Connecting);
        for p in [Phase::Warmup, Phase::Publish, Phase::Drain, Phase::Done] {
            s.set_phase(p);
            assert_eq!(s.phase(), p);
        }
    }

    #[test]
    fn expected_is_per_channel() {
        let s = RunState::new(2, 1);
        s.subscribers_per_channel[0].store(3, Ordering::Relaxed);
        s.subscribers_per_channel[1].store(2, Ordering::Relaxed);
        s.published_per_channel[0].store(10, Ordering::Relaxed);
        s.published_per_channel[1].store(1, Ordering::Relaxed);
        assert_eq!(s.expected_so_far(), 32);
    }
}
