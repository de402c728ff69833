//! The shared toolkit of mercato's components.
//!
//! Each component generates bindings for its own world, but the interfaces they
//! all import — `wasi:keyvalue`, `wasi:logging`, `wasi:random`, `wasi:clocks` and
//! the shared `mercato:commerce/types` — are generated once, here, and mapped
//! with `with:` in the components. That keeps one Rust type per WIT type across
//! components and lets the helpers below (typed storage, money, ids) be shared.

pub mod kv;
pub mod money;
pub mod tx;

/// Bindings for the imports every component shares.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "
            package mercato:kit;
            world kit {
                import wasi:keyvalue/store@0.2.0-draft2;
                import wasi:keyvalue/atomics@0.2.0-draft2;
                import wasi:keyvalue/batch@0.2.0-draft2;
                import wasi:logging/logging@0.1.0-draft;
                import wasi:random/random@0.2.12;
                import wasi:clocks/wall-clock@0.2.12;
                import mercato:commerce/types@0.6.0;
                import mercato:commerce/transactions@0.6.0;
            }
        ",
        world: "mercato:kit/kit",
        generate_all,
        // Records that components store as they are (JSON in key-value).
        additional_type_attributes: {
            "mercato:commerce/types@0.6.0/money": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/adjustment": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/order-line": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/order": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/order-status": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/payment": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/payment-status": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/provenance-entry": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/reservation-line": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/payment-request": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/discount-code": [#[derive(serde::Serialize, serde::Deserialize)]],
            "mercato:commerce/types@0.6.0/code-honour": [#[derive(serde::Serialize, serde::Deserialize)]],
        },
    });
}

pub use bindings::mercato::commerce::types;

/// Generate a component's bindings for `world` from the WIT at `path`, reusing
/// the kit's bindings for the imports every component has (storage, logging,
/// the shared types); `{ … }` maps the world's other shared imports.
#[macro_export]
macro_rules! component_bindings {
    ($path:literal, $world:literal, { $($extra:tt)* }) => {
        wit_bindgen::generate!({
            path: $path,
            world: $world,
            with: {
                "wasi:keyvalue/store@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::store,
                "wasi:keyvalue/atomics@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::atomics,
                "wasi:logging/logging@0.1.0-draft": mercato_kit::bindings::wasi::logging::logging,
                "mercato:commerce/types@0.6.0": mercato_kit::bindings::mercato::commerce::types,
                $($extra)*
            },
        });
    };
}
pub use types::Error;

/// Unix time in milliseconds, from the host's wall clock.
pub fn now_ms() -> u64 {
    let t = bindings::wasi::clocks::wall_clock::now();
    t.seconds.saturating_mul(1000).saturating_add(u64::from(t.nanoseconds / 1_000_000))
}

/// A random identifier: `prefix` followed by 128 random bits in hex.
pub fn random_id(prefix: &str) -> String {
    let a = bindings::wasi::random::random::get_random_u64();
    let b = bindings::wasi::random::random::get_random_u64();
    format!("{prefix}{a:016x}{b:016x}")
}

/// Log through the host (`wasi:logging`), which attaches the component's name.
pub fn log_warn(context: &str, message: &str) {
    bindings::wasi::logging::logging::log(bindings::wasi::logging::logging::Level::Warn, context, message);
}
