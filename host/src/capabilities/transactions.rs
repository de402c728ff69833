//! `mercato:commerce/transactions`: atomic multi-key writes with
//! preconditions (see `wit/transactions.wit` and [`crate::storage::tx`]).
//!
//! The namespace of every write is the calling component's, fixed by the
//! host. Writes a component stages are kept in the request's [`Staging`]
//! (shared by every instance serving that request) under a random token; the
//! caller that commits them names the token, and the host commits them in
//! the stager's namespace. Events staged with them are rendered at once in
//! the API's shapes and written to the outbox by the commit that names their
//! token; an event that watches a counter (`stock.low`) is tied at commit to
//! the one write that changes it, and the database decides whether it is
//! written. Every call is raced against the request deadline in host time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bindings::host::mercato::commerce::transactions::{
    Event, EventBody, Failed, FailureReason, Host, Operation, OrderEvent, OrderEventKind, Precondition,
    StockLowEvent, TxError, Versioned, Write,
};
use crate::capabilities::keyvalue::{MAX_KEY, MAX_VALUE, is_bucket_name};
use crate::capabilities::{TrapPlan, injected};
use crate::storage::{Db, tx};

/// Most tokens one request may stage (a checkout stages two or three).
const MAX_STAGED: usize = 64;

/// Writes staged in one request, by token (and, for tests that interrupt a
/// request at a chosen step, how often each host call was made).
#[derive(Default)]
pub struct Staging {
    tokens: HashMap<String, Staged>,
    pub(crate) calls: HashMap<(&'static str, &'static str), u32>,
    /// The first export the request called (what a test's injected trap
    /// may name: `order.cancel:…`).
    pub(crate) export: Option<&'static str>,
    /// The pricing plugins that priced lines in this request, as
    /// `pricing-plugin:<merchant>` → digest (see `capabilities::provenance`).
    pub(crate) plugins: Vec<crate::bindings::types::ProvenanceEntry>,
}

pub type SharedStaging = Arc<Mutex<Staging>>;

/// What one token holds: a component's staged writes and events.
#[derive(Default)]
struct Staged {
    writes: Vec<tx::Write>,
    events: Vec<Pending>,
}

/// An event as staged: rendered, and, if it depends on a counter, which one
/// (tied to the commit's write of it when the commit is made).
struct Pending {
    event: tx::Event,
    watches: Option<Watch>,
}

/// The counters a `stock.low` event watches, in the stager's namespace: the
/// one the commit changes and the threshold it must cross.
struct Watch {
    namespace: &'static str,
    bucket: String,
    key: String,
    threshold_key: String,
}

/// The transactions state of one store: the component's namespace (every
/// write's), the database, the request's deadline and staging.
pub struct TxState {
    pub namespace: &'static str,
    pub db: Db,
    pub deadline: Instant,
    pub staged: SharedStaging,
    pub traps: Arc<TrapPlan>,
}

type TxResult<T> = wasmtime::Result<Result<T, TxError>>;

fn invalid(m: impl Into<String>) -> TxError {
    TxError::Invalid(m.into())
}

fn storage(e: crate::storage::StorageError) -> TxError {
    tracing::warn!(error = %e, "transaction failed");
    TxError::Storage(e.to_string())
}

fn check_bucket_key(bucket: &str, key: &str) -> Result<(), TxError> {
    if !is_bucket_name(bucket) {
        return Err(invalid(format!("bucket {bucket:?}: [a-z0-9][a-z0-9_-]{{0,62}}")));
    }
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(invalid(format!("keys must be 1 to {MAX_KEY} bytes")));
    }
    Ok(())
}

/// The host form of the guest's writes, in `namespace`.
fn convert(namespace: &'static str, writes: Vec<Write>) -> Result<Vec<tx::Write>, TxError> {
    if writes.len() > tx::MAX_WRITES {
        return Err(invalid(format!("at most {} writes per transaction", tx::MAX_WRITES)));
    }
    writes
        .into_iter()
        .map(|w| {
            check_bucket_key(&w.bucket, &w.key)?;
            let precondition = match w.precondition {
                Precondition::None => tx::Precondition::None,
                Precondition::Absent => tx::Precondition::Absent,
                Precondition::Present => tx::Precondition::Present,
                Precondition::Version(v) => tx::Precondition::Version(v as i64),
            };
            let op = match w.operation {
                Operation::Put(value) if value.len() > MAX_VALUE => {
                    return Err(invalid(format!("values must be at most {MAX_VALUE} bytes")));
                }
                Operation::Put(value) => tx::Op::Put(value),
                Operation::Delete => tx::Op::Delete,
                Operation::Check => tx::Op::Check,
                Operation::Add(a) => tx::Op::Add {
                    delta: a.delta,
                    min: a.min.unwrap_or(i64::MIN),
                    max: a.max.unwrap_or(i64::MAX),
                },
            };
            Ok(tx::Write { namespace, bucket: w.bucket, key: w.key, precondition, op })
        })
        .collect()
}

/// An event id: 1 to 100 of `[A-Za-z0-9_.-]`.
fn is_event_id(id: &str) -> bool {
    (1..=100).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The host form of a component's events: checked (who may emit what, ids,
/// views that hold only their merchant's lines) and rendered in the API's
/// shapes.
fn render(namespace: &'static str, events: Vec<Event>) -> Result<Vec<Pending>, TxError> {
    if events.len() > tx::MAX_EVENTS {
        return Err(invalid(format!("at most {} events per transaction", tx::MAX_EVENTS)));
    }
    let created_at = crate::now_ms();
    events
        .into_iter()
        .map(|e| {
            if !is_event_id(&e.id) {
                return Err(invalid("event id: 1 to 100 of [A-Za-z0-9_.-]"));
            }
            match e.body {
                EventBody::Order(o) => order_event(namespace, e.id, o, created_at),
                EventBody::StockLow(s) => stock_low_event(namespace, e.id, s, created_at),
            }
        })
        .collect()
}

fn order_event(
    namespace: &'static str,
    id: String,
    o: OrderEvent,
    created_at: i64,
) -> Result<Pending, TxError> {
    use crate::events::render::{merchant_order_json, order_json};
    // Order events tell of the order component's records only.
    if namespace != "order" {
        return Err(invalid(format!("the {namespace} component may not emit order events")));
    }
    let kind = match o.kind {
        OrderEventKind::Paid => "order.paid",
        OrderEventKind::Fulfilled => "order.fulfilled",
        OrderEventKind::Cancelled => "order.cancelled",
    };
    let mut views = Vec::with_capacity(o.views.len());
    for v in o.views {
        if v.order.id != o.order.id
            || v.order.lines.is_empty()
            || v.order.lines.iter().any(|l| l.merchant_id != v.merchant_id)
        {
            return Err(invalid(format!(
                "event {id}: a merchant's view holds only that merchant's lines of the same order"
            )));
        }
        let data = serde_json::to_vec(&merchant_order_json(&v.order)).unwrap_or_default();
        views.push((v.merchant_id, data));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    if views.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(invalid(format!("event {id}: one view per merchant")));
    }
    let data = serde_json::to_vec(&order_json(&o.order)).unwrap_or_default();
    let event = tx::Event { id, kind, subject: o.order.id, created_at, data, views, when: None };
    Ok(Pending { event, watches: None })
}

fn stock_low_event(
    namespace: &'static str,
    id: String,
    s: StockLowEvent,
    created_at: i64,
) -> Result<Pending, TxError> {
    // Stock events tell of inventory's counters only.
    if namespace != "inventory" {
        return Err(invalid(format!("the {namespace} component may not emit stock events")));
    }
    check_bucket_key(&s.bucket, &s.available_key)?;
    check_bucket_key(&s.bucket, &s.threshold_key)?;
    if !crate::auth::is_merchant_id(&s.merchant_id) || s.sku.is_empty() || s.sku.len() > MAX_KEY {
        return Err(invalid(format!("event {id}: stock.low needs a merchant id and a sku")));
    }
    // The merchant's view is the whole event: it is about their sku only.
    let data = serde_json::to_vec(&crate::events::render::stock_low_json(&s.merchant_id, &s.sku))
        .unwrap_or_default();
    let watches = Watch { namespace, bucket: s.bucket, key: s.available_key, threshold_key: s.threshold_key };
    let event = tx::Event {
        id,
        kind: "stock.low",
        subject: s.sku,
        created_at,
        views: vec![(s.merchant_id, data.clone())],
        data,
        when: None,
    };
    Ok(Pending { event, watches: Some(watches) })
}

/// The events of a commit of `writes`, each watching event tied to the one
/// `add` of its counter.
fn tie(writes: &[tx::Write], pending: Vec<Pending>) -> Result<Vec<tx::Event>, TxError> {
    pending
        .into_iter()
        .map(|Pending { mut event, watches }| {
            if let Some(w) = watches {
                let mut adds = writes.iter().enumerate().filter(|(_, x)| {
                    x.namespace == w.namespace
                        && x.bucket == w.bucket
                        && x.key == w.key
                        && matches!(x.op, tx::Op::Add { .. })
                });
                let (Some((write, _)), None) = (adds.next(), adds.next()) else {
                    return Err(invalid(format!(
                        "event {}: the commit must change {}/{} with exactly one add",
                        event.id, w.bucket, w.key
                    )));
                };
                event.when = Some(tx::Crossing {
                    write,
                    threshold_key: w.threshold_key,
                    value_field: "available",
                    threshold_field: "low_stock_threshold",
                });
            }
            Ok(event)
        })
        .collect()
}

fn failed(f: tx::Failed) -> TxError {
    TxError::Failed(Failed {
        index: u32::try_from(f.index).unwrap_or(u32::MAX),
        reason: match f.reason {
            tx::Reason::Present => FailureReason::Present,
            tx::Reason::Absent => FailureReason::Absent,
            tx::Reason::VersionMismatch => FailureReason::VersionMismatch,
            tx::Reason::OutOfBounds => FailureReason::OutOfBounds,
            tx::Reason::NotACounter => FailureReason::NotACounter,
        },
        current: f.current,
    })
}

impl Host for TxState {
    async fn read(&mut self, bucket: String, keys: Vec<String>) -> TxResult<Vec<Option<Versioned>>> {
        if let Err(e) = keys.iter().try_for_each(|k| check_bucket_key(&bucket, k)) {
            return Ok(Err(e));
        }
        let db = self.db.clone();
        let read = db.tx_read(self.namespace, &bucket, &keys);
        Ok(match tokio::time::timeout_at(self.deadline.into(), read).await {
            Err(_) => Err(TxError::Timeout),
            Ok(Err(e)) => Err(storage(e)),
            Ok(Ok(rows)) => Ok(rows
                .into_iter()
                .map(|r| r.map(|v| Versioned { value: v.value, version: v.version as u64 }))
                .collect()),
        })
    }

    async fn commit(&mut self, writes: Vec<Write>, staged: Vec<String>) -> TxResult<Vec<u64>> {
        let mut all = match convert(self.namespace, writes) {
            Ok(w) => w,
            Err(e) => return Ok(Err(e)),
        };
        let mut events = Vec::new();
        {
            let mut staging = self.staged.lock().unwrap_or_else(|p| p.into_inner());
            // All known before any is taken: a bad token leaves the others usable.
            if !staged.iter().all(|t| staging.tokens.contains_key(t)) {
                return Ok(Err(invalid("unknown staged token (each is used once, in its request)")));
            }
            for token in &staged {
                let set = staging.tokens.remove(token).unwrap_or_default();
                all.extend(set.writes);
                events.extend(set.events);
            }
        }
        if events.len() > tx::MAX_EVENTS {
            return Ok(Err(invalid(format!("at most {} events per transaction", tx::MAX_EVENTS))));
        }
        let events = match tie(&all, events) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        // The commit runs on its own task: a deadline that fires while it is
        // in flight leaves it to finish whole (the caller hears `timeout`:
        // outcome unknown), it never cuts it in half.
        let db = self.db.clone();
        let started = std::time::Instant::now();
        let work = tokio::spawn(async move {
            let before = crate::storage::events::outbox_writes();
            let outcome = db.tx_commit_with(&all, &events).await;
            // Only if events were written: a reservation's stock.low usually is not.
            if !events.is_empty()
                && matches!(outcome, Ok(Ok(_)))
                && crate::storage::events::outbox_writes() != before
            {
                crate::events::relay::wake();
            }
            outcome
        });
        let result = tokio::time::timeout_at(self.deadline.into(), work).await;
        crate::telemetry::transaction(self.namespace, started);
        if self.traps.here(self.namespace, &self.staged, "transactions", "commit") {
            return Err(injected("transactions.commit"));
        }
        Ok(match result {
            Err(_) => Err(TxError::Timeout),
            Ok(Err(join)) => Err(TxError::Storage(format!("transaction task: {join}"))),
            Ok(Ok(Err(e))) => Err(storage(e)),
            Ok(Ok(Ok(Err(f)))) => Err(failed(f)),
            Ok(Ok(Ok(Ok(versions)))) => Ok(versions.into_iter().map(|v| v as u64).collect()),
        })
    }

    async fn stage(&mut self, writes: Vec<Write>, events: Vec<Event>) -> TxResult<String> {
        let writes = match convert(self.namespace, writes) {
            Ok(w) => w,
            Err(e) => return Ok(Err(e)),
        };
        let events = match render(self.namespace, events) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        let mut staging = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        if staging.tokens.len() >= MAX_STAGED {
            return Ok(Err(invalid(format!("at most {MAX_STAGED} staged sets per request"))));
        }
        let token = format!("stg_{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        staging.tokens.insert(token.clone(), Staged { writes, events });
        Ok(Ok(token))
    }
}
