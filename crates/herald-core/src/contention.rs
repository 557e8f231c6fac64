//! How loaded a small channel is, judged by its publishes colliding on the channel lock.
//!
//! The load decides how `Hub::deliver` writes a message to a channel small enough for the
//! publisher to write alone (a large one is shared between the connection threads, see
//! `crate::shares`):
//! - **quiet**: the publisher writes every idle subscriber itself (up to a bound, `DIRECT_MAX`
//!   in `hub`): while publishes do not queue up, that is the cheapest way and the quickest;
//! - **hot** (publishes collide: one had to wait for the previous one's fan-out): every message
//!   is queued, and each connection writes its backlog in one system call.
//!
//! One collision proves little — two publishers can meet by chance at a few dozen messages per
//! second — and turning hot on it costs CPU at exactly the rates where direct writes pay off
//! most. So the channel keeps a small score under its lock: a contended publish adds
//! [`CONTENDED_STEP`], an uncontended one takes one away; the channel is hot while the score is
//! at least [`HOT_AT`]. It takes two collisions close together to turn hot, and a run of
//! uncontended publishes to become quiet again.

/// What a contended publish adds to the score.
const CONTENDED_STEP: u8 = 2;
/// The score from which the channel is hot.
const HOT_AT: u8 = 4;
/// The score never exceeds this, so a channel cools down within a bounded number of publishes.
const MAX_SCORE: u8 = 8;

/// The contention score of one channel. See the module documentation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Contention(u8);

/// How loaded a channel is; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Publishes do not queue up: the publisher writes every idle subscriber.
    Quiet,
    /// Collisions close together: every message is queued for the connections.
    Hot,
}

impl Contention {
    /// Records one publish (`contended`: it had to wait for the channel lock) and tells how
    /// loaded the channel is now.
    pub fn record(&mut self, contended: bool) -> Load {
        self.0 = if contended {
            self.0.saturating_add(CONTENDED_STEP).min(MAX_SCORE)
        } else {
            self.0.saturating_sub(1)
        };
        if self.0 >= HOT_AT {
            Load::Hot
        } else {
            Load::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Contention, Load};

    #[test]
    fn uncontended_publishes_are_quiet() {
        let mut c = Contention::default();
        for _ in 0..10 {
            assert_eq!(c.record(false), Load::Quiet);
        }
    }

    #[test]
    fn collisions_apart_stay_quiet() {
        let mut c = Contention::default();
        for _ in 0..10 {
            assert_eq!(c.record(true), Load::Quiet);
            assert_eq!(c.record(false), Load::Quiet);
            assert_eq!(c.record(false), Load::Quiet);
        }
    }

    #[test]
    fn collisions_close_together_are_hot_until_quiet_publishes_cool_it() {
        let mut c = Contention::default();
        assert_eq!(c.record(true), Load::Quiet, "one collision is not hot");
        assert_eq!(c.record(true), Load::Hot);
        for _ in 0..10 {
            assert_eq!(
                c.record(true),
                Load::Hot,
                "stays hot under constant contention"
            );
        }
        let hot = (0..10).take_while(|_| c.record(false) == Load::Hot).count();
        assert_eq!(hot, 4, "cools down after 5 quiet publishes");
        assert_eq!(c.record(false), Load::Quiet);
    }
}
