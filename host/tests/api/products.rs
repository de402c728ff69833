//! Shopper catalog: listing, pagination, filters, bad input.

use std::collections::HashSet;

use serde_json::Value;

use crate::each_backend;
use crate::helpers::*;

async fn pages_through_every_product(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, token_a) = app.merchant("A").await;
    let (_, token_b) = app.merchant("B").await;
    for i in 0..13 {
        app.product(&token_a, product_body(&format!("A{i}"), &[&format!("A-{i}")], 100 + i, "EUR")).await;
        app.product(&token_b, product_body(&format!("B{i}"), &[&format!("B-{i}")], 100 + i, "EUR")).await;
        if i == 6 {
            // Creations that fail on a taken sku use up product numbers:
            // more gaps in a row than a page holds.
            for _ in 0..12 {
                let refused = send(
                    app.request(reqwest::Method::POST, "/v1/merchant/products")
                        .bearer_auth(&token_b)
                        .json(&product_body("Dup", &["A-0"], 1, "EUR")),
                )
                .await;
                assert_error(&refused, 409, "conflict");
            }
        }
    }
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/v1/products?limit=10".to_string();
    let mut pages = 0;
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 10);
        seen.extend(items.iter().map(|p| s(&p["id"])));
        match &page["next_cursor"] {
            Value::Null => break,
            c => path = format!("/v1/products?limit=10&cursor={}", s(c)),
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 26, "every product exactly once");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 26);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in creation order");

    // Filter by merchant, also paginated.
    let (_, page) = app.get(&format!("/v1/products?limit=5&merchant_id={a}")).await;
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|p| p["merchant_id"] == a.as_str()));
    let (_, rest) =
        app.get(&format!("/v1/products?limit=100&merchant_id={a}&cursor={}", s(&page["next_cursor"]))).await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(8));
    assert_eq!(rest["next_cursor"], Value::Null);
}
each_backend!(pagination, pages_through_every_product);

async fn get_one_and_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let (m, token) = app.merchant("M").await;
    let created = app.product(&token, product_body("Mug", &["MUG-1", "MUG-2"], 1999, "EUR")).await;
    let id = s(&created["id"]);
    let (status, product) = app.get(&format!("/v1/products/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(product["merchant_id"], m.as_str());
    assert_eq!(product["variants"][0]["price"]["amount"], 1999);
    assert_eq!(product["variants"][0]["price"]["currency"], "EUR");
    assert_eq!(product["variants"][1]["available"], 10);
    for missing in ["p000000009999", "nope", "..%2Fcart", "p1"] {
        assert_error(&app.get(&format!("/v1/products/{missing}")).await, 404, "not_found");
    }
}
each_backend!(get_product, get_one_and_not_found);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_422() {
    let app = spawn_app(Backend::Sqlite).await;
    for q in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "cursor=garbage",
        "cursor=c1.p1",
        "colour=red",
    ] {
        assert_error(&app.get(&format!("/v1/products?{q}")).await, 422, "invalid_request");
    }
    let (status, page) = app.get("/v1/products").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_catalog_is_seeded_once_on_an_empty_database() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.no_demo = false).await;
    let (status, page) = app.get("/v1/products?limit=100").await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().expect("items");
    assert!(items.len() >= 20, "20+ demo products, got {}", items.len());
    let merchants: HashSet<_> = items.iter().map(|p| s(&p["merchant_id"])).collect();
    assert!(merchants.len() >= 3, "several merchants");
    assert!(items.iter().any(|p| p["variants"].as_array().map_or(0, Vec::len) > 1), "variants");
    assert!(items.iter().all(|p| {
        p["variants"]
            .as_array()
            .expect("variants")
            .iter()
            .all(|v| v["price"]["currency"] == "EUR" && v["available"].as_u64().unwrap_or(0) > 0)
    }));
    assert_eq!(app.db.merchant_count().await.expect("count"), 3);
    // A restart on the same database does not seed again.
    let (dir, pg, config) = app.stop().await;
    let app = start(config, dir, pg).await;
    assert_eq!(app.db.merchant_count().await.expect("count"), 3);
    let (_, again) = app.get("/v1/products?limit=100").await;
    assert_eq!(again["items"].as_array().map(Vec::len), Some(items.len()));
}
