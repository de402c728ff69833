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
}

/// The registry identity of a running component version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningVersion {
    pub kind: ComponentKind,
    pub version: i64,
    pub digest: String,
    pub origin: Origin,
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
    pub fn header(&self) -> String {
        self.versions()
            .iter()
            .map(|v| format!("{}={}", v.kind.name(), v.version))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn with(&self, p: Prepared) -> ActiveSet {
        let mut set = ActiveSet {
            catalog: self.catalog.clone(),
            cart: self.cart.clone(),
            inventory: self.inventory.clone(),
            payment: self.payment.clone(),
            order: self.order.clone(),
        };
        match p {
            Prepared::Catalog(a) => set.catalog = Arc::new(a),
            Prepared::Cart(a) => set.cart = Arc::new(a),
            Prepared::Inventory(a) => set.inventory = Arc::new(a),
            Prepared::Payment(a) => set.payment = Arc::new(a),
            Prepared::Order(a) => set.order = Arc::new(a),
        }
        set
    }
}

/// A compiled, linked and type-checked component version, ready to swap in.
pub enum Prepared {
    Catalog(Active<catalog::CatalogComponentPre<Ctx>>),
    Cart(Active<cart::CartComponentPre<Ctx>>),
    Inventory(Active<inventory::InventoryComponentPre<Ctx>>),
    Payment(Active<payment::PaymentComponentPre<Ctx>>),
    Order(Active<order::OrderComponentPre<Ctx>>),
}

impl Prepared {
    pub fn kind(&self) -> ComponentKind {
        match self {
            Prepared::Catalog(_) => ComponentKind::Catalog,
            Prepared::Cart(_) => ComponentKind::Cart,
            Prepared::Inventory(_) => ComponentKind::Inventory,
            Prepared::Payment(_) => ComponentKind::Payment,
            Prepared::Order(_) => ComponentKind::Order,
        }
    }

    /// Give it its registry version number (known once it is recorded).
    pub fn set_version(&mut self, version: i64) {
        match self {
            Prepared::Catalog(a) => a.version = version,
            Prepared::Cart(a) => a.version = version,
            Prepared::Inventory(a) => a.version = version,
            Prepared::Payment(a) => a.version = version,
            Prepared::Order(a) => a.version = version,
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            Prepared::Catalog(a) => a.origin,
            Prepared::Cart(a) => a.origin,
            Prepared::Inventory(a) => a.origin,
            Prepared::Payment(a) => a.origin,
            Prepared::Order(a) => a.origin,
        }
    }
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

fn prepare_as<P>(
    engine: &Engine,
    cache: &ArtifactCache,
    source: &ComponentSource,
    wrap: impl FnOnce(wasmtime::component::InstancePre<Ctx>) -> wasmtime::Result<P>,
) -> Result<Active<P>, PrepareError> {
    let name = source.kind.name();
    let digest = digest_of(&source.bytes);
    let (component, origin): (Component, Origin) = cache
        .load(engine, &digest, &source.bytes)
        .map_err(|e| PrepareError::Invalid(format!("not a valid component: {e:#}")))?;
    let linker = linker_for(engine, source.kind).map_err(|e| PrepareError::Invalid(format!("{e:#}")))?;
    let pre = linker.instantiate_pre(&component).map_err(|e| {
        PrepareError::Contract(format!("its imports do not fit what the host grants {name}: {e:#}"))
    })?;
    let pre = wrap(pre).map_err(|e| {
        PrepareError::Contract(format!("it does not export the {name} interface with the same types: {e:#}"))
    })?;
    tracing::info!(component = name, version = source.version, %digest, ?origin, "component ready");
    Ok(Active { version: source.version, digest, origin, pre })
}

/// Compile (or load from the cache), link and type-check `source` against
/// its capability's world. Blocking: run it off the async workers.
fn prepare(
    engine: &Engine,
    cache: &ArtifactCache,
    source: &ComponentSource,
) -> Result<Prepared, PrepareError> {
    Ok(match source.kind {
        ComponentKind::Catalog => {
            Prepared::Catalog(prepare_as(engine, cache, source, catalog::CatalogComponentPre::new)?)
        }
        ComponentKind::Cart => {
            Prepared::Cart(prepare_as(engine, cache, source, cart::CartComponentPre::new)?)
        }
        ComponentKind::Inventory => {
            Prepared::Inventory(prepare_as(engine, cache, source, inventory::InventoryComponentPre::new)?)
        }
        ComponentKind::Payment => {
            Prepared::Payment(prepare_as(engine, cache, source, payment::PaymentComponentPre::new)?)
        }
        ComponentKind::Order => {
            Prepared::Order(prepare_as(engine, cache, source, order::OrderComponentPre::new)?)
        }
    })
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
        let find = |kind: ComponentKind| -> anyhow::Result<Prepared> {
            let source = sources
                .iter()
                .find(|s| s.kind == kind)
                .ok_or_else(|| anyhow::anyhow!("no source for component {}", kind.name()))?;
            prepare(&engine, &cache, source).map_err(|e| anyhow::anyhow!("component {}: {e}", kind.name()))
        };
        let set = ActiveSet {
            catalog: match find(ComponentKind::Catalog)? {
                Prepared::Catalog(a) => Arc::new(a),
                _ => anyhow::bail!("catalog prepared as another kind"),
            },
            cart: match find(ComponentKind::Cart)? {
                Prepared::Cart(a) => Arc::new(a),
                _ => anyhow::bail!("cart prepared as another kind"),
            },
            inventory: match find(ComponentKind::Inventory)? {
                Prepared::Inventory(a) => Arc::new(a),
                _ => anyhow::bail!("inventory prepared as another kind"),
            },
            payment: match find(ComponentKind::Payment)? {
                Prepared::Payment(a) => Arc::new(a),
                _ => anyhow::bail!("payment prepared as another kind"),
            },
            order: match find(ComponentKind::Order)? {
                Prepared::Order(a) => Arc::new(a),
                _ => anyhow::bail!("order prepared as another kind"),
            },
        };
        let ticker = engine::EpochTicker::start(engine.clone());
        let plugins = crate::plugins::Plugins::new(db.clone(), limits.plugins, cache_dir)?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                db,
                limits,
                grants,
                plugins,
                cache,
                active: RwLock::new(Arc::new(set)),
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
        let next = guard.with(p);
        *guard = Arc::new(next);
    }

    /// A deadline for a new request.
    pub fn request_deadline(&self) -> Instant {
        Instant::now() + self.inner.limits.deadline
    }

    pub async fn catalog(&self, deadline: Instant) -> Result<Instance<catalog::CatalogComponent>, Fault> {
        self.inner.instantiate_catalog(&self.snapshot(), deadline).await
    }

    pub async fn cart(&self, deadline: Instant) -> Result<Instance<cart::CartComponent>, Fault> {
        self.inner.instantiate_cart(&self.snapshot(), deadline).await
    }

    pub async fn inventory(
        &self,
        deadline: Instant,
    ) -> Result<Instance<inventory::InventoryComponent>, Fault> {
        self.inner.instantiate_inventory(&self.snapshot(), deadline).await
    }

    pub async fn payment(&self, deadline: Instant) -> Result<Instance<payment::PaymentComponent>, Fault> {
        self.inner.instantiate_payment(&self.snapshot(), deadline).await
    }

    pub async fn order(&self, deadline: Instant) -> Result<Instance<order::OrderComponent>, Fault> {
        self.inner.instantiate_order(&self.snapshot(), deadline).await
    }
}

/// `Inner::$name(set, deadline)`: a fresh instance of a component's version in `set`.
macro_rules! instantiate_fn {
    ($name:ident, $field:ident, $kind:expr, $bindings:ty) => {
        pub(crate) async fn $name(
            self: &Arc<Self>,
            set: &Arc<ActiveSet>,
            deadline: Instant,
        ) -> Result<Instance<$bindings>, Fault> {
            let mut store = self.new_store($kind, deadline, set.clone());
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
