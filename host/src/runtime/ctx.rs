//! Per-instance store data: what one component instance may reach.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::fault::{DeadlineExceeded, MemoryCapExceeded};
use super::{ComponentKind, Inner};
use crate::bindings::{
    cart::CartComponent, catalog::CatalogComponent, inventory::InventoryComponent, payment::PaymentComponent,
};

/// A component instance and the store it lives in.
pub struct Instance<B> {
    pub store: Store<Ctx>,
    pub bindings: B,
}

/// Instances of other components that this instance has called during the
/// current request, kept so that repeated calls reuse one instance.
#[derive(Default)]
pub struct Peers {
    pub catalog: Option<Instance<CatalogComponent>>,
    pub inventory: Option<Instance<InventoryComponent>>,
    pub cart: Option<Instance<CartComponent>>,
    pub payment: Option<Instance<PaymentComponent>>,
}

/// Refuses linear-memory growth past the cap, with an error that says so.
pub struct MemoryLimiter {
    cap: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            return Err(wasmtime::Error::new(MemoryCapExceeded { cap: self.cap, desired }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The data of one store: one component instance serving one request.
pub struct Ctx {
    pub(crate) kind: ComponentKind,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// When the whole request must be done; peers inherit it.
    pub(crate) deadline: Instant,
    pub(crate) rt: Arc<Inner>,
    pub(crate) peers: Peers,
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
    pub(crate) fn new_store(self: &Arc<Self>, kind: ComponentKind, deadline: Instant) -> Store<Ctx> {
        let ctx = Ctx {
            kind,
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { cap: self.limits.memory_bytes },
            deadline,
            rt: self.clone(),
            peers: Peers::default(),
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|c| &mut c.limiter);
        store.set_epoch_deadline(1);
        // Every tick: past the deadline, stop the guest; otherwise yield to
        // the executor so a busy guest never starves other requests.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}
