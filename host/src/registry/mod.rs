//! The component registry: which versions of each service component exist,
//! which one is active, and how a new one gets there (SPEC §4, §6.3).
//!
//! A deploy — uploaded bytes, an OCI reference or a watched tag — goes
//! through the same steps: signature (when keys are configured) → static
//! contract check ([`contract`]) → compile, link and type-check against the
//! capability's world (off the async workers) → record the version and its
//! activation in the database → swap it into the runtime. Any failure before
//! the activation changes nothing. Other replicas learn of the activation by
//! PostgreSQL `NOTIFY` (and a periodic re-check) and run [`Registry::sync`],
//! which precompiles before it swaps.
//!
//! A deploy with a canary share records the version and a live canary
//! (`component_canaries`) instead of an activation; every replica's sync
//! installs it beside the stable set ([`crate::runtime::canary`]). Promote
//! activates the canary's version, then ends the canary; a crash between
//! the two leaves a live canary whose version is active, which any sync
//! ends as promoted. A rollback — the operator's, or a replica's own
//! judgement — ends it; the stable version never changed.

pub mod contract;
pub use crate::signature;
pub mod sync;

use std::sync::Arc;

use serde_json::{Value, json};

use crate::oci::{Oci, OciError};
use crate::runtime::{ComponentKind, ComponentSource, PrepareError, Runtime, digest_of};
use crate::storage::components::{ActiveRow, CanaryRow};
use crate::storage::{Db, StorageError};

/// Activations kept in `GET /v1/admin/components` per component.
const HISTORY: i64 = 50;
/// Canaries (live and ended) kept in `GET /v1/admin/components` per component.
const CANARY_HISTORY: i64 = 20;

/// Where a deploy's component comes from.
pub enum Artifact {
    /// Bytes sent to the API, with an optional base64 signature.
    Upload { bytes: Vec<u8>, signature: Option<String> },
    /// An OCI reference (`registry/repo:tag` or `…@sha256:…`).
    Oci { reference: String },
}

/// A stage of a deploy, for clients that follow it (`mercato deploy`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Progress {
    Received {
        bytes: usize,
    },
    Pulling {
        reference: String,
    },
    Pulled {
        bytes: usize,
        digest: String,
        pinned: String,
        ms: u64,
    },
    Checking {
        digest: String,
        signature_required: bool,
    },
    Compiling,
    Precompiled {
        origin: &'static str,
        ms: u64,
    },
    Swapped {
        version: i64,
    },
    /// The version serves `share` % of new requests as a canary.
    Canary {
        version: i64,
        share: u8,
    },
}

/// How a deploy goes live.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeployOptions {
    /// As a canary serving this percent (1–99) of new requests.
    pub canary: Option<u8>,
    /// End a live canary of the component first (else the deploy is refused).
    pub replace: bool,
}

/// The outcome of a deploy or rollback.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Deployed {
    pub component: &'static str,
    pub version: i64,
    pub digest: String,
    pub source: String,
    /// False when the version was already active (nothing changed).
    pub changed: bool,
    /// "compiled" or "cached": whether this host had to compile it.
    pub precompiled: &'static str,
    /// The percent of new requests it serves, when deployed as a canary
    /// (`version`, `digest` and `source` are then the canary's).
    pub canary: Option<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    InvalidComponent(String),
    #[error("{0}")]
    ContractMismatch(String),
    /// A reference that does not parse, or names a registry deploys may not
    /// pull from.
    #[error("{0}")]
    InvalidReference(String),
    #[error("{0}")]
    SignatureInvalid(String),
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    NothingToRollBack(String),
    #[error("{0}")]
    Conflict(String),
    /// Promote without a canary.
    #[error("{0}")]
    NoCanary(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Internal(String),
}

impl From<OciError> for DeployError {
    fn from(e: OciError) -> Self {
        match e {
            OciError::Artifact(m) => DeployError::InvalidComponent(m),
            e @ OciError::Reference(..) => DeployError::InvalidReference(e.to_string()),
            other => DeployError::Registry(other.to_string()),
        }
    }
}

impl From<PrepareError> for DeployError {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::Invalid(m) => DeployError::InvalidComponent(m),
            PrepareError::Contract(m) => DeployError::ContractMismatch(m),
        }
    }
}

/// A component the host starts with when the registry does not say otherwise.
pub struct StartupComponent {
    pub kind: ComponentKind,
    pub bytes: Vec<u8>,
    /// "bundled" or "file:<path>".
    pub source: String,
}

/// The active version of `name`, which must exist (every component has one
/// from its first start on).
async fn active_of(db: &Db, name: &str) -> Result<ActiveRow, DeployError> {
    db.active_component(name)
        .await?
        .ok_or_else(|| DeployError::Internal(format!("{name}: no active version")))
}

/// Compile, link and type-check `source` on a blocking thread; gives the
/// bytes back with the result.
async fn prepare_off_thread(
    runtime: &Runtime,
    source: ComponentSource,
) -> Result<(crate::runtime::Prepared, Vec<u8>), DeployError> {
    let runtime = runtime.clone();
    let (prepared, bytes) = tokio::task::spawn_blocking(move || (runtime.prepare(&source), source.bytes))
        .await
        .map_err(|e| DeployError::Internal(format!("compilation task: {e}")))?;
    Ok((prepared?, bytes))
}

fn is_startup_source(source: &str) -> bool {
    source == "bundled" || source.starts_with("file:")
}

/// Register the startup components and give the sources to run: each
/// component's active version. A startup component becomes active when the
/// component has no active version yet, or when its active version also came
/// from startup (so a new binary brings its new bundled components) — never
/// over a version an operator deployed, unless that version no longer fits
/// this binary's world (it was built for an earlier `mercato:commerce`): then
/// the startup version takes over, with a warning, rather than the shop not
/// starting at all. The operator's version stays in the history.
pub async fn bootstrap(db: &Db, startup: Vec<StartupComponent>) -> Result<Vec<ComponentSource>, DeployError> {
    let now = crate::now_ms();
    let mut sources = Vec::new();
    for s in startup {
        let name = s.kind.name();
        let digest = digest_of(&s.bytes);
        let active = db.active_component(name).await?;
        let adopt = match &active {
            None => true,
            Some(a) if a.version.digest == digest => false,
            Some(a) if is_startup_source(&a.version.source) => true,
            Some(a) => match unfit(db, s.kind, a.version.version).await? {
                None => false,
                Some(why) => {
                    tracing::warn!(
                        component = name,
                        version = a.version.version,
                        source = %a.version.source,
                        reason = %why,
                        "the active version does not fit this build's world; running the {} version instead \
                         (deploy one built for mercato:commerce@{})",
                        s.source,
                        contract::COMMERCE_VERSION
                    );
                    true
                }
            },
        };
        if adopt {
            let version = db.put_component_version(name, &digest, &s.bytes, &s.source, now).await?;
            db.activate_component(name, version, now).await?;
        }
        let active = active_of(db, name).await?;
        let bytes = if active.version.digest == digest {
            s.bytes
        } else {
            db.component_bytes(name, active.version.version)
                .await?
                .ok_or_else(|| DeployError::Internal(format!("{name}: active version has no bytes")))?
        };
        sources.push(ComponentSource { kind: s.kind, version: active.version.version, bytes });
    }
    Ok(sources)
}

/// Why stored version `version` of `kind` fails the static contract check,
/// if it does.
async fn unfit(db: &Db, kind: ComponentKind, version: i64) -> Result<Option<String>, DeployError> {
    let bytes = db
        .component_bytes(kind.name(), version)
        .await?
        .ok_or_else(|| DeployError::Internal(format!("{} version {version} has no bytes", kind.name())))?;
    Ok(match contract::check(kind, &bytes) {
        Ok(_) => None,
        Err(contract::Misfit::Invalid(why) | contract::Misfit::Contract(why)) => Some(why),
    })
}

/// Deploys, rollbacks and synchronisation with the database.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    oci: Oci,
    policy: signature::Policy,
    /// One deploy, rollback or sync at a time in this process.
    lock: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(runtime: Runtime, oci: Oci, policy: signature::Policy) -> Registry {
        Registry { inner: Arc::new(Inner { runtime, oci, policy, lock: tokio::sync::Mutex::new(()) }) }
    }

    fn db(&self) -> &Db {
        self.inner.runtime.db()
    }

    pub fn oci(&self) -> &Oci {
        &self.inner.oci
    }

    /// Deploy `artifact` as the new active version of `kind`.
    pub async fn deploy(&self, kind: ComponentKind, artifact: Artifact) -> Result<Deployed, DeployError> {
        self.deploy_with_progress(kind, artifact, DeployOptions::default(), &|_| {}).await
    }

    /// [`Registry::deploy`] with `options`, telling `progress` each stage as
    /// it starts or ends.
    pub async fn deploy_with_progress(
        &self,
        kind: ComponentKind,
        artifact: Artifact,
        options: DeployOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Deployed, DeployError> {
        if let Some(share) = options.canary
            && !(1..=99).contains(&share)
        {
            return Err(DeployError::Internal(format!("canary share {share} is not 1–99")));
        }
        let (bytes, signature, source) = match artifact {
            Artifact::Upload { bytes, signature } => {
                progress(Progress::Received { bytes: bytes.len() });
                (bytes, signature, "upload".to_string())
            }
            Artifact::Oci { reference } => {
                progress(Progress::Pulling { reference: reference.clone() });
                let started = std::time::Instant::now();
                let pulled = self.inner.oci.pull(&reference).await?;
                tracing::info!(component = kind.name(), reference, pinned = %pulled.pinned, size = pulled.bytes.len(), "pulled");
                progress(Progress::Pulled {
                    bytes: pulled.bytes.len(),
                    digest: pulled.digest.clone(),
                    pinned: pulled.pinned.clone(),
                    ms: started.elapsed().as_millis() as u64,
                });
                let signature = if self.inner.policy.required() {
                    self.inner.oci.signature(&reference, &pulled.digest).await?.map(|d| d.signature)
                } else {
                    None
                };
                (pulled.bytes, signature, format!("oci:{}", pulled.pinned))
            }
        };
        self.deploy_bytes(kind, bytes, signature.as_deref(), source, options, progress).await
    }

    /// The live canary (at most one, of any component) in the database.
    async fn live_canary_row(&self) -> Result<Option<CanaryRow>, DeployError> {
        Ok(self.db().live_canaries().await?.into_iter().next())
    }

    /// The live canary of `kind` in the database.
    async fn live_canary(&self, kind: ComponentKind) -> Result<Option<CanaryRow>, DeployError> {
        Ok(self.live_canary_row().await?.filter(|c| c.component == kind.name()))
    }

    /// End canary `row` (in the database, then here).
    async fn end_canary(
        &self,
        row: &CanaryRow,
        outcome: &'static str,
        reason: &str,
    ) -> Result<(), DeployError> {
        let ended = self.db().end_canary(&row.component, row.seq, outcome, reason, crate::now_ms()).await?;
        self.inner.runtime.end_canary(row.seq, reason);
        self.inner.runtime.forget_canary(row.seq);
        if ended && let Some(kind) = ComponentKind::ALL.into_iter().find(|k| k.name() == row.component) {
            crate::telemetry::canary_ended(kind.name(), outcome);
            tracing::info!(component = %row.component, version = row.version, outcome, reason, "canary ended");
        }
        Ok(())
    }

    /// Make the live canary of `kind` its active version: ending it and
    /// activating its version are one transaction, which fails if the canary
    /// ended meanwhile (by a rollback, here or on another replica).
    pub async fn promote(&self, kind: ComponentKind) -> Result<Deployed, DeployError> {
        let name = kind.name();
        let _one = self.inner.lock.lock().await;
        let started = std::time::Instant::now();
        let Some(row) = self.live_canary(kind).await? else {
            return Err(DeployError::NoCanary(format!("{name} has no canary to promote")));
        };
        // From here this process no longer judges it: the operator decided
        // (refused if a verdict here came first).
        if !self.inner.runtime.begin_promote(row.seq) {
            let why = self.inner.runtime.ended_canary(row.seq).unwrap_or_else(|| "it ended".to_string());
            return Err(DeployError::NoCanary(format!("{name}'s canary was rolled back: {why}")));
        }
        let promoted = self.db().promote_canary(name, row.seq, crate::now_ms()).await;
        if !matches!(promoted, Ok(true)) {
            self.inner.runtime.abandon_promote(row.seq);
            promoted?;
            return Err(DeployError::NoCanary(format!("{name}'s canary ended meanwhile")));
        }
        let origin = if self.inner.runtime.promote_canary(row.seq) {
            "cached"
        } else {
            let prepared = self.prepare_version(kind, row.version).await?;
            let origin = origin_name(prepared.origin);
            self.inner.runtime.install(prepared);
            origin
        };
        self.inner.runtime.forget_canary(row.seq);
        crate::telemetry::canary_ended(name, "promoted");
        crate::telemetry::component_swap(name, "promote", started);
        tracing::info!(component = name, version = row.version, "canary promoted");
        let active = active_of(self.db(), name).await?;
        Ok(deployed(kind, &active, true, origin))
    }

    /// Record a canary this process ended by its own judgement (the
    /// runtime no longer gives it to new requests), retrying a database that
    /// refuses for a few seconds; after that the next sync tries again.
    pub async fn record_verdict(&self, verdict: crate::runtime::canary::Verdict) {
        let name = verdict.kind.name();
        tracing::warn!(component = name, version = verdict.version, reason = %verdict.reason,
            "canary rolled back automatically");
        let mut delay = std::time::Duration::from_millis(50);
        for attempt in 0..6 {
            match self
                .db()
                .end_canary(name, verdict.seq, "rolled_back", &verdict.reason, crate::now_ms())
                .await
            {
                Ok(ended) => {
                    if ended {
                        crate::telemetry::canary_ended(name, "rolled_back");
                    }
                    self.inner.runtime.forget_canary(verdict.seq);
                    return;
                }
                Err(e) if attempt == 5 => {
                    tracing::warn!(component = name, error = %e, "cannot record the canary's rollback yet")
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    async fn deploy_bytes(
        &self,
        kind: ComponentKind,
        bytes: Vec<u8>,
        signature: Option<&str>,
        source: String,
        options: DeployOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Deployed, DeployError> {
        let name = kind.name();
        let digest = digest_of(&bytes);
        progress(Progress::Checking {
            digest: digest.clone(),
            signature_required: self.inner.policy.required(),
        });
        self.inner.policy.verify(&digest, signature).map_err(DeployError::SignatureInvalid)?;
        contract::check(kind, &bytes).map_err(|m| match m {
            contract::Misfit::Invalid(m) => DeployError::InvalidComponent(m),
            contract::Misfit::Contract(m) => DeployError::ContractMismatch(m),
        })?;
        let _one = self.inner.lock.lock().await;
        if let Some(active) = self.db().active_component(name).await?
            && active.version.digest == digest
        {
            if options.canary.is_some() {
                return Err(DeployError::Conflict(format!(
                    "{name} version {} is this component already: nothing to try as a canary",
                    active.version.version
                )));
            }
            self.sync_locked(kind).await?;
            return Ok(deployed(kind, &active, false, "cached"));
        }
        if let Some(live) = self.live_canary_row().await? {
            if !options.replace {
                return Err(DeployError::Conflict(format!(
                    "{} has a canary running (version {}, {} % of requests; one canary at a time): promote \
                     it or roll it back first, or deploy with replace=true to end it",
                    live.component, live.version, live.share
                )));
            }
            self.end_canary(&live, "replaced", "replaced by a new deploy").await?;
        }
        let started = std::time::Instant::now();
        progress(Progress::Compiling);
        let (mut prepared, bytes) =
            prepare_off_thread(&self.inner.runtime, ComponentSource { kind, version: 0, bytes }).await?;
        let now = crate::now_ms();
        let version = self.db().put_component_version(name, &digest, &bytes, &source, now).await?;
        prepared.version = version;
        let precompiled = origin_name(prepared.origin);
        progress(Progress::Precompiled { origin: precompiled, ms: started.elapsed().as_millis() as u64 });
        if let Some(share) = options.canary {
            let Some(row) = self.db().start_canary(name, version, i64::from(share), now).await? else {
                return Err(DeployError::Conflict(format!("{name}: another canary started meanwhile")));
            };
            self.inner.runtime.end_other_canaries(row.seq);
            if !self.inner.runtime.install_canary(prepared, row.seq, share, now) {
                tracing::warn!(
                    component = name,
                    version,
                    "the canary could not start here; the next sync retries"
                );
            }
            progress(Progress::Canary { version, share });
            crate::telemetry::component_swap(name, "canary", started);
            tracing::info!(component = name, version, %digest, %source, share, "canary started");
            // As stored: a digest recorded before keeps its first source.
            let v = self
                .db()
                .component_version_by_digest(name, &digest)
                .await?
                .ok_or_else(|| DeployError::Internal(format!("{name} version {version} vanished")))?;
            return Ok(Deployed {
                component: name,
                version,
                digest: v.digest,
                source: v.source,
                changed: true,
                precompiled,
                canary: Some(share),
            });
        }
        self.db().activate_component(name, version, now).await?;
        self.inner.runtime.install(prepared);
        progress(Progress::Swapped { version });
        crate::telemetry::component_swap(name, "deploy", started);
        tracing::info!(component = name, version, %digest, %source, "deployed");
        let active = active_of(self.db(), name).await?;
        Ok(deployed(kind, &active, true, precompiled))
    }

    /// End the live canary of `kind`, if it has one (the stable version
    /// stays); else re-activate the version that was active before the
    /// current one.
    pub async fn rollback(&self, kind: ComponentKind) -> Result<Deployed, DeployError> {
        let name = kind.name();
        let _one = self.inner.lock.lock().await;
        let started = std::time::Instant::now();
        if let Some(live) = self.live_canary(kind).await? {
            self.end_canary(&live, "rolled_back", "rolled back by the operator").await?;
            crate::telemetry::component_swap(name, "canary_rollback", started);
            let active = active_of(self.db(), name).await?;
            return Ok(deployed(kind, &active, true, "cached"));
        }
        let live = self.db().component_activations(name, true, 2).await?;
        let [current, previous, ..] = live.as_slice() else {
            return Err(DeployError::NothingToRollBack(format!(
                "{name} has no earlier version to roll back to"
            )));
        };
        let prepared = self.prepare_version(kind, previous.version).await?;
        let precompiled = origin_name(prepared.origin);
        if !self.db().roll_back_component(name, current.seq, crate::now_ms()).await? {
            return Err(DeployError::Conflict(format!("{name} changed during the rollback; try again")));
        }
        self.inner.runtime.install(prepared);
        crate::telemetry::component_swap(name, "rollback", started);
        let active = active_of(self.db(), name).await?;
        tracing::info!(component = name, version = active.version.version, "rolled back");
        Ok(deployed(kind, &active, true, precompiled))
    }

    /// Compile (or load) stored version `version` of `kind`.
    async fn prepare_version(
        &self,
        kind: ComponentKind,
        version: i64,
    ) -> Result<crate::runtime::Prepared, DeployError> {
        let bytes = self.db().component_bytes(kind.name(), version).await?.ok_or_else(|| {
            DeployError::Internal(format!("{} version {version} has no bytes", kind.name()))
        })?;
        Ok(prepare_off_thread(&self.inner.runtime, ComponentSource { kind, version, bytes }).await?.0)
    }

    /// Make this process run the active version of every component, as the
    /// database says (after another replica deployed or rolled back).
    pub async fn sync(&self) -> Result<Vec<ComponentKind>, DeployError> {
        self.drop_ended_canary().await?;
        let _one = self.inner.lock.lock().await;
        // Canaries this process ended: record the end of one still live in
        // the database (its verdict could not be written then); forget
        // those that ended there, by us or by anyone.
        let live = self.live_canary_row().await?;
        for (seq, why) in self.inner.runtime.ended_canaries() {
            if let Some(row) = live.as_ref().filter(|l| l.seq == seq)
                && self.db().end_canary(&row.component, seq, "rolled_back", &why, crate::now_ms()).await?
                && let Some(kind) = ComponentKind::ALL.into_iter().find(|k| k.name() == row.component)
            {
                crate::telemetry::canary_ended(kind.name(), "rolled_back");
                tracing::info!(component = kind.name(), version = row.version, reason = %why, "canary's rollback recorded");
            }
            self.inner.runtime.forget_canary(seq);
        }
        let mut changed = Vec::new();
        for kind in ComponentKind::ALL {
            if self.sync_locked(kind).await? {
                changed.push(kind);
            }
        }
        Ok(changed)
    }

    async fn sync_locked(&self, kind: ComponentKind) -> Result<bool, DeployError> {
        let name = kind.name();
        let Some(active) = self.db().active_component(name).await? else { return Ok(false) };
        let running = self.inner.runtime.versions().into_iter().find(|v| v.kind == kind);
        let mut changed = false;
        if running.is_none_or(|r| r.version != active.version.version) {
            let started = std::time::Instant::now();
            let prepared = self.prepare_version(kind, active.version.version).await?;
            self.inner.runtime.install(prepared);
            crate::telemetry::component_swap(name, "sync", started);
            tracing::info!(
                component = name,
                version = active.version.version,
                "now running the version activated elsewhere"
            );
            changed = true;
        }
        Ok(self.sync_canary(kind, &active).await? || changed)
    }

    /// Stop giving new requests a canary the database says has ended (at
    /// once: not behind the registry's lock, which a deploy holds while it
    /// compiles).
    pub async fn drop_ended_canary(&self) -> Result<(), DeployError> {
        let Some(here) = self.inner.runtime.canary() else { return Ok(()) };
        let live = self.live_canary_row().await?;
        if live.is_none_or(|l| l.seq != here.seq) {
            self.inner.runtime.end_canary(here.seq, "ended elsewhere");
            self.inner.runtime.forget_canary(here.seq);
            tracing::info!(component = here.kind.name(), version = here.version, "canary ended elsewhere");
        }
        Ok(())
    }

    /// Make this process's canary of `kind` the database's live one (or none).
    async fn sync_canary(&self, kind: ComponentKind, active: &ActiveRow) -> Result<bool, DeployError> {
        let here = self.inner.runtime.canary().filter(|c| c.kind == kind);
        let Some(row) = self.live_canary(kind).await? else {
            // Ended elsewhere (or by us, now recorded).
            return Ok(match here {
                Some(c) => {
                    self.inner.runtime.end_canary(c.seq, "ended on another replica");
                    self.inner.runtime.forget_canary(c.seq);
                    true
                }
                None => false,
            });
        };
        if self.inner.runtime.ended_canary(row.seq).is_some() {
            // Ended here since `sync` looked; the next sync records it.
            return Ok(false);
        }
        if row.version == active.version.version {
            // Its version became active another way (promote itself ends the
            // canary in the same transaction): nothing left to try.
            self.db()
                .end_canary(
                    kind.name(),
                    row.seq,
                    "replaced",
                    "its version became the active one",
                    crate::now_ms(),
                )
                .await?;
            if let Some(c) = here {
                self.inner.runtime.end_canary(c.seq, "promoted");
                self.inner.runtime.forget_canary(c.seq);
            }
            return Ok(true);
        }
        if here.as_ref().is_some_and(|c| c.seq == row.seq) {
            return Ok(false);
        }
        if let Some(c) = here {
            self.inner.runtime.end_canary(c.seq, "replaced");
            self.inner.runtime.forget_canary(c.seq);
        }
        let prepared = self.prepare_version(kind, row.version).await?;
        // It may have ended while this process compiled it.
        if self.live_canary(kind).await?.is_none_or(|l| l.seq != row.seq) {
            return Ok(false);
        }
        let share = u8::try_from(row.share.clamp(1, 99)).unwrap_or(1);
        self.inner.runtime.end_other_canaries(row.seq);
        if !self.inner.runtime.install_canary(prepared, row.seq, share, row.started_at) {
            return Ok(false);
        }
        tracing::info!(
            component = kind.name(),
            version = row.version,
            share,
            "now running the canary started elsewhere"
        );
        Ok(true)
    }

    /// `GET /v1/admin/components`.
    pub async fn describe(&self) -> Result<Value, DeployError> {
        let running = self.inner.runtime.versions();
        let live = self.db().live_canaries().await?;
        let here = self.inner.runtime.canary();
        let mut out = Vec::new();
        for kind in ComponentKind::ALL {
            let name = kind.name();
            let versions = self.db().component_versions(name).await?;
            let activations = self.db().component_activations(name, false, HISTORY).await?;
            let active = self.db().active_component(name).await?;
            let run = running.iter().find(|r| r.kind == kind);
            // When the active version became active again after a rollback,
            // that is its activation time.
            let activated_at = active.as_ref().map(|a| {
                activations
                    .iter()
                    .filter(|x| x.seq > a.seq)
                    .filter_map(|x| x.rolled_back_at)
                    .max()
                    .unwrap_or(a.activated_at)
                    .max(a.activated_at)
            });
            out.push(json!({
                "name": name,
                "world": contract::world(kind),
                "exports": kind.row().export_names(),
                "active": active.as_ref().map(|a| json!({
                    "version": a.version.version,
                    "digest": a.version.digest,
                    "source": a.version.source,
                    "size": a.version.size,
                    "activated_at": activated_at,
                })),
                "running": run.map(|r| json!({
                    "version": r.version,
                    "digest": r.digest,
                    "precompiled": origin_name(r.origin),
                    // The canary this process gives its share of requests.
                    "canary": here.as_ref().filter(|h| h.kind == kind).map(|h| json!({
                        "version": h.version,
                        "share": h.share,
                    })),
                })),
                "canary": live.iter().find(|c| c.component == name).map(|c| {
                    let counted = here.as_ref().filter(|h| h.seq == c.seq);
                    json!({
                        "version": c.version,
                        "digest": versions.iter().find(|v| v.version == c.version).map(|v| v.digest.clone()),
                        "share": c.share,
                        "started_at": c.started_at,
                        "state": "running",
                        // What this replica counted (each judges its own).
                        "running_here": counted.is_some(),
                        "counts": counted.map(|h| json!({
                            "stable": h.stable.counts(),
                            "canary": h.canary.counts(),
                        })),
                    })
                }),
                "canaries": self.db().component_canaries(name, CANARY_HISTORY).await?,
                "versions": versions,
                "history": activations,
            }));
        }
        Ok(json!({ "components": out }))
    }
}

fn origin_name(o: crate::runtime::Origin) -> &'static str {
    match o {
        crate::runtime::Origin::Compiled => "compiled",
        crate::runtime::Origin::Cached => "cached",
    }
}

fn deployed(kind: ComponentKind, active: &ActiveRow, changed: bool, precompiled: &'static str) -> Deployed {
    Deployed {
        component: kind.name(),
        version: active.version.version,
        digest: active.version.digest.clone(),
        source: active.version.source.clone(),
        changed,
        precompiled,
        canary: None,
    }
}
