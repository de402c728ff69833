//! Page cursors: opaque to clients, validated on the way in.
//!
//! A cursor is `c1.` followed by the id of the last product of the previous
//! page; the next page starts after it. The version prefix lets the format
//! change without misreading old cursors.

use mercato_kit::types::Error;

const PREFIX: &str = "c1.";

/// Whether `id` has the shape of a product id (`p` + 12 digits).
pub fn is_product_id(id: &str) -> bool {
    id.len() == 13 && id.starts_with('p') && id[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The sequence number of a product id (`is_product_id` holds).
pub fn seq(id: &str) -> i64 {
    id[1..].parse().unwrap_or(i64::MAX)
}

pub fn encode(last_id: &str) -> String {
    format!("{PREFIX}{last_id}")
}

pub fn decode(cursor: &str) -> Result<String, Error> {
    cursor
        .strip_prefix(PREFIX)
        .filter(|id| is_product_id(id))
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidInput("cursor: not a cursor this API returned".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c = encode("p000000000042");
        assert_eq!(decode(&c).ok().as_deref(), Some("p000000000042"));
    }

    #[test]
    fn rejects_foreign_or_tampered_cursors() {
        for bad in
            ["", "c1.", "c2.p000000000042", "p000000000042", "c1.p42", "c1.p00000000004x", "c1.../cart"]
        {
            assert!(decode(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn product_ids_sort_in_creation_order() {
        let ids: Vec<String> = [9, 10, 100, 1_000_000].iter().map(|n| format!("p{n:012}")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids.iter().all(|id| is_product_id(id)));
        assert_eq!(ids.iter().map(|id| seq(id)).collect::<Vec<_>>(), [9, 10, 100, 1_000_000]);
    }
}
