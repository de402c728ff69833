//! `cargo bench --bench pricing`: what a merchant's pricing plugin adds to
//! pricing a cart of 1, 10 and 100 lines, in one run. Two merchants with the
//! same catalogue, one with the Rust bundles example plugin; for each size:
//! - `GET /v1/carts/{id}` over HTTP (catalog lookups + pricing + totals), and
//! - the host's pricing engine alone (`Plugins::adjust`: plugin lookup, a
//!   fresh sandboxed instance, the run and the output checks),
//!
//! without and with the plugin. Prints medians and the overhead ratios.
//!
//! Then, per language, the pricing engine alone at 1/10/100 lines for the
//! Rust, JavaScript (componentize-js, built with `npm ci`) and Python
//! (componentize-py) examples, with the limits the README lists for each;
//! and a cart read of a merchant whose plugin sleeps 30 s, next to its
//! plugin deadline (a plugin's clock is virtual: it must not take the sleep).
//!
//! Then shadows: cart reads (10 lines) p50/p99 with no shadow, a well-behaved
//! candidate and a looping one in the shadow, in interleaved rounds (target:
//! ≤ 1.1× without); and the cost of recording a run (the writer's batches).

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
    // PRICING_ONLY=shadow: only the shadow and recording measurements.
    if std::env::var("PRICING_ONLY").as_deref() == Ok("shadow") {
        shadowed(&host).await;
        recording(&host).await;
        return;
    }
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
                    title: format!("{name} {i}"),
                    quantity: 3,
                    unit_price: Money { amount: 1000 + i as i64, currency: "EUR".into() },
                })
                .collect();
            let plugins = runtime.plugins().clone();
            engine.push(
                time(iterations, || async {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let adjustments = plugins.adjust("EUR", &lines, &[], deadline).await.unwrap().adjustments;
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

    languages(&host).await;
    sleeping(&host).await;
    shadowed(&host).await;
    recording(&host).await;
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

/// Cart reads with and without a candidate in the shadow, interleaved.
async fn shadowed(host: &common::Host) {
    let (_, token) = host.merchant("shadowed").await;
    let (_, cart) =
        send(host.client.post(format!("{}/v1/carts", host.base)).json(&json!({"currency": "EUR"}))).await;
    let id = cart["id"].as_str().unwrap().to_string();
    for i in 0..10 {
        let sku = format!("SH-{i}");
        let body = json!({"title": sku, "variants": [{"sku": sku, "price": {"amount": 1000 + i, "currency": "EUR"}, "stock": 1000}]});
        let (status, _) = send(
            host.client.post(format!("{}/v1/merchant/products", host.base)).bearer_auth(&token).json(&body),
        )
        .await;
        assert_eq!(status, 201);
        let (status, _) = send(
            host.client
                .post(format!("{}/v1/carts/{id}/items", host.base))
                .json(&json!({"sku": sku, "quantity": 3})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let artifact = |name: &str| {
        std::fs::read(std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join(name))
            .unwrap()
    };
    upload(host, &token, artifact("plugin-bundles.wasm")).await;
    let shadow_url = format!("{}/v1/merchant/pricing-plugin/shadow", host.base);
    let cases: [(&str, Option<Vec<u8>>); 3] = [
        ("no shadow", None),
        ("candidate (0.1.0 plugin)", Some(artifact("plugin-legacy.wasm"))),
        ("looping candidate", Some(artifact("zoo-loop.wasm"))),
    ];
    let rounds: usize = std::env::var("SHADOW_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let url = format!("{}/v1/carts/{id}", host.base);
    for _ in 0..rounds {
        for (i, (_, candidate)) in cases.iter().enumerate() {
            let req = match candidate {
                Some(wasm) => {
                    host.client.put(&shadow_url).header("content-type", "application/wasm").body(wasm.clone())
                }
                None => host.client.delete(&shadow_url),
            };
            send(req.bearer_auth(&token)).await;
            for _ in 0..30 {
                send(host.client.get(&url)).await; // warm up
            }
            for _ in 0..300 {
                let started = Instant::now();
                let (status, _) = send(host.client.get(&url)).await;
                assert_eq!(status, 200);
                samples[i].push(started.elapsed());
            }
        }
    }
    let (_, report) = send(host.client.get(&shadow_url).bearer_auth(&token)).await;
    println!();
    println!(
        "cart reads (10 lines, Rust bundles plugin) with a candidate in the shadow; {rounds} interleaved rounds of 300"
    );
    let base50 = percentile(&mut samples[0].clone(), 0.5);
    let base99 = percentile(&mut samples[0].clone(), 0.99);
    for (i, (name, _)) in cases.iter().enumerate() {
        let p50 = percentile(&mut samples[i], 0.5);
        let p99 = percentile(&mut samples[i], 0.99);
        println!(
            "  {name:<26} p50 {:>7.0} µs ({:.2}×)  p99 {:>7.0} µs ({:.2}×)",
            p50.as_secs_f64() * 1e6,
            p50.as_secs_f64() / base50.as_secs_f64(),
            p99.as_secs_f64() * 1e6,
            p99.as_secs_f64() / base99.as_secs_f64()
        );
    }
    let r = &report["report"];
    println!(
        "  the looping candidate's last round: {} runs, {} dropped, errors {}",
        r["runs"], r["dropped"], r["errors"]
    );
}

/// What recording costs: the writer's batches on this host's database.
async fn recording(host: &common::Host) {
    use mercato::storage::plugins::{Retention, RunRow};
    let (merchant, _) = host.merchant("recorded").await;
    let db = host.runtime.db().clone();
    // A typical record: a 10-line input, a few discounts, a short log.
    let record = "x".repeat(2_500);
    let retention = Retention { runs: 1_000, bytes: 16 << 20, binaries: 10 };
    let mut per_run = Vec::new();
    for batch in 0..40 {
        let rows: Vec<RunRow> = (0..256)
            .map(|i| RunRow {
                seq: 0,
                id: format!("run_bench_{batch}_{i}"),
                merchant_id: merchant.clone(),
                at: i,
                digest: "sha256:bench".into(),
                outcome: "ok".into(),
                record: record.clone(),
            })
            .collect();
        let started = Instant::now();
        db.record_plugin_runs(&rows, retention).await.unwrap();
        per_run.push(started.elapsed() / 256);
    }
    println!();
    println!(
        "recording runs ({} backend, batches of 256 records of 2.5 KB, retention 1000): {:.1} µs per run (median of 40 batches; past the retention, each batch also prunes)",
        db.name(),
        median(per_run).as_secs_f64() * 1e6
    );
}

async fn upload(host: &common::Host, token: &str, wasm: Vec<u8>) -> String {
    let (status, body) = send(
        host.client
            .put(format!("{}/v1/merchant/pricing-plugin", host.base))
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(wasm),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["digest"].as_str().unwrap().to_string()
}

async fn set_limits(host: &common::Host, merchant: &str, limits: serde_json::Value) {
    let (status, body) = send(
        host.client
            .put(format!("{}/v1/admin/merchants/{merchant}/plugin-limits", host.base))
            .bearer_auth(common::ADMIN_TOKEN)
            .json(&limits),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn example(name: &str, program: &str, args: &[&str], out: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins").join(name);
    if name == "js-volume" && !dir.join("node_modules/@bytecodealliance/componentize-js").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm");
        assert!(status.success());
    }
    let status =
        std::process::Command::new(program).args(args).arg(out).current_dir(&dir).status().expect(program);
    assert!(status.success(), "{program} {args:?}");
    std::fs::read(out).unwrap()
}

/// The pricing engine alone, per language, at 1/10/100 lines.
async fn languages(host: &common::Host) {
    let tmp = tempfile::tempdir().unwrap();
    let out = |f: &str| tmp.path().join(f).to_str().unwrap().to_string();
    let rust = std::fs::read(
        std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join("plugin-bundles.wasm"),
    )
    .unwrap();
    let js = example("js-volume", "node", &["build.mjs"], &out("js.wasm"));
    let py = example("py-multibuy", "./build.sh", &[], &out("py.wasm"));
    let plugins = [
        ("Rust", rust, json!({})),
        // The README's limits for each, with instructions for 100 lines.
        (
            "JavaScript",
            js,
            json!({"binary_bytes": 16 << 20, "memory_bytes": 32 << 20, "instructions": 200_000_000u64}),
        ),
        (
            "Python",
            py,
            json!({"binary_bytes": 24 << 20, "memory_bytes": 32 << 20, "instructions": 200_000_000u64}),
        ),
    ];
    println!();
    println!(
        "pricing engine alone, per plugin language (median, instructions of one run; upload = validate + compile)"
    );
    println!(
        "{:>11} {:>10} {:>9} {:>16} {:>16} {:>16}",
        "language", "bytes", "upload", "1 line", "10 lines", "100 lines"
    );
    for (language, wasm, limits) in plugins {
        let (merchant, token) = host.merchant(language).await;
        set_limits(host, &merchant, limits).await;
        let size = wasm.len();
        let started = Instant::now();
        upload(host, &token, wasm).await;
        let upload_took = started.elapsed();
        let mut cells = Vec::new();
        for n in SIZES {
            // 6 units a line: every example discounts (bundles: buy 3 pay 2;
            // volume: 5+; multibuy: 3+ lines; one line alone gets none there).
            let lines: Vec<PricedLine> = (0..n)
                .map(|i| PricedLine {
                    sku: format!("{language}-{i}"),
                    product_id: format!("p{i}"),
                    merchant_id: merchant.clone(),
                    title: format!("{language} {i}"),
                    quantity: 6,
                    unit_price: Money { amount: 1000 + i as i64, currency: "EUR".into() },
                })
                .collect();
            let plugins = host.runtime.plugins().clone();
            let probe = plugins
                .adjust("EUR", &lines, &[], Instant::now() + Duration::from_secs(5))
                .await
                .unwrap()
                .adjustments;
            assert!(
                !probe.is_empty() || (language == "Python" && n < 3),
                "{language} at {n} lines gave nothing"
            );
            let iterations = if n == 100 { 50 } else { 200 };
            let median = time(iterations, || async {
                let deadline = Instant::now() + Duration::from_secs(5);
                plugins.adjust("EUR", &lines, &[], deadline).await.unwrap();
            })
            .await;
            let used =
                plugins.info(&merchant).await.unwrap().and_then(|i| i.last_run).map_or(0, |r| r.instructions);
            cells.push(format!("{:>6.2} ms {:>5.1}M", median.as_secs_f64() * 1e3, used as f64 / 1e6));
        }
        println!(
            "{language:>11} {size:>10} {:>7.1} s {:>16} {:>16} {:>16}",
            upload_took.as_secs_f64(),
            cells[0],
            cells[1],
            cells[2]
        );
    }
}

/// A cart read whose merchant's plugin sleeps 30 s: it must take about
/// nothing (the wait is virtual and past the deadline), not the sleep.
async fn sleeping(host: &common::Host) {
    let (merchant, token) = host.merchant("sleepy").await;
    let body = json!({"title": "zz", "variants": [{"sku": "ZZ-1", "price": {"amount": 1000, "currency": "EUR"}, "stock": 10}]});
    let (status, _) =
        send(host.client.post(format!("{}/v1/merchant/products", host.base)).bearer_auth(&token).json(&body))
            .await;
    assert_eq!(status, 201);
    let sleeper = std::fs::read(
        std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join("zoo-sleep.wasm"),
    )
    .unwrap();
    upload(host, &token, sleeper).await;
    let (_, cart) =
        send(host.client.post(format!("{}/v1/carts", host.base)).json(&json!({"currency": "EUR"}))).await;
    let id = cart["id"].as_str().unwrap().to_string();
    let (status, _) = send(
        host.client
            .post(format!("{}/v1/carts/{id}/items", host.base))
            .json(&json!({"sku": "ZZ-1", "quantity": 1})),
    )
    .await;
    assert_eq!(status, 200);
    println!();
    println!("a cart read whose merchant's plugin sleeps 30 s (medians)");
    for deadline_ms in [100u64, 1000] {
        set_limits(host, &merchant, json!({"deadline_ms": deadline_ms})).await;
        let url = format!("{}/v1/carts/{id}", host.base);
        let median = time(100, || async {
            let (status, cart) = send(host.client.get(&url)).await;
            assert_eq!(status, 200);
            assert_eq!(cart["discount_total"]["amount"], 0, "the sleeper's discount is dropped");
        })
        .await;
        println!(
            "  plugin deadline {deadline_ms:>5} ms: cart read {:>8.2} ms ({:.3}× the deadline)",
            median.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3 / deadline_ms as f64
        );
    }
}
