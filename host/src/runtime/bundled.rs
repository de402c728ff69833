//! The components built by `build.rs` and shipped inside the binary (their
//! bytes are in [`super::table::TABLE`]).

use super::{ComponentKind, ComponentSource};

/// The bundled bytes of `kind`.
pub fn bytes(kind: ComponentKind) -> &'static [u8] {
    kind.row().bundled
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
