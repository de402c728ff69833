//! Cart totals: integer arithmetic in one currency, checked at every step.
//!
//! `line_total = unit_price × quantity + Σ adjustments` (adjustments are
//! negative for discounts), `subtotal = Σ unit_price × quantity`,
//! `discount_total = −Σ adjustments`, `total = subtotal − discount_total`.

use mercato_kit::money;
use mercato_kit::types::{Adjustment, Cart, CartLine, Error, Pricing, SkuInfo};

pub fn build_cart(
    id: &str,
    currency: &str,
    lines: &[(u32, SkuInfo)],
    pricing: Pricing,
) -> Result<Cart, Error> {
    let Pricing { adjustments, codes } = pricing;
    let mut out: Vec<CartLine> = Vec::with_capacity(lines.len());
    for (quantity, info) in lines {
        if info.price.currency != currency {
            return Err(Error::CurrencyMismatch(format!(
                "sku {:?} is priced in {}, the cart is in {currency}",
                info.sku, info.price.currency
            )));
        }
        let mine: Vec<Adjustment> =
            adjustments.iter().filter(|a| a.sku == info.sku).map(|a| a.adjustment.clone()).collect();
        let gross = money::times(&info.price, *quantity)?;
        let line_total = money::add(&gross, &money::sum(currency, mine.iter().map(|a| &a.amount))?)?;
        out.push(CartLine {
            sku: info.sku.clone(),
            product_id: info.product_id.clone(),
            merchant_id: info.merchant_id.clone(),
            title: info.title.clone(),
            quantity: *quantity,
            unit_price: info.price.clone(),
            adjustments: mine,
            line_total,
        });
    }
    let gross: Vec<_> =
        out.iter().map(|l| money::times(&l.unit_price, l.quantity)).collect::<Result<_, _>>()?;
    let subtotal = money::sum(currency, &gross)?;
    let total = money::sum(currency, out.iter().map(|l| &l.line_total))?;
    let discount_total = money::sub(&subtotal, &total)?;
    Ok(Cart {
        id: id.to_string(),
        currency: currency.to_string(),
        lines: out,
        discount_codes: codes,
        subtotal,
        discount_total,
        total,
    })
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use mercato_kit::types::{LineAdjustment, Money};

    fn none() -> Pricing {
        Pricing { adjustments: vec![], codes: vec![] }
    }

    fn eur(amount: i64) -> Money {
        Money { amount, currency: "EUR".into() }
    }

    fn info(sku: &str, price: i64) -> SkuInfo {
        SkuInfo {
            sku: sku.into(),
            product_id: "p1".into(),
            merchant_id: "m1".into(),
            title: sku.into(),
            price: eur(price),
        }
    }

    #[test]
    fn totals_are_exact_integers() {
        let cart = build_cart("c", "EUR", &[(3, info("a", 1999)), (1, info("b", 1))], none()).expect("valid");
        assert_eq!(cart.subtotal.amount, 5998);
        assert_eq!(cart.discount_total.amount, 0);
        assert_eq!(cart.total.amount, 5998);
        assert_eq!(cart.lines[0].line_total.amount, 5997);
    }

    #[test]
    fn adjustments_reduce_their_line_only() {
        let adj = LineAdjustment {
            sku: "a".into(),
            adjustment: Adjustment { label: "3 for 2".into(), amount: eur(-1999), source: "plugin:x".into() },
        };
        let cart = build_cart(
            "c",
            "EUR",
            &[(3, info("a", 1999)), (1, info("b", 500))],
            Pricing { adjustments: vec![adj], codes: vec![] },
        )
        .expect("valid");
        assert_eq!(cart.lines[0].line_total.amount, 3998);
        assert_eq!(cart.lines[1].line_total.amount, 500);
        assert_eq!((cart.subtotal.amount, cart.discount_total.amount, cart.total.amount), (6497, 1999, 4498));
    }

    #[test]
    fn empty_cart_is_zero() {
        let cart = build_cart("c", "EUR", &[], none()).expect("valid");
        assert_eq!((cart.subtotal.amount, cart.total.amount, cart.subtotal.currency.as_str()), (0, 0, "EUR"));
    }

    #[test]
    fn foreign_currency_line_is_refused() {
        let mut usd = info("a", 100);
        usd.price.currency = "USD".into();
        assert!(matches!(build_cart("c", "EUR", &[(1, usd)], none()), Err(Error::CurrencyMismatch(_))));
    }

    #[test]
    fn overflow_is_refused() {
        assert!(build_cart("c", "EUR", &[(u32::MAX, info("a", i64::MAX / 2))], none()).is_err());
    }
}
