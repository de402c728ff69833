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

/// (crate, file name in OUT_DIR)
const BUNDLED: &[(&str, &str)] = &[
    ("mercato-catalog", "catalog.wasm"),
    ("mercato-cart", "cart.wasm"),
    ("mercato-inventory", "inventory.wasm"),
    ("mercato-payment", "payment.wasm"),
    ("mercato-order", "order.wasm"),
];
const TEST_ONLY: &[(&str, &str)] =
    &[("mercato-probe", "probe.wasm"), ("mercato-plugin-bundles", "plugin-bundles.wasm")];
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
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ has a parent").to_path_buf();
    let out_dir = PathBuf::from(env("OUT_DIR"));
    for dir in ["components", "wit", "tests/components", "tests/plugins", "examples/plugins/rust-bundles"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm");

    let mut cmd = guest_build(&root, &target_dir);
    for (krate, _) in BUNDLED.iter().chain(TEST_ONLY) {
        cmd.args(["-p", krate]);
    }
    let status = cmd.status().expect("run cargo for the components");
    assert!(status.success(), "building the components for wasm32-wasip2 failed");

    let built = target_dir.join("wasm32-wasip2").join("component");
    for (krate, file) in BUNDLED.iter().chain(TEST_ONLY) {
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
    println!("cargo:rustc-env=MERCATO_TEST_COMPONENTS={}", out_dir.display());
}

/// `cargo build` of guests for `wasm32-wasip2` with the `component` profile.
fn guest_build(root: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new(env("CARGO"));
    cmd.current_dir(root)
        .args(["build", "--locked", "--target", "wasm32-wasip2", "--profile", "component"])
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
