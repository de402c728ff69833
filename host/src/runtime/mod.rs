//! The component runtime.
//!
//! Lifecycle of a call: the active version of a component is an
//! [`Active`] (digest + `InstancePre`, compiled once, kept behind a lock that
//! is only held to clone an `Arc`). Each request gets a fresh [`Store`] and
//! instance (`Inner::new_store`, `instantiate_async`), calls one export, and
//! drops both; no guest state outlives the request except through storage.
//! Imports that name another component (cart → catalog, catalog → inventory,
//! order → cart, inventory and payment)
//! are served by instantiating the *currently active* version of that
//! component in its own store (see `capabilities::peers`), so each component
//! can be replaced on its own.
//!
//! Sandbox: the pooling allocator bounds instances and memory; a
//! [`ctx::MemoryLimiter`] turns growth past the cap into a clear error; epoch
//! interruption enforces the request deadline and makes busy guests yield.

pub mod bundled;
pub mod cache;
pub mod ctx;
pub mod engine;
pub mod fault;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::bindings::{cart, catalog, host, inventory, order, payment};
use crate::storage::Db;
pub use cache::{ArtifactCache, Origin};
pub use ctx::{Ctx, Instance};
pub use fault::Fault;

/// Call an export of a fresh instance of the active version of a component:
/// `call!(runtime, catalog, mercato_commerce_catalog, call_get_product(&id))`.
/// Gives `Result<Result<T, types::Error>, Fault>`: the outer error is a fault
/// (trap, deadline, memory cap), the inner one the component's domain answer.
macro_rules! call {
    ($rt:expr, $kind:ident, $iface:ident, $method:ident ( $($arg:expr),* )) => {{
        let rt: &crate::runtime::Runtime = &$rt;
        match rt.$kind(rt.request_deadline()).await {
            Err(fault) => Err(fault),
            Ok(mut instance) => {
                let started = std::time::Instant::now();
                let result = instance.bindings.$iface().$method(&mut instance.store, $($arg),*).await;
                crate::telemetry::component_call(stringify!($kind), stringify!($method), started);
                result.map_err(|e| crate::runtime::Fault::classify(stringify!($kind), &e))
            }
        }
    }};
}
pub(crate) use call;

/// The service components the host runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    Catalog,
    Cart,
    Inventory,
    Payment,
    Order,
}

impl ComponentKind {
    pub const ALL: [ComponentKind; 5] = [
        ComponentKind::Catalog,
        ComponentKind::Cart,
        ComponentKind::Inventory,
        ComponentKind::Payment,
        ComponentKind::Order,
    ];

    /// Its name, which is also its storage namespace.
    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::Catalog => "catalog",
            ComponentKind::Cart => "cart",
            ComponentKind::Inventory => "inventory",
            ComponentKind::Payment => "payment",
            ComponentKind::Order => "order",
        }
    }
}

/// Sandbox limits for service components.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock budget of one request across all components it calls.
    pub deadline: Duration,
    /// Linear-memory cap per instance.
    pub memory_bytes: usize,
    /// Instances that may exist at once (the pool's size).
    pub max_instances: u32,
    /// Budgets of merchants' pricing plugins unless the operator set others.
    pub plugins: crate::plugins::PluginLimits,
}

/// Capabilities granted beyond the base set, per component: outbound HTTP
/// authorities and `wasi:config` values. Only the payment component gets any.
pub struct Grants {
    payment_hosts: Arc<[String]>,
    payment_config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
    no_hosts: Arc<[String]>,
    no_config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
}

impl Grants {
    /// Grant the payment component `hosts` and the `config` values.
    pub fn payment(hosts: Vec<String>, config: Vec<(String, String)>) -> Grants {
        Grants {
            payment_hosts: hosts.into(),
            payment_config: Arc::new(config.into_iter().collect()),
            no_hosts: Arc::from(Vec::new()),
            no_config: Arc::new(wasmtime_wasi_config::WasiConfigVariables::new()),
        }
    }

    pub(crate) fn outbound(&self, kind: ComponentKind) -> Arc<[String]> {
        match kind {
            ComponentKind::Payment => self.payment_hosts.clone(),
            _ => self.no_hosts.clone(),
        }
    }

    pub(crate) fn config(&self, kind: ComponentKind) -> Arc<wasmtime_wasi_config::WasiConfigVariables> {
        match kind {
            ComponentKind::Payment => self.payment_config.clone(),
            _ => self.no_config.clone(),
        }
    }
}

/// A component version ready to instantiate.
pub struct Active<P> {
    pub digest: String,
    pub origin: Origin,
    pub pre: P,
}

/// The bytes of a component and where they came from.
pub struct ComponentSource {
    pub kind: ComponentKind,
    pub bytes: Vec<u8>,
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub struct Inner {
    pub(crate) engine: Engine,
    pub(crate) db: Db,
    pub(crate) limits: Limits,
    pub(crate) grants: Grants,
    pub(crate) plugins: crate::plugins::Plugins,
    catalog: RwLock<Arc<Active<catalog::CatalogComponentPre<Ctx>>>>,
    cart: RwLock<Arc<Active<cart::CartComponentPre<Ctx>>>>,
    inventory: RwLock<Arc<Active<inventory::InventoryComponentPre<Ctx>>>>,
    payment: RwLock<Arc<Active<payment::PaymentComponentPre<Ctx>>>>,
    order: RwLock<Arc<Active<order::OrderComponentPre<Ctx>>>>,
    _ticker: engine::EpochTicker,
}

/// The runtime: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

fn read<T>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The capabilities every component gets: WASI (inert, see `ctx`),
/// key-value storage in its own namespace, and logging.
fn base_linker(engine: &Engine) -> anyhow::Result<Linker<Ctx>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::bindings::keyvalue::wasi::keyvalue::store::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
    crate::bindings::keyvalue::wasi::keyvalue::atomics::add_to_linker::<Ctx, HasSelf<Ctx>>(
        &mut linker,
        |c| c,
    )?;
    crate::bindings::keyvalue::wasi::keyvalue::batch::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
    host::wasi::logging::logging::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
    Ok(linker)
}

/// The linker for `kind`: the base capabilities plus the service interfaces
/// its world imports. This is the capability table of ARCHITECTURE.md.
fn linker_for(engine: &Engine, kind: ComponentKind) -> anyhow::Result<Linker<Ctx>> {
    let mut linker = base_linker(engine)?;
    match kind {
        ComponentKind::Catalog => {
            host::mercato::commerce::inventory::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
        }
        ComponentKind::Cart => {
            host::mercato::commerce::catalog::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
            host::mercato::commerce::pricing_engine::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
        }
        ComponentKind::Order => {
            host::mercato::commerce::inventory::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
            host::mercato::commerce::payment::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
            host::mercato::commerce::cart::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
        }
        ComponentKind::Payment => {
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
            wasmtime_wasi_config::add_to_linker(&mut linker, |c: &mut Ctx| {
                wasmtime_wasi_config::WasiConfig::from(&*c.config)
            })?;
        }
        ComponentKind::Inventory => {}
    }
    Ok(linker)
}

fn prepare<P>(
    engine: &Engine,
    cache: &ArtifactCache,
    source: &ComponentSource,
    wrap: impl FnOnce(wasmtime::component::InstancePre<Ctx>) -> wasmtime::Result<P>,
) -> anyhow::Result<Active<P>> {
    let digest = digest_of(&source.bytes);
    let (component, origin): (Component, Origin) = cache.load(engine, &digest, &source.bytes)?;
    let linker = linker_for(engine, source.kind)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| anyhow::anyhow!("{}: cannot link: {e:#}", source.kind.name()))?;
    let pre =
        wrap(pre).map_err(|e| anyhow::anyhow!("{}: does not export its world: {e:#}", source.kind.name()))?;
    tracing::info!(component = source.kind.name(), %digest, ?origin, "component ready");
    Ok(Active { digest, origin, pre })
}

impl Runtime {
    /// Compile (or load from the cache) and pre-instantiate every component.
    pub fn new(
        db: Db,
        limits: Limits,
        grants: Grants,
        cache_dir: &std::path::Path,
        sources: &[ComponentSource],
    ) -> anyhow::Result<Runtime> {
        let engine = engine::build(&limits)?;
        let cache = ArtifactCache::new(cache_dir, &engine);
        let find = |kind: ComponentKind| {
            sources
                .iter()
                .find(|s| s.kind == kind)
                .ok_or_else(|| anyhow::anyhow!("no source for component {}", kind.name()))
        };
        let catalog =
            prepare(&engine, &cache, find(ComponentKind::Catalog)?, catalog::CatalogComponentPre::new)?;
        let cart = prepare(&engine, &cache, find(ComponentKind::Cart)?, cart::CartComponentPre::new)?;
        let inventory =
            prepare(&engine, &cache, find(ComponentKind::Inventory)?, inventory::InventoryComponentPre::new)?;
        let payment =
            prepare(&engine, &cache, find(ComponentKind::Payment)?, payment::PaymentComponentPre::new)?;
        let order = prepare(&engine, &cache, find(ComponentKind::Order)?, order::OrderComponentPre::new)?;
        let ticker = engine::EpochTicker::start(engine.clone());
        let plugins = crate::plugins::Plugins::new(db.clone(), limits.plugins, cache_dir)?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                db,
                limits,
                grants,
                plugins,
                catalog: RwLock::new(Arc::new(catalog)),
                cart: RwLock::new(Arc::new(cart)),
                inventory: RwLock::new(Arc::new(inventory)),
                payment: RwLock::new(Arc::new(payment)),
                order: RwLock::new(Arc::new(order)),
                _ticker: ticker,
            }),
        })
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Merchants' pricing plugins.
    pub fn plugins(&self) -> &crate::plugins::Plugins {
        &self.inner.plugins
    }

    /// The digest and origin of the active version of each component.
    pub fn versions(&self) -> Vec<(ComponentKind, String, Origin)> {
        fn v<P>(kind: ComponentKind, lock: &RwLock<Arc<Active<P>>>) -> (ComponentKind, String, Origin) {
            let a = read(lock);
            (kind, a.digest.clone(), a.origin)
        }
        let i = &self.inner;
        vec![
            v(ComponentKind::Catalog, &i.catalog),
            v(ComponentKind::Cart, &i.cart),
            v(ComponentKind::Inventory, &i.inventory),
            v(ComponentKind::Payment, &i.payment),
            v(ComponentKind::Order, &i.order),
        ]
    }

    /// A deadline for a new request.
    pub fn request_deadline(&self) -> Instant {
        Instant::now() + self.inner.limits.deadline
    }

    pub async fn catalog(&self, deadline: Instant) -> Result<Instance<catalog::CatalogComponent>, Fault> {
        self.inner.instantiate_catalog(deadline).await
    }

    pub async fn cart(&self, deadline: Instant) -> Result<Instance<cart::CartComponent>, Fault> {
        self.inner.instantiate_cart(deadline).await
    }

    pub async fn inventory(
        &self,
        deadline: Instant,
    ) -> Result<Instance<inventory::InventoryComponent>, Fault> {
        self.inner.instantiate_inventory(deadline).await
    }

    pub async fn payment(&self, deadline: Instant) -> Result<Instance<payment::PaymentComponent>, Fault> {
        self.inner.instantiate_payment(deadline).await
    }

    pub async fn order(&self, deadline: Instant) -> Result<Instance<order::OrderComponent>, Fault> {
        self.inner.instantiate_order(deadline).await
    }
}

/// `Inner::$name(deadline)`: a fresh instance of the active version of a component.
macro_rules! instantiate_fn {
    ($name:ident, $field:ident, $kind:expr, $bindings:ty) => {
        pub(crate) async fn $name(self: &Arc<Self>, deadline: Instant) -> Result<Instance<$bindings>, Fault> {
            let active = read(&self.$field);
            let mut store = self.new_store($kind, deadline);
            let bindings = active
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| Fault::classify($kind.name(), &e))?;
            Ok(Instance { store, bindings })
        }
    };
}

impl Inner {
    instantiate_fn!(instantiate_catalog, catalog, ComponentKind::Catalog, catalog::CatalogComponent);
    instantiate_fn!(instantiate_cart, cart, ComponentKind::Cart, cart::CartComponent);
    instantiate_fn!(
        instantiate_inventory,
        inventory,
        ComponentKind::Inventory,
        inventory::InventoryComponent
    );
    instantiate_fn!(instantiate_payment, payment, ComponentKind::Payment, payment::PaymentComponent);
    instantiate_fn!(instantiate_order, order, ComponentKind::Order, order::OrderComponent);
}
