//! Pricing plugins: binaries by digest, each merchant's active plugin, its
//! limits and configuration, the recent errors of its runs, and its
//! recorded runs (for replay).

use async_trait::async_trait;

use super::Result;

/// Errors kept per merchant (older ones are deleted).
pub const RECENT_ERRORS: i64 = 20;

/// A merchant's active plugin.
#[derive(Clone, Debug)]
pub struct PluginRow {
    pub merchant_id: String,
    pub digest: String,
    pub size: i64,
    pub uploaded_at: i64,
    /// The merchant's limits as JSON, if the operator set any.
    pub limits: Option<String>,
    /// The merchant's plugin configuration (JSON text), if set.
    pub config: Option<String>,
    /// The digest of the candidate running in its shadow, if any.
    pub shadow: Option<String>,
}

/// A merchant's shadow candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowRow {
    pub digest: String,
    pub installed_at: i64,
    /// What it did so far (JSON, `crate::plugins::shadow::Report`).
    pub report: String,
    /// Bumped by each report update.
    pub version: i64,
}

/// One recorded run of a merchant's plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    /// Order of recording (the page cursor); assigned by the store.
    pub seq: i64,
    /// The public id (`run_…`), random.
    pub id: String,
    pub merchant_id: String,
    pub at: i64,
    pub digest: String,
    /// `ok` or the error kind.
    pub outcome: String,
    /// The whole run as JSON (`crate::plugins::runs::Recorded`).
    pub record: String,
}

/// How many recorded runs, and how many bytes of them, each merchant keeps:
/// recording one more deletes that merchant's oldest beyond either bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub runs: i64,
    pub bytes: i64,
    /// Distinct digests the kept runs may refer to (the newest used).
    pub binaries: i64,
}

/// Runs of one of a merchant's plugin binaries counted in one bucket of a
/// metric (`outcome`: by kind; `instructions`, `duration_us`: histogram
/// buckets by upper bound, `inf` last). Added to what is stored.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CountRow {
    pub merchant_id: String,
    pub digest: String,
    pub metric: String,
    pub bucket: String,
    pub runs: i64,
}

/// One recorded failure of a run.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PluginErrorRow {
    pub at: i64,
    pub digest: String,
    pub kind: String,
    pub message: String,
    pub log: String,
}

#[async_trait]
pub trait Plugins: Send + Sync {
    /// Store `bytes` under `digest` (once) and make it `merchant`'s plugin;
    /// the errors of the plugin it replaces are forgotten, and its binary
    /// too when no merchant uses it any more.
    async fn put_plugin(&self, merchant: &str, digest: &str, bytes: &[u8], now: i64) -> Result<()>;

    /// Remove `merchant`'s plugin; false if there was none.
    async fn delete_plugin(&self, merchant: &str) -> Result<bool>;

    async fn plugin(&self, merchant: &str) -> Result<Option<PluginRow>> {
        Ok(self.active_plugins(&[merchant.to_string()]).await?.pop())
    }

    /// The active plugins of `merchants` (those that have one), with limits,
    /// ordered by merchant id.
    async fn active_plugins(&self, merchants: &[String]) -> Result<Vec<PluginRow>>;

    async fn plugin_blob(&self, digest: &str) -> Result<Option<Vec<u8>>>;

    /// The operator's limits for `merchant` (JSON), if any were set.
    async fn plugin_limits(&self, merchant: &str) -> Result<Option<String>>;

    async fn set_plugin_limits(&self, merchant: &str, limits_json: &str, now: i64) -> Result<()>;

    /// Record a failed run and keep only the [`RECENT_ERRORS`] newest.
    async fn record_plugin_error(&self, merchant: &str, e: &PluginErrorRow) -> Result<()>;

    /// The newest errors first.
    async fn plugin_errors(&self, merchant: &str) -> Result<Vec<PluginErrorRow>>;

    async fn plugin_config(&self, merchant: &str) -> Result<Option<String>>;

    /// Set (or with `None` remove) `merchant`'s plugin configuration.
    async fn set_plugin_config(&self, merchant: &str, config: Option<&str>, now: i64) -> Result<()>;

    /// Record `runs` (their `seq` is ignored) and apply `retention` to each
    /// of their merchants. A binary that neither a merchant's plugin nor a
    /// kept run refers to any more is deleted.
    async fn record_plugin_runs(&self, runs: &[RunRow], retention: Retention) -> Result<()>;

    /// Add `counts` to the stored ones (one transaction), and forget the
    /// counts of those merchants' digests that neither their plugin, their
    /// shadow nor a kept recorded run refers to.
    async fn add_plugin_counts(&self, counts: &[CountRow]) -> Result<()>;

    /// The counts of `merchant`'s binary `digest`.
    async fn plugin_counts(&self, merchant: &str, digest: &str) -> Result<Vec<CountRow>>;

    /// `merchant`'s recorded runs, newest first, older than `before` (a
    /// `seq`) if given, at most `limit`.
    async fn plugin_runs(&self, merchant: &str, before: Option<i64>, limit: i64) -> Result<Vec<RunRow>>;

    /// One of `merchant`'s recorded runs.
    async fn plugin_run(&self, merchant: &str, id: &str) -> Result<Option<RunRow>>;

    /// Store `bytes` under `digest` (once) and make it `merchant`'s shadow
    /// candidate with an empty `report`, replacing any other.
    async fn put_shadow(
        &self,
        merchant: &str,
        digest: &str,
        bytes: &[u8],
        report: &str,
        now: i64,
    ) -> Result<()>;

    async fn shadow(&self, merchant: &str) -> Result<Option<ShadowRow>>;

    /// Replace the report of `merchant`'s shadow `digest` if it is still at
    /// `version`; false if the shadow or its version changed.
    async fn update_shadow_report(
        &self,
        merchant: &str,
        digest: &str,
        version: i64,
        report: &str,
    ) -> Result<bool>;

    /// End `merchant`'s shadow; false if there was none.
    async fn delete_shadow(&self, merchant: &str) -> Result<bool>;

    /// In one transaction: make the shadow candidate `merchant`'s active
    /// plugin and end the shadow. The promoted digest, or none if there was
    /// no shadow.
    async fn promote_shadow(&self, merchant: &str, now: i64) -> Result<Option<String>>;
}
