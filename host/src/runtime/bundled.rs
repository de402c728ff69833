//! The components built by `build.rs` and shipped inside the binary.

use super::{ComponentKind, ComponentSource};

const CATALOG: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/catalog.wasm"));
const CART: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cart.wasm"));
const INVENTORY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inventory.wasm"));
const PAYMENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/payment.wasm"));
const ORDER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/order.wasm"));

/// The bundled bytes of `kind`.
pub fn bytes(kind: ComponentKind) -> &'static [u8] {
    match kind {
        ComponentKind::Catalog => CATALOG,
        ComponentKind::Cart => CART,
        ComponentKind::Inventory => INVENTORY,
        ComponentKind::Payment => PAYMENT,
        ComponentKind::Order => ORDER,
    }
}

/// Sources for every component from the bundle, each as version 1 (for
/// runtimes built without the registry, e.g. in benchmarks).
pub fn sources() -> Vec<ComponentSource> {
    ComponentKind::ALL
        .iter()
        .map(|&kind| ComponentSource { kind, version: 1, bytes: bytes(kind).to_vec() })
        .collect()
}

/// Directory of the test-only components built alongside (for tests).
pub const TEST_COMPONENTS_DIR: &str = env!("MERCATO_TEST_COMPONENTS");
