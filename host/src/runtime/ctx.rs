//! Per-instance store data: what one component instance may reach.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{COUNT, ComponentKind, Inner, Scope};
use crate::wasm::confine::{Confined, MemoryLimiter, confine};
use crate::wasm::fault::Fault;

/// How long past its deadline a top-level component call may run before the
/// host cuts it off: a few epoch ticks, so that a guest that is running traps
/// by its epoch first (and a host call in flight returns its own time-out).
pub const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// A component instance and the store it lives in, serving one request.
pub struct Instance<B> {
    pub store: Store<Ctx>,
    pub bindings: B,
    /// Its registry version (for traces).
    pub version: i64,
}

impl<B> Instance<B> {
    /// Call one export: `f` gets the bindings and the store, as in
    /// `instance.call("get_product", |c, s| c.mercato_commerce_catalog().call_get_product(s, &id))`.
    /// The call runs under the instance's confinement (memory cap, the
    /// request's deadline by epochs, every host call bounded by the same
    /// deadline) and is also raced against the deadline in host time, with
    /// [`DEADLINE_GRACE`] for the epoch trap to land first: a guest that waits
    /// where epochs do not run (a WASI sleep or poll) is cut off there as a
    /// `Fault::Deadline`. It is timed, traced as a span when spans are
    /// exported, and a wasmtime error is classified as a [`Fault`]. The
    /// domain answer, if any, is `T`.
    pub async fn call<'a, T, F, Fut>(&'a mut self, function: &'static str, f: F) -> Result<T, Fault>
    where
        F: FnOnce(&'a B, &'a mut Store<Ctx>) -> Fut,
        Fut: Future<Output = wasmtime::Result<T>>,
    {
        let (component, deadline) = (self.store.data().kind.name(), self.store.data().deadline);
        let scope = self.store.data().scope.clone();
        let cut_off = deadline + DEADLINE_GRACE;
        match tokio::time::timeout_at(cut_off.into(), self.call_unraced(function, f)).await {
            Ok(result) => result,
            Err(_) => {
                crate::telemetry::host_call_timed_out(component, function);
                let fault = Fault::Deadline { component };
                scope.faulted(&fault);
                Err(fault)
            }
        }
    }

    /// [`Instance::call`] without the host-time race (its callers race it).
    async fn call_unraced<'a, T, F, Fut>(&'a mut self, function: &'static str, f: F) -> Result<T, Fault>
    where
        F: FnOnce(&'a B, &'a mut Store<Ctx>) -> Fut,
        Fut: Future<Output = wasmtime::Result<T>>,
    {
        use tracing::Instrument;
        let component = self.store.data().kind.name();
        let scope = self.store.data().scope.clone();
        // What a test's trap may name (`order.cancel:…`); nothing otherwise.
        if self.store.data().tx.traps.armed() {
            let mut staging = self.store.data().staged.lock().unwrap_or_else(|p| p.into_inner());
            staging.export.get_or_insert(function);
        }
        let span = crate::telemetry::component_span(component, function, self.version);
        let started = Instant::now();
        let result = f(&self.bindings, &mut self.store).instrument(span.clone()).await;
        crate::telemetry::component_call(component, function, started);
        let result = result.map_err(|e| {
            let fault = Fault::classify(component, &e);
            scope.faulted(&fault);
            fault
        });
        span.record("outcome", result.as_ref().map_or_else(Fault::kind, |_| "ok"));
        result
    }

    /// [`Instance::call`] raced against the request's deadline in host time:
    /// `None` if the deadline came first (the call is dropped mid-way; the
    /// instance must not be called again).
    pub async fn call_until<'a, T, F, Fut>(
        &'a mut self,
        function: &'static str,
        f: F,
    ) -> Option<Result<T, Fault>>
    where
        F: FnOnce(&'a B, &'a mut Store<Ctx>) -> Fut,
        Fut: Future<Output = wasmtime::Result<T>>,
    {
        let deadline = self.store.data().deadline;
        tokio::time::timeout_at(deadline.into(), self.call_unraced(function, f)).await.ok()
    }
}

/// Calls into other components: the runtime to instantiate them with, only
/// when the component was granted one (`Grant::is_peer`), and the instances
/// this instance has called during the current request, by kind, kept so
/// that repeated calls reuse one instance (each is an `Instance<S::Bindings>`
/// of its row's [`super::Service`]).
#[derive(Default)]
pub struct Peers {
    pub(crate) runtime: Option<Arc<Inner>>,
    pub(crate) slots: [Option<Box<dyn std::any::Any + Send>>; COUNT],
}

/// Outbound HTTP policy of one instance: requests may go only to `allowed`
/// authorities (`host:port`); everything else is denied before a socket opens.
pub struct OutboundPolicy {
    pub(crate) allowed: Arc<[String]>,
    /// The request's deadline: a response that has not arrived by then is a
    /// time-out, whatever time-outs the guest asked for.
    pub(crate) deadline: Instant,
}

impl wasmtime_wasi_http::WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        let authority = request.uri().authority().map(|a| a.as_str().to_ascii_lowercase());
        let allowed = authority.as_ref().is_some_and(|a| self.allowed.iter().any(|x| x == a));
        if !allowed {
            tracing::warn!(authority = ?authority, "outbound request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let deadline = self.deadline;
        Box::new(async move {
            use http_body_util::BodyExt;
            let sent = wasmtime_wasi_http::default_send_request(request, options);
            let Ok(answer) = tokio::time::timeout_at(deadline.into(), sent).await else {
                crate::telemetry::host_call_timed_out("payment", "outbound-http");
                return Err(wasmtime_wasi_http::Error::HttpResponseTimeout);
            };
            let (response, io) = answer?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
            ))
        })
    }
}

/// The data of one store: one component instance serving one request. Each
/// host interface has its own state here (`crate::capabilities`), holding
/// only what the component was granted: the pricing engine's plugins only
/// for the cart, provenance only for the order, the runtime (to call other
/// components) only for those granted a peer.
pub struct Ctx {
    pub(crate) kind: ComponentKind,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// When the whole request must be done (the scope's deadline).
    pub(crate) deadline: Instant,
    /// The request's versions and deadline; peers come from the same scope.
    pub(crate) scope: Scope,
    pub(crate) peers: Peers,
    pub(crate) kv: crate::capabilities::keyvalue::KeyValueState,
    pub(crate) log: crate::capabilities::logging::Logging,
    pub(crate) tx: crate::capabilities::transactions::TxState,
    pub(crate) pricing: crate::capabilities::pricing::PricingState,
    pub(crate) provenance: crate::capabilities::provenance::ProvenanceState,
    /// Writes staged in this request for a caller's transaction; shared by
    /// every instance serving the request.
    pub(crate) staged: crate::capabilities::transactions::SharedStaging,
    /// `wasi:http` state; only the payment component has the interface linked.
    pub(crate) http: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) outbound: OutboundPolicy,
    /// `wasi:config` values of this component.
    pub(crate) config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
}

impl wasmtime_wasi_http::WasiHttpView for Ctx {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks: &mut self.outbound,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Inner {
    /// A fresh store for one instance of `kind`, with its memory cap and the
    /// request's deadline. WASI is granted inert: no files, no environment,
    /// no arguments, no network; stdout/stderr are discarded.
    pub(crate) fn new_store(
        self: &Arc<Self>,
        kind: ComponentKind,
        scope: Scope,
        staged: crate::capabilities::transactions::SharedStaging,
    ) -> Store<Ctx> {
        use crate::capabilities::{keyvalue, logging, pricing, provenance, transactions};
        use crate::runtime::table::Grant;
        let deadline = scope.deadline;
        let name = kind.name();
        let granted = |g: Grant| kind.row().grants.contains(&g);
        let versions = granted(Grant::Provenance).then(|| {
            let entry = |v: super::RunningVersion| crate::bindings::types::ProvenanceEntry {
                name: v.kind.name().to_string(),
                digest: v.digest,
            };
            scope.set.versions().into_iter().map(entry).collect()
        });
        let ctx = Ctx {
            kind,
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
            deadline,
            peers: Peers {
                runtime: kind.row().grants.iter().any(|g| g.is_peer()).then(|| self.clone()),
                slots: Default::default(),
            },
            scope,
            kv: keyvalue::KeyValueState::new(name, self.db.clone(), deadline),
            log: logging::Logging { component: name },
            tx: transactions::TxState {
                namespace: name,
                db: self.db.clone(),
                deadline,
                staged: staged.clone(),
                traps: self.traps.clone(),
            },
            pricing: pricing::PricingState {
                plugins: granted(Grant::PricingEngine).then(|| self.plugins.clone()),
                deadline,
                staged: staged.clone(),
            },
            provenance: provenance::ProvenanceState { versions, staged: staged.clone() },
            staged,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            outbound: OutboundPolicy { allowed: self.grants.outbound(kind), deadline },
            config: self.grants.config(kind),
        };
        let mut store = Store::new(&self.engine, ctx);
        confine(&mut store);
        store
    }
}

impl Confined for Ctx {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
    fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi_http::WasiHttpHooks;

    fn request(uri: &str) -> http::Request<wasmtime_wasi_http::WasiBody> {
        use http_body_util::BodyExt;
        let body =
            http_body_util::Empty::<bytes::Bytes>::new().map_err(|never| match never {}).boxed_unsync();
        http::Request::post(uri).body(body).expect("request")
    }

    #[tokio::test]
    async fn outbound_requests_go_only_to_allowed_authorities() {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut policy = OutboundPolicy { allowed: Arc::from(vec!["127.0.0.1:1".to_string()]), deadline };
        for denied in ["http://127.0.0.1:2/x", "http://example.com/", "https://api.stripe.com/v1"] {
            let fut = Box::into_pin(policy.send_request(request(denied), None, Box::new(async { Ok(()) })));
            assert!(matches!(fut.await, Err(wasmtime_wasi_http::Error::HttpRequestDenied)), "{denied}");
        }
        let mut nothing = OutboundPolicy { allowed: Arc::from(Vec::new()), deadline };
        let fut = Box::into_pin(nothing.send_request(
            request("http://127.0.0.1:1/"),
            None,
            Box::new(async { Ok(()) }),
        ));
        assert!(matches!(fut.await, Err(wasmtime_wasi_http::Error::HttpRequestDenied)));
    }
}
