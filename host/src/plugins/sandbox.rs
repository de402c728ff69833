//! One plugin run: a fresh store with the merchant's budgets, inert and
//! deterministic WASI, and a check of what the plugin returned.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::{LOG_BYTES, PluginLimits};
use crate::bindings::plugin::mercato::pricing::types::{Cart, Discount};
use crate::bindings::plugin::{Plugin, PluginPre};
use crate::runtime::ctx::{Confined, MemoryLimiter, confine};
use crate::runtime::fault::{DeadlineExceeded, MemoryCapExceeded};

/// What every plugin's clock says: 2025-01-01T00:00:00Z, never advancing.
pub const FIXED_TIME: Duration = Duration::from_secs(1_735_689_600);

/// Store data of one plugin run.
pub struct PluginCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    deadline: Instant,
}

impl Confined for PluginCtx {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
    fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Why a run gave no usable discounts; shown to the merchant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunError {
    /// `instructions`, `memory`, `stack`, `deadline`, `trap`,
    /// `output_too_large`, `invalid_output`, `plugin_error` or `unavailable`.
    pub kind: &'static str,
    pub message: String,
}

impl RunError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> RunError {
        RunError { kind, message: message.into() }
    }
}

/// The result of one run and what it printed.
pub struct RunOutcome {
    pub result: Result<Vec<Discount>, RunError>,
    pub log: String,
    pub fuel_used: u64,
    /// The largest linear memory the run had, in bytes.
    pub memory_peak: u64,
}

/// stdout and stderr of a run, interleaved, capped at [`LOG_BYTES`]: writes
/// past the cap are accepted and dropped, so a chatty plugin never fails.
#[derive(Clone, Default)]
struct RunLog(Arc<Mutex<(Vec<u8>, bool)>>);

impl RunLog {
    fn text(&self) -> String {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::from_utf8_lossy(&guard.0).into_owned();
        if guard.1 {
            s.push_str("\n[log truncated]");
        }
        s
    }
}

impl IsTerminal for RunLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for RunLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for RunLog {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = LOG_BYTES.saturating_sub(guard.0.len());
        let take = room.min(buf.len());
        guard.0.extend_from_slice(&buf[..take]);
        if take < buf.len() {
            guard.1 = true;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A clock that always says [`FIXED_TIME`] (wall) or zero (monotonic).
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        FIXED_TIME
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Random bytes derived from the plugin's digest: the same plugin sees the
/// same "random" numbers on every run, so a run can be replayed.
fn seeded_bytes(digest: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 * 32);
    for i in 0u8..32 {
        out.extend_from_slice(&Sha256::new().chain_update(digest).chain_update([i]).finalize());
    }
    out
}

fn inert_wasi(digest: &str, log: &RunLog) -> WasiCtx {
    let seed = seeded_bytes(digest);
    let mut seed128 = [0u8; 16];
    seed128.copy_from_slice(&seed[..16]);
    WasiCtxBuilder::new()
        .stdout(log.clone())
        .stderr(log.clone())
        .wall_clock(FixedClock)
        .monotonic_clock(FixedClock)
        .secure_random(wasmtime_wasi::Deterministic::new(seed.clone()))
        .insecure_random(wasmtime_wasi::Deterministic::new(seed))
        .insecure_random_seed(u128::from_le_bytes(seed128))
        .allow_ip_name_lookup(false)
        .allow_tcp(false)
        .allow_udp(false)
        .build()
}

/// Run the plugin `pre` (digest `digest`) on `cart` within `limits` and the
/// request's `request_deadline`, and check its output.
pub async fn run(
    engine: &Engine,
    pre: &PluginPre<PluginCtx>,
    digest: &str,
    limits: &PluginLimits,
    cart: &Cart,
    request_deadline: Instant,
) -> RunOutcome {
    let log = RunLog::default();
    let deadline = request_deadline.min(Instant::now() + Duration::from_millis(limits.deadline_ms));
    let ctx = PluginCtx {
        wasi: inert_wasi(digest, &log),
        table: ResourceTable::new(),
        limiter: MemoryLimiter::new(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX)),
        deadline,
    };
    let mut store = Store::new(engine, ctx);
    confine(&mut store);
    let fuel = limits.fuel_for(cart.lines.len());
    let mut fuel_used = 0;
    let result = match store.set_fuel(fuel) {
        Err(e) => Err(RunError::new("unavailable", format!("{e:#}"))),
        Ok(()) => {
            let called = call(pre, &mut store, cart).await;
            fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
            match called {
                Err(e) => Err(classify(&e, limits, fuel)),
                Ok(Err(message)) => Err(RunError::new("plugin_error", truncate(&message, 1000))),
                Ok(Ok(discounts)) => check_output(cart, &discounts, limits).map(|()| discounts),
            }
        }
    };
    let memory_peak = store.data().limiter.peak as u64;
    RunOutcome { result, log: log.text(), fuel_used, memory_peak }
}

async fn call(
    pre: &PluginPre<PluginCtx>,
    store: &mut Store<PluginCtx>,
    cart: &Cart,
) -> wasmtime::Result<Result<Vec<Discount>, String>> {
    let plugin: Plugin = pre.instantiate_async(&mut *store).await?;
    plugin.mercato_pricing_pricing().call_price(&mut *store, cart).await
}

fn classify(e: &wasmtime::Error, limits: &PluginLimits, fuel: u64) -> RunError {
    if e.chain().any(|c| c.is::<DeadlineExceeded>()) {
        return RunError::new("deadline", format!("ran past its deadline of {} ms", limits.deadline_ms));
    }
    if let Some(m) = e.chain().find_map(|c| c.downcast_ref::<MemoryCapExceeded>()) {
        return RunError::new(
            "memory",
            format!("tried to grow its memory to {} bytes, over its limit of {} bytes", m.desired, m.cap),
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            RunError::new("instructions", format!("used up its budget of {fuel} instructions"))
        }
        Some(Trap::StackOverflow) => RunError::new(
            "stack",
            format!("overflowed its stack of {} KiB", super::limits::STACK_BYTES / 1024),
        ),
        _ => RunError::new("trap", truncate(&format!("{e:#}"), 1000)),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Longest label a discount may carry, in characters.
pub const MAX_LABEL_CHARS: usize = 100;

/// The host's checks of a plugin's output (SPEC §6.4): within the output
/// budget, the cart's currency, only this merchant's lines, no negative
/// discount, and no line discounted below zero.
pub fn check_output(cart: &Cart, discounts: &[Discount], limits: &PluginLimits) -> Result<(), RunError> {
    let size: u64 =
        discounts.iter().map(|d| (d.sku.len() + d.label.len() + d.amount.currency.len() + 32) as u64).sum();
    if size > limits.output_bytes {
        return Err(RunError::new(
            "output_too_large",
            format!(
                "returned {} discounts ({size} bytes), over the output limit of {} bytes",
                discounts.len(),
                limits.output_bytes
            ),
        ));
    }
    let invalid = |m: String| Err(RunError::new("invalid_output", m));
    let mut taken: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for d in discounts {
        let Some(line) = cart.lines.iter().find(|l| l.sku == d.sku) else {
            return invalid(format!(
                "a discount names sku {:?}, which is not one of this merchant's lines",
                d.sku
            ));
        };
        if d.amount.currency != cart.currency {
            return invalid(format!(
                "the discount on {:?} is in {:?}, the cart is in {:?}",
                d.sku, d.amount.currency, cart.currency
            ));
        }
        if d.amount.amount < 0 {
            return invalid(format!("the discount on {:?} is negative ({})", d.sku, d.amount.amount));
        }
        let label_chars = d.label.chars().count();
        if label_chars == 0 || label_chars > MAX_LABEL_CHARS {
            return invalid(format!(
                "the discount on {:?} has a label of {label_chars} characters (1 to {MAX_LABEL_CHARS})",
                d.sku
            ));
        }
        let gross = line.unit_price.amount.checked_mul(i64::from(line.quantity)).unwrap_or(i64::MAX);
        let sum = taken.entry(d.sku.as_str()).or_insert(0);
        *sum = sum.saturating_add(d.amount.amount);
        if *sum > gross {
            return invalid(format!(
                "discounts on {:?} add up to {}, more than the line's {gross}: a line cannot go below zero",
                d.sku, *sum
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::plugin::mercato::pricing::types::{Line, Money};

    fn cart() -> Cart {
        let line = |sku: &str, amount: i64, quantity: u32| Line {
            sku: sku.into(),
            product_id: "p1".into(),
            quantity,
            unit_price: Money { amount, currency: "EUR".into() },
        };
        Cart {
            merchant_id: "m1".into(),
            currency: "EUR".into(),
            lines: vec![line("a", 1000, 3), line("b", 500, 1)],
        }
    }

    fn discount(sku: &str, amount: i64, currency: &str) -> Discount {
        Discount {
            sku: sku.into(),
            label: "promo".into(),
            amount: Money { amount, currency: currency.into() },
        }
    }

    #[test]
    fn valid_output_passes() {
        let ok = [discount("a", 1000, "EUR"), discount("a", 2000, "EUR"), discount("b", 500, "EUR")];
        assert_eq!(check_output(&cart(), &ok, &PluginLimits::default()), Ok(()));
    }

    #[test]
    fn each_invalid_output_is_named() {
        let limits = PluginLimits::default();
        let cases = [
            (vec![discount("zz", 1, "EUR")], "not one of this merchant's lines"),
            (vec![discount("a", 1, "USD")], "the cart is in"),
            (vec![discount("a", -5, "EUR")], "negative"),
            (vec![discount("b", 501, "EUR")], "below zero"),
            (vec![discount("a", 2000, "EUR"), discount("a", 1001, "EUR")], "below zero"),
            (vec![Discount { label: String::new(), ..discount("a", 1, "EUR") }], "label"),
        ];
        for (discounts, expected) in cases {
            let err = check_output(&cart(), &discounts, &limits).unwrap_err();
            assert_eq!(err.kind, "invalid_output");
            assert!(err.message.contains(expected), "{} should mention {expected}", err.message);
        }
        let many: Vec<Discount> = (0..1000).map(|_| discount("a", 0, "EUR")).collect();
        assert_eq!(check_output(&cart(), &many, &limits).unwrap_err().kind, "output_too_large");
    }

    #[test]
    fn seeded_randomness_depends_only_on_the_digest() {
        assert_eq!(seeded_bytes("sha256:aa"), seeded_bytes("sha256:aa"));
        assert_ne!(seeded_bytes("sha256:aa"), seeded_bytes("sha256:ab"));
    }
}
