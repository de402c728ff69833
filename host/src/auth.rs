//! Tokens: generation, hashing, constant-time verification.
//!
//! A merchant token is `mt.<merchant id>.<secret>`; only SHA-256 of the
//! secret is stored. The admin token is any string (from
//! `MERCATO_ADMIN_TOKEN`) or a generated `at.<secret>`; again only its hash is
//! kept. Secrets are 256 random bits, so a fast hash is enough: there is
//! nothing to brute-force. Comparisons use `subtle` and take the same time
//! whether the first or the last byte differs.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::storage::Db;
use crate::storage::accounts::MerchantRow;

/// The settings key of the stored admin token hash.
pub const ADMIN_HASH_KEY: &str = "admin_token_sha256";

/// The settings key of the order access key (created once, shared by every
/// replica through the database).
pub const ORDER_ACCESS_KEY: &str = "order_access_key";

/// The access token of order `order_id` (SPEC §4): `ot.` and the hex
/// HMAC-SHA256 of the order id under the deployment's order access key.
/// Nothing is stored per order: a replayed checkout answers with the same
/// token, and a token opens only its own order.
pub fn order_access_token(key: &str, order_id: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("any key length"));
    mac.update(b"mercato order access\0");
    mac.update(order_id.as_bytes());
    format!("ot.{}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `presented` is the access token of `order_id`, in constant time.
pub fn verify_order_access(key: &str, order_id: &str, presented: &str) -> bool {
    order_access_token(key, order_id).as_bytes().ct_eq(presented.as_bytes()).into()
}

/// SHA-256 of `secret`, hex.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// 256 random bits, hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Whether `presented` hashes to `stored_hash`, in constant time.
pub fn verify(presented: &str, stored_hash: &str) -> bool {
    let h = hash(presented);
    h.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Whether `id` has the shape of a merchant id (`m_` + 16 lower-case hex):
/// anything else is not looked up (client input never reaches a query it
/// could break, such as a NUL in a PostgreSQL `TEXT` parameter).
pub fn is_merchant_id(id: &str) -> bool {
    id.len() == 18 && id.starts_with("m_") && id[2..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new merchant: its id, the token to show once, and the row to store.
pub fn new_merchant(name: &str) -> (String, MerchantRow) {
    let id = format!("m_{}", hex::encode(rand::random::<[u8; 8]>()));
    let secret = new_secret();
    let token = format!("mt.{id}.{secret}");
    let row = MerchantRow { id, name: name.to_string(), token_hash: hash(&secret) };
    (token, row)
}

/// Verify a merchant token; `Some(merchant id)` if it is valid.
pub async fn merchant(db: &Db, token: &str) -> Result<Option<String>, crate::storage::StorageError> {
    let mut parts = token.splitn(3, '.');
    let (Some("mt"), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    if id.len() > 64 {
        return Ok(None);
    }
    match db.merchant(id).await? {
        Some(row) if verify(secret, &row.token_hash) => Ok(Some(row.id)),
        Some(_) => Ok(None),
        None => {
            // Same work as a wrong secret, so timing does not reveal which ids exist.
            let _ = verify(secret, &hash("unknown merchant"));
            Ok(None)
        }
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, Default, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_only_the_secret() {
        let stored = hash("s3cret");
        assert!(verify("s3cret", &stored));
        assert!(!verify("s3creT", &stored));
        assert!(!verify("", &stored));
    }

    #[test]
    fn bearer_parses_the_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn merchant_tokens_carry_their_id_and_hide_their_secret() {
        let (token, row) = new_merchant("Shop");
        assert!(token.starts_with(&format!("mt.{}.", row.id)));
        assert!(!row.token_hash.is_empty() && !token.contains(&row.token_hash));
        let secret = token.rsplit('.').next().unwrap_or_default();
        assert!(verify(secret, &row.token_hash));
    }
}
