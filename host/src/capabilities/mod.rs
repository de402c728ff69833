//! Host-provided WIT interfaces, one module each. Which component gets which
//! is decided by `runtime::linker_for`.

pub mod keyvalue;
pub mod logging;
pub mod peers;
pub mod pricing;
pub mod provenance;
pub mod transactions;

use std::time::Instant;

/// Race a host call against the request's deadline in host time: `None` if
/// the deadline came first (the call is dropped; the guest gets a typed
/// time-out instead of a hang).
pub(crate) async fn bounded<T>(deadline: Instant, call: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(deadline.into(), call).await.ok()
}
