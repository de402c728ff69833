//! A plugin built for `mercato:pricing@0.1.0`, as merchants uploaded them
//! before 0.2.0: 5 % off every line (rounded down). The host must keep
//! running it unchanged beside 0.2.0 plugins.

wit_bindgen::generate!({
    path: "../../../wit/pricing-0.1.0",
    world: "mercato:pricing/plugin",
});

use exports::mercato::pricing::pricing::Guest;
use mercato::pricing::types::{Cart, Discount, Money};

struct Legacy;

impl Guest for Legacy {
    fn price(cart: Cart) -> Result<Vec<Discount>, String> {
        Ok(cart
            .lines
            .iter()
            .map(|l| Discount {
                sku: l.sku.clone(),
                label: "5% off (0.1.0 plugin)".into(),
                amount: Money {
                    amount: l.unit_price.amount * i64::from(l.quantity) / 20,
                    currency: cart.currency.clone(),
                },
            })
            .filter(|d| d.amount.amount > 0)
            .collect())
    }
}

#[cfg(target_family = "wasm")]
export!(Legacy);
