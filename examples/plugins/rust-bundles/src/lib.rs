//! An example pricing plugin for mercato, in Rust.
//!
//! Three promotions of one merchant, applied to that merchant's lines only
//! (the host never shows a plugin anyone else's lines):
//! 1. **Buy 3, pay for 2**: every third unit of a line is free.
//! 2. **10 % off over 100.00**: when the merchant's lines add up to more
//!    than 100.00 (10 000 minor units) after the first promotion, each line
//!    gets 10 % of what is left of it off (rounded down).
//! 3. **Discount codes from the configuration**: with the configuration
//!    `{"codes": {"SPRING10": 10}, "min_spend": 2000}` (set with
//!    `PUT /v1/merchant/pricing-plugin/config`), a cart holding `SPRING10`
//!    gets 10 % off what is left of each line, when the merchant's lines come
//!    to at least `min_spend`; below it the code is refused, with the reason
//!    the shopper sees. Codes the configuration does not name are left
//!    alone (another merchant's plugin may honour them).
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
use mercato::pricing::types::{Cart, Discount, Money, Pricing, RejectedCode};

/// Spend above which the merchant's lines get 10 % off, in minor units.
pub const THRESHOLD: i64 = 10_000;

/// The merchant's configuration (all of it optional).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Code → percent off.
    pub codes: std::collections::BTreeMap<String, i64>,
    /// Least spend (minor units, after the other promotions) for a code.
    pub min_spend: i64,
}

/// The discounts for `cart` and the codes refused (pure: no I/O, same input
/// → same output).
pub fn price(cart: &Cart) -> Result<Pricing, String> {
    let config: Config = match &cart.config {
        Some(text) => serde_json::from_str(text).map_err(|e| format!("the configuration: {e}"))?,
        None => Config::default(),
    };
    let mut discounts = discounts(cart)?;
    let mut rejected_codes = Vec::new();
    let after: Vec<(&str, i64)> = cart
        .lines
        .iter()
        .map(|l| {
            let taken: i64 = discounts.iter().filter(|d| d.sku == l.sku).map(|d| d.amount.amount).sum();
            (l.sku.as_str(), l.unit_price.amount * i64::from(l.quantity) - taken)
        })
        .collect();
    let spend: i64 = after.iter().map(|(_, rest)| rest).sum();
    for code in &cart.discount_codes {
        let Some(&percent) = config.codes.get(code) else { continue };
        if spend < config.min_spend {
            rejected_codes.push(RejectedCode {
                code: code.clone(),
                reason: format!(
                    "{code} needs at least {}.{:02} of our items",
                    config.min_spend / 100,
                    config.min_spend % 100
                ),
            });
            continue;
        }
        for (sku, rest) in &after {
            let off = rest * percent.clamp(0, 100) / 100;
            if off > 0 {
                discounts.push(Discount {
                    sku: sku.to_string(),
                    label: format!("{code}: {percent}% off"),
                    amount: Money { amount: off, currency: cart.currency.clone() },
                    code: Some(code.clone()),
                });
            }
        }
    }
    Ok(Pricing { discounts, rejected_codes })
}

/// The two automatic promotions.
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
                code: None,
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
                    code: None,
                });
            }
        }
    }
    Ok(out)
}

struct Bundles;

impl Guest for Bundles {
    fn price(cart: Cart) -> Result<Pricing, String> {
        price(&cart)
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
            title: sku.to_uppercase(),
            quantity,
            unit_price: Money { amount, currency: "EUR".into() },
        }
    }

    fn cart(lines: Vec<Line>) -> Cart {
        Cart { merchant_id: "m".into(), currency: "EUR".into(), lines, discount_codes: vec![], config: None }
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
    fn a_configured_code_takes_its_percent_of_what_is_left() {
        let mut c = cart(vec![line("a", 1000, 3), line("b", 500, 1)]);
        c.discount_codes = vec!["SPRING10".into(), "OTHER".into()];
        c.config = Some(r#"{"codes": {"SPRING10": 10}, "min_spend": 2000}"#.into());
        let p = price(&c).unwrap();
        // a: 3000 - 1000 (bundle) = 2000 → 200; b: 500 → 50. OTHER: not ours, left alone.
        let coded: Vec<_> = p
            .discounts
            .iter()
            .filter(|d| d.code.is_some())
            .map(|d| (d.sku.as_str(), d.amount.amount))
            .collect();
        assert_eq!(coded, vec![("a", 200), ("b", 50)]);
        assert!(p.rejected_codes.is_empty());
        // Under the least spend: refused, with the reason.
        c.lines = vec![line("a", 1000, 1)];
        let p = price(&c).unwrap();
        assert!(p.discounts.iter().all(|d| d.code.is_none()));
        assert_eq!(p.rejected_codes.len(), 1);
        assert!(p.rejected_codes[0].reason.contains("20.00"), "{}", p.rejected_codes[0].reason);
        // Without a configuration the code does nothing; a broken one is an error.
        c.config = None;
        assert!(price(&c).unwrap().rejected_codes.is_empty());
        c.config = Some("{".into());
        assert!(price(&c).is_err());
    }

    #[test]
    fn small_carts_get_nothing() {
        assert!(discounts(&cart(vec![line("a", 100, 2)])).unwrap().is_empty());
        assert!(discounts(&cart(vec![])).unwrap().is_empty());
    }
}
