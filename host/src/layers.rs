//! The host's modules form layers: the test below reads the sources and
//! fails on any circle between top-level modules (`crate::a` naming
//! `crate::b` and back, directly or around a longer loop), and on any
//! import by a module of the bottom layer.
//!
//! ```text
//! app, main                       start-up, command line
//! demo                            the demo catalog
//! http                            routes, errors, rate limits, AppState
//! config                          the configuration (aggregates the others' sections)
//! registry                        deploys, rollbacks, sync between replicas
//! oci                             the OCI client
//! runtime                         service components: table, active set, scope, instances, peers
//! capabilities                    host interfaces as per-interface store state
//! events                          the outbox's events and their relay (NATS, webhooks)
//! plugins                         merchants' pricing plugins and their sandbox
//! auth                            tokens and secrets
//! telemetry                       metrics, logs, spans
//! bindings                        what `wit/` generates
//! storage, wasm, signature, net   the bottom layer: import nothing of the host
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that import no other module of the host.
const BOTTOM: &[&str] = &["net", "signature", "storage", "wasm"];

/// Every top-level module and the top-level modules its code (tests aside) names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let modules: BTreeSet<String> =
        files.iter().map(|f| top(&src, f)).filter(|m| m != "lib" && m != "main" && m != "layers").collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> =
        modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for file in &files {
        let from = top(&src, file);
        let Some(edges) = graph.get_mut(&from) else { continue };
        let text = std::fs::read_to_string(file).expect("read");
        // Unit tests sit at the end of a file, behind `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for to in named(code) {
            if to != from && modules.contains(&to) {
                edges.insert(to);
            }
        }
    }
    graph
}

/// The top-level module a file belongs to.
fn top(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Top-level names after `crate::`, `crate::{a, b::c}` included (comments aside).
fn named(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                for item in inner.split(',') {
                    let name: String =
                        item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.insert(name);
            }
        }
    }
    out
}

/// A loop of imports through `start`, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("non-empty");
        for next in graph.get(last).into_iter().flatten() {
            if next == start {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_without_circles() {
    let graph = imports();
    assert!(graph.len() >= 15, "found the modules: {graph:?}");
    let circles: Vec<String> =
        graph.keys().filter_map(|m| circle(&graph, m)).map(|c| c.join(" -> ")).collect();
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
    for module in BOTTOM {
        let edges = graph.get(*module).unwrap_or_else(|| panic!("no module {module}"));
        assert!(edges.is_empty(), "{module} is in the bottom layer but imports {edges:?}");
    }
}

#[test]
fn the_import_reader_sees_plain_and_grouped_paths() {
    let names = named(
        "use crate::runtime::Fault;\nuse crate::{storage::Db, http};\n// crate::app\nlet x = crate::wasm::digest_of(b);",
    );
    assert_eq!(names, ["http", "runtime", "storage", "wasm"].into_iter().map(String::from).collect());
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(f, t)| (f.to_string(), [t.to_string()].into()))
        .collect();
    assert_eq!(circle(&graph, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
