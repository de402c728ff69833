//! One plugin run: a fresh store with the merchant's budgets, inert and
//! deterministic WASI ([`super::wasi`]), a host timer, and a check of what
//! the plugin returned.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::io::{RunInput, RunOutput, World, check_output};
use super::limits::PluginLimits;
use super::wasi::{RunLog, VirtualClock, VirtualDeadline, inert_wasi};
use crate::bindings::{plugin as v2, plugin_v1 as v1};
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

/// A compiled and linked plugin, for the world it was built for.
pub enum Compiled {
    V1(v1::PluginPre<PluginCtx>),
    V2(v2::PluginPre<PluginCtx>),
}

impl Compiled {
    pub fn world(&self) -> World {
        match self {
            Compiled::V1(_) => World::V1,
            Compiled::V2(_) => World::V2,
        }
    }
}

/// The result of one run and what it printed.
pub struct RunOutcome {
    pub result: Result<RunOutput, RunError>,
    pub log: String,
    pub fuel_used: u64,
    /// The most memory (all linear memories and tables) the run had, in bytes.
    pub memory_peak: u64,
    /// Stopped by the host's clock (its deadline in real time), not by
    /// anything the plugin's input decides: such a run's end point depends
    /// on the machine's speed, so a replay cannot reproduce it exactly.
    pub cut_by_host_time: bool,
}

impl RunOutcome {
    /// A run that never started.
    pub fn failed(error: RunError) -> RunOutcome {
        RunOutcome {
            result: Err(error),
            log: String::new(),
            fuel_used: 0,
            memory_peak: 0,
            cut_by_host_time: false,
        }
    }
}

/// Run the plugin `pre` (digest `digest`) on `input` within `limits` and
/// `deadline` (the earlier of the plugin's and the request's), and check its
/// output. The run is raced against a host timer: whatever the plugin does
/// (compute, wait in the host), it is over by `deadline`. Everything the
/// plugin can observe — the input, its clocks (virtual, sized by the
/// limits' deadline), its randomness (seeded by `digest`), its fuel — is a
/// function of the arguments, so the same arguments give the same output:
/// that is what makes a recorded run replayable.
pub async fn run(
    engine: &Engine,
    pre: &Compiled,
    digest: &str,
    limits: &PluginLimits,
    input: &RunInput,
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
    let fuel = limits.fuel_for(input.lines.len());
    let mut fuel_used = 0;
    let mut cut_by_host_time = false;
    let result = match store.set_fuel(fuel) {
        Err(e) => Err(RunError::new("unavailable", format!("{e:#}"))),
        Ok(()) => {
            // Whichever comes first: the answer, the host timer, or the
            // plugin waiting past its deadline on its virtual clock.
            let called = tokio::select! {
                // The call first: when the plugin oversleeps, its own host
                // call traps, and that ends the run (see `VirtualClock::overslept`).
                biased;
                called = call(pre, &mut store, input) => called,
                () = tokio::time::sleep_until(deadline.into()) => Err(wasmtime::Error::new(DeadlineExceeded)),
                over = clock.overslept() => Err(wasmtime::Error::new(over)),
            };
            fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
            if let Err(e) = &called {
                cut_by_host_time = e.chain().any(|c| c.is::<DeadlineExceeded>());
            }
            match called {
                Err(e) => Err(classify(&e, limits, fuel)),
                Ok(Err(message)) => Err(RunError::new("plugin_error", truncate(&message, 1000))),
                Ok(Ok(output)) => check_output(input, &output, limits).map(|()| output),
            }
        }
    };
    let memory_peak = store.data().limiter.peak as u64;
    RunOutcome { result, log: log.text(), fuel_used, memory_peak, cut_by_host_time }
}

async fn call(
    pre: &Compiled,
    store: &mut Store<PluginCtx>,
    input: &RunInput,
) -> wasmtime::Result<Result<RunOutput, String>> {
    Ok(match pre {
        Compiled::V1(pre) => {
            let plugin = pre.instantiate_async(&mut *store).await?;
            plugin
                .mercato_pricing_pricing()
                .call_price(&mut *store, &input.to_v1())
                .await?
                .map(RunOutput::from_v1)
        }
        Compiled::V2(pre) => {
            let plugin = pre.instantiate_async(&mut *store).await?;
            plugin
                .mercato_pricing_pricing()
                .call_price(&mut *store, &input.to_v2())
                .await?
                .map(RunOutput::from_v2)
        }
    })
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
