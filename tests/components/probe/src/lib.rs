//! A test-only component that stands in for the catalog and misbehaves on
//! request, so the host's sandbox can be tested through the real HTTP path:
//!
//! - `get-product("loop")` spins forever (the epoch deadline must stop it);
//! - `get-product("alloc")` allocates without bound (the memory cap must stop it);
//! - `get-product("peek-<cart id>")` tries to read the cart component's data:
//!   opening a qualified bucket of another namespace must be refused, and its
//!   own bucket of the same name must not contain the cart. The verdict comes
//!   back in the product title.

use mercato_kit::bindings::wasi::keyvalue::store;
use mercato_kit::types::{Error, Product, ProductInput, ProductPage, SkuInfo};

mod bindings {
    mercato_kit::component_bindings!("../../../wit", "mercato:commerce/catalog-component", {
        "wasi:keyvalue/batch@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::batch,
        "wasi:clocks/wall-clock@0.2.12": mercato_kit::bindings::wasi::clocks::wall_clock,
    });
}

fn verdict(title: String) -> Product {
    Product {
        id: "probe".into(),
        merchant_id: "probe".into(),
        title,
        description: String::new(),
        variants: Vec::new(),
        created_at: 0,
        updated_at: 0,
    }
}

fn peek(cart_id: &str) -> String {
    let mut findings = Vec::new();
    for qualified in ["cart/carts", "cart:carts", "../cart/carts", "cart.carts"] {
        match store::open(qualified) {
            Err(store::Error::AccessDenied) => findings.push(format!("{qualified}=denied")),
            Err(e) => findings.push(format!("{qualified}=error:{e:?}")),
            Ok(bucket) => match bucket.get(cart_id) {
                Ok(Some(_)) => findings.push(format!("{qualified}=LEAKED")),
                Ok(None) => findings.push(format!("{qualified}=opened-empty")),
                Err(e) => findings.push(format!("{qualified}=get-error:{e:?}")),
            },
        }
    }
    match store::open("carts").and_then(|b| b.get(cart_id)) {
        Ok(Some(_)) => findings.push("own-carts=LEAKED".into()),
        Ok(None) => findings.push("own-carts=empty".into()),
        Err(e) => findings.push(format!("own-carts=error:{e:?}")),
    }
    findings.join(" ")
}

struct Probe;

impl bindings::exports::mercato::commerce::catalog::Guest for Probe {
    fn list_products(_: u32, _: Option<String>, _: Option<String>) -> Result<ProductPage, Error> {
        Ok(ProductPage { items: Vec::new(), next_cursor: None })
    }

    fn get_product(id: String) -> Result<Product, Error> {
        match id.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            // Waits in WASI (a monotonic-clock poll), where epochs do not run.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                Err(Error::NotFound(id))
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => match id.strip_prefix("peek-") {
                Some(cart_id) => Ok(verdict(peek(cart_id))),
                None => Err(Error::NotFound(id)),
            },
        }
    }
}

impl bindings::exports::mercato::commerce::sku_lookup::Guest for Probe {
    fn lookup_skus(skus: Vec<String>) -> Result<Vec<Option<SkuInfo>>, Error> {
        Ok(skus.iter().map(|_| None).collect())
    }
}

impl bindings::exports::mercato::commerce::merchant_catalog::Guest for Probe {
    fn create_product(_: String, _: ProductInput) -> Result<Product, Error> {
        Err(Error::Forbidden("probe".into()))
    }

    fn update_product(_: String, _: String, _: ProductInput) -> Result<Product, Error> {
        Err(Error::Forbidden("probe".into()))
    }
}

bindings::export!(Probe with_types_in bindings);
