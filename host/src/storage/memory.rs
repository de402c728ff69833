//! The in-memory backend (`memory:`): every table in one map under one lock,
//! so each operation — a transaction included — is atomic by holding it (no
//! lock is held across an await). Nothing survives the process. It gives the
//! answers the SQL backends give (the shared storage suite runs on all three)
//! and serves the fast test tier and throwaway shops.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::accounts::{Accounts, MerchantRow};
use super::components::{ActivationRow, ActiveRow, Components, VersionRow};
use super::events::{
    Attempt, DeliveryRow, DeliveryStatus, EventRow, Events, MAX_EVENTS_READ, WebhookRow, Webhooks,
};
use super::kv::{self, KeyValue, LIST_PAGE, Scope, Versioned, check_batch};
use super::plugins::{
    CountRow, PluginErrorRow, PluginRow, Plugins, RECENT_ERRORS, Retention, RunRow, ShadowRow,
};
use super::tx::{self, Event, Failed, Op, Outcome, Precondition, Transactions, Write, counter_value};
use super::{Backend, Result, StorageError};

/// `(namespace, bucket, key)`: byte order, as SQLite's keys.
type Key = (String, String, String);

#[derive(Debug, Default)]
pub struct Memory {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    kv: BTreeMap<Key, Versioned>,
    merchants: HashMap<String, MerchantRow>,
    settings: HashMap<String, String>,
    /// Per component, oldest first.
    versions: HashMap<String, Vec<(VersionRow, Vec<u8>)>>,
    /// Per component, by ascending `seq`.
    activations: HashMap<String, Vec<ActivationRow>>,
    blobs: HashMap<String, Vec<u8>>,
    /// Merchant → (digest, uploaded_at).
    plugins: BTreeMap<String, (String, i64)>,
    limits: HashMap<String, String>,
    /// Merchant → errors, newest last.
    errors: HashMap<String, VecDeque<PluginErrorRow>>,
    configs: HashMap<String, String>,
    /// Merchant → recorded runs, oldest first.
    runs: HashMap<String, VecDeque<RunRow>>,
    run_seq: i64,
    shadows: HashMap<String, ShadowRow>,
    /// Every canary, oldest first.
    canaries: Vec<super::components::CanaryRow>,
    /// (merchant, digest, metric, bucket) → runs.
    counts: BTreeMap<(String, String, String, String), i64>,
    /// The outbox, by ascending `seq`, and the ids in it.
    events: Vec<EventRow>,
    event_ids: BTreeSet<String>,
    event_seq: i64,
    /// Lease name → (holder, until).
    leases: HashMap<String, (String, i64)>,
    /// Event seq → each merchant's view.
    event_views: HashMap<i64, Vec<(String, Vec<u8>)>>,
    webhooks: HashMap<String, WebhookRow>,
    /// By ascending `seq`.
    deliveries: Vec<DeliveryRow>,
    delivery_seq: i64,
}

impl Memory {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-applied change (each
        // operation writes only after it has decided), so poisoning is moot.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(s: Scope<'_>, key: &str) -> Key {
    (s.namespace.to_string(), s.bucket.to_string(), key.to_string())
}

fn counter(key: &str, bytes: &[u8]) -> Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| StorageError::Invalid(format!("value of {key:?} is not an integer")))
}

#[async_trait]
impl KeyValue for Memory {
    async fn kv_get(&self, s: Scope<'_>, k: &str) -> Result<Option<Versioned>> {
        Ok(self.state().kv.get(&key(s, k)).cloned())
    }

    async fn kv_set(&self, s: Scope<'_>, k: &str, value: &[u8]) -> Result<()> {
        self.state().kv.insert(key(s, k), Versioned { value: value.to_vec(), version: kv::new_version() });
        Ok(())
    }

    async fn kv_delete(&self, s: Scope<'_>, k: &str) -> Result<()> {
        self.state().kv.remove(&key(s, k));
        Ok(())
    }

    async fn kv_list(&self, s: Scope<'_>, after: Option<&str>) -> Result<(Vec<String>, bool)> {
        let state = self.state();
        let from = key(s, after.unwrap_or(""));
        let mut keys: Vec<String> = state
            .kv
            .range((Bound::Excluded(from), Bound::Unbounded))
            .take_while(|((ns, bucket, _), _)| ns == s.namespace && bucket == s.bucket)
            .take(LIST_PAGE + 1)
            .map(|((_, _, k), _)| k.clone())
            .collect();
        let more = keys.len() > LIST_PAGE;
        keys.truncate(LIST_PAGE);
        Ok((keys, more))
    }

    async fn kv_swap(&self, s: Scope<'_>, k: &str, expected: Option<i64>, value: &[u8]) -> Result<bool> {
        let mut state = self.state();
        let k = key(s, k);
        let current = state.kv.get(&k).map(|v| v.version);
        if current != expected {
            return Ok(false);
        }
        state.kv.insert(k, Versioned { value: value.to_vec(), version: kv::new_version() });
        Ok(true)
    }

    async fn kv_increment(&self, s: Scope<'_>, k: &str, delta: i64) -> Result<i64> {
        let mut state = self.state();
        let full = key(s, k);
        let old = match state.kv.get(&full) {
            None => 0,
            Some(v) => counter(k, &v.value)?,
        };
        let new = old
            .checked_add(delta)
            .ok_or_else(|| StorageError::Invalid(format!("incrementing {k:?} overflows")))?;
        state.kv.insert(full, Versioned { value: new.to_string().into_bytes(), version: kv::new_version() });
        Ok(new)
    }

    async fn kv_get_many(&self, s: Scope<'_>, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        check_batch(keys.len())?;
        let state = self.state();
        Ok(keys.iter().map(|k| state.kv.get(&key(s, k)).map(|v| v.value.clone())).collect())
    }

    async fn kv_set_many(&self, s: Scope<'_>, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        check_batch(pairs.len())?;
        let mut state = self.state();
        for (k, value) in pairs {
            state.kv.insert(key(s, k), Versioned { value: value.clone(), version: kv::new_version() });
        }
        Ok(())
    }

    async fn kv_delete_many(&self, s: Scope<'_>, keys: &[String]) -> Result<()> {
        check_batch(keys.len())?;
        let mut state = self.state();
        for k in keys {
            state.kv.remove(&key(s, k));
        }
        Ok(())
    }

    async fn kv_count(&self, namespace: &str) -> Result<i64> {
        let state = self.state();
        let from = (namespace.to_string(), String::new(), String::new());
        let n = state.kv.range(from..).take_while(|((ns, _, _), _)| ns == namespace).count();
        Ok(n as i64)
    }
}

/// Whether `write`'s precondition holds of `row`.
fn holds(precondition: &Precondition, row: Option<&Versioned>) -> bool {
    match (precondition, row) {
        (Precondition::None, _) => true,
        (Precondition::Absent, r) => r.is_none(),
        (Precondition::Present, r) => r.is_some(),
        (Precondition::Version(v), Some(r)) => r.version == *v,
        (Precondition::Version(_), None) => false,
    }
}

#[async_trait]
impl Transactions for Memory {
    async fn tx_commit_with(&self, writes: &[Write], events: &[Event]) -> Result<Outcome> {
        tx::check_commit(writes, events)?;
        let mut state = self.state();
        // Decide every write on a view of the rows (later writes see earlier
        // ones), then apply the view; a failure leaves the map untouched.
        let mut view: HashMap<Key, Option<Versioned>> = HashMap::new();
        let mut versions = vec![0i64; writes.len()];
        for i in tx::key_order(writes) {
            let w = &writes[i];
            let k = (w.namespace.to_string(), w.bucket.clone(), w.key.clone());
            let row = match view.get(&k) {
                Some(seen) => seen.clone(),
                None => state.kv.get(&k).cloned(),
            };
            let version = tx::new_version();
            let next = if !holds(&w.precondition, row.as_ref()) {
                None
            } else {
                match &w.op {
                    Op::Check => Some(row.clone()),
                    Op::Delete => Some(None),
                    Op::Put(value) => Some(Some(Versioned { value: value.clone(), version })),
                    Op::Add { delta, min, max } => {
                        let current = match &row {
                            None => Some(0),
                            Some(r) => counter_value(&r.value),
                        };
                        current
                            .and_then(|n| n.checked_add(*delta))
                            .filter(|n| (*min..=*max).contains(n))
                            .map(|n| Some(Versioned { value: n.to_string().into_bytes(), version }))
                    }
                }
            };
            let Some(next) = next else {
                let (reason, current) = tx::reason(w, row.as_ref());
                return Ok(Err(Failed { index: i, reason, current }));
            };
            if matches!(w.op, Op::Put(_) | Op::Add { .. }) {
                versions[i] = version;
            }
            view.insert(k, next);
        }
        for (k, row) in view {
            match row {
                Some(row) => state.kv.insert(k, row),
                None => state.kv.remove(&k),
            };
        }
        for e in events {
            let resolved = e.resolved(writes, |namespace, bucket, key| {
                let k = (namespace.to_string(), bucket.to_string(), key.to_string());
                Ok::<_, std::convert::Infallible>(state.kv.get(&k).and_then(|r| counter_value(&r.value)))
            });
            let Ok(Some(e)) = resolved else { continue };
            if !state.event_ids.insert(e.id.clone()) {
                continue;
            }
            super::events::note_outbox_write();
            state.event_seq += 1;
            let row = EventRow {
                seq: state.event_seq,
                id: e.id.clone(),
                kind: e.kind.to_string(),
                subject: e.subject.clone(),
                created_at: e.created_at,
                data: e.data.clone(),
                merchants: e.views.iter().map(|(m, _)| m.clone()).collect(),
                published_at: None,
            };
            let seq = row.seq;
            state.events.push(row);
            state.event_views.insert(seq, e.views.clone());
        }
        Ok(Ok(versions))
    }

    async fn tx_read(
        &self,
        namespace: &str,
        bucket: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned>>> {
        tx::check_read(keys)?;
        let state = self.state();
        let s = Scope { namespace, bucket };
        Ok(keys.iter().map(|k| state.kv.get(&key(s, k)).cloned()).collect())
    }
}

#[async_trait]
impl Accounts for Memory {
    async fn insert_merchant(&self, m: &MerchantRow, _created_at: i64) -> Result<()> {
        let mut state = self.state();
        if state.merchants.contains_key(&m.id) {
            return Err(StorageError::Invalid(format!("merchant {:?} exists", m.id)));
        }
        state.merchants.insert(m.id.clone(), m.clone());
        Ok(())
    }

    async fn merchant(&self, id: &str) -> Result<Option<MerchantRow>> {
        Ok(self.state().merchants.get(id).cloned())
    }

    async fn merchant_count(&self) -> Result<i64> {
        Ok(self.state().merchants.len() as i64)
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.state().settings.get(key).cloned())
    }

    async fn setting_insert_or_get(&self, key: &str, value: &str) -> Result<String> {
        Ok(self.state().settings.entry(key.to_string()).or_insert_with(|| value.to_string()).clone())
    }
}

impl State {
    fn active(&self, component: &str) -> Option<ActiveRow> {
        let live = self.activations.get(component)?.iter().rev().find(|a| a.rolled_back_at.is_none())?;
        let (version, _) = self.versions.get(component)?.iter().find(|(v, _)| v.version == live.version)?;
        Some(ActiveRow { seq: live.seq, version: version.clone(), activated_at: live.activated_at })
    }

    /// As the SQL schemas' foreign keys: plugins and limits belong to a
    /// merchant that exists.
    fn known_merchant(&self, merchant: &str) -> Result<()> {
        if self.merchants.contains_key(merchant) {
            Ok(())
        } else {
            Err(StorageError::Invalid(format!("no merchant {merchant:?}")))
        }
    }

    fn drop_unused_blob(&mut self, digest: &str) {
        if !self.plugins.values().any(|(d, _)| d == digest)
            && !self.shadows.values().any(|s| s.digest == digest)
            && !self.runs.values().any(|runs| runs.iter().any(|r| r.digest == digest))
        {
            self.blobs.remove(digest);
        }
    }
}

#[async_trait]
impl Components for Memory {
    async fn put_component_version(
        &self,
        component: &str,
        digest: &str,
        bytes: &[u8],
        source: &str,
        now: i64,
    ) -> Result<i64> {
        let mut state = self.state();
        let versions = state.versions.entry(component.to_string()).or_default();
        if let Some((v, _)) = versions.iter().find(|(v, _)| v.digest == digest) {
            return Ok(v.version);
        }
        let version = versions.last().map_or(0, |(v, _)| v.version) + 1;
        let row = VersionRow {
            version,
            digest: digest.to_string(),
            size: bytes.len() as i64,
            source: source.to_string(),
            created_at: now,
        };
        versions.push((row, bytes.to_vec()));
        Ok(version)
    }

    async fn component_version_by_digest(&self, component: &str, digest: &str) -> Result<Option<VersionRow>> {
        let state = self.state();
        let versions = state.versions.get(component).map(Vec::as_slice).unwrap_or_default();
        Ok(versions.iter().find(|(v, _)| v.digest == digest).map(|(v, _)| v.clone()))
    }

    async fn component_versions(&self, component: &str) -> Result<Vec<VersionRow>> {
        let state = self.state();
        let versions = state.versions.get(component).map(Vec::as_slice).unwrap_or_default();
        Ok(versions.iter().map(|(v, _)| v.clone()).collect())
    }

    async fn component_bytes(&self, component: &str, version: i64) -> Result<Option<Vec<u8>>> {
        let state = self.state();
        let versions = state.versions.get(component).map(Vec::as_slice).unwrap_or_default();
        Ok(versions.iter().find(|(v, _)| v.version == version).map(|(_, bytes)| bytes.clone()))
    }

    async fn active_component(&self, component: &str) -> Result<Option<ActiveRow>> {
        Ok(self.state().active(component))
    }

    async fn component_activations(
        &self,
        component: &str,
        live_only: bool,
        limit: i64,
    ) -> Result<Vec<ActivationRow>> {
        let state = self.state();
        let all = state.activations.get(component).map(Vec::as_slice).unwrap_or_default();
        Ok(all
            .iter()
            .rev()
            .filter(|a| !live_only || a.rolled_back_at.is_none())
            .take(usize::try_from(limit).unwrap_or(0))
            .cloned()
            .collect())
    }

    async fn activate_component(&self, component: &str, version: i64, now: i64) -> Result<()> {
        let mut state = self.state();
        if state.active(component).is_some_and(|a| a.version.version == version) {
            return Ok(());
        }
        // As the SQL schemas' foreign key: only a recorded version.
        if !state.versions.get(component).is_some_and(|v| v.iter().any(|(v, _)| v.version == version)) {
            return Err(StorageError::Invalid(format!("{component} has no version {version}")));
        }
        let activations = state.activations.entry(component.to_string()).or_default();
        let seq = activations.last().map_or(0, |a| a.seq) + 1;
        activations.push(ActivationRow { seq, version, activated_at: now, rolled_back_at: None });
        Ok(())
    }

    async fn roll_back_component(&self, component: &str, seq: i64, now: i64) -> Result<bool> {
        let mut state = self.state();
        let Some(activations) = state.activations.get_mut(component) else { return Ok(false) };
        match activations.iter_mut().find(|a| a.seq == seq && a.rolled_back_at.is_none()) {
            Some(a) => {
                a.rolled_back_at = Some(now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn start_canary(
        &self,
        component: &str,
        version: i64,
        share: i64,
        now: i64,
    ) -> Result<Option<super::components::CanaryRow>> {
        let mut state = self.state();
        if state.canaries.iter().any(|c| c.ended_at.is_none()) {
            return Ok(None);
        }
        let row = super::components::CanaryRow {
            seq: state.canaries.len() as i64 + 1,
            component: component.to_string(),
            version,
            share,
            started_at: now,
            ended_at: None,
            outcome: None,
            reason: None,
        };
        state.canaries.push(row.clone());
        Ok(Some(row))
    }

    async fn live_canaries(&self) -> Result<Vec<super::components::CanaryRow>> {
        Ok(self.state().canaries.iter().filter(|c| c.ended_at.is_none()).cloned().collect())
    }

    async fn component_canaries(
        &self,
        component: &str,
        limit: i64,
    ) -> Result<Vec<super::components::CanaryRow>> {
        let state = self.state();
        let mine = state.canaries.iter().rev().filter(|c| c.component == component);
        Ok(mine.take(usize::try_from(limit).unwrap_or(0)).cloned().collect())
    }

    async fn promote_canary(&self, component: &str, seq: i64, now: i64) -> Result<bool> {
        let mut state = self.state();
        let live = |c: &&mut super::components::CanaryRow| {
            c.component == component && c.seq == seq && c.ended_at.is_none()
        };
        let Some(c) = state.canaries.iter_mut().find(live) else {
            return Ok(false);
        };
        c.ended_at = Some(now);
        c.outcome = Some("promoted".to_string());
        c.reason = Some("promoted by the operator".to_string());
        let version = c.version;
        let activations = state.activations.entry(component.to_string()).or_default();
        let next = activations.last().map_or(0, |a| a.seq) + 1;
        activations.push(ActivationRow { seq: next, version, activated_at: now, rolled_back_at: None });
        Ok(true)
    }

    async fn end_canary(
        &self,
        component: &str,
        seq: i64,
        outcome: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        let mut state = self.state();
        match state
            .canaries
            .iter_mut()
            .find(|c| c.component == component && c.seq == seq && c.ended_at.is_none())
        {
            Some(c) => {
                c.ended_at = Some(now);
                c.outcome = Some(outcome.to_string());
                c.reason = Some(reason.to_string());
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[async_trait]
impl Plugins for Memory {
    async fn put_plugin(&self, merchant: &str, digest: &str, bytes: &[u8], now: i64) -> Result<()> {
        let mut state = self.state();
        state.known_merchant(merchant)?;
        state.blobs.entry(digest.to_string()).or_insert_with(|| bytes.to_vec());
        let previous = state.plugins.insert(merchant.to_string(), (digest.to_string(), now));
        state.errors.remove(merchant);
        if let Some((old, _)) = previous.filter(|(old, _)| old != digest) {
            state.drop_unused_blob(&old);
        }
        Ok(())
    }

    async fn delete_plugin(&self, merchant: &str) -> Result<bool> {
        let mut state = self.state();
        let Some((digest, _)) = state.plugins.remove(merchant) else { return Ok(false) };
        state.errors.remove(merchant);
        state.drop_unused_blob(&digest);
        Ok(true)
    }

    async fn active_plugins(&self, merchants: &[String]) -> Result<Vec<PluginRow>> {
        let state = self.state();
        let wanted: BTreeSet<&String> = merchants.iter().collect();
        Ok(wanted
            .into_iter()
            .filter_map(|m| {
                let (digest, uploaded_at) = state.plugins.get(m)?;
                let blob = state.blobs.get(digest)?;
                Some(PluginRow {
                    merchant_id: m.clone(),
                    digest: digest.clone(),
                    size: blob.len() as i64,
                    uploaded_at: *uploaded_at,
                    limits: state.limits.get(m).cloned(),
                    config: state.configs.get(m).cloned(),
                    shadow: state.shadows.get(m).map(|s| s.digest.clone()),
                })
            })
            .collect())
    }

    async fn plugin_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state().blobs.get(digest).cloned())
    }

    async fn plugin_limits(&self, merchant: &str) -> Result<Option<String>> {
        Ok(self.state().limits.get(merchant).cloned())
    }

    async fn set_plugin_limits(&self, merchant: &str, limits_json: &str, _now: i64) -> Result<()> {
        let mut state = self.state();
        state.known_merchant(merchant)?;
        state.limits.insert(merchant.to_string(), limits_json.to_string());
        Ok(())
    }

    async fn record_plugin_error(&self, merchant: &str, e: &PluginErrorRow) -> Result<()> {
        let mut state = self.state();
        let errors = state.errors.entry(merchant.to_string()).or_default();
        errors.push_back(e.clone());
        while errors.len() > RECENT_ERRORS as usize {
            errors.pop_front();
        }
        Ok(())
    }

    async fn plugin_errors(&self, merchant: &str) -> Result<Vec<PluginErrorRow>> {
        let state = self.state();
        Ok(state.errors.get(merchant).map(|e| e.iter().rev().cloned().collect()).unwrap_or_default())
    }

    async fn plugin_config(&self, merchant: &str) -> Result<Option<String>> {
        Ok(self.state().configs.get(merchant).cloned())
    }

    async fn set_plugin_config(&self, merchant: &str, config: Option<&str>, _now: i64) -> Result<()> {
        let mut state = self.state();
        match config {
            Some(config) => {
                state.known_merchant(merchant)?;
                state.configs.insert(merchant.to_string(), config.to_string());
            }
            None => {
                state.configs.remove(merchant);
            }
        }
        Ok(())
    }

    async fn record_plugin_runs(&self, runs: &[RunRow], retention: Retention) -> Result<()> {
        let mut state = self.state();
        let mut pruned = Vec::new();
        for run in runs {
            state.run_seq += 1;
            let row = RunRow { seq: state.run_seq, ..run.clone() };
            let kept = state.runs.entry(run.merchant_id.clone()).or_default();
            kept.push_back(row);
            // The newest `binaries` distinct digests, by their newest run.
            let mut newest: Vec<&str> = Vec::new();
            for r in kept.iter().rev() {
                if !newest.contains(&r.digest.as_str()) {
                    newest.push(&r.digest);
                }
            }
            let keep: Vec<String> = newest
                .into_iter()
                .take(usize::try_from(retention.binaries).unwrap_or(0))
                .map(String::from)
                .collect();
            let (stay, gone): (VecDeque<RunRow>, VecDeque<RunRow>) =
                std::mem::take(kept).into_iter().partition(|r| keep.contains(&r.digest));
            *kept = stay;
            pruned.extend(gone.into_iter().map(|r| r.digest));
            let mut bytes: i64 = kept.iter().map(|r| r.record.len() as i64).sum();
            while kept.len() as i64 > retention.runs || (bytes > retention.bytes && !kept.is_empty()) {
                let Some(old) = kept.pop_front() else { break };
                bytes -= old.record.len() as i64;
                pruned.push(old.digest);
            }
        }
        for digest in pruned {
            state.drop_unused_blob(&digest);
        }
        Ok(())
    }

    async fn add_plugin_counts(&self, counts: &[CountRow]) -> Result<()> {
        let mut state = self.state();
        let mut merchants: Vec<&str> = Vec::new();
        for c in counts {
            let key = (c.merchant_id.clone(), c.digest.clone(), c.metric.clone(), c.bucket.clone());
            *state.counts.entry(key).or_default() += c.runs;
            if !merchants.contains(&c.merchant_id.as_str()) {
                merchants.push(&c.merchant_id);
            }
        }
        let state = &mut *state;
        let referred = |m: &str, d: &str| {
            state.plugins.get(m).is_some_and(|(p, _)| p == d)
                || state.shadows.get(m).is_some_and(|s| s.digest == d)
                || state.runs.get(m).is_some_and(|runs| runs.iter().any(|r| r.digest == d))
        };
        let gone: Vec<_> = state
            .counts
            .keys()
            .filter(|(m, d, _, _)| merchants.contains(&m.as_str()) && !referred(m, d))
            .cloned()
            .collect();
        for key in gone {
            state.counts.remove(&key);
        }
        Ok(())
    }

    async fn plugin_counts(&self, merchant: &str, digest: &str) -> Result<Vec<CountRow>> {
        Ok(self
            .state()
            .counts
            .iter()
            .filter(|((m, d, _, _), _)| m == merchant && d == digest)
            .map(|((m, d, metric, bucket), runs)| CountRow {
                merchant_id: m.clone(),
                digest: d.clone(),
                metric: metric.clone(),
                bucket: bucket.clone(),
                runs: *runs,
            })
            .collect())
    }

    async fn plugin_runs(&self, merchant: &str, before: Option<i64>, limit: i64) -> Result<Vec<RunRow>> {
        let state = self.state();
        let before = before.unwrap_or(i64::MAX);
        Ok(state
            .runs
            .get(merchant)
            .map(|runs| {
                runs.iter()
                    .rev()
                    .filter(|r| r.seq < before)
                    .take(usize::try_from(limit).unwrap_or(0))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn plugin_run(&self, merchant: &str, id: &str) -> Result<Option<RunRow>> {
        Ok(self.state().runs.get(merchant).and_then(|runs| runs.iter().find(|r| r.id == id).cloned()))
    }

    async fn put_shadow(
        &self,
        merchant: &str,
        digest: &str,
        bytes: &[u8],
        report: &str,
        now: i64,
    ) -> Result<()> {
        let mut state = self.state();
        state.known_merchant(merchant)?;
        state.blobs.entry(digest.to_string()).or_insert_with(|| bytes.to_vec());
        let version = state.shadows.get(merchant).map_or(0, |s| s.version + 1);
        let row =
            ShadowRow { digest: digest.to_string(), installed_at: now, report: report.to_string(), version };
        if let Some(old) = state.shadows.insert(merchant.to_string(), row).filter(|old| old.digest != digest)
        {
            state.drop_unused_blob(&old.digest);
        }
        Ok(())
    }

    async fn shadow(&self, merchant: &str) -> Result<Option<ShadowRow>> {
        Ok(self.state().shadows.get(merchant).cloned())
    }

    async fn update_shadow_report(
        &self,
        merchant: &str,
        digest: &str,
        version: i64,
        report: &str,
    ) -> Result<bool> {
        let mut state = self.state();
        match state.shadows.get_mut(merchant) {
            Some(s) if s.digest == digest && s.version == version => {
                s.report = report.to_string();
                s.version += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_shadow(&self, merchant: &str) -> Result<bool> {
        let mut state = self.state();
        let Some(old) = state.shadows.remove(merchant) else { return Ok(false) };
        state.drop_unused_blob(&old.digest);
        Ok(true)
    }

    async fn promote_shadow(&self, merchant: &str, now: i64) -> Result<Option<String>> {
        let mut state = self.state();
        let Some(shadow) = state.shadows.remove(merchant) else { return Ok(None) };
        let previous = state.plugins.insert(merchant.to_string(), (shadow.digest.clone(), now));
        state.errors.remove(merchant);
        if let Some((old, _)) = previous.filter(|(old, _)| old != &shadow.digest) {
            state.drop_unused_blob(&old);
        }
        Ok(Some(shadow.digest))
    }
}

#[async_trait]
impl Events for Memory {
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>> {
        let state = self.state();
        let from = state.events.partition_point(|e| e.seq <= after);
        let limit = limit.min(MAX_EVENTS_READ) as usize;
        Ok(state.events[from..].iter().take(limit).cloned().collect())
    }

    async fn events_unpublished(&self, limit: u32) -> Result<Vec<EventRow>> {
        let state = self.state();
        let waiting = state.events.iter().filter(|e| e.published_at.is_none());
        Ok(waiting.take(limit.min(MAX_EVENTS_READ) as usize).cloned().collect())
    }

    async fn events_unpublished_count(&self) -> Result<i64> {
        Ok(self.state().events.iter().filter(|e| e.published_at.is_none()).count() as i64)
    }

    async fn events_mark_published(&self, seqs: &[i64], now: i64) -> Result<()> {
        let mut state = self.state();
        for seq in seqs {
            if let Ok(i) = state.events.binary_search_by_key(seq, |e| e.seq) {
                state.events[i].published_at.get_or_insert(now);
            }
        }
        Ok(())
    }

    async fn events_prune(&self, before: i64, limit: u32) -> Result<u64> {
        let mut state = self.state();
        let pending: HashSet<String> = state
            .deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Pending)
            .map(|d| d.event_id.clone())
            .collect();
        let gone: Vec<(i64, String)> = state
            .events
            .iter()
            .filter(|e| e.published_at.is_some() && e.created_at < before && !pending.contains(&e.id))
            .take(limit as usize)
            .map(|e| (e.seq, e.id.clone()))
            .collect();
        let seqs: HashSet<i64> = gone.iter().map(|(seq, _)| *seq).collect();
        let ids: HashSet<&String> = gone.iter().map(|(_, id)| id).collect();
        let state = &mut *state;
        state.events.retain(|e| !seqs.contains(&e.seq));
        state.deliveries.retain(|d| !ids.contains(&d.event_id));
        for (seq, id) in &gone {
            state.event_views.remove(seq);
            state.event_ids.remove(id);
        }
        Ok(gone.len() as u64)
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let now = crate::now_ms();
        let until = now.saturating_add(ttl_ms);
        let mut state = self.state();
        let free = state.leases.get(name).is_none_or(|(h, u)| h == holder || *u < now);
        if free {
            state.leases.insert(name.to_string(), (holder.to_string(), until));
        }
        Ok(free)
    }

    async fn lease_release(&self, name: &str, holder: &str) -> Result<()> {
        let mut state = self.state();
        if state.leases.get(name).is_some_and(|(h, _)| h == holder) {
            state.leases.remove(name);
        }
        Ok(())
    }
}

/// A merchant's pending deliveries marked failed if it has no endpoint:
/// how many.
fn give_up_orphans(state: &mut State, merchant: &str, now: i64) -> u64 {
    if state.webhooks.contains_key(merchant) {
        return 0;
    }
    let mut given_up = 0;
    for d in state.deliveries.iter_mut().filter(|d| d.merchant_id == merchant) {
        if d.status == DeliveryStatus::Pending {
            d.status = DeliveryStatus::Failed;
            d.last_error = Some("the webhook was removed".into());
            d.next_at = now;
            given_up += 1;
        }
    }
    given_up
}

#[async_trait]
impl Webhooks for Memory {
    async fn webhook_put(&self, row: &WebhookRow) -> Result<()> {
        self.state().webhooks.insert(row.merchant_id.clone(), row.clone());
        Ok(())
    }

    async fn webhook(&self, merchant: &str) -> Result<Option<WebhookRow>> {
        Ok(self.state().webhooks.get(merchant).cloned())
    }

    async fn webhook_delete(&self, merchant: &str, now: i64) -> Result<bool> {
        let mut state = self.state();
        let removed = state.webhooks.remove(merchant).is_some();
        give_up_orphans(&mut state, merchant, now);
        Ok(removed)
    }

    async fn deliveries_orphaned(&self, merchant: &str, now: i64) -> Result<u64> {
        Ok(give_up_orphans(&mut self.state(), merchant, now))
    }

    async fn deliveries_fan_out(&self, seqs: &[i64], now: i64) -> Result<()> {
        let mut state = self.state();
        for seq in seqs {
            let Ok(i) = state.events.binary_search_by_key(seq, |e| e.seq) else { continue };
            let event = state.events[i].clone();
            let views = state.event_views.get(seq).cloned().unwrap_or_default();
            for (merchant, data) in views {
                let Some(hook) = state.webhooks.get(&merchant).cloned() else { continue };
                if !hook.events.contains(&event.kind) {
                    continue;
                }
                let made =
                    state.deliveries.iter().any(|d| d.event_id == event.id && d.merchant_id == merchant);
                if made {
                    continue;
                }
                state.delivery_seq += 1;
                let row = DeliveryRow {
                    seq: state.delivery_seq,
                    merchant_id: merchant,
                    url: hook.url,
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    next_at: now,
                    last_status: None,
                    last_error: None,
                    created_at: now,
                    delivered_at: None,
                    event_id: event.id.clone(),
                    kind: event.kind.clone(),
                    subject: event.subject.clone(),
                    event_created_at: event.created_at,
                    data,
                };
                state.deliveries.push(row);
            }
        }
        Ok(())
    }

    async fn deliveries_due(&self, now: i64, limit: u32) -> Result<Vec<String>> {
        let state = self.state();
        let due: BTreeSet<&String> = state
            .deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Pending && d.next_at <= now)
            .map(|d| &d.merchant_id)
            .collect();
        Ok(due.into_iter().take(limit as usize).cloned().collect())
    }

    async fn deliveries_pending(&self, merchant: &str, now: i64, limit: u32) -> Result<Vec<DeliveryRow>> {
        let state = self.state();
        let mut heads = HashSet::new();
        let mut out = Vec::new();
        for d in state
            .deliveries
            .iter()
            .filter(|d| d.merchant_id == merchant && d.status == DeliveryStatus::Pending)
        {
            // Only the oldest pending delivery of each subject.
            if heads.insert(d.subject.clone()) && d.next_at <= now && out.len() < limit as usize {
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    async fn deliveries_attempted(&self, attempts: &[(i64, Attempt)]) -> Result<()> {
        let mut state = self.state();
        for (seq, attempt) in attempts {
            let Ok(i) = state.deliveries.binary_search_by_key(seq, |d| d.seq) else { continue };
            let d = &mut state.deliveries[i];
            if d.status != DeliveryStatus::Pending {
                continue;
            }
            d.status = attempt.status;
            d.attempts += 1;
            d.next_at = attempt.at;
            d.last_status = attempt.http_status;
            d.last_error = attempt.error.clone();
            d.url = attempt.url.clone();
            if attempt.status == DeliveryStatus::Delivered {
                d.delivered_at = Some(attempt.at);
            }
        }
        Ok(())
    }

    async fn deliveries(&self, merchant: &str, before: Option<i64>, limit: u32) -> Result<Vec<DeliveryRow>> {
        let state = self.state();
        let before = before.unwrap_or(i64::MAX);
        let mine = state.deliveries.iter().rev().filter(|d| d.merchant_id == merchant && d.seq < before);
        Ok(mine.take(limit.min(MAX_EVENTS_READ) as usize).cloned().collect())
    }
}

#[async_trait]
impl Backend for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) {}
}
