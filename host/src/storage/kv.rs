//! Key-value storage behind the `wasi:keyvalue` capability.
//!
//! Rows are `(namespace, bucket, key) → (value, version)`. The namespace is
//! chosen by the host (the component's name), never by the guest. Every write
//! sets a fresh random `version`; compare-and-swap is atomic on every backend.

use async_trait::async_trait;

use super::{Result, StorageError};

/// Keys per `list-keys` page.
pub const LIST_PAGE: usize = 500;
/// Most keys one batch call may name.
pub const MAX_BATCH: usize = 10_000;

/// Where a key lives.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    pub bucket: &'a str,
}

/// A value and the version it was read at.
#[derive(Clone, Debug)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: i64,
}

pub(crate) fn new_version() -> i64 {
    rand::random::<i64>()
}

pub(crate) fn check_batch(n: usize) -> Result<()> {
    if n > MAX_BATCH {
        return Err(StorageError::Invalid(format!("a batch may name at most {MAX_BATCH} keys (got {n})")));
    }
    Ok(())
}

/// The key-value operations a backend provides.
#[async_trait]
pub trait KeyValue: Send + Sync {
    async fn kv_get(&self, s: Scope<'_>, key: &str) -> Result<Option<Versioned>>;

    async fn kv_set(&self, s: Scope<'_>, key: &str, value: &[u8]) -> Result<()>;

    async fn kv_delete(&self, s: Scope<'_>, key: &str) -> Result<()>;

    /// Keys after `after` in byte order, one page ([`LIST_PAGE`]), and
    /// whether more follow.
    async fn kv_list(&self, s: Scope<'_>, after: Option<&str>) -> Result<(Vec<String>, bool)>;

    /// Write `value` only if the key's version is still `expected` (`None`:
    /// only if the key is absent). Returns whether it was written.
    async fn kv_swap(&self, s: Scope<'_>, key: &str, expected: Option<i64>, value: &[u8]) -> Result<bool>;

    /// Atomically add `delta` to the decimal integer at `key` (absent = 0).
    async fn kv_increment(&self, s: Scope<'_>, key: &str, delta: i64) -> Result<i64>;

    /// Values of `keys` (at most [`MAX_BATCH`]), in the order given.
    async fn kv_get_many(&self, s: Scope<'_>, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Set all pairs in one transaction.
    async fn kv_set_many(&self, s: Scope<'_>, pairs: &[(String, Vec<u8>)]) -> Result<()>;

    /// Delete all keys in one transaction.
    async fn kv_delete_many(&self, s: Scope<'_>, keys: &[String]) -> Result<()>;

    /// Number of keys in a namespace (for tests and diagnostics).
    async fn kv_count(&self, namespace: &str) -> Result<i64>;
}
