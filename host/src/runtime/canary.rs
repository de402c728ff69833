//! Canaries (SPEC §4, §6.3): a new version of one component serves a share
//! of new requests beside the stable set, each request wholly on one of the
//! two sets; the host counts what each set's requests did and ends the
//! canary by itself when its requests fail clearly more often than the
//! stable ones.
//!
//! The split: a request that names a cart (`/v1/carts/{id}…`) goes by a
//! hash of the cart id and the canary's number, so a shopper's cart reads
//! and checkout see one version, on every replica alike; any other request
//! by chance. The counts are this process's own (each replica judges its
//! own traffic, which the split makes a sample of the whole): no write to a
//! shared store on the request path, and a judgement that does not wait for
//! the slowest replica. Whichever replica ends the canary ends it in the
//! database, and the others follow within their sync (NOTIFY).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{Active, ActiveSet, ComponentKind};

/// `[deploy.canary]`: when a canary is rolled back by itself.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryPolicy {
    /// Requests the canary must have served (on this replica) before it is
    /// judged.
    pub min_requests: u64,
    /// How many times the stable version's failure rate the canary's may be.
    pub max_error_ratio: f64,
    /// A failure rate at or below this is never judged bad, whatever the
    /// stable version's (the absolute floor).
    pub min_error_rate: f64,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy { min_requests: 200, max_error_ratio: 2.0, min_error_rate: 0.02 }
    }
}

/// What the requests of one side of a canary did.
#[derive(Default, Debug)]
pub struct Tally {
    requests: AtomicU64,
    /// Requests in which a component trapped, ran out of time or memory.
    faults: AtomicU64,
    /// Requests answered 5xx.
    errors: AtomicU64,
    /// Requests with a fault or a 5xx (or both).
    failed: AtomicU64,
}

/// A snapshot of a [`Tally`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub requests: u64,
    pub faults: u64,
    pub errors_5xx: u64,
    pub failed: u64,
}

impl Tally {
    fn add(&self, fault: bool, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if fault {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if fault || error {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            errors_5xx: self.errors.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl Counts {
    fn rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.failed as f64 / self.requests as f64 }
    }
}

/// A live canary in this process.
pub struct Canary {
    /// Its number in the database (`component_canaries.seq`).
    pub seq: i64,
    pub kind: ComponentKind,
    pub version: i64,
    /// Percent of new requests, 1–99.
    pub share: u8,
    pub started_at: i64,
    pub(super) active: Arc<Active>,
    pub stable: Tally,
    pub canary: Tally,
    /// Set once, by whoever ends it first here.
    ended: AtomicBool,
}

impl Canary {
    pub(super) fn new(seq: i64, share: u8, started_at: i64, active: Arc<Active>) -> Canary {
        Canary {
            seq,
            kind: active.kind,
            version: active.version,
            share,
            started_at,
            active,
            stable: Tally::default(),
            canary: Tally::default(),
            ended: AtomicBool::new(false),
        }
    }

    /// Whether a request (naming `key`, a cart id, if any) goes to the canary.
    pub(super) fn takes(&self, key: Option<&str>) -> bool {
        let roll = match key {
            Some(key) => {
                use sha2::Digest;
                let hash =
                    sha2::Sha256::new().chain_update(self.seq.to_be_bytes()).chain_update(key).finalize();
                u64::from_be_bytes(hash[..8].try_into().unwrap_or_default()) % 100
            }
            None => rand::random::<u64>() % 100,
        };
        roll < u64::from(self.share)
    }

    /// Why the canary must end, if its requests so far fail clearly more
    /// often than the stable ones (`policy`).
    pub fn judge(&self, policy: &CanaryPolicy) -> Option<String> {
        let (canary, stable) = (self.canary.counts(), self.stable.counts());
        if canary.requests < policy.min_requests.max(1) {
            return None;
        }
        let (rate, stable_rate) = (canary.rate(), stable.rate());
        (rate > policy.min_error_rate && rate > stable_rate * policy.max_error_ratio).then(|| {
            format!(
                "{:.1} % of its {} requests failed ({} with a fault, {} answered 5xx) against {:.1} % of the \
                 stable version's {}; allowed: {}× the stable rate, and at least {:.1} %",
                rate * 100.0,
                canary.requests,
                canary.faults,
                canary.errors_5xx,
                stable_rate * 100.0,
                stable.requests,
                policy.max_error_ratio,
                policy.min_error_rate * 100.0
            )
        })
    }

    /// Mark it ended here; true for the first caller only.
    pub(super) fn end(&self) -> bool {
        !self.ended.swap(true, Ordering::AcqRel)
    }
}

/// What a request of a canary's time is part of: which side, and whether a
/// component of it faulted.
#[derive(Clone)]
pub struct Trial {
    pub canary: Arc<Canary>,
    pub on_canary: bool,
    /// Set when an instance of the request is created (it touched a
    /// component: only such requests are counted).
    pub(super) touched: Arc<AtomicBool>,
    pub(super) faulted: Arc<AtomicBool>,
}

impl Trial {
    pub(super) fn new(canary: Arc<Canary>, on_canary: bool) -> Trial {
        Trial { canary, on_canary, touched: Default::default(), faulted: Default::default() }
    }

    /// Count the request, answered `status`: on its side, if it touched a
    /// component.
    pub(super) fn count(&self, status: u16) {
        if !self.touched.load(Ordering::Relaxed) {
            return;
        }
        let side = if self.on_canary { &self.canary.canary } else { &self.canary.stable };
        side.add(self.faulted.load(Ordering::Relaxed), status >= 500);
    }
}

/// The live sets: the stable one, and with a canary the set that has the
/// canary in its component's place.
#[derive(Clone)]
pub(super) struct Live {
    pub stable: Arc<ActiveSet>,
    pub canary: Option<(Arc<Canary>, Arc<ActiveSet>)>,
}

impl Live {
    /// With the stable set replaced by `stable` (the canary's set follows).
    pub fn with_stable(&self, stable: ActiveSet) -> Live {
        let stable = Arc::new(stable);
        let canary =
            self.canary.as_ref().map(|(c, _)| (c.clone(), Arc::new(stable.with_active(c.active.clone()))));
        Live { stable, canary }
    }
}

/// A canary this process ended by itself, to be recorded (by the registry).
#[derive(Clone, Debug)]
pub struct Verdict {
    pub kind: ComponentKind,
    pub seq: i64,
    pub version: i64,
    pub reason: String,
}
