//! The order component: checkout and the order lifecycle.
//!
//! Checkout = claim the idempotency key → price the cart (cart component) →
//! reserve every line (inventory) → record the order `pending_payment` →
//! authorize the payment → commit the reservation → mark the order `paid`.
//! Any failure before the order is paid releases the reservation, removes the
//! pending order and frees the key, so a retry can succeed; nothing is charged
//! unless the order is paid (a commit failure after the charge refunds it).
//!
//! Storage (its own namespace):
//! - `orders`: order id → `Order` (JSON);
//! - `idempotency`: Idempotency-Key → [`KeyRecord`] (fingerprint of the
//!   request, the order once done, when the attempt started);
//! - `by-merchant`: `<merchant>/<created_at>-<order id>` → order id, so a
//!   merchant's orders list in creation order.
//!
//! Status machine: `pending_payment → paid → fulfilled`, `paid → cancelled`.

mod status;

use mercato_kit::kv::{self, Change};
use mercato_kit::money;
use mercato_kit::types::{
    Cart, CheckoutRequest, Error, Order, OrderLine, OrderPage, OrderStatus, Payment, PaymentRequest,
    PaymentStatus, ProvenanceEntry, ReservationLine,
};
use serde::{Deserialize, Serialize};

mod bindings {
    mercato_kit::component_bindings!("../../wit", "mercato:commerce/order-component", {
        "wasi:keyvalue/batch@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::batch,
        "wasi:clocks/wall-clock@0.2.12": mercato_kit::bindings::wasi::clocks::wall_clock,
        "wasi:random/random@0.2.12": mercato_kit::bindings::wasi::random::random,
    });
}

use bindings::exports::mercato::commerce::orders::Guest;
use bindings::mercato::commerce::{cart, inventory, payment};

pub const MAX_PAGE: u32 = 100;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct KeyRecord {
    fingerprint: String,
    order_id: Option<String>,
    started_at: u64,
}

enum Claim {
    Mine,
    Done(String),
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("order {id:?}"))
}

fn is_order_id(id: &str) -> bool {
    id.len() == 36 && id.starts_with("ord_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn load(id: &str) -> Result<Order, Error> {
    if !is_order_id(id) {
        return Err(not_found(id));
    }
    kv::get(&kv::open("orders")?, id)?.ok_or_else(|| not_found(id))
}

fn validate(req: &CheckoutRequest) -> Result<(), Error> {
    let email = req.email.trim();
    if email.len() < 3 || email.len() > 254 || !email.contains('@') || email.contains(char::is_whitespace) {
        return Err(Error::InvalidInput("email: must be an email address".into()));
    }
    if req.payment_token.is_empty() || req.payment_token.len() > 255 {
        return Err(Error::InvalidInput("payment.token: 1 to 255 characters".into()));
    }
    if req.idempotency_key.is_empty() || req.idempotency_key.len() > 255 {
        return Err(Error::InvalidInput("Idempotency-Key: 1 to 255 characters".into()));
    }
    Ok(())
}

/// Give back a reservation on a failure path; a failure here only delays the
/// stock's return until the reservation expires.
fn release(reservation_id: &str) {
    if let Err(e) = inventory::release(reservation_id) {
        mercato_kit::log_warn("checkout", &format!("release {reservation_id}: {e:?}; it will expire"));
    }
}

/// The checkout proper, once the key is ours.
fn place(req: &CheckoutRequest) -> Result<Order, Error> {
    let cart = cart::get_cart(&req.cart_id)?;
    if cart.lines.is_empty() {
        return Err(Error::EmptyCart("the cart has no lines".into()));
    }
    let wanted: Vec<ReservationLine> =
        cart.lines.iter().map(|l| ReservationLine { sku: l.sku.clone(), quantity: l.quantity }).collect();
    let reservation = inventory::reserve(&wanted, req.reservation_ttl_ms)?;
    let orders = kv::open("orders")?;
    let mut order = Order {
        id: mercato_kit::random_id("ord_"),
        status: OrderStatus::PendingPayment,
        email: req.email.trim().to_string(),
        currency: cart.currency.clone(),
        lines: cart
            .lines
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
            .collect(),
        subtotal: cart.subtotal.clone(),
        discount_total: cart.discount_total.clone(),
        total: cart.total.clone(),
        payment: Payment { id: String::new(), status: PaymentStatus::Pending, amount: cart.total.clone() },
        created_at: mercato_kit::now_ms(),
        provenance: provenance(&req.provenance, &cart),
    };
    if let Err(e) = kv::put(&orders, &order.id, &order) {
        release(&reservation.id);
        return Err(e);
    }
    let abandon = |order: &Order| {
        release(&reservation.id);
        if let Err(e) = kv::delete(&orders, &order.id) {
            mercato_kit::log_warn("checkout", &format!("remove pending {}: {e:?}", order.id));
        }
    };
    let paid = payment::authorize(&PaymentRequest {
        amount: order.total.clone(),
        token: req.payment_token.clone(),
        idempotency_key: format!("checkout:{}", req.idempotency_key),
        description: format!("order {}", order.id),
    });
    let paid = match paid {
        Ok(p) => p,
        Err(e) => {
            abandon(&order);
            return Err(e);
        }
    };
    if let Err(e) = inventory::commit(&reservation.id) {
        // Stock could not be taken: give the money back.
        if let Err(r) = payment::refund(&paid.id, &paid.amount, &format!("undo:{}", order.id)) {
            mercato_kit::log_warn("checkout", &format!("refund {} after failed commit: {r:?}", paid.id));
        }
        abandon(&order);
        return Err(e);
    }
    order.payment = paid;
    order.status = OrderStatus::Paid;
    kv::put(&orders, &order.id, &order)?;
    let index = kv::open("by-merchant")?;
    let mut merchants: Vec<&str> = order.lines.iter().map(|l| l.merchant_id.as_str()).collect();
    merchants.sort_unstable();
    merchants.dedup();
    for m in merchants {
        kv::put(&index, &format!("{m}/{:013}-{}", order.created_at, order.id), &order.id)?;
    }
    Ok(order)
}

/// The order as `merchant` sees it: only their lines, totals over those.
fn merchant_view(mut order: Order, merchant: &str) -> Result<Option<Order>, Error> {
    order.lines.retain(|l| l.merchant_id == merchant);
    if order.lines.is_empty() {
        return Ok(None);
    }
    let gross: Vec<_> =
        order.lines.iter().map(|l| money::times(&l.unit_price, l.quantity)).collect::<Result<_, _>>()?;
    order.subtotal = money::sum(&order.currency, &gross)?;
    order.total = money::sum(&order.currency, order.lines.iter().map(|l| &l.line_total))?;
    order.discount_total = money::sub(&order.subtotal, &order.total)?;
    Ok(Some(order))
}

/// Change an order with compare-and-swap.
fn change(id: &str, f: impl Fn(&mut Order) -> Result<(), Error>) -> Result<Order, Error> {
    if !is_order_id(id) {
        return Err(not_found(id));
    }
    kv::update(&kv::open("orders")?, id, |current: Option<Order>| {
        let mut order = current.ok_or_else(|| not_found(id))?;
        f(&mut order)?;
        Ok(Change::Write(order.clone(), order))
    })
}

struct Orders;

impl Guest for Orders {
    fn checkout(req: CheckoutRequest) -> Result<Order, Error> {
        validate(&req)?;
        let idem = kv::open("idempotency")?;
        let fingerprint = format!("{}\n{}\n{}", req.cart_id, req.email.trim(), req.payment_token);
        let now = mercato_kit::now_ms();
        let claim = kv::update(&idem, &req.idempotency_key, |current: Option<KeyRecord>| {
            let mine = KeyRecord { fingerprint: fingerprint.clone(), order_id: None, started_at: now };
            match current {
                None => Ok(Change::Write(mine, Claim::Mine)),
                Some(r) if r.fingerprint != fingerprint => Err(Error::IdempotencyKeyReuse(
                    "this Idempotency-Key was used with a different request".into(),
                )),
                Some(KeyRecord { order_id: Some(id), .. }) => Ok(Change::Keep(Claim::Done(id))),
                // An attempt that died long ago: its reservation has expired.
                Some(r) if now.saturating_sub(r.started_at) > req.reservation_ttl_ms => {
                    Ok(Change::Write(mine, Claim::Mine))
                }
                Some(_) => Err(Error::Conflict(
                    "a checkout with this Idempotency-Key is in progress; retry later".into(),
                )),
            }
        })?;
        if let Claim::Done(id) = claim {
            return load(&id);
        }
        match place(&req) {
            Ok(order) => {
                let done = KeyRecord { fingerprint, order_id: Some(order.id.clone()), started_at: now };
                kv::put(&idem, &req.idempotency_key, &done)?;
                Ok(order)
            }
            Err(e) => {
                if let Err(d) = kv::delete(&idem, &req.idempotency_key) {
                    mercato_kit::log_warn("checkout", &format!("free key after failure: {d:?}"));
                }
                Err(e)
            }
        }
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
            Some(c) if c.starts_with(&prefix) && c.len() <= 200 => c,
            Some(_) => return Err(Error::InvalidInput("cursor: not a cursor this API returned".into())),
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
        Ok(OrderPage { items, next_cursor: if more { last_key } else { None } })
    }

    fn fulfill(merchant: String, id: String) -> Result<Order, Error> {
        let order = change(&id, |order| {
            if !order.lines.iter().any(|l| l.merchant_id == merchant) {
                return Err(not_found(&id));
            }
            status::fulfill(order, &merchant)
        })?;
        merchant_view(order, &merchant)?.ok_or_else(|| not_found(&id))
    }

    fn cancel(id: String) -> Result<Order, Error> {
        // Claim the transition first (paid → cancelled), so a concurrent
        // cancel or fulfilment cannot interleave; if the refund then fails,
        // undo the claim so the cancel can be retried.
        let order = change(&id, status::cancel)?;
        if let Err(e) =
            payment::refund(&order.payment.id, &order.payment.amount, &format!("cancel:{}", order.id))
        {
            if let Err(u) = change(&id, status::uncancel) {
                mercato_kit::log_warn(
                    "cancel",
                    &format!("{id}: refund failed and the order stays cancelled: {u:?}"),
                );
            }
            return Err(e);
        }
        let lines: Vec<ReservationLine> = order
            .lines
            .iter()
            .map(|l| ReservationLine { sku: l.sku.clone(), quantity: l.quantity })
            .collect();
        inventory::restock(&lines)?;
        change(&id, |o| {
            o.payment.status = PaymentStatus::Refunded;
            Ok(())
        })
    }
}

// Exports are wasm symbols; a native build (unit tests) has none.
#[cfg(target_family = "wasm")]
bindings::export!(Orders with_types_in bindings);

/// The component versions that served the checkout, plus each pricing
/// plugin whose adjustments the order carries (`source` = `plugin:<digest>`),
/// named after its merchant.
fn provenance(components: &[ProvenanceEntry], cart: &Cart) -> Vec<ProvenanceEntry> {
    let mut out = components.to_vec();
    for line in &cart.lines {
        for a in &line.adjustments {
            let Some(digest) = a.source.strip_prefix("plugin:") else { continue };
            let name = format!("pricing-plugin:{}", line.merchant_id);
            if !out.iter().any(|e| e.name == name && e.digest == digest) {
                out.push(ProvenanceEntry { name, digest: digest.to_string() });
            }
        }
    }
    out
}
