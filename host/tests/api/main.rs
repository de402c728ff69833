//! Host integration tests: one binary, one `spawn_app` (helpers.rs), a real
//! server on a loopback port and a fresh database per test, on SQLite and on
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod canary;
mod carts;
mod checkout;
mod deploy;
mod events;
mod interruption;
mod lifecycle;
mod merchants;
mod ops;
mod payments;
mod plugins;
mod pricing;
mod processes;
mod products;
mod registry_server;
mod restart;
mod sandbox;
mod schemathesis;
mod serve;
mod storage;
