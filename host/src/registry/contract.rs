//! Does a component fit a capability's world? The quick, static half of the
//! check (no compilation): it is a component, it exports the capability's
//! interface, and every import is one the host grants that capability. The
//! exact half — every imported and exported function with the same types —
//! is wasmtime's linking and type-checking in [`crate::runtime::Runtime::prepare`].

use crate::runtime::ComponentKind;
pub use crate::runtime::table::COMMERCE_VERSION;
use crate::wasm::shape::{Shape, parse_component};

/// The world a component of `kind` must fit (`wit/worlds.wit`).
pub fn world(kind: ComponentKind) -> String {
    kind.row().world()
}

/// Why a component does not fit.
#[derive(Debug, PartialEq, Eq)]
pub enum Misfit {
    /// Not a component at all.
    Invalid(String),
    /// A component for another world.
    Contract(String),
}

/// The static check; gives the component's imports and exports.
pub fn check(kind: ComponentKind, bytes: &[u8]) -> Result<Shape, Misfit> {
    let shape = parse_component(bytes).map_err(Misfit::Invalid)?;
    let name = kind.name();
    let row = kind.row();
    for wanted in row.export_names() {
        if !shape.exports.iter().any(|e| e == &wanted) {
            return Err(Misfit::Contract(format!(
                "does not export {wanted}, which the {name} capability must (it exports: {})",
                list(&shape.exports)
            )));
        }
    }
    for import in &shape.imports {
        if !row.may_import(import) {
            return Err(Misfit::Contract(format!(
                "imports {import}, which the host does not grant the {name} capability (world {})",
                row.world()
            )));
        }
    }
    Ok(shape)
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_components_fit_their_own_worlds_only() {
        for kind in ComponentKind::ALL {
            assert!(check(kind, kind.row().bundled).is_ok(), "{kind:?}");
            for other in ComponentKind::ALL.into_iter().filter(|o| *o != kind) {
                let Err(Misfit::Contract(why)) = check(other, kind.row().bundled) else {
                    panic!("{kind:?} accepted as {other:?}");
                };
                assert!(why.contains("does not export") || why.contains("imports"), "{why}");
            }
        }
    }

    /// A component of `row`'s kind that exports its interfaces (empty
    /// instances) and imports `import`, if any.
    fn fitting(row: &crate::runtime::table::Row, import: Option<&str>) -> Vec<u8> {
        let import = import.map(|i| format!(r#"(import "{i}" (instance))"#)).unwrap_or_default();
        let body: String = row
            .export_names()
            .iter()
            .enumerate()
            .map(|(i, e)| format!(r#"(instance $e{i}) (export "{e}" (instance $e{i}))"#))
            .collect::<Vec<_>>()
            .join(" ");
        wat::parse_str(format!("(component {import} {body})")).expect("wat")
    }

    /// For every world, a component that imports anything granted to
    /// another component but not to it is refused, naming the import; the
    /// same component without that import passes.
    #[test]
    fn each_world_refuses_imports_outside_its_grants() {
        use crate::runtime::table::{Grant, TABLE};
        fn import_name(grant: Grant) -> String {
            match grant {
                Grant::OutboundHttp => "wasi:http/outgoing-handler@0.2.6".to_string(),
                Grant::Config => "wasi:config/store@0.2.0-rc.1".to_string(),
                other => format!("{}{COMMERCE_VERSION}", other.import_prefix()),
            }
        }
        let mut refused = 0;
        for row in &TABLE {
            assert!(check(row.kind, &fitting(row, None)).is_ok(), "{}: the bare export", row.name);
            for grant in Grant::ALL {
                let import = import_name(grant);
                let result = check(row.kind, &fitting(row, Some(&import)));
                if row.grants.contains(&grant) {
                    assert!(result.is_ok(), "{} may import {import}: {result:?}", row.name);
                    continue;
                }
                let Err(Misfit::Contract(why)) = result else {
                    panic!("{} accepted an import of {import}", row.name)
                };
                assert!(why.contains(&import) && why.contains(row.name), "{why}");
                refused += 1;
            }
        }
        assert!(refused >= TABLE.len(), "every world refuses something: {refused}");
    }

    /// The interfaces only the host calls (exported, but behind no grant:
    /// `catalog`, `merchant-catalog`, `merchant-stock`, `cart`, `orders`)
    /// cannot be imported by any component, its own owner's included.
    #[test]
    fn host_only_interfaces_are_importable_by_no_world() {
        use crate::runtime::table::{Grant, TABLE};
        let host_only: Vec<String> = TABLE
            .iter()
            .flat_map(|row| row.export_names())
            .filter(|e| !Grant::ALL.iter().any(|g| e.starts_with(g.import_prefix())))
            .collect();
        for name in ["catalog", "merchant-catalog", "merchant-stock", "cart", "orders"] {
            let full = format!("mercato:commerce/{name}@{COMMERCE_VERSION}");
            assert!(host_only.contains(&full), "{full} is host-only: {host_only:?}");
        }
        for row in &TABLE {
            for import in &host_only {
                let Err(Misfit::Contract(why)) = check(row.kind, &fitting(row, Some(import))) else {
                    panic!("{} accepted an import of the host-only {import}", row.name)
                };
                assert!(why.contains(import.as_str()), "{why}");
            }
        }
    }

    #[test]
    fn each_export_of_a_world_is_required() {
        use crate::runtime::table::TABLE;
        for row in TABLE.iter().filter(|r| r.exports.len() > 1) {
            for missing in row.export_names() {
                let body: String = row
                    .export_names()
                    .iter()
                    .filter(|e| **e != missing)
                    .enumerate()
                    .map(|(i, e)| format!(r#"(instance $e{i}) (export "{e}" (instance $e{i}))"#))
                    .collect::<Vec<_>>()
                    .join(" ");
                let bytes = wat::parse_str(format!("(component {body})")).expect("wat");
                let Err(Misfit::Contract(why)) = check(row.kind, &bytes) else {
                    panic!("{} accepted without {missing}", row.name)
                };
                assert!(why.contains(&format!("does not export {missing}")), "{why}");
            }
        }
    }

    #[test]
    fn what_is_not_a_component_is_named() {
        let core = wat::parse_str("(module)").expect("wat");
        assert!(matches!(check(ComponentKind::Cart, &core), Err(Misfit::Invalid(m)) if m.contains("core")));
        assert!(
            matches!(check(ComponentKind::Cart, b"hello"), Err(Misfit::Invalid(m)) if m.contains("not WebAssembly"))
        );
        let http = fitting(ComponentKind::Catalog.row(), Some("wasi:http/outgoing-handler@0.2.6"));
        let Err(Misfit::Contract(why)) = check(ComponentKind::Catalog, &http) else { panic!("accepted") };
        assert!(why.contains("wasi:http/outgoing-handler"), "{why}");
    }
}
