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

pub mod limits;
pub mod sandbox;
pub mod validate;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use crate::bindings::plugin::PluginPre;
use crate::bindings::plugin::mercato::pricing::types::{Cart, Line, Money as PluginMoney};
use crate::bindings::types::{Adjustment, LineAdjustment, Money, PricedLine};
use crate::runtime::cache::ArtifactCache;
use crate::runtime::digest_of;
use crate::runtime::engine::EpochTicker;
use crate::storage::plugins::{PluginErrorRow, PluginRow};
use crate::storage::{Db, StorageError};
pub use limits::{LimitsUpdate, PluginLimits};
pub use sandbox::{PluginCtx, RunError};

/// Plugin runs that may execute at once; more wait for a slot.
const CONCURRENT_RUNS: usize = 64;
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
    #[error("{0}")]
    Internal(String),
}

/// What `GET /v1/merchant/pricing-plugin` shows.
#[derive(Debug, serde::Serialize)]
pub struct PluginInfo {
    pub digest: String,
    pub status: &'static str,
    pub size: i64,
    pub uploaded_at: i64,
    pub limits: PluginLimits,
    pub recent_errors: Vec<PluginErrorRow>,
    /// The newest run on this host process (not shared between replicas):
    /// what it used of its budgets and what it printed.
    pub last_run: Option<LastRun>,
}

/// What one run used, for a merchant sizing their plugin's budgets.
#[derive(Clone, Debug, serde::Serialize)]
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
    loaded: Mutex<HashMap<String, Arc<PluginPre<PluginCtx>>>>,
    runs: tokio::sync::Semaphore,
    compiles: tokio::sync::Semaphore,
    recorded: Mutex<HashMap<(String, String, &'static str), Instant>>,
    last_runs: Mutex<HashMap<String, LastRun>>,
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
    pub fn new(db: Db, defaults: PluginLimits, cache_dir: &Path) -> anyhow::Result<Plugins> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(limits::STACK_BYTES)
            .parallel_compilation(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // The whole of WASI p2 is linked, but an upload importing anything
        // outside `validate`'s inert list is refused before it gets here.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // The types-only interface a plugin's world imports.
        linker.instance("mercato:pricing/types@0.1.0")?;
        let cache = ArtifactCache::new(&cache_dir.join("plugins"), &engine);
        let ticker = EpochTicker::start(engine.clone());
        Ok(Plugins {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                db,
                defaults,
                loaded: Mutex::new(HashMap::new()),
                runs: tokio::sync::Semaphore::new(CONCURRENT_RUNS),
                compiles: tokio::sync::Semaphore::new(1),
                recorded: Mutex::new(HashMap::new()),
                last_runs: Mutex::new(HashMap::new()),
                _ticker: ticker,
            }),
        })
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

    /// Check, compile and store `bytes` as `merchant`'s plugin.
    pub async fn upload(&self, merchant: &str, bytes: Vec<u8>) -> Result<PluginInfo, UploadError> {
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
        let pre = {
            let _permit =
                self.inner.compiles.acquire().await.map_err(|e| UploadError::Internal(e.to_string()))?;
            let (this, d, b) = (self.clone(), digest.clone(), bytes.clone());
            let started = Instant::now();
            let pre = tokio::task::spawn_blocking(move || this.prepare(&d, &b))
                .await
                .map_err(|e| UploadError::Internal(e.to_string()))??;
            tracing::info!(%merchant, size = bytes.len(), ms = started.elapsed().as_millis() as u64, "plugin compiled");
            pre
        };
        self.inner.db.put_plugin(merchant, &digest, &bytes, crate::now_ms()).await?;
        self.remember(&digest, pre);
        tracing::info!(%merchant, %digest, "pricing plugin activated");
        self.info(merchant).await?.ok_or_else(|| UploadError::Internal("the plugin vanished".into()))
    }

    /// Compile (or load the precompiled artifact) and link a plugin.
    fn prepare(&self, digest: &str, bytes: &[u8]) -> Result<Arc<PluginPre<PluginCtx>>, UploadError> {
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
        let pre = PluginPre::new(pre).map_err(|e| {
            UploadError::Invalid(format!(
                "does not export {} with the types of mercato:pricing@0.1.0: {e:#}",
                validate::PRICING_EXPORT
            ))
        })?;
        Ok(Arc::new(pre))
    }

    fn remember(&self, digest: &str, pre: Arc<PluginPre<PluginCtx>>) {
        let mut loaded = lock(&self.inner.loaded);
        if loaded.len() >= LOADED_CAPACITY {
            loaded.clear();
        }
        loaded.insert(digest.to_string(), pre);
    }

    /// The compiled plugin `digest`, from memory, the artifact cache or the database.
    async fn load(&self, digest: &str) -> Result<Arc<PluginPre<PluginCtx>>, RunError> {
        if let Some(pre) = lock(&self.inner.loaded).get(digest).cloned() {
            return Ok(pre);
        }
        // One compile at a time (uploads too); a request that waited finds
        // the plugin another request just loaded.
        let _permit =
            self.inner.compiles.acquire().await.map_err(|e| RunError::new("unavailable", e.to_string()))?;
        if let Some(pre) = lock(&self.inner.loaded).get(digest).cloned() {
            return Ok(pre);
        }
        let bytes = self
            .inner
            .db
            .plugin_blob(digest)
            .await
            .map_err(|e| RunError::new("unavailable", e.to_string()))?
            .ok_or_else(|| RunError::new("unavailable", format!("plugin {digest} is not stored")))?;
        let (this, d) = (self.clone(), digest.to_string());
        let pre = tokio::task::spawn_blocking(move || this.prepare(&d, &bytes))
            .await
            .map_err(|e| RunError::new("unavailable", e.to_string()))?
            .map_err(|e| RunError::new("unavailable", e.to_string()))?;
        self.remember(digest, pre.clone());
        Ok(pre)
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
        Ok(Some(PluginInfo {
            status: if failing { "failing" } else { "active" },
            limits: self.limits_from(row.limits.as_deref()),
            digest: row.digest,
            size: row.size,
            uploaded_at: row.uploaded_at,
            recent_errors,
            last_run,
        }))
    }

    pub async fn delete(&self, merchant: &str) -> Result<bool, StorageError> {
        self.inner.db.delete_plugin(merchant).await
    }

    /// The adjustments of every merchant's plugin for a cart in `currency`:
    /// each plugin sees only its merchant's lines; failed runs add nothing.
    pub async fn adjust(
        &self,
        currency: &str,
        lines: &[PricedLine],
        request_deadline: Instant,
    ) -> Result<Vec<LineAdjustment>, StorageError> {
        let mut merchants: Vec<String> = lines.iter().map(|l| l.merchant_id.clone()).collect();
        merchants.sort();
        merchants.dedup();
        let active = self.inner.db.active_plugins(&merchants).await?;
        let mut out = Vec::new();
        for plugin in active {
            let cart = Cart {
                merchant_id: plugin.merchant_id.clone(),
                currency: currency.to_string(),
                lines: lines
                    .iter()
                    .filter(|l| l.merchant_id == plugin.merchant_id)
                    .map(|l| Line {
                        sku: l.sku.clone(),
                        product_id: l.product_id.clone(),
                        quantity: l.quantity,
                        unit_price: PluginMoney {
                            amount: l.unit_price.amount,
                            currency: l.unit_price.currency.clone(),
                        },
                    })
                    .collect(),
            };
            if let Some(discounts) = self.run(&plugin, &cart, request_deadline).await {
                out.extend(discounts.into_iter().filter(|d| d.amount.amount > 0).map(|d| LineAdjustment {
                    sku: d.sku,
                    adjustment: Adjustment {
                        label: d.label,
                        amount: Money { amount: -d.amount.amount, currency: d.amount.currency },
                        source: format!("plugin:{}", plugin.digest),
                    },
                }));
            }
        }
        Ok(out)
    }

    async fn run(
        &self,
        plugin: &PluginRow,
        cart: &Cart,
        request_deadline: Instant,
    ) -> Option<Vec<crate::bindings::plugin::mercato::pricing::types::Discount>> {
        let limits = self.limits_from(plugin.limits.as_deref());
        let started = Instant::now();
        let outcome = match self.load(&plugin.digest).await {
            Err(e) => {
                sandbox::RunOutcome { result: Err(e), log: String::new(), fuel_used: 0, memory_peak: 0 }
            }
            Ok(pre) => {
                let _permit = self.inner.runs.acquire().await.ok()?;
                sandbox::run(&self.inner.engine, &pre, &plugin.digest, &limits, cart, request_deadline).await
            }
        };
        let kind = outcome.result.as_ref().err().map(|e| e.kind).unwrap_or("ok");
        crate::telemetry::plugin_run(kind, started, outcome.fuel_used);
        let last = LastRun {
            at: crate::now_ms(),
            digest: plugin.digest.clone(),
            outcome: kind,
            lines: cart.lines.len(),
            instructions: outcome.fuel_used,
            memory_bytes: outcome.memory_peak,
            duration_us: started.elapsed().as_micros() as u64,
            log: outcome.log.clone(),
        };
        tracing::debug!(merchant = %plugin.merchant_id, ?last, "pricing plugin ran");
        lock(&self.inner.last_runs).insert(plugin.merchant_id.clone(), last);
        match outcome.result {
            Ok(discounts) => Some(discounts),
            Err(error) => {
                tracing::warn!(merchant = %plugin.merchant_id, digest = %plugin.digest, kind = error.kind,
                    message = %error.message, "pricing plugin run failed; its adjustments are dropped");
                self.record(plugin, &error, outcome.log).await;
                None
            }
        }
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
