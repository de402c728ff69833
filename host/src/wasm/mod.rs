//! The low Wasm layer: the engine and its epoch ticker, the precompiled
//! artifact cache, confinement (memory cap, epoch deadline), fault
//! classification and component shapes. It imports nothing else of the host;
//! the service-component runtime (`crate::runtime`) and the plugin sandbox
//! (`crate::plugins`) are both built on it.

pub mod cache;
pub mod confine;
pub mod engine;
pub mod fault;
pub mod shape;

use sha2::{Digest, Sha256};

pub use fault::Fault;

/// `sha256:<hex>` of `bytes`: how components and plugins are named.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
