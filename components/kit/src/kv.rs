//! Typed storage over `wasi:keyvalue`: JSON values, insert-if-absent and
//! optimistic read-modify-write with compare-and-swap.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::types::Error;

pub use store::Bucket;

/// How often a read-modify-write is retried when another writer got there first.
pub const MAX_CAS_RETRIES: u32 = 32;

fn storage(e: store::Error) -> Error {
    if let store::Error::Other(m) = &e
        && m.starts_with("timeout")
    {
        return Error::Timeout(m.clone());
    }
    Error::Storage(match e {
        store::Error::NoSuchStore => "no such store".to_string(),
        store::Error::AccessDenied => "access denied".to_string(),
        store::Error::Other(m) => m,
    })
}

fn corrupt(key: &str, e: serde_json::Error) -> Error {
    Error::Storage(format!("value of {key:?} is not valid: {e}"))
}

/// Open a bucket of this component's namespace.
pub fn open(name: &str) -> Result<Bucket, Error> {
    store::open(name).map_err(storage)
}

pub fn get<T: DeserializeOwned>(bucket: &Bucket, key: &str) -> Result<Option<T>, Error> {
    match bucket.get(key).map_err(storage)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| corrupt(key, e)),
    }
}

pub fn put<T: Serialize>(bucket: &Bucket, key: &str, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Storage(e.to_string()))?;
    bucket.set(key, &bytes).map_err(storage)
}

pub fn delete(bucket: &Bucket, key: &str) -> Result<(), Error> {
    bucket.delete(key).map_err(storage)
}

/// Values of `keys` in order; absent keys give `None`.
pub fn get_many<T: DeserializeOwned>(bucket: &Bucket, keys: &[String]) -> Result<Vec<Option<T>>, Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let pairs = batch::get_many(bucket, keys).map_err(storage)?;
    pairs
        .into_iter()
        .map(|(key, value)| match value {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| corrupt(&key, e)),
        })
        .collect()
}

/// One page of keys after `cursor` (mercato's host returns keys in ascending
/// order and takes any key as a cursor: the page starts after it).
pub fn list_keys(bucket: &Bucket, cursor: Option<&str>) -> Result<(Vec<String>, Option<String>), Error> {
    let page = bucket.list_keys(cursor.map(str::to_string).as_deref()).map_err(storage)?;
    Ok((page.keys, page.cursor))
}

/// Atomically add `delta` to the counter at `key` and return the new value.
pub fn increment(bucket: &Bucket, key: &str, delta: i64) -> Result<i64, Error> {
    atomics::increment(bucket, key, delta).map_err(storage)
}

/// Outcome of one attempt of [`update`].
pub enum Change<T, R> {
    /// Write this value and return `R`.
    Write(T, R),
    /// Write nothing and return `R`.
    Keep(R),
}

/// Read-modify-write `key` with compare-and-swap: `f` sees the current value
/// and decides; if another writer changed the key in between, `f` runs again on
/// the new value. Domain errors from `f` abort without writing.
pub fn update<T, R>(
    bucket: &Bucket,
    key: &str,
    f: impl FnMut(Option<T>) -> Result<Change<T, R>, Error>,
) -> Result<R, Error>
where
    T: Serialize + DeserializeOwned,
{
    update_with_retries(bucket, key, MAX_CAS_RETRIES, f)
}

/// [`update`] with its own bound on retries: changes that must complete once
/// started (settling a reservation) retry far longer than a request that may
/// simply fail with a conflict.
pub fn update_with_retries<T, R>(
    bucket: &Bucket,
    key: &str,
    retries: u32,
    mut f: impl FnMut(Option<T>) -> Result<Change<T, R>, Error>,
) -> Result<R, Error>
where
    T: Serialize + DeserializeOwned,
{
    let mut cas = atomics::Cas::new(bucket, key).map_err(storage)?;
    for _ in 0..retries {
        let current = match cas.current().map_err(storage)? {
            None => None,
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| corrupt(key, e))?),
        };
        match f(current)? {
            Change::Keep(r) => return Ok(r),
            Change::Write(value, r) => {
                let bytes = serde_json::to_vec(&value).map_err(|e| Error::Storage(e.to_string()))?;
                match atomics::swap(cas, &bytes) {
                    Ok(()) => return Ok(r),
                    Err(atomics::CasError::CasFailed(fresh)) => cas = fresh,
                    Err(atomics::CasError::StoreError(e)) => return Err(storage(e)),
                }
            }
        }
    }
    Err(Error::Conflict(format!("{key:?} kept changing under concurrent updates; try again")))
}

/// Write `value` at `key` only if the key is absent. Returns whether it was written.
pub fn insert_if_absent<T>(bucket: &Bucket, key: &str, value: &T) -> Result<bool, Error>
where
    T: Serialize + DeserializeOwned + Clone,
{
    update(bucket, key, |current: Option<T>| {
        Ok(match current {
            Some(_) => Change::Keep(false),
            None => Change::Write(value.clone(), true),
        })
    })
}
