//! Deciding when a channel is "hot": its publishes keep colliding on the channel lock.
//!
//! A hot channel is better served by queueing each message and letting every connection write
//! its backlog in one system call than by the publisher writing to idle sockets itself (see
//! `Hub::deliver`). One collision proves little — two publishers can meet by chance at a few
//! dozen messages per second — and flipping the delivery strategy on it costs CPU at exactly
//! the rates where direct writes pay off most. So the channel keeps a small score under its
//! lock: a contended publish adds [`CONTENDED_STEP`], an uncontended one takes one away, and
//! the channel counts as hot while the score is at least [`HOT_AT`]. It takes two collisions
//! close together to turn hot, and a run of quiet publishes to cool down again.

/// What a contended publish adds to the score.
const CONTENDED_STEP: u8 = 2;
/// The score from which the channel is hot.
const HOT_AT: u8 = 4;
/// The score never exceeds this, so a channel cools down within a bounded number of publishes.
const MAX_SCORE: u8 = 8;

/// The contention score of one channel. See the module documentation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Contention(u8);

impl Contention {
    /// Records one publish (`contended`: it had to wait for the channel lock) and tells
    /// whether the channel is hot now.
    pub fn record(&mut self, contended: bool) -> bool {
        self.0 = if contended {
            self.0.saturating_add(CONTENDED_STEP).min(MAX_SCORE)
        } else {
            self.0.saturating_sub(1)
        };
        self.0 >= HOT_AT
    }
}

#[cfg(test)]
mod tests {
    use super::Contention;

    #[test]
    fn one_collision_is_not_hot() {
        let mut c = Contention::default();
        assert!(!c.record(true));
        assert!(!c.record(false));
        assert!(!c.record(true), "two collisions apart are not hot");
    }

    #[test]
    fn collisions_close_together_are_hot_until_quiet_publishes_cool_it() {
        let mut c = Contention::default();
        assert!(!c.record(true));
        assert!(c.record(true));
        for _ in 0..10 {
            assert!(c.record(true), "stays hot under constant contention");
        }
        let quiet = (0..10).take_while(|_| c.record(false)).count();
        assert!(
            quiet <= 4,
            "cools down after at most 5 quiet publishes, took {quiet}"
        );
        assert!(!c.record(false));
    }
}
