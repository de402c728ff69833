//! The outbox (SPEC §6.9): events written by the transactions that make the
//! changes they tell of ([`crate::storage::tx::Event`],
//! `Transactions::tx_commit_with`), read here by the relay and the
//! operator's tail, and the leases that let one replica at a time relay.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::Result;

/// An event as the outbox holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Its place in the outbox: ascending in commit order on SQLite; on
    /// PostgreSQL in insert order (a subject's events keep their order).
    pub seq: i64,
    pub id: String,
    pub kind: String,
    pub subject: String,
    pub created_at: i64,
    /// The data as the operator sees it (JSON).
    pub data: Vec<u8>,
    /// The merchants it concerns (those with a view), sorted.
    pub merchants: Vec<String>,
    /// When the relay handed it on; `None` while it waits in the outbox.
    pub published_at: Option<i64>,
}

impl EventRow {
    /// The event as it is delivered: `{"id", "type", "created_at", "data"}`
    /// (`data` as stored; `created_at` in unix ms).
    pub fn envelope(&self) -> Value {
        envelope(&self.id, &self.kind, self.created_at, &self.data)
    }
}

/// `{"id", "type", "created_at", "data"}` around stored JSON data (kept as
/// a string if it is not JSON, which the host never writes).
pub fn envelope(id: &str, kind: &str, created_at: i64, data: &[u8]) -> Value {
    let data: Value = serde_json::from_slice(data)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()));
    json!({ "id": id, "type": kind, "created_at": created_at, "data": data })
}

/// Most events one read returns.
pub const MAX_EVENTS_READ: u32 = 1_000;

#[async_trait]
pub trait Events: Send + Sync {
    /// Events with `seq > after`, oldest first, at most `limit` (capped at
    /// [`MAX_EVENTS_READ`]).
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>>;

    /// Events not handed on yet, oldest first, at most `limit`.
    async fn events_unpublished(&self, limit: u32) -> Result<Vec<EventRow>>;

    /// How many events wait in the outbox.
    async fn events_unpublished_count(&self) -> Result<i64>;

    /// Mark events handed on at `now` (unix ms); marking one twice keeps
    /// the first time.
    async fn events_mark_published(&self, seqs: &[i64], now: i64) -> Result<()>;

    /// Take or renew the lease `name` for `holder` until `until` (unix ms):
    /// true if `holder` has it now (it was free, lapsed at `now`, or
    /// `holder`'s already).
    async fn lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool>;

    /// Give the lease up, if `holder` has it.
    async fn lease_release(&self, name: &str, holder: &str) -> Result<()>;
}
