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
pub mod canary;
pub mod ctx;
mod peers;
pub mod table;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::bindings::host;
use crate::storage::Db;
pub use crate::wasm::cache::{ArtifactCache, Origin};
pub use crate::wasm::fault::Fault;
pub use crate::wasm::{digest_of, engine, shape};
pub use ctx::{Ctx, Instance};
pub use table::{COUNT, ComponentKind, Service, TypedPre};

/// Sandbox limits for service components.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock budget of one request across all components it calls.
    pub deadline: Duration,
    /// Linear-memory cap per instance.
    pub memory_bytes: usize,
    /// Instances that may exist at once (the pool's size).
    pub max_instances: u32,
    /// Tests only: trap after the Nth host call of this name in a request
    /// (see `Config::inject_trap`).
    pub inject_trap: Option<(String, u32)>,
    /// When a canary is rolled back by itself.
    pub canary: canary::CanaryPolicy,
}

/// Values of the capabilities a component was granted, per component:
/// outbound HTTP authorities and `wasi:config` values. Only the payment
/// component is granted either (see [`table::TABLE`]).
pub struct Grants {
    hosts: [Arc<[String]>; COUNT],
    config: [Arc<wasmtime_wasi_config::WasiConfigVariables>; COUNT],
}

impl Grants {
    /// Grant the payment component `hosts` and the `config` values.
    pub fn payment(hosts: Vec<String>, config: Vec<(String, String)>) -> Grants {
        let mut grants = Grants {
            hosts: std::array::from_fn(|_| Arc::from(Vec::new())),
            config: std::array::from_fn(|_| Arc::new(wasmtime_wasi_config::WasiConfigVariables::new())),
        };
        grants.hosts[ComponentKind::Payment as usize] = hosts.into();
        grants.config[ComponentKind::Payment as usize] = Arc::new(config.into_iter().collect());
        grants
    }

    pub(crate) fn outbound(&self, kind: ComponentKind) -> Arc<[String]> {
        self.hosts[kind as usize].clone()
    }

    pub(crate) fn config(&self, kind: ComponentKind) -> Arc<wasmtime_wasi_config::WasiConfigVariables> {
        self.config[kind as usize].clone()
    }
}

/// A component version ready to instantiate.
pub struct Active {
    pub kind: ComponentKind,
    /// Its number in the component registry.
    pub version: i64,
    pub digest: String,
    pub origin: Origin,
    /// Its bindings' `…Pre`, typed by its row ([`ActiveSet::pre`]).
    pre: TypedPre,
}

/// The active version of every component, swapped as a whole: a request
/// takes one set when it starts ([`Runtime::scope`]) and every instance it
/// creates, peers included, comes from that set, so a request is served by
/// exactly one version of each component even while a deploy swaps the set.
pub struct ActiveSet {
    /// Indexed by [`ComponentKind`].
    slots: [Arc<Active>; COUNT],
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

impl ActiveSet {
    /// The set of these versions, or the first component without one.
    fn new(slots: [Option<Arc<Active>>; COUNT]) -> Result<ActiveSet, ComponentKind> {
        let filled: Vec<Arc<Active>> = slots
            .into_iter()
            .zip(ComponentKind::ALL)
            .map(|(slot, kind)| slot.ok_or(kind))
            .collect::<Result<_, _>>()?;
        let slots: [Arc<Active>; COUNT] = filled.try_into().map_err(|_| ComponentKind::ALL[0])?;
        Ok(ActiveSet::from_slots(slots))
    }

    fn from_slots(slots: [Arc<Active>; COUNT]) -> ActiveSet {
        let header =
            slots.iter().map(|a| format!("{}={}", a.kind.name(), a.version)).collect::<Vec<_>>().join(",");
        ActiveSet { slots, header }
    }

    pub fn versions(&self) -> Vec<RunningVersion> {
        self.slots
            .iter()
            .map(|a| RunningVersion {
                kind: a.kind,
                version: a.version,
                digest: a.digest.clone(),
                origin: a.origin,
            })
            .collect()
    }

    /// The version of `kind` in this set.
    pub fn get(&self, kind: ComponentKind) -> &Active {
        &self.slots[kind as usize]
    }

    /// The typed bindings of `S`'s version in this set.
    fn pre<S: Service>(&self) -> Result<(&Active, &S::Pre), Fault> {
        let active = self.get(S::KIND);
        // `Prepared` is only made by `prepare`, which types it by its row.
        let pre = active.pre.downcast_ref::<S::Pre>().ok_or_else(|| Fault::Trap {
            component: S::KIND.name(),
            detail: "the active version is typed as another component".into(),
        })?;
        Ok((active, pre))
    }

    /// `catalog=3,cart=1,…`: the versions that serve a request (the
    /// `x-mercato-versions` response header).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// This set with `p` in its component's place.
    fn with(&self, p: Prepared) -> ActiveSet {
        self.with_active(Arc::new(p.into_active()))
    }

    /// This set with `active` in its component's place.
    fn with_active(&self, active: Arc<Active>) -> ActiveSet {
        let mut slots = self.slots.clone();
        let kind = active.kind;
        slots[kind as usize] = active;
        ActiveSet::from_slots(slots)
    }
}

/// A compiled, linked and type-checked component version, ready to swap in.
pub struct Prepared {
    pub kind: ComponentKind,
    /// Its number in the component registry (set once it is recorded).
    pub version: i64,
    pub digest: String,
    pub origin: Origin,
    pre: TypedPre,
}

impl Prepared {
    fn into_active(self) -> Active {
        let Prepared { kind, version, digest, origin, pre } = self;
        Active { kind, version, digest, origin, pre }
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

/// What one request runs on: the set of versions it was pinned to when it
/// started and its one deadline. Every instance the request creates, peers
/// included, takes both from here.
#[derive(Clone)]
pub struct Scope {
    pub set: Arc<ActiveSet>,
    pub deadline: Instant,
    /// While a canary runs: which side the request is on, and what it did.
    pub trial: Option<canary::Trial>,
}

impl Scope {
    /// A component of this request faulted (trap, deadline, memory).
    pub(crate) fn faulted(&self, fault: &Fault) {
        if let Some(t) = &self.trial
            && !matches!(fault, Fault::Overloaded { .. })
        {
            t.faulted.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

tokio::task_local! {
    /// The scope of the request this task serves (see [`Runtime::scoped`]).
    static SCOPE: Scope;
}

pub struct Inner {
    pub(crate) engine: Engine,
    pub(crate) db: Db,
    pub(crate) limits: Limits,
    pub(crate) grants: Grants,
    pub(crate) plugins: crate::plugins::Plugins,
    cache: ArtifactCache,
    live: RwLock<canary::Live>,
    /// Canaries this process ended, with why (so that a sync does not bring
    /// one back before the database says it ended).
    ended: Mutex<std::collections::HashMap<i64, String>>,
    /// The test-injected trap (`Limits::inject_trap`), if any.
    pub(crate) traps: Arc<crate::capabilities::TrapPlan>,
    _ticker: engine::EpochTicker,
}

/// The runtime: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The capabilities every component gets: WASI (inert, see `ctx`),
/// key-value storage in its own namespace, and logging.
fn base_linker(engine: &Engine) -> anyhow::Result<Linker<Ctx>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    use crate::bindings::keyvalue::wasi::keyvalue::{atomics, batch, store};
    use crate::capabilities::keyvalue::KeyValueState;
    store::add_to_linker::<Ctx, HasSelf<KeyValueState>>(&mut linker, |c| &mut c.kv)?;
    atomics::add_to_linker::<Ctx, HasSelf<KeyValueState>>(&mut linker, |c| &mut c.kv)?;
    batch::add_to_linker::<Ctx, HasSelf<KeyValueState>>(&mut linker, |c| &mut c.kv)?;
    host::wasi::logging::logging::add_to_linker::<Ctx, HasSelf<crate::capabilities::logging::Logging>>(
        &mut linker,
        |c| &mut c.log,
    )?;
    Ok(linker)
}

/// The linker for `kind`: the base capabilities plus its row's grants.
fn linker_for(engine: &Engine, kind: ComponentKind) -> anyhow::Result<Linker<Ctx>> {
    let mut linker = base_linker(engine)?;
    for grant in kind.row().grants {
        grant.link(&mut linker)?;
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
    let pre = (source.kind.row().typed)(pre).map_err(|e| {
        PrepareError::Contract(format!("it does not export the {name} interface with the same types: {e:#}"))
    })?;
    tracing::info!(component = name, version = source.version, %digest, ?origin, "component ready");
    Ok(Prepared { kind: source.kind, version: source.version, digest, origin, pre })
}

impl Runtime {
    /// Compile (or load from the cache) and pre-instantiate every component.
    pub fn new(
        db: Db,
        plugins: crate::plugins::Plugins,
        limits: Limits,
        grants: Grants,
        cache_dir: &std::path::Path,
        sources: &[ComponentSource],
    ) -> anyhow::Result<Runtime> {
        let engine = engine::build(limits.max_instances, limits.memory_bytes)?;
        let cache = ArtifactCache::new(cache_dir, &engine);
        let mut slots: [Option<Arc<Active>>; COUNT] = Default::default();
        for source in sources {
            let prepared = prepare(&engine, &cache, source)
                .map_err(|e| anyhow::anyhow!("component {}: {e}", source.kind.name()))?;
            slots[source.kind as usize] = Some(Arc::new(prepared.into_active()));
        }
        let set = ActiveSet::new(slots)
            .map_err(|kind| anyhow::anyhow!("no source for component {}", kind.name()))?;
        let ticker = engine::EpochTicker::start(engine.clone());
        let traps = Arc::new(crate::capabilities::TrapPlan::new(limits.inject_trap.clone()));
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                db,
                limits,
                grants,
                plugins,
                cache,
                live: RwLock::new(canary::Live { stable: Arc::new(set), canary: None }),
                ended: Mutex::new(Default::default()),
                traps,
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
        read(&self.inner.live).stable.versions()
    }

    /// The scope of the request this task serves, or else a new one: the
    /// live set and a deadline from now (for work outside a request, such as
    /// recovery passes and seeding).
    pub fn scope(&self) -> Scope {
        SCOPE.try_with(Scope::clone).unwrap_or_else(|_| self.new_scope())
    }

    /// A scope on the stable set, the configured deadline from now (work
    /// of the host's own: recovery passes, seeding).
    pub fn new_scope(&self) -> Scope {
        Scope {
            set: read(&self.inner.live).stable,
            deadline: Instant::now() + self.inner.limits.deadline,
            trial: None,
        }
    }

    /// A scope for a new request: while a canary runs, the canary's set for
    /// its share of requests (by `key`, a cart id, when the request names
    /// one), the stable set for the others.
    pub fn request_scope(&self, key: Option<&str>) -> Scope {
        let live = read(&self.inner.live);
        let deadline = Instant::now() + self.inner.limits.deadline;
        match live.canary {
            None => Scope { set: live.stable, deadline, trial: None },
            Some((canary, canary_set)) => {
                let on_canary = canary.takes(key);
                let set = if on_canary { canary_set } else { live.stable };
                Scope { set, deadline, trial: Some(canary::Trial::new(canary, on_canary)) }
            }
        }
    }

    /// Count a request of `scope` answered `status`; when that makes its
    /// canary fail the policy, the canary ends here at once (no new request
    /// gets it) and the verdict is given back, once, to be recorded.
    pub fn observe(&self, scope: &Scope, status: u16) -> Option<canary::Verdict> {
        let trial = scope.trial.as_ref()?;
        trial.count(status);
        if !trial.on_canary {
            return None;
        }
        let c = &trial.canary;
        let reason = c.judge(&self.inner.limits.canary)?;
        self.end_canary(c.seq, &reason).then(|| canary::Verdict {
            kind: c.kind,
            seq: c.seq,
            version: c.version,
            reason,
        })
    }

    /// The live canary of this process, if any.
    pub fn canary(&self) -> Option<Arc<canary::Canary>> {
        read(&self.inner.live).canary.map(|(c, _)| c)
    }

    /// Let `p` serve `share` % of new requests as canary `seq`; false if
    /// this process already ended that canary (or one is live).
    pub fn install_canary(&self, p: Prepared, seq: i64, share: u8, started_at: i64) -> bool {
        if lock(&self.inner.ended).contains_key(&seq) {
            return false;
        }
        let mut live = write(&self.inner.live);
        if live.canary.is_some() {
            return false;
        }
        let active = Arc::new(p.into_active());
        let set = Arc::new(live.stable.with_active(active.clone()));
        live.canary = Some((Arc::new(canary::Canary::new(seq, share, started_at, active)), set));
        true
    }

    /// End canary `seq` here (`why` is kept until the database says it
    /// ended); true for the call that ended it.
    pub fn end_canary(&self, seq: i64, why: &str) -> bool {
        let mut live = write(&self.inner.live);
        let Some((c, _)) = live.canary.as_ref().filter(|(c, _)| c.seq == seq) else { return false };
        if !c.end() {
            return false;
        }
        live.canary = None;
        lock(&self.inner.ended).insert(seq, why.to_string());
        true
    }

    /// Make canary `seq` the stable version of its component; false if it
    /// is not the live canary here.
    pub fn promote_canary(&self, seq: i64) -> bool {
        let mut live = write(&self.inner.live);
        let Some((c, _)) = live.canary.clone().filter(|(c, _)| c.seq == seq) else { return false };
        if !c.end() {
            return false;
        }
        let stable = Arc::new(live.stable.with_active(c.active.clone()));
        *live = canary::Live { stable, canary: None };
        true
    }

    /// Stop judging canary `seq` while the operator's promote commits; false
    /// if it is not the live canary here or has ended (a verdict came first).
    pub fn begin_promote(&self, seq: i64) -> bool {
        let live = read(&self.inner.live);
        match live.canary.as_ref().filter(|(c, _)| c.seq == seq) {
            Some((c, _)) => {
                c.set_promoting(true);
                // A verdict may have ended it just before the flag was up.
                if c.ended() {
                    c.set_promoting(false);
                    return false;
                }
                true
            }
            None => !lock(&self.inner.ended).contains_key(&seq),
        }
    }

    /// The promote of canary `seq` did not commit: judge it again.
    pub fn abandon_promote(&self, seq: i64) {
        if let Some((c, _)) = read(&self.inner.live).canary.as_ref().filter(|(c, _)| c.seq == seq) {
            c.set_promoting(false);
        }
    }

    /// End any canary here other than `seq` (the database no longer has it
    /// live: one is live at a time).
    pub fn end_other_canaries(&self, seq: i64) {
        if let Some(c) = self.canary().filter(|c| c.seq != seq) {
            self.end_canary(c.seq, "ended elsewhere");
            self.forget_canary(c.seq);
        }
    }

    /// Why this process ended canary `seq`, if it did.
    pub fn ended_canary(&self, seq: i64) -> Option<String> {
        lock(&self.inner.ended).get(&seq).cloned()
    }

    /// The canaries this process ended and has not yet seen recorded.
    pub fn ended_canaries(&self) -> Vec<(i64, String)> {
        lock(&self.inner.ended).iter().map(|(seq, why)| (*seq, why.clone())).collect()
    }

    /// The database has recorded the end of canary `seq`.
    pub fn forget_canary(&self, seq: i64) {
        lock(&self.inner.ended).remove(&seq);
    }

    /// Run `f` as one request: every instance it creates takes its versions
    /// and its deadline from `scope`.
    pub async fn scoped<F: Future>(scope: Scope, f: F) -> F::Output {
        SCOPE.scope(scope, f).await
    }

    /// Compile, link and type-check `source` (blocking; see [`prepare`]).
    pub fn prepare(&self, source: &ComponentSource) -> Result<Prepared, PrepareError> {
        prepare(&self.inner.engine, &self.inner.cache, source)
    }

    /// Make `p` the active version of its component. New requests get it;
    /// requests in flight keep the set they started with.
    pub fn install(&self, p: Prepared) {
        let mut live = write(&self.inner.live);
        // The canary's own version becoming stable (promoted elsewhere): the
        // canary is over.
        if let Some((c, _)) = &live.canary
            && c.kind == p.kind
            && c.version == p.version
        {
            c.end();
            live.canary = None;
        }
        let next = live.with_stable(live.stable.with(p));
        *live = next;
    }

    /// The request deadline, in milliseconds.
    pub fn deadline_ms(&self) -> u64 {
        u64::try_from(self.inner.limits.deadline.as_millis()).unwrap_or(u64::MAX)
    }

    /// A fresh instance of `S` in the current request's scope, to call one
    /// of its exports with [`Instance::call`].
    pub async fn instance<S: Service>(&self) -> Result<Instance<S::Bindings>, Fault> {
        self.inner.instantiate::<S>(&self.scope(), Default::default()).await
    }
}

impl Inner {
    /// A fresh instance of `S`'s version in `scope`, in a store of its own
    /// (its memory cap, its grants, the scope's deadline); `staged` is the
    /// request's staging area for a caller's transaction.
    pub(crate) async fn instantiate<S: Service>(
        self: &Arc<Self>,
        scope: &Scope,
        staged: crate::capabilities::transactions::SharedStaging,
    ) -> Result<Instance<S::Bindings>, Fault> {
        if let Some(t) = scope.trial.as_ref().filter(|t| t.canary.kind == S::KIND) {
            t.touched.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let (active, pre) = scope.set.pre::<S>()?;
        let mut store = self.new_store(S::KIND, scope.clone(), staged);
        let bindings = S::instantiate(pre, &mut store).await.map_err(|e| {
            let fault = Fault::classify(S::KIND.name(), &e);
            scope.faulted(&fault);
            fault
        })?;
        Ok(Instance { store, bindings, version: active.version })
    }
}
