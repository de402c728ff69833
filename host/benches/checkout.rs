//! `cargo bench --bench checkout`: checkout throughput over HTTP on loopback.
//! N concurrent clients, 3 lines per order over a few hot skus, on SQLite and
//! on PostgreSQL (`MERCATO_TEST_POSTGRES`, default the local server), in one
//! run, with the durable settings (SQLite `synchronous=FULL`). Prints
//! orders/s, p50/p99 latency, storage transactions per checkout, and checks
//! that the stock dropped by exactly the units of the orders acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

mod common;

use common::send;
use serde_json::json;

const CLIENTS: usize = 32;
const ORDERS: usize = 2_000;
const HOT_SKUS: [&str; 4] = ["HOT-1", "HOT-2", "HOT-3", "HOT-4"];

async fn run(label: &str, database_url: Option<String>) {
    let round_trips = RoundTrips::new(database_url.as_deref()).await;
    let host = common::start(|c| {
        c.database_url = database_url.map(mercato::config::DatabaseUrl);
        c.components.deadline_ms = 60_000;
    })
    .await;
    let (base, client) = (host.base.clone(), host.client.clone());

    let (_, token) = host.merchant("Bench").await;
    for sku in HOT_SKUS {
        let body = json!({"title": sku, "variants": [{"sku": sku, "price": {"amount": 999, "currency": "EUR"}, "stock": 1_000_000}]});
        let (status, _) =
            send(client.post(format!("{base}/v1/merchant/products")).bearer_auth(&token).json(&body)).await;
        assert_eq!(status, 201);
    }
    // Carts are prepared first; only checkouts are timed.
    let mut carts = Vec::with_capacity(ORDERS);
    for i in 0..ORDERS {
        let (_, cart) = send(client.post(format!("{base}/v1/carts")).json(&json!({"currency": "EUR"}))).await;
        let id = cart["id"].as_str().expect("id").to_string();
        for j in 0..3 {
            let sku = HOT_SKUS[(i + j) % HOT_SKUS.len()];
            let (status, _) = send(
                client.post(format!("{base}/v1/carts/{id}/items")).json(&json!({"sku": sku, "quantity": 1})),
            )
            .await;
            assert_eq!(status, 200);
        }
        carts.push(id);
    }

    let transactions_before = transactions();
    let round_trips_before = round_trips.count().await;
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(carts.into_iter().enumerate()));
    eprintln!("{label}: timed checkouts start");
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (queue, client, base) = (queue.clone(), client.clone(), base.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0usize;
                loop {
                    let Some((i, cart)) = queue.lock().await.next() else { break };
                    let t = Instant::now();
                    let (status, _) = send(
                        client
                            .post(format!("{base}/v1/carts/{cart}/checkout"))
                            .header("Idempotency-Key", format!("bench-{i}"))
                            .json(&json!({"email": "b@example.com", "payment": {"token": "tok_visa"}})),
                    )
                    .await;
                    latencies.push(t.elapsed());
                    if status != 201 {
                        failures += 1;
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failures = 0;
    for w in workers {
        let (l, f) = w.await.expect("worker");
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    let per_checkout = (transactions() - transactions_before) / ORDERS as f64;
    let round_trips_per_checkout = match (round_trips_before, round_trips.count().await) {
        (Some(before), Some(after)) => {
            format!("   {:.1} database statements/checkout", (after - before) as f64 / ORDERS as f64)
        }
        _ => String::new(),
    };
    // The stock is exactly consistent: every acknowledged order's units left the shelf, no others.
    let mut left = 0u64;
    for sku in HOT_SKUS {
        let (status, level) =
            send(client.get(format!("{base}/v1/merchant/inventory/{sku}")).bearer_auth(&token)).await;
        assert_eq!(status, 200, "{level}");
        assert_eq!(level["reserved"], 0, "{sku}: nothing left reserved");
        left += level["on_hand"].as_u64().expect("on_hand");
    }
    let sold = HOT_SKUS.len() as u64 * 1_000_000 - left;
    assert_eq!(
        sold,
        3 * (ORDERS - failures) as u64,
        "stock dropped by exactly the acknowledged orders' units"
    );
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{label:<10} {ORDERS} checkouts, {CLIENTS} clients, 3 lines: {:>7.1} orders/s   p50 {:>7.1} ms   p99 {:>7.1} ms   {per_checkout:.2} transactions/checkout   failures {failures}{round_trips_per_checkout}",
        ORDERS as f64 / elapsed.as_secs_f64(),
        pct(50),
        pct(99),
    );
    drop(host);
}

/// PostgreSQL's count of the bench database's transactions (each statement
/// outside a transaction is one): the database round trips.
struct RoundTrips(Option<sqlx::PgPool>);

impl RoundTrips {
    async fn new(url: Option<&str>) -> Self {
        match url {
            Some(url) => Self(Some(sqlx::PgPool::connect(url).await.expect("postgres"))),
            None => Self(None),
        }
    }

    async fn count(&self) -> Option<i64> {
        let pool = self.0.as_ref()?;
        // The statistics are flushed at most once a second.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let _ = sqlx::query("SELECT pg_stat_clear_snapshot()").execute(pool).await;
        sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .ok()
    }
}

/// Storage transactions committed (or refused) so far, from the host's metrics.
fn transactions() -> f64 {
    let Some(handle) = mercato::telemetry::metrics() else { return 0.0 };
    handle
        .render()
        .lines()
        .filter(|l| l.starts_with("mercato_storage_transaction_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // MERCATO_BENCH_ONLY=sqlite|postgres runs one backend.
    let only = std::env::var("MERCATO_BENCH_ONLY").unwrap_or_default();
    rt.block_on(async {
        if only != "postgres" {
            run("sqlite", None).await;
        }
        if only == "sqlite" {
            return;
        }
        let admin = std::env::var("MERCATO_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("mercato_bench_{}", std::process::id());
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create db");
        run("postgres", Some(format!("{base}/{name}"))).await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await;
    });
}
