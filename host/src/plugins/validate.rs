//! Upload checks that need no compilation: is it a component, which
//! interfaces does it import and export. They run before the (expensive)
//! compile, so a refused upload costs a parse, not a code generation.

use wasmparser::{Encoding, Parser, Payload};

/// The interface every plugin exports.
pub const PRICING_EXPORT: &str = "mercato:pricing/pricing@0.1.0";

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
];

/// What the static checks found.
#[derive(Debug)]
pub struct Shape {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Check that `bytes` is a component importing only the inert subset and
/// exporting the pricing interface. The error says exactly what is wrong.
pub fn check(bytes: &[u8]) -> Result<Shape, String> {
    let shape = parse_component(bytes)?;
    for import in &shape.imports {
        check_import(import)?;
    }
    if !shape.exports.iter().any(|e| e == PRICING_EXPORT) {
        return Err(format!(
            "does not export {PRICING_EXPORT} (it exports: {}); build it for the `mercato:pricing/plugin` world",
            if shape.exports.is_empty() { "nothing".to_string() } else { shape.exports.join(", ") }
        ));
    }
    Ok(shape)
}

/// Check that `bytes` is a WebAssembly component (not a core module, not
/// something else) and give the import and export names of its outermost
/// level. The error says what it is instead.
pub fn parse_component(bytes: &[u8]) -> Result<Shape, String> {
    if !bytes.starts_with(b"\0asm") {
        return Err("not WebAssembly: the file does not start with the \\0asm header".into());
    }
    if Parser::is_core_wasm(bytes) {
        return Err("a core WebAssembly module, not a component: build for wasm32-wasip2 \
             (or wrap the module with `wasm-tools component new`)"
            .into());
    }
    if !Parser::is_component(bytes) {
        return Err("not a WebAssembly component: unknown binary version".into());
    }
    top_level_names(bytes)
}

/// The import and export names of the outermost component.
fn top_level_names(bytes: &[u8]) -> Result<Shape, String> {
    let mut shape = Shape { imports: Vec::new(), exports: Vec::new() };
    // Nested modules and components are parsed inline: `Version` opens one
    // level, `End` closes it. Only level 1 is the component itself.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a valid component: {e}"))?;
        match payload {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth == 1 && encoding != Encoding::Component {
                    return Err("not a WebAssembly component".into());
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| format!("not a valid component: {e}"))?;
                    shape.imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| format!("not a valid component: {e}"))?;
                    shape.exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// Is `name` (e.g. `wasi:cli/stdout@0.2.3`) one of the imports a plugin may have?
pub fn check_import(name: &str) -> Result<(), String> {
    let refuse = || {
        Err(format!(
            "imports {name}, which pricing plugins may not use: a plugin gets no capability; \
             it may import only mercato:pricing/types and the inert WASI interfaces \
             (wasi:io, wasi:cli, wasi:clocks, wasi:random, wasi:filesystem without directories)"
        ))
    };
    let (path, version) = match name.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (name, None),
    };
    let Some((package, interface)) = path.split_once('/') else { return refuse() };
    if package == "mercato:pricing" && interface == "types" {
        return if version.is_some_and(|v| v.starts_with("0.1.")) { Ok(()) } else { refuse() };
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
            "mercato:pricing/types@0.1.0",
        ] {
            assert!(check_import(ok).is_ok(), "{ok}");
        }
        for refused in [
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:sockets/tcp@0.2.0",
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:cli/stdout@0.3.0",
            "wasi:cli/stdout",
            "mercato:commerce/catalog@0.1.0",
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
        assert!(check(&component).unwrap_err().contains("does not export mercato:pricing/pricing@0.1.0"));
        let http =
            wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#).unwrap();
        assert!(check(&http).unwrap_err().contains("imports wasi:http/outgoing-handler@0.2.0"));
        let truncated = &component[..component.len() - 1];
        assert!(check(truncated).is_err());
    }
}
