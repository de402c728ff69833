//! The one table of service components. Everything that differs between
//! catalog, cart, inventory, payment and order is in [`TABLE`]: its name and
//! world, the interface it exports, the capabilities it is granted (which
//! both links its imports and bounds them in the static contract check),
//! how its generated bindings are typed, and the bytes the binary bundles.
//! The rest of the host iterates over the table or indexes it by
//! [`ComponentKind`]; adding a component means its WIT world, one
//! `component_world!` entry in `crate::bindings`, and here one row and one
//! `service!` line.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::Ctx;
use crate::bindings::{self, host::mercato::commerce as iface};
use crate::capabilities::pricing::PricingState;
use crate::capabilities::provenance::ProvenanceState;
use crate::capabilities::transactions::TxState;

/// The service components the host runs; each is a row of [`TABLE`] (the
/// discriminant is its index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    Catalog,
    Cart,
    Inventory,
    Payment,
    Order,
}

/// The version of the `mercato:commerce` package the host speaks.
pub const COMMERCE_VERSION: &str = "0.6.0";

/// Imports every component may have, by prefix: the WASI interfaces that
/// Rust's std and other language runtimes import (linked inert), and the
/// host capabilities every component has (storage in its own namespace,
/// logging, the shared types).
pub const BASE_IMPORTS: &[&str] = &[
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:keyvalue/store@",
    "wasi:keyvalue/atomics@",
    "wasi:keyvalue/batch@",
    "wasi:logging/logging@",
    "mercato:commerce/types@",
];

/// How many service components there are.
pub const COUNT: usize = TABLE.len();

impl ComponentKind {
    /// Every component, in table order.
    pub const ALL: [ComponentKind; COUNT] = {
        let mut all = [ComponentKind::Catalog; COUNT];
        let mut i = 0;
        while i < COUNT {
            all[i] = TABLE[i].kind;
            i += 1;
        }
        all
    };

    /// Its row of the table.
    pub fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    /// Its name, which is also its storage namespace and its path segment in
    /// the admin API.
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// The component called `name`.
    pub fn from_name(name: &str) -> Option<ComponentKind> {
        TABLE.iter().find(|row| row.name == name).map(|row| row.kind)
    }
}

/// A capability granted to a component beyond the base set every component
/// has (inert WASI, key-value storage in its own namespace, logging). Each
/// grant knows the import it allows and how the host links it, so the
/// linker and the static contract check cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Multi-key transactions over its own storage.
    Transactions,
    /// The catalog's `sku-lookup` (resolving skus for pricing).
    SkuLookup,
    /// Inventory's `stock-levels` (reading stock).
    StockLevels,
    /// Inventory's `stock-registry` (registering new skus).
    StockRegistry,
    /// Inventory's `reservations` (holding, taking, returning stock).
    Reservations,
    /// The cart's `cart-contents` (reading a cart).
    CartContents,
    /// The payment component's `payment`.
    Payment,
    /// Merchants' pricing plugins (the host's pricing engine).
    PricingEngine,
    /// `wasi:http` outbound requests, to the hosts `Grants` allows.
    OutboundHttp,
    /// `wasi:config` values.
    Config,
    /// What served the request: pinned versions and plugin digests.
    Provenance,
}

impl Grant {
    /// Every grant.
    pub const ALL: [Grant; 11] = [
        Grant::Transactions,
        Grant::SkuLookup,
        Grant::StockLevels,
        Grant::StockRegistry,
        Grant::Reservations,
        Grant::CartContents,
        Grant::Payment,
        Grant::PricingEngine,
        Grant::OutboundHttp,
        Grant::Config,
        Grant::Provenance,
    ];

    /// The prefix of the import names this grant allows.
    pub fn import_prefix(self) -> &'static str {
        match self {
            Grant::Transactions => "mercato:commerce/transactions@",
            Grant::SkuLookup => "mercato:commerce/sku-lookup@",
            Grant::StockLevels => "mercato:commerce/stock-levels@",
            Grant::StockRegistry => "mercato:commerce/stock-registry@",
            Grant::Reservations => "mercato:commerce/reservations@",
            Grant::CartContents => "mercato:commerce/cart-contents@",
            Grant::Payment => "mercato:commerce/payment@",
            Grant::PricingEngine => "mercato:commerce/pricing-engine@",
            Grant::OutboundHttp => "wasi:http/",
            Grant::Config => "wasi:config/store@",
            Grant::Provenance => "mercato:commerce/provenance@",
        }
    }

    /// Whether this grant is a call into another component.
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            Grant::SkuLookup
                | Grant::StockLevels
                | Grant::StockRegistry
                | Grant::Reservations
                | Grant::CartContents
                | Grant::Payment
        )
    }

    /// Add the host's implementation of this grant to `linker`.
    pub fn link(self, linker: &mut Linker<Ctx>) -> anyhow::Result<()> {
        match self {
            Grant::Transactions => {
                iface::transactions::add_to_linker::<Ctx, HasSelf<TxState>>(linker, |c| &mut c.tx)
            }
            Grant::SkuLookup => iface::sku_lookup::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |c| c),
            Grant::StockLevels => iface::stock_levels::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |c| c),
            Grant::StockRegistry => iface::stock_registry::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |c| c),
            Grant::Reservations => iface::reservations::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |c| c),
            Grant::CartContents => iface::cart_contents::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |c| c),
            Grant::Payment => iface::payment::add_to_linker::<Ctx, HasSelf<Ctx>>(linker, |c| c),
            Grant::PricingEngine => {
                iface::pricing_engine::add_to_linker::<Ctx, HasSelf<PricingState>>(linker, |c| &mut c.pricing)
            }
            Grant::OutboundHttp => wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker),
            Grant::Config => wasmtime_wasi_config::add_to_linker(linker, |c: &mut Ctx| {
                wasmtime_wasi_config::WasiConfig::from(&*c.config)
            }),
            Grant::Provenance => {
                iface::provenance::add_to_linker::<Ctx, HasSelf<ProvenanceState>>(linker, |c| {
                    &mut c.provenance
                })
            }
        }?;
        Ok(())
    }
}

/// One service component.
pub struct Row {
    pub kind: ComponentKind,
    /// Name, storage namespace, `[components]` config key, admin path segment.
    pub name: &'static str,
    /// The interfaces it exports, `mercato:commerce/<export>`: split by who
    /// may call them (the host only, or other components through a grant).
    pub exports: &'static [&'static str],
    /// What it may import beyond the base set.
    pub grants: &'static [Grant],
    /// Types a linked component as this component's bindings.
    pub typed: fn(InstancePre<Ctx>) -> wasmtime::Result<TypedPre>,
    /// The build the binary ships (built by `build.rs` from `components/<name>`).
    pub bundled: &'static [u8],
}

impl Row {
    /// `mercato:commerce/<name>-component@…`, the world it must fit.
    pub fn world(&self) -> String {
        format!("mercato:commerce/{}-component@{COMMERCE_VERSION}", self.name)
    }

    /// `mercato:commerce/<export>@…`, the interfaces it must export.
    pub fn export_names(&self) -> Vec<String> {
        self.exports.iter().map(|e| format!("mercato:commerce/{e}@{COMMERCE_VERSION}")).collect()
    }

    /// Whether a component of this kind may import `import`.
    pub fn may_import(&self, import: &str) -> bool {
        BASE_IMPORTS.iter().any(|p| import.starts_with(p))
            || self.grants.iter().any(|g| import.starts_with(g.import_prefix()))
    }
}

/// The table. Its order is [`ComponentKind`]'s.
pub const TABLE: [Row; 5] = [
    Row {
        kind: ComponentKind::Catalog,
        name: "catalog",
        exports: &["catalog", "merchant-catalog", "sku-lookup"],
        grants: &[Grant::StockLevels, Grant::StockRegistry],
        typed: typed::<bindings::catalog::Service>,
        bundled: include_bytes!(concat!(env!("OUT_DIR"), "/catalog.wasm")),
    },
    Row {
        kind: ComponentKind::Cart,
        name: "cart",
        exports: &["cart", "cart-contents"],
        grants: &[Grant::SkuLookup, Grant::PricingEngine],
        typed: typed::<bindings::cart::Service>,
        bundled: include_bytes!(concat!(env!("OUT_DIR"), "/cart.wasm")),
    },
    Row {
        kind: ComponentKind::Inventory,
        name: "inventory",
        exports: &["stock-levels", "stock-registry", "merchant-stock", "reservations"],
        grants: &[Grant::Transactions],
        typed: typed::<bindings::inventory::Service>,
        bundled: include_bytes!(concat!(env!("OUT_DIR"), "/inventory.wasm")),
    },
    Row {
        kind: ComponentKind::Payment,
        name: "payment",
        exports: &["payment"],
        grants: &[Grant::Transactions, Grant::OutboundHttp, Grant::Config],
        typed: typed::<bindings::payment::Service>,
        bundled: include_bytes!(concat!(env!("OUT_DIR"), "/payment.wasm")),
    },
    Row {
        kind: ComponentKind::Order,
        name: "order",
        exports: &["orders"],
        grants: &[
            Grant::Transactions,
            Grant::StockLevels,
            Grant::Reservations,
            Grant::Payment,
            Grant::CartContents,
            Grant::Provenance,
        ],
        typed: typed::<bindings::order::Service>,
        bundled: include_bytes!(concat!(env!("OUT_DIR"), "/order.wasm")),
    },
];

/// A component's generated bindings as the runtime uses them: implemented
/// for each world by `crate::bindings::component_world!`.
pub trait Service: Send + Sync + 'static {
    /// Its row.
    const KIND: ComponentKind;
    /// The instantiated bindings (`CatalogComponent`, …).
    type Bindings: Send + 'static;
    /// The pre-instantiated, type-checked form (`CatalogComponentPre<Ctx>`).
    type Pre: Send + Sync + 'static;
    /// Type-check a linked component against the world's exports.
    fn pre(pre: InstancePre<Ctx>) -> wasmtime::Result<Self::Pre>;
    /// A fresh instance in `store`.
    fn instantiate<'a>(
        pre: &'a Self::Pre,
        store: &'a mut Store<Ctx>,
    ) -> impl Future<Output = wasmtime::Result<Self::Bindings>> + Send + 'a;
}

/// `Service` for a world's marker in `crate::bindings`: its row, and its
/// generated bindings and `…Pre`.
macro_rules! service {
    ($module:ident, $kind:ident, $bindings:ident, $pre:ident) => {
        impl Service for bindings::$module::Service {
            const KIND: ComponentKind = ComponentKind::$kind;
            type Bindings = bindings::$module::$bindings;
            type Pre = bindings::$module::$pre<Ctx>;

            fn pre(pre: InstancePre<Ctx>) -> wasmtime::Result<Self::Pre> {
                bindings::$module::$pre::new(pre)
            }

            fn instantiate<'a>(
                pre: &'a Self::Pre,
                store: &'a mut Store<Ctx>,
            ) -> impl Future<Output = wasmtime::Result<Self::Bindings>> + Send + 'a {
                pre.instantiate_async(store)
            }
        }
    };
}

service!(catalog, Catalog, CatalogComponent, CatalogComponentPre);
service!(cart, Cart, CartComponent, CartComponentPre);
service!(inventory, Inventory, InventoryComponent, InventoryComponentPre);
service!(payment, Payment, PaymentComponent, PaymentComponentPre);
service!(order, Order, OrderComponent, OrderComponentPre);

/// A component's pre-instantiated bindings with its type erased, so that one
/// set holds all five; [`super::ActiveSet::pre`] gives the typed form back.
pub type TypedPre = Arc<dyn Any + Send + Sync>;

fn typed<S: Service>(pre: InstancePre<Ctx>) -> wasmtime::Result<TypedPre> {
    Ok(Arc::new(S::pre(pre)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_kind_order_and_names_are_unique() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(row.kind as usize, i, "{}", row.name);
            assert_eq!(ComponentKind::from_name(row.name), Some(row.kind));
            assert!(!row.bundled.is_empty(), "{}", row.name);
        }
        assert_eq!(ComponentKind::from_name("orders"), None);
    }

    /// The table's grants are exactly what each world in `wit/worlds.wit`
    /// imports beyond the base set: the WIT stays the source of truth.
    #[test]
    fn grants_match_the_worlds_in_wit() {
        let mut resolve = wit_parser::Resolve::default();
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let (pkg, _) = resolve.push_dir(&wit).expect("parse wit/");
        for row in &TABLE {
            let world = resolve
                .select_world(&[pkg], Some(&format!("{}-component", row.name)))
                .unwrap_or_else(|e| panic!("world of {}: {e}", row.name));
            let world = &resolve.worlds[world];
            let mut imported: Vec<String> = world
                .imports
                .keys()
                .map(|k| resolve.name_world_key(k))
                .filter(|name| !BASE_IMPORTS.iter().any(|p| name.starts_with(p)))
                .collect();
            imported.sort();
            let mut granted: Vec<String> = Vec::new();
            for grant in row.grants {
                let matching: Vec<&String> =
                    imported.iter().filter(|n| n.starts_with(grant.import_prefix())).collect();
                assert!(
                    !matching.is_empty(),
                    "{} is granted {grant:?} but its world does not import it",
                    row.name
                );
                granted.extend(matching.into_iter().cloned());
            }
            granted.sort();
            granted.dedup();
            assert_eq!(imported, granted, "{}: imports of its world vs the table's grants", row.name);
            let mut exports: Vec<String> = world.exports.keys().map(|k| resolve.name_world_key(k)).collect();
            exports.sort();
            let mut wanted = row.export_names();
            wanted.sort();
            assert_eq!(exports, wanted, "{}", row.name);
        }
    }
}
