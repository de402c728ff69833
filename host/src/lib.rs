//! mercato: a marketplace commerce backend whose business logic runs as
//! sandboxed WebAssembly components inside this host.
//!
//! - [`config`]: settings from defaults, file, environment and flags.
//! - [`storage`]: SQLite / PostgreSQL, the components' key-value data and the host's tables.
//! - [`runtime`]: the wasmtime engine, component versions, stores and limits.
//! - [`registry`]: component versions in the database, deploys, rollbacks,
//!   signatures, replicas; [`oci`]: components as OCI artifacts.
//! - [`capabilities`]: the WIT interfaces the host provides to components.
//! - [`events`]: the outbox's events, rendered in the API's shapes, and their relay.
//! - [`http`]: the JSON API. [`auth`]: tokens. [`telemetry`]: logs and metrics.
//! - [`app`]: wires it all together; [`demo`]: the demo catalog.

#![deny(unsafe_code)]

pub mod app;
pub mod auth;
pub mod bindings;
pub mod capabilities;
pub mod config;
pub mod demo;
pub mod events;
pub mod http;
pub mod net;
pub mod oci;
pub mod plugins;
pub mod registry;
pub mod runtime;
pub mod signature;
pub mod storage;
pub mod telemetry;
pub mod wasm;

#[cfg(test)]
mod layers;

/// mimalloc rather than the system allocator: a request allocates many small
/// strings and vectors on whichever worker thread runs it (lifting guest
/// values, rows, JSON), where glibc's malloc spent a fifth of the list-page
/// profile (see `cargo bench --bench read_path`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use app::App;
pub use config::Config;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
