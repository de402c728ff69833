//! The order status machine (SPEC §3): `pending_payment → paid → fulfilled`,
//! `paid → cancelled`. Every other transition is a conflict (HTTP 409).

use mercato_kit::types::{Error, Order, OrderStatus, PaymentStatus};

fn name(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::PendingPayment => "pending_payment",
        OrderStatus::Paid => "paid",
        OrderStatus::Fulfilled => "fulfilled",
        OrderStatus::Cancelled => "cancelled",
    }
}

fn refuse(order: &Order, action: &str) -> Error {
    Error::Conflict(format!("cannot {action} an order that is {}", name(order.status)))
}

/// Mark `merchant`'s lines fulfilled; the order is fulfilled when all are.
pub fn fulfill(order: &mut Order, merchant: &str) -> Result<(), Error> {
    if order.status != OrderStatus::Paid {
        return Err(refuse(order, "fulfill"));
    }
    let mut changed = false;
    for line in order.lines.iter_mut().filter(|l| l.merchant_id == merchant) {
        changed |= !line.fulfilled;
        line.fulfilled = true;
    }
    if !changed {
        return Err(Error::Conflict("these lines are already fulfilled".into()));
    }
    if order.lines.iter().all(|l| l.fulfilled) {
        order.status = OrderStatus::Fulfilled;
    }
    Ok(())
}

/// Cancel a paid order of which nothing has shipped yet.
pub fn cancel(order: &mut Order) -> Result<(), Error> {
    if order.status != OrderStatus::Paid {
        return Err(refuse(order, "cancel"));
    }
    if order.lines.iter().any(|l| l.fulfilled) {
        return Err(Error::Conflict("cannot cancel an order with fulfilled lines".into()));
    }
    order.status = OrderStatus::Cancelled;
    Ok(())
}

/// Undo [`cancel`] when the refund failed: back to paid.
pub fn uncancel(order: &mut Order) -> Result<(), Error> {
    if order.status != OrderStatus::Cancelled || order.payment.status == PaymentStatus::Refunded {
        return Err(refuse(order, "reopen"));
    }
    order.status = OrderStatus::Paid;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use mercato_kit::types::{Money, OrderLine, Payment};

    fn order(merchants: &[&str]) -> Order {
        let eur = |amount| Money { amount, currency: "EUR".into() };
        Order {
            id: "ord_x".into(),
            status: OrderStatus::Paid,
            email: "a@b.c".into(),
            currency: "EUR".into(),
            lines: merchants
                .iter()
                .map(|m| OrderLine {
                    sku: format!("{m}-sku"),
                    product_id: "p".into(),
                    merchant_id: m.to_string(),
                    title: "t".into(),
                    quantity: 1,
                    unit_price: eur(100),
                    adjustments: vec![],
                    line_total: eur(100),
                    fulfilled: false,
                })
                .collect(),
            discount_codes: None,
            subtotal: eur(100),
            discount_total: eur(0),
            total: eur(100),
            payment: Payment { id: "pi".into(), status: PaymentStatus::Succeeded, amount: eur(100) },
            created_at: 0,
            provenance: vec![],
        }
    }

    #[test]
    fn fulfilment_is_per_merchant_and_completes_the_order() {
        let mut o = order(&["a", "b"]);
        fulfill(&mut o, "a").expect("a ships");
        assert_eq!(o.status, OrderStatus::Paid);
        assert!(fulfill(&mut o, "a").is_err(), "twice is a conflict");
        fulfill(&mut o, "b").expect("b ships");
        assert_eq!(o.status, OrderStatus::Fulfilled);
        assert!(cancel(&mut o).is_err(), "fulfilled cannot be cancelled");
    }

    #[test]
    fn only_paid_orders_move() {
        let mut o = order(&["a"]);
        o.status = OrderStatus::PendingPayment;
        assert!(fulfill(&mut o, "a").is_err());
        assert!(cancel(&mut o).is_err());
        let mut o = order(&["a"]);
        cancel(&mut o).expect("paid → cancelled");
        assert_eq!(o.status, OrderStatus::Cancelled);
        assert!(cancel(&mut o).is_err(), "cancelled → cancelled is refused");
        assert!(fulfill(&mut o, "a").is_err());
        let mut o = order(&["a", "b"]);
        fulfill(&mut o, "a").expect("partly shipped");
        assert!(cancel(&mut o).is_err(), "partly shipped cannot be cancelled");
    }
}
