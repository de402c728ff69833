//! Builds the components the host bundles, so that `cargo build` (or `cargo run`)

#![allow(clippy::expect_used, clippy::panic)] // a build script fails by panicking
//! on a fresh clone is the only step. The components are compiled for
//! `wasm32-wasip2` by a nested cargo into `target/wasm/` (a separate target
//! directory, so the nested build never waits on the outer build's lock), and
//! copied into `OUT_DIR`, from where `runtime::bundled` includes them.
//!
//! Test-only components (`tests/components/*`) are built in the same run; the
//! host does not bundle them, tests find them through `MERCATO_TEST_COMPONENTS`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The service components: every crate `components/<name>` that builds a
/// component (a `cdylib`), as (crate `mercato-<name>`, `<name>.wasm` in
/// OUT_DIR). The host's component table (`runtime::table`) includes each
/// `<name>.wasm` in its row, so a row without a crate fails to compile.
fn bundled(root: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join("components")).expect("read components/") {
        let dir = entry.expect("components/ entry").path();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
        if manifest.contains("\"cdylib\"") {
            let name = dir.file_name().expect("dir name").to_string_lossy().into_owned();
            found.push((format!("mercato-{name}"), format!("{name}.wasm")));
        }
    }
    found.sort();
    found
}

const TEST_ONLY: &[(&str, &str)] = &[
    ("mercato-probe", "probe.wasm"),
    ("mercato-plugin-bundles", "plugin-bundles.wasm"),
    ("mercato-hello-http", "hello-http.wasm"),
    ("mercato-plugin-legacy", "plugin-legacy.wasm"),
];
/// The hostile-plugin zoo: one build per feature, `zoo-<feature>.wasm`.
const ZOO: &[&str] = &[
    "loop",
    "alloc",
    "recursion",
    "panic",
    "huge-output",
    "wrong-currency",
    "over-discount",
    "foreign-sku",
    "sleep",
    "nap",
    "poll",
    "sockets",
    "stdout-flood",
    "entropy",
];

/// The target the components are built for.
const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    ensure_guest_target();
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ has a parent").to_path_buf();
    let out_dir = PathBuf::from(env("OUT_DIR"));
    for dir in ["components", "wit", "tests/components", "tests/plugins", "examples/plugins/rust-bundles"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    // The workspace manifest holds the `component` profile the guests build with.
    println!("cargo:rerun-if-changed={}", root.join("Cargo.toml").display());

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm");

    let mut all: Vec<(String, String)> = bundled(&root);
    all.extend(TEST_ONLY.iter().map(|(k, f)| (k.to_string(), f.to_string())));
    let mut cmd = guest_build(&root, &target_dir);
    for (krate, _) in &all {
        cmd.args(["-p", krate]);
    }
    let status = cmd.status().expect("run cargo for the components");
    assert!(status.success(), "building the components for wasm32-wasip2 failed");

    let built = target_dir.join("wasm32-wasip2").join("component");
    for (krate, file) in &all {
        let from = built.join(format!("{}.wasm", krate.replace('-', "_")));
        copy(&from, &out_dir.join(file));
    }
    // Features of one crate cannot be built side by side: one build each,
    // copied out before the next overwrites it.
    for feature in ZOO {
        let status = guest_build(&root, &target_dir)
            .args(["-p", "mercato-plugin-zoo", "--features", feature])
            .status()
            .expect("run cargo for the plugin zoo");
        assert!(status.success(), "building zoo plugin {feature} failed");
        copy(&built.join("mercato_plugin_zoo.wasm"), &out_dir.join(format!("zoo-{feature}.wasm")));
    }
    // A second catalog version whose titles end in " [v2]" (deploy tests).
    let status = guest_build(&root, &target_dir)
        .args(["-p", "mercato-catalog", "--features", "test-marker"])
        .status()
        .expect("run cargo for the catalog test version");
    assert!(status.success(), "building catalog with test-marker failed");
    copy(&built.join("mercato_catalog.wasm"), &out_dir.join("catalog-v2.wasm"));
    // A catalog version that traps in 30 % of the requests that show
    // products (canary rollback tests and benchmark).
    let status = guest_build(&root, &target_dir)
        .args(["-p", "mercato-catalog", "--features", "test-faulty"])
        .status()
        .expect("run cargo for the faulty catalog test version");
    assert!(status.success(), "building catalog with test-faulty failed");
    copy(&built.join("mercato_catalog.wasm"), &out_dir.join("catalog-faulty.wasm"));
    println!("cargo:rustc-env=MERCATO_TEST_COMPONENTS={}", out_dir.display());
}

/// Make sure the toolchain building the host can build for [`GUEST_TARGET`],
/// before anything is compiled for it. rustup installs a toolchain file's
/// targets only when it installs the toolchain, and not at all with
/// `RUSTUP_AUTO_INSTALL=0` (as on many CI machines): a toolchain that is
/// already there without the target would otherwise fail deep in the nested
/// build with "can't find crate for `std`". So: if the target's standard
/// library is missing, add it through rustup (an explicit install, which
/// `RUSTUP_AUTO_INSTALL` does not forbid); without rustup, stop with the
/// one command to run.
fn ensure_guest_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let installed = |rustc: &str| {
        Command::new(rustc)
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .is_some_and(|sysroot| sysroot.join("lib/rustlib").join(GUEST_TARGET).join("lib").is_dir())
    };
    if installed(&rustc) {
        return;
    }
    println!(
        "cargo:warning=the {GUEST_TARGET} target is missing from this toolchain; installing it with rustup"
    );
    // rustup's proxies set RUSTUP_TOOLCHAIN for this process: the target goes
    // to the toolchain that is building.
    let added = Command::new("rustup").args(["target", "add", GUEST_TARGET]).status();
    match added {
        Ok(status) if status.success() && installed(&rustc) => {}
        Ok(_) | Err(_) => panic!(
            "the {GUEST_TARGET} target is not installed for this Rust toolchain, and `rustup target add \
             {GUEST_TARGET}` did not install it. Run `rustup target add {GUEST_TARGET}` (or install the \
             target with your Rust distribution), then build again."
        ),
    }
}

/// `cargo build` of guests for `wasm32-wasip2` with the `component` profile.
fn guest_build(root: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new(env("CARGO"));
    cmd.current_dir(root)
        .args(["build", "--locked", "--target", GUEST_TARGET, "--profile", "component"])
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings are for the host, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by cargo"))
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}
