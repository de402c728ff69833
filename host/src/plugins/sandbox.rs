//! One plugin run: a fresh store with the merchant's budgets, inert and
//! deterministic WASI ([`super::wasi`]), a host timer, and a check of what
//! the plugin returned.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::PluginLimits;
use super::wasi::{RunLog, VirtualClock, VirtualDeadline, inert_wasi};
use crate::bindings::plugin::mercato::pricing::types::{Cart, Discount};
use crate::bindings::plugin::{Plugin, PluginPre};
use crate::wasm::confine::{Confined, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, MemoryLimiter, confine};
use crate::wasm::fault::{DeadlineExceeded, MemoryCapExceeded};

/// Resource handles (streams, pollables, …) a run may hold at once, in the
/// host's table and in the guest's handle tables: host memory outside the
/// memory budget, so kept small (a language runtime needs a few dozen).
pub const MAX_HANDLES: usize = 4096;

/// Store data of one plugin run.
pub struct PluginCtx {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    limiter: MemoryLimiter,
    deadline: Instant,
    pub(super) clock: VirtualClock,
    pub(super) log: RunLog,
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
    /// `output_too_large`, `invalid_output`, `plugin_error`, `overloaded`
    /// or `unavailable`.
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
    /// The most memory (all linear memories and tables) the run had, in bytes.
    pub memory_peak: u64,
}

impl RunOutcome {
    /// A run that never started.
    pub fn failed(error: RunError) -> RunOutcome {
        RunOutcome { result: Err(error), log: String::new(), fuel_used: 0, memory_peak: 0 }
    }
}

/// Run the plugin `pre` (digest `digest`) on `cart` within `limits` and
/// `deadline` (the earlier of the plugin's and the request's), and check its
/// output. The run is raced against a host timer: whatever the plugin does
/// (compute, wait in the host), it is over by `deadline`.
pub async fn run(
    engine: &Engine,
    pre: &PluginPre<PluginCtx>,
    digest: &str,
    limits: &PluginLimits,
    cart: &Cart,
    deadline: Instant,
) -> RunOutcome {
    let log = RunLog::default();
    let clock = VirtualClock::new(Duration::from_millis(limits.deadline_ms));
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HANDLES);
    let ctx = PluginCtx {
        wasi: inert_wasi(digest, &log),
        table,
        limiter: MemoryLimiter::new(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX)),
        deadline,
        clock: clock.clone(),
        log: log.clone(),
    };
    let mut store = Store::new(engine, ctx);
    store.set_max_component_handles(MAX_HANDLES);
    confine(&mut store);
    let fuel = limits.fuel_for(cart.lines.len());
    let mut fuel_used = 0;
    let result = match store.set_fuel(fuel) {
        Err(e) => Err(RunError::new("unavailable", format!("{e:#}"))),
        Ok(()) => {
            // Whichever comes first: the answer, the host timer, or the
            // plugin waiting past its deadline on its virtual clock.
            let called = tokio::select! {
                called = call(pre, &mut store, cart) => called,
                () = tokio::time::sleep_until(deadline.into()) => Err(wasmtime::Error::new(DeadlineExceeded)),
                over = clock.overslept() => Err(wasmtime::Error::new(over)),
            };
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

fn past_deadline(limits: &PluginLimits) -> RunError {
    RunError::new("deadline", format!("ran past its deadline of {} ms", limits.deadline_ms))
}

fn classify(e: &wasmtime::Error, limits: &PluginLimits, fuel: u64) -> RunError {
    if e.chain().any(|c| c.is::<DeadlineExceeded>()) {
        return past_deadline(limits);
    }
    if let Some(v) = e.chain().find_map(|c| c.downcast_ref::<VirtualDeadline>()) {
        return RunError::new(
            "deadline",
            format!(
                "waited {} ms (a sleep or a poll), past its deadline of {} ms: a plugin's clock is \
                 virtual, its waits are not real time",
                v.asked_ns / 1_000_000,
                limits.deadline_ms
            ),
        );
    }
    if let Some(m) = e.chain().find_map(|c| c.downcast_ref::<MemoryCapExceeded>()) {
        return RunError::new(
            "memory",
            format!(
                "tried to grow its memories and tables to {} bytes, over its limit of {} bytes",
                m.desired, m.cap
            ),
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
        _ => {
            let text = format!("{e:#}");
            if ["memory", "table", "instance"].iter().any(|w| text.contains(&format!("{w} count too high"))) {
                return RunError::new(
                    "memory",
                    format!(
                        "creates more than {MAX_MEMORIES} memories, {MAX_TABLES} tables or {MAX_INSTANCES} \
                         instances: {}",
                        truncate(&text, 300)
                    ),
                );
            }
            RunError::new("trap", truncate(&text, 1000))
        }
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
}
