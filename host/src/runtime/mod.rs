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
pub mod shape;

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
        crate::runtime::call!(rt, deadline = rt.request_deadline(), $kind, $iface, $method($($arg),*))
    }};
    ($rt:expr, deadline = $deadline:expr, $kind:ident, $iface:ident, $method:ident ( $($arg:expr),* )) => {{
        let rt: &crate::runtime::Runtime = &$rt;
        match rt.$kind($deadline).await {
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
    /// Plugin runs that may execute at once.
    pub plugin_runs: usize,
    /// Tests only: trap after the Nth host call of this name in a request
    /// (see `Config::inject_trap`).
    pub inject_trap: Option<(String, u32)>,
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
    /// Its number in the component registry.
    pub version: i64,
    pub digest: String,
    pub origin: Origin,
    pub pre: P,
}

/// The active version of every component, swapped as a whole: a request
/// takes one set when it starts ([`Runtime::snapshot`]) and every instance it
/// creates, peers included, comes from that set, so a request is served by
/// exactly one version of each component even while a deploy swaps the set.
pub struct ActiveSet {
    catalog: Arc<Active<catalog::CatalogComponentPre<Ctx>>>,
    cart: Arc<Active<cart::CartComponentPre<Ctx>>>,
    inventory: Arc<Active<inventory::InventoryComponentPre<Ctx>>>,
    payment: Arc<Active<payment::PaymentComponentPre<Ctx>>>,
    order: Arc<Active<order::OrderComponentPre<Ctx>>>,
    /// `catalog=3,cart=1,…`, made once per set, sent with every response.
    header: String,
}

/// The registry identity of a running component version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningVersion {
    pub kind: ComponentKind,
    pub version: i64,
    pub digest: String,
    pub origin: Origin,
}

/// A set being assembled: one slot per component.
#[derive(Default)]
struct Slots {
    catalog: Option<Arc<Active<catalog::CatalogComponentPre<Ctx>>>>,
    cart: Option<Arc<Active<cart::CartComponentPre<Ctx>>>>,
    inventory: Option<Arc<Active<inventory::InventoryComponentPre<Ctx>>>>,
    payment: Option<Arc<Active<payment::PaymentComponentPre<Ctx>>>>,
    order: Option<Arc<Active<order::OrderComponentPre<Ctx>>>>,
}

impl Slots {
    fn put(&mut self, p: Prepared) {
        let Prepared { version, digest, origin, pre } = p;
        match pre {
            Pre::Catalog(pre) => self.catalog = Some(Arc::new(Active { version, digest, origin, pre })),
            Pre::Cart(pre) => self.cart = Some(Arc::new(Active { version, digest, origin, pre })),
            Pre::Inventory(pre) => self.inventory = Some(Arc::new(Active { version, digest, origin, pre })),
            Pre::Payment(pre) => self.payment = Some(Arc::new(Active { version, digest, origin, pre })),
            Pre::Order(pre) => self.order = Some(Arc::new(Active { version, digest, origin, pre })),
        }
    }

    /// The set, or the first component without a version.
    fn into_set(self) -> Result<ActiveSet, ComponentKind> {
        let mut set = ActiveSet {
            catalog: self.catalog.ok_or(ComponentKind::Catalog)?,
            cart: self.cart.ok_or(ComponentKind::Cart)?,
            inventory: self.inventory.ok_or(ComponentKind::Inventory)?,
            payment: self.payment.ok_or(ComponentKind::Payment)?,
            order: self.order.ok_or(ComponentKind::Order)?,
            header: String::new(),
        };
        set.header = set
            .versions()
            .iter()
            .map(|v| format!("{}={}", v.kind.name(), v.version))
            .collect::<Vec<_>>()
            .join(",");
        Ok(set)
    }
}

impl ActiveSet {
    pub fn versions(&self) -> Vec<RunningVersion> {
        fn v<P>(kind: ComponentKind, a: &Active<P>) -> RunningVersion {
            RunningVersion { kind, version: a.version, digest: a.digest.clone(), origin: a.origin }
        }
        vec![
            v(ComponentKind::Catalog, &self.catalog),
            v(ComponentKind::Cart, &self.cart),
            v(ComponentKind::Inventory, &self.inventory),
            v(ComponentKind::Payment, &self.payment),
            v(ComponentKind::Order, &self.order),
        ]
    }

    /// `catalog=3,cart=1,…`: the versions that serve a request (the
    /// `x-mercato-versions` response header).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// This set with `p` in its component's place.
    fn with(&self, p: Prepared) -> Result<ActiveSet, ComponentKind> {
        let mut slots = Slots {
            catalog: Some(self.catalog.clone()),
            cart: Some(self.cart.clone()),
            inventory: Some(self.inventory.clone()),
            payment: Some(self.payment.clone()),
            order: Some(self.order.clone()),
        };
        slots.put(p);
        slots.into_set()
    }
}

/// The instantiable form of a component, by capability.
enum Pre {
    Catalog(catalog::CatalogComponentPre<Ctx>),
    Cart(cart::CartComponentPre<Ctx>),
    Inventory(inventory::InventoryComponentPre<Ctx>),
    Payment(payment::PaymentComponentPre<Ctx>),
    Order(order::OrderComponentPre<Ctx>),
}

/// A compiled, linked and type-checked component version, ready to swap in.
pub struct Prepared {
    /// Its number in the component registry (set once it is recorded).
    pub version: i64,
    pub digest: String,
    pub origin: Origin,
    pre: Pre,
}

/// Why a component cannot run as a capability.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Not a valid component (wasmtime could not compile it).
    #[error("{0}")]
    Invalid(String),
    /// A component, but its imports or exports do not fit the capability's world.
    #[error("{0}")]
    Contract(String),
}

/// The bytes of a component, its registry version and where they came from.
pub struct ComponentSource {
    pub kind: ComponentKind,
    pub version: i64,
    pub bytes: Vec<u8>,
}

tokio::task_local! {
    /// The set a request was pinned to (see [`Runtime::pinned`]).
    static PINNED: Arc<ActiveSet>;
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
    cache: ArtifactCache,
    active: RwLock<Arc<ActiveSet>>,
    /// Whether the test-injected trap (`Limits::inject_trap`) has fired: it
    /// fires once per process, so recovery then runs undisturbed.
    pub(crate) trap_fired: std::sync::atomic::AtomicBool,
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
            host::mercato::commerce::transactions::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
            host::mercato::commerce::inventory::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
            host::mercato::commerce::payment::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
            host::mercato::commerce::cart::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
        }
        ComponentKind::Payment => {
            host::mercato::commerce::transactions::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
            wasmtime_wasi_config::add_to_linker(&mut linker, |c: &mut Ctx| {
                wasmtime_wasi_config::WasiConfig::from(&*c.config)
            })?;
        }
        ComponentKind::Inventory => {
            host::mercato::commerce::transactions::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
        }
    }
    Ok(linker)
}

/// Compile (or load from the cache), link and type-check `source` against
/// its capability's world. Blocking: run it off the async workers.
fn prepare(
    engine: &Engine,
    cache: &ArtifactCache,
    source: &ComponentSource,
) -> Result<Prepared, PrepareError> {
    let name = source.kind.name();
    let digest = digest_of(&source.bytes);
    let (component, origin): (Component, Origin) = cache
        .load(engine, &digest, &source.bytes)
        .map_err(|e| PrepareError::Invalid(format!("not a valid component: {e:#}")))?;
    let linker = linker_for(engine, source.kind).map_err(|e| PrepareError::Invalid(format!("{e:#}")))?;
    let pre = linker.instantiate_pre(&component).map_err(|e| {
        PrepareError::Contract(format!("its imports do not fit what the host grants {name}: {e:#}"))
    })?;
    let typed = match source.kind {
        ComponentKind::Catalog => catalog::CatalogComponentPre::new(pre).map(Pre::Catalog),
        ComponentKind::Cart => cart::CartComponentPre::new(pre).map(Pre::Cart),
        ComponentKind::Inventory => inventory::InventoryComponentPre::new(pre).map(Pre::Inventory),
        ComponentKind::Payment => payment::PaymentComponentPre::new(pre).map(Pre::Payment),
        ComponentKind::Order => order::OrderComponentPre::new(pre).map(Pre::Order),
    };
    let pre = typed.map_err(|e| {
        PrepareError::Contract(format!("it does not export the {name} interface with the same types: {e:#}"))
    })?;
    tracing::info!(component = name, version = source.version, %digest, ?origin, "component ready");
    Ok(Prepared { version: source.version, digest, origin, pre })
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
        let mut slots = Slots::default();
        for source in sources {
            slots.put(
                prepare(&engine, &cache, source)
                    .map_err(|e| anyhow::anyhow!("component {}: {e}", source.kind.name()))?,
            );
        }
        let set =
            slots.into_set().map_err(|kind| anyhow::anyhow!("no source for component {}", kind.name()))?;
        let ticker = engine::EpochTicker::start(engine.clone());
        let plugins =
            crate::plugins::Plugins::new(db.clone(), limits.plugins, limits.plugin_runs, cache_dir)?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                db,
                limits,
                grants,
                plugins,
                cache,
                active: RwLock::new(Arc::new(set)),
                trap_fired: std::sync::atomic::AtomicBool::new(false),
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

    /// The running version of each component.
    pub fn versions(&self) -> Vec<RunningVersion> {
        read(&self.inner.active).versions()
    }

    /// The set this request is pinned to, or else the live one.
    pub fn snapshot(&self) -> Arc<ActiveSet> {
        PINNED.try_with(|set| set.clone()).unwrap_or_else(|_| read(&self.inner.active))
    }

    /// Run `f` with every instance it creates taken from `set`.
    pub async fn pinned<F: Future>(set: Arc<ActiveSet>, f: F) -> F::Output {
        PINNED.scope(set, f).await
    }

    /// Compile, link and type-check `source` (blocking; see [`prepare`]).
    pub fn prepare(&self, source: &ComponentSource) -> Result<Prepared, PrepareError> {
        prepare(&self.inner.engine, &self.inner.cache, source)
    }

    /// Make `p` the active version of its component. New requests get it;
    /// requests in flight keep the set they started with.
    pub fn install(&self, p: Prepared) {
        let mut guard = match self.inner.active.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Every slot of the live set is filled, so `with` cannot miss one.
        if let Ok(next) = guard.with(p) {
            *guard = Arc::new(next);
        }
    }

    /// The request deadline, in milliseconds.
    pub fn deadline_ms(&self) -> u64 {
        u64::try_from(self.inner.limits.deadline.as_millis()).unwrap_or(u64::MAX)
    }

    /// A deadline for a new request.
    pub fn request_deadline(&self) -> Instant {
        Instant::now() + self.inner.limits.deadline
    }

    pub async fn catalog(&self, deadline: Instant) -> Result<Instance<catalog::CatalogComponent>, Fault> {
        self.inner.instantiate_catalog(&self.snapshot(), deadline, Default::default()).await
    }

    pub async fn cart(&self, deadline: Instant) -> Result<Instance<cart::CartComponent>, Fault> {
        self.inner.instantiate_cart(&self.snapshot(), deadline, Default::default()).await
    }

    pub async fn inventory(
        &self,
        deadline: Instant,
    ) -> Result<Instance<inventory::InventoryComponent>, Fault> {
        self.inner.instantiate_inventory(&self.snapshot(), deadline, Default::default()).await
    }

    pub async fn payment(&self, deadline: Instant) -> Result<Instance<payment::PaymentComponent>, Fault> {
        self.inner.instantiate_payment(&self.snapshot(), deadline, Default::default()).await
    }

    pub async fn order(&self, deadline: Instant) -> Result<Instance<order::OrderComponent>, Fault> {
        self.inner.instantiate_order(&self.snapshot(), deadline, Default::default()).await
    }
}

/// `Inner::$name(set, deadline)`: a fresh instance of a component's version in `set`.
macro_rules! instantiate_fn {
    ($name:ident, $field:ident, $kind:expr, $bindings:ty) => {
        pub(crate) async fn $name(
            self: &Arc<Self>,
            set: &Arc<ActiveSet>,
            deadline: Instant,
            staged: crate::capabilities::transactions::SharedStaging,
        ) -> Result<Instance<$bindings>, Fault> {
            let mut store = self.new_store($kind, deadline, set.clone(), staged);
            let bindings = set
                .$field
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
