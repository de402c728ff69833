//! `cargo bench --bench events`: what events cost a checkout, and how long
//! they take to arrive. In one run, per backend (SQLite; PostgreSQL at
//! `MERCATO_TEST_POSTGRES`, default the local server): checkout throughput
//! and latency with the outbox only (every paid order still writes its
//! event: that is part of the transaction) against the same with the relay
//! publishing to NATS JetStream (127.0.0.1:4222) and a merchant's webhook
//! receiver on loopback; the ratio; the end-to-end delivery latency
//! p50/p99, commit (`created_at`) → the receiver's arrival; and what a
//! low-stock threshold on every sku adds (the database then finds a
//! threshold to compare with at each commit; with a million units it never
//! crosses). Every reservation reads its skus' owners and carries a
//! candidate `stock.low` per line whether or not a threshold is set, so that
//! part of the cost is in all three runs: to see it, compare the outbox-only
//! run with one at a commit before stock.low (d3e50f2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::send;
use serde_json::{Value, json};

const CLIENTS: usize = 32;
const ORDERS: usize = 1_000;
const SKUS: [&str; 4] = ["EVB-1", "EVB-2", "EVB-3", "EVB-4"];

struct Run {
    orders_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    delivery_ms: Option<(f64, f64)>,
}

/// A receiver on loopback that records each delivery's latency from commit (ms).
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<i64>>>) {
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let event: Value = serde_json::from_slice(&body).unwrap_or_default();
                let created = event["created_at"].as_i64().unwrap_or_default();
                kept.lock().expect("lock").push(mercato::now_ms() - created);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

async fn run(database_url: Option<String>, sinks: bool, thresholds: bool) -> Run {
    let tag = format!("{:08x}", rand::random::<u32>());
    let stream = format!("MERCATO_BENCH_{tag}");
    let (addr, seen) = receiver().await;
    let host = common::start(|c| {
        c.database_url = database_url.map(mercato::config::DatabaseUrl);
        c.components.deadline_ms = 60_000;
        c.events.relay_interval_ms = 100;
        if sinks {
            c.events.nats_url = Some(mercato::config::Secret("nats://127.0.0.1:4222".into()));
            c.events.nats_stream = stream.clone();
            c.events.nats_subject_prefix = format!("mercato.bench.{tag}");
            c.events.webhooks.allow_loopback = true;
        }
    })
    .await;
    let (base, client) = (host.base.clone(), host.client.clone());
    let (_, token) = host.merchant("Bench").await;
    for sku in SKUS {
        let body = json!({"title": sku, "variants": [{"sku": sku, "price": {"amount": 999, "currency": "EUR"}, "stock": 1_000_000}]});
        let (status, _) =
            send(client.post(format!("{base}/v1/merchant/products")).bearer_auth(&token).json(&body)).await;
        assert_eq!(status, 201);
        if thresholds {
            let (status, body) = send(
                client
                    .put(format!("{base}/v1/merchant/inventory/{sku}"))
                    .bearer_auth(&token)
                    .json(&json!({"low_stock_threshold": 10})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    if sinks {
        let hook = json!({"url": format!("http://{addr}/hook"), "events": ["order.paid"]});
        let (status, body) =
            send(client.put(format!("{base}/v1/merchant/webhooks")).bearer_auth(&token).json(&hook)).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut carts = Vec::with_capacity(ORDERS);
    for i in 0..ORDERS {
        let (_, cart) = send(client.post(format!("{base}/v1/carts")).json(&json!({"currency": "EUR"}))).await;
        let id = cart["id"].as_str().expect("id").to_string();
        for j in 0..3 {
            let sku = SKUS[(i + j) % SKUS.len()];
            let (status, _) = send(
                client.post(format!("{base}/v1/carts/{id}/items")).json(&json!({"sku": sku, "quantity": 1})),
            )
            .await;
            assert_eq!(status, 200);
        }
        carts.push(id);
    }
    let queue = Arc::new(tokio::sync::Mutex::new(carts.into_iter().enumerate()));
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (queue, client, base) = (queue.clone(), client.clone(), base.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let Some((i, cart)) = queue.lock().await.next() else { break };
                    let t = Instant::now();
                    let (status, body) = send(
                        client
                            .post(format!("{base}/v1/carts/{cart}/checkout"))
                            .header("Idempotency-Key", format!("evb-{i}"))
                            .json(&json!({"email": "b@example.com", "payment": {"token": "tok_visa"}})),
                    )
                    .await;
                    assert_eq!(status, 201, "{body}");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |v: &[Duration], p: usize| v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1e3;
    let delivery_ms = if sinks {
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen.lock().expect("lock").len() < ORDERS {
            assert!(Instant::now() < deadline, "deliveries did not arrive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut d = seen.lock().expect("lock").clone();
        d.sort();
        let at = |p: usize| d[(d.len() * p / 100).min(d.len() - 1)] as f64;
        Some((at(50), at(99)))
    } else {
        None
    };
    drop(host);
    if sinks && let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let _ = async_nats::jetstream::new(client).delete_stream(&stream).await;
    }
    Run {
        orders_per_s: ORDERS as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(&latencies, 50),
        p99_ms: pct(&latencies, 99),
        delivery_ms,
    }
}

/// The three runs, each on its own database (`None`: a fresh SQLite file each).
async fn compare(label: &str, off_url: Option<String>, on_url: Option<String>, low_url: Option<String>) {
    let off = run(off_url, false, false).await;
    let on = run(on_url, true, false).await;
    let low = run(low_url, false, true).await;
    let (d50, d99) = on.delivery_ms.unwrap_or_default();
    println!(
        "{label:<9} outbox only: {:>6.1} orders/s p50 {:>6.1} ms p99 {:>6.1} ms | + NATS + webhook: {:>6.1} orders/s p50 {:>6.1} ms p99 {:>6.1} ms | cost {:.2}x (throughput), p99 {:.2}x | delivery commit→receiver p50 {d50:.0} ms p99 {d99:.0} ms",
        off.orders_per_s,
        off.p50_ms,
        off.p99_ms,
        on.orders_per_s,
        on.p50_ms,
        on.p99_ms,
        off.orders_per_s / on.orders_per_s,
        on.p99_ms / off.p99_ms,
    );
    println!(
        "{label:<9} outbox only, a low-stock threshold on every sku: {:>6.1} orders/s p50 {:>6.1} ms p99 {:>6.1} ms | cost {:.2}x (throughput), p99 {:.2}x",
        low.orders_per_s,
        low.p50_ms,
        low.p99_ms,
        off.orders_per_s / low.orders_per_s,
        low.p99_ms / off.p99_ms,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let only = std::env::var("MERCATO_BENCH_ONLY").unwrap_or_default();
    rt.block_on(async {
        if only != "postgres" {
            compare("sqlite", None, None, None).await;
        }
        if only == "sqlite" {
            return;
        }
        let admin = std::env::var("MERCATO_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("postgres");
        let mut urls = Vec::new();
        for n in 0..3 {
            let name = format!("mercato_bench_ev{n}_{}", std::process::id());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("db");
            urls.push(name);
        }
        let url = |n: usize| Some(format!("{base}/{}", urls[n]));
        compare("postgres", url(0), url(1), url(2)).await;
        for name in urls {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(&mut conn)
                .await;
        }
    });
}
