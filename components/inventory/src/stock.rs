//! Stock arithmetic, kept pure so it can be tested natively.
//! Invariants: `reserved <= on_hand`; `reserved = Σ holds`;
//! `available = on_hand - reserved`.
//!
//! Each reservation's units are a *hold* keyed by the reservation id, so
//! reserving, committing and releasing a line are idempotent: applying one
//! twice (a retried or resumed settlement) changes nothing the second time.

use std::collections::BTreeMap;

use mercato_kit::types::{Error, ReservationLine};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StockRecord {
    pub merchant: String,
    pub on_hand: u32,
    pub reserved: u32,
    /// Reservation id → units it holds.
    #[serde(default)]
    pub holds: BTreeMap<String, u32>,
}

impl StockRecord {
    pub fn new(merchant: &str, on_hand: u32) -> Self {
        StockRecord { merchant: merchant.to_string(), on_hand, reserved: 0, holds: BTreeMap::new() }
    }

    pub fn available(&self) -> u32 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Set on-hand; it may not drop below what is reserved.
    pub fn with_on_hand(&self, on_hand: u32) -> Result<Self, Error> {
        if on_hand < self.reserved {
            return Err(Error::Conflict(format!(
                "on_hand: {on_hand} is below the {} units reserved by checkouts in progress",
                self.reserved
            )));
        }
        Ok(StockRecord { on_hand, ..self.clone() })
    }

    /// Hold `q` units for reservation `hold`, or `None` if fewer are
    /// available. Holding again for the same reservation changes nothing.
    pub fn reserved_more(&self, hold: &str, q: u32) -> Option<Self> {
        if self.holds.contains_key(hold) {
            return Some(self.clone());
        }
        (q <= self.available()).then(|| {
            let mut next = self.clone();
            next.reserved += q;
            next.holds.insert(hold.to_string(), q);
            next
        })
    }

    /// Give back the units of `hold` (nothing if it holds none).
    pub fn released(&self, hold: &str) -> Self {
        let mut next = self.clone();
        if let Some(q) = next.holds.remove(hold) {
            next.reserved = next.reserved.saturating_sub(q);
        }
        next
    }

    /// A paid order takes the units of `hold` off the shelf (nothing if it
    /// holds none).
    pub fn committed(&self, hold: &str) -> Self {
        let mut next = self.clone();
        if let Some(q) = next.holds.remove(hold) {
            next.reserved = next.reserved.saturating_sub(q);
            next.on_hand = next.on_hand.saturating_sub(q);
        }
        next
    }

    /// Put `q` units back on hand.
    pub fn restocked(&self, q: u32) -> Result<Self, Error> {
        let on_hand = self
            .on_hand
            .checked_add(q)
            .ok_or_else(|| Error::InvalidQuantity("on_hand would overflow".to_string()))?;
        Ok(StockRecord { on_hand, ..self.clone() })
    }
}

/// Merge duplicate skus and refuse zero quantities.
pub fn merge_lines(lines: &[ReservationLine]) -> Result<Vec<ReservationLine>, Error> {
    let mut merged: Vec<ReservationLine> = Vec::new();
    for line in lines {
        if line.quantity == 0 {
            return Err(Error::InvalidQuantity(format!("{}: quantity must be at least 1", line.sku)));
        }
        match merged.iter_mut().find(|m| m.sku == line.sku) {
            Some(m) => {
                m.quantity = m
                    .quantity
                    .checked_add(line.quantity)
                    .ok_or_else(|| Error::InvalidQuantity(format!("{}: quantity too large", line.sku)))?
            }
            None => merged.push(line.clone()),
        }
    }
    // A fixed order keeps concurrent reservations from taking keys in
    // opposite orders.
    merged.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserving_never_exceeds_on_hand() {
        let s = StockRecord::new("m", 10);
        let s = s.reserved_more("r1", 7).expect("7 of 10");
        assert_eq!(s.available(), 3);
        assert!(s.reserved_more("r2", 4).is_none());
        let s = s.reserved_more("r2", 3).expect("the last 3");
        assert_eq!((s.available(), s.reserved), (0, 10));
    }

    #[test]
    fn commit_and_release_follow_the_spec() {
        let s = StockRecord::new("m", 10).reserved_more("r", 4).expect("4");
        let c = s.committed("r");
        assert_eq!((c.on_hand, c.reserved, c.available()), (6, 0, 6));
        let r = s.released("r");
        assert_eq!((r.on_hand, r.reserved, r.available()), (10, 0, 10));
    }

    #[test]
    fn settling_twice_changes_nothing_the_second_time() {
        let s = StockRecord::new("m", 10).reserved_more("a", 4).expect("a").reserved_more("b", 3).expect("b");
        assert_eq!(s.reserved_more("a", 4).as_ref(), Some(&s), "holding again is a no-op");
        let once = s.committed("a");
        assert_eq!(once.committed("a"), once, "a resumed commit does not take stock twice");
        assert_eq!(once.released("a"), once, "nor does a late release give it back");
        assert_eq!((once.on_hand, once.reserved), (6, 3));
        let both = once.released("b");
        assert_eq!((both.on_hand, both.reserved, both.available()), (6, 0, 6));
        assert_eq!(both.released("b"), both);
    }

    #[test]
    fn on_hand_cannot_drop_below_reserved() {
        let s = StockRecord::new("m", 10).reserved_more("r", 5).expect("5");
        assert!(s.with_on_hand(4).is_err());
        assert_eq!(s.with_on_hand(5).map(|s| s.available()).ok(), Some(0));
    }

    #[test]
    fn lines_merge_and_sort() {
        let l = |sku: &str, quantity| ReservationLine { sku: sku.into(), quantity };
        let merged = merge_lines(&[l("b", 1), l("a", 2), l("b", 3)]).expect("valid");
        assert_eq!(
            merged.iter().map(|m| (m.sku.as_str(), m.quantity)).collect::<Vec<_>>(),
            vec![("a", 2), ("b", 4)]
        );
        assert!(merge_lines(&[l("a", 0)]).is_err());
        assert!(merge_lines(&[l("a", u32::MAX), l("a", 1)]).is_err());
    }
}
