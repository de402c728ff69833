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

/// Grows whenever this process writes events to the outbox (by one per
/// event on SQLite and memory, per transaction on PostgreSQL): a committer compares it before and after its
/// commit to tell whether its events were written — some depend on what the
/// database finds (`stock.low`), so carrying events is not enough — and wakes
/// the relay only then. Another commit in between only makes a spare wake.
static WRITTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A count that grows whenever a backend writes events (by one per event or
/// per transaction: only its changes mean anything; see [`WRITTEN`]).
pub fn outbox_writes() -> u64 {
    WRITTEN.load(std::sync::atomic::Ordering::Acquire)
}

/// A backend wrote events (one or a transaction's) in a transaction it is
/// committing.
pub(crate) fn note_outbox_write() {
    WRITTEN.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

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

    /// Delete at most `limit` events made before `before` (unix ms) that
    /// are done with: handed on, and no delivery of theirs still pending.
    /// Their merchant views and deliveries go with them. How many went.
    async fn events_prune(&self, before: i64, limit: u32) -> Result<u64>;

    /// Take or renew the lease `name` for `holder` for `ttl_ms`: true if
    /// `holder` has it now (it was free, lapsed, or `holder`'s already).
    /// Time is the database's own clock (memory: this process's), so
    /// replicas whose clocks disagree still agree on who holds a lease.
    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool>;

    /// Give the lease up, if `holder` has it.
    async fn lease_release(&self, name: &str, holder: &str) -> Result<()>;
}

/// A merchant's webhook endpoint (`Debug` leaves the secret out).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRow {
    pub merchant_id: String,
    pub url: String,
    /// The event types it receives, sorted.
    pub events: Vec<String>,
    /// The signing secret.
    pub secret: String,
    pub created_at: i64,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not delivered yet: tried next at `next_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up: still failing past the retry horizon.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> DeliveryStatus {
        match s {
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            _ => DeliveryStatus::Pending,
        }
    }
}

/// One event's delivery to one merchant's endpoint, with what is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRow {
    pub seq: i64,
    pub merchant_id: String,
    pub url: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub event_id: String,
    pub kind: String,
    pub subject: String,
    pub event_created_at: i64,
    /// The merchant's view of the event's data (JSON).
    pub data: Vec<u8>,
}

impl DeliveryRow {
    /// The body POSTed: the envelope around the merchant's view.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&envelope(&self.event_id, &self.kind, self.event_created_at, &self.data))
            .unwrap_or_default()
    }
}

/// What one attempt at a delivery came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub status: DeliveryStatus,
    /// Where it was sent.
    pub url: String,
    /// The endpoint's HTTP status, if it answered.
    pub http_status: Option<i64>,
    pub error: Option<String>,
    /// When to try again (pending), or when it was delivered.
    pub at: i64,
}

impl std::fmt::Debug for WebhookRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRow")
            .field("merchant_id", &self.merchant_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"[redacted]")
            .field("created_at", &self.created_at)
            .finish()
    }
}

#[async_trait]
pub trait Webhooks: Send + Sync {
    /// Register (or replace) a merchant's endpoint.
    async fn webhook_put(&self, row: &WebhookRow) -> Result<()>;

    async fn webhook(&self, merchant: &str) -> Result<Option<WebhookRow>>;

    /// Remove a merchant's endpoint (its pending deliveries stop: they are
    /// marked failed). False if there was none.
    async fn webhook_delete(&self, merchant: &str, now: i64) -> Result<bool>;

    /// Give up a merchant's pending deliveries if the merchant has no
    /// endpoint (made by a fan-out that raced the webhook's removal): how
    /// many. None while an endpoint is registered.
    async fn deliveries_orphaned(&self, merchant: &str, now: i64) -> Result<u64>;

    /// Make the deliveries of events `seqs`: one per concerned merchant
    /// whose endpoint takes the event's type, due at `now`. Idempotent.
    async fn deliveries_fan_out(&self, seqs: &[i64], now: i64) -> Result<()>;

    /// Merchants with a pending delivery due by `now` (at most `limit`).
    async fn deliveries_due(&self, now: i64, limit: u32) -> Result<Vec<String>>;

    /// A merchant's deliveries to attempt now, oldest first: pending, due by
    /// `now`, and each the oldest pending one of its subject (an order's
    /// later events wait behind its earlier ones).
    async fn deliveries_pending(&self, merchant: &str, now: i64, limit: u32) -> Result<Vec<DeliveryRow>>;

    /// Record attempts, each at its delivery `seq` (one that is no longer
    /// pending is left as it is), in one write.
    async fn deliveries_attempted(&self, attempts: &[(i64, Attempt)]) -> Result<()>;

    /// A merchant's deliveries, newest first, those before `before` (seq).
    async fn deliveries(&self, merchant: &str, before: Option<i64>, limit: u32) -> Result<Vec<DeliveryRow>>;
}
