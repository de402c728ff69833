//! Shadow runs (SPEC §4): a merchant's candidate plugin runs beside the
//! active one on live pricing, on the same input, and is never applied; the
//! host compares the two outputs and keeps a report.
//!
//! Off the shopper's path by construction: a cart read only *offers* a job
//! to a bounded queue (`try_send`, never a wait) after its own pricing is
//! done. One worker task runs the jobs one at a time, each within the
//! merchant's plugin budgets, and then rests in proportion to the time the
//! run took ([`CPU_SHARE`]), so shadows as a whole use at most a fixed share
//! of one core whatever they do; a shadow that loops simply gets fewer runs.
//! Jobs offered while the queue is full are dropped and counted.
//! Reports are kept in the database (`plugin_shadows.report`), merged every
//! [`FLUSH_EVERY`] with a version check, so every replica adds to the same
//! report.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::io::{RunInput, RunOutput};
use super::limits::PluginLimits;
use super::runs::Diff;
use super::{Plugins, lock};

/// Jobs waiting for the worker; more are dropped.
pub const QUEUE: usize = 64;
/// The share of one core that shadow runs may use, over time.
pub const CPU_SHARE: f64 = 0.1;
/// How often the worker adds what it counted to the reports.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Differing carts kept as examples per report.
pub const EXAMPLES: usize = 5;

/// One live pricing to repeat with the candidate.
pub struct Job {
    pub merchant: String,
    pub digest: String,
    pub limits: PluginLimits,
    pub input: RunInput,
    pub active_outcome: &'static str,
    pub active: Option<RunOutput>,
}

/// A cart whose discounts differed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Example {
    pub at: i64,
    pub input: RunInput,
    pub active_outcome: String,
    pub active: Option<RunOutput>,
    pub shadow_outcome: String,
    pub shadow: Option<RunOutput>,
    pub diff: Diff,
}

/// What a shadow did so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Report {
    /// Live pricings the candidate ran on.
    pub runs: u64,
    /// Of those, the ones where its output was the active plugin's.
    pub identical: u64,
    /// The ones where it differed (discounts, refused codes or outcome).
    pub differing: u64,
    /// Σ (candidate's discounts − active plugin's), in minor units.
    pub discount_delta: i64,
    /// The candidate's failed runs, by kind (`instructions`, `deadline`, …).
    pub errors: BTreeMap<String, u64>,
    /// Pricings not repeated because the shadow queue was full.
    pub dropped: u64,
    /// Up to 5 differing carts.
    pub examples: Vec<Example>,
}

impl Report {
    fn merge(&mut self, more: &Report) {
        self.runs += more.runs;
        self.identical += more.identical;
        self.differing += more.differing;
        self.discount_delta = self.discount_delta.saturating_add(more.discount_delta);
        for (kind, n) in &more.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.dropped += more.dropped;
        for e in &more.examples {
            if self.examples.len() < EXAMPLES {
                self.examples.push(e.clone());
            }
        }
    }
}

/// The queue's sending half and what the worker has not flushed yet.
pub struct Shadows {
    tx: tokio::sync::mpsc::Sender<Job>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Job>>>,
    /// Counted since the last flush, by (merchant, digest).
    pending: std::sync::Mutex<HashMap<(String, String), Report>>,
}

impl Default for Shadows {
    fn default() -> Self {
        Shadows::new()
    }
}

impl Shadows {
    pub fn new() -> Shadows {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        Shadows { tx, rx: std::sync::Mutex::new(Some(rx)), pending: std::sync::Mutex::new(HashMap::new()) }
    }

    /// Offer `job`; never waits. A full queue drops it (and counts it).
    pub fn offer(&self, job: Job) {
        if let Err(e) = self.tx.try_send(job) {
            let job = e.into_inner();
            let mut pending = lock(&self.pending);
            pending.entry((job.merchant, job.digest)).or_default().dropped += 1;
            crate::telemetry::plugin_shadow_dropped();
        }
    }

    fn count(&self, merchant: &str, digest: &str, f: impl FnOnce(&mut Report)) {
        let mut pending = lock(&self.pending);
        f(pending.entry((merchant.to_string(), digest.to_string())).or_default());
    }

    fn take_pending(&self) -> HashMap<(String, String), Report> {
        std::mem::take(&mut *lock(&self.pending))
    }
}

/// Start the worker of `plugins`' shadow queue. It holds the plugin host
/// weakly: when the host goes (its queue's sender with it), the worker ends.
pub fn start(plugins: &Plugins) {
    let Some(mut rx) = lock(&plugins.inner.shadows.rx).take() else { return };
    let host = std::sync::Arc::downgrade(&plugins.inner);
    tokio::spawn(async move {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = rx.recv() => {
                    let Some(job) = job else { break };
                    let Some(inner) = host.upgrade() else { break };
                    let took = run(&Plugins { inner }, job).await;
                    // Rest in proportion: at most CPU_SHARE of a core over time.
                    let rest = took.mul_f64((1.0 - CPU_SHARE) / CPU_SHARE).min(Duration::from_secs(5));
                    tokio::time::sleep(rest).await;
                }
                _ = flush.tick() => {
                    let Some(inner) = host.upgrade() else { break };
                    flush_reports(&Plugins { inner }).await;
                }
            }
        }
    });
}

/// Run one job; how long it took.
async fn run(plugins: &Plugins, job: Job) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(job.limits.deadline_ms);
    let outcome = match plugins.load(&job.digest, deadline).await {
        Ok(compiled) => {
            super::sandbox::run(
                &plugins.inner.engine,
                &compiled,
                &job.digest,
                &job.limits,
                &job.input,
                deadline,
            )
            .await
        }
        Err(e) => super::sandbox::RunOutcome::failed(e),
    };
    let kind = outcome.result.as_ref().err().map(|e| e.kind).unwrap_or("ok");
    crate::telemetry::plugin_shadow_run(kind);
    let shadow = outcome.result.ok();
    let diff = Diff::between((job.active_outcome, job.active.as_ref()), (kind, shadow.as_ref()));
    plugins.inner.shadows.count(&job.merchant, &job.digest, |r| {
        r.runs += 1;
        if kind != "ok" {
            *r.errors.entry(kind.to_string()).or_default() += 1;
        }
        r.discount_delta = r.discount_delta.saturating_add(diff.discount_delta);
        if diff.is_empty() {
            r.identical += 1;
        } else {
            r.differing += 1;
            if r.examples.len() < EXAMPLES {
                r.examples.push(Example {
                    at: crate::now_ms(),
                    input: job.input,
                    active_outcome: job.active_outcome.to_string(),
                    active: job.active,
                    shadow_outcome: kind.to_string(),
                    shadow,
                    diff,
                });
            }
        }
    });
    started.elapsed()
}

/// Add what was counted to the stored reports (a report whose shadow was
/// replaced or ended meanwhile is left alone: the counts were of another).
pub async fn flush_reports(plugins: &Plugins) {
    for ((merchant, digest), counted) in plugins.inner.shadows.take_pending() {
        for _ in 0..5 {
            let row = match plugins.inner.db.shadow(&merchant).await {
                Ok(Some(row)) if row.digest == digest => row,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(%merchant, error = %e, "could not read a shadow report");
                    break;
                }
            };
            let mut report: Report = serde_json::from_str(&row.report).unwrap_or_default();
            report.merge(&counted);
            let Ok(text) = serde_json::to_string(&report) else { break };
            match plugins.inner.db.update_shadow_report(&merchant, &digest, row.version, &text).await {
                Ok(true) => break,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(%merchant, error = %e, "could not update a shadow report");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_add_up_and_keep_a_few_examples() {
        let example = Example {
            at: 1,
            input: RunInput {
                merchant_id: "m".into(),
                currency: "EUR".into(),
                lines: vec![],
                discount_codes: vec![],
                config: None,
            },
            active_outcome: "ok".into(),
            active: None,
            shadow_outcome: "trap".into(),
            shadow: None,
            diff: Diff::between(("ok", None), ("trap", None)),
        };
        let one = Report {
            runs: 3,
            identical: 1,
            differing: 2,
            discount_delta: -40,
            errors: [("trap".to_string(), 2)].into(),
            dropped: 1,
            examples: vec![example.clone(); 4],
        };
        let mut total = Report::default();
        total.merge(&one);
        total.merge(&one);
        assert_eq!((total.runs, total.identical, total.differing, total.discount_delta), (6, 2, 4, -80));
        assert_eq!((total.errors["trap"], total.dropped, total.examples.len()), (4, 2, EXAMPLES));
    }
}
