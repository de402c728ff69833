//! The inventory component: stock per sku and reservations.
//!
//! Storage (its own namespace):
//! - bucket `stock`: sku → [`StockRecord`] `{merchant, on_hand, reserved, holds}`
//!   (`holds`: reservation id → units, which makes settling idempotent);
//!   every change is a compare-and-swap on that one key, so concurrent
//!   reservations can never take more than `on_hand - reserved`.
//! - bucket `reservations`: reservation id → [`ReservationRecord`].
//!
//! A reservation takes its lines one key at a time; if a line cannot be
//! served, the lines already taken are given back before the error returns,
//! so a reservation is all or nothing. A commit or a release first claims the
//! reservation (compare-and-swap on its record), so only one of them applies
//! it. A reservation whose holder dies is released by `sweep-expired`, which
//! also finishes a settlement whose settler died.

mod stock;

use mercato_kit::kv::{self, Change};
use mercato_kit::types::{Error, Reservation, ReservationLine, Shortage, StockLevel};
use serde::{Deserialize, Serialize};
use stock::StockRecord;

mod bindings {
    mercato_kit::component_bindings!("../../wit", "mercato:commerce/inventory-component", {
        "wasi:keyvalue/batch@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::batch,
        "wasi:clocks/wall-clock@0.2.12": mercato_kit::bindings::wasi::clocks::wall_clock,
        "wasi:random/random@0.2.12": mercato_kit::bindings::wasi::random::random,
    });
}

use bindings::exports::mercato::commerce::inventory::Guest;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct LineRecord {
    sku: String,
    quantity: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct ReservationRecord {
    id: String,
    lines: Vec<LineRecord>,
    expires_at: u64,
    #[serde(default)]
    state: State,
}

/// Where a reservation is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
enum State {
    /// Units held, waiting for a commit or for expiry.
    #[default]
    Held,
    /// Claimed by a commit; its lines are being taken off the shelf.
    Committing,
    /// Claimed by a release; its lines are being given back.
    Releasing,
}

/// How long after its expiry a claimed reservation that was never finished
/// (its settler crashed or was stopped) is finished by the sweep.
const SETTLE_GRACE_MS: u64 = 60_000;

/// Claim a held reservation for a commit or a release, with compare-and-swap:
/// exactly one caller gets `Some`, so a sweep (on any replica) racing a
/// commit cannot release what is being committed.
fn claim(reservations: &kv::Bucket, id: &str, to: State) -> Result<Option<ReservationRecord>, Error> {
    kv::update(reservations, id, |current: Option<ReservationRecord>| match current {
        Some(r) if r.state == State::Held => {
            let claimed = ReservationRecord { state: to, ..r.clone() };
            Ok(Change::Write(claimed.clone(), Some(claimed)))
        }
        _ => Ok(Change::Keep(None)),
    })
}

/// Apply a claimed reservation's lines, then forget it. Every step is
/// idempotent (holds are keyed by reservation id), so a settlement that was
/// interrupted can simply be run again.
fn settle(reservations: &kv::Bucket, record: &ReservationRecord) -> Result<(), Error> {
    let stock = kv::open("stock")?;
    for line in &record.lines {
        change_stock(&stock, &line.sku, |s| {
            Ok(match record.state {
                State::Committing => s.committed(&record.id),
                _ => s.released(&record.id),
            })
        })?;
    }
    kv::delete(reservations, &record.id)
}

fn level(sku: &str, record: Option<&StockRecord>) -> StockLevel {
    let (on_hand, reserved) = record.map_or((0, 0), |r| (r.on_hand, r.reserved));
    StockLevel { sku: sku.to_string(), on_hand, reserved, available: on_hand.saturating_sub(reserved) }
}

/// Retries of a stock change that must complete once a reservation is
/// claimed: giving up half-way through a commit or a release would leave some
/// lines applied and others not.
const SETTLE_RETRIES: u32 = 100_000;

/// Apply `f` to the stock of `sku` with compare-and-swap, retrying through
/// contention (the request deadline still bounds it).
fn change_stock(
    bucket: &kv::Bucket,
    sku: &str,
    f: impl Fn(&StockRecord) -> Result<StockRecord, Error>,
) -> Result<StockRecord, Error> {
    kv::update_with_retries(bucket, sku, SETTLE_RETRIES, |current: Option<StockRecord>| {
        let current = current.ok_or_else(|| Error::NotFound(format!("sku {sku:?}")))?;
        let next = f(&current)?;
        Ok(Change::Write(next.clone(), next))
    })
}

/// Give back the holds of reservation `id` on `lines` (a failed reserve).
fn unreserve(bucket: &kv::Bucket, id: &str, lines: &[LineRecord]) -> Result<(), Error> {
    for line in lines {
        change_stock(bucket, &line.sku, |s| Ok(s.released(id)))?;
    }
    Ok(())
}

struct Inventory;

impl Guest for Inventory {
    fn levels(skus: Vec<String>) -> Result<Vec<StockLevel>, Error> {
        let bucket = kv::open("stock")?;
        let records: Vec<Option<StockRecord>> = kv::get_many(&bucket, &skus)?;
        Ok(skus.iter().zip(records.iter()).map(|(sku, r)| level(sku, r.as_ref())).collect())
    }

    fn stock_of(merchant: String, sku: String) -> Result<StockLevel, Error> {
        let bucket = kv::open("stock")?;
        let record: StockRecord =
            kv::get(&bucket, &sku)?.ok_or_else(|| Error::NotFound(format!("sku {sku:?}")))?;
        if record.merchant != merchant {
            return Err(Error::Forbidden(format!("sku {sku:?} belongs to another merchant")));
        }
        Ok(level(&sku, Some(&record)))
    }

    fn register_sku(merchant: String, sku: String, on_hand: u32) -> Result<StockLevel, Error> {
        let bucket = kv::open("stock")?;
        let record = kv::update(&bucket, &sku, |current: Option<StockRecord>| match current {
            Some(existing) if existing.merchant == merchant => Ok(Change::Keep(existing)),
            Some(_) => Err(Error::Conflict(format!("sku {sku:?} already exists"))),
            None => {
                let fresh = StockRecord::new(&merchant, on_hand);
                Ok(Change::Write(fresh.clone(), fresh))
            }
        })?;
        Ok(level(&sku, Some(&record)))
    }

    fn set_on_hand(merchant: String, sku: String, on_hand: u32) -> Result<StockLevel, Error> {
        let bucket = kv::open("stock")?;
        let record = change_stock(&bucket, &sku, |s| {
            if s.merchant != merchant {
                return Err(Error::Forbidden(format!("sku {sku:?} belongs to another merchant")));
            }
            s.with_on_hand(on_hand)
        })?;
        Ok(level(&sku, Some(&record)))
    }

    fn reserve(lines: Vec<ReservationLine>, ttl_ms: u64) -> Result<Reservation, Error> {
        let lines = stock::merge_lines(&lines)?;
        let id = mercato_kit::random_id("res_");
        let bucket = kv::open("stock")?;
        let mut taken: Vec<LineRecord> = Vec::new();
        let mut shortages: Vec<Shortage> = Vec::new();
        for line in &lines {
            let result = kv::update(&bucket, &line.sku, |current: Option<StockRecord>| {
                let Some(s) = current else {
                    return Ok(Change::Keep(Err(0)));
                };
                match s.reserved_more(&id, line.quantity) {
                    Some(next) => Ok(Change::Write(next, Ok(()))),
                    None => Ok(Change::Keep(Err(s.available()))),
                }
            });
            match result {
                Ok(Ok(())) => taken.push(LineRecord { sku: line.sku.clone(), quantity: line.quantity }),
                Ok(Err(available)) => {
                    shortages.push(Shortage { sku: line.sku.clone(), requested: line.quantity, available })
                }
                Err(e) => {
                    unreserve(&bucket, &id, &taken)?;
                    return Err(e);
                }
            }
        }
        if !shortages.is_empty() {
            unreserve(&bucket, &id, &taken)?;
            return Err(Error::OutOfStock(shortages));
        }
        let record = ReservationRecord {
            id,
            lines: taken,
            expires_at: mercato_kit::now_ms().saturating_add(ttl_ms),
            state: State::Held,
        };
        let reservations = kv::open("reservations")?;
        if let Err(e) = kv::put(&reservations, &record.id, &record) {
            unreserve(&bucket, &record.id, &record.lines)?;
            return Err(e);
        }
        Ok(Reservation {
            id: record.id,
            lines: record
                .lines
                .into_iter()
                .map(|l| ReservationLine { sku: l.sku, quantity: l.quantity })
                .collect(),
            expires_at: record.expires_at,
        })
    }

    fn commit(reservation_id: String) -> Result<(), Error> {
        let reservations = kv::open("reservations")?;
        let record = claim(&reservations, &reservation_id, State::Committing)?.ok_or_else(|| {
            Error::Conflict(format!("reservation {reservation_id:?} expired or was already settled"))
        })?;
        settle(&reservations, &record)
    }

    fn release(reservation_id: String) -> Result<(), Error> {
        let reservations = kv::open("reservations")?;
        match claim(&reservations, &reservation_id, State::Releasing)? {
            Some(record) => settle(&reservations, &record),
            None => Ok(()),
        }
    }

    fn restock(lines: Vec<ReservationLine>) -> Result<(), Error> {
        let lines = stock::merge_lines(&lines)?;
        let bucket = kv::open("stock")?;
        for line in &lines {
            change_stock(&bucket, &line.sku, |s| s.restocked(line.quantity))?;
        }
        Ok(())
    }

    fn sweep_expired(now: u64) -> Result<u32, Error> {
        let reservations = kv::open("reservations")?;
        let mut released = 0;
        let mut cursor: Option<String> = None;
        loop {
            let (keys, next) = kv::list_keys(&reservations, cursor.as_deref())?;
            let records: Vec<Option<ReservationRecord>> = kv::get_many(&reservations, &keys)?;
            for record in records.into_iter().flatten() {
                match record.state {
                    State::Held if record.expires_at <= now => {
                        Self::release(record.id)?;
                        released += 1;
                    }
                    // A settlement whose settler died: finish it the same way.
                    State::Committing | State::Releasing
                        if record.expires_at.saturating_add(SETTLE_GRACE_MS) <= now =>
                    {
                        settle(&reservations, &record)?;
                        released += 1;
                    }
                    _ => {}
                }
            }
            match next {
                Some(n) => cursor = Some(n),
                None => return Ok(released),
            }
        }
    }
}

// Exports are wasm symbols; a native build (unit tests) has none.
#[cfg(target_family = "wasm")]
bindings::export!(Inventory with_types_in bindings);
