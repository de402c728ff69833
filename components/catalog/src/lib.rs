//! The catalog component: products with variants, owned by merchants.
//!
//! Storage (its own namespace, granted by the host):
//! - bucket `products`: product id → [`ProductRecord`] (JSON). Ids are
//!   `p` + a zero-padded sequence number, so key order is creation order and
//!   list pages are stable; a page reads the ids after its cursor directly
//!   (up to the sequence's current value), without listing keys. A number
//!   whose product was never written (its creation failed) is a gap.
//! - bucket `skus`: sku → product id; claiming a sku is an insert-if-absent, so
//!   two merchants can never own one sku.
//! - bucket `meta`: `product-seq`, the id counter (atomic increment).
//!
//! Stock lives in the inventory component: creating a product registers its
//! skus there, and reads ask it for availability.

mod cursor;
mod validate;

use mercato_kit::kv::{self, Change};
use mercato_kit::types::{Error, Money, Product, ProductInput, ProductPage, ProductVariant, SkuInfo};
use serde::{Deserialize, Serialize};

mod bindings {
    mercato_kit::component_bindings!("../../wit", "mercato:commerce/catalog-component", {
        "wasi:keyvalue/batch@0.2.0-draft2": mercato_kit::bindings::wasi::keyvalue::batch,
        "wasi:clocks/wall-clock@0.2.12": mercato_kit::bindings::wasi::clocks::wall_clock,
    });
}

use bindings::exports::mercato::commerce::{catalog, merchant_catalog, sku_lookup};
use bindings::mercato::commerce::{stock_levels, stock_registry};

/// Most products one page may hold.
pub const MAX_PAGE: u32 = 100;
/// Records read at a time while a merchant filter skips most of them.
const FILTER_CHUNK: usize = 100;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct StoredMoney {
    amount: i64,
    currency: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct VariantRecord {
    sku: String,
    title: String,
    price: StoredMoney,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct ProductRecord {
    id: String,
    merchant_id: String,
    title: String,
    description: String,
    variants: Vec<VariantRecord>,
    created_at: u64,
    updated_at: u64,
}

impl From<&Money> for StoredMoney {
    fn from(m: &Money) -> Self {
        StoredMoney { amount: m.amount, currency: m.currency.clone() }
    }
}

impl From<&StoredMoney> for Money {
    fn from(m: &StoredMoney) -> Self {
        Money { amount: m.amount, currency: m.currency.clone() }
    }
}

fn variant_records(input: &ProductInput) -> Vec<VariantRecord> {
    input
        .variants
        .iter()
        .map(|v| VariantRecord {
            sku: v.sku.clone(),
            title: v.title.clone(),
            price: StoredMoney::from(&v.price),
        })
        .collect()
}

fn product_key(seq: i64) -> String {
    format!("p{seq:012}")
}

/// Appended to every title this build shows: empty, except in the test build
/// `--features test-marker`, a second version whose answers tell which
/// version served them (deploy tests, swap benchmark).
#[cfg(not(any(feature = "test-marker", feature = "test-faulty")))]
const MARK: &str = "";
#[cfg(feature = "test-marker")]
const MARK: &str = " [v2]";
#[cfg(feature = "test-faulty")]
const MARK: &str = " [faulty]";

/// The test build `--features test-faulty` traps in this share (percent) of
/// the requests that show products (canary tests and benchmark).
#[cfg(feature = "test-faulty")]
const FAULTY_PERCENT: u64 = 30;

/// Trap in [`FAULTY_PERCENT`] of calls, by chance (std's hash keys come
/// from `wasi:random`, fresh in each instance).
#[cfg(feature = "test-faulty")]
fn fail_sometimes() {
    use std::hash::{BuildHasher, Hasher};
    let roll = std::collections::hash_map::RandomState::new().build_hasher().finish() % 100;
    if roll < FAULTY_PERCENT {
        panic!("test-faulty: this build fails {FAULTY_PERCENT} % of requests");
    }
}

/// Attach availability from inventory to stored records.
fn with_stock(records: Vec<ProductRecord>) -> Result<Vec<Product>, Error> {
    #[cfg(feature = "test-faulty")]
    fail_sometimes();
    let skus: Vec<String> = records.iter().flat_map(|r| r.variants.iter().map(|v| v.sku.clone())).collect();
    let available = if skus.is_empty() { Vec::new() } else { stock_levels::available(&skus)? };
    let mut available = available.into_iter();
    Ok(records
        .into_iter()
        .map(|r| Product {
            variants: r
                .variants
                .into_iter()
                .map(|v| ProductVariant {
                    sku: v.sku,
                    title: v.title,
                    price: Money { amount: v.price.amount, currency: v.price.currency },
                    available: available.next().unwrap_or(0),
                })
                .collect(),
            id: r.id,
            merchant_id: r.merchant_id,
            title: r.title + MARK,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect())
}

fn load(products: &kv::Bucket, id: &str) -> Result<ProductRecord, Error> {
    if !cursor::is_product_id(id) {
        return Err(Error::NotFound(format!("product {id:?}")));
    }
    kv::get(products, id)?.ok_or_else(|| Error::NotFound(format!("product {id:?}")))
}

/// Claim `skus` for product `id` in the sku index and register them with
/// inventory. On any failure the claims made so far are undone.
fn claim_skus(merchant: &str, id: &str, variants: &[(String, Option<u32>)]) -> Result<(), Error> {
    let index = kv::open("skus")?;
    let mut claimed: Vec<&str> = Vec::new();
    let result = (|| {
        for (sku, stock) in variants {
            if !kv::insert_if_absent(&index, sku, &id.to_string())? {
                return Err(Error::Conflict(format!("sku {sku:?} already exists")));
            }
            claimed.push(sku);
            stock_registry::register_sku(merchant, sku, stock.unwrap_or(0))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for sku in claimed {
            // Best effort: a claim left behind only blocks that sku name.
            if let Err(e) = kv::delete(&index, sku) {
                mercato_kit::log_warn("claim_skus", &format!("undo claim of {sku}: {e:?}"));
            }
        }
    }
    result
}

struct Catalog;

impl catalog::Guest for Catalog {
    fn list_products(
        limit: u32,
        cursor: Option<String>,
        merchant: Option<String>,
    ) -> Result<ProductPage, Error> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::InvalidInput(format!("limit: must be from 1 to {MAX_PAGE}")));
        }
        let mut next = match cursor.as_deref() {
            None => 1,
            Some(c) => cursor::seq(&cursor::decode(c)?).saturating_add(1),
        };
        let last: i64 = kv::get(&kv::open("meta")?, "product-seq")?.unwrap_or(0);
        let products = kv::open("products")?;
        let mut page: Vec<ProductRecord> = Vec::new();
        let mut more = false;
        // Read the ids after the cursor, only as many as the page can still
        // take plus one (to know whether there are more); with a merchant
        // filter most records are skipped: read in chunks.
        'scan: while next <= last {
            let room = limit as usize + 1 - page.len();
            let take = if merchant.is_some() { room.max(FILTER_CHUNK) } else { room };
            let end = next.saturating_add(take as i64 - 1).min(last);
            let ids: Vec<String> = (next..=end).map(product_key).collect();
            next = end + 1;
            let records: Vec<Option<ProductRecord>> = kv::get_many(&products, &ids)?;
            for record in records.into_iter().flatten() {
                if merchant.as_ref().is_some_and(|m| *m != record.merchant_id) {
                    continue;
                }
                if page.len() == limit as usize {
                    more = true;
                    break 'scan;
                }
                page.push(record);
            }
        }
        let next_cursor = if more { page.last().map(|r| cursor::encode(&r.id)) } else { None };
        Ok(ProductPage { items: with_stock(page)?, next_cursor })
    }

    fn get_product(id: String) -> Result<Product, Error> {
        let products = kv::open("products")?;
        let record = load(&products, &id)?;
        with_stock(vec![record])?.pop().ok_or_else(|| Error::NotFound(format!("product {id:?}")))
    }
}

impl sku_lookup::Guest for Catalog {
    fn lookup_skus(skus: Vec<String>) -> Result<Vec<Option<SkuInfo>>, Error> {
        let index = kv::open("skus")?;
        let products = kv::open("products")?;
        let ids: Vec<Option<String>> = kv::get_many(&index, &skus)?;
        let mut wanted: Vec<String> = ids.iter().flatten().cloned().collect();
        wanted.sort();
        wanted.dedup();
        let records: Vec<Option<ProductRecord>> = kv::get_many(&products, &wanted)?;
        let records: Vec<ProductRecord> = records.into_iter().flatten().collect();
        Ok(skus
            .iter()
            .zip(ids)
            .map(|(sku, id)| {
                let record = records.iter().find(|r| Some(&r.id) == id.as_ref())?;
                let variant = record.variants.iter().find(|v| &v.sku == sku)?;
                Some(SkuInfo {
                    sku: sku.clone(),
                    product_id: record.id.clone(),
                    merchant_id: record.merchant_id.clone(),
                    title: if variant.title.is_empty() {
                        format!("{}{MARK}", record.title)
                    } else {
                        format!("{} — {}{MARK}", record.title, variant.title)
                    },
                    price: Money::from(&variant.price),
                })
            })
            .collect())
    }
}

impl merchant_catalog::Guest for Catalog {
    fn create_product(merchant: String, input: ProductInput) -> Result<Product, Error> {
        validate::product(&input)?;
        let meta = kv::open("meta")?;
        let products = kv::open("products")?;
        let seq = kv::increment(&meta, "product-seq", 1)?;
        let id = product_key(seq);
        let variants: Vec<(String, Option<u32>)> =
            input.variants.iter().map(|v| (v.sku.clone(), v.stock)).collect();
        claim_skus(&merchant, &id, &variants)?;
        let now = mercato_kit::now_ms();
        let variants = variant_records(&input);
        let record = ProductRecord {
            id: id.clone(),
            merchant_id: merchant,
            title: input.title,
            description: input.description,
            variants,
            created_at: now,
            updated_at: now,
        };
        kv::put(&products, &id, &record)?;
        with_stock(vec![record])?.pop().ok_or_else(|| Error::NotFound(format!("product {id:?}")))
    }

    fn update_product(merchant: String, id: String, input: ProductInput) -> Result<Product, Error> {
        validate::product(&input)?;
        let products = kv::open("products")?;
        let existing = load(&products, &id)?;
        if existing.merchant_id != merchant {
            return Err(Error::Forbidden(format!("product {id:?} belongs to another merchant")));
        }
        let added: Vec<(String, Option<u32>)> = input
            .variants
            .iter()
            .filter(|v| !existing.variants.iter().any(|e| e.sku == v.sku))
            .map(|v| (v.sku.clone(), v.stock))
            .collect();
        claim_skus(&merchant, &id, &added)?;
        let now = mercato_kit::now_ms();
        let updated = kv::update(&products, &id, |current: Option<ProductRecord>| {
            let Some(current) = current else {
                return Err(Error::NotFound(format!("product {id:?}")));
            };
            let record = ProductRecord {
                title: input.title.clone(),
                description: input.description.clone(),
                variants: variant_records(&input),
                updated_at: now,
                ..current
            };
            Ok(Change::Write(record.clone(), record))
        })?;
        // Skus the update dropped are released from the index (their stock
        // record stays with inventory, owned by this merchant).
        let index = kv::open("skus")?;
        for old in &existing.variants {
            if !updated.variants.iter().any(|v| v.sku == old.sku) {
                kv::delete(&index, &old.sku)?;
            }
        }
        with_stock(vec![updated])?.pop().ok_or_else(|| Error::NotFound(format!("product {id:?}")))
    }
}

// Exports are wasm symbols; a native build (unit tests) has none.
#[cfg(target_family = "wasm")]
bindings::export!(Catalog with_types_in bindings);
