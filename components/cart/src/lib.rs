//! The cart component: carts of sku lines in one currency.
//!
//! Storage (its own namespace): bucket `carts`, cart id → [`CartRecord`]
//! `{id, currency, lines: [{sku, quantity}], codes: [..]}`. Only skus,
//! quantities and the shopper's discount codes are stored: every read prices
//! the cart afresh from the catalog (current prices) and the host's pricing
//! engine (merchant plugins, which decide what each code is worth), so a
//! cart never shows a stale price. Changes are compare-and-swap on the
//! cart's key.

mod totals;

use mercato_kit::kv::{self, Change};
use mercato_kit::types::{Cart, Error, PricedLine, Pricing, SkuInfo};
use serde::{Deserialize, Serialize};

mod bindings {
    mercato_kit::component_bindings!("../../wit", "mercato:commerce/cart-component", {
        "wasi:keyvalue/batch@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::batch,
        "wasi:random/random@0.2.12": mercato_kit::bindings::wasi::random::random,
    });
}

use bindings::exports::mercato::commerce::{cart, cart_contents};
use bindings::mercato::commerce::{pricing_engine, sku_lookup};

/// Most units one line may hold.
pub const MAX_LINE_QUANTITY: u32 = 1_000;
/// Most lines one cart may hold.
pub const MAX_LINES: usize = 200;
/// Most discount codes one cart may hold.
pub const MAX_CODES: usize = 10;
/// Longest discount code.
pub const MAX_CODE_LEN: usize = 64;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct LineRecord {
    sku: String,
    quantity: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct CartRecord {
    id: String,
    currency: String,
    lines: Vec<LineRecord>,
    /// Upper case, in the order entered (carts stored before codes existed
    /// have none).
    #[serde(default)]
    codes: Vec<String>,
}

/// A code as the shopper typed it, checked and upper-cased.
fn normalize_code(code: &str) -> Result<String, Error> {
    if code.len() > MAX_CODE_LEN {
        return Err(Error::InvalidInput(format!("code: at most {MAX_CODE_LEN} characters")));
    }
    let code = code.trim();
    if code.is_empty() {
        return Err(Error::InvalidInput(format!("code: 1 to {MAX_CODE_LEN} characters")));
    }
    if !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(Error::InvalidInput("code: only letters, digits, '-' and '_'".to_string()));
    }
    Ok(code.to_ascii_uppercase())
}

fn is_cart_id(id: &str) -> bool {
    id.len() == 37 && id.starts_with("cart_") && id[5..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("cart {id:?}"))
}

fn check_quantity(quantity: u32) -> Result<(), Error> {
    if quantity > MAX_LINE_QUANTITY {
        return Err(Error::InvalidQuantity(format!("quantity: at most {MAX_LINE_QUANTITY} units per line")));
    }
    Ok(())
}

/// Price a stored cart now: current catalog prices, then plugin adjustments.
fn price(record: &CartRecord) -> Result<Cart, Error> {
    let skus: Vec<String> = record.lines.iter().map(|l| l.sku.clone()).collect();
    let infos = if skus.is_empty() { Vec::new() } else { sku_lookup::lookup_skus(&skus)? };
    // A sku the merchant has since removed drops out of the priced cart.
    let lines: Vec<(u32, SkuInfo)> =
        record.lines.iter().zip(infos).filter_map(|(l, info)| info.map(|i| (l.quantity, i))).collect();
    let priced: Vec<PricedLine> = lines
        .iter()
        .map(|(quantity, info)| PricedLine {
            sku: info.sku.clone(),
            product_id: info.product_id.clone(),
            merchant_id: info.merchant_id.clone(),
            title: info.title.clone(),
            quantity: *quantity,
            unit_price: info.price.clone(),
        })
        .collect();
    let pricing = if priced.is_empty() && record.codes.is_empty() {
        Pricing { adjustments: Vec::new(), codes: Vec::new() }
    } else {
        pricing_engine::adjust(&record.currency, &priced, &record.codes)?
    };
    totals::build_cart(&record.id, &record.currency, &lines, pricing)
}

/// Load, change and store a cart with compare-and-swap, then price it.
fn modify(id: &str, f: impl Fn(&mut CartRecord) -> Result<(), Error>) -> Result<Cart, Error> {
    if !is_cart_id(id) {
        return Err(not_found(id));
    }
    let carts = kv::open("carts")?;
    let record = kv::update(&carts, id, |current: Option<CartRecord>| {
        let mut record = current.ok_or_else(|| not_found(id))?;
        f(&mut record)?;
        Ok(Change::Write(record.clone(), record))
    })?;
    price(&record)
}

struct CartComponent;

impl cart::Guest for CartComponent {
    fn create_cart(currency: String) -> Result<Cart, Error> {
        mercato_kit::money::check_currency("currency", &currency)?;
        let record = CartRecord {
            id: mercato_kit::random_id("cart_"),
            currency,
            lines: Vec::new(),
            codes: Vec::new(),
        };
        let carts = kv::open("carts")?;
        if !kv::insert_if_absent(&carts, &record.id, &record)? {
            return Err(Error::Conflict("cart id collision; try again".to_string()));
        }
        price(&record)
    }

    fn add_item(id: String, sku: String, quantity: u32) -> Result<Cart, Error> {
        if quantity == 0 {
            return Err(Error::InvalidQuantity("quantity: must be at least 1".to_string()));
        }
        check_quantity(quantity)?;
        if !is_cart_id(&id) {
            return Err(not_found(&id));
        }
        // Check the sku once, before the read-modify-write loop.
        let info = sku_lookup::lookup_skus(std::slice::from_ref(&sku))?
            .pop()
            .flatten()
            .ok_or_else(|| Error::UnknownSku(format!("sku {sku:?} is not in the catalog")))?;
        modify(&id, |cart| {
            if info.price.currency != cart.currency {
                return Err(Error::CurrencyMismatch(format!(
                    "sku {sku:?} is priced in {}, the cart is in {}",
                    info.price.currency, cart.currency
                )));
            }
            match cart.lines.iter_mut().find(|l| l.sku == sku) {
                Some(line) => {
                    let total = line.quantity.saturating_add(quantity);
                    if total > MAX_LINE_QUANTITY {
                        return Err(Error::InvalidQuantity(format!(
                            "quantity: the line would hold {total} units, at most {MAX_LINE_QUANTITY}"
                        )));
                    }
                    line.quantity = total;
                }
                None => {
                    if cart.lines.len() >= MAX_LINES {
                        return Err(Error::Conflict(format!(
                            "the cart is full: it holds at most {MAX_LINES} lines"
                        )));
                    }
                    cart.lines.push(LineRecord { sku: sku.clone(), quantity });
                }
            }
            Ok(())
        })
    }

    fn set_quantity(id: String, sku: String, quantity: u32) -> Result<Cart, Error> {
        check_quantity(quantity)?;
        modify(&id, |cart| {
            let pos = cart
                .lines
                .iter()
                .position(|l| l.sku == sku)
                .ok_or_else(|| Error::NotFound(format!("sku {sku:?} is not in the cart")))?;
            if quantity == 0 {
                cart.lines.remove(pos);
            } else {
                cart.lines[pos].quantity = quantity;
            }
            Ok(())
        })
    }

    fn remove_item(id: String, sku: String) -> Result<Cart, Error> {
        modify(&id, |cart| {
            let before = cart.lines.len();
            cart.lines.retain(|l| l.sku != sku);
            if cart.lines.len() == before {
                return Err(Error::NotFound(format!("sku {sku:?} is not in the cart")));
            }
            Ok(())
        })
    }

    fn add_code(id: String, code: String) -> Result<Cart, Error> {
        let code = normalize_code(&code)?;
        modify(&id, |cart| {
            if cart.codes.contains(&code) {
                return Ok(());
            }
            if cart.codes.len() >= MAX_CODES {
                return Err(Error::Conflict(format!("the cart holds at most {MAX_CODES} discount codes")));
            }
            cart.codes.push(code.clone());
            Ok(())
        })
    }

    fn remove_code(id: String, code: String) -> Result<Cart, Error> {
        // A code that could never have been entered is simply not there.
        let code = normalize_code(&code).unwrap_or_else(|_| code.clone());
        modify(&id, |cart| {
            let before = cart.codes.len();
            cart.codes.retain(|c| c != &code);
            if cart.codes.len() == before {
                return Err(Error::NotFound(format!("the cart holds no code {code:?}")));
            }
            Ok(())
        })
    }
}

impl cart_contents::Guest for CartComponent {
    fn get_cart(id: String) -> Result<Cart, Error> {
        if !is_cart_id(&id) {
            return Err(not_found(&id));
        }
        let carts = kv::open("carts")?;
        let record: CartRecord = kv::get(&carts, &id)?.ok_or_else(|| not_found(&id))?;
        price(&record)
    }
}

// Exports are wasm symbols; a native build (unit tests) has none.
#[cfg(target_family = "wasm")]
bindings::export!(CartComponent with_types_in bindings);
