//! Reservation lines, kept pure so they can be tested natively.

use mercato_kit::types::{Error, ReservationLine};

/// Merge duplicate skus and refuse zero quantities.
pub fn merge_lines(lines: &[ReservationLine]) -> Result<Vec<ReservationLine>, Error> {
    let mut merged: Vec<ReservationLine> = Vec::new();
    for line in lines {
        if line.quantity == 0 {
            return Err(Error::InvalidQuantity(format!("{}: quantity must be at least 1", line.sku)));
        }
        match merged.iter_mut().find(|m| m.sku == line.sku) {
            Some(m) => {
                m.quantity = m
                    .quantity
                    .checked_add(line.quantity)
                    .ok_or_else(|| Error::InvalidQuantity(format!("{}: quantity too large", line.sku)))?
            }
            None => merged.push(line.clone()),
        }
    }
    // A fixed order keeps concurrent reservations from taking keys in
    // opposite orders.
    merged.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_merge_and_sort() {
        let l = |sku: &str, quantity| ReservationLine { sku: sku.into(), quantity };
        let merged = merge_lines(&[l("b", 1), l("a", 2), l("b", 3)]).expect("valid");
        assert_eq!(
            merged.iter().map(|m| (m.sku.as_str(), m.quantity)).collect::<Vec<_>>(),
            vec![("a", 2), ("b", 4)]
        );
        assert!(merge_lines(&[l("a", 0)]).is_err());
        assert!(merge_lines(&[l("a", u32::MAX), l("a", 1)]).is_err());
    }
}
