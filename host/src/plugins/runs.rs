//! Recorded production runs of merchants' plugins (SPEC §4): each run's
//! input, configuration, limits, digest, world, outcome, usage and log, kept
//! per merchant within a retention (count and bytes), so that any of them
//! can be looked at and replayed exactly ([`super::Plugins::replay`]).
//!
//! Recording is off the shopper's path: a run hands its record to a bounded
//! queue and a writer task stores them in batches. Under a load the writer
//! cannot keep up with, records are dropped (counted in
//! `mercato_plugin_runs_dropped_total`), never queued without bound.
//! Successful runs may be sampled (`plugin_runs.sample_ok`); failures are
//! always recorded.
//!
//! Every run is also *counted* (before any sampling, also runs that never
//! got to execute): per merchant and binary, runs by outcome and histograms
//! of instructions and host time ([`PluginMetrics`]), gathered in memory and
//! added to the database's counts every [`COUNT_EVERY`] (all replicas add to
//! the same rows). A database that refuses them keeps them in memory for the
//! next try; a process that stops loses at most its last second of counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::io::{RunInput, RunOutput, World};
use super::limits::PluginLimits;
use crate::storage::Db;
use crate::storage::plugins::{CountRow, Retention, RunRow};

/// `[plugin_runs]`: how recorded runs are kept.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// Runs kept per merchant (the newest).
    pub keep: i64,
    /// Bytes of recorded runs kept per merchant (the newest that fit).
    pub keep_bytes: i64,
    /// The share of successful runs recorded, 0.0 to 1.0 (failures: all).
    pub sample_ok: f64,
    /// Records waiting for the writer; more are dropped.
    pub queue: usize,
    /// Bytes of records waiting for the writer; more are dropped.
    pub queue_bytes: usize,
    /// Distinct plugin binaries a merchant's kept runs may refer to (runs of
    /// older binaries go, and so do those binaries): the stored binaries
    /// that recorded runs keep are bounded too.
    pub keep_binaries: i64,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            keep: 1_000,
            keep_bytes: 16 << 20,
            sample_ok: 1.0,
            queue: 4_096,
            queue_bytes: 64 << 20,
            keep_binaries: 10,
        }
    }
}

/// What one run used of its budgets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub instructions: u64,
    pub memory_bytes: u64,
    /// Host time; not part of what a replay must reproduce.
    pub duration_us: u64,
}

/// Why a run gave nothing usable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunFailure {
    pub kind: String,
    pub message: String,
}

/// One recorded run, as stored and as `GET …/runs` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recorded {
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    pub merchant_id: String,
    pub digest: String,
    pub world: World,
    /// The budgets the run had.
    pub limits: PluginLimits,
    pub input: RunInput,
    /// `ok` or the error kind.
    pub outcome: String,
    pub output: Option<RunOutput>,
    pub error: Option<RunFailure>,
    pub usage: Usage,
    /// What it printed (capped).
    pub log: String,
    /// False for a run the host's clock stopped (its deadline in real time,
    /// a request deadline, a wait for a compile or a run slot): where such a
    /// run ends depends on the machine, so its replay is not expected to be
    /// identical. Every other run replays bit for bit.
    #[serde(default = "yes")]
    pub reproducible: bool,
}

fn yes() -> bool {
    true
}

impl Recorded {
    pub fn row(&self) -> Result<RunRow, serde_json::Error> {
        Ok(RunRow {
            seq: 0,
            id: self.id.clone(),
            merchant_id: self.merchant_id.clone(),
            at: self.at,
            digest: self.digest.clone(),
            outcome: self.outcome.clone(),
            record: serde_json::to_string(self)?,
        })
    }

    pub fn from_row(row: &RunRow) -> Result<Recorded, serde_json::Error> {
        serde_json::from_str(&row.record)
    }
}

/// A fresh public run id.
pub fn new_id() -> String {
    format!("run_{:024x}", rand::random::<u128>() >> 32)
}

/// Most records one batch writes.
const BATCH: usize = 1_024;
/// Least time between two batches.
const WRITE_EVERY: Duration = Duration::from_millis(100);

/// Write one batch; a database that is briefly unavailable delays it, one
/// that stays so drops it (the queue bounds the memory).
async fn write(db: &Db, rows: &[RunRow], retention: Retention) {
    let mut delay = Duration::from_millis(50);
    for attempt in 0..5 {
        match db.record_plugin_runs(rows, retention).await {
            Ok(()) => return,
            Err(e) if attempt == 4 => {
                tracing::warn!(error = %e, runs = rows.len(), "could not record plugin runs; dropped");
                crate::telemetry::plugin_runs_dropped(rows.len());
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// How often the counts gathered in memory are added to the database's.
pub const COUNT_EVERY: Duration = Duration::from_secs(1);

/// Upper bounds of the host time histogram's buckets, in µs (one more
/// bucket above the last).
pub const DURATION_BOUNDS_US: [u64; 13] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];
/// Upper bounds of the instructions histogram's buckets.
pub const INSTRUCTION_BOUNDS: [u64; 9] = [
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
    100_000_000_000,
];

/// What one of a merchant's plugin binaries did in production, on every
/// replica (`GET /v1/merchant/pricing-plugin`, `mercato plugin status`):
/// every run counted, sampled or not, as of the last second or so.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PluginMetrics {
    pub runs: i64,
    /// Runs by outcome: `ok` or the error kind.
    pub by_outcome: BTreeMap<String, i64>,
    /// Runs by instructions used: each bucket counts those above the bound
    /// of the one before, up to its own `le` (the last has none).
    pub instructions: Vec<Bucket>,
    /// Runs by host time (µs), bucketed the same way.
    pub duration_us: Vec<Bucket>,
}

/// One histogram bucket of [`PluginMetrics`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Bucket {
    /// Upper bound (inclusive); none for the last bucket.
    pub le: Option<u64>,
    pub runs: i64,
}

impl PluginMetrics {
    /// From the stored counts of one binary.
    pub fn of(rows: &[CountRow]) -> PluginMetrics {
        let find = |metric: &str, bucket: &str| {
            rows.iter().find(|r| r.metric == metric && r.bucket == bucket).map_or(0, |r| r.runs)
        };
        let histogram = |metric: &str, bounds: &[u64]| {
            bounds
                .iter()
                .map(|b| Some(*b))
                .chain([None])
                .map(|le| Bucket { le, runs: find(metric, &le.map_or("inf".to_string(), |b| b.to_string())) })
                .collect()
        };
        let by_outcome: BTreeMap<String, i64> =
            rows.iter().filter(|r| r.metric == "outcome").map(|r| (r.bucket.clone(), r.runs)).collect();
        PluginMetrics {
            runs: by_outcome.values().sum(),
            by_outcome,
            instructions: histogram("instructions", &INSTRUCTION_BOUNDS),
            duration_us: histogram("duration_us", &DURATION_BOUNDS_US),
        }
    }
}

/// The index of the bucket of `bounds` that `value` falls in.
fn bucket_of(bounds: &[u64], value: u64) -> usize {
    bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len())
}

/// Counts of one binary not yet added to the database's.
#[derive(Default)]
struct Tally {
    by_outcome: BTreeMap<String, i64>,
    instructions: [i64; INSTRUCTION_BOUNDS.len() + 1],
    duration_us: [i64; DURATION_BOUNDS_US.len() + 1],
}

/// (merchant, digest) → what its runs did since the last write.
type Tallies = HashMap<(String, String), Tally>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn count_rows(tallies: Tallies) -> Vec<CountRow> {
    let mut rows = Vec::new();
    for ((merchant, digest), t) in tallies {
        let mut row = |metric: &str, bucket: String, runs: i64| {
            if runs > 0 {
                rows.push(CountRow {
                    merchant_id: merchant.clone(),
                    digest: digest.clone(),
                    metric: metric.to_string(),
                    bucket,
                    runs,
                });
            }
        };
        for (kind, runs) in t.by_outcome {
            row("outcome", kind, runs);
        }
        for (bounds, counts, metric) in [
            (&INSTRUCTION_BOUNDS[..], &t.instructions[..], "instructions"),
            (&DURATION_BOUNDS_US[..], &t.duration_us[..], "duration_us"),
        ] {
            for (i, runs) in counts.iter().enumerate() {
                row(metric, bounds.get(i).map_or("inf".to_string(), u64::to_string), *runs);
            }
        }
    }
    rows
}

/// Add the counts gathered every [`COUNT_EVERY`] until the recorder is
/// gone. Those the database refuses stay pending, summed by row (so their
/// memory is bounded by the rows, not by the time the database is away),
/// and go with the next try.
async fn count_writer(db: Db, tallies: Weak<Mutex<Tallies>>) {
    let mut tick = tokio::time::interval(COUNT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: BTreeMap<(String, String, String, String), i64> = BTreeMap::new();
    loop {
        tick.tick().await;
        let Some(shared) = tallies.upgrade() else { return };
        let taken = std::mem::take(&mut *lock(&shared));
        drop(shared);
        for r in count_rows(taken) {
            *pending.entry((r.merchant_id, r.digest, r.metric, r.bucket)).or_default() += r.runs;
        }
        if pending.is_empty() {
            continue;
        }
        let rows: Vec<CountRow> = pending
            .iter()
            .map(|((merchant_id, digest, metric, bucket), runs)| CountRow {
                merchant_id: merchant_id.clone(),
                digest: digest.clone(),
                metric: metric.clone(),
                bucket: bucket.clone(),
                runs: *runs,
            })
            .collect();
        match db.add_plugin_counts(&rows).await {
            Ok(()) => pending.clear(),
            Err(e) => tracing::warn!(error = %e, "could not add plugin run counts; kept for the next try"),
        }
    }
}

/// The sending half of the recorder; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<(Recorded, usize)>,
    config: RecordingConfig,
    /// Bytes of the records queued.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tallies: Arc<Mutex<Tallies>>,
}

impl Recorded {
    /// About what the record holds in memory.
    fn weight(&self) -> usize {
        let lines: usize =
            self.input.lines.iter().map(|l| l.sku.len() + l.product_id.len() + l.title.len() + 48).sum();
        let output = self.output.as_ref().map_or(0, |o| {
            o.discounts.iter().map(|d| d.sku.len() + d.label.len() + 48).sum::<usize>()
                + o.rejected_codes.iter().map(|r| r.code.len() + r.reason.len() + 16).sum::<usize>()
        });
        512 + lines
            + output
            + self.input.config.as_ref().map_or(0, String::len)
            + self.input.discount_codes.iter().map(|c| c.len() + 24).sum::<usize>()
            + self.log.len()
            + self.error.as_ref().map_or(0, |e| e.message.len())
    }
}

impl Recorder {
    /// Start the writer task on `db`.
    pub fn start(db: Db, config: RecordingConfig) -> Recorder {
        let db_for_counts = db.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Recorded, usize)>(config.queue.max(1));
        let retention = Retention {
            runs: config.keep.max(1),
            bytes: config.keep_bytes.max(1),
            binaries: config.keep_binaries.max(1),
        };
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = queued.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut last = tokio::time::Instant::now();
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                // At most one write (and one pruning) per WRITE_EVERY: under
                // load, records gather into big batches instead of many
                // small transactions that each prune.
                let since = last.elapsed();
                if since < WRITE_EVERY && batch.len() < BATCH {
                    tokio::time::sleep(WRITE_EVERY - since).await;
                    let room = BATCH - batch.len();
                    if room > 0 {
                        let mut more = Vec::with_capacity(room);
                        while more.len() < room {
                            match rx.try_recv() {
                                Ok(r) => more.push(r),
                                Err(_) => break,
                            }
                        }
                        batch.extend(more);
                    }
                }
                last = tokio::time::Instant::now();
                let weight: usize = batch.iter().map(|(_, w)| w).sum();
                // Serializing a big batch is CPU work: off the async workers,
                // so shoppers' requests never wait behind it.
                let records = std::mem::take(&mut batch);
                let rows: Vec<RunRow> = tokio::task::spawn_blocking(move || {
                    records.into_iter().filter_map(|(r, _)| r.row().ok()).collect()
                })
                .await
                .unwrap_or_default();
                // Each batch on its own task: a panic in one (a driver bug, a
                // decode) loses that batch, not the recorder.
                let (db, n) = (db.clone(), rows.len());
                let written = tokio::spawn(async move { write(&db, &rows, retention).await }).await;
                if let Err(e) = written {
                    tracing::error!(error = %e, runs = n, "recording plugin runs panicked; the batch is dropped");
                    crate::telemetry::plugin_runs_dropped(n);
                }
                counted.fetch_sub(weight, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let tallies = Arc::new(Mutex::new(Tallies::new()));
        tokio::spawn(count_writer(db_for_counts, Arc::downgrade(&tallies)));
        Recorder { tx, config, queued, tallies }
    }

    /// Count one run of `merchant`'s binary `digest` (every run, recorded
    /// or not).
    pub fn count(&self, merchant: &str, digest: &str, outcome: &str, instructions: u64, duration_us: u64) {
        let mut tallies = lock(&self.tallies);
        let key = (merchant.to_string(), digest.to_string());
        let t = tallies.entry(key).or_default();
        *t.by_outcome.entry(outcome.to_string()).or_default() += 1;
        t.instructions[bucket_of(&INSTRUCTION_BOUNDS, instructions)] += 1;
        t.duration_us[bucket_of(&DURATION_BOUNDS_US, duration_us)] += 1;
    }

    /// Queue `run` for recording, unless sampled out or the queue is full
    /// (by count or by bytes).
    pub fn record(&self, run: Recorded) {
        use std::sync::atomic::Ordering;
        if run.outcome == "ok"
            && self.config.sample_ok < 1.0
            && rand::random::<f64>() >= self.config.sample_ok
        {
            return;
        }
        let weight = run.weight();
        if self.queued.fetch_add(weight, Ordering::Relaxed) + weight > self.config.queue_bytes {
            self.queued.fetch_sub(weight, Ordering::Relaxed);
            crate::telemetry::plugin_runs_dropped(1);
            return;
        }
        if let Err(e) = self.tx.try_send((run, weight)) {
            self.queued.fetch_sub(weight, Ordering::Relaxed);
            crate::telemetry::plugin_runs_dropped(1);
            if matches!(e, tokio::sync::mpsc::error::TrySendError::Closed(_)) {
                tracing::error!("the plugin run recorder has stopped; runs are not recorded");
            }
        }
    }
}

/// How a replay's output differs from the recorded one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Diff {
    /// Discounts (sku, label, amount, code) the recorded run gave and the replay did not.
    pub removed: Vec<super::io::OutputDiscount>,
    /// Discounts the replay gave and the recorded run did not.
    pub added: Vec<super::io::OutputDiscount>,
    /// Codes refused only by the recorded run / only by the replay.
    pub codes_no_longer_refused: Vec<super::io::RejectedCode>,
    pub codes_newly_refused: Vec<super::io::RejectedCode>,
    /// Total discount of the replay minus the recorded one, in minor units.
    pub discount_delta: i64,
    pub outcome_before: String,
    pub outcome_after: String,
}

impl Diff {
    pub fn between(before: (&str, Option<&RunOutput>), after: (&str, Option<&RunOutput>)) -> Diff {
        let empty = RunOutput::default();
        let (b, a) = (before.1.unwrap_or(&empty), after.1.unwrap_or(&empty));
        let minus = |x: &Vec<super::io::OutputDiscount>, y: &Vec<super::io::OutputDiscount>| {
            let mut y = y.clone();
            let mut out = Vec::new();
            for d in x {
                match y.iter().position(|e| e == d) {
                    Some(i) => {
                        y.swap_remove(i);
                    }
                    None => out.push(d.clone()),
                }
            }
            out
        };
        let total =
            |o: &RunOutput| o.discounts.iter().map(|d| d.amount.amount).fold(0i64, i64::saturating_add);
        Diff {
            removed: minus(&b.discounts, &a.discounts),
            added: minus(&a.discounts, &b.discounts),
            codes_no_longer_refused: b
                .rejected_codes
                .iter()
                .filter(|r| !a.rejected_codes.contains(r))
                .cloned()
                .collect(),
            codes_newly_refused: a
                .rejected_codes
                .iter()
                .filter(|r| !b.rejected_codes.contains(r))
                .cloned()
                .collect(),
            discount_delta: total(a).saturating_sub(total(b)),
            outcome_before: before.0.to_string(),
            outcome_after: after.0.to_string(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.added.is_empty()
            && self.codes_no_longer_refused.is_empty()
            && self.codes_newly_refused.is_empty()
            && self.outcome_before == self.outcome_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::io::{Amount, OutputDiscount};

    fn d(sku: &str, amount: i64) -> OutputDiscount {
        OutputDiscount {
            sku: sku.into(),
            label: "x".into(),
            amount: Amount { amount, currency: "EUR".into() },
            code: None,
        }
    }

    #[test]
    fn a_diff_names_what_changed_and_only_that() {
        let before =
            RunOutput { discounts: vec![d("a", 100), d("b", 50), d("b", 50)], rejected_codes: vec![] };
        let same = Diff::between(("ok", Some(&before)), ("ok", Some(&before.clone())));
        assert!(same.is_empty(), "{same:?}");
        let after = RunOutput { discounts: vec![d("b", 50), d("a", 120)], rejected_codes: vec![] };
        let diff = Diff::between(("ok", Some(&before)), ("ok", Some(&after)));
        assert_eq!(diff.removed, vec![d("a", 100), d("b", 50)]);
        assert_eq!(diff.added, vec![d("a", 120)]);
        assert_eq!(diff.discount_delta, -30);
        let failed = Diff::between(("ok", Some(&before)), ("trap", None));
        assert!(!failed.is_empty());
        assert_eq!(failed.discount_delta, -200);
    }
}
