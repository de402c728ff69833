//! Following the outbox by `seq` (`mercato events tail`) without missing an
//! event.
//!
//! On SQLite an event's `seq` is its place in commit order, but on
//! PostgreSQL it is drawn at insert: a transaction that drew a lower `seq`
//! can commit after one with a higher `seq` was read. A reader that moved
//! its cursor past the higher one would never see the lower. So a
//! [`Follower`] keeps its cursor below the first gap in what it has seen
//! and reads from there again, printing each event once; a gap is given up
//! (taken for a `seq` no event will have: a rolled-back transaction's, or
//! one PostgreSQL's sequence skipped) only once it has stayed open for
//! [`GAP_GRACE`], far longer than the moment between an event's insert and
//! its commit (both in one statement, `mercato_tx_events`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a gap in `seq` may stay open before it is given up.
pub const GAP_GRACE: Duration = Duration::from_secs(10);

/// Where a reader of the outbox stands.
#[derive(Debug)]
pub struct Follower {
    /// Every `seq` up to here is done with: shown, or a gap given up.
    cursor: i64,
    /// What was shown above the cursor.
    shown: BTreeSet<i64>,
    /// Open gaps, by their first `seq`: when each was first seen.
    gaps: BTreeMap<i64, Instant>,
}

impl Follower {
    /// Follow events after `after`.
    pub fn after(after: i64) -> Follower {
        Follower { cursor: after, shown: BTreeSet::new(), gaps: BTreeMap::new() }
    }

    /// Read from here (`GET /v1/admin/events?after=`).
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// Whether an event with `seq` is new (not shown yet): then it counts
    /// as shown.
    pub fn show(&mut self, seq: i64) -> bool {
        seq > self.cursor && self.shown.insert(seq)
    }

    /// After a full read from the cursor: time every gap in what was shown
    /// (from when it was first seen), then move the cursor over what is
    /// done with, up to the first gap still within its grace at `now`.
    pub fn settle(&mut self, now: Instant) {
        let mut before = self.cursor;
        for &seq in &self.shown {
            if seq != before + 1 {
                // `before + 1 ..= seq - 1` are missing.
                self.gaps.entry(before + 1).or_insert(now);
            }
            before = seq;
        }
        let mut done = self.cursor;
        for &seq in &self.shown {
            if seq != done + 1
                && self.gaps.get(&(done + 1)).is_some_and(|&t| now.duration_since(t) < GAP_GRACE)
            {
                break;
            }
            done = seq;
        }
        self.cursor = done;
        self.shown.retain(|&seq| seq > done);
        self.gaps.retain(|&start, _| start > done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_holds_the_cursor_until_filled_or_given_up() {
        let t0 = Instant::now();
        let mut f = Follower::after(0);
        for seq in [1, 2, 4, 5] {
            assert!(f.show(seq));
        }
        f.settle(t0);
        assert_eq!(f.cursor(), 2, "stops before the gap at 3");
        assert!(!f.show(4), "read again from 2, 4 is not shown twice");
        // 3 commits late: shown, and the cursor moves past it.
        assert!(f.show(3));
        f.settle(t0 + Duration::from_secs(1));
        assert_eq!(f.cursor(), 5);
        // A gap nothing fills is given up after the grace.
        for seq in [7, 8] {
            assert!(f.show(seq));
        }
        f.settle(t0 + Duration::from_secs(2));
        assert_eq!(f.cursor(), 5);
        f.settle(t0 + Duration::from_secs(2) + GAP_GRACE / 2);
        assert_eq!(f.cursor(), 5, "within the grace");
        f.settle(t0 + Duration::from_secs(2) + GAP_GRACE);
        assert_eq!(f.cursor(), 8, "6 given up");
        assert!(!f.show(6), "below the cursor: too late");
        assert!(!f.show(8));
        assert!(f.show(9));
    }

    #[test]
    fn every_gap_is_timed_from_when_it_was_first_seen() {
        let t0 = Instant::now();
        let mut f = Follower::after(0);
        for seq in [2, 4, 6, 8] {
            assert!(f.show(seq));
        }
        f.settle(t0);
        assert_eq!(f.cursor(), 0);
        // Four gaps seen at once are given up at once, not one grace each.
        f.settle(t0 + GAP_GRACE);
        assert_eq!(f.cursor(), 8);
        // A gap seen later keeps its own grace.
        for seq in [10, 12] {
            assert!(f.show(seq));
        }
        f.settle(t0 + GAP_GRACE);
        assert!(f.show(14));
        f.settle(t0 + GAP_GRACE * 3 / 2);
        assert_eq!(f.cursor(), 8, "9 is within its grace");
        f.settle(t0 + GAP_GRACE * 2);
        assert_eq!(f.cursor(), 12, "9 and 11 given up; 13 seen later");
        f.settle(t0 + GAP_GRACE * 5 / 2);
        assert_eq!(f.cursor(), 14);
    }
}
