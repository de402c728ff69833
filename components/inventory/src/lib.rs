//! The inventory component: stock per sku and reservations.
//!
//! Storage (its own namespace), every change through the host's
//! transactions, so each is all or none:
//! - `sku`: sku → [`SkuRecord`] (its merchant);
//! - `levels`: three counters per sku, read together: `h/<sku>`, the units on
//!   the shelf, `a/<sku>`, `on_hand − reserved`, never below 0 (a counter
//!   bound the database checks under the row lock, so concurrent
//!   reservations of a hot sku queue instead of retrying and can never take
//!   more than is there), and `t/<sku>`, the merchant's low-stock threshold
//!   (absent = 0 = none);
//! - `reservations`: reservation id → [`ReservationRecord`] (its lines).
//!
//! `reserved` is `on_hand − available`. A reservation is owned by whoever
//! commits the writes `reserve` stages (the order component's checkout, in
//! the same transaction as its order): reserve = `available −= q` per line +
//! the record; commit = `on_hand −= q` per line + delete the record; release
//! = `available += q` per line + delete the record. The record's version is
//! the precondition of commit and release, so exactly one of them applies.
//!
//! An instance lives for one request. `reserve` remembers the lines it
//! staged, so a `commit` of the same reservation in the same request (the
//! checkout's T2) stages without reading the record: its precondition is
//! then that the record still exists (reservation ids are never reused, so
//! a record that is there is the one staged).
//!
//! `stock.low`: every change that lowers `available` (a reservation, a
//! merchant lowering `on_hand`) carries a `stock.low` event that the
//! database writes only if that change takes `available` from the threshold
//! or more to less, reading both counters after the writes under the
//! transaction's locks: concurrent checkouts that together cross it once make
//! one event, whatever their interleaving, and a threshold set meanwhile
//! counts from the commit after it.

mod stock;

use mercato_kit::tx::{self, Event, EventBody, Precondition, StockLowEvent, TxError, Write};
use mercato_kit::types::{Error, ReservationLine, StockLevel};
use serde::{Deserialize, Serialize};

mod bindings {
    mercato_kit::component_bindings!("../../wit", "mercato:commerce/inventory-component", {
        "wasi:keyvalue/batch@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::batch,
        "wasi:clocks/wall-clock@0.2.12": mercato_kit::bindings::wasi::clocks::wall_clock,
        "wasi:random/random@0.2.12": mercato_kit::bindings::wasi::random::random,
        "mercato:commerce/transactions@0.6.0": mercato_kit::bindings::mercato::commerce::transactions,
    });
}

use bindings::exports::mercato::commerce::{merchant_stock, reservations, stock_levels, stock_registry};

const SKUS: &str = "sku";
const LEVELS: &str = "levels";

fn on_hand_key(sku: &str) -> String {
    format!("h/{sku}")
}

fn available_key(sku: &str) -> String {
    format!("a/{sku}")
}

fn threshold_key(sku: &str) -> String {
    format!("t/{sku}")
}

/// `delta` on the on-hand counter of `sku`, within `min ..= max`.
fn add_on_hand(sku: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> Write {
    tx::add(LEVELS, &on_hand_key(sku), delta, min, max)
}

/// `delta` on the available counter of `sku`, within `min ..= max`.
fn add_available(sku: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> Write {
    tx::add(LEVELS, &available_key(sku), delta, min, max)
}
const RESERVATIONS: &str = "reservations";

/// How often a merchant's stock change is retried when checkouts move the
/// same counter in between.
const SET_RETRIES: u32 = 64;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct SkuRecord {
    merchant: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct ReservationRecord {
    lines: Vec<ReservationLine>,
}

fn units(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn level(sku: &str, on_hand: i64, available: i64, threshold: i64) -> StockLevel {
    let on_hand = units(on_hand);
    let available = units(available).min(on_hand);
    StockLevel {
        sku: sku.to_string(),
        on_hand,
        reserved: on_hand - available,
        available,
        low_stock_threshold: units(threshold),
    }
}

/// Stock of `skus`, in one read.
fn levels_of(skus: &[String]) -> Result<Vec<StockLevel>, Error> {
    let keys: Vec<String> =
        skus.iter().flat_map(|s| [on_hand_key(s), available_key(s), threshold_key(s)]).collect();
    let counters = tx::counters(LEVELS, &keys)?;
    Ok(skus.iter().zip(counters.chunks(3)).map(|(s, c)| level(s, c[0], c[1], c[2])).collect())
}

/// The `stock.low` event of `sku` (owned by `merchant`) for the change in
/// this transaction that lowers its `available` counter: the database writes
/// it only if that change takes the counter below the sku's threshold (its
/// `t/` counter as the transaction leaves it), deciding under the
/// transaction's locks.
fn stock_low(merchant: &str, sku: &str) -> Event {
    Event {
        // Fresh per change: a change is committed at most once (its writes'
        // preconditions see to it), and the outbox keeps the id it got.
        id: mercato_kit::random_id("evt_low_"),
        body: EventBody::StockLow(StockLowEvent {
            merchant_id: merchant.to_string(),
            sku: sku.to_string(),
            bucket: LEVELS.to_string(),
            available_key: available_key(sku),
            threshold_key: threshold_key(sku),
        }),
    }
}

/// The `stock.low` events of a reservation of `lines`, one per sku (one read
/// of the skus' owners). Every sku gets one, threshold or not: the threshold
/// is read by the database at the commit, so one set while the checkout is
/// in flight still counts.
fn reservation_events(lines: &[ReservationLine]) -> Result<Vec<Event>, Error> {
    let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
    let owners = tx::read::<SkuRecord>(SKUS, &skus)?;
    // An unknown sku has no stock either: its line fails the commit.
    Ok(skus
        .iter()
        .zip(owners)
        .filter_map(|(sku, owner)| owner.map(|(r, _)| stock_low(&r.merchant, sku)))
        .collect())
}

/// Available units of `skus`, in one read of their `available` counters.
fn available_of(skus: &[String]) -> Result<Vec<u32>, Error> {
    let keys: Vec<String> = skus.iter().map(|s| available_key(s)).collect();
    let counters = tx::counters(LEVELS, &keys)?;
    Ok(counters.into_iter().map(|a| u32::try_from(a.max(0)).unwrap_or(u32::MAX)).collect())
}

/// The sku's record, checking that `merchant` owns it.
fn owned(merchant: &str, sku: &str) -> Result<(), Error> {
    let (record, _): (SkuRecord, u64) =
        tx::read_one(SKUS, sku)?.ok_or_else(|| Error::NotFound(format!("sku {sku:?}")))?;
    if record.merchant != merchant {
        return Err(Error::Forbidden(format!("sku {sku:?} belongs to another merchant")));
    }
    Ok(())
}

fn one_level(sku: &str) -> Result<StockLevel, Error> {
    levels_of(&[sku.to_string()])?.pop().ok_or_else(|| Error::NotFound(format!("sku {sku:?}")))
}

fn quantity(q: u32) -> i64 {
    i64::from(q)
}

thread_local! {
    /// The lines of the reservations this instance staged, by id.
    static STAGED: std::cell::RefCell<std::collections::HashMap<String, Vec<ReservationLine>>> =
        Default::default();
}

/// The record of reservation `id`, if it is held.
fn held(id: &str) -> Result<Option<(ReservationRecord, u64)>, Error> {
    if id.is_empty() || id.len() > 200 {
        return Err(Error::InvalidInput("reservation id: 1 to 200 characters".into()));
    }
    tx::read_one(RESERVATIONS, id)
}

struct Inventory;

impl stock_levels::Guest for Inventory {
    fn levels(skus: Vec<String>) -> Result<Vec<StockLevel>, Error> {
        levels_of(&skus)
    }

    fn available(skus: Vec<String>) -> Result<Vec<u32>, Error> {
        available_of(&skus)
    }
}

impl stock_registry::Guest for Inventory {
    fn register_sku(merchant: String, sku: String, on_hand: u32) -> Result<StockLevel, Error> {
        let writes = [
            tx::put(SKUS, &sku, &SkuRecord { merchant: merchant.clone() }, Precondition::Absent)?,
            add_on_hand(&sku, quantity(on_hand), None, None),
            add_available(&sku, quantity(on_hand), None, None),
        ];
        match tx::commit(&writes, &[]) {
            Ok(_) => one_level(&sku),
            // Registered before: by this merchant it is a no-op, by another a conflict.
            Err(TxError::Failed(f)) if f.index == 0 => match owned(&merchant, &sku) {
                Ok(()) => one_level(&sku),
                Err(Error::Forbidden(_)) => Err(Error::Conflict(format!("sku {sku:?} already exists"))),
                Err(e) => Err(e),
            },
            Err(e) => Err(tx::error(e)),
        }
    }
}

impl merchant_stock::Guest for Inventory {
    fn stock_of(merchant: String, sku: String) -> Result<StockLevel, Error> {
        owned(&merchant, &sku)?;
        one_level(&sku)
    }

    fn set_stock(
        merchant: String,
        sku: String,
        change: merchant_stock::StockChange,
    ) -> Result<StockLevel, Error> {
        owned(&merchant, &sku)?;
        let threshold = change
            .low_stock_threshold
            .map(|t| tx::put(LEVELS, &threshold_key(&sku), &quantity(t), Precondition::None))
            .transpose()?;
        let Some(on_hand) = change.on_hand else {
            // The threshold alone, with a no-op add to `available`: it takes
            // that row's lock, so the change is ordered with the checkouts of
            // the sku (a checkout reads the threshold in its commit after
            // taking the row, unlocked on PostgreSQL): each checkout commits
            // wholly before it or sees the new threshold. Never refused.
            if let Some(write) = threshold {
                tx::commit(&[add_available(&sku, 0, None, None), write], &[]).map_err(tx::error)?;
            }
            return one_level(&sku);
        };
        for _ in 0..SET_RETRIES {
            let Some((current, version)) = tx::read_one::<i64>(LEVELS, &on_hand_key(&sku))? else {
                return Err(Error::NotFound(format!("sku {sku:?}")));
            };
            let delta = quantity(on_hand) - current;
            let mut writes = vec![
                Write {
                    precondition: Precondition::Version(version),
                    ..tx::put(LEVELS, &on_hand_key(&sku), &quantity(on_hand), Precondition::None)?
                },
                // On-hand may not drop below what is reserved: available stays >= 0.
                add_available(&sku, delta, Some(0), None),
            ];
            writes.extend(threshold.clone());
            // A drop may cross the threshold (the one this commit leaves).
            let staged = if delta < 0 { vec![tx::emit(&[stock_low(&merchant, &sku)])?] } else { Vec::new() };
            match tx::commit(&writes, &staged) {
                Ok(_) => return one_level(&sku),
                // A checkout moved the stock in between: read again.
                Err(TxError::Failed(f)) if f.index == 0 => continue,
                Err(TxError::Failed(f)) => {
                    let reserved = current - (f.current.unwrap_or(0));
                    return Err(Error::Conflict(format!(
                        "on_hand: {on_hand} is below the {reserved} units reserved by checkouts in progress"
                    )));
                }
                Err(e) => return Err(tx::error(e)),
            }
        }
        Err(Error::Conflict(format!("sku {sku:?}: the stock kept changing; try again")))
    }
}

impl reservations::Guest for Inventory {
    fn reserve(id: String, lines: Vec<ReservationLine>) -> Result<String, Error> {
        let lines = stock::merge_lines(&lines)?;
        if id.is_empty() || id.len() > 200 {
            return Err(Error::InvalidInput("reservation id: 1 to 200 characters".into()));
        }
        // The stock is not read first: a line that cannot be served fails the
        // caller's commit on its counter's bound, which is checked under the
        // row lock (only the owners are read, for `stock.low`).
        let mut writes: Vec<Write> =
            lines.iter().map(|l| add_available(&l.sku, -quantity(l.quantity), Some(0), None)).collect();
        writes.push(tx::put(
            RESERVATIONS,
            &id,
            &ReservationRecord { lines: lines.clone() },
            Precondition::Absent,
        )?);
        let events = reservation_events(&lines)?;
        let token = tx::stage_with(&writes, &events)?;
        STAGED.with(|s| s.borrow_mut().insert(id, lines));
        Ok(token)
    }

    fn commit(id: String) -> Result<String, Error> {
        let (lines, precondition) = match STAGED.with(|s| s.borrow_mut().remove(&id)) {
            Some(lines) => (lines, Precondition::Present),
            None => {
                let (record, version) =
                    held(&id)?.ok_or_else(|| Error::NotFound(format!("reservation {id:?} is not held")))?;
                (record.lines, Precondition::Version(version))
            }
        };
        let mut writes: Vec<Write> =
            lines.iter().map(|l| add_on_hand(&l.sku, -quantity(l.quantity), Some(0), None)).collect();
        writes.push(tx::delete(RESERVATIONS, &id, precondition));
        tx::stage(&writes)
    }

    fn release(id: String) -> Result<String, Error> {
        STAGED.with(|s| s.borrow_mut().remove(&id));
        let Some((record, version)) = held(&id)? else { return tx::stage(&[]) };
        let mut writes: Vec<Write> =
            record.lines.iter().map(|l| add_available(&l.sku, quantity(l.quantity), None, None)).collect();
        writes.push(tx::delete(RESERVATIONS, &id, Precondition::Version(version)));
        tx::stage(&writes)
    }

    fn restock(lines: Vec<ReservationLine>) -> Result<String, Error> {
        let lines = stock::merge_lines(&lines)?;
        let writes: Vec<Write> = lines
            .iter()
            .flat_map(|l| {
                [
                    add_on_hand(&l.sku, quantity(l.quantity), None, Some(i64::from(u32::MAX))),
                    add_available(&l.sku, quantity(l.quantity), None, None),
                ]
            })
            .collect();
        tx::stage(&writes)
    }
}

// Exports are wasm symbols; a native build (unit tests) has none.
#[cfg(target_family = "wasm")]
bindings::export!(Inventory with_types_in bindings);
