//! Confinement of a guest's store: one byte budget over its memories and
//! tables, and a wall-clock deadline enforced by epochs (a guest past it
//! traps; before it, it yields to the executor on every tick). Service
//! components and pricing plugins share this.

use std::time::Instant;

use wasmtime::{ResourceLimiter, Store, UpdateDeadline};

use super::fault::{DeadlineExceeded, MemoryCapExceeded};

/// Bytes one table element takes in wasmtime (a pointer); tables count
/// against the same budget as linear memories.
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();
/// Linear memories, tables and core instances one store may create. Each
/// memory reserves address space even when empty, so the count is bounded
/// apart from the byte budget; a component built by the usual tools (Rust,
/// componentize-js, componentize-py) has a handful of each.
pub const MAX_MEMORIES: usize = 32;
pub const MAX_TABLES: usize = 32;
pub const MAX_INSTANCES: usize = 256;

/// One byte budget over every linear memory and table of a store (SPEC §2:
/// "one memory cap over all memories and tables"): growth that would take
/// the sum past the cap is refused with an error that says so. A memory or
/// table is counted from its creation (wasmtime reports a new one as growth
/// from zero); growth past a memory's own maximum fails without counting.
pub struct MemoryLimiter {
    pub(crate) cap: usize,
    /// Bytes granted so far over all memories and tables.
    pub(crate) total: usize,
    /// The largest total granted so far.
    pub(crate) peak: usize,
}

impl MemoryLimiter {
    pub fn new(cap: usize) -> MemoryLimiter {
        MemoryLimiter { cap, total: 0, peak: 0 }
    }

    fn grow(&mut self, current: usize, desired: usize, max: Option<usize>) -> wasmtime::Result<bool> {
        if max.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.cap {
            return Err(wasmtime::Error::new(MemoryCapExceeded { cap: self.cap, desired: total }));
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current, desired, max)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| elements.saturating_mul(TABLE_ELEMENT_BYTES);
        self.grow(bytes(current), bytes(desired), max.map(bytes))
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
}

/// Store data of a sandboxed guest: a memory cap and a wall-clock deadline.
pub trait Confined: Send + 'static {
    fn limiter(&mut self) -> &mut MemoryLimiter;
    fn deadline(&self) -> Instant;
}

/// Apply the memory cap, and on every epoch tick either stop the guest (past
/// its deadline) or yield to the executor, so a busy guest never starves
/// other requests. Service components and pricing plugins share this.
pub fn confine<T: Confined>(store: &mut Store<T>) {
    store.limiter(|c| c.limiter());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline() {
            Err(wasmtime::Error::new(DeadlineExceeded))
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}
