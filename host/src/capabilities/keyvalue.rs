//! `wasi:keyvalue` (store, atomics, batch) over the host database.
//!
//! A component names buckets, never namespaces: the namespace is the
//! component's own name, fixed by the host when the store is created. A
//! bucket identifier that tries to reach elsewhere (`cart/carts`,
//! `cart:carts`, `../x`) is refused with `access-denied`.

use std::time::Instant;

use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::keyvalue::wasi::keyvalue::{atomics, batch, store};
pub use crate::bindings::keyvalue::{BucketHandle, CasHandle};
use crate::capabilities::bounded;
use crate::storage::kv::Scope;
use crate::storage::{Db, StorageError};

/// Largest key, in bytes.
pub const MAX_KEY: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 1024 * 1024;

/// The `wasi:keyvalue` state of one store: the component's namespace, the
/// database, the request's deadline, and its own table of open buckets and
/// compare-and-swap handles.
pub struct KeyValueState {
    namespace: &'static str,
    db: Db,
    deadline: Instant,
    table: ResourceTable,
}

impl KeyValueState {
    pub fn new(namespace: &'static str, db: Db, deadline: Instant) -> KeyValueState {
        KeyValueState { namespace, db, deadline, table: ResourceTable::new() }
    }
}

type KvResult<T> = wasmtime::Result<Result<T, store::Error>>;

/// Whether `name` is a plain bucket name: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn is_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn other(e: StorageError) -> store::Error {
    tracing::warn!(error = %e, "key-value operation failed");
    store::Error::Other(e.to_string())
}

/// What a guest gets when the request's deadline passes during a storage
/// call (raced in host time, see [`crate::capabilities::bounded`]).
fn late() -> store::Error {
    store::Error::Other("timeout: the request's deadline passed".to_string())
}

fn check_key(key: &str) -> Result<(), store::Error> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(store::Error::Other(format!("keys must be 1 to {MAX_KEY} bytes")));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), store::Error> {
    if value.len() > MAX_VALUE {
        return Err(store::Error::Other(format!("values must be at most {MAX_VALUE} bytes")));
    }
    Ok(())
}

impl KeyValueState {
    fn bucket_name(&self, bucket: &Resource<BucketHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(bucket)?.name.clone())
    }

    fn scope<'a>(&self, bucket: &'a str) -> Scope<'a> {
        Scope { namespace: self.namespace, bucket }
    }
}

impl store::Host for KeyValueState {
    async fn open(&mut self, identifier: String) -> KvResult<Resource<BucketHandle>> {
        if !is_bucket_name(&identifier) {
            let reaches_out = identifier.contains(['/', ':', '.', '\\']);
            tracing::warn!(component = self.namespace, bucket = %identifier, "bucket refused");
            return Ok(Err(if reaches_out { store::Error::AccessDenied } else { store::Error::NoSuchStore }));
        }
        Ok(Ok(self.table.push(BucketHandle { name: identifier })?))
    }
}

impl store::HostBucket for KeyValueState {
    async fn get(&mut self, bucket: Resource<BucketHandle>, key: String) -> KvResult<Option<Vec<u8>>> {
        let name = self.bucket_name(&bucket)?;
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let db = self.db.clone();
        Ok(bounded(self.deadline, db.kv_get(self.scope(&name), &key))
            .await
            .ok_or_else(late)
            .and_then(|r| r.map(|v| v.map(|v| v.value)).map_err(other)))
    }

    async fn set(&mut self, bucket: Resource<BucketHandle>, key: String, value: Vec<u8>) -> KvResult<()> {
        let name = self.bucket_name(&bucket)?;
        if let Err(e) = check_key(&key).and_then(|()| check_value(&value)) {
            return Ok(Err(e));
        }
        let db = self.db.clone();
        Ok(bounded(self.deadline, db.kv_set(self.scope(&name), &key, &value))
            .await
            .ok_or_else(late)
            .and_then(|r| r.map_err(other)))
    }

    async fn delete(&mut self, bucket: Resource<BucketHandle>, key: String) -> KvResult<()> {
        let name = self.bucket_name(&bucket)?;
        let db = self.db.clone();
        Ok(bounded(self.deadline, db.kv_delete(self.scope(&name), &key))
            .await
            .ok_or_else(late)
            .and_then(|r| r.map_err(other)))
    }

    async fn exists(&mut self, bucket: Resource<BucketHandle>, key: String) -> KvResult<bool> {
        let name = self.bucket_name(&bucket)?;
        let db = self.db.clone();
        Ok(bounded(self.deadline, db.kv_get(self.scope(&name), &key))
            .await
            .ok_or_else(late)
            .and_then(|r| r.map(|v| v.is_some()).map_err(other)))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<String>,
    ) -> KvResult<store::KeyResponse> {
        let name = self.bucket_name(&bucket)?;
        let db = self.db.clone();
        Ok(bounded(self.deadline, db.kv_list(self.scope(&name), cursor.as_deref()))
            .await
            .ok_or_else(late)
            .and_then(|r| {
                r.map(|(keys, more)| store::KeyResponse {
                    cursor: if more { keys.last().cloned() } else { None },
                    keys,
                })
                .map_err(other)
            }))
    }

    async fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::HostCas for KeyValueState {
    async fn new(&mut self, bucket: Resource<BucketHandle>, key: String) -> KvResult<Resource<CasHandle>> {
        let name = self.bucket_name(&bucket)?;
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let db = self.db.clone();
        match bounded(self.deadline, db.kv_get(self.scope(&name), &key)).await {
            None => Ok(Err(late())),
            Some(Ok(current)) => Ok(Ok(self.table.push(CasHandle { bucket: name, key, current })?)),
            Some(Err(e)) => Ok(Err(other(e))),
        }
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> KvResult<Option<Vec<u8>>> {
        Ok(Ok(self.table.get(&cas)?.current.as_ref().map(|v| v.value.clone())))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueState {
    async fn increment(&mut self, bucket: Resource<BucketHandle>, key: String, delta: i64) -> KvResult<i64> {
        let name = self.bucket_name(&bucket)?;
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let db = self.db.clone();
        Ok(bounded(self.deadline, db.kv_increment(self.scope(&name), &key, delta))
            .await
            .ok_or_else(late)
            .and_then(|r| r.map_err(other)))
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let handle = self.table.delete(cas)?;
        if let Err(e) = check_value(&value) {
            return Ok(Err(atomics::CasError::StoreError(e)));
        }
        let db = self.db.clone();
        let scope = self.scope(&handle.bucket);
        let expected = handle.current.as_ref().map(|v| v.version);
        let Some(swapped) = bounded(self.deadline, db.kv_swap(scope, &handle.key, expected, &value)).await
        else {
            return Ok(Err(atomics::CasError::StoreError(late())));
        };
        match swapped {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Lost the race: hand back a fresh handle at the current version.
                let current = match bounded(self.deadline, db.kv_get(scope, &handle.key)).await {
                    None => return Ok(Err(atomics::CasError::StoreError(late()))),
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Ok(Err(atomics::CasError::StoreError(other(e)))),
                };
                let fresh = self.table.push(CasHandle { current, ..handle })?;
                Ok(Err(atomics::CasError::CasFailed(fresh)))
            }
            Err(e) => Ok(Err(atomics::CasError::StoreError(other(e)))),
        }
    }
}

impl batch::Host for KeyValueState {
    async fn get_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> KvResult<Vec<(String, Option<Vec<u8>>)>> {
        let name = self.bucket_name(&bucket)?;
        let db = self.db.clone();
        let got = bounded(self.deadline, db.kv_get_many(self.scope(&name), &keys)).await;
        Ok(got
            .ok_or_else(late)
            .and_then(|r| r.map(|values| keys.into_iter().zip(values).collect()).map_err(other)))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> KvResult<()> {
        let name = self.bucket_name(&bucket)?;
        if let Err(e) = pairs.iter().try_for_each(|(k, v)| check_key(k).and_then(|()| check_value(v))) {
            return Ok(Err(e));
        }
        let db = self.db.clone();
        Ok(bounded(self.deadline, db.kv_set_many(self.scope(&name), &pairs))
            .await
            .ok_or_else(late)
            .and_then(|r| r.map_err(other)))
    }

    async fn delete_many(&mut self, bucket: Resource<BucketHandle>, keys: Vec<String>) -> KvResult<()> {
        let name = self.bucket_name(&bucket)?;
        let db = self.db.clone();
        Ok(bounded(self.deadline, db.kv_delete_many(self.scope(&name), &keys))
            .await
            .ok_or_else(late)
            .and_then(|r| r.map_err(other)))
    }
}

#[cfg(test)]
mod tests {
    use super::is_bucket_name;

    #[test]
    fn bucket_names_cannot_reach_other_namespaces() {
        for ok in ["products", "skus", "a", "carts-v2", "x_1"] {
            assert!(is_bucket_name(ok), "{ok}");
        }
        for bad in ["", "cart/carts", "cart:carts", "../cart", "Carts", "a.b", "-x", &"a".repeat(64)] {
            assert!(!is_bucket_name(bad), "{bad}");
        }
    }
}
