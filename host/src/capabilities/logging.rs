//! `wasi:logging`: component log records become tracing events tagged with
//! the component's name.

use crate::bindings::host::wasi::logging::logging::{Host, Level};
use crate::runtime::Ctx;

impl Host for Ctx {
    async fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        let component = self.kind.name();
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
