//! The order component: checkout and the order lifecycle.
//!
//! Checkout is a durable state machine (SPEC §3), its state in the
//! `checkouts` record of its Idempotency-Key:
//!
//! 1. price the cart; inventory *stages* holding every line;
//! 2. **T1**: the checkout record (`reserved`), the order `pending_payment`,
//!    an `open` index entry and inventory's holds — one transaction;
//! 3. **authorize** the payment (manual capture; `checkout:<key>` as the
//!    provider's idempotency key);
//! 4. **T2**: inventory's commit (on-hand drops), the order `paid`, the
//!    record `paid`, the merchants' index — one transaction;
//! 5. **capture**; **T3**: the record `done`, the `open` entry gone.
//!
//! Any failure before T2 releases the holds, voids the payment where its
//! outcome is unknown, and removes the record and the pending order (one
//! transaction), so the key can be used again. A checkout whose request died
//! anywhere (client gone, deadline, trap, kill -9) stays in `open`; once its
//! lease (the request's deadline) has passed, [`recover`] — on any replica —
//! takes it over with a compare-and-swap on the record and drives it on:
//! `reserved` → authorize again with the same key (the provider answers with
//! the first authorization) and finish, or, past the reservation TTL, void
//! and compensate; `paid` → capture and finish. Every step is conditional on
//! the record's version, so a live request and recovery never both move one
//! checkout, and a voided authorization can never become a paid order (the
//! payment component answers `declined` for a voided key).
//!
//! Storage (its own namespace):
//! - `checkouts`: Idempotency-Key → [`CheckoutRecord`];
//! - `open`: Idempotency-Key → start time, for checkouts not yet done;
//! - `done`: `<finished_at>-<Idempotency-Key>` → key, so recovery forgets
//!   finished checkouts after their retention (`retain-ms`, 24 h by
//!   default, as Stripe keeps idempotency keys) in finishing order;
//! - `orders`: order id → `Order` (JSON);
//! - `by-merchant`: `<merchant>/<created_at>-<order id>` → order id, so a
//!   merchant's orders list in creation order.
//!
//! - `cancelling`: order id → [`Cancelling`], for cancels not yet whole.
//!
//! Status machine: `pending_payment → paid → fulfilled`, `paid → cancelled`.
//!
//! A cancel is durable too: the claim (the order `cancelled`, its
//! `cancelling` entry leased to the request, naming the refund's idempotency
//! key `cancel:<order id>:<version paid at>`) is one transaction; then the
//! refund; then inventory's staged restock, the order recorded refunded, the
//! entry gone and `order.cancelled` — one transaction, conditional on the
//! claim, so the stock comes back once. A refund the provider refuses puts
//! the order back to `paid` (with the entry gone, one transaction; the next
//! cancel has a new key); one whose outcome is unknown (a time-out, a 5xx,
//! a 409 or 429) leaves the cancel to be driven again with the same key,
//! after a backoff. A cancel cut off anywhere is finished by another cancel
//! of the order or by [`recover`] once its lease has passed.
//!
//! Events (SPEC §6.9): the transaction that makes an order `paid` (T2),
//! `fulfilled` (the last merchant's lines) or `cancelled` (refunded and
//! restocked) carries its event, with one view per merchant of the order,
//! under an id made of the order's and the change's (`evt_<order>_paid`):
//! the same change always has the same id.

mod status;

use mercato_kit::kv;
use mercato_kit::money;
use mercato_kit::tx::{self, OrderEventKind, Precondition, TxError, Write};
use mercato_kit::types::{
    Cart, CheckoutRequest, Error, Order, OrderLine, OrderPage, OrderStatus, Payment, PaymentRequest,
    PaymentStatus, RecoveryReport, ReservationLine, Shortage,
};
use serde::{Deserialize, Serialize};

mod bindings {
    mercato_kit::component_bindings!("../../wit", "mercato:commerce/order-component", {
        "wasi:keyvalue/batch@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::batch,
        "wasi:clocks/wall-clock@0.2.12": mercato_kit::bindings::wasi::clocks::wall_clock,
        "wasi:random/random@0.2.12": mercato_kit::bindings::wasi::random::random,
        "mercato:commerce/transactions@0.6.0": mercato_kit::bindings::mercato::commerce::transactions,
    });
}

use bindings::exports::mercato::commerce::orders::Guest;
use bindings::mercato::commerce::{cart_contents, payment, provenance, reservations, stock_levels};

pub const MAX_PAGE: u32 = 100;

const CHECKOUTS: &str = "checkouts";
const OPEN: &str = "open";
const ORDERS: &str = "orders";
const BY_MERCHANT: &str = "by-merchant";
const DONE: &str = "done";
const CANCELLING: &str = "cancelling";

/// Where a checkout is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// T1 done: stock held, order pending; the payment's outcome unknown.
    Reserved,
    /// T2 done: stock taken, order paid; not yet captured.
    Paid,
    /// Captured.
    Done,
    /// Given up: stock released and order removed, but an authorization may
    /// exist (its outcome was unknown) and the void did not get through yet.
    Voiding,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct CheckoutRecord {
    /// What was asked, so a reused key with another request is caught.
    fingerprint: String,
    stage: Stage,
    order_id: String,
    reservation_id: String,
    /// The authorization request, asked again by recovery (same key).
    payment: PaymentRequest,
    created_at: u64,
    ttl_ms: u64,
    /// Until then the request (or recovery pass) that wrote it owns it.
    lease_until: u64,
}

/// A checkout as this request holds it: its record at `version`.
struct Held {
    key: String,
    record: CheckoutRecord,
    version: u64,
    order: Order,
    /// The version of `orders/<id>` this checkout last wrote or read: a
    /// fulfilment or cancel in between is never overwritten.
    order_version: u64,
}

/// A cancel not yet whole: until when its driver holds it (or, after a
/// refund in doubt, when it is tried again), how many refunds were in doubt
/// so far, and the refund's idempotency key — one per cancel, so that a
/// provider replaying a refusal for its key cannot refuse the next cancel.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Cancelling {
    lease_until: u64,
    attempts: u32,
    refund_key: String,
}

/// A cancel as its driver holds it: the order (cancelled, not yet refunded)
/// and its `cancelling` entry as written, at the versions read or written.
struct Cancel {
    order: Order,
    order_version: u64,
    claim_version: u64,
    entry: Cancelling,
}

/// After the `attempts`-th refund in doubt, the next try waits 1 s, 2 s, 4 s
/// … up to 5 minutes (a provider may replay a failure for a while).
fn cancel_backoff_ms(attempts: u32) -> u64 {
    1_000u64.saturating_mul(1 << attempts.min(9)).min(300_000)
}

/// How driving a cancel ended.
enum CancelEnd {
    /// Refunded, restocked, told.
    Done(Box<Order>),
    /// The refund was refused: the order is paid again.
    Undone(Error),
    /// Left for another cancel or recovery to finish.
    Left(Error),
}

/// How driving a checkout ended.
enum Ended {
    Paid(Box<Order>),
    /// Fully undone: stock released, payment voided or never taken.
    Compensated(Error),
    /// Left as it is, for recovery (an outcome was unknown, or someone else
    /// took the checkout over).
    Stuck(Error),
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("order {id:?}"))
}

fn is_order_id(id: &str) -> bool {
    id.len() == 36 && id.starts_with("ord_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A page cursor is `o1.` + the last listed index key after the merchant's
/// prefix (`<created_at>-<order id>`): the same shape for every merchant, so
/// the OpenAPI document can state it (`^o1\.[0-9]{13}-ord_[0-9a-f]{32}$`).
const CURSOR_PREFIX: &str = "o1.";

fn encode_cursor(after_prefix: &str) -> String {
    format!("{CURSOR_PREFIX}{after_prefix}")
}

fn decode_cursor(cursor: &str) -> Result<&str, Error> {
    cursor
        .strip_prefix(CURSOR_PREFIX)
        .filter(|rest| {
            rest.len() == 13 + 1 + 36
                && rest.is_ascii()
                && rest[..13].bytes().all(|b| b.is_ascii_digit())
                && rest.as_bytes()[13] == b'-'
                && rest[14..].starts_with("ord_")
                && rest[18..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .ok_or_else(|| Error::InvalidInput("cursor: not a cursor this API returned".into()))
}

fn load(id: &str) -> Result<Order, Error> {
    if !is_order_id(id) {
        return Err(not_found(id));
    }
    kv::get(&kv::open(ORDERS)?, id)?.ok_or_else(|| not_found(id))
}

/// Longest checkout Idempotency-Key (visible ASCII: bytes = characters).
const MAX_IDEMPOTENCY_KEY: usize = 200;

fn validate(req: &CheckoutRequest) -> Result<(), Error> {
    // As the OpenAPI document states it: 3 to 254 characters with an `@`,
    // no whitespace or control characters.
    let email = &req.email;
    let length = email.chars().count();
    if !(3..=254).contains(&length)
        || !email.contains('@')
        || email.contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidInput("email: must be an email address".into()));
    }
    if req.payment_token.is_empty() || req.payment_token.chars().count() > 255 {
        return Err(Error::InvalidInput("payment.token: 1 to 255 characters".into()));
    }
    // 200, not the provider's 255: the keys sent to it are this one with a
    // prefix (`capture:checkout:<key>` is 17 characters longer). A longer
    // key used to pass here and fail at the payment step, after the stock
    // was reserved.
    if req.idempotency_key.is_empty() || req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(Error::InvalidInput(format!("Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} characters")));
    }
    Ok(())
}

fn in_progress() -> Error {
    Error::Conflict("a checkout with this Idempotency-Key is in progress; retry later".into())
}

/// What a key that was used before answers: its order, a reuse error, or
/// "in progress". `None`: the key is free.
fn answer_for(key: &str, fingerprint: &str) -> Result<Option<Result<Order, Error>>, Error> {
    let Some((record, _)) = tx::read_one::<CheckoutRecord>(CHECKOUTS, key)? else { return Ok(None) };
    if record.fingerprint != fingerprint {
        return Ok(Some(Err(Error::IdempotencyKeyReuse(
            "this Idempotency-Key was used with a different request".into(),
        ))));
    }
    Ok(Some(match record.stage {
        Stage::Paid | Stage::Done => load(&record.order_id),
        Stage::Reserved | Stage::Voiding => Err(in_progress()),
    }))
}

fn order_lines(cart: &Cart) -> Vec<OrderLine> {
    cart.lines
        .iter()
        .map(|l| OrderLine {
            sku: l.sku.clone(),
            product_id: l.product_id.clone(),
            merchant_id: l.merchant_id.clone(),
            title: l.title.clone(),
            quantity: l.quantity,
            unit_price: l.unit_price.clone(),
            adjustments: l.adjustments.clone(),
            line_total: l.line_total.clone(),
            fulfilled: false,
        })
        .collect()
}

/// How often a reservation that lost the race for the last units is tried
/// again when the stock it needs is back (released by another checkout).
const RESERVE_ATTEMPTS: u32 = 8;

/// The lines that cannot be served now (empty: they can, again).
fn shortages(lines: &[ReservationLine]) -> Result<Vec<Shortage>, Error> {
    let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
    Ok(stock_levels::levels(&skus)?
        .into_iter()
        .zip(lines)
        .filter(|(level, line)| level.available < line.quantity)
        .map(|(level, line)| Shortage {
            sku: line.sku.clone(),
            requested: line.quantity,
            available: level.available,
        })
        .collect())
}

/// Whether a payment answer leaves its outcome unknown (an authorization may
/// exist): then compensation must void it. Certain: a decline, a refused
/// request (invalid input, key reuse), or a request the payment component
/// never sent (`provider-unavailable("not sent: …")`: refused connection,
/// DNS, denied host). Everything else — a time-out, a 5xx, a 409 (the
/// provider still working on the same key), a broken answer — may have
/// authorized.
fn in_doubt(e: &Error) -> bool {
    match e {
        Error::ProviderUnavailable(m) => !m.starts_with("not sent"),
        Error::Timeout(_) | Error::ProviderTimeout(_) | Error::Storage(_) | Error::Conflict(_) => true,
        _ => false,
    }
}

/// A checkout: T1 ([`reserve_and_record`]), then [`drive`]. The common case
/// is a fresh key, so its record is not read first: a key used before fails
/// on the way to T1 (T1's `absent` precondition, or anything earlier — its
/// cart may be empty or sold out by now) and then answers as it did the
/// first time.
fn place(req: &CheckoutRequest, fingerprint: String) -> Result<Order, Error> {
    match reserve_and_record(req, &fingerprint) {
        Ok(held) => match drive(held, true) {
            Ended::Paid(order) => Ok(*order),
            Ended::Compensated(e) | Ended::Stuck(e) => Err(e),
        },
        Err(e) => answer_for(&req.idempotency_key, &fingerprint)?.unwrap_or(Err(e)),
    }
}

/// Price the cart, stage inventory's holds and commit T1.
fn reserve_and_record(req: &CheckoutRequest, fingerprint: &str) -> Result<Held, Error> {
    let key = &req.idempotency_key;
    let cart = cart_contents::get_cart(&req.cart_id)?;
    if cart.lines.is_empty() {
        return Err(Error::EmptyCart("the cart has no lines".into()));
    }
    let now = mercato_kit::now_ms();
    let order = Order {
        id: mercato_kit::random_id("ord_"),
        status: OrderStatus::PendingPayment,
        email: req.email.trim().to_string(),
        currency: cart.currency.clone(),
        lines: order_lines(&cart),
        discount_codes: Some(cart.discount_codes.clone()),
        subtotal: cart.subtotal.clone(),
        discount_total: cart.discount_total.clone(),
        total: cart.total.clone(),
        payment: Payment { id: String::new(), status: PaymentStatus::Pending, amount: cart.total.clone() },
        created_at: now,
        // From the host: the versions serving this request and the plugins
        // that priced the cart just read.
        provenance: provenance::served_by(),
    };
    let lines: Vec<ReservationLine> =
        cart.lines.iter().map(|l| ReservationLine { sku: l.sku.clone(), quantity: l.quantity }).collect();
    let reservation_id = format!("res_{}", &order.id[4..]);
    let record = CheckoutRecord {
        fingerprint: fingerprint.to_string(),
        stage: Stage::Reserved,
        order_id: order.id.clone(),
        reservation_id,
        payment: PaymentRequest {
            amount: order.total.clone(),
            token: req.payment_token.clone(),
            idempotency_key: format!("checkout:{key}"),
            description: format!("order {}", order.id),
        },
        created_at: now,
        ttl_ms: req.reservation_ttl_ms,
        lease_until: now.saturating_add(req.lease_ms),
    };
    let writes = [
        tx::put(CHECKOUTS, key, &record, Precondition::Absent)?,
        tx::put(OPEN, key, &now, Precondition::Absent)?,
        tx::put(ORDERS, &order.id, &order, Precondition::Absent)?,
    ];
    let mut attempt = 0;
    let versions = loop {
        let holds = reservations::reserve(&record.reservation_id, &lines)?;
        match tx::commit(&writes, &[holds]) {
            Ok(v) => break v,
            // The key was used before, or a concurrent duplicate got there
            // first: [`place`] answers for it.
            Err(TxError::Failed(f)) if f.index < 2 => return Err(in_progress()),
            // A hold's bound: a line is sold out, or its last units went to
            // another checkout meanwhile and may come back (released).
            Err(TxError::Failed(f)) if f.index as usize >= writes.len() => {
                let short = shortages(&lines)?;
                attempt += 1;
                if !short.is_empty() || attempt >= RESERVE_ATTEMPTS {
                    return Err(Error::OutOfStock(short));
                }
            }
            Err(e) => return Err(tx::error(e)),
        }
    };
    Ok(Held { key: key.clone(), record, version: versions[0], order, order_version: versions[2] })
}

/// Give everything back: void the payment if `void`, release the holds,
/// forget the checkout (one transaction, conditional on its version). If the
/// void cannot get through, the stock and the order go back at once anyway
/// and the record stays open as `voiding`, for recovery to void later.
fn compensate(held: &mut Held, void: bool, why: Error) -> Ended {
    let voided = !void || payment::void(&held.record.payment).is_ok();
    if !voided {
        mercato_kit::log_warn(
            "checkout",
            &format!("void {}: failed; recovery retries", held.record.order_id),
        );
    }
    let release = match reservations::release(&held.record.reservation_id) {
        Ok(r) => r,
        Err(_) => return Ended::Stuck(why),
    };
    let mut writes = vec![tx::delete(ORDERS, &held.record.order_id, Precondition::None)];
    if voided {
        writes.push(tx::delete(CHECKOUTS, &held.key, Precondition::Version(held.version)));
        writes.push(tx::delete(OPEN, &held.key, Precondition::None));
    } else {
        held.record.stage = Stage::Voiding;
        match tx::put(CHECKOUTS, &held.key, &held.record, Precondition::Version(held.version)) {
            Ok(w) => writes.push(w),
            Err(e) => return Ended::Stuck(e),
        }
    }
    match tx::commit(&writes, &[release]) {
        Ok(_) if voided => Ended::Compensated(why),
        Ok(_) => Ended::Stuck(why),
        Err(e) => {
            mercato_kit::log_warn("checkout", &format!("compensate {}: {e:?}", held.record.order_id));
            Ended::Stuck(why)
        }
    }
}

/// Drive a checkout from its stage to `paid` (and captured) or to full
/// compensation. `may_authorize`: false once its TTL has passed (recovery
/// then voids instead of finishing).
fn drive(mut held: Held, may_authorize: bool) -> Ended {
    if held.record.stage == Stage::Voiding {
        let why = Error::PaymentDeclined("the checkout was given up".into());
        return compensate(&mut held, true, why);
    }
    if held.record.stage == Stage::Reserved {
        if !may_authorize {
            let why = Error::PaymentDeclined("the checkout expired before its payment was confirmed".into());
            return compensate(&mut held, true, why);
        }
        let authorized = match payment::authorize(&held.record.payment) {
            Ok(p) => p,
            Err(e) => {
                let void = in_doubt(&e);
                return compensate(&mut held, void, e);
            }
        };
        let taken = match reservations::commit(&held.record.reservation_id) {
            Ok(t) => t,
            Err(e) => return Ended::Stuck(e),
        };
        held.order.status = OrderStatus::Paid;
        held.order.payment = authorized;
        held.record.stage = Stage::Paid;
        let mut writes = match paid_writes(&held) {
            Ok(w) => w,
            Err(e) => return Ended::Stuck(e),
        };
        writes.extend(index_writes(&held.order));
        let event = match emit(OrderEventKind::Paid, &held.order) {
            Ok(token) => token,
            Err(e) => return Ended::Stuck(e),
        };
        match tx::commit(&writes, &[taken, event]) {
            Ok(v) => (held.version, held.order_version) = (v[0], v[1]),
            Err(TxError::Failed(f)) if f.index == 0 => return Ended::Stuck(in_progress()),
            Err(e) => return Ended::Stuck(tx::error(e)),
        }
    }
    if held.record.stage == Stage::Paid {
        match payment::capture(&held.order.payment.id, &held.record.payment.idempotency_key) {
            Ok(captured) => held.order.payment.status = captured.status,
            // It can never be captured (refunded or voided since: the order
            // was cancelled meanwhile): nothing is left to do but finish.
            Err(Error::Conflict(m)) => {
                mercato_kit::log_warn("checkout", &format!("capture {}: {m}; finishing", held.order.id));
            }
            // Paid and held at the provider: recovery captures it later.
            Err(e) => {
                mercato_kit::log_warn(
                    "checkout",
                    &format!("capture {}: {e:?}; recovery retries", held.order.id),
                );
                return Ended::Paid(Box::new(held.order));
            }
        }
        held.record.stage = Stage::Done;
        if let Err(e) = finish(&mut held) {
            mercato_kit::log_warn(
                "checkout",
                &format!("finish {}: {e:?}; recovery finishes it", held.order.id),
            );
        }
    }
    Ended::Paid(Box::new(held.order))
}

/// T3: the record `done`, the `open` entry gone, a `done` index entry, and
/// the captured status on the order — as a change of the order as it is now
/// (a merchant may have fulfilled it, an operator cancelled it, since).
fn finish(held: &mut Held) -> Result<(), Error> {
    let captured = held.order.payment.status;
    let finished = format!("{:013}-{}", mercato_kit::now_ms(), held.key);
    for _ in 0..mercato_kit::kv::MAX_CAS_RETRIES {
        let writes = [
            tx::put(CHECKOUTS, &held.key, &held.record, Precondition::Version(held.version))?,
            tx::delete(OPEN, &held.key, Precondition::None),
            tx::put(DONE, &finished, &held.key, Precondition::None)?,
            tx::put(ORDERS, &held.order.id, &held.order, Precondition::Version(held.order_version))?,
        ];
        match tx::commit(&writes, &[]) {
            Ok(_) => return Ok(()),
            Err(TxError::Failed(f)) if f.index == 3 => {
                let (mut now, version) = tx::read_one::<Order>(ORDERS, &held.order.id)?
                    .ok_or_else(|| not_found(&held.order.id))?;
                if now.payment.status == PaymentStatus::Authorized {
                    now.payment.status = captured;
                }
                (held.order, held.order_version) = (now, version);
            }
            Err(e) => return Err(tx::error(e)),
        }
    }
    Err(Error::Conflict(format!("order {} kept changing", held.order.id)))
}

/// The record at its new stage (conditional on the version held) and the order.
fn paid_writes(held: &Held) -> Result<Vec<Write>, Error> {
    Ok(vec![
        tx::put(CHECKOUTS, &held.key, &held.record, Precondition::Version(held.version))?,
        tx::put(ORDERS, &held.order.id, &held.order, Precondition::Version(held.order_version))?,
    ])
}

/// The merchants' index entries of a paid order.
fn index_writes(order: &Order) -> Vec<Write> {
    let mut merchants: Vec<&str> = order.lines.iter().map(|l| l.merchant_id.as_str()).collect();
    merchants.sort_unstable();
    merchants.dedup();
    merchants
        .into_iter()
        .filter_map(|m| {
            let key = format!("{m}/{:013}-{}", order.created_at, order.id);
            tx::put(BY_MERCHANT, &key, &order.id, Precondition::None).ok()
        })
        .collect()
}

/// Forget finished checkouts that finished before `cutoff` (unix ms): their
/// records and `done` entries, a page per transaction.
fn prune_done(cutoff: u64) -> Result<u32, Error> {
    let done = kv::open(DONE)?;
    let mut pruned = 0;
    loop {
        let (keys, _) = kv::list_keys(&done, None)?;
        let expired: Vec<&String> = keys
            .iter()
            .take_while(|k| k.get(..13).and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t < cutoff))
            .collect();
        if expired.is_empty() {
            return Ok(pruned);
        }
        let writes: Vec<Write> = expired
            .iter()
            .flat_map(|k| {
                let key = k.get(14..).unwrap_or_default();
                [tx::delete(DONE, k, Precondition::None), tx::delete(CHECKOUTS, key, Precondition::None)]
            })
            .collect();
        tx::commit(&writes, &[]).map_err(tx::error)?;
        pruned += expired.len() as u32;
        if expired.len() < keys.len() {
            return Ok(pruned);
        }
    }
}

/// An order shell for a `voiding` checkout, whose order was removed.
fn placeholder(record: &CheckoutRecord) -> Order {
    let none = mercato_kit::types::Money { amount: 0, currency: record.payment.amount.currency.clone() };
    Order {
        id: record.order_id.clone(),
        status: OrderStatus::PendingPayment,
        email: String::new(),
        currency: none.currency.clone(),
        lines: Vec::new(),
        discount_codes: None,
        subtotal: none.clone(),
        discount_total: none.clone(),
        total: none.clone(),
        payment: Payment { id: String::new(), status: PaymentStatus::Pending, amount: none },
        created_at: record.created_at,
        provenance: Vec::new(),
    }
}

/// One pass of recovery over the open checkouts.
fn recover_open(now: u64, lease_ms: u64) -> Result<RecoveryReport, Error> {
    let mut report = RecoveryReport { finished: 0, compensated: 0, deferred: 0, pruned: 0 };
    let open = kv::open(OPEN)?;
    let mut cursor: Option<String> = None;
    loop {
        let (keys, next) = kv::list_keys(&open, cursor.as_deref())?;
        let records = tx::read::<CheckoutRecord>(CHECKOUTS, &keys)?;
        for (key, found) in keys.iter().zip(records) {
            let Some((record, version)) = found else {
                // An index entry whose checkout was undone: drop it.
                let _ = tx::commit(
                    &[
                        Write {
                            precondition: Precondition::Absent,
                            ..tx::delete(CHECKOUTS, key, Precondition::None)
                        },
                        tx::delete(OPEN, key, Precondition::None),
                    ],
                    &[],
                );
                continue;
            };
            if record.lease_until > now {
                continue;
            }
            // Take it over: only one replica's compare-and-swap wins.
            let mut claimed = record.clone();
            claimed.lease_until = now.saturating_add(lease_ms);
            let Ok(claim) = tx::put(CHECKOUTS, key, &claimed, Precondition::Version(version)) else {
                continue;
            };
            let Ok(versions) = tx::commit(&[claim], &[]) else { continue };
            // A `voiding` checkout's order is already gone.
            let (order, order_version) = match tx::read_one::<Order>(ORDERS, &claimed.order_id) {
                Ok(Some(found)) => found,
                Ok(None) if claimed.stage == Stage::Voiding => (placeholder(&claimed), 0),
                _ => {
                    report.deferred += 1;
                    continue;
                }
            };
            let may_authorize = now < claimed.created_at.saturating_add(claimed.ttl_ms);
            let held = Held { key: key.clone(), record: claimed, version: versions[0], order, order_version };
            match drive(held, may_authorize) {
                Ended::Paid(_) => report.finished += 1,
                Ended::Compensated(_) => report.compensated += 1,
                Ended::Stuck(_) => report.deferred += 1,
            }
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(report),
        }
    }
}

/// The order as `merchant` sees it: only their lines, totals over those.
fn merchant_view(mut order: Order, merchant: &str) -> Result<Option<Order>, Error> {
    order.lines.retain(|l| l.merchant_id == merchant);
    if order.lines.is_empty() {
        return Ok(None);
    }
    // Only the codes this merchant's plugin honoured, and only its honour.
    if let Some(codes) = order.discount_codes.as_mut() {
        for code in codes.iter_mut() {
            code.honoured_by.retain(|h| h.merchant_id == merchant);
        }
        codes.retain(|c| !c.honoured_by.is_empty());
    }
    let gross: Vec<_> =
        order.lines.iter().map(|l| money::times(&l.unit_price, l.quantity)).collect::<Result<_, _>>()?;
    order.subtotal = money::sum(&order.currency, &gross)?;
    order.total = money::sum(&order.currency, order.lines.iter().map(|l| &l.line_total))?;
    order.discount_total = money::sub(&order.subtotal, &order.total)?;
    Ok(Some(order))
}

/// The stable id of an order's event.
fn event_id(kind: OrderEventKind, order: &Order) -> String {
    let change = match kind {
        OrderEventKind::Paid => "paid",
        OrderEventKind::Fulfilled => "fulfilled",
        OrderEventKind::Cancelled => "cancelled",
    };
    format!("evt_{}_{change}", order.id.get(4..).unwrap_or(&order.id))
}

/// The event of `order`'s change `kind`, with each merchant's view, under a
/// token for the commit that makes the change.
fn emit(kind: OrderEventKind, order: &Order) -> Result<String, Error> {
    let mut merchants: Vec<&str> = order.lines.iter().map(|l| l.merchant_id.as_str()).collect();
    merchants.sort_unstable();
    merchants.dedup();
    let mut views = Vec::with_capacity(merchants.len());
    for m in merchants {
        if let Some(view) = merchant_view(order.clone(), m)? {
            views.push(tx::MerchantView { merchant_id: m.to_string(), order: view });
        }
    }
    let body = tx::OrderEvent { kind, order: order.clone(), views };
    tx::emit(&[tx::Event { id: event_id(kind, order), body: tx::EventBody::Order(body) }])
}

/// Change an order in a transaction conditional on the version read (again
/// if it changed meanwhile), with the event the change has: `event` decides
/// from the order before and after.
fn change_with_event(
    id: &str,
    f: impl Fn(&mut Order) -> Result<(), Error>,
    event: impl Fn(&Order, &Order) -> Option<OrderEventKind>,
) -> Result<Order, Error> {
    if !is_order_id(id) {
        return Err(not_found(id));
    }
    for _ in 0..kv::MAX_CAS_RETRIES {
        let (before, version) = tx::read_one::<Order>(ORDERS, id)?.ok_or_else(|| not_found(id))?;
        let mut order = before.clone();
        f(&mut order)?;
        let staged = match event(&before, &order) {
            Some(kind) => vec![emit(kind, &order)?],
            None => Vec::new(),
        };
        let write = tx::put(ORDERS, id, &order, Precondition::Version(version))?;
        match tx::commit(&[write], &staged) {
            Ok(_) => return Ok(order),
            Err(TxError::Failed(_)) => continue,
            Err(e) => return Err(tx::error(e)),
        }
    }
    Err(Error::Conflict(format!("order {id} kept changing")))
}

fn cancel_in_progress(id: &str) -> Error {
    Error::Conflict(format!(
        "order {id} is being cancelled (or waits to ask for its refund again); try again later"
    ))
}

/// Claim the cancel of order `id` until `now + lease_ms`: a paid order
/// becomes `cancelled` with its `cancelling` entry (one transaction); a cancel
/// that stopped part-way is taken over once its lease has passed (an order
/// cancelled but not refunded without an entry — cut off by an earlier
/// release — is taken over at once).
fn claim_cancel(id: &str, now: u64, lease_ms: u64) -> Result<Cancel, Error> {
    if !is_order_id(id) {
        return Err(not_found(id));
    }
    let until = now.saturating_add(lease_ms);
    for _ in 0..kv::MAX_CAS_RETRIES {
        let (order, order_version) = tx::read_one::<Order>(ORDERS, id)?.ok_or_else(|| not_found(id))?;
        if order.status == OrderStatus::Cancelled && order.payment.status != PaymentStatus::Refunded {
            let (precondition, entry) = match tx::read_one::<Cancelling>(CANCELLING, id)? {
                Some((held, _)) if held.lease_until > now => return Err(cancel_in_progress(id)),
                Some((held, version)) => {
                    (Precondition::Version(version), Cancelling { lease_until: until, ..held })
                }
                // Cut off by an earlier release, which used this key.
                None => (
                    Precondition::Absent,
                    Cancelling { lease_until: until, attempts: 0, refund_key: format!("cancel:{id}") },
                ),
            };
            // Only if the order is still as read (not reopened or finished since).
            let writes = [
                tx::put(CANCELLING, id, &entry, precondition)?,
                tx::check(ORDERS, id, Precondition::Version(order_version)),
            ];
            match tx::commit(&writes, &[]) {
                Ok(v) => return Ok(Cancel { order, order_version, claim_version: v[0], entry }),
                // The order changed: look again.
                Err(TxError::Failed(f)) if f.index == 1 => continue,
                Err(TxError::Failed(_)) => return Err(cancel_in_progress(id)),
                Err(e) => return Err(tx::error(e)),
            }
        }
        let mut claimed = order;
        status::cancel(&mut claimed)?;
        // The version the order was paid at names this cancel.
        let entry = Cancelling {
            lease_until: until,
            attempts: 0,
            refund_key: format!("cancel:{id}:{order_version}"),
        };
        let writes = [
            tx::put(ORDERS, id, &claimed, Precondition::Version(order_version))?,
            tx::put(CANCELLING, id, &entry, Precondition::Absent)?,
        ];
        match tx::commit(&writes, &[]) {
            Ok(v) => return Ok(Cancel { order: claimed, order_version: v[0], claim_version: v[1], entry }),
            Err(TxError::Failed(_)) => continue,
            Err(e) => return Err(tx::error(e)),
        }
    }
    Err(Error::Conflict(format!("order {id} kept changing")))
}

/// Give the claim up until the next try — after a backoff that grows with
/// each refund in doubt — for recovery or another cancel (best effort:
/// otherwise the lease runs out).
fn retry_cancel_later(id: &str, c: &Cancel) {
    let next = Cancelling {
        lease_until: mercato_kit::now_ms().saturating_add(cancel_backoff_ms(c.entry.attempts)),
        attempts: c.entry.attempts.saturating_add(1),
        refund_key: c.entry.refund_key.clone(),
    };
    if let Ok(w) = tx::put(CANCELLING, id, &next, Precondition::Version(c.claim_version)) {
        let _ = tx::commit(&[w], &[]);
    }
}

/// The refund was refused: the order back to `paid` and the entry gone, in
/// one transaction (again on the order as it is now if it changed).
fn uncancel(id: &str, c: &mut Cancel) -> Result<(), Error> {
    for _ in 0..kv::MAX_CAS_RETRIES {
        let mut paid = c.order.clone();
        status::uncancel(&mut paid)?;
        let writes = [
            tx::put(ORDERS, id, &paid, Precondition::Version(c.order_version))?,
            tx::delete(CANCELLING, id, Precondition::Version(c.claim_version)),
        ];
        match tx::commit(&writes, &[]) {
            Ok(_) => return Ok(()),
            Err(TxError::Failed(f)) if f.index == 0 => {
                (c.order, c.order_version) =
                    tx::read_one::<Order>(ORDERS, id)?.ok_or_else(|| not_found(id))?;
            }
            Err(TxError::Failed(_)) => return Err(cancel_in_progress(id)),
            Err(e) => return Err(tx::error(e)),
        }
    }
    Err(Error::Conflict(format!("order {id} kept changing")))
}

/// Drive a claimed cancel: refund, then inventory's restock, the order
/// refunded, the entry gone and `order.cancelled` in one transaction.
fn drive_cancel(id: &str, mut c: Cancel) -> CancelEnd {
    if let Err(e) = payment::refund(&c.order.payment.id, &c.order.payment.amount, &c.entry.refund_key) {
        // A refusal (`conflict`: the provider refused this refund, or the
        // payment is not captured) is an answer; anything else (a time-out,
        // a 5xx, the provider still busy with the key or rate limiting) may
        // have refunded.
        if !matches!(e, Error::Conflict(_)) && in_doubt(&e) {
            // It may have been refunded: only asking again (same key) can tell.
            retry_cancel_later(id, &c);
            return CancelEnd::Left(e);
        }
        return match uncancel(id, &mut c) {
            Ok(()) => CancelEnd::Undone(e),
            Err(u) => {
                mercato_kit::log_warn("cancel", &format!("{id}: refund refused, reopening failed: {u:?}"));
                CancelEnd::Left(e)
            }
        };
    }
    let lines: Vec<ReservationLine> =
        c.order.lines.iter().map(|l| ReservationLine { sku: l.sku.clone(), quantity: l.quantity }).collect();
    for _ in 0..kv::MAX_CAS_RETRIES {
        let mut done = c.order.clone();
        done.payment.status = PaymentStatus::Refunded;
        let staged = reservations::restock(&lines).and_then(|restock| {
            let event = emit(OrderEventKind::Cancelled, &done)?;
            let writes = [
                tx::put(ORDERS, id, &done, Precondition::Version(c.order_version))?,
                tx::delete(CANCELLING, id, Precondition::Version(c.claim_version)),
            ];
            Ok((writes, [restock, event]))
        });
        let (writes, tokens) = match staged {
            Ok(s) => s,
            Err(e) => {
                retry_cancel_later(id, &c);
                return CancelEnd::Left(e);
            }
        };
        match tx::commit(&writes, &tokens) {
            Ok(_) => return CancelEnd::Done(Box::new(done)),
            // The order changed meanwhile (its checkout recorded the capture):
            // again on the order as it is now.
            Err(TxError::Failed(f)) if f.index == 0 => match tx::read_one::<Order>(ORDERS, id) {
                Ok(Some((now, _))) if now.payment.status == PaymentStatus::Refunded => {
                    return CancelEnd::Done(Box::new(now));
                }
                Ok(Some((now, version))) if now.status == OrderStatus::Cancelled => {
                    (c.order, c.order_version) = (now, version);
                }
                Ok(_) => return CancelEnd::Left(Error::Conflict(format!("order {id} changed"))),
                Err(e) => return CancelEnd::Left(e),
            },
            // Another driver took the cancel over (this one's lease ran out).
            Err(TxError::Failed(f)) if f.index == 1 => return CancelEnd::Left(cancel_in_progress(id)),
            Err(TxError::Failed(_)) => {
                retry_cancel_later(id, &c);
                return CancelEnd::Left(Error::InvalidQuantity("restocking would overflow on_hand".into()));
            }
            Err(e) => return CancelEnd::Left(tx::error(e)),
        }
    }
    CancelEnd::Left(Error::Conflict(format!("order {id} kept changing")))
}

/// One pass over the cancels not yet whole: each whose lease has passed is
/// taken over (a compare-and-swap on its entry) and driven on.
fn recover_cancels(now: u64, lease_ms: u64, report: &mut RecoveryReport) -> Result<(), Error> {
    let bucket = kv::open(CANCELLING)?;
    let mut cursor: Option<String> = None;
    loop {
        let (ids, next) = kv::list_keys(&bucket, cursor.as_deref())?;
        let entries = tx::read::<Cancelling>(CANCELLING, &ids)?;
        for (id, entry) in ids.iter().zip(entries) {
            let Some((held, version)) = entry else { continue };
            if held.lease_until > now {
                continue;
            }
            let lease = Cancelling { lease_until: now.saturating_add(lease_ms), ..held };
            let Ok(claim) = tx::put(CANCELLING, id, &lease, Precondition::Version(version)) else {
                continue;
            };
            let Ok(versions) = tx::commit(&[claim], &[]) else { continue };
            let c = match tx::read_one::<Order>(ORDERS, id) {
                Ok(Some((order, order_version)))
                    if order.status == OrderStatus::Cancelled
                        && order.payment.status != PaymentStatus::Refunded =>
                {
                    Cancel { order, order_version, claim_version: versions[0], entry: lease }
                }
                // Nothing left to drive (the entry goes with the cancel's
                // last step; only a race of two claims can leave one): drop it.
                Ok(_) => {
                    let stale = tx::delete(CANCELLING, id, Precondition::Version(versions[0]));
                    let _ = tx::commit(&[stale], &[]);
                    continue;
                }
                Err(_) => {
                    report.deferred += 1;
                    continue;
                }
            };
            match drive_cancel(id, c) {
                CancelEnd::Done(_) => report.finished += 1,
                CancelEnd::Undone(_) => report.compensated += 1,
                CancelEnd::Left(_) => report.deferred += 1,
            }
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(()),
        }
    }
}

struct Orders;

impl Guest for Orders {
    fn checkout(req: CheckoutRequest) -> Result<Order, Error> {
        validate(&req)?;
        let fingerprint = format!("{}\n{}\n{}", req.cart_id, req.email.trim(), req.payment_token);
        place(&req, fingerprint)
    }

    fn recover(now: u64, lease_ms: u64, retain_ms: u64) -> Result<RecoveryReport, Error> {
        // Cancels first: there are few, and a pass cut off by a slow
        // provider in the checkouts then still reaches them.
        let mut cancels = RecoveryReport { finished: 0, compensated: 0, deferred: 0, pruned: 0 };
        if let Err(e) = recover_cancels(now, lease_ms, &mut cancels) {
            mercato_kit::log_warn("recover", &format!("cancels: {e:?}"));
        }
        let mut report = recover_open(now, lease_ms)?;
        report.finished += cancels.finished;
        report.compensated += cancels.compensated;
        report.deferred += cancels.deferred;
        report.pruned = prune_done(now.saturating_sub(retain_ms))?;
        Ok(report)
    }

    fn get_order(id: String) -> Result<Order, Error> {
        load(&id)
    }

    fn list_merchant_orders(
        merchant: String,
        limit: u32,
        cursor: Option<String>,
    ) -> Result<OrderPage, Error> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::InvalidInput(format!("limit: must be from 1 to {MAX_PAGE}")));
        }
        let prefix = format!("{merchant}/");
        let start = match cursor {
            None => prefix.clone(),
            Some(c) => format!("{prefix}{}", decode_cursor(&c)?),
        };
        let index = kv::open("by-merchant")?;
        let orders = kv::open("orders")?;
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        let mut after = Some(start);
        'scan: while let Some(from) = after.take() {
            let (keys, next) = kv::list_keys(&index, Some(&from))?;
            let listed = keys.len();
            let mine: Vec<String> = keys.into_iter().take_while(|k| k.starts_with(&prefix)).collect();
            // Past this merchant's keys, or past the last key: nothing more.
            let done = mine.len() < listed || next.is_none();
            let ids: Vec<Option<String>> = kv::get_many(&index, &mine)?;
            let ids: Vec<String> = ids.into_iter().flatten().collect();
            let found: Vec<Option<Order>> = kv::get_many(&orders, &ids)?;
            for (key, order) in mine.iter().zip(found) {
                if items.len() == limit as usize {
                    more = true;
                    break 'scan;
                }
                if let Some(view) = order.map(|o| merchant_view(o, &merchant)).transpose()?.flatten() {
                    items.push(view);
                    last_key = Some(key.clone());
                }
            }
            if !done {
                after = next;
            }
        }
        let next_cursor = if more { last_key.map(|k| encode_cursor(&k[prefix.len()..])) } else { None };
        Ok(OrderPage { items, next_cursor })
    }

    fn get_merchant_order(merchant: String, id: String) -> Result<Order, Error> {
        merchant_view(load(&id)?, &merchant)?.ok_or_else(|| not_found(&id))
    }

    fn fulfill(merchant: String, id: String) -> Result<Order, Error> {
        let order = change_with_event(
            &id,
            |order| {
                if !order.lines.iter().any(|l| l.merchant_id == merchant) {
                    return Err(not_found(&id));
                }
                status::fulfill(order, &merchant)
            },
            |before, after| {
                (before.status != OrderStatus::Fulfilled && after.status == OrderStatus::Fulfilled)
                    .then_some(OrderEventKind::Fulfilled)
            },
        )?;
        merchant_view(order, &merchant)?.ok_or_else(|| not_found(&id))
    }

    fn cancel(id: String, lease_ms: u64) -> Result<Order, Error> {
        let claimed = claim_cancel(&id, mercato_kit::now_ms(), lease_ms)?;
        match drive_cancel(&id, claimed) {
            CancelEnd::Done(order) => Ok(*order),
            CancelEnd::Undone(e) | CancelEnd::Left(e) => Err(e),
        }
    }
}

// Exports are wasm symbols; a native build (unit tests) has none.
#[cfg(target_family = "wasm")]
bindings::export!(Orders with_types_in bindings);
