//! Merchants' webhooks (SPEC §4): each merchant registers one endpoint and
//! the event types it wants; the relay makes one delivery per event and
//! concerned merchant (the merchant's view: only their lines) and the
//! sender POSTs it, signed like Stripe's:
//! `Mercato-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
//!
//! Each endpoint is delivered to by its own worker, oldest first, at most
//! [`PER_ENDPOINT`] attempts at once and one at a time per order, each
//! bounded by `timeout_ms`: a slow or dead
//! endpoint holds up only its own deliveries, never a checkout (deliveries
//! are made after the commit, by the relay) nor another merchant's. A
//! failed attempt is tried again after an exponential delay with jitter
//! (`retry_base_ms` doubling up to `retry_max_ms`) until `horizon_ms` after
//! the delivery was made, then marked failed; later events about the same
//! order wait behind it, so each order's events arrive in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::storage::Db;
use crate::storage::events::{Attempt, DeliveryRow, DeliveryStatus, WebhookRow};

/// The event types a webhook may ask for (SPEC §4).
pub const EVENT_TYPES: [&str; 4] = ["order.paid", "order.fulfilled", "order.cancelled", "stock.low"];

/// Attempts in flight to one endpoint at once, each for another order (an
/// order's events go one after the other).
pub const PER_ENDPOINT: usize = 8;

/// Longest endpoint URL.
pub const MAX_URL: usize = 2_048;

/// `[events.webhooks]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Hosts merchants' endpoints may be on (empty: any public host).
    pub allowed_hosts: Vec<String>,
    /// Let endpoints be on a loopback host, over plain HTTP too
    /// (development, tests). Off by default: a merchant's endpoint must not
    /// reach the host's own loopback services.
    pub allow_loopback: bool,
    /// One attempt's time-out, connect to answer.
    pub timeout_ms: u64,
    /// The delay before the first retry; each next one doubles it (plus up
    /// to 25 % jitter), up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// A delivery still failing this long after it was made is marked failed.
    pub horizon_ms: u64,
    /// Endpoints delivered to at once (each up to [`PER_ENDPOINT`] deliveries at once).
    pub concurrency: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allowed_hosts: Vec::new(),
            allow_loopback: false,
            timeout_ms: 10_000,
            retry_base_ms: 30_000,
            retry_max_ms: 6 * 60 * 60 * 1000,
            horizon_ms: 3 * 24 * 60 * 60 * 1000,
            concurrency: 64,
        }
    }
}

fn private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| private(std::net::IpAddr::V4(v4)))
        }
    }
}

impl WebhooksConfig {
    /// What start-up refuses.
    pub fn check(&self) -> Result<(), String> {
        if self.timeout_ms == 0 || self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err(
                "events.webhooks: timeout_ms and retry_base_ms > 0, retry_max_ms >= retry_base_ms".into()
            );
        }
        if self.concurrency == 0 {
            return Err("events.webhooks.concurrency: at least 1".into());
        }
        Ok(())
    }

    /// An endpoint URL as it may be registered: `https://` (or `http://` on
    /// a loopback host when `allow_loopback`), no credentials, not a
    /// private address, on an allowed host if the list is set.
    /// The host is read as the HTTP client reads it (WHATWG URL parsing:
    /// `127.1`, `0x7f.0.0.1` and `2130706433` are 127.0.0.1); a name is
    /// checked again where it resolves, at every attempt ([`Guard`]).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        if url.len() > MAX_URL {
            return Err(format!("url: at most {MAX_URL} characters"));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| "url: not a URL".to_string())?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("url: no credentials in the URL".into());
        }
        let (host, ip) = match parsed.host() {
            Some(url::Host::Domain(d)) => (d.trim_end_matches('.').to_ascii_lowercase(), None),
            Some(url::Host::Ipv4(v4)) => (v4.to_string(), Some(std::net::IpAddr::V4(v4))),
            Some(url::Host::Ipv6(v6)) => (v6.to_string(), Some(std::net::IpAddr::V6(v6))),
            None => return Err("url: no host".into()),
        };
        let loopback = ip.map_or_else(|| crate::net::is_loopback_host(&host), |ip| ip.is_loopback());
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => return Err("url: https only (plain http only for a loopback host)".into()),
            _ => return Err("url: must be an https URL".into()),
        }
        if loopback && !self.allow_loopback {
            return Err(
                "url: loopback endpoints are not allowed here (events.webhooks.allow_loopback)".into()
            );
        }
        if !loopback && ip.is_some_and(private) {
            return Err("url: a private or reserved address".into());
        }
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
        {
            return Err("url: this host is not in events.webhooks.allowed_hosts".into());
        }
        Ok(())
    }

    /// The delay before attempt `attempts + 1`, after `attempts` failed.
    pub fn backoff_ms(&self, attempts: i64) -> u64 {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 40)).unwrap_or(40);
        let delay = self.retry_base_ms.saturating_mul(1u64 << doublings).min(self.retry_max_ms);
        delay.saturating_add(rand::random_range(0..=delay / 4))
    }
}

/// The webhook client's name resolution: a name that resolves to a private,
/// loopback or reserved address is refused at connect time (a public name
/// pointing inside, or rebinding after registration), unless loopback is
/// allowed and the address is loopback.
struct Guard {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<std::net::SocketAddr> =
                found.filter(|a| !private(a.ip()) || (allow_loopback && a.ip().is_loopback())).collect();
            if allowed.is_empty() {
                return Err("the endpoint's name resolves only to private or reserved addresses".into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A new signing secret, shown once.
pub fn new_secret() -> String {
    format!("whsec_{}", crate::auth::new_secret())
}

/// The `Mercato-Signature` header of `body` sent at `t` (unix seconds).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is `body`'s signature with `secret`, made within
/// `tolerance_s` of `now` (what a merchant's endpoint checks).
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance_s {
        return false;
    }
    let want = signature(secret, t, body);
    let want = want.rsplit_once("v1=").map(|(_, h)| h).unwrap_or_default();
    v1.iter().any(|got| subtle::ConstantTimeEq::ct_eq(got.as_bytes(), want.as_bytes()).into())
}

/// Starts and tracks one worker per endpoint with deliveries due.
pub struct Sender {
    db: Db,
    config: Arc<WebhooksConfig>,
    client: reqwest::Client,
    running: HashMap<String, tokio::task::JoinHandle<()>>,
    slots: Arc<Semaphore>,
}

impl Sender {
    pub fn new(db: Db, config: WebhooksConfig) -> Sender {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Guard { allow_loopback: config.allow_loopback }))
            .user_agent(concat!("mercato-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let slots = Arc::new(Semaphore::new(config.concurrency));
        Sender { db, config: Arc::new(config), client, running: HashMap::new(), slots }
    }

    /// Start a worker for each endpoint with a delivery due and none running.
    pub async fn dispatch(&mut self) -> crate::storage::Result<()> {
        self.running.retain(|_, h| !h.is_finished());
        for merchant in self.db.deliveries_due(crate::now_ms(), 10_000).await? {
            if self.running.contains_key(&merchant) {
                continue;
            }
            let worker = Worker {
                db: self.db.clone(),
                config: self.config.clone(),
                client: self.client.clone(),
                merchant: merchant.clone(),
            };
            self.running.insert(merchant, tokio::spawn(worker.run(self.slots.clone())));
        }
        Ok(())
    }

    /// Stop every worker (an attempt in flight is tried again later).
    pub fn stop(&mut self) {
        for (_, h) in self.running.drain() {
            h.abort();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    db: Db,
    config: Arc<WebhooksConfig>,
    client: reqwest::Client,
    merchant: String,
}

impl Worker {
    /// Deliver this endpoint's due deliveries, oldest first, until none is
    /// due (each order's next one only after its earlier one was delivered).
    async fn run(self, slots: Arc<Semaphore>) {
        let Ok(_slot) = slots.acquire_owned().await else { return };
        loop {
            let hook = match self.db.webhook(&self.merchant).await {
                Ok(Some(hook)) => hook,
                Ok(None) => {
                    // Deliveries with no endpoint (a fan-out raced the
                    // webhook's removal): given up, as the removal does.
                    if let Err(e) = self.db.deliveries_orphaned(&self.merchant, crate::now_ms()).await {
                        tracing::warn!(error = %e, "webhooks: could not give up deliveries with no endpoint");
                    }
                    return;
                }
                Err(_) => return,
            };
            let Ok(due) = self.db.deliveries_pending(&self.merchant, crate::now_ms(), 100).await else {
                return;
            };
            if due.is_empty() {
                return;
            }
            // Each is the oldest due delivery of its order: they may go
            // out side by side, a few at a time.
            use futures_util::StreamExt;
            let mut attempts = futures_util::stream::iter(due)
                .map(|d| {
                    let (worker, hook) = (&self, &hook);
                    async move { (d.seq, worker.attempt(hook, &d).await) }
                })
                .buffer_unordered(PER_ENDPOINT);
            // Recorded as they end, those that ended together in one write.
            while let Some(first) = attempts.next().await {
                let mut ended = vec![first];
                while let Some(Some(more)) = futures_util::FutureExt::now_or_never(attempts.next()) {
                    ended.push(more);
                }
                if let Err(e) = self.db.deliveries_attempted(&ended).await {
                    tracing::warn!(error = %e, "webhooks: could not record attempts; they are made again");
                    return;
                }
            }
        }
    }

    async fn attempt(&self, hook: &WebhookRow, d: &DeliveryRow) -> Attempt {
        let body = d.body();
        let sent_at = crate::now_ms();
        // Settings may have changed since the endpoint was registered.
        if let Err(e) = self.config.check_url(&hook.url) {
            return self.failed(hook, d, sent_at, None, e);
        }
        let started = Instant::now();
        let answer = self
            .client
            .post(&hook.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("Mercato-Signature", signature(&hook.secret, sent_at / 1000, &body))
            .header("Mercato-Event-Id", &d.event_id)
            .header("Mercato-Event-Type", &d.kind)
            .body(body)
            .send()
            .await;
        let outcome = match answer {
            Ok(r) if r.status().is_success() => {
                let now = crate::now_ms();
                crate::telemetry::webhook_delivered(started, now.saturating_sub(d.event_created_at));
                return Attempt {
                    status: DeliveryStatus::Delivered,
                    url: hook.url.clone(),
                    http_status: Some(i64::from(r.status().as_u16())),
                    error: None,
                    at: now,
                };
            }
            Ok(r) => (Some(i64::from(r.status().as_u16())), format!("answered {}", r.status())),
            Err(e) if e.is_timeout() => (None, format!("no answer within {} ms", self.config.timeout_ms)),
            Err(e) if e.is_connect() => (None, "could not connect".to_string()),
            Err(_) => (None, "the request failed".to_string()),
        };
        self.failed(hook, d, sent_at, outcome.0, outcome.1)
    }

    /// A failed attempt: try again later, or give up past the horizon.
    fn failed(
        &self,
        hook: &WebhookRow,
        d: &DeliveryRow,
        now: i64,
        http: Option<i64>,
        error: String,
    ) -> Attempt {
        let delay = i64::try_from(self.config.backoff_ms(d.attempts + 1)).unwrap_or(i64::MAX);
        let next = now.saturating_add(delay);
        let horizon = d.created_at.saturating_add(i64::try_from(self.config.horizon_ms).unwrap_or(i64::MAX));
        let status = if next > horizon { DeliveryStatus::Failed } else { DeliveryStatus::Pending };
        crate::telemetry::webhook_failed(status == DeliveryStatus::Failed);
        Attempt { status, url: hook.url.clone(), http_status: http, error: Some(error), at: next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let body = br#"{"id":"evt_1","type":"order.paid"}"#;
        let header = signature("whsec_k", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert!(verify("whsec_k", &header, body, 1_700_000_010, 300));
        assert!(!verify("whsec_k", &header, br#"{"id":"evt_2","type":"order.paid"}"#, 1_700_000_010, 300));
        assert!(!verify("whsec_other", &header, body, 1_700_000_010, 300));
        assert!(!verify("whsec_k", &header, body, 1_700_001_000, 300), "too old");
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert!(!verify("whsec_k", &moved, body, 1_700_000_010, 300), "the time is signed too");
    }

    #[test]
    fn endpoint_urls_are_https_and_public() {
        let mut c = WebhooksConfig::default();
        assert!(c.check_url("https://shop.example/hooks").is_ok());
        for bad in [
            "http://shop.example/hooks",
            "ftp://shop.example/",
            "https://user:pw@shop.example/",
            "https://10.0.0.8/hooks",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "http://127.0.0.1:9000/",
            "https://192.168.1.1/",
            "https://127.1/",
            "https://2130706433/",
            "https://0x7f.0.0.1/",
            "https://127.0.0.1./",
            "https://localhost./",
            "https://[::ffff:10.0.0.1]/",
            "not a url",
        ] {
            assert!(c.check_url(bad).is_err(), "{bad}");
        }
        c.allow_loopback = true;
        assert!(c.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(c.check_url("http://localhost:9000/hook").is_ok());
        c.allowed_hosts = vec!["hooks.example".into()];
        assert!(c.check_url("https://shop.example/hooks").is_err());
        assert!(c.check_url("https://HOOKS.example/x").is_ok());
    }

    #[test]
    fn retries_back_off_exponentially_with_bounded_jitter() {
        let c = WebhooksConfig { retry_base_ms: 1_000, retry_max_ms: 60_000, ..Default::default() };
        for attempts in 1..=10 {
            let want = (1_000u64 << (attempts - 1)).min(60_000);
            let got = c.backoff_ms(attempts);
            assert!((want..=want + want / 4).contains(&got), "{attempts}: {got} not in {want}+25 %");
        }
    }
}
