//! The sandbox, through the real HTTP path: a test component (`probe`)
//! stands in for the catalog and loops, allocates, or peeks at another
//! component's namespace on request.

use std::time::{Duration, Instant};

use crate::helpers::*;

const DEADLINE_MS: u64 = 1_500;

async fn probe_app() -> TestApp {
    let probe = std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join("probe.wasm");
    spawn_app_with(Backend::Sqlite, |c| {
        c.components.files.0.insert("catalog".into(), probe);
        c.components.deadline_ms = DEADLINE_MS;
        c.components.memory_mib = 16;
    })
    .await
}

/// A guest that sleeps in WASI (where epochs never fire) is cut off by the
/// host at its deadline, not when it wakes 30 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_component_is_cut_off_at_its_deadline() {
    let app = probe_app().await;
    let started = Instant::now();
    let got = send(app.request(reqwest::Method::GET, "/v1/products/sleep")).await;
    let elapsed = started.elapsed();
    assert_error(&got, 503, "component_timeout");
    assert!(elapsed >= Duration::from_millis(DEADLINE_MS - 50), "not before the deadline: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(DEADLINE_MS + 5_000), "near the deadline: {elapsed:?}");
    let (status, _) = app.get("/v1/products").await;
    assert_eq!(status, 200, "the host keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_stopped_at_its_deadline_while_others_are_served() {
    let app = probe_app().await;
    let started = Instant::now();
    let looping = tokio::spawn(send(app.request(reqwest::Method::GET, "/v1/products/loop")));
    // While the guest spins, other requests (other instances) are answered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let (status, body) = app.get("/v1/products").await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app.post("/v1/carts", serde_json::json!({"currency": "EUR"})).await;
        assert_eq!(status, 201, "{body}");
    }
    assert!(!looping.is_finished(), "the loop was still running while the others were served");
    let got = looping.await.expect("task");
    let elapsed = started.elapsed();
    assert_error(&got, 503, "component_timeout");
    assert!(
        elapsed >= Duration::from_millis(DEADLINE_MS - 50),
        "stopped at, not before, the deadline: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_millis(DEADLINE_MS + 5_000), "stopped near the deadline: {elapsed:?}");
    let (status, _) = app.get("/v1/products").await;
    assert_eq!(status, 200, "the host keeps serving");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("mercato_component_faults_total{component=\"catalog\",kind=\"deadline\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_cap() {
    let app = probe_app().await;
    let got = app.get("/v1/products/alloc").await;
    assert_error(&got, 503, "component_memory_exceeded");
    let (status, _) = app.get("/v1/products").await;
    assert_eq!(status, 200, "the host keeps serving");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("mercato_component_faults_total{component=\"catalog\",kind=\"memory\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_cannot_read_another_components_namespace() {
    let app = probe_app().await;
    let cart = app.cart("EUR").await;
    assert_eq!(app.db.kv_count("cart").await.expect("count"), 1, "the cart component stored the cart");
    let (status, verdict) = app.get(&format!("/v1/products/peek-{cart}")).await;
    assert_eq!(status, 200, "{verdict}");
    let title = s(&verdict["title"]);
    for expected in [
        "cart/carts=denied",
        "cart:carts=denied",
        "../cart/carts=denied",
        "cart.carts=denied",
        "own-carts=empty",
    ] {
        assert!(title.contains(expected), "{expected} in {title}");
    }
    assert!(!title.contains("LEAKED"), "{title}");
}
