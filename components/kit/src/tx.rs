//! Typed helpers over the host's `mercato:commerce/transactions`: JSON
//! values with versions, counters, and commits that answer in domain errors.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::mercato::commerce::transactions as host;
pub use crate::bindings::mercato::commerce::transactions::{
    CounterAdd, Event, EventBody, Failed, FailureReason, MerchantView, Operation, OrderEvent, OrderEventKind,
    Precondition, StockLowEvent, TxError, Write,
};
use crate::types::Error;

/// A domain error for a transaction that failed for another reason than a
/// precondition (which callers interpret themselves).
pub fn error(e: TxError) -> Error {
    match e {
        TxError::Failed(f) => Error::Conflict(format!("write {} did not apply: {:?}", f.index, f.reason)),
        TxError::Timeout => Error::Timeout("storage: the request's deadline passed".into()),
        TxError::Invalid(m) => Error::InvalidInput(format!("storage: {m}")),
        TxError::Storage(m) => Error::Storage(m),
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Storage(e.to_string()))
}

/// Set `key` to `value` (JSON) if `precondition` holds.
pub fn put<T: Serialize>(
    bucket: &str,
    key: &str,
    value: &T,
    precondition: Precondition,
) -> Result<Write, Error> {
    Ok(Write {
        bucket: bucket.into(),
        key: key.into(),
        precondition,
        operation: Operation::Put(json(value)?),
    })
}

/// Remove `key` if `precondition` holds.
pub fn delete(bucket: &str, key: &str, precondition: Precondition) -> Write {
    Write { bucket: bucket.into(), key: key.into(), precondition, operation: Operation::Delete }
}

/// Write nothing at `key`: the transaction only needs `precondition` to hold.
pub fn check(bucket: &str, key: &str, precondition: Precondition) -> Write {
    Write { bucket: bucket.into(), key: key.into(), precondition, operation: Operation::Check }
}

/// Add `delta` to the counter at `key` if it stays within `min ..= max`.
pub fn add(bucket: &str, key: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> Write {
    Write {
        bucket: bucket.into(),
        key: key.into(),
        precondition: Precondition::None,
        operation: Operation::Add(CounterAdd { delta, min, max }),
    }
}

/// JSON values of `keys` in `bucket`, with their versions; absent keys give `None`.
pub fn read<T: DeserializeOwned>(bucket: &str, keys: &[String]) -> Result<Vec<Option<(T, u64)>>, Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    host::read(bucket, keys)
        .map_err(error)?
        .into_iter()
        .zip(keys)
        .map(|(row, key)| match row {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v.value)
                .map(|t| Some((t, v.version)))
                .map_err(|e| Error::Storage(format!("value of {key:?} is not valid: {e}"))),
        })
        .collect()
}

/// One JSON value and its version.
pub fn read_one<T: DeserializeOwned>(bucket: &str, key: &str) -> Result<Option<(T, u64)>, Error> {
    Ok(read(bucket, &[key.to_string()])?.pop().flatten())
}

/// Counters at `keys` (absent = 0). A counter's decimal text is also its JSON.
pub fn counters(bucket: &str, keys: &[String]) -> Result<Vec<i64>, Error> {
    Ok(read::<i64>(bucket, keys)?.into_iter().map(|c| c.map_or(0, |(n, _)| n)).collect())
}

/// Commit `writes` and the `staged` tokens all or none; the new versions.
pub fn commit(writes: &[Write], staged: &[String]) -> Result<Vec<u64>, TxError> {
    host::commit(writes, staged)
}

/// Hand `writes` to the caller to commit in its transaction.
pub fn stage(writes: &[Write]) -> Result<String, Error> {
    host::stage(writes, &[]).map_err(error)
}

/// Hand `writes` and the `events` they make to the caller to commit in its
/// transaction.
pub fn stage_with(writes: &[Write], events: &[Event]) -> Result<String, Error> {
    host::stage(writes, events).map_err(error)
}

/// Hand `events` over under a token: the commit that names it writes them
/// to the outbox together with its writes.
pub fn emit(events: &[Event]) -> Result<String, Error> {
    host::stage(&[], events).map_err(error)
}
