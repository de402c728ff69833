//! Money: integer minor units plus an ISO 4217 code. Every operation is
//! checked; an overflow is an input error, never a wrapped number.

use crate::types::{Error, Money};

#[path = "iso4217.rs"]
mod iso4217;
use iso4217::ISO_4217;

/// The largest unit price a variant may have, in minor units (10 billion EUR).
pub const MAX_UNIT_AMOUNT: i64 = 1_000_000_000_000;

/// Whether `code` is an active ISO 4217 currency code (upper case).
pub fn is_currency(code: &str) -> bool {
    ISO_4217.binary_search(&code).is_ok()
}

/// `Ok` if `code` is a currency, else an input error naming `field`.
pub fn check_currency(field: &str, code: &str) -> Result<(), Error> {
    if is_currency(code) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("{field}: {code:?} is not an ISO 4217 currency code")))
    }
}

/// `Ok` if `price` is a valid unit price: a known currency and 0..=MAX_UNIT_AMOUNT.
pub fn check_price(field: &str, price: &Money) -> Result<(), Error> {
    check_currency(&format!("{field}.currency"), &price.currency)?;
    if !(0..=MAX_UNIT_AMOUNT).contains(&price.amount) {
        return Err(Error::InvalidInput(format!(
            "{field}.amount: must be an integer from 0 to {MAX_UNIT_AMOUNT} minor units"
        )));
    }
    Ok(())
}

pub fn zero(currency: &str) -> Money {
    Money { amount: 0, currency: currency.to_string() }
}

fn overflow() -> Error {
    Error::InvalidInput("amount out of range".to_string())
}

fn same_currency(a: &Money, b: &Money) -> Result<(), Error> {
    if a.currency == b.currency {
        Ok(())
    } else {
        Err(Error::CurrencyMismatch(format!("cannot combine {} with {}", a.currency, b.currency)))
    }
}

/// `a + b`, same currency, checked.
pub fn add(a: &Money, b: &Money) -> Result<Money, Error> {
    same_currency(a, b)?;
    let amount = a.amount.checked_add(b.amount).ok_or_else(overflow)?;
    Ok(Money { amount, currency: a.currency.clone() })
}

/// `a - b`, same currency, checked.
pub fn sub(a: &Money, b: &Money) -> Result<Money, Error> {
    same_currency(a, b)?;
    let amount = a.amount.checked_sub(b.amount).ok_or_else(overflow)?;
    Ok(Money { amount, currency: a.currency.clone() })
}

/// `unit × quantity`, checked.
pub fn times(unit: &Money, quantity: u32) -> Result<Money, Error> {
    let amount = unit.amount.checked_mul(i64::from(quantity)).ok_or_else(overflow)?;
    Ok(Money { amount, currency: unit.currency.clone() })
}

/// Sum of `items` in `currency` (zero when empty), checked.
pub fn sum<'a>(currency: &str, items: impl IntoIterator<Item = &'a Money>) -> Result<Money, Error> {
    items.into_iter().try_fold(zero(currency), |acc, m| add(&acc, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(amount: i64) -> Money {
        Money { amount, currency: "EUR".into() }
    }

    #[test]
    fn currency_list_is_sorted_so_binary_search_works() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        assert!(is_currency("EUR") && is_currency("USD") && is_currency("JPY"));
        assert!(!is_currency("eur") && !is_currency("EU") && !is_currency("XYZ"));
    }

    #[test]
    fn arithmetic_is_exact_in_minor_units() {
        assert_eq!(add(&eur(1999), &eur(1)).map(|m| m.amount).ok(), Some(2000));
        assert_eq!(sub(&eur(1999), &eur(2000)).map(|m| m.amount).ok(), Some(-1));
        assert_eq!(times(&eur(1999), 3).map(|m| m.amount).ok(), Some(5997));
        let total = sum("EUR", &[eur(1), eur(2), eur(3)]).map(|m| m.amount).ok();
        assert_eq!(total, Some(6));
        assert_eq!(sum("EUR", &[]).map(|m| m.amount).ok(), Some(0));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(matches!(times(&eur(i64::MAX / 2), 3), Err(Error::InvalidInput(_))));
        assert!(matches!(add(&eur(i64::MAX), &eur(1)), Err(Error::InvalidInput(_))));
        assert!(matches!(sub(&eur(i64::MIN), &eur(1)), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn currencies_never_mix() {
        let usd = Money { amount: 1, currency: "USD".into() };
        assert!(matches!(add(&eur(1), &usd), Err(Error::CurrencyMismatch(_))));
        assert!(matches!(sum("EUR", &[usd]), Err(Error::CurrencyMismatch(_))));
    }

    #[test]
    fn prices_are_bounded_and_non_negative() {
        assert!(check_price("price", &eur(0)).is_ok());
        assert!(check_price("price", &eur(MAX_UNIT_AMOUNT)).is_ok());
        assert!(check_price("price", &eur(-1)).is_err());
        assert!(check_price("price", &eur(MAX_UNIT_AMOUNT + 1)).is_err());
        let bad = Money { amount: 1, currency: "EURO".into() };
        assert!(check_price("price", &bad).is_err());
    }
}
