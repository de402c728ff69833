//! The API's JSON shapes of what events carry (SPEC §4), shared by the API's
//! routes and the events the host renders into the outbox, so an event's
//! data is exactly what the API answers.

use serde_json::{Value, json};

use crate::bindings::types::{Order, OrderStatus, PaymentStatus};

fn order_status(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::PendingPayment => "pending_payment",
        OrderStatus::Paid => "paid",
        OrderStatus::Fulfilled => "fulfilled",
        OrderStatus::Cancelled => "cancelled",
    }
}

fn payment_status(s: PaymentStatus) -> &'static str {
    match s {
        PaymentStatus::Pending => "pending",
        PaymentStatus::Authorized => "authorized",
        PaymentStatus::Succeeded => "succeeded",
        PaymentStatus::Declined => "declined",
        PaymentStatus::Voided => "voided",
        PaymentStatus::Refunded => "refunded",
    }
}

/// An order as the API shows it to its shopper and the operator (SPEC §4):
/// what a merchant sees, plus the payment and the provenance.
pub fn order_json(o: &Order) -> Value {
    let mut json = merchant_order_json(o);
    json["payment"] = json!({ "id": o.payment.id, "status": payment_status(o.payment.status) });
    json["provenance"] = json!(o.provenance);
    json
}

/// An order as a merchant sees it: only its lines (the component has
/// filtered them) and what fulfilment needs — no payment, no provenance
/// (which names every merchant's plugin).
pub fn merchant_order_json(o: &Order) -> Value {
    json!({
        "id": o.id,
        "status": order_status(o.status),
        "email": o.email,
        "currency": o.currency,
        "lines": o.lines,
        "discount_codes": o.discount_codes.as_deref().unwrap_or_default(),
        "subtotal": o.subtotal,
        "discount_total": o.discount_total,
        "total": o.total,
        "created_at": o.created_at,
    })
}

/// `stock.low`'s data (the merchant's view too): `available` and
/// `low_stock_threshold` are set by the database to what the change left,
/// when it decides the event.
pub fn stock_low_json(merchant: &str, sku: &str) -> Value {
    json!({
        "sku": sku,
        "merchant_id": merchant,
        "low_stock_threshold": null,
        "available": null,
    })
}
