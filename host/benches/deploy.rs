//! `cargo bench --bench deploy`: hot swaps of the catalog component, in one run.
//! - swap latency: deploy (or rollback) call returns → first request served
//!   by the new version (the `x-mercato-versions` header), and how long the
//!   deploy call itself took (the artifact is already precompiled);
//! - request latency p50/p99 of `GET /v1/products/{id}` from 4 clients in
//!   steady state, then while the catalog is swapped every 50 ms, then
//!   while a healthy canary serves half of them;
//! - a faulty canary (the test build that traps in 30 % of product reads)
//!   at 50 %: time from its first failed answer to its automatic rollback
//!   (`ended_at`), and the requests it answered (and failed) before.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{ADMIN_TOKEN, send};
use serde_json::json;

const CLIENTS: usize = 4;
const SWAPS: usize = 40;
const STEADY: Duration = Duration::from_secs(3);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn catalog_version(r: &reqwest::Response) -> i64 {
    let h = r.headers().get("x-mercato-versions").expect("header").to_str().expect("ascii");
    h.split(',').find_map(|kv| kv.strip_prefix("catalog=")).expect("catalog").parse().expect("number")
}

/// Hammer `url` from [`CLIENTS`] tasks until `stop`; all latencies, sorted, and failures.
async fn load(client: reqwest::Client, url: String, stop: Arc<AtomicBool>) -> (Vec<Duration>, usize) {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut failed = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        samples.push(started.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (samples, failed)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (s, f) = t.await.expect("client");
        all.extend(s);
        failed += f;
    }
    all.sort();
    (all, failed)
}

/// One answer under load: when it started (unix ms), status, catalog version.
struct Answer {
    at_ms: i64,
    status: u16,
    catalog: i64,
}

/// [`load`], keeping every answer.
async fn watch(client: reqwest::Client, url: String, stop: Arc<AtomicBool>) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at_ms = mercato::now_ms();
                if let Ok(r) = client.get(&url).send().await {
                    let (status, catalog) = (r.status().as_u16(), catalog_version(&r));
                    let _ = r.bytes().await;
                    answers.push(Answer { at_ms, status, catalog });
                }
            }
            answers
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let host = common::start(|_| {}).await;
    let (base, client) = (host.base.clone(), host.client.clone());
    let (_, token) = host.merchant("bench").await;
    let (status, product) =
        send(client.post(format!("{base}/v1/merchant/products")).bearer_auth(&token).json(&json!({
            "title": "Mug", "description": "",
            "variants": [{"sku": "B-1", "title": "", "price": {"amount": 900, "currency": "EUR"}, "stock": 5}]
        })))
        .await;
    assert_eq!(status, 201, "{product}");
    let url = format!("{base}/v1/products/{}", product["id"].as_str().expect("id"));
    let v2 = std::fs::read(
        std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join("catalog-v2.wasm"),
    )
    .expect("catalog-v2.wasm");

    let deploy = || {
        client
            .post(format!("{base}/v1/admin/components/catalog/deploy"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(v2.clone())
    };
    let rollback =
        || client.post(format!("{base}/v1/admin/components/catalog/rollback")).bearer_auth(ADMIN_TOKEN);
    // Precompile v2 once (a real deploy pays this once per version).
    let started = Instant::now();
    assert_eq!(send(deploy()).await.0, 200);
    let first_deploy = started.elapsed();
    assert_eq!(send(rollback()).await.0, 200);

    // 1. Swap latency, no other load.
    let mut calls = Vec::new();
    let mut visible = Vec::new();
    for i in 0..SWAPS {
        let started = Instant::now();
        let (status, d) = send(if i % 2 == 0 { deploy() } else { rollback() }).await;
        assert_eq!(status, 200, "{d}");
        let returned = Instant::now();
        calls.push(returned - started);
        let want = d["version"].as_i64().expect("version");
        loop {
            let r = client.get(&url).send().await.expect("get");
            if catalog_version(&r) == want {
                visible.push(returned.elapsed());
                break;
            }
        }
    }
    calls.sort();
    visible.sort();

    // 2. Steady state.
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = tokio::spawn(load(client.clone(), url.clone(), stop.clone()));
    tokio::time::sleep(STEADY).await;
    stop.store(true, Ordering::Relaxed);
    let (steady, steady_failed) = hammer.await.expect("load");

    // 3. The same load while swapping every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = tokio::spawn(load(client.clone(), url.clone(), stop.clone()));
    let swapping = Instant::now();
    for i in 0..SWAPS {
        let (status, d) = send(if i % 2 == 0 { deploy() } else { rollback() }).await;
        assert_eq!(status, 200, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let swap_window = swapping.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (swapped, swapped_failed) = hammer.await.expect("load");
    // The active version is v1 again (an even number of swaps).

    // 4. The same load with a healthy canary (v2) on half of the requests.
    let canary = |bytes: Vec<u8>| {
        client
            .post(format!("{base}/v1/admin/components/catalog/deploy?canary=50"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(bytes)
    };
    let (status, d) = send(canary(v2.clone())).await;
    assert_eq!(status, 200, "{d}");
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = tokio::spawn(load(client.clone(), url.clone(), stop.clone()));
    tokio::time::sleep(STEADY).await;
    stop.store(true, Ordering::Relaxed);
    let (during_canary, canary_failed) = hammer.await.expect("load");
    assert_eq!(send(rollback()).await.0, 200, "end the healthy canary");

    // 5. A faulty canary at 50 %, until the host rolls it back.
    let faulty = std::fs::read(
        std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join("catalog-faulty.wasm"),
    )
    .expect("catalog-faulty.wasm");
    let (status, d) = send(canary(faulty)).await;
    assert_eq!(status, 200, "{d}");
    let faulty_version = d["version"].as_i64().expect("version");
    let stop = Arc::new(AtomicBool::new(false));
    let watching = tokio::spawn(watch(client.clone(), url.clone(), stop.clone()));
    let ended_at = loop {
        let (_, list) =
            send(client.get(format!("{base}/v1/admin/components")).bearer_auth(ADMIN_TOKEN)).await;
        let catalog = list["components"]
            .as_array()
            .expect("components")
            .iter()
            .find(|c| c["name"] == "catalog")
            .cloned()
            .expect("catalog");
        if let Some(at) = catalog["canaries"][0]["ended_at"].as_i64().filter(|_| catalog["canary"].is_null())
        {
            println!(
                "  faulty canary rolled back: {}",
                catalog["canaries"][0]["reason"].as_str().unwrap_or_default()
            );
            break at;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = watching.await.expect("watch");
    let on_faulty: Vec<&Answer> = answers.iter().filter(|a| a.catalog == faulty_version).collect();
    let first_failure =
        on_faulty.iter().filter(|a| a.status >= 500).map(|a| a.at_ms).min().expect("a failure");
    let failed_after = answers.iter().filter(|a| a.at_ms > ended_at && a.status != 200).count();

    println!("deploy bench: catalog component, {CLIENTS} clients, GET /v1/products/{{id}}");
    println!("  first deploy of v2 (compile + swap):   {:>8.1} ms", first_deploy.as_secs_f64() * 1e3);
    println!(
        "  deploy/rollback call (precompiled):    p50 {:>7.2} ms   max {:>7.2} ms   ({SWAPS} swaps)",
        percentile(&calls, 0.5).as_secs_f64() * 1e3,
        calls[calls.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "  call returns → new version served:    p50 {:>7.3} ms   max {:>7.3} ms",
        percentile(&visible, 0.5).as_secs_f64() * 1e3,
        visible[visible.len() - 1].as_secs_f64() * 1e3
    );
    let line = |name: &str, v: &[Duration], failed: usize, secs: f64| {
        println!(
            "  {name:<38} p50 {:>7.3} ms   p99 {:>7.3} ms   {:>6.0} req/s   failed {failed}",
            percentile(v, 0.5).as_secs_f64() * 1e3,
            percentile(v, 0.99).as_secs_f64() * 1e3,
            v.len() as f64 / secs
        )
    };
    line("steady state:", &steady, steady_failed, STEADY.as_secs_f64());
    line(
        &format!("during {SWAPS} swaps ({} ms apart):", 50),
        &swapped,
        swapped_failed,
        swap_window.as_secs_f64(),
    );
    println!(
        "  ratio during swaps / steady:           p50 {:.2}×   p99 {:.2}×",
        percentile(&swapped, 0.5).as_secs_f64() / percentile(&steady, 0.5).as_secs_f64(),
        percentile(&swapped, 0.99).as_secs_f64() / percentile(&steady, 0.99).as_secs_f64()
    );
    line("during a healthy 50 % canary:", &during_canary, canary_failed, STEADY.as_secs_f64());
    println!(
        "  ratio during a canary / steady:        p50 {:.2}×   p99 {:.2}×",
        percentile(&during_canary, 0.5).as_secs_f64() / percentile(&steady, 0.5).as_secs_f64(),
        percentile(&during_canary, 0.99).as_secs_f64() / percentile(&steady, 0.99).as_secs_f64()
    );
    println!(
        "  faulty 50 % canary: first failed answer → automatic rollback {} ms; it answered {} requests ({} failed) \
         before; {} failed after",
        ended_at - first_failure,
        on_faulty.len(),
        on_faulty.iter().filter(|a| a.status >= 500).count(),
        failed_after
    );
}
