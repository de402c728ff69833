//! The one place where the host generates bindings from `wit/`.
//!
//! [`host`] is generated from the `mercato:commerce/host` world: the union of
//! everything the host can provide (storage, logging, config, and each service
//! interface a component may import, which the host serves by calling the
//! active component that exports it). Each
//! component world below reuses those modules with `with:`, so an import is
//! implemented once, and a value returned by one component's export is the
//! same Rust type that another component's import takes.

/// `wasi:keyvalue` (store, atomics, batch), implemented in
/// `crate::capabilities::keyvalue`.
pub mod keyvalue {
    /// An open bucket of the calling component's namespace.
    pub struct BucketHandle {
        pub name: String,
    }

    /// A compare-and-swap in progress: the value and version read at `new`.
    pub struct CasHandle {
        pub bucket: String,
        pub key: String,
        pub current: Option<crate::storage::kv::Versioned>,
    }

    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:keyvalue/imports@0.2.0-draft2",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": BucketHandle,
            "wasi:keyvalue/atomics.cas": CasHandle,
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
        additional_derives: [serde::Serialize, utoipa::ToSchema],
        with: {
            "wasi:keyvalue": crate::bindings::keyvalue::wasi::keyvalue,
        },
    });
}

/// A component world's bindings, and `Service`, the marker the runtime's
/// table implements `crate::runtime::table::Service` for (how to type-check
/// and instantiate them). Storage, logging and the shared types, which every
/// component imports, come from the modules above; `{ … }` maps the world's
/// other imports.
macro_rules! component_world {
    ($(#[$doc:meta])* $module:ident, $world:literal, { $($extra:tt)* }) => {
        $(#[$doc])*
        pub mod $module {
            /// This world as the runtime's table knows it.
            pub struct Service;

            wasmtime::component::bindgen!({
                path: "../wit",
                world: $world,
                imports: { default: async | trappable },
                exports: { default: async },
                with: {
                    "wasi:keyvalue": crate::bindings::keyvalue::wasi::keyvalue,
                    "wasi:logging": crate::bindings::host::wasi::logging,
                    "mercato:commerce/types": crate::bindings::host::mercato::commerce::types,
                    $($extra)*
                },
            });
        }
    };
}

component_world!(
    /// The catalog component's world.
    catalog,
    "mercato:commerce/catalog-component",
    {
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "mercato:commerce/stock-levels": crate::bindings::host::mercato::commerce::stock_levels,
        "mercato:commerce/stock-registry": crate::bindings::host::mercato::commerce::stock_registry,
    }
);

component_world!(
    /// The cart component's world.
    cart,
    "mercato:commerce/cart-component",
    {
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "mercato:commerce/sku-lookup": crate::bindings::host::mercato::commerce::sku_lookup,
        "mercato:commerce/pricing-engine": crate::bindings::host::mercato::commerce::pricing_engine,
    }
);

component_world!(
    /// The inventory component's world.
    inventory,
    "mercato:commerce/inventory-component",
    {
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "mercato:commerce/transactions": crate::bindings::host::mercato::commerce::transactions,
    }
);

component_world!(
    /// The payment component's world.
    payment,
    "mercato:commerce/payment-component",
    {
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "mercato:commerce/transactions": crate::bindings::host::mercato::commerce::transactions,
    }
);

component_world!(
    /// The order component's world.
    order,
    "mercato:commerce/order-component",
    {
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "mercato:commerce/stock-levels": crate::bindings::host::mercato::commerce::stock_levels,
        "mercato:commerce/reservations": crate::bindings::host::mercato::commerce::reservations,
        "mercato:commerce/payment": crate::bindings::host::mercato::commerce::payment,
        "mercato:commerce/cart-contents": crate::bindings::host::mercato::commerce::cart_contents,
        "mercato:commerce/transactions": crate::bindings::host::mercato::commerce::transactions,
        "mercato:commerce/provenance": crate::bindings::host::mercato::commerce::provenance,
    }
);

/// The `mercato:pricing/plugin@0.2.0` world: what a merchant's pricing
/// plugin exports (it imports nothing the host must implement).
pub mod plugin {
    wasmtime::component::bindgen!({
        path: "../wit/pricing",
        world: "mercato:pricing/plugin",
        exports: { default: async },
    });
}

/// The `mercato:pricing/plugin@0.1.0` world, which plugins uploaded before
/// 0.2.0 were built for; the host links both.
pub mod plugin_v1 {
    wasmtime::component::bindgen!({
        path: "../wit/pricing-0.1.0",
        world: "mercato:pricing/plugin",
        exports: { default: async },
    });
}

pub use host::mercato::commerce::types;
