//! Merchant pricing plugins (SPEC §2, §4, §6.4).
//!
//! A plugin is a component for the `mercato:pricing/plugin` world. Upload:
//! static checks ([`validate`]), compile on the plugin engine, link against
//! the inert WASI subset, store the bytes by digest. Pricing: for each
//! merchant in a cart that has a plugin, run it on that merchant's lines only
//! ([`sandbox`]) within the merchant's [`PluginLimits`]; a run that fails or
//! returns something invalid contributes nothing, and its error is recorded
//! for the merchant to see.
//!
//! Plugins have their own [`Engine`]: fuel metering (an instruction budget)
//! costs every guest something, so the service components do not pay for it.

pub mod io;
pub mod limits;
pub mod runs;
pub mod sandbox;
pub mod shadow;
pub mod validate;
pub mod wasi;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use crate::bindings::types::{
    Adjustment, CodeHonour, DiscountCode, LineAdjustment, Money, PricedLine, Pricing,
};
use crate::storage::plugins::{PluginErrorRow, PluginRow};
use crate::storage::{Db, StorageError};
use crate::wasm::cache::ArtifactCache;
use crate::wasm::digest_of;
use crate::wasm::engine::EpochTicker;
use io::{Amount, InputLine, RunInput, RunOutput};
pub use limits::{LimitsUpdate, PluginLimits};
use runs::{Recorded, Recorder, RecordingConfig};
pub use sandbox::{Compiled, PluginCtx, RunError};

/// Replays executing at once on this replica, apart from the shoppers' run
/// slots.
const REPLAY_SLOTS: usize = 2;

/// Largest plugin configuration, in bytes (SPEC §4).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Compiles (uploads and first uses on this replica) queued or running; one
/// runs at a time, on a blocking thread, so runs of compiled plugins never
/// wait for one. More are refused: an upload with 503, a first use as
/// `overloaded` (the cart prices without that plugin).
const COMPILE_QUEUE: usize = 8;
/// How long a stored plugin that failed to compile is not tried again.
const RETRY_FAILED_COMPILE: Duration = Duration::from_secs(60);
/// Compiled plugins kept in memory.
const LOADED_CAPACITY: usize = 512;
/// The same error of the same plugin is recorded at most this often (a
/// failing plugin runs on every cart read; the record is for its merchant,
/// not a write amplifier).
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// Why an upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Too many compiles queued: try again later.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

/// Why a shadow could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("this merchant has no active pricing plugin: a candidate runs in the shadow of one")]
    NoActive,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Internal(String),
}

/// What `GET /v1/merchant/pricing-plugin/shadow` shows.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ShadowInfo {
    /// The candidate.
    pub digest: String,
    /// The active plugin it is compared with.
    pub active: Option<String>,
    pub installed_at: i64,
    pub report: shadow::Report,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no recorded run {0:?} of this merchant")]
    NotFound(String),
    /// The candidate is not a plugin this merchant could upload.
    #[error("{0}")]
    Invalid(String),
    /// The recorded binary is no longer stored (retention).
    #[error("{0}")]
    Gone(String),
    /// No replay slot or compile place free.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Internal(String),
}

/// What `POST …/runs/{id}/replay` answers.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Replay {
    pub run: String,
    /// Whether the recorded run can be reproduced exactly (false when the
    /// host's clock stopped it; see `Recorded::reproducible`).
    pub reproducible: bool,
    /// What ran: the recorded digest, or the candidate's.
    pub digest: String,
    pub recorded_digest: String,
    pub world: io::World,
    /// Same outcome, output, error and log as recorded, exactly.
    pub identical: bool,
    /// The same number of instructions as recorded.
    pub same_instructions: bool,
    pub outcome: String,
    pub output: Option<RunOutput>,
    pub error: Option<runs::RunFailure>,
    pub recorded_output: Option<RunOutput>,
    pub usage: runs::Usage,
    pub log: String,
    pub diff: runs::Diff,
}

/// A place in the compile queue held by an upload.
pub struct UploadPlace {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A compile in progress, awaited by every run that needs its plugin.
type Compiling = Shared<BoxFuture<'static, Result<Arc<Compiled>, String>>>;

/// What `GET /v1/merchant/pricing-plugin` shows.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PluginInfo {
    pub digest: String,
    pub status: &'static str,
    /// The plugin world it was built for (`mercato:pricing@0.1.0` or `@0.2.0`).
    pub world: Option<io::World>,
    pub size: i64,
    pub uploaded_at: i64,
    pub limits: PluginLimits,
    pub recent_errors: Vec<PluginErrorRow>,
    /// The newest run on this host process (not shared between replicas):
    /// what it used of its budgets and what it printed.
    pub last_run: Option<LastRun>,
    /// Over this plugin's newest recorded runs (all replicas): outcomes by
    /// kind and what the runs used.
    pub runs: RunStats,
    /// Over every production run of this plugin (all replicas, recorded or
    /// not): runs by outcome, histograms of instructions and host time.
    pub metrics: runs::PluginMetrics,
}

/// How a plugin's recent runs went (`GET /v1/merchant/pricing-plugin`).
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct RunStats {
    /// Recorded runs looked at (the newest, at most 200, of this digest).
    pub recorded: usize,
    pub by_outcome: std::collections::BTreeMap<String, u64>,
    pub instructions_p50: u64,
    pub instructions_p99: u64,
    pub duration_us_p50: u64,
    pub duration_us_p99: u64,
}

impl RunStats {
    fn of(runs: &[Recorded]) -> RunStats {
        let mut by_outcome = std::collections::BTreeMap::new();
        for r in runs {
            *by_outcome.entry(r.outcome.clone()).or_default() += 1;
        }
        let pick = |mut v: Vec<u64>, p: f64| {
            v.sort_unstable();
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(0)
        };
        let instructions: Vec<u64> = runs.iter().map(|r| r.usage.instructions).collect();
        let durations: Vec<u64> = runs.iter().map(|r| r.usage.duration_us).collect();
        RunStats {
            recorded: runs.len(),
            by_outcome,
            instructions_p50: pick(instructions.clone(), 0.5),
            instructions_p99: pick(instructions, 0.99),
            duration_us_p50: pick(durations.clone(), 0.5),
            duration_us_p99: pick(durations, 0.99),
        }
    }
}

/// What one run used, for a merchant sizing their plugin's budgets.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LastRun {
    pub at: i64,
    pub digest: String,
    /// `ok` or the error kind.
    pub outcome: &'static str,
    pub lines: usize,
    pub instructions: u64,
    pub memory_bytes: u64,
    pub duration_us: u64,
    pub log: String,
}

struct Inner {
    engine: Engine,
    linker: Linker<PluginCtx>,
    cache: ArtifactCache,
    db: Db,
    defaults: PluginLimits,
    loaded: Mutex<HashMap<String, Arc<Compiled>>>,
    runs: tokio::sync::Semaphore,
    run_slots: usize,
    /// One compile at a time.
    compiles: tokio::sync::Semaphore,
    /// Places in the compile queue ([`COMPILE_QUEUE`]).
    compile_queue: Arc<tokio::sync::Semaphore>,
    /// First-use compiles in progress, by digest.
    compiling: Mutex<HashMap<String, Compiling>>,
    /// Stored plugins that failed to compile, with when and why: not tried
    /// again for [`RETRY_FAILED_COMPILE`] (a broken plugin on every cart read
    /// would otherwise keep the compile queue full).
    failed: Mutex<HashMap<String, (Instant, String)>>,
    recorded: Mutex<HashMap<(String, String, &'static str), Instant>>,
    last_runs: Mutex<HashMap<String, LastRun>>,
    recorder: Recorder,
    /// Replays at once, apart from shoppers' run slots: a merchant's replays
    /// never take a shopper's slot.
    replays: tokio::sync::Semaphore,
    shadows: shadow::Shadows,
    _ticker: EpochTicker,
}

/// The plugin host; cheap to clone.
#[derive(Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Plugins {
    /// `runs`: plugin runs that may execute at once (`components.plugin_runs`);
    /// more wait for a slot, each no longer than its own deadline (then it is
    /// `overloaded`).
    pub fn new(
        db: Db,
        defaults: PluginLimits,
        runs: usize,
        recording: RecordingConfig,
        cache_dir: &Path,
    ) -> anyhow::Result<Plugins> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(limits::STACK_BYTES)
            // A compile (of a merchant's upload, maybe megabytes of runtime)
            // takes one core, never all of them from everyone's requests.
            .parallel_compilation(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // WASI p2 with a virtual clock and no network ([`wasi`]); an upload
        // importing anything outside `validate`'s list is refused before it
        // gets here.
        wasi::add_to_linker(&mut linker)?;
        // The types-only interface a plugin's world imports, in both worlds.
        linker.instance("mercato:pricing/types@0.1.0")?;
        linker.instance("mercato:pricing/types@0.2.0")?;
        let cache = ArtifactCache::new(&cache_dir.join("plugins"), &engine);
        let ticker = EpochTicker::start(engine.clone());
        let db_for_recorder = db.clone();
        let plugins = Plugins {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                db,
                defaults,
                loaded: Mutex::new(HashMap::new()),
                runs: tokio::sync::Semaphore::new(runs),
                run_slots: runs,
                compiles: tokio::sync::Semaphore::new(1),
                compile_queue: Arc::new(tokio::sync::Semaphore::new(COMPILE_QUEUE)),
                compiling: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
                recorded: Mutex::new(HashMap::new()),
                last_runs: Mutex::new(HashMap::new()),
                recorder: Recorder::start(db_for_recorder, recording),
                replays: tokio::sync::Semaphore::new(REPLAY_SLOTS),
                shadows: shadow::Shadows::new(),
                _ticker: ticker,
            }),
        };
        shadow::start(&plugins);
        Ok(plugins)
    }

    fn limits_from(&self, json: Option<&str>) -> PluginLimits {
        json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or(self.inner.defaults)
    }

    /// `merchant`'s effective limits.
    pub async fn limits(&self, merchant: &str) -> Result<PluginLimits, StorageError> {
        Ok(self.limits_from(self.inner.db.plugin_limits(merchant).await?.as_deref()))
    }

    /// Change `merchant`'s limits; returns the new effective limits.
    pub async fn set_limits(
        &self,
        merchant: &str,
        update: &LimitsUpdate,
    ) -> Result<Result<PluginLimits, String>, StorageError> {
        let current = self.limits(merchant).await?;
        let new = match current.apply(update) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let json = serde_json::to_string(&new).map_err(|e| StorageError::Invalid(e.to_string()))?;
        self.inner.db.set_plugin_limits(merchant, &json, crate::now_ms()).await?;
        Ok(Ok(new))
    }

    /// A place in the compile queue for an upload, taken before its body is
    /// read: at most [`COMPILE_QUEUE`] uploads are held in memory at once.
    pub fn upload_place(&self) -> Result<UploadPlace, UploadError> {
        self.inner.compile_queue.clone().try_acquire_owned().map(|p| UploadPlace { _permit: p }).map_err(
            |_| {
                UploadError::Busy(format!(
                    "{COMPILE_QUEUE} plugin compiles are queued on this server; try again in a few seconds"
                ))
            },
        )
    }

    /// Check, compile and store `bytes` as `merchant`'s plugin.
    pub async fn upload(
        &self,
        _place: UploadPlace,
        merchant: &str,
        bytes: Vec<u8>,
    ) -> Result<PluginInfo, UploadError> {
        let limits = self.limits(merchant).await?;
        if bytes.len() as u64 > limits.binary_bytes {
            return Err(UploadError::Invalid(format!(
                "the plugin is {} bytes, over this merchant's limit of {} bytes (binary_bytes); \
                 the operator can raise it with PUT /v1/admin/merchants/{{id}}/plugin-limits",
                bytes.len(),
                limits.binary_bytes
            )));
        }
        validate::check(&bytes).map_err(UploadError::Invalid)?;
        let digest = digest_of(&bytes);
        let (pre, bytes) = {
            let _permit =
                self.inner.compiles.acquire().await.map_err(|e| UploadError::Internal(e.to_string()))?;
            let (this, d) = (self.clone(), digest.clone());
            let started = Instant::now();
            // The bytes go to the compile and come back (no copy).
            let (pre, bytes) = tokio::task::spawn_blocking(move || (this.prepare(&d, &bytes), bytes))
                .await
                .map_err(|e| UploadError::Internal(e.to_string()))?;
            tracing::info!(%merchant, size = bytes.len(), ms = started.elapsed().as_millis() as u64, "plugin compiled");
            (pre?, bytes)
        };
        self.inner.db.put_plugin(merchant, &digest, &bytes, crate::now_ms()).await?;
        self.remember(&digest, pre);
        tracing::info!(%merchant, %digest, "pricing plugin activated");
        self.info(merchant).await?.ok_or_else(|| UploadError::Internal("the plugin vanished".into()))
    }

    /// Compile (or load the precompiled artifact) and link a plugin, for
    /// the world it exports (0.2.0, else 0.1.0).
    fn prepare(&self, digest: &str, bytes: &[u8]) -> Result<Arc<Compiled>, UploadError> {
        let (component, _) = self
            .inner
            .cache
            .load(&self.inner.engine, digest, bytes)
            .map_err(|e| UploadError::Invalid(format!("not a valid component: {e:#}")))?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| UploadError::Invalid(format!("cannot be linked: {e:#}")))?;
        let exports_v1 = validate::parse_component(bytes)
            .map(|shape| {
                !shape.exports.iter().any(|e| e == validate::PRICING_EXPORT)
                    && shape.exports.iter().any(|e| e == validate::PRICING_EXPORT_V1)
            })
            .unwrap_or(false);
        let compiled = if exports_v1 {
            crate::bindings::plugin_v1::PluginPre::new(pre)
                .map(Compiled::V1)
                .map_err(|e| (validate::PRICING_EXPORT_V1, e))
        } else {
            crate::bindings::plugin::PluginPre::new(pre)
                .map(Compiled::V2)
                .map_err(|e| (validate::PRICING_EXPORT, e))
        };
        let compiled = compiled.map_err(|(export, e)| {
            UploadError::Invalid(format!("does not export {export} with the types of its world: {e:#}"))
        })?;
        Ok(Arc::new(compiled))
    }

    fn remember(&self, digest: &str, pre: Arc<Compiled>) {
        let mut loaded = lock(&self.inner.loaded);
        if loaded.len() >= LOADED_CAPACITY {
            // Make room by dropping one (whichever the map yields first): a
            // full cache does not send every plugin back to the compiler.
            if let Some(victim) = loaded.keys().next().cloned() {
                loaded.remove(&victim);
            }
        }
        loaded.insert(digest.to_string(), pre);
    }

    /// The compiled plugin `digest`, from memory, the artifact cache or the
    /// database, waiting no longer than `deadline`. A compile runs on its own
    /// task: when the wait gives up, the compile goes on, and the next run
    /// finds the plugin ready.
    async fn load(&self, digest: &str, deadline: Instant) -> Result<Arc<Compiled>, RunError> {
        if let Some(pre) = lock(&self.inner.loaded).get(digest).cloned() {
            return Ok(pre);
        }
        let compiling = self.compiling(digest)?;
        match tokio::time::timeout_at(deadline.into(), compiling).await {
            Ok(Ok(pre)) => Ok(pre),
            Ok(Err(message)) => Err(RunError::new("unavailable", message)),
            Err(_) => Err(RunError::new(
                "overloaded",
                "was still being compiled for its first use on this server when its deadline came; \
                 carts are priced without it until the compile is done",
            )),
        }
    }

    /// The compile of `digest` in progress, or a new one.
    fn compiling(&self, digest: &str) -> Result<Compiling, RunError> {
        if let Some((at, why)) = lock(&self.inner.failed).get(digest)
            && at.elapsed() < RETRY_FAILED_COMPILE
        {
            return Err(RunError::new("unavailable", format!("could not be compiled on this server: {why}")));
        }
        let mut compiling = lock(&self.inner.compiling);
        if let Some(c) = compiling.get(digest) {
            return Ok(c.clone());
        }
        let place = self.inner.compile_queue.clone().try_acquire_owned().map_err(|_| {
            RunError::new("overloaded", format!("{COMPILE_QUEUE} plugin compiles are queued on this server"))
        })?;
        let (this, d) = (self.clone(), digest.to_string());
        let task = tokio::spawn(async move {
            let result = this.compile_stored(&d).await;
            if let Err(why) = &result {
                tracing::warn!(digest = %d, error = %why, "a stored plugin could not be compiled");
                let mut failed = lock(&this.inner.failed);
                failed.retain(|_, (at, _)| at.elapsed() < RETRY_FAILED_COMPILE);
                failed.insert(d.clone(), (Instant::now(), why.clone()));
            }
            lock(&this.inner.compiling).remove(&d);
            drop(place);
            result
        });
        let shared = async move { task.await.map_err(|e| e.to_string()).and_then(|r| r) }.boxed().shared();
        compiling.insert(digest.to_string(), shared.clone());
        Ok(shared)
    }

    /// Compile the stored plugin `digest` and keep it loaded.
    async fn compile_stored(&self, digest: &str) -> Result<Arc<Compiled>, String> {
        let _permit = self.inner.compiles.acquire().await.map_err(|e| e.to_string())?;
        if let Some(pre) = lock(&self.inner.loaded).get(digest).cloned() {
            return Ok(pre);
        }
        let bytes = self
            .inner
            .db
            .plugin_blob(digest)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("plugin {digest} is not stored"))?;
        let (this, d) = (self.clone(), digest.to_string());
        let started = Instant::now();
        let pre = tokio::task::spawn_blocking(move || this.prepare(&d, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        tracing::info!(%digest, ms = started.elapsed().as_millis() as u64, "plugin compiled for first use");
        self.remember(digest, pre.clone());
        Ok(pre)
    }

    /// Plugin runs executing now on this replica.
    pub fn runs_in_progress(&self) -> usize {
        self.inner.run_slots - self.inner.runs.available_permits()
    }

    pub async fn info(&self, merchant: &str) -> Result<Option<PluginInfo>, StorageError> {
        let Some(row) = self.inner.db.plugin(merchant).await? else { return Ok(None) };
        let recent_errors = self.inner.db.plugin_errors(merchant).await?;
        let last_run = lock(&self.inner.last_runs).get(merchant).filter(|r| r.digest == row.digest).cloned();
        // The newest run this process saw decides; without one, any recorded error.
        let failing = match &last_run {
            Some(run) => run.outcome != "ok",
            None => !recent_errors.is_empty(),
        };
        let world = lock(&self.inner.loaded).get(&row.digest).map(|c| c.world());
        let recent: Vec<Recorded> = self
            .inner
            .db
            .plugin_runs(merchant, None, 200)
            .await?
            .iter()
            .filter(|r| r.digest == row.digest)
            .filter_map(|r| Recorded::from_row(r).ok())
            .collect();
        let metrics = runs::PluginMetrics::of(&self.inner.db.plugin_counts(merchant, &row.digest).await?);
        Ok(Some(PluginInfo {
            metrics,
            status: if failing { "failing" } else { "active" },
            world,
            limits: self.limits_from(row.limits.as_deref()),
            digest: row.digest,
            size: row.size,
            uploaded_at: row.uploaded_at,
            recent_errors,
            last_run,
            runs: RunStats::of(&recent),
        }))
    }

    pub async fn delete(&self, merchant: &str) -> Result<bool, StorageError> {
        self.inner.db.delete_plugin(merchant).await
    }

    /// `merchant`'s plugin configuration (JSON text), if set.
    pub async fn config(&self, merchant: &str) -> Result<Option<String>, StorageError> {
        self.inner.db.plugin_config(merchant).await
    }

    /// Set (or remove) `merchant`'s configuration; the next run sees it.
    pub async fn set_config(&self, merchant: &str, config: Option<&str>) -> Result<(), StorageError> {
        self.inner.db.set_plugin_config(merchant, config, crate::now_ms()).await
    }

    /// The adjustments of every merchant's plugin for a cart in `currency`
    /// with discount `codes`, and what became of each code: each plugin sees
    /// only its merchant's lines; failed runs add nothing.
    pub async fn adjust(
        &self,
        currency: &str,
        lines: &[PricedLine],
        codes: &[String],
        request_deadline: Instant,
    ) -> Result<Pricing, StorageError> {
        let mut merchants: Vec<String> = lines.iter().map(|l| l.merchant_id.clone()).collect();
        merchants.sort();
        merchants.dedup();
        let active = self.inner.db.active_plugins(&merchants).await?;
        // Every merchant's plugin at once: each is bounded by its own
        // deadline, so a cart with several merchants waits for the slowest,
        // not for their sum.
        let runs = active.iter().map(|plugin| async move {
            let input = RunInput {
                merchant_id: plugin.merchant_id.clone(),
                currency: currency.to_string(),
                lines: lines
                    .iter()
                    .filter(|l| l.merchant_id == plugin.merchant_id)
                    .map(|l| InputLine {
                        sku: l.sku.clone(),
                        product_id: l.product_id.clone(),
                        title: l.title.clone(),
                        quantity: l.quantity,
                        unit_price: Amount {
                            amount: l.unit_price.amount,
                            currency: l.unit_price.currency.clone(),
                        },
                    })
                    .collect(),
                discount_codes: codes.to_vec(),
                config: plugin.config.clone(),
            };
            let (kind, output) = self.run(plugin, &input, request_deadline).await;
            // The candidate in this merchant's shadow gets the same input,
            // after the answer is known and off this request.
            if let Some(digest) = &plugin.shadow {
                self.inner.shadows.offer(shadow::Job {
                    merchant: plugin.merchant_id.clone(),
                    digest: digest.clone(),
                    limits: self.limits_from(plugin.limits.as_deref()),
                    input,
                    active_outcome: kind,
                    active: output.clone(),
                });
            }
            (plugin, output.unwrap_or_default())
        });
        let outputs: Vec<(&PluginRow, RunOutput)> = futures_util::future::join_all(runs).await;
        Ok(combine(codes, &outputs))
    }

    /// One run of `plugin`: its outcome kind, and its output if it succeeded.
    async fn run(
        &self,
        plugin: &PluginRow,
        input: &RunInput,
        request_deadline: Instant,
    ) -> (&'static str, Option<RunOutput>) {
        let limits = self.limits_from(plugin.limits.as_deref());
        let started = Instant::now();
        // One deadline for the whole run, waits included: for a compile on
        // first use, for a run slot, and the run itself.
        let deadline = request_deadline.min(started + Duration::from_millis(limits.deadline_ms));
        let mut world = None;
        let outcome = match self.load(&plugin.digest, deadline).await {
            Err(e) => sandbox::RunOutcome::failed(e),
            Ok(pre) => match tokio::time::timeout_at(deadline.into(), self.inner.runs.acquire()).await {
                Ok(Ok(_permit)) => {
                    world = Some(pre.world());
                    sandbox::run(&self.inner.engine, &pre, &plugin.digest, &limits, input, deadline).await
                }
                Ok(Err(closed)) => {
                    sandbox::RunOutcome::failed(RunError::new("unavailable", closed.to_string()))
                }
                Err(_) => sandbox::RunOutcome::failed(RunError::new(
                    "overloaded",
                    format!(
                        "found all {} plugin run slots of this server busy until its deadline of {} ms",
                        self.inner.run_slots, limits.deadline_ms
                    ),
                )),
            },
        };
        let kind = outcome.result.as_ref().err().map(|e| e.kind).unwrap_or("ok");
        crate::telemetry::plugin_run(kind, started, outcome.fuel_used);
        let duration_us = started.elapsed().as_micros() as u64;
        self.inner.recorder.count(&plugin.merchant_id, &plugin.digest, kind, outcome.fuel_used, duration_us);
        let last = LastRun {
            at: crate::now_ms(),
            digest: plugin.digest.clone(),
            outcome: kind,
            lines: input.lines.len(),
            instructions: outcome.fuel_used,
            memory_bytes: outcome.memory_peak,
            duration_us,
            log: outcome.log.clone(),
        };
        tracing::debug!(merchant = %plugin.merchant_id, ?last, "pricing plugin ran");
        lock(&self.inner.last_runs).insert(plugin.merchant_id.clone(), last);
        // A run that got to execute is recorded for replay; one that never
        // started (compiling, overloaded) has nothing to replay.
        if let Some(world) = world {
            self.inner.recorder.record(Recorded {
                id: runs::new_id(),
                at: crate::now_ms(),
                merchant_id: plugin.merchant_id.clone(),
                digest: plugin.digest.clone(),
                world,
                limits,
                input: input.clone(),
                outcome: kind.to_string(),
                output: outcome.result.as_ref().ok().cloned(),
                error: outcome
                    .result
                    .as_ref()
                    .err()
                    .map(|e| runs::RunFailure { kind: e.kind.to_string(), message: e.message.clone() }),
                usage: runs::Usage {
                    instructions: outcome.fuel_used,
                    memory_bytes: outcome.memory_peak,
                    duration_us,
                },
                log: outcome.log.clone(),
                reproducible: !outcome.cut_by_host_time,
            });
        }
        match outcome.result {
            Ok(output) => (kind, Some(output)),
            Err(error) => {
                tracing::warn!(merchant = %plugin.merchant_id, digest = %plugin.digest, kind = error.kind,
                    message = %error.message, "pricing plugin run failed; its adjustments are dropped");
                // Recorded off the request's path: a busy writer must not
                // hold the cart past its deadline.
                let (this, plugin, log) = (self.clone(), plugin.clone(), outcome.log);
                tokio::spawn(async move { this.record(&plugin, &error, log).await });
                (kind, None)
            }
        }
    }

    /// Check and compile `bytes` (as an upload) and install them as the
    /// candidate in the shadow of `merchant`'s active plugin, with a fresh
    /// report.
    pub async fn put_shadow(
        &self,
        _place: UploadPlace,
        merchant: &str,
        bytes: Vec<u8>,
    ) -> Result<ShadowInfo, ShadowError> {
        if self.inner.db.plugin(merchant).await?.is_none() {
            return Err(ShadowError::NoActive);
        }
        let as_shadow = |e: ReplayError| match e {
            ReplayError::Invalid(m) => ShadowError::Invalid(m),
            other => ShadowError::Internal(other.to_string()),
        };
        let digest = self.check_candidate(merchant, &bytes).await.map_err(as_shadow)?;
        let (compiled, bytes) = self.compile_candidate(&digest, bytes).await.map_err(as_shadow)?;
        let report = serde_json::to_string(&shadow::Report::default())
            .map_err(|e| ShadowError::Internal(e.to_string()))?;
        self.inner.db.put_shadow(merchant, &digest, &bytes, &report, crate::now_ms()).await?;
        self.remember(&digest, compiled);
        tracing::info!(%merchant, %digest, "pricing plugin candidate shadowing");
        self.shadow_info(merchant).await?.ok_or_else(|| ShadowError::Internal("the shadow vanished".into()))
    }

    /// `merchant`'s shadow and its report (what this process has not added
    /// to the stored report yet is added first).
    pub async fn shadow_info(&self, merchant: &str) -> Result<Option<ShadowInfo>, StorageError> {
        shadow::flush_reports(self).await;
        let Some(row) = self.inner.db.shadow(merchant).await? else { return Ok(None) };
        let active = self.inner.db.plugin(merchant).await?.map(|p| p.digest);
        Ok(Some(ShadowInfo {
            report: serde_json::from_str(&row.report).unwrap_or_default(),
            digest: row.digest,
            active,
            installed_at: row.installed_at,
        }))
    }

    pub async fn delete_shadow(&self, merchant: &str) -> Result<bool, StorageError> {
        self.inner.db.delete_shadow(merchant).await
    }

    /// Make `merchant`'s shadow candidate its active plugin, atomically:
    /// every pricing sees the old plugin or the new one. The promoted digest.
    pub async fn promote_shadow(&self, merchant: &str) -> Result<Option<String>, StorageError> {
        let promoted = self.inner.db.promote_shadow(merchant, crate::now_ms()).await?;
        if let Some(digest) = &promoted {
            tracing::info!(%merchant, %digest, "pricing plugin candidate promoted");
        }
        Ok(promoted)
    }

    /// `merchant`'s recorded runs, newest first, before `cursor`.
    pub async fn runs(
        &self,
        merchant: &str,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<Recorded>, Option<i64>), StorageError> {
        let rows = self.inner.db.plugin_runs(merchant, cursor, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let rows = &rows[..rows.len().min(limit as usize)];
        let next = if more { rows.last().map(|r| r.seq) } else { None };
        let runs = rows.iter().filter_map(|r| Recorded::from_row(r).ok()).collect();
        Ok((runs, next))
    }

    pub async fn run_record(&self, merchant: &str, id: &str) -> Result<Option<Recorded>, StorageError> {
        Ok(self.inner.db.plugin_run(merchant, id).await?.and_then(|r| Recorded::from_row(&r).ok()))
    }

    /// Run `merchant`'s recorded run `id` again: its recorded digest (or
    /// `candidate`, checked and compiled like an upload but not stored) on
    /// the recorded input and limits, and say how the output differs.
    pub async fn replay(
        &self,
        merchant: &str,
        id: &str,
        candidate: Option<(UploadPlace, Vec<u8>)>,
    ) -> Result<Replay, ReplayError> {
        let recorded =
            self.run_record(merchant, id).await?.ok_or_else(|| ReplayError::NotFound(id.to_string()))?;
        let (digest, compiled) = match candidate {
            Some((_place, bytes)) => {
                let digest = self.check_candidate(merchant, &bytes).await?;
                let (compiled, _) = self.compile_candidate(&digest, bytes).await?;
                (digest, compiled)
            }
            None => {
                if lock(&self.inner.loaded).get(&recorded.digest).is_none()
                    && self.inner.db.plugin_blob(&recorded.digest).await?.is_none()
                {
                    return Err(ReplayError::Gone(format!(
                        "the recorded plugin {} is no longer stored; replay the run with a candidate \
                         (or offline, with the file)",
                        recorded.digest
                    )));
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                let compiled = self.load(&recorded.digest, deadline).await.map_err(|e| match e.kind {
                    "overloaded" => ReplayError::Busy(e.message),
                    _ => {
                        ReplayError::Internal(format!("the recorded plugin cannot be loaded: {}", e.message))
                    }
                })?;
                (recorded.digest.clone(), compiled)
            }
        };
        let _slot = self.inner.replays.try_acquire().map_err(|_| {
            ReplayError::Busy(format!(
                "{REPLAY_SLOTS} replays are running on this server; try again in a moment"
            ))
        })?;
        Ok(self.replay_with(&recorded, &digest, &compiled).await)
    }

    /// The static checks of an upload, for a candidate.
    async fn check_candidate(&self, merchant: &str, bytes: &[u8]) -> Result<String, ReplayError> {
        let limits = self.limits(merchant).await?;
        if bytes.len() as u64 > limits.binary_bytes {
            return Err(ReplayError::Invalid(format!(
                "the candidate is {} bytes, over this merchant's limit of {} bytes (binary_bytes)",
                bytes.len(),
                limits.binary_bytes
            )));
        }
        validate::check(bytes).map_err(ReplayError::Invalid)?;
        Ok(digest_of(bytes))
    }

    /// Compile a candidate (one compile at a time, as uploads); gives the
    /// bytes back with it.
    async fn compile_candidate(
        &self,
        digest: &str,
        bytes: Vec<u8>,
    ) -> Result<(Arc<Compiled>, Vec<u8>), ReplayError> {
        if let Some(pre) = lock(&self.inner.loaded).get(digest).cloned() {
            return Ok((pre, bytes));
        }
        let _permit =
            self.inner.compiles.acquire().await.map_err(|e| ReplayError::Internal(e.to_string()))?;
        let (this, d) = (self.clone(), digest.to_string());
        let (compiled, bytes) = tokio::task::spawn_blocking(move || (this.prepare(&d, &bytes), bytes))
            .await
            .map_err(|e| ReplayError::Internal(e.to_string()))?;
        let compiled = compiled.map_err(|e| match e {
            UploadError::Invalid(m) => ReplayError::Invalid(m),
            other => ReplayError::Internal(other.to_string()),
        })?;
        Ok((compiled, bytes))
    }

    /// Run `compiled` (digest `digest`) on `recorded`'s input and limits.
    pub async fn replay_with(&self, recorded: &Recorded, digest: &str, compiled: &Compiled) -> Replay {
        let limits = recorded.limits;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(limits.deadline_ms);
        let outcome =
            sandbox::run(&self.inner.engine, compiled, digest, &limits, &recorded.input, deadline).await;
        let kind = outcome.result.as_ref().err().map(|e| e.kind).unwrap_or("ok").to_string();
        let output = outcome.result.as_ref().ok().cloned();
        let diff = runs::Diff::between(
            (recorded.outcome.as_str(), recorded.output.as_ref()),
            (kind.as_str(), output.as_ref()),
        );
        let error = outcome
            .result
            .as_ref()
            .err()
            .map(|e| runs::RunFailure { kind: e.kind.to_string(), message: e.message.clone() });
        let identical = kind == recorded.outcome
            && output == recorded.output
            && error == recorded.error
            && outcome.log == recorded.log;
        Replay {
            run: recorded.id.clone(),
            reproducible: recorded.reproducible,
            digest: digest.to_string(),
            recorded_digest: recorded.digest.clone(),
            world: compiled.world(),
            identical,
            same_instructions: outcome.fuel_used == recorded.usage.instructions,
            outcome: kind,
            output,
            error,
            recorded_output: recorded.output.clone(),
            usage: runs::Usage {
                instructions: outcome.fuel_used,
                memory_bytes: outcome.memory_peak,
                duration_us: started.elapsed().as_micros() as u64,
            },
            log: outcome.log,
            diff,
        }
    }

    /// Compile `bytes` for an offline replay (no database behind it).
    pub async fn compile_file(&self, bytes: Vec<u8>) -> Result<(String, Arc<Compiled>), ReplayError> {
        validate::check(&bytes).map_err(ReplayError::Invalid)?;
        let digest = digest_of(&bytes);
        let (compiled, _) = self.compile_candidate(&digest, bytes).await?;
        Ok((digest, compiled))
    }

    async fn record(&self, plugin: &PluginRow, error: &RunError, log: String) {
        let key = (plugin.merchant_id.clone(), plugin.digest.clone(), error.kind);
        {
            let mut recorded = lock(&self.inner.recorded);
            if recorded.get(&key).is_some_and(|at| at.elapsed() < RECORD_EVERY) {
                return;
            }
            if recorded.len() > 10_000 {
                recorded.clear();
            }
            recorded.insert(key, Instant::now());
        }
        let row = PluginErrorRow {
            at: crate::now_ms(),
            digest: plugin.digest.clone(),
            kind: error.kind.to_string(),
            message: error.message.clone(),
            log,
        };
        if let Err(e) = self.inner.db.record_plugin_error(&plugin.merchant_id, &row).await {
            tracing::warn!(merchant = %plugin.merchant_id, error = %e, "could not record a plugin error");
        }
    }
}

/// The plugins' outputs as the cart's adjustments, and each code's fate:
/// applied by every merchant whose plugin gave a discount for it; otherwise
/// refused with the first refusing merchant's reason, or not applicable.
fn combine(codes: &[String], outputs: &[(&PluginRow, RunOutput)]) -> Pricing {
    let mut adjustments = Vec::new();
    for (plugin, output) in outputs {
        for d in output.discounts.iter().filter(|d| d.amount.amount > 0) {
            adjustments.push(LineAdjustment {
                sku: d.sku.clone(),
                adjustment: Adjustment {
                    label: d.label.clone(),
                    amount: Money { amount: -d.amount.amount, currency: d.amount.currency.clone() },
                    source: format!("plugin:{}", plugin.digest),
                },
            });
        }
    }
    let codes = codes
        .iter()
        .map(|code| {
            let honoured_by: Vec<CodeHonour> = outputs
                .iter()
                .filter(|(_, o)| {
                    o.discounts.iter().any(|d| d.amount.amount > 0 && d.code.as_deref() == Some(code))
                })
                .map(|(p, _)| CodeHonour {
                    merchant_id: p.merchant_id.clone(),
                    source: format!("plugin:{}", p.digest),
                })
                .collect();
            let reason = if honoured_by.is_empty() {
                Some(
                    outputs
                        .iter()
                        .find_map(|(_, o)| {
                            o.rejected_codes.iter().find(|r| &r.code == code).map(|r| r.reason.clone())
                        })
                        .unwrap_or_else(|| "not applicable to this cart".to_string()),
                )
            } else {
                None
            };
            DiscountCode { code: code.clone(), applied: !honoured_by.is_empty(), honoured_by, reason }
        })
        .collect();
    Pricing { adjustments, codes }
}

/// Replay `recorded` with the plugin `bytes` on this machine, with no server
/// or database (`mercato plugin replay --offline`): the same sandbox, limits
/// and input as on the server, so the recorded plugin's run is reproduced
/// exactly.
pub async fn replay_offline(recorded: &Recorded, bytes: Vec<u8>) -> anyhow::Result<Replay> {
    let dir = tempfile_dir()?;
    let plugins = Plugins::new(Db::memory(), recorded.limits, 1, RecordingConfig::default(), &dir)?;
    let (digest, compiled) = plugins.compile_file(bytes).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let replay = plugins.replay_with(recorded, &digest, &compiled).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(replay)
}

/// A fresh directory for an offline replay's compile cache.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("mercato-replay-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
