//! `cargo bench --bench pricing`: what a merchant's pricing plugin adds to
//! pricing a cart of 1, 10 and 100 lines, in one run. Two merchants with the
//! same catalogue, one with the Rust bundles example plugin; for each size:
//! - `GET /v1/carts/{id}` over HTTP (catalog lookups + pricing + totals), and
//! - the host's pricing engine alone (`Plugins::adjust`: plugin lookup, a
//!   fresh sandboxed instance, the run and the output checks),
//!
//! without and with the plugin. Prints medians and the overhead ratios.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

mod common;

use common::send;
use mercato::bindings::types::{Money, PricedLine};
use serde_json::json;

const SIZES: [usize; 3] = [1, 10, 100];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time<F, Fut>(iterations: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 {
        f().await; // warm up
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed());
    }
    median(samples)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let host = common::start(|_| {}).await;
    let (base, client, runtime) = (host.base.clone(), host.client.clone(), host.runtime.clone());

    let mut merchants = Vec::new();
    for name in ["plain", "promo"] {
        let (id, token) = host.merchant(name).await;
        for i in 0..SIZES[2] {
            let sku = format!("{name}-{i}");
            let body = json!({"title": sku, "variants": [{"sku": sku, "price": {"amount": 1000 + i as i64, "currency": "EUR"}, "stock": 1000}]});
            let (status, _) =
                send(client.post(format!("{base}/v1/merchant/products")).bearer_auth(&token).json(&body))
                    .await;
            assert_eq!(status, 201);
        }
        merchants.push((name, id, token));
    }
    let plugin = std::fs::read(
        std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join("plugin-bundles.wasm"),
    )
    .expect("the bundles example is built with the host");
    let (status, body) = send(
        client
            .put(format!("{base}/v1/merchant/pricing-plugin"))
            .bearer_auth(&merchants[1].2)
            .header("content-type", "application/wasm")
            .body(plugin),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    println!("pricing a cart (medians), without → with the Rust bundles plugin on every line");
    println!("{:>6} {:>34} {:>34}", "lines", "GET /v1/carts/{id}", "pricing engine alone");
    for n in SIZES {
        let mut http = Vec::new();
        let mut engine = Vec::new();
        for (name, merchant_id, _) in &merchants {
            let (_, cart) =
                send(client.post(format!("{base}/v1/carts")).json(&json!({"currency": "EUR"}))).await;
            let id = cart["id"].as_str().unwrap().to_string();
            for i in 0..n {
                let (status, _) = send(
                    client
                        .post(format!("{base}/v1/carts/{id}/items"))
                        .json(&json!({"sku": format!("{name}-{i}"), "quantity": 3})),
                )
                .await;
                assert_eq!(status, 200);
            }
            let (_, priced) = send(client.get(format!("{base}/v1/carts/{id}"))).await;
            let discounted = priced["discount_total"]["amount"].as_i64().unwrap();
            assert_eq!(discounted > 0, *name == "promo", "{priced}");
            let iterations = if n == 100 { 100 } else { 300 };
            let url = format!("{base}/v1/carts/{id}");
            http.push(
                time(iterations, || async {
                    let (status, _) = send(client.get(&url)).await;
                    assert_eq!(status, 200);
                })
                .await,
            );
            let lines: Vec<PricedLine> = (0..n)
                .map(|i| PricedLine {
                    sku: format!("{name}-{i}"),
                    product_id: format!("p{i}"),
                    merchant_id: merchant_id.clone(),
                    quantity: 3,
                    unit_price: Money { amount: 1000 + i as i64, currency: "EUR".into() },
                })
                .collect();
            let plugins = runtime.plugins().clone();
            engine.push(
                time(iterations, || async {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let adjustments = plugins.adjust("EUR", &lines, deadline).await.unwrap();
                    assert_eq!(adjustments.is_empty(), *name == "plain");
                })
                .await,
            );
        }
        let fmt = |v: &[Duration]| {
            format!(
                "{:>8.0} → {:>8.0} µs ({:>5.2}×)",
                v[0].as_secs_f64() * 1e6,
                v[1].as_secs_f64() * 1e6,
                v[1].as_secs_f64() / v[0].as_secs_f64()
            )
        };
        println!("{n:>6} {:>34} {:>34}", fmt(&http), fmt(&engine));
    }
}
