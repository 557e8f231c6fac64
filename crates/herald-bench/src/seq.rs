//! Per-subscriber bookkeeping of which sequence numbers arrived: new, duplicate or out of order.
//!
//! A subscriber records the runs of sequences it has seen as intervals, so a stream delivered in
//! order costs one interval however long it is, and memory grows only with the number of holes.
//! At the end the run compares the intervals with what was actually published.

use std::collections::{BTreeMap, BTreeSet};

/// What one observation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time this sequence arrived.
    New,
    /// It had arrived before.
    Duplicate,
}

/// The sequences one subscriber has received on its channel.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    /// Seen sequences as disjoint, non-adjacent inclusive intervals: start → end.
    runs: BTreeMap<u64, u64>,
    max_seen: u64,
    /// Distinct sequences received.
    pub unique: u64,
    /// Deliveries of a sequence already received.
    pub duplicates: u64,
    /// New sequences that arrived after a higher one.
    pub reordered: u64,
}

impl SeqTracker {
    /// Records the arrival of `seq` (≥ 1).
    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq == self.max_seen.wrapping_add(1) && self.extend_last(seq) {
            return self.fresh(seq);
        }
        let before = self.runs.range(..=seq).next_back().map(|(&s, &e)| (s, e));
        if let Some((_, end)) = before {
            if end >= seq {
                self.duplicates += 1;
                return Seen::Duplicate;
            }
        }
        if seq < self.max_seen {
            self.reordered += 1;
        }
        let mut start = seq;
        let mut end = seq;
        if let Some((s, e)) = before {
            if e + 1 == seq {
                start = s;
            }
        }
        if let Some(next_end) = seq.checked_add(1).and_then(|n| self.runs.remove(&n)) {
            end = next_end;
        }
        self.runs.insert(start, end);
        self.fresh(seq)
    }

    fn extend_last(&mut self, seq: u64) -> bool {
        match self.runs.last_entry() {
            Some(mut last) if *last.get() + 1 == seq => {
                *last.get_mut() = seq;
                true
            }
            _ => false,
        }
    }

    fn fresh(&mut self, seq: u64) -> Seen {
        self.max_seen = self.max_seen.max(seq);
        self.unique += 1;
        Seen::New
    }

    /// How many of the sequences `1..=published`, except those in `failed`, were received.
    pub fn count_seen(&self, published: u64, failed: &BTreeSet<u64>) -> u64 {
        self.runs
            .iter()
            .filter(|(&start, _)| start <= published)
            .map(|(&start, &end)| {
                let end = end.min(published);
                let missing_publishes = failed.range(start..=end).count() as u64;
                end - start + 1 - missing_publishes
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(seqs: &[u64]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.observe(s);
        }
        t
    }

    #[test]
    fn in_order_is_one_run() {
        let t = tracker(&(1..=1000).collect::<Vec<_>>());
        assert_eq!(t.runs.len(), 1);
        assert_eq!((t.unique, t.duplicates, t.reordered), (1000, 0, 0));
        assert_eq!(t.count_seen(1000, &BTreeSet::new()), 1000);
    }

    #[test]
    fn counts_duplicates() {
        let mut t = tracker(&[1, 2, 3]);
        assert_eq!(t.observe(2), Seen::Duplicate);
        assert_eq!(t.observe(3), Seen::Duplicate);
        assert_eq!(t.observe(4), Seen::New);
        assert_eq!((t.unique, t.duplicates), (4, 2));
    }

    #[test]
    fn counts_reordering_and_fills_holes() {
        let mut t = tracker(&[1, 3, 5]);
        assert_eq!(t.runs.len(), 3);
        assert_eq!(t.observe(2), Seen::New);
        assert_eq!(t.observe(4), Seen::New);
        assert_eq!(t.runs.len(), 1, "holes merged: {:?}", t.runs);
        assert_eq!(t.reordered, 2);
        assert_eq!(t.observe(4), Seen::Duplicate);
        assert_eq!(t.count_seen(5, &BTreeSet::new()), 5);
    }

    #[test]
    fn missing_first_message_is_a_loss() {
        let t = tracker(&(2..=10).collect::<Vec<_>>());
        assert_eq!(t.count_seen(10, &BTreeSet::new()), 9);
        assert_eq!(t.runs.len(), 1);
    }

    #[test]
    fn failed_publishes_are_not_expected() {
        // 1..=10 published; 4 and 7 failed (but 7 was delivered anyway).
        let failed: BTreeSet<u64> = [4, 7].into();
        let t = tracker(&[1, 2, 3, 5, 6, 7, 8, 9, 10]);
        assert_eq!(t.count_seen(10, &failed), 8);
        assert_eq!(t.unique, 9);
    }

    #[test]
    fn ignores_sequences_beyond_published() {
        let t = tracker(&[1, 2, 3, 9]);
        assert_eq!(t.count_seen(3, &BTreeSet::new()), 3);
        assert_eq!(t.count_seen(0, &BTreeSet::new()), 0);
    }

    #[test]
    fn huge_sequences_do_not_overflow() {
        let mut t = tracker(&[u64::MAX]);
        assert_eq!(t.observe(u64::MAX), Seen::Duplicate);
        assert_eq!(t.observe(u64::MAX - 1), Seen::New);
        assert_eq!(t.runs.len(), 1);
    }
}
