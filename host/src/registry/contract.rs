//! Does a component fit a capability's world? The quick, static half of the
//! check (no compilation): it is a component, it exports the capability's
//! interface, and every import is one the host grants that capability. The
//! exact half — every imported and exported function with the same types —
//! is wasmtime's linking and type-checking in [`crate::runtime::Runtime::prepare`].

use crate::runtime::ComponentKind;
use crate::runtime::shape::{Shape, parse_component};
pub use crate::runtime::table::COMMERCE_VERSION;

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
    let wanted = row.export_name();
    if !shape.exports.iter().any(|e| e == &wanted) {
        return Err(Misfit::Contract(format!(
            "does not export {wanted}, which the {name} capability must (it exports: {})",
            list(&shape.exports)
        )));
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
        let component = |row: &crate::runtime::table::Row, import: Option<&str>| {
            let export = row.export_name();
            let import = import.map(|i| format!(r#"(import "{i}" (instance))"#)).unwrap_or_default();
            wat::parse_str(format!(r#"(component {import} (instance $e) (export "{export}" (instance $e)))"#))
                .expect("wat")
        };
        let mut refused = 0;
        for row in &TABLE {
            assert!(check(row.kind, &component(row, None)).is_ok(), "{}: the bare export", row.name);
            for grant in Grant::ALL {
                let import = import_name(grant);
                let result = check(row.kind, &component(row, Some(&import)));
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

    #[test]
    fn what_is_not_a_component_is_named() {
        let core = wat::parse_str("(module)").expect("wat");
        assert!(matches!(check(ComponentKind::Cart, &core), Err(Misfit::Invalid(m)) if m.contains("core")));
        assert!(
            matches!(check(ComponentKind::Cart, b"hello"), Err(Misfit::Invalid(m)) if m.contains("not WebAssembly"))
        );
        let http = wat::parse_str(
            r#"(component
                 (import "wasi:http/outgoing-handler@0.2.6" (instance))
                 (import "mercato:commerce/catalog@0.1.0" (instance $c))
                 (export "mercato:commerce/catalog@0.1.0" (instance $c)))"#,
        )
        .expect("wat");
        let Err(Misfit::Contract(why)) = check(ComponentKind::Catalog, &http) else { panic!("accepted") };
        assert!(why.contains("wasi:http/outgoing-handler"), "{why}");
    }
}
