//! `cargo bench --bench catalog_get`: what running the catalog as a
//! component costs, against the same logic as plain native Rust, in one run.
//!
//! 1. In process: a fresh store + instance + `get-product` + drop (the
//!    catalog calls inventory for stock: a second instance), vs the same
//!    storage reads and JSON work done natively; plus instantiation alone.
//! 2. Over HTTP on loopback: `GET /v1/products/{id}` through the host vs a
//!    plain axum handler doing the same storage reads natively.
//!
//! Prints medians, p99s and ratios. Unset RUST_BACKTRACE for fair numbers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use mercato::config::{Config, Secret};
use mercato::storage::Db;
use mercato::storage::kv::Scope;
use serde_json::{Value, json};

const PRODUCTS: Scope<'static> = Scope { namespace: "catalog", bucket: "products" };
const STOCK: Scope<'static> = Scope { namespace: "inventory", bucket: "stock" };

struct Stats {
    median: Duration,
    p99: Duration,
}

/// Run `f` `warmup` times, then `n` times; per-call latencies.
async fn measure<F, Fut>(label: &str, warmup: usize, n: usize, mut f: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..warmup {
        f().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    samples.sort();
    let stats = Stats { median: samples[n / 2], p99: samples[(n * 99) / 100] };
    println!("{label:<62} median {:>9.1} µs   p99 {:>9.1} µs", micros(stats.median), micros(stats.p99));
    stats
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The catalog's get-product logic, natively: product record, stock levels, JSON.
async fn native_get_product(db: &Db, id: &str) -> Option<Value> {
    let record = db.kv_get(PRODUCTS, id).await.ok()??;
    let mut product: Value = serde_json::from_slice(&record.value).ok()?;
    let skus: Vec<String> =
        product["variants"].as_array()?.iter().filter_map(|v| v["sku"].as_str().map(String::from)).collect();
    let levels = db.kv_get_many(STOCK, &skus).await.ok()?;
    for (variant, level) in product["variants"].as_array_mut()?.iter_mut().zip(levels) {
        let stock: Value = level.and_then(|l| serde_json::from_slice(&l).ok()).unwrap_or(Value::Null);
        let available =
            stock["on_hand"].as_u64().unwrap_or(0).saturating_sub(stock["reserved"].as_u64().unwrap_or(0));
        variant["available"] = json!(available);
    }
    Some(product)
}

async fn plain_handler(State(db): State<Db>, Path(id): Path<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match native_get_product(&db, &id).await {
        Some(p) => axum::Json(p).into_response(),
        None => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        admin_token: Some(Secret("bench".into())),
        ..Config::default()
    };
    let app = mercato::App::build(config).await.expect("build");
    let runtime = app.state.runtime.clone();
    let db = runtime.db().clone();
    let id = "p000000000006".to_string(); // a demo product with three variants

    println!("\n== in process (SQLite, demo catalog, product {id})");
    let inst = measure("component: store + instantiate + drop (no call)", 200, 2_000, || {
        let runtime = runtime.clone();
        async move {
            let instance =
                runtime.instance::<mercato::bindings::catalog::Service>().await.expect("instantiate");
            drop(instance);
        }
    })
    .await;
    let comp = measure("component: store + instantiate + get-product + drop", 200, 2_000, || {
        let runtime = runtime.clone();
        let id = id.clone();
        async move {
            let mut i = runtime.instance::<mercato::bindings::catalog::Service>().await.expect("instantiate");
            let p = i
                .bindings
                .mercato_commerce_catalog()
                .call_get_product(&mut i.store, &id)
                .await
                .expect("call")
                .expect("found");
            assert_eq!(p.variants.len(), 3);
        }
    })
    .await;
    measure("component: instantiate + get-product(invalid id, no I/O)", 200, 2_000, || {
        let runtime = runtime.clone();
        async move {
            let mut i = runtime.instance::<mercato::bindings::catalog::Service>().await.expect("instantiate");
            let r = i
                .bindings
                .mercato_commerce_catalog()
                .call_get_product(&mut i.store, &"nope".to_string())
                .await
                .expect("call");
            assert!(r.is_err());
        }
    })
    .await;
    measure("component: instantiate + lookup-skus(1 unknown: 1 read)", 200, 2_000, || {
        let runtime = runtime.clone();
        async move {
            let mut i = runtime.instance::<mercato::bindings::catalog::Service>().await.expect("instantiate");
            let r = i
                .bindings
                .mercato_commerce_sku_lookup()
                .call_lookup_skus(&mut i.store, &["nope".to_string()])
                .await
                .expect("call");
            assert!(r.is_ok());
        }
    })
    .await;
    measure("storage: one key read (SQLite reader pool)", 200, 2_000, || {
        let db = db.clone();
        let id = id.clone();
        async move {
            assert!(db.kv_get(PRODUCTS, &id).await.expect("read").is_some());
        }
    })
    .await;
    let native = measure("native: same storage reads + JSON", 200, 2_000, || {
        let db = db.clone();
        let id = id.clone();
        async move {
            let p = native_get_product(&db, &id).await.expect("found");
            assert_eq!(p["variants"].as_array().map(Vec::len), Some(3));
        }
    })
    .await;

    let host_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host_addr = host_listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.serve(host_listener, async move {
        let _ = stop_rx.await;
    }));
    let plain = axum::Router::new()
        .route("/v1/products/{id}", axum::routing::get(plain_handler))
        .with_state(db.clone());
    let plain_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain_addr = plain_listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(plain_listener, plain).await });

    println!("\n== over HTTP on loopback (keep-alive, one client, sequential)");
    let client = reqwest::Client::new();
    let get = |addr: std::net::SocketAddr| {
        let client = client.clone();
        let url = format!("http://{addr}/v1/products/{id}");
        move || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client.get(&url).send().await.expect("send");
                assert!(r.status().is_success());
                let _ = r.bytes().await.expect("body");
            }
        }
    };
    let http_host = measure("GET /v1/products/{id} through the host", 200, 2_000, get(host_addr)).await;
    let http_plain =
        measure("GET /v1/products/{id} plain axum + native reads", 200, 2_000, get(plain_addr)).await;

    let ratio = |a: &Stats, b: &Stats| a.median.as_secs_f64() / b.median.as_secs_f64();
    println!("\n== ratios (medians)");
    println!("component get-product / native             {:>6.2}×", ratio(&comp, &native));
    println!(
        "component overhead (component − native)    {:>6.1} µs",
        micros(comp.median) - micros(native.median)
    );
    println!("instantiate+drop alone                     {:>6.1} µs", micros(inst.median));
    println!("HTTP host / HTTP plain axum                {:>6.2}×", ratio(&http_host, &http_plain));
    let _ = stop_tx.send(());
}
