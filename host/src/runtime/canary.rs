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
    /// How sure the difference must be: the two-proportion z-score of the
    /// canary's failure rate over the stable one's. The judgement is made
    /// again after every canary request, so it must be high: at 5.0,
    /// simulated identical versions failing 1–5 % of 20,000 requests at
    /// shares 10–90 % were rolled back in 1 of 4,500 runs, while a canary
    /// failing 30 % was caught at `min_requests`.
    pub min_z_score: f64,
}

impl CanaryPolicy {
    /// A policy that can judge: at least one request, a ratio of at least
    /// 1, a floor in [0, 1), a finite z-score of at least 0.
    pub fn check(&self) -> Result<(), String> {
        let ok = self.min_requests >= 1
            && self.max_error_ratio.is_finite()
            && self.max_error_ratio >= 1.0
            && (0.0..1.0).contains(&self.min_error_rate)
            && self.min_z_score.is_finite()
            && self.min_z_score >= 0.0;
        ok.then_some(()).ok_or_else(|| {
            format!(
                "deploy.canary: min_requests ≥ 1, max_error_ratio ≥ 1, 0 ≤ min_error_rate < 1 and a finite \
                 min_z_score ≥ 0 (got {self:?})"
            )
        })
    }
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy { min_requests: 200, max_error_ratio: 2.0, min_error_rate: 0.02, min_z_score: 5.0 }
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

/// The judgement of [`Canary::judge`] on counts: bad when the canary has
/// served `min_requests`, fails more than `min_error_rate` and more than
/// `max_error_ratio` × the stable rate, and the difference has a z-score
/// of at least `min_z_score` (pooled two-proportion test; a stable side
/// with no requests counts as failing never, with the canary's own
/// variance).
pub fn verdict(canary: &Counts, stable: &Counts, policy: &CanaryPolicy) -> Option<String> {
    if canary.requests < policy.min_requests.max(1) {
        return None;
    }
    let (rate, stable_rate) = (canary.rate(), stable.rate());
    if rate <= policy.min_error_rate || rate <= stable_rate * policy.max_error_ratio {
        return None;
    }
    let (n_c, n_s) = (canary.requests as f64, stable.requests as f64);
    let pooled = (canary.failed + stable.failed) as f64 / (n_c + n_s);
    let spread = if n_s > 0.0 { 1.0 / n_c + 1.0 / n_s } else { 1.0 / n_c };
    let se = (pooled * (1.0 - pooled) * spread).sqrt();
    let z = if se > 0.0 { (rate - stable_rate) / se } else { f64::INFINITY };
    (z >= policy.min_z_score).then(|| {
        format!(
            "{:.1} % of its {} requests failed ({} with a fault, {} answered 5xx) against {:.1} % of the \
             stable version's {} (z = {z:.1}); allowed: {}× the stable rate, at least {:.1} %, z below {}",
            rate * 100.0,
            canary.requests,
            canary.faults,
            canary.errors_5xx,
            stable_rate * 100.0,
            stable.requests,
            policy.max_error_ratio,
            policy.min_error_rate * 100.0,
            policy.min_z_score
        )
    })
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
    /// Set while the operator's promote is being committed: the canary is
    /// no longer judged (the operator's decision, taken first, stands).
    promoting: AtomicBool,
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
            promoting: AtomicBool::new(false),
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
        if self.promoting() {
            return None;
        }
        verdict(&self.canary.counts(), &self.stable.counts(), policy)
    }

    /// Mark it ended here; true for the first caller only.
    pub(super) fn end(&self) -> bool {
        !self.ended.swap(true, Ordering::AcqRel)
    }

    pub(super) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(super) fn set_promoting(&self, on: bool) {
        self.promoting.store(on, Ordering::Release);
    }

    pub(super) fn promoting(&self) -> bool {
        self.promoting.load(Ordering::Acquire)
    }
}

/// What a request of a canary's time is part of: which side, and whether a
/// component of it faulted.
#[derive(Clone)]
pub struct Trial {
    pub canary: Arc<Canary>,
    pub on_canary: bool,
    /// Set when the request creates an instance of the canary's component
    /// (on either side): only such requests are counted, so a canary of a
    /// component few requests use is judged on those.
    pub(super) touched: Arc<AtomicBool>,
    pub(super) faulted: Arc<AtomicBool>,
}

impl Trial {
    pub(super) fn new(canary: Arc<Canary>, on_canary: bool) -> Trial {
        Trial { canary, on_canary, touched: Default::default(), faulted: Default::default() }
    }

    /// Count the request, answered `status`: on its side, if it used the
    /// canary's component.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Canary `seq` of a catalog version 2 (no compiled component behind it).
    fn catalog_canary(seq: i64, share: u8) -> Canary {
        let active = Arc::new(Active {
            kind: ComponentKind::Catalog,
            version: 2,
            digest: String::new(),
            origin: crate::runtime::Origin::Compiled,
            pre: Arc::new(()),
        });
        Canary::new(seq, share, 0, active)
    }

    fn counts(requests: u64, failed: u64) -> Counts {
        Counts { requests, faults: failed, errors_5xx: 0, failed }
    }

    #[test]
    fn ordinary_samples_of_one_rate_are_not_a_difference() {
        let policy = CanaryPolicy::default();
        // 2.5 % against 0.5 % of 200 each: above the floor and the ratio, but
        // well within what one 1.5 % rate gives.
        assert_eq!(verdict(&counts(200, 5), &counts(200, 1), &policy), None);
        // Too few canary requests yet, however bad.
        assert_eq!(verdict(&counts(199, 199), &counts(200, 0), &policy), None);
        // Below the floor, or within the ratio.
        assert_eq!(verdict(&counts(10_000, 150), &counts(10_000, 0), &policy), None);
        assert_eq!(verdict(&counts(10_000, 1_000), &counts(10_000, 600), &policy), None);
    }

    #[test]
    fn a_clear_difference_is_judged_bad_with_the_numbers() {
        let policy = CanaryPolicy::default();
        let why = verdict(&counts(200, 60), &counts(200, 0), &policy).expect("30 % against 0 %");
        assert!(why.starts_with("30.0 % of its 200 requests failed"), "{why}");
        assert!(verdict(&counts(2_000, 120), &counts(2_000, 20), &policy).is_some(), "6 % against 1 %");
        // A stable side with no requests yet: the canary's own numbers decide.
        assert!(verdict(&counts(200, 60), &counts(0, 0), &policy).is_some());
    }

    /// Identical versions, sequentially judged after every canary request
    /// as the host does: no false alarm over 100 runs of 20,000 requests at
    /// a few failure rates and shares (a seeded generator, so the same every
    /// time); and a canary failing 30 % is caught as soon as it may be.
    #[test]
    fn sequential_judgement_has_no_false_alarm_and_catches_a_bad_canary() {
        let policy = CanaryPolicy::default();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut run = |share: f64, canary_rate: f64, stable_rate: f64| -> Option<u64> {
            let (mut c, mut s) = (counts(0, 0), counts(0, 0));
            for _ in 0..20_000 {
                if next() < share {
                    c.requests += 1;
                    c.failed += u64::from(next() < canary_rate);
                    if verdict(&c, &s, &policy).is_some() {
                        return Some(c.requests);
                    }
                } else {
                    s.requests += 1;
                    s.failed += u64::from(next() < stable_rate);
                }
            }
            None
        };
        for (share, rate) in [(0.1, 0.03), (0.5, 0.02), (0.5, 0.05), (0.9, 0.015)] {
            for round in 0..25 {
                assert_eq!(
                    run(share, rate, rate),
                    None,
                    "false alarm: share {share}, rate {rate}, round {round}"
                );
            }
        }
        for share in [0.1, 0.5] {
            assert_eq!(run(share, 0.3, 0.0), Some(policy.min_requests), "share {share}");
        }
    }

    #[test]
    fn a_canary_being_promoted_is_not_judged_and_policies_are_checked() {
        let c = catalog_canary(1, 50);
        for i in 0..300 {
            c.canary.add(i % 3 == 0, false);
            c.stable.add(false, false);
        }
        let policy = CanaryPolicy::default();
        assert!(c.judge(&policy).is_some(), "a third of its requests failed");
        c.set_promoting(true);
        assert_eq!(c.judge(&policy), None, "the operator's promote stands");
        c.set_promoting(false);
        assert!(c.judge(&policy).is_some());

        assert_eq!(policy.check(), Ok(()));
        for bad in [
            CanaryPolicy { min_z_score: f64::NAN, ..policy },
            CanaryPolicy { min_requests: 0, ..policy },
            CanaryPolicy { max_error_ratio: 0.5, ..policy },
            CanaryPolicy { min_error_rate: 1.0, ..policy },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_carts_side_is_fixed_by_the_cart_and_the_canary() {
        let canary = |seq| catalog_canary(seq, 30);
        // Two replicas (two instances of canary 7) and a later canary 8.
        let (here, there, later) = (canary(7), canary(7), canary(8));
        let carts: Vec<String> = (0..2_000).map(|i| format!("c_{i:016x}")).collect();
        let on = |c: &Canary| carts.iter().map(|k| c.takes(Some(k))).collect::<Vec<bool>>();
        let (a, b, c) = (on(&here), on(&there), on(&later));
        assert_eq!(a, b, "every replica puts a cart on the same side");
        assert_eq!(a, on(&here), "and always the same");
        let taken = a.iter().filter(|t| **t).count();
        assert!((480..=720).contains(&taken), "{taken} of 2000 carts on a 30 % canary");
        assert_ne!(a, c, "a new canary draws the carts anew");
    }
}
