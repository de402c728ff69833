//! The one place where the host generates bindings from `wit/`.
//!
//! [`host`] is generated from the `mercato:commerce/host` world: the union of
//! everything the host can provide (storage, logging, config, and each service
//! interface, which the host serves by calling the active component). Each
//! component world below reuses those modules with `with:`, so an import is
//! implemented once, and a value returned by one component's export is the
//! same Rust type that another component's import takes.

/// `wasi:keyvalue` (store, atomics, batch), implemented in
/// `crate::capabilities::keyvalue`.
pub mod keyvalue {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:keyvalue/imports@0.2.0-draft2",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::BucketHandle,
            "wasi:keyvalue/atomics.cas": crate::capabilities::keyvalue::CasHandle,
        },
    });
}

/// Imports the host implements (see `crate::capabilities`).
pub mod host {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mercato:commerce/host",
        imports: { default: async | trappable },
        // Records serialize as the API's JSON (field names match SPEC §4).
        additional_derives: [serde::Serialize],
        with: {
            "wasi:keyvalue": crate::bindings::keyvalue::wasi::keyvalue,
        },
    });
}

/// The catalog component's world: what the host links for it, what it exports.
pub mod catalog {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mercato:commerce/catalog-component",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:keyvalue": crate::bindings::keyvalue::wasi::keyvalue,
            "wasi:logging": crate::bindings::host::wasi::logging,
            "mercato:commerce/types": crate::bindings::host::mercato::commerce::types,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "mercato:commerce/inventory": crate::bindings::host::mercato::commerce::inventory,
        },
    });
}

/// The cart component's world.
pub mod cart {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mercato:commerce/cart-component",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:keyvalue": crate::bindings::keyvalue::wasi::keyvalue,
            "wasi:logging": crate::bindings::host::wasi::logging,
            "mercato:commerce/types": crate::bindings::host::mercato::commerce::types,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
            "mercato:commerce/catalog": crate::bindings::host::mercato::commerce::catalog,
            "mercato:commerce/pricing-engine": crate::bindings::host::mercato::commerce::pricing_engine,
        },
    });
}

/// The inventory component's world.
pub mod inventory {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mercato:commerce/inventory-component",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:keyvalue": crate::bindings::keyvalue::wasi::keyvalue,
            "wasi:logging": crate::bindings::host::wasi::logging,
            "mercato:commerce/types": crate::bindings::host::mercato::commerce::types,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
        },
    });
}

/// The payment component's world.
pub mod payment {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mercato:commerce/payment-component",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:keyvalue": crate::bindings::keyvalue::wasi::keyvalue,
            "wasi:logging": crate::bindings::host::wasi::logging,
            "mercato:commerce/types": crate::bindings::host::mercato::commerce::types,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
        },
    });
}

/// The order component's world.
pub mod order {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mercato:commerce/order-component",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:keyvalue": crate::bindings::keyvalue::wasi::keyvalue,
            "wasi:logging": crate::bindings::host::wasi::logging,
            "mercato:commerce/types": crate::bindings::host::mercato::commerce::types,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
            "mercato:commerce/inventory": crate::bindings::host::mercato::commerce::inventory,
            "mercato:commerce/payment": crate::bindings::host::mercato::commerce::payment,
            "mercato:commerce/cart": crate::bindings::host::mercato::commerce::cart,
        },
    });
}

pub use host::mercato::commerce::types;
