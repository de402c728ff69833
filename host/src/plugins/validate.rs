//! Upload checks that need no compilation: is it a component, which
//! interfaces does it import and export. They run before the (expensive)
//! compile, so a refused upload costs a parse, not a code generation.

pub use crate::wasm::shape::{Shape, parse_component};

/// The interface a plugin exports, by world.
pub const PRICING_EXPORT: &str = "mercato:pricing/pricing@0.2.0";
pub const PRICING_EXPORT_V1: &str = "mercato:pricing/pricing@0.1.0";

/// The WASI interfaces a language runtime needs to start, which the host
/// links inert (SPEC §2), by package and interface; any 0.2.x version.
const INERT_WASI: &[(&str, &[&str])] = &[
    ("wasi:io", &["error", "poll", "streams"]),
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
    ),
    ("wasi:clocks", &["wall-clock", "monotonic-clock"]),
    ("wasi:random", &["random", "insecure", "insecure-seed"]),
    // Linked with no preopened directory: the plugin sees no file system.
    ("wasi:filesystem", &["types", "preopens"]),
    // Linked with no network: creating a socket and looking up a name fail
    // with access-denied (CPython imports these whatever the plugin does).
    (
        "wasi:sockets",
        &[
            "network",
            "instance-network",
            "tcp",
            "tcp-create-socket",
            "udp",
            "udp-create-socket",
            "ip-name-lookup",
        ],
    ),
];

/// Check that `bytes` is a component importing only the inert subset and
/// exporting the pricing interface. The error says exactly what is wrong.
pub fn check(bytes: &[u8]) -> Result<Shape, String> {
    let shape = parse_component(bytes)?;
    for import in &shape.imports {
        check_import(import)?;
    }
    if !shape.exports.iter().any(|e| e == PRICING_EXPORT || e == PRICING_EXPORT_V1) {
        return Err(format!(
            "does not export {PRICING_EXPORT} (or {PRICING_EXPORT_V1}) (it exports: {}); build it for the \
             `mercato:pricing/plugin` world",
            if shape.exports.is_empty() { "nothing".to_string() } else { shape.exports.join(", ") }
        ));
    }
    Ok(shape)
}

/// Is `name` (e.g. `wasi:cli/stdout@0.2.3`) one of the imports a plugin may have?
pub fn check_import(name: &str) -> Result<(), String> {
    let refuse = || {
        Err(format!(
            "imports {name}, which pricing plugins may not use: a plugin gets no capability; \
             it may import only mercato:pricing/types and the inert WASI interfaces \
             (wasi:io, wasi:cli, wasi:clocks, wasi:random, wasi:filesystem without directories, \
             wasi:sockets without network)"
        ))
    };
    let (path, version) = match name.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (name, None),
    };
    let Some((package, interface)) = path.split_once('/') else { return refuse() };
    if package == "mercato:pricing" && interface == "types" {
        return if version.is_some_and(|v| v == "0.1.0" || v == "0.2.0") { Ok(()) } else { refuse() };
    }
    let wasi_0_2 = version.is_some_and(|v| v.starts_with("0.2."));
    let listed = INERT_WASI.iter().any(|(p, ifaces)| *p == package && ifaces.contains(&interface));
    if listed && wasi_0_2 { Ok(()) } else { refuse() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inert_wasi_is_allowed_and_capabilities_are_not() {
        for ok in [
            "wasi:cli/stdout@0.2.12",
            "wasi:io/streams@0.2.0",
            "wasi:random/insecure-seed@0.2.3",
            "wasi:filesystem/preopens@0.2.6",
            "wasi:sockets/tcp-create-socket@0.2.9",
            "wasi:sockets/ip-name-lookup@0.2.0",
            "mercato:pricing/types@0.1.0",
            "mercato:pricing/types@0.2.0",
        ] {
            assert!(check_import(ok).is_ok(), "{ok}");
        }
        for refused in [
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:sockets/tcp@0.3.0",
            "wasi:sockets/raw@0.2.0",
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:cli/stdout@0.3.0",
            "wasi:cli/stdout",
            "mercato:commerce/catalog@0.6.0",
            "wasi:clocks/timezone@0.2.0",
            "env",
        ] {
            let err = check_import(refused).unwrap_err();
            assert!(err.contains(refused), "{err}");
        }
    }

    #[test]
    fn non_components_are_named_for_what_they_are() {
        assert!(check(b"hello world").unwrap_err().contains("\\0asm"));
        let core = b"\0asm\x01\0\0\0";
        assert!(check(core).unwrap_err().contains("core WebAssembly module"));
        let component = wat::parse_str("(component)").unwrap();
        assert!(check(&component).unwrap_err().contains("does not export mercato:pricing/pricing@0.2.0"));
        let http =
            wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#).unwrap();
        assert!(check(&http).unwrap_err().contains("imports wasi:http/outgoing-handler@0.2.0"));
        let truncated = &component[..component.len() - 1];
        assert!(check(truncated).is_err());
    }
}
