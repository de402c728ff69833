//! The relay: hands the outbox's events on, oldest first, and marks them
//! published. One replica at a time relays — it holds the `events.relay`
//! lease in the database, renews it every round and gives it up when it
//! stops; another replica takes over once a lease has lapsed (a killed
//! holder's, after `lease_ms`). Lease time is the database's clock, so
//! replicas whose clocks disagree do not both think they hold it.
//!
//! Delivery is at least once: an event is marked only after its sink
//! acknowledged it, so a relay killed in between hands it on again, under
//! the same id. NATS JetStream drops such repeats itself (`Nats-Msg-Id` is
//! the event id, within the stream's duplicate window).
//!
//! A round starts when a commit on this replica wrote events, when
//! PostgreSQL announces another replica's (`mercato_events`), or every
//! `relay_interval_ms`.

use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Secret;
use crate::storage::Db;
use crate::storage::events::EventRow;

/// The database lease a relay holds.
pub const LEASE: &str = "events.relay";
/// PostgreSQL's channel for "events committed" (`0009_events.sql`).
pub const CHANNEL: &str = "mercato_events";
/// Events deleted per statement when the outbox is pruned.
const PRUNE_BATCH: u32 = 1_000;
/// Statements per prune (the rest waits for the next one).
const PRUNE_ROUNDS: u32 = 20;
/// The longest between two prunes.
const PRUNE_EVERY_MS: i64 = 60_000;

/// `[events]`: where events go and how often the relay looks.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// A NATS server with JetStream (`nats://host:4222`); unset: no NATS.
    pub nats_url: Option<Secret>,
    /// The JetStream stream (created if missing) over `<prefix>.>`.
    pub nats_stream: String,
    /// Events go to `<prefix>.<type>` (`mercato.events.order.paid`).
    pub nats_subject_prefix: String,
    /// How long JetStream remembers an event id to drop a repeat.
    pub nats_duplicate_window_ms: u64,
    /// The longest a relay waits before looking at the outbox again.
    pub relay_interval_ms: u64,
    /// How long a relay's lease lasts without renewal (a killed relay's
    /// events wait this long for another replica).
    pub lease_ms: u64,
    /// Events handed on per round.
    pub batch: u32,
    /// How long the outbox keeps an event once it is done with (handed
    /// on, no delivery pending); 0: for ever. The relay deletes older ones,
    /// with their merchant views and deliveries.
    pub retention_ms: u64,
    /// Merchants' webhooks (`[events.webhooks]`).
    pub webhooks: crate::events::WebhooksConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            nats_url: None,
            nats_stream: "MERCATO_EVENTS".into(),
            nats_subject_prefix: "mercato.events".into(),
            nats_duplicate_window_ms: 10 * 60 * 1000,
            relay_interval_ms: 1_000,
            lease_ms: 10_000,
            batch: 256,
            retention_ms: 30 * 24 * 60 * 60 * 1000,
            webhooks: crate::events::WebhooksConfig::default(),
        }
    }
}

impl EventsConfig {
    /// What start-up refuses.
    pub fn check(&self) -> Result<(), String> {
        self.webhooks.check()?;
        if self.batch == 0 || self.batch > crate::storage::events::MAX_EVENTS_READ {
            return Err(format!("events.batch: 1 to {}", crate::storage::events::MAX_EVENTS_READ));
        }
        if self.relay_interval_ms == 0 || self.lease_ms <= self.relay_interval_ms {
            return Err("events.lease_ms must exceed events.relay_interval_ms (> 0)".into());
        }
        let name_ok = !self.nats_stream.is_empty()
            && self.nats_stream.len() <= 64
            && self.nats_stream.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err("events.nats_stream: 1 to 64 of [A-Za-z0-9_-]".into());
        }
        let prefix = &self.nats_subject_prefix;
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 128
            && prefix.split('.').all(|t| {
                !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !prefix_ok {
            return Err("events.nats_subject_prefix: dot-separated tokens of [A-Za-z0-9_-]".into());
        }
        Ok(())
    }
}

/// Wakes this process's relay: a commit here wrote events.
pub fn wake() {
    waker().notify_one();
}

fn waker() -> &'static Notify {
    static WAKE: OnceLock<Notify> = OnceLock::new();
    WAKE.get_or_init(Notify::new)
}

/// The NATS subject of an event type.
pub fn subject(prefix: &str, kind: &str) -> String {
    format!("{prefix}.{kind}")
}

/// What goes to NATS: the envelope, with the subject and merchants.
pub fn nats_body(e: &EventRow) -> Vec<u8> {
    let mut body = e.envelope();
    body["subject"] = serde_json::Value::String(e.subject.clone());
    body["merchants"] = serde_json::json!(e.merchants);
    serde_json::to_vec(&body).unwrap_or_default()
}

struct Nats {
    jetstream: async_nats::jetstream::Context,
    prefix: String,
}

impl Nats {
    async fn connect(config: &EventsConfig, url: &str) -> anyhow::Result<Nats> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(url)
            .await?;
        let jetstream = async_nats::jetstream::new(client);
        jetstream
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: config.nats_stream.clone(),
                subjects: vec![format!("{}.>", config.nats_subject_prefix)],
                duplicate_window: Duration::from_millis(config.nats_duplicate_window_ms),
                ..Default::default()
            })
            .await?;
        Ok(Nats { jetstream, prefix: config.nats_subject_prefix.clone() })
    }

    /// Publish `events` in order (pipelined), each acknowledged: how many,
    /// from the first, were stored (or known repeats).
    async fn publish(&self, events: &[EventRow]) -> (usize, Option<anyhow::Error>) {
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(nats_body(e).into())
                .message_id(&e.id);
            match self.jetstream.send_publish(subject(&self.prefix, &e.kind), message).await {
                Ok(ack) => acks.push(ack),
                Err(err) => {
                    let done = Self::acked(acks).await;
                    return (done.0, Some(done.1.unwrap_or_else(|| err.into())));
                }
            }
        }
        Self::acked(acks).await
    }

    async fn acked(
        acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
    ) -> (usize, Option<anyhow::Error>) {
        let mut done = 0;
        for ack in acks {
            match ack.await {
                Ok(_) => done += 1,
                Err(e) => return (done, Some(e.into())),
            }
        }
        (done, None)
    }
}

/// One replica's relay.
pub struct Relay {
    db: Db,
    config: EventsConfig,
    /// This process, in the lease.
    holder: String,
    nats: Option<Nats>,
    webhooks: crate::events::webhooks::Sender,
    /// When the outbox is pruned next (unix ms).
    next_prune: i64,
}

impl Relay {
    pub fn new(db: Db, config: EventsConfig) -> Relay {
        let holder = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let webhooks = crate::events::webhooks::Sender::new(db.clone(), config.webhooks.clone());
        Relay { db, config, holder, nats: None, webhooks, next_prune: 0 }
    }

    /// Relay until `stop`, then give the lease up.
    pub async fn run(mut self, stop: CancellationToken) {
        let listener = self.listen(stop.clone());
        let interval = Duration::from_millis(self.config.relay_interval_ms);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.round().await {
                // A full batch: more are waiting.
                Ok(n) if n == self.config.batch as usize => {
                    if stop.is_cancelled() {
                        break;
                    }
                    continue;
                }
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    crate::telemetry::events_relay_failed();
                    tracing::warn!(error = %e, "events relay: a round failed; the events wait in the outbox");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(interval.max(Duration::from_secs(5)));
                    continue;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = waker().notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
        if let Some(l) = listener {
            l.abort();
        }
        self.webhooks.stop();
        if let Err(e) = self.db.lease_release(LEASE, &self.holder).await {
            tracing::warn!(error = %e, "events relay: could not give the lease up");
        }
    }

    /// PostgreSQL: wake on other replicas' commits.
    fn listen(&self, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let pool = self.db.postgres()?.clone();
        Some(tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(mut l) = sqlx::postgres::PgListener::connect_with(&pool).await
                    && l.listen(CHANNEL).await.is_ok()
                {
                    while l.recv().await.is_ok() {
                        waker().notify_one();
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }

    /// One round: take (or renew) the lease, hand on a batch, mark what
    /// went, and start the webhook deliveries that are due (also when the
    /// batch failed: NATS being down holds up no webhook retry). How many
    /// were handed on.
    async fn round(&mut self) -> anyhow::Result<usize> {
        let now = crate::now_ms();
        // At most a day: the database adds it to its clock.
        let ttl = i64::try_from(self.config.lease_ms).unwrap_or(i64::MAX).min(86_400_000);
        if !self.db.lease(LEASE, &self.holder, ttl).await? {
            // Another replica relays: this one's webhook workers stop.
            self.webhooks.stop();
            return Ok(0);
        }
        let handed = self.hand_on().await;
        self.webhooks.dispatch().await?;
        if let Err(e) = self.prune(now).await {
            // The events stay a while longer: no reason to hold up relaying.
            tracing::warn!(error = %e, "events relay: could not prune the outbox; trying again later");
        }
        handed
    }

    /// Delete what the outbox no longer needs (older than `retention_ms`,
    /// handed on, no delivery pending), at most once a minute (or once per
    /// retention, if that is shorter), a bounded amount at a time.
    async fn prune(&mut self, now: i64) -> anyhow::Result<()> {
        let retention = i64::try_from(self.config.retention_ms).unwrap_or(i64::MAX);
        if retention == 0 || now < self.next_prune {
            return Ok(());
        }
        self.next_prune = now.saturating_add(retention.min(PRUNE_EVERY_MS));
        let before = now.saturating_sub(retention);
        for _ in 0..PRUNE_ROUNDS {
            let gone = self.db.events_prune(before, PRUNE_BATCH).await?;
            crate::telemetry::events_pruned(gone);
            if gone < u64::from(PRUNE_BATCH) {
                break;
            }
        }
        Ok(())
    }

    async fn hand_on(&mut self) -> anyhow::Result<usize> {
        let depth = self.db.events_unpublished_count().await?;
        crate::telemetry::events_outbox_depth(depth);
        if depth == 0 {
            return Ok(0);
        }
        let batch = self.db.events_unpublished(self.config.batch).await?;
        let (done, failure) = match (&self.config.nats_url, &self.nats) {
            (None, _) => (batch.len(), None),
            (Some(_), Some(nats)) => nats.publish(&batch).await,
            (Some(url), None) => {
                let nats = self.nats.insert(Nats::connect(&self.config, &url.0).await?);
                nats.publish(&batch).await
            }
        };
        let sent = &batch[..done];
        if !sent.is_empty() {
            let seqs: Vec<i64> = sent.iter().map(|e| e.seq).collect();
            let published = crate::now_ms();
            // The webhook deliveries first: a relay killed between the two
            // makes them again (one per event and merchant) and marks.
            self.db.deliveries_fan_out(&seqs, published).await?;
            self.db.events_mark_published(&seqs, published).await?;
            for e in sent {
                crate::telemetry::event_published(&e.kind, published.saturating_sub(e.created_at));
            }
        }
        if let Some(e) = failure {
            // Reconnect next time.
            self.nats = None;
            return Err(e);
        }
        Ok(done)
    }
}

/// Start the relay on its own task.
pub fn start(db: Db, config: EventsConfig, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let relay = Relay::new(db, config);
    tokio::spawn(relay.run(stop))
}
