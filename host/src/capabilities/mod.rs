//! Host-provided WIT interfaces, one module each, each implemented on its
//! own state on the store (Spin's per-interface model): a store carries the
//! state of an interface only as far as its component was granted it, and
//! `runtime::linker_for` links an interface only for the components granted
//! it (`runtime::table`). Calls into other components (`runtime::peers`)
//! belong to the runtime, which instantiates them.

pub mod keyvalue;
pub mod logging;
pub mod pricing;
pub mod provenance;
pub mod transactions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use transactions::SharedStaging;

/// Race a host call against the request's deadline in host time: `None` if
/// the deadline came first (the call is dropped; the guest gets a typed
/// time-out instead of a hang).
pub(crate) async fn bounded<T>(deadline: Instant, call: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(deadline.into(), call).await.ok()
}

/// Tests only: trap after the Nth host call of one name in a request
/// (`Config::inject_trap`), once per process, so recovery then runs
/// undisturbed. Never set outside tests.
#[derive(Debug, Default)]
pub struct TrapPlan {
    /// `<component>[.<export>]:<target>.<function>` and N (with an export,
    /// only requests whose first call was that export count).
    spec: Option<(String, u32)>,
    fired: AtomicBool,
}

impl TrapPlan {
    pub fn new(spec: Option<(String, u32)>) -> TrapPlan {
        TrapPlan { spec, fired: AtomicBool::new(false) }
    }

    /// Whether a trap is planned at all (only tests plan one).
    pub(crate) fn armed(&self) -> bool {
        self.spec.is_some()
    }

    /// Whether this host call of `component` (`<target>.<function>`), just
    /// completed, is the one to trap after; calls are counted in the
    /// request's `staged`.
    pub(crate) fn here(
        &self,
        component: &str,
        staged: &SharedStaging,
        target: &'static str,
        function: &'static str,
    ) -> bool {
        let Some((name, nth)) = &self.spec else { return false };
        let Some((of, call)) = name.split_once(':') else { return false };
        // `order.cancel:…` counts only in requests that called `cancel`.
        let (of, export) = of.split_once('.').map_or((of, None), |(c, e)| (c, Some(e)));
        if of != component || call.split_once('.') != Some((target, function)) {
            return false;
        }
        let mut staging = staged.lock().unwrap_or_else(|p| p.into_inner());
        if export.is_some_and(|e| staging.export != Some(e)) {
            return false;
        }
        let n = staging.calls.entry((target, function)).or_default();
        *n += 1;
        *n == *nth && !self.fired.swap(true, Ordering::SeqCst)
    }
}

/// The trap a test injected.
pub(crate) fn injected(call: &str) -> wasmtime::Error {
    wasmtime::format_err!("trap injected by the test after {call}")
}
