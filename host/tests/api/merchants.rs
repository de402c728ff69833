//! Merchants and admin: tokens, ownership, product validation.

use reqwest::Method;
use serde_json::json;

use crate::each_backend;
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_admin_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = json!({"name": "Shop"});
    let none = send(app.request(Method::POST, "/v1/admin/merchants").json(&body)).await;
    assert_error(&none, 401, "unauthorized");
    let wrong = send(app.request(Method::POST, "/v1/admin/merchants").bearer_auth("nope").json(&body)).await;
    assert_error(&wrong, 401, "unauthorized");
    let almost = send(
        app.request(Method::POST, "/v1/admin/merchants").bearer_auth(format!("{ADMIN_TOKEN}x")).json(&body),
    )
    .await;
    assert_error(&almost, 401, "unauthorized");
    let basic = send(
        app.request(Method::POST, "/v1/admin/merchants").basic_auth("admin", Some(ADMIN_TOKEN)).json(&body),
    )
    .await;
    assert_error(&basic, 401, "unauthorized");
    let (_, merchant_token) = app.merchant("Shop").await;
    let as_merchant =
        send(app.request(Method::POST, "/v1/admin/merchants").bearer_auth(&merchant_token).json(&body)).await;
    assert_error(&as_merchant, 401, "unauthorized");
    for bad in [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({}),
        json!({"name": 3}),
    ] {
        let got =
            send(app.request(Method::POST, "/v1/admin/merchants").bearer_auth(ADMIN_TOKEN).json(&bad)).await;
        assert_error(&got, 422, "invalid_request");
    }
    assert_eq!(app.db.merchant_count().await.expect("count"), 1, "only the valid request wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_tokens_are_stored_hashed() {
    let app = spawn_app(Backend::Sqlite).await;
    let (id, token) = app.merchant("Shop").await;
    let row = app.db.merchant(&id).await.expect("query").expect("row");
    let secret = token.rsplit('.').next().expect("secret");
    assert!(!row.token_hash.contains(secret) && row.token_hash != token);
    assert_eq!(row.token_hash, mercato::auth::hash(secret));
}

async fn merchants_own_their_products(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, token_a) = app.merchant("A").await;
    let (_, token_b) = app.merchant("B").await;
    let product = app.product(&token_a, product_body("Mug", &["MUG"], 1000, "EUR")).await;
    assert_eq!(product["merchant_id"], a.as_str());
    let id = s(&product["id"]);
    let path = format!("/v1/merchant/products/{id}");

    let update = product_body("Better mug", &["MUG", "MUG-XL"], 1200, "EUR");
    let foreign = send(app.request(Method::PUT, &path).bearer_auth(&token_b).json(&update)).await;
    assert_error(&foreign, 403, "forbidden");
    let (_, unchanged) = app.get(&format!("/v1/products/{id}")).await;
    assert_eq!(unchanged["title"], "Mug");
    assert_eq!(unchanged["variants"].as_array().map(Vec::len), Some(1));

    let (status, updated) = send(app.request(Method::PUT, &path).bearer_auth(&token_a).json(&update)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["title"], "Better mug");
    assert_eq!(updated["variants"][0]["price"]["amount"], 1200);
    assert_eq!(updated["variants"][1]["sku"], "MUG-XL");
    assert_eq!(updated["variants"][1]["available"], 10);

    // B cannot take A's sku, and the failed create writes nothing.
    let dup =
        send(app.request(Method::POST, "/v1/merchant/products").bearer_auth(&token_b).json(&product_body(
            "Copy",
            &["MUG-XL"],
            1,
            "EUR",
        )))
        .await;
    assert_error(&dup, 409, "conflict");
    let (_, all) = app.get("/v1/products?limit=100").await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));

    let missing = send(
        app.request(Method::PUT, "/v1/merchant/products/p000000000999").bearer_auth(&token_a).json(&update),
    )
    .await;
    assert_error(&missing, 404, "not_found");
    let anonymous = send(app.request(Method::PUT, &path).json(&update)).await;
    assert_error(&anonymous, 401, "unauthorized");
    // Change the last character (to one it is not).
    let last = if token_a.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &token_a[..token_a.len() - 1]);
    let forged =
        send(app.request(Method::POST, "/v1/merchant/products").bearer_auth(&tampered).json(&product_body(
            "X",
            &["X"],
            1,
            "EUR",
        )))
        .await;
    assert_error(&forged, 401, "unauthorized");
    let admin = send(
        app.request(Method::POST, "/v1/merchant/products").bearer_auth(ADMIN_TOKEN).json(&product_body(
            "X",
            &["X"],
            1,
            "EUR",
        )),
    )
    .await;
    assert_error(&admin, 401, "unauthorized");
}
each_backend!(ownership, merchants_own_their_products);

async fn invalid_products_are_refused_and_not_written(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.merchant("A").await;
    let post = |body: serde_json::Value| {
        send(app.request(Method::POST, "/v1/merchant/products").bearer_auth(&token).json(&body))
    };
    let variant = |sku: &str, amount: serde_json::Value, currency: &str| json!({"sku": sku, "price": {"amount": amount, "currency": currency}});
    let cases = [
        (json!({"title": "X", "variants": []}), 422, "invalid_request"),
        (json!({"title": "", "variants": [variant("A", json!(1), "EUR")]}), 422, "invalid_request"),
        (json!({"title": "X", "variants": [variant("A", json!(-1), "EUR")]}), 422, "invalid_request"),
        (json!({"title": "X", "variants": [variant("A", json!(1.5), "EUR")]}), 422, "invalid_request"),
        (json!({"title": "X", "variants": [variant("A", json!(1), "EURO")]}), 422, "invalid_request"),
        (json!({"title": "X", "variants": [variant("bad sku", json!(1), "EUR")]}), 422, "invalid_request"),
        (
            json!({"title": "X", "variants": [variant("A", json!(1), "EUR"), variant("A", json!(2), "EUR")]}),
            422,
            "invalid_request",
        ),
        (
            json!({"title": "X", "variants": [variant("A", json!(1), "EUR"), variant("B", json!(2), "USD")]}),
            422,
            "currency_mismatch",
        ),
        (
            json!({"title": "X", "variants": [{"sku": "A", "price": {"amount": 1, "currency": "EUR"}, "stock": -3}]}),
            422,
            "invalid_request",
        ),
        (json!({"title": "X"}), 422, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let got = post(body.clone()).await;
        assert_eq!((got.0, got.1["error"]["code"].as_str()), (status, Some(code)), "{body} → {}", got.1);
    }
    let (_, all) = app.get("/v1/products").await;
    assert_eq!(all["items"], json!([]), "nothing was written");
    assert_eq!(app.db.kv_count("inventory").await.expect("count"), 0, "no stock was registered");
}
each_backend!(product_validation, invalid_products_are_refused_and_not_written);

/// Inputs the schemathesis review found reaching storage or being read two
/// ways: a NUL in a merchant name (PostgreSQL `TEXT` refuses it: was a 500),
/// junk merchant ids in paths and queries, a tab in an Idempotency-Key, a
/// repeated JSON key (was "the last one wins").
async fn hostile_inputs_get_clear_4xx(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = |m: Method, path: &str| app.request(m, path).bearer_auth(ADMIN_TOKEN);
    for name in ["a\u{0}b", "tab\there", "\u{85}"] {
        let got = send(admin(Method::POST, "/v1/admin/merchants").json(&json!({ "name": name }))).await;
        assert_error(&got, 422, "invalid_request");
    }
    let got = send(
        admin(Method::POST, "/v1/admin/merchants")
            .header("content-type", "application/json")
            .body(r#"{"name": "A", "name": "B"}"#),
    )
    .await;
    assert_error(&got, 422, "invalid_request");
    assert!(s(&got.1["error"]["message"]).contains("duplicate field"), "{}", got.1);
    for id in ["m_%00", "m_0123456789ABCDEF", "x"] {
        let got = send(admin(Method::GET, &format!("/v1/admin/merchants/{id}/plugin-limits"))).await;
        assert_error(&got, 404, "not_found");
    }
    assert_error(&app.get("/v1/products?merchant_id=%00").await, 422, "invalid_request");
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    let cart = app.cart("EUR").await;
    app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "MUG", "quantity": 1})).await;
    let got = send(
        app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
            .header("Idempotency-Key", "a\tb")
            .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}})),
    )
    .await;
    assert_error(&got, 400, "missing_idempotency_key");
    let (_, all) = app.get("/v1/products").await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));
}
each_backend!(hostile_inputs, hostile_inputs_get_clear_4xx);
