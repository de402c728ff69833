//! Rate limits per client address: writes (`POST`, `PUT`, `PATCH`,
//! `DELETE`), and failed authentication — after too many 401s an address's
//! authenticated requests get 429 for a while, so tokens cannot be guessed at
//! speed. Both are GCRA limiters (`governor`), keyed by the client address:
//! the peer's, or with `rate_limit.forwarded_hops = N` the N-th address from
//! the right of `X-Forwarded-For` (the one the outermost trusted proxy saw).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};

/// `[rate_limit]`; a rate of 0 turns that limit off.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Writes per second one client address may make, on average.
    pub writes_per_second: u32,
    /// Writes one client address may make at once before the rate applies.
    pub write_burst: u32,
    /// Failed authentications (401) per minute one address may have; past
    /// it, its authenticated requests get 429 until the next is allowed.
    pub auth_failures_per_minute: u32,
    /// Proxies in front of the host that append to `X-Forwarded-For` (0: the
    /// peer address is the client's).
    pub forwarded_hops: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            writes_per_second: 50,
            write_burst: 200,
            auth_failures_per_minute: 30,
            forwarded_hops: 0,
        }
    }
}

/// Checks between two sweeps of addresses whose limits have recovered.
const SWEEP_EVERY: u64 = 4096;
/// Blocked addresses kept at most (past it the oldest blocks are dropped).
const MAX_BLOCKED: usize = 65_536;

pub struct RateLimits {
    writes: Option<DefaultKeyedRateLimiter<IpAddr>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses whose authenticated requests are refused until then.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    forwarded_hops: usize,
    checks: AtomicU64,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> RateLimits {
        let writes = NonZeroU32::new(config.writes_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.write_burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let auth_failures = NonZeroU32::new(config.auth_failures_per_minute)
            .map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate)));
        RateLimits {
            writes,
            auth_failures,
            blocked: Mutex::new(HashMap::new()),
            forwarded_hops: config.forwarded_hops as usize,
            checks: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }
    }

    fn client(&self, req: &Request) -> Option<IpAddr> {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if self.forwarded_hops == 0 {
            return peer;
        }
        let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("");
        let hops: Vec<&str> = forwarded.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
        hops.len()
            .checked_sub(self.forwarded_hops)
            .and_then(|i| hops.get(i))
            .and_then(|h| h.parse().ok())
            .or(peer)
    }

    fn sweep(&self) {
        if !self.checks.fetch_add(1, Ordering::Relaxed).is_multiple_of(SWEEP_EVERY) {
            return;
        }
        for limiter in [&self.writes, &self.auth_failures].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let now = Instant::now();
        lock(&self.blocked).retain(|_, until| *until > now);
    }

    fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        lock(&self.blocked).get(&ip).and_then(|until| until.checked_duration_since(Instant::now()))
    }

    fn failed_auth(&self, ip: IpAddr) {
        let Some(limiter) = &self.auth_failures else { return };
        if let Err(not_until) = limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(self.clock.now());
            let mut blocked = lock(&self.blocked);
            if blocked.len() >= MAX_BLOCKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            if blocked.len() < MAX_BLOCKED {
                blocked.insert(ip, Instant::now() + wait);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn too_many(wait: Duration, message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).into_response();
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The middleware: 429 with `Retry-After` past a limit.
pub async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limits = &state.rate_limits;
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let Some(ip) = limits.client(&req) else { return next.run(req).await };
    limits.sweep();
    if req.headers().contains_key(header::AUTHORIZATION)
        && let Some(wait) = limits.blocked_for(ip)
    {
        crate::telemetry::rate_limited("auth");
        return too_many(wait, "too many failed authentications from this address; try again later");
    }
    let write = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    if write
        && let Some(limiter) = &limits.writes
        && let Err(not_until) = limiter.check_key(&ip)
    {
        crate::telemetry::rate_limited("writes");
        return too_many(
            not_until.wait_time_from(limits.clock.now()),
            "too many writes from this address; slow down",
        );
    }
    let response = next.run(req).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        limits.failed_auth(ip);
    }
    response
}
