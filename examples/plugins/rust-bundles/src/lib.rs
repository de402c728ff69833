//! An example pricing plugin for mercato, in Rust.
//!
//! Two promotions of one merchant, applied to that merchant's lines only
//! (the host never shows a plugin anyone else's lines):
//! 1. **Buy 3, pay for 2**: every third unit of a line is free.
//! 2. **10 % off over 100.00**: when the merchant's lines add up to more
//!    than 100.00 (10 000 minor units) after the first promotion, each line
//!    gets 10 % of what is left of it off (rounded down).
//!
//! Build: `cargo build --target wasm32-wasip2 --release -p mercato-plugin-bundles`
//! (the host's build does it with the small `component` profile), then upload
//! `mercato_plugin_bundles.wasm` with `PUT /v1/merchant/pricing-plugin`.
//! Test: `cargo test -p mercato-plugin-bundles` runs [`discounts`] natively.

wit_bindgen::generate!({
    path: "../../../wit/pricing",
    world: "mercato:pricing/plugin",
});

use exports::mercato::pricing::pricing::Guest;
use mercato::pricing::types::{Cart, Discount, Money};

/// Spend above which the merchant's lines get 10 % off, in minor units.
pub const THRESHOLD: i64 = 10_000;

/// The discounts for `cart` (pure: no I/O, same input → same output).
pub fn discounts(cart: &Cart) -> Result<Vec<Discount>, String> {
    let mut out = Vec::new();
    let mut after_bundles = Vec::with_capacity(cart.lines.len());
    for line in &cart.lines {
        let gross = line
            .unit_price
            .amount
            .checked_mul(i64::from(line.quantity))
            .ok_or_else(|| format!("line {} overflows", line.sku))?;
        let free_units = i64::from(line.quantity / 3);
        let bundle = free_units * line.unit_price.amount;
        if bundle > 0 {
            out.push(Discount {
                sku: line.sku.clone(),
                label: "Buy 3, pay for 2".into(),
                amount: Money { amount: bundle, currency: cart.currency.clone() },
            });
        }
        after_bundles.push((line, gross - bundle));
    }
    let spend: i64 = after_bundles.iter().map(|(_, rest)| rest).sum();
    if spend > THRESHOLD {
        for (line, rest) in after_bundles {
            let off = rest / 10;
            if off > 0 {
                out.push(Discount {
                    sku: line.sku.clone(),
                    label: "10% off orders over 100.00".into(),
                    amount: Money { amount: off, currency: cart.currency.clone() },
                });
            }
        }
    }
    Ok(out)
}

struct Bundles;

impl Guest for Bundles {
    fn price(cart: Cart) -> Result<Vec<Discount>, String> {
        discounts(&cart)
    }
}

#[cfg(target_family = "wasm")]
export!(Bundles);

#[cfg(test)]
mod tests {
    use super::*;
    use mercato::pricing::types::Line;

    fn line(sku: &str, amount: i64, quantity: u32) -> Line {
        Line {
            sku: sku.into(),
            product_id: "p".into(),
            quantity,
            unit_price: Money { amount, currency: "EUR".into() },
        }
    }

    fn cart(lines: Vec<Line>) -> Cart {
        Cart { merchant_id: "m".into(), currency: "EUR".into(), lines }
    }

    #[test]
    fn every_third_unit_is_free() {
        let d = discounts(&cart(vec![line("a", 500, 7)])).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].amount.amount, 1000); // 2 of 7 free
    }

    #[test]
    fn ten_percent_off_above_the_threshold_after_bundles() {
        // 3 × 40.00 = 120.00, one free → 80.00: no 10 %.
        let d = discounts(&cart(vec![line("a", 4000, 3)])).unwrap();
        assert_eq!(d.iter().map(|d| d.amount.amount).sum::<i64>(), 4000);
        // 2 × 60.00 = 120.00 → 12.00 off.
        let d = discounts(&cart(vec![line("a", 6000, 2)])).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].amount.amount, 1200);
    }

    #[test]
    fn small_carts_get_nothing() {
        assert!(discounts(&cart(vec![line("a", 100, 2)])).unwrap().is_empty());
        assert!(discounts(&cart(vec![])).unwrap().is_empty());
    }
}
