//! The one wasmtime [`Engine`] of the process and its epoch ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of deadlines, and how often a
/// running guest yields to the executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of each pooled memory and table kept resident between instances.
pub const KEEP_RESIDENT: usize = 256 * 1024;

/// How many freed memories, tables and stacks are decommitted at once.
const DECOMMIT_BATCH: usize = 16;

/// Build the engine: component model, async, epoch interruption, and a
/// pooling allocator for `max_instances` instances of at most `memory_bytes`
/// of linear memory each.
pub fn build(max_instances: u32, memory_bytes: usize) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 4)
        .total_memories(max_instances)
        .total_tables(max_instances * 2)
        .total_stacks(max_instances)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_memory_size(memory_bytes)
        .max_unused_warm_slots(64)
        // Reset the first pages of a reused memory with memset instead of
        // returning them to the kernel: a fresh instance then writes to
        // resident pages instead of taking a page fault per 4 KiB.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        // On Linux 6.7+, reset only the pages an instance dirtied (found with
        // the PAGEMAP_SCAN ioctl) instead of the whole resident prefix.
        .pagemap_scan(Enabled::Auto)
        // Return the rest to the kernel in batches: one TLB shootdown per
        // batch instead of one per instance.
        .decommit_batch_size(DECOMMIT_BATCH);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .parallel_compilation(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // `MERCATO_WASM_PROFILE=perfmap`: name the compiled guest functions for
    // `perf` (in /tmp/perf-<pid>.map), to profile components under load.
    if std::env::var("MERCATO_WASM_PROFILE").is_ok_and(|v| v == "perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Ok(Engine::new(&config)?)
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("mercato-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        EpochTicker { stop, handle }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
