//! Load tests that measure latency, in a test binary of their own: cargo
//! runs test binaries one after another, so nothing else of the suite runs
//! beside them and what they measure is what the host does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;
use reqwest::Method;
use serde_json::json;

/// How long past the request deadline an answer may take on a loaded machine.
const MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

fn artifact(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

async fn upload(app: &TestApp, token: &str, bytes: Vec<u8>) -> (u16, serde_json::Value) {
    send(
        app.request(Method::PUT, "/v1/merchant/pricing-plugin")
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await
}

struct Shop {
    app: TestApp,
    a: (String, String),
}

/// Merchant a sells ZA-1 (its plugin varies), b sells ZOO-OTHER-1 and runs
/// the bundles example (buy 3, pay for 2).
async fn shop() -> Shop {
    // Instances for 100 concurrent cart reads (a cart and a catalog each).
    let app = spawn_app_with(Backend::Sqlite, |c| c.components.max_instances = 1_000).await;
    let a = app.merchant("Load A").await;
    let b = app.merchant("Load B").await;
    app.product(&a.1, product_body("A thing", &["ZA-1"], 1000, "EUR")).await;
    app.product(&b.1, product_body("B thing", &["ZOO-OTHER-1"], 2000, "EUR")).await;
    let (status, body) = upload(&app, &b.1, artifact("plugin-bundles.wasm")).await;
    assert_eq!(status, 200, "{body}");
    Shop { app, a }
}

/// A cart with 3 × ZA-1 and 3 × ZOO-OTHER-1.
async fn mixed_cart(app: &TestApp) -> String {
    let cart = app.cart("EUR").await;
    for sku in ["ZA-1", "ZOO-OTHER-1"] {
        let (status, body) =
            app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": 3})).await;
        assert_eq!(status, 200, "{body}");
    }
    cart
}

/// What this machine serves of `cart`'s reads per second with every plugin
/// behaving: 16 clients reading back to back for 3 s (both cores busy).
async fn capacity(app: &TestApp, cart: &str) -> f64 {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url(&format!("/v1/carts/{cart}")));
            tokio::spawn(async move {
                let mut reads = 0u32;
                while std::time::Instant::now() < until {
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut reads = 0;
    for c in clients {
        reads += c.await.unwrap();
    }
    f64::from(reads) / 3.0
}

/// SPEC §6.8 under load: up to 100 concurrent cart reads of a merchant whose
/// plugin sleeps, while another merchant's carts are read. The other
/// merchant's p99 stays within 2× its value under the same load from a
/// merchant whose plugin behaves, and every request is answered within its
/// deadline plus a margin. The load is 40 % of what the machine serves (the
/// test's premise is a load the host can carry: on a saturated machine every
/// tenant waits for CPU whatever a's plugin does, and the comparison says
/// nothing). (Before plugin waits were virtual, each sleeping run held a run
/// slot for 30 s: the other merchant waited behind them. Before a wait on
/// timers alone was decided at once, each sleeping run yielded to the busy
/// scheduler and held its slot 8–65 ms instead of 1 ms: b's p99 rose 1.5–2.7×.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_plugin_slows_no_other_merchant() {
    // Instances for 100 concurrent cart reads (a cart and a catalog each).
    let shop = shop().await;
    let app = &shop.app;
    let a_cart = mixed_cart(app).await;
    let b_cart = app.cart("EUR").await;
    app.post(&format!("/v1/carts/{b_cart}/items"), json!({"sku": "ZOO-OTHER-1", "quantity": 3})).await;

    // Five rounds of each, alternating, so both see the same machine; each
    // compared by its median p99 (one stall of a 2-core machine in one
    // round does not decide).
    let (status, body) = upload(app, &shop.a.1, artifact("plugin-bundles.wasm")).await;
    assert_eq!(status, 200, "{body}");
    let served = capacity(app, &a_cart).await;
    // Each shopper reads twice a second.
    let shoppers = ((served * 0.4 / 2.0) as u64).clamp(10, 100);
    eprintln!(
        "this machine serves {served:.0} of a's cart reads/s: {shoppers} shoppers reading twice a second"
    );
    let plugins = ["plugin-bundles.wasm", "zoo-sleep.wasm"];
    let mut p99: [Vec<std::time::Duration>; 2] = [Vec::new(), Vec::new()];
    for (which, plugin) in plugins.iter().cycle().take(10).enumerate().map(|(i, p)| (i % 2, *p)) {
        let (status, body) = upload(app, &shop.a.1, artifact(plugin)).await;
        assert_eq!(status, 200, "{body}");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The shoppers of a, each reading its cart twice a second (spread
        // out): a load the host can carry, so what b sees is what a's plugin
        // costs it.
        let load: Vec<_> = (0..shoppers)
            .map(|i| {
                let (client, url, stop) =
                    (app.client.clone(), app.url(&format!("/v1/carts/{a_cart}")), stop.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(i * 500 / shoppers)).await;
                    let mut slowest = std::time::Duration::ZERO;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = std::time::Instant::now();
                        let response = client.get(&url).send().await.unwrap();
                        assert_eq!(response.status(), 200);
                        slowest = slowest.max(started.elapsed());
                        tokio::time::sleep(
                            std::time::Duration::from_millis(500).saturating_sub(started.elapsed()),
                        )
                        .await;
                    }
                    slowest
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let mut samples = Vec::new();
        for _ in 0..100 {
            let started = std::time::Instant::now();
            let (status, priced) = app.get(&format!("/v1/carts/{b_cart}")).await;
            samples.push(started.elapsed());
            assert_eq!(status, 200, "{priced}");
            assert_eq!(priced["discount_total"]["amount"], 2000, "b's plugin ran: {priced}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut slowest = std::time::Duration::ZERO;
        for task in load {
            slowest = slowest.max(task.await.unwrap());
        }
        // The request deadline is 2 s (components.deadline_ms).
        assert!(slowest < std::time::Duration::from_secs(2) + MARGIN, "{plugin}: an a-cart took {slowest:?}");
        // How long a's runs held a run slot (host time), for the record.
        let (_, info) =
            send(app.request(Method::GET, "/v1/merchant/pricing-plugin").bearer_auth(&shop.a.1)).await;
        let held = (&info["runs"]["duration_us_p50"], &info["runs"]["duration_us_p99"]);
        samples.sort();
        let value = samples[samples.len() * 99 / 100];
        eprintln!(
            "b's p99 while a runs {plugin}: {value:?} (a's slowest read {slowest:?}, a's runs p50/p99 {} / {} µs)",
            held.0, held.1
        );
        p99[which].push(value);
    }
    let median = |v: &mut Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (good, sleeping) = (median(&mut p99[0]), median(&mut p99[1]));
    assert!(
        sleeping <= good * 2,
        "b's p99 (median of 5 rounds): {sleeping:?} with a's sleeping plugin, {good:?} with a good one: {p99:?}"
    );
}
