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

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::io::{RunInput, RunOutput, World};
use super::limits::PluginLimits;
use crate::storage::Db;
use crate::storage::plugins::{Retention, RunRow};

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
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig { keep: 1_000, keep_bytes: 16 << 20, sample_ok: 1.0, queue: 4_096 }
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
const BATCH: usize = 256;

/// The sending half of the recorder; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Recorded>,
    config: RecordingConfig,
}

impl Recorder {
    /// Start the writer task on `db`.
    pub fn start(db: Db, config: RecordingConfig) -> Recorder {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Recorded>(config.queue.max(1));
        let retention = Retention { runs: config.keep.max(1), bytes: config.keep_bytes.max(1) };
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let rows: Vec<RunRow> = batch.drain(..).filter_map(|r| r.row().ok()).collect();
                let mut delay = Duration::from_millis(50);
                // A database that is briefly unavailable delays the records;
                // one that stays so drops them (the queue bounds the memory).
                for attempt in 0..5 {
                    match db.record_plugin_runs(&rows, retention).await {
                        Ok(()) => break,
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
        });
        Recorder { tx, config }
    }

    /// Queue `run` for recording, unless sampled out or the queue is full.
    pub fn record(&self, run: Recorded) {
        if run.outcome == "ok"
            && self.config.sample_ok < 1.0
            && rand::random::<f64>() >= self.config.sample_ok
        {
            return;
        }
        if self.tx.try_send(run).is_err() {
            crate::telemetry::plugin_runs_dropped(1);
        }
    }

    /// Records queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// How a replay's output differs from the recorded one.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
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
