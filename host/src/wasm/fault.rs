//! Faults: what went wrong when a component could not give an answer (as
//! opposed to a domain error, which is an answer). A fault is never shown to
//! a client in detail; it is logged, counted and mapped to a 5xx.

use std::fmt;

/// A guest ran past its request's deadline.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "component exceeded its deadline")
    }
}
impl std::error::Error for DeadlineExceeded {}

/// A guest tried to grow its memories and tables past their common cap.
#[derive(Debug, Clone, Copy)]
pub struct MemoryCapExceeded {
    pub cap: usize,
    pub desired: usize,
}

impl fmt::Display for MemoryCapExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "component tried to grow its memories and tables to {} bytes, past its cap of {} bytes",
            self.desired, self.cap
        )
    }
}
impl std::error::Error for MemoryCapExceeded {}

/// Why a component call produced no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fault {
    #[error("{component}: deadline exceeded")]
    Deadline { component: &'static str },
    #[error("{component}: memory cap exceeded")]
    Memory { component: &'static str },
    #[error("{component}: no instance slot free")]
    Overloaded { component: &'static str },
    #[error("{component}: trapped: {detail}")]
    Trap { component: &'static str, detail: String },
}

impl Fault {
    /// Classify a wasmtime error from a call into `component`.
    pub fn classify(component: &'static str, e: &wasmtime::Error) -> Fault {
        // A fault of a peer component keeps its own classification.
        if let Some(f) = e.chain().find_map(|c| c.downcast_ref::<Fault>()) {
            return f.clone();
        }
        let has = |f: fn(&(dyn std::error::Error + 'static)) -> bool| e.chain().any(f);
        if has(|c| c.is::<DeadlineExceeded>()) {
            Fault::Deadline { component }
        } else if has(|c| c.is::<MemoryCapExceeded>()) {
            Fault::Memory { component }
        } else if has(|c| c.is::<wasmtime::PoolConcurrencyLimitError>()) {
            Fault::Overloaded { component }
        } else {
            Fault::Trap { component, detail: format!("{e:?}") }
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Deadline { .. } => "deadline",
            Fault::Memory { .. } => "memory",
            Fault::Overloaded { .. } => "overloaded",
            Fault::Trap { .. } => "trap",
        }
    }
}
