//! The host's own records: merchants (with token hashes) and settings.

use async_trait::async_trait;

use super::Result;

#[derive(Clone, Debug)]
pub struct MerchantRow {
    pub id: String,
    pub name: String,
    pub token_hash: String,
}

#[async_trait]
pub trait Accounts: Send + Sync {
    /// A new merchant; an id that exists is an error.
    async fn insert_merchant(&self, m: &MerchantRow, created_at: i64) -> Result<()>;

    async fn merchant(&self, id: &str) -> Result<Option<MerchantRow>>;

    async fn merchant_count(&self) -> Result<i64>;

    async fn setting(&self, key: &str) -> Result<Option<String>>;

    /// Store `value` under `key` unless a value is there already; returns the
    /// value now stored (so two replicas starting at once agree on one).
    async fn setting_insert_or_get(&self, key: &str, value: &str) -> Result<String>;
}
