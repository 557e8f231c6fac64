//! The `client-publish-rate` limit of one WebSocket connection: a token bucket that refills
//! `rate` tokens per second and holds at most `rate` (the largest burst).
//!
//! A publish over the rate is answered with an error frame naming the limit; a client that
//! keeps publishing while refused — [`flood_limit`] refusals with no accepted publish in
//! between — is a flood, and its connection is closed with `4029`. The bucket is allocated on
//! the connection's first publish: connections that never publish (nearly all) carry one
//! empty pointer.

use std::time::Instant;

/// Refusals in a row after which a publisher is closed as a flood: twice the rate, at least
/// 20.
pub fn flood_limit(rate: u32) -> u32 {
    rate.saturating_mul(2).max(20)
}

/// What to do with one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate.
    Allowed,
    /// Over the rate: answer with an error.
    Refused,
    /// Over the rate again and again: close the connection.
    Flood,
}

/// A connection's publish budget. See the module documentation.
#[derive(Debug, Default)]
pub struct PublishRate(Option<Box<Bucket>>);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    refused_in_a_row: u32,
}

impl PublishRate {
    /// Takes a token for one publish at `rate` per second, if there is one.
    pub fn check(&mut self, rate: u32) -> Verdict {
        self.check_at(rate, Instant::now())
    }

    fn check_at(&mut self, rate: u32, now: Instant) -> Verdict {
        let capacity = f64::from(rate.max(1));
        let bucket = self.0.get_or_insert_with(|| {
            Box::new(Bucket {
                tokens: capacity,
                updated: now,
                refused_in_a_row: 0,
            })
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * capacity).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.refused_in_a_row = 0;
            Verdict::Allowed
        } else {
            bucket.refused_in_a_row += 1;
            if bucket.refused_in_a_row >= flood_limit(rate) {
                Verdict::Flood
            } else {
                Verdict::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_of_rate_then_refills_over_time() {
        let mut limit = PublishRate::default();
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limit.check_at(5, start), Verdict::Allowed);
        }
        assert_eq!(limit.check_at(5, start), Verdict::Refused);
        assert_eq!(
            limit.check_at(5, start + Duration::from_millis(200)),
            Verdict::Allowed
        );
        assert_eq!(
            limit.check_at(5, start + Duration::from_millis(200)),
            Verdict::Refused
        );
        // A long pause refills only up to the burst size.
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(limit.check_at(5, later), Verdict::Allowed);
        }
        assert_eq!(limit.check_at(5, later), Verdict::Refused);
    }

    #[test]
    fn a_client_that_keeps_publishing_while_refused_is_a_flood() {
        let mut limit = PublishRate::default();
        let now = Instant::now();
        assert_eq!(limit.check_at(1, now), Verdict::Allowed);
        for _ in 1..flood_limit(1) {
            assert_eq!(limit.check_at(1, now), Verdict::Refused);
        }
        assert_eq!(limit.check_at(1, now), Verdict::Flood);
    }

    #[test]
    fn idle_connections_hold_no_bucket() {
        assert_eq!(
            std::mem::size_of::<PublishRate>(),
            std::mem::size_of::<usize>()
        );
    }
}
