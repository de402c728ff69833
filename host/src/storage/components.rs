//! The component registry: versions of each service component (bytes by
//! version) and their activations. The active version of a component is its
//! newest activation not rolled back. Every change is one atomic step, so a
//! killed process leaves either the old or the new state, never half of one.

use async_trait::async_trait;

use super::Result;

/// The PostgreSQL channel on which a change of active versions is announced
/// (payload: the component's name).
pub const CHANNEL: &str = "mercato_components";

/// One version of a component (without its bytes).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VersionRow {
    pub version: i64,
    pub digest: String,
    pub size: i64,
    pub source: String,
    pub created_at: i64,
}

/// One activation: `version` became active at `activated_at`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ActivationRow {
    pub seq: i64,
    pub version: i64,
    pub activated_at: i64,
    pub rolled_back_at: Option<i64>,
}

/// The active version of a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveRow {
    pub seq: i64,
    pub version: VersionRow,
    pub activated_at: i64,
}

/// A canary: `version` of `component` serving `share` % of new requests
/// beside the active version, live until `ended_at`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CanaryRow {
    pub seq: i64,
    pub component: String,
    pub version: i64,
    pub share: i64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// `promoted`, `rolled_back` or `replaced` once ended.
    pub outcome: Option<String>,
    pub reason: Option<String>,
}

#[async_trait]
pub trait Components: Send + Sync {
    /// Record `bytes` as a version of `component` (once per digest) and give
    /// its version number.
    async fn put_component_version(
        &self,
        component: &str,
        digest: &str,
        bytes: &[u8],
        source: &str,
        now: i64,
    ) -> Result<i64>;

    async fn component_version_by_digest(&self, component: &str, digest: &str) -> Result<Option<VersionRow>>;

    /// Every version of `component`, oldest first.
    async fn component_versions(&self, component: &str) -> Result<Vec<VersionRow>>;

    async fn component_bytes(&self, component: &str, version: i64) -> Result<Option<Vec<u8>>>;

    /// The active version of `component`, if it has one.
    async fn active_component(&self, component: &str) -> Result<Option<ActiveRow>>;

    /// Activations of `component`, newest first (at most `limit`); with
    /// `live_only`, those not rolled back.
    async fn component_activations(
        &self,
        component: &str,
        live_only: bool,
        limit: i64,
    ) -> Result<Vec<ActivationRow>>;

    /// Make `version` the active version of `component` (a new activation on
    /// top), unless it already is. Announces the change to other replicas.
    async fn activate_component(&self, component: &str, version: i64, now: i64) -> Result<()>;

    /// Roll back the newest activation of `component` whose sequence number
    /// is `seq` (so two racing rollbacks roll back one activation, not two).
    /// False when `seq` is no longer the newest live activation.
    async fn roll_back_component(&self, component: &str, seq: i64, now: i64) -> Result<bool>;

    /// Start a canary of `version` serving `share` % of `component`'s new
    /// requests; `None` when one is live already (at most one at a time, of
    /// any component, also between replicas). Announces the change.
    async fn start_canary(
        &self,
        component: &str,
        version: i64,
        share: i64,
        now: i64,
    ) -> Result<Option<CanaryRow>>;

    /// The live canary, if any (at most one).
    async fn live_canaries(&self) -> Result<Vec<CanaryRow>>;

    /// `component`'s canaries, newest first, at most `limit`.
    async fn component_canaries(&self, component: &str, limit: i64) -> Result<Vec<CanaryRow>>;

    /// End live canary `seq` of `component` with `outcome` and `reason`;
    /// false when it had ended already (another replica, a racing call).
    /// Announces the change.
    async fn end_canary(
        &self,
        component: &str,
        seq: i64,
        outcome: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool>;

    /// In one transaction: end live canary `seq` of `component` as promoted
    /// and make its version the active one. False (and nothing changed)
    /// when it had ended already. Announces the change.
    async fn promote_canary(&self, component: &str, seq: i64, now: i64) -> Result<bool>;
}
