//! Transactions behind the `mercato:commerce/transactions` capability: a
//! list of writes with preconditions, committed all or none.
//!
//! Every backend gives the same answers: writes run in key order (namespace,
//! bucket, key), whatever order they were given in (so two transactions lock
//! rows in the same order and cannot deadlock), each sees the writes before
//! it, and a failure names the caller's index and why. A counter (a key
//! holding a canonical decimal integer, absent = 0) changes by a delta within
//! bounds, so concurrent bounded decrements of one hot counter never fail
//! spuriously.

use async_trait::async_trait;

use super::kv::{MAX_BATCH, Versioned};
use super::{Result, StorageError};

/// Most writes one transaction may hold.
pub const MAX_WRITES: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    None,
    Absent,
    Present,
    Version(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>),
    Delete,
    Add { delta: i64, min: i64, max: i64 },
    Check,
}

/// One write, with the namespace the host resolved for it.
#[derive(Clone, Debug)]
pub struct Write {
    pub namespace: &'static str,
    pub bucket: String,
    pub key: String,
    pub precondition: Precondition,
    pub op: Op,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Present,
    Absent,
    VersionMismatch,
    OutOfBounds,
    NotACounter,
}

/// Why a transaction did not commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub index: usize,
    pub reason: Reason,
    pub current: Option<i64>,
}

/// The new version of each write (0 for deletes and checks), or the write
/// that failed.
pub type Outcome = std::result::Result<Vec<i64>, Failed>;

/// An event for the outbox, written by the transaction that makes the change
/// it tells of (SPEC §6.9), already rendered by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Stable and unique: an id already in the outbox is not written again
    /// (while it is there: retention deletes old events; a change's own
    /// version precondition is what keeps a re-driven change from writing
    /// its event twice).
    pub id: String,
    /// `order.paid`, `order.fulfilled`, `order.cancelled`, `stock.low`.
    pub kind: &'static str,
    /// What it is about (an order id, a sku): the relay keeps each subject's
    /// events in order.
    pub subject: String,
    /// Unix ms, from the host that committed it.
    pub created_at: i64,
    /// The event's data as the operator sees it (JSON).
    pub data: Vec<u8>,
    /// Each concerned merchant's view of the data (JSON), sorted by merchant.
    pub views: Vec<(String, Vec<u8>)>,
    /// Written only if this counter change crosses a threshold.
    pub when: Option<Crossing>,
}

/// The condition of an event that depends on counters (`stock.low`): the
/// transaction's write `write` (an `add`) takes its counter from the value of
/// `threshold_key` (a counter in the same namespace and bucket; absent or not
/// above 0: no threshold) or more to less. The backend decides it after the
/// writes, on both counters' values under the transaction's locks, and then
/// sets `value_field` and `threshold_field` of the data and of each view
/// (JSON objects) to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    /// Index into the transaction's writes.
    pub write: usize,
    pub threshold_key: String,
    pub value_field: &'static str,
    pub threshold_field: &'static str,
}

impl Crossing {
    /// Whether a change by `delta` that left the counter at `after` crossed
    /// `threshold`.
    pub fn crossed(delta: i64, after: i64, threshold: i64) -> bool {
        let before = after.checked_sub(delta);
        threshold > 0 && after < threshold && before.is_some_and(|before| before >= threshold)
    }
}

impl Event {
    /// The event as the outbox holds it: `None` if it has a crossing and that
    /// did not cross, given `counter` (a counter's value now, by namespace,
    /// bucket and key).
    pub(crate) fn resolved<E>(
        &self,
        writes: &[Write],
        mut counter: impl FnMut(&str, &str, &str) -> std::result::Result<Option<i64>, E>,
    ) -> std::result::Result<Option<Event>, E> {
        let Some(c) = &self.when else { return Ok(Some(self.clone())) };
        let Some(w) = writes.get(c.write) else { return Ok(None) };
        let Op::Add { delta, .. } = w.op else { return Ok(None) };
        let Some(after) = counter(w.namespace, &w.bucket, &w.key)? else { return Ok(None) };
        let threshold = counter(w.namespace, &w.bucket, &c.threshold_key)?.unwrap_or(0);
        if !Crossing::crossed(delta, after, threshold) {
            return Ok(None);
        }
        let set = |json: &[u8]| -> Vec<u8> {
            match serde_json::from_slice::<serde_json::Value>(json) {
                Ok(mut v) if v.is_object() => {
                    v[c.value_field] = after.into();
                    v[c.threshold_field] = threshold.into();
                    serde_json::to_vec(&v).unwrap_or_else(|_| json.to_vec())
                }
                _ => json.to_vec(),
            }
        };
        Ok(Some(Event {
            data: set(&self.data),
            views: self.views.iter().map(|(m, d)| (m.clone(), set(d))).collect(),
            when: None,
            ..self.clone()
        }))
    }
}

/// Most events one transaction may carry: a checkout's reservation carries
/// one `stock.low` per line (a cart holds at most 200).
pub const MAX_EVENTS: usize = 256;

pub(crate) fn new_version() -> i64 {
    // Never 0: 0 means "no version" in the answer.
    rand::random::<i64>() | 1
}

/// A canonical decimal integer, as counters are stored.
pub(crate) fn counter_value(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let n: i64 = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}

/// Why `write` did not apply, given the row as it is now.
pub(crate) fn reason(write: &Write, row: Option<&Versioned>) -> (Reason, Option<i64>) {
    match (&write.precondition, row) {
        (Precondition::Absent, Some(_)) => return (Reason::Present, None),
        (Precondition::Present | Precondition::Version(_), None) => return (Reason::Absent, None),
        (Precondition::Version(v), Some(r)) if r.version != *v => return (Reason::VersionMismatch, None),
        _ => {}
    }
    if let Op::Add { .. } = write.op {
        return match row.map(|r| counter_value(&r.value)) {
            Some(None) => (Reason::NotACounter, None),
            Some(Some(n)) => (Reason::OutOfBounds, Some(n)),
            None => (Reason::OutOfBounds, Some(0)),
        };
    }
    // Not reached for writes that can fail only by their precondition or bound;
    // kept as the answer for a row that changed under a conditional update.
    (Reason::VersionMismatch, None)
}

/// The writes' execution order: by (namespace, bucket, key), stable.
pub(crate) fn key_order(writes: &[Write]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&writes[a], &writes[b]);
        (x.namespace, &x.bucket, &x.key).cmp(&(y.namespace, &y.bucket, &y.key))
    });
    order
}

/// What every backend refuses before it starts: more than [`MAX_WRITES`]
/// writes or [`MAX_EVENTS`] events in one transaction.
pub(crate) fn check_commit(writes: &[Write], events: &[Event]) -> Result<()> {
    if writes.len() > MAX_WRITES {
        return Err(StorageError::Invalid(format!(
            "a transaction may hold at most {MAX_WRITES} writes (got {})",
            writes.len()
        )));
    }
    if events.len() > MAX_EVENTS {
        return Err(StorageError::Invalid(format!(
            "a transaction may carry at most {MAX_EVENTS} events (got {})",
            events.len()
        )));
    }
    for c in events.iter().filter_map(|e| e.when.as_ref()) {
        if !writes.get(c.write).is_some_and(|w| matches!(w.op, Op::Add { .. })) {
            return Err(StorageError::Invalid(format!(
                "an event's crossing names write {}, which is not a counter's add",
                c.write
            )));
        }
    }
    Ok(())
}

/// What every backend refuses before it starts: a read of more than
/// [`MAX_BATCH`] keys.
pub(crate) fn check_read(keys: &[String]) -> Result<()> {
    if keys.len() > MAX_BATCH {
        return Err(StorageError::Invalid(format!(
            "a read may name at most {MAX_BATCH} keys (got {})",
            keys.len()
        )));
    }
    Ok(())
}

#[async_trait]
pub trait Transactions: Send + Sync {
    /// Commit `writes` (at most [`MAX_WRITES`]) all or none.
    /// `Ok(Err(failed))`: nothing was written.
    async fn tx_commit(&self, writes: &[Write]) -> Result<Outcome> {
        self.tx_commit_with(writes, &[]).await
    }

    /// Commit `writes` and write `events` to the outbox, all or none: the
    /// events only if every write applied. An event whose id is in the
    /// outbox already is not written again.
    async fn tx_commit_with(&self, writes: &[Write], events: &[Event]) -> Result<Outcome>;

    /// Values and versions of `keys` in one bucket, in the order given.
    async fn tx_read(&self, namespace: &str, bucket: &str, keys: &[String])
    -> Result<Vec<Option<Versioned>>>;
}

#[cfg(test)]
mod tests {
    use super::{Crossing, counter_value};

    #[test]
    fn a_crossing_is_a_change_from_the_threshold_or_more_to_less() {
        let crossed = Crossing::crossed;
        assert!(crossed(-3, 37, 40), "40 → 37");
        assert!(crossed(-50, 39, 40), "89 → 39");
        assert!(!crossed(-3, 40, 40), "43 → 40: not below");
        assert!(!crossed(-3, 36, 40), "39 → 36: below already");
        assert!(!crossed(3, 39, 40), "36 → 39: rising");
        assert!(!crossed(0, 39, 40), "no change");
        assert!(!crossed(i64::MIN, 0, 40), "a before that overflows is no crossing");
        assert!(!crossed(-3, 0, 0) && !crossed(-3, -1, 0), "threshold 0: none");
    }

    #[test]
    fn counters_are_canonical_decimals() {
        assert_eq!(counter_value(b"0"), Some(0));
        assert_eq!(counter_value(b"-12"), Some(-12));
        assert_eq!(counter_value(b"0012"), None);
        assert_eq!(counter_value(b"+1"), None);
        assert_eq!(counter_value(b"1.5"), None);
        assert_eq!(counter_value(b"{\"a\":1}"), None);
    }
}
