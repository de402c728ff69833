//! Validation of merchant input. Every message names the field.

use mercato_kit::money;
use mercato_kit::types::{Error, ProductInput};

pub const MAX_TITLE: usize = 200;
pub const MAX_DESCRIPTION: usize = 10_000;
pub const MAX_VARIANTS: usize = 100;
pub const MAX_SKU: usize = 64;
/// The most units a merchant may put on hand for one sku.
pub const MAX_STOCK: u32 = 1_000_000_000;

fn invalid(msg: String) -> Error {
    Error::InvalidInput(msg)
}

/// A sku: 1–64 characters of `A–Z a–z 0–9 . _ -`, starting with a letter or digit.
pub fn is_sku(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SKU
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub fn product(input: &ProductInput) -> Result<(), Error> {
    // Blank titles are refused; the length counts what was sent (as the
    // OpenAPI document's maxLength does).
    if input.title.trim().is_empty() || input.title.chars().count() > MAX_TITLE {
        return Err(invalid(format!("title: must be 1 to {MAX_TITLE} characters")));
    }
    if input.description.chars().count() > MAX_DESCRIPTION {
        return Err(invalid(format!("description: at most {MAX_DESCRIPTION} characters")));
    }
    if input.variants.is_empty() || input.variants.len() > MAX_VARIANTS {
        return Err(invalid(format!("variants: must have 1 to {MAX_VARIANTS} entries")));
    }
    let currency = &input.variants[0].price.currency;
    for (i, v) in input.variants.iter().enumerate() {
        if !is_sku(&v.sku) {
            return Err(invalid(format!(
                "variants[{i}].sku: {:?} must be 1 to {MAX_SKU} letters, digits, '.', '_' or '-'",
                v.sku
            )));
        }
        if v.title.chars().count() > MAX_TITLE {
            return Err(invalid(format!("variants[{i}].title: at most {MAX_TITLE} characters")));
        }
        money::check_price(&format!("variants[{i}].price"), &v.price)?;
        if &v.price.currency != currency {
            return Err(Error::CurrencyMismatch(format!(
                "variants[{i}].price.currency: all variants of a product share one currency ({currency})"
            )));
        }
        if v.stock.is_some_and(|s| s > MAX_STOCK) {
            return Err(invalid(format!("variants[{i}].stock: at most {MAX_STOCK}")));
        }
        if input.variants[..i].iter().any(|o| o.sku == v.sku) {
            // A rule the OpenAPI document can only say in words (JSON Schema
            // has no "unique by field").
            return Err(invalid(format!("variants[{i}].sku: {:?} appears twice", v.sku)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercato_kit::types::{Money, VariantInput};

    fn input(skus: &[&str]) -> ProductInput {
        ProductInput {
            title: "Mug".into(),
            description: String::new(),
            variants: skus
                .iter()
                .map(|s| VariantInput {
                    sku: s.to_string(),
                    title: String::new(),
                    price: Money { amount: 1200, currency: "EUR".into() },
                    stock: Some(5),
                })
                .collect(),
        }
    }

    #[test]
    fn accepts_a_plain_product() {
        assert!(product(&input(&["MUG-1", "MUG-2"])).is_ok());
    }

    #[test]
    fn refuses_bad_skus_and_duplicates() {
        for bad in ["", "-x", "a b", "x/y", &"x".repeat(65)] {
            assert!(product(&input(&[bad])).is_err(), "{bad:?}");
        }
        assert!(product(&input(&["A", "A"])).is_err());
        assert!(product(&input(&[])).is_err());
    }

    #[test]
    fn refuses_mixed_currencies_and_blank_titles() {
        let mut p = input(&["A", "B"]);
        p.variants[1].price.currency = "USD".into();
        assert!(matches!(product(&p), Err(Error::CurrencyMismatch(_))));
        let mut p = input(&["A"]);
        p.title = "   ".into();
        assert!(product(&p).is_err());
    }
}
