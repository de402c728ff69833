//! `wasi:logging`: component log records become tracing events tagged with
//! the component's name.

use crate::bindings::host::wasi::logging::logging::{Host, Level};

/// The `wasi:logging` state of one store: whose records they are.
pub struct Logging {
    pub component: &'static str,
}

impl Host for Logging {
    async fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        let component = self.component;
        match level {
            Level::Trace => tracing::trace!(component, %context, "{message}"),
            Level::Debug => tracing::debug!(component, %context, "{message}"),
            Level::Info => tracing::info!(component, %context, "{message}"),
            Level::Warn => tracing::warn!(component, %context, "{message}"),
            Level::Error | Level::Critical => tracing::error!(component, %context, "{message}"),
        }
        Ok(())
    }
}
