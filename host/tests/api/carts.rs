//! Carts: totals, quantities, currencies, and bad input that writes nothing.

use serde_json::{Value, json};

use crate::each_backend;
use crate::helpers::*;

async fn shop(app: &TestApp) {
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    app.product(&token, product_body("Pen", &["PEN"], 250, "EUR")).await;
    app.product(&token, product_body("Hat", &["HAT-USD"], 1500, "USD")).await;
}

fn line<'a>(cart: &'a Value, sku: &str) -> &'a Value {
    cart["lines"].as_array().and_then(|l| l.iter().find(|l| l["sku"] == sku)).unwrap_or(&Value::Null)
}

async fn fills_a_cart_with_integer_totals(backend: Backend) {
    let app = spawn_app(backend).await;
    shop(&app).await;
    let id = app.cart("EUR").await;
    let items = format!("/v1/carts/{id}/items");
    let (status, cart) = app.post(&items, json!({"sku": "MUG", "quantity": 2})).await;
    assert_eq!(status, 200, "{cart}");
    let (_, cart) = app.post(&items, json!({"sku": "MUG", "quantity": 1})).await;
    assert_eq!(line(&cart, "MUG")["quantity"], 3, "adding sums quantities");
    let (_, cart) = app.post(&items, json!({"sku": "PEN", "quantity": 4})).await;
    assert_eq!(line(&cart, "MUG")["line_total"], json!({"amount": 5997, "currency": "EUR"}));
    assert_eq!(line(&cart, "PEN")["unit_price"], json!({"amount": 250, "currency": "EUR"}));
    assert_eq!(cart["subtotal"], json!({"amount": 6997, "currency": "EUR"}));
    assert_eq!(cart["discount_total"]["amount"], 0);
    assert_eq!(cart["total"], json!({"amount": 6997, "currency": "EUR"}));
    assert_eq!(line(&cart, "MUG")["adjustments"], json!([]));
    assert!(line(&cart, "MUG")["merchant_id"].is_string() && line(&cart, "MUG")["product_id"].is_string());

    let (status, cart) = app.put(&format!("{items}/MUG"), json!({"quantity": 1})).await;
    assert_eq!(status, 200);
    assert_eq!(cart["total"]["amount"], 1999 + 1000);
    let (_, cart) = app.put(&format!("{items}/PEN"), json!({"quantity": 0})).await;
    assert_eq!(cart["lines"].as_array().map(Vec::len), Some(1), "quantity 0 removes the line");
    let (status, cart) = app.delete(&format!("{items}/MUG")).await;
    assert_eq!(status, 200);
    assert_eq!(cart["lines"], json!([]));
    assert_eq!(cart["total"]["amount"], 0);

    let (status, again) = app.get(&format!("/v1/carts/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(again, cart);
}
each_backend!(cart_totals, fills_a_cart_with_integer_totals);

async fn bad_input_is_4xx_and_writes_nothing(backend: Backend) {
    // A small body limit, so the oversized body below fits in the socket
    // buffers and the client always reads the 413.
    let app = spawn_app_with(backend, |c| c.body_limit = 16 * 1024).await;
    shop(&app).await;
    let id = app.cart("EUR").await;
    let items = format!("/v1/carts/{id}/items");
    app.post(&items, json!({"sku": "MUG", "quantity": 2})).await;
    let (_, before) = app.get(&format!("/v1/carts/{id}")).await;

    assert_error(&app.post(&items, json!({"sku": "NOPE", "quantity": 1})).await, 422, "unknown_sku");
    assert_error(&app.post(&items, json!({"sku": "HAT-USD", "quantity": 1})).await, 422, "currency_mismatch");
    for q in
        [json!(0), json!(-1), json!(1.5), json!("2"), json!(1_000_000), json!(99_999_999_999u64), json!(null)]
    {
        assert_error(&app.post(&items, json!({"sku": "MUG", "quantity": q})).await, 422, "invalid_quantity");
    }
    // 2 in the cart + 999 would pass the per-line cap of 1000.
    assert_error(&app.post(&items, json!({"sku": "MUG", "quantity": 999})).await, 422, "invalid_quantity");
    for q in [json!(-1), json!(0.5), json!(5000)] {
        assert_error(
            &app.put(&format!("{items}/MUG"), json!({"quantity": q})).await,
            422,
            "invalid_quantity",
        );
    }
    assert_error(&app.put(&format!("{items}/PEN"), json!({"quantity": 1})).await, 404, "not_found");
    assert_error(&app.delete(&format!("{items}/PEN")).await, 404, "not_found");
    assert_error(&app.post(&items, json!({"quantity": 1})).await, 422, "invalid_request");
    assert_error(
        &app.post(&items, json!({"sku": "MUG", "quantity": 1, "price": 1})).await,
        422,
        "invalid_request",
    );
    let malformed = send(
        app.request(reqwest::Method::POST, &items)
            .header("content-type", "application/json")
            .body("{\"sku\": "),
    )
    .await;
    assert_error(&malformed, 400, "malformed_json");
    let not_json =
        send(app.request(reqwest::Method::POST, &items).header("content-type", "text/plain").body("sku=MUG"))
            .await;
    assert_error(&not_json, 415, "unsupported_media_type");
    let huge = format!("{{\"sku\": \"{}\", \"quantity\": 1}}", "x".repeat(32 * 1024));
    // Its own client: the server answers 413 without reading the body and
    // closes that connection, which must not be reused for the next request.
    let oversized = send(
        reqwest::Client::new().post(app.url(&items)).header("content-type", "application/json").body(huge),
    )
    .await;
    assert_error(&oversized, 413, "payload_too_large");

    let (_, after) = app.get(&format!("/v1/carts/{id}")).await;
    assert_eq!(before, after, "no bad request changed the cart");

    for unknown in ["cart_00000000000000000000000000000000", "nope", "..%2F..%2Fcatalog"] {
        assert_error(&app.get(&format!("/v1/carts/{unknown}")).await, 404, "not_found");
        assert_error(
            &app.post(&format!("/v1/carts/{unknown}/items"), json!({"sku": "MUG", "quantity": 1})).await,
            404,
            "not_found",
        );
    }
    for currency in [json!("XYZ"), json!("eur"), json!(""), json!(12)] {
        let got = app.post("/v1/carts", json!({ "currency": currency })).await;
        assert_eq!(got.0, 422, "{currency}: {}", got.1);
    }
    assert_error(&app.post("/v1/carts", json!({})).await, 422, "invalid_request");
}
each_backend!(cart_bad_input, bad_input_is_4xx_and_writes_nothing);

async fn concurrent_adds_lose_no_update(backend: Backend) {
    let app = spawn_app(backend).await;
    shop(&app).await;
    let id = app.cart("EUR").await;
    let items = format!("/v1/carts/{id}/items");
    let adds: Vec<_> = (0..24)
        .map(|i| (items.clone(), json!({"sku": if i % 2 == 0 { "MUG" } else { "PEN" }, "quantity": 1})))
        .collect();
    let results = app.post_concurrently(adds).await;
    assert!(results.iter().all(|(status, _)| *status == 200), "{results:?}");
    let (_, cart) = app.get(&format!("/v1/carts/{id}")).await;
    assert_eq!(line(&cart, "MUG")["quantity"], 12);
    assert_eq!(line(&cart, "PEN")["quantity"], 12);
    assert_eq!(cart["total"]["amount"], 12 * 1999 + 12 * 250);
}
each_backend!(cart_concurrency, concurrent_adds_lose_no_update);
