//! The shape of a component without compiling it: is it a component (not a
//! core module, not something else), and which interfaces does its outermost
//! level import and export. Shared by plugin uploads, component deploys and
//! `mercato push` (which lists them in the OCI config).

use wasmparser::{Encoding, Parser, Payload};

/// A component's top-level imports and exports.
#[derive(Debug)]
pub struct Shape {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
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
