//! Checkout (SPEC §3, §4, §6.1, §6.2): orders, stock, payments, idempotency.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::{Value, json};

use crate::each_backend;
use crate::helpers::*;

/// POST a checkout with `key` (None: no header).
async fn checkout(app: &TestApp, cart: &str, key: Option<&str>, token: &str) -> (u16, Value) {
    let mut req = app
        .request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
        .json(&json!({"email": "shopper@example.com", "payment": {"token": token}}));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    send(req).await
}

async fn stock(app: &TestApp, token: &str, sku: &str) -> Value {
    let (status, level) =
        send(app.request(Method::GET, &format!("/v1/merchant/inventory/{sku}")).bearer_auth(token)).await;
    assert_eq!(status, 200, "{level}");
    level
}

async fn cart_with(app: &TestApp, lines: &[(&str, u32)]) -> String {
    let id = app.cart("EUR").await;
    for (sku, q) in lines {
        let (status, body) =
            app.post(&format!("/v1/carts/{id}/items"), json!({"sku": sku, "quantity": q})).await;
        assert_eq!(status, 200, "{body}");
    }
    id
}

async fn checks_out_once_per_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    app.product(&token, product_body("Pen", &["PEN"], 250, "EUR")).await;
    let cart = cart_with(&app, &[("MUG", 2), ("PEN", 3)]).await;

    let (status, order) = checkout(&app, &cart, Some("key-1"), "tok_visa").await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], "paid");
    assert_eq!(order["total"], json!({"amount": 2 * 1999 + 3 * 250, "currency": "EUR"}));
    assert_eq!(order["payment"]["status"], "succeeded");
    assert_eq!(order["email"], "shopper@example.com");
    assert_eq!(order["lines"].as_array().map(Vec::len), Some(2));
    let provenance: HashSet<String> =
        order["provenance"].as_array().expect("provenance").iter().map(|p| s(&p["name"])).collect();
    assert_eq!(
        provenance,
        ["catalog", "cart", "inventory", "payment", "order"].iter().map(|s| s.to_string()).collect()
    );
    let mug = stock(&app, &token, "MUG").await;
    assert_eq!(
        (mug["on_hand"].as_u64(), mug["reserved"].as_u64(), mug["available"].as_u64()),
        (Some(8), Some(0), Some(8))
    );

    // The shopper reads the order with its access token (SPEC §4); the
    // order is the checkout's answer without the token itself.
    let access = s(&order["access_token"]);
    assert!(access.starts_with("ot.") && access.len() == 67, "{access}");
    let path = format!("/v1/orders/{}", s(&order["id"]));
    let (status, fetched) = send(app.request(Method::GET, &path).bearer_auth(&access)).await;
    let mut expected = order.clone();
    expected.as_object_mut().unwrap().remove("access_token");
    assert_eq!((status, &fetched), (200, &expected));
    // Without it, or with another one, the order does not exist.
    assert_error(&app.get(&path).await, 404, "not_found");
    let wrong = format!("{}{}", &access[..access.len() - 1], if access.ends_with('0') { '1' } else { '0' });
    assert_error(&send(app.request(Method::GET, &path).bearer_auth(&wrong)).await, 404, "not_found");

    // The same key and body: the same order, no second charge, no second sale.
    let (status, again) = checkout(&app, &cart, Some("key-1"), "tok_visa").await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], order["id"]);
    assert_eq!(app.db.kv_count("payment").await.expect("count"), 2, "one intent (and its id index)");
    assert_eq!(stock(&app, &token, "MUG").await["on_hand"], 8);
    // The same key with another body is refused.
    assert_error(&checkout(&app, &cart, Some("key-1"), "tok_mastercard").await, 422, "idempotency_key_reuse");
    assert_error(&checkout(&app, &cart, None, "tok_visa").await, 400, "missing_idempotency_key");
    // A second key is a second order.
    let (status, second) = checkout(&app, &cart, Some("key-2"), "tok_visa").await;
    assert_eq!(status, 201);
    assert_ne!(second["id"], order["id"]);
    assert_eq!(stock(&app, &token, "MUG").await["on_hand"], 6);

    // A replay answers as the first time even when the cart could not be
    // checked out again now: sold out, then emptied.
    let (status, level) = send(
        app.request(Method::PUT, "/v1/merchant/inventory/MUG")
            .bearer_auth(&token)
            .json(&json!({"on_hand": 0})),
    )
    .await;
    assert_eq!(status, 200, "{level}");
    let (status, again) = checkout(&app, &cart, Some("key-1"), "tok_visa").await;
    assert_eq!((status, &again["id"]), (201, &order["id"]), "{again}");
    assert_error(&checkout(&app, &cart, Some("key-3"), "tok_visa").await, 409, "out_of_stock");
    for sku in ["MUG", "PEN"] {
        let (status, body) =
            send(app.request(Method::DELETE, &format!("/v1/carts/{cart}/items/{sku}"))).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, again) = checkout(&app, &cart, Some("key-2"), "tok_visa").await;
    assert_eq!((status, &again["id"]), (201, &second["id"]), "{again}");
    assert_error(&checkout(&app, &cart, Some("key-4"), "tok_visa").await, 422, "empty_cart");
    assert_eq!(app.db.kv_count("payment").await.expect("count"), 4, "two intents: no charge since");
}
each_backend!(checkout_idempotent, checks_out_once_per_key);

async fn failures_release_stock_and_charge_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    let cart = cart_with(&app, &[("MUG", 4)]).await;

    let declined = checkout(&app, &cart, Some("d1"), "tok_chargeDeclined").await;
    assert_error(&declined, 402, "payment_declined");
    assert_eq!(declined.1["error"]["message"], "Your card was declined.");
    let poor = checkout(&app, &cart, Some("d2"), "tok_chargeDeclinedInsufficientFunds").await;
    assert_error(&poor, 402, "payment_declined");
    assert!(s(&poor.1["error"]["message"]).contains("insufficient funds"));
    assert_error(&checkout(&app, &cart, Some("d3"), "tok_bogus").await, 422, "invalid_request");
    let mug = stock(&app, &token, "MUG").await;
    assert_eq!((mug["on_hand"].as_u64(), mug["reserved"].as_u64()), (Some(10), Some(0)), "stock released");
    assert_eq!(app.db.kv_count("order").await.expect("count"), 0, "no order, no key kept");

    // Out of stock: 409 with details, nothing reserved.
    app.put(&format!("/v1/carts/{cart}/items/MUG"), json!({"quantity": 11})).await;
    let short = checkout(&app, &cart, Some("o1"), "tok_visa").await;
    assert_error(&short, 409, "out_of_stock");
    assert_eq!(short.1["error"]["details"], json!([{"sku": "MUG", "requested": 11, "available": 10}]));
    // Empty cart, unknown cart, bad email.
    let empty = app.cart("EUR").await;
    assert_error(&checkout(&app, &empty, Some("e1"), "tok_visa").await, 422, "empty_cart");
    assert_error(
        &checkout(&app, "cart_00000000000000000000000000000000", Some("e2"), "tok_visa").await,
        404,
        "not_found",
    );
    let bad_email = send(
        app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
            .header("Idempotency-Key", "e3")
            .json(&json!({"email": "not an email", "payment": {"token": "tok_visa"}})),
    )
    .await;
    assert_error(&bad_email, 422, "invalid_request");
    // After the failures the same cart (fixed) checks out, and a failed key is usable again.
    app.put(&format!("/v1/carts/{cart}/items/MUG"), json!({"quantity": 10})).await;
    let (status, order) = checkout(&app, &cart, Some("o1"), "tok_visa").await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(stock(&app, &token, "MUG").await["available"], 0);
}
each_backend!(checkout_failures, failures_release_stock_and_charge_nothing);

/// 120 concurrent checkouts of carts sharing three hot skus of 10 units each.
async fn never_oversells(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.components.deadline_ms = 60_000;
        c.components.max_instances = 1_000;
    })
    .await;
    let (_, token) = app.merchant("Hot").await;
    let skus = ["HOT-A", "HOT-B", "HOT-C"];
    for sku in skus {
        app.product(&token, product_body(sku, &[sku], 500, "EUR")).await;
    }
    let mut carts = Vec::new();
    for i in 0..120usize {
        let lines: Vec<(&str, u32)> =
            (0..=(i % 3)).map(|j| (skus[(i + j) % 3], 1 + ((i + j) % 2) as u32)).collect();
        carts.push((cart_with(&app, &lines).await, lines));
    }
    let requests: Vec<_> = carts
        .iter()
        .enumerate()
        .map(|(i, (cart, _))| {
            let req = app
                .request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
                .header("Idempotency-Key", format!("k{i}"))
                .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}}));
            tokio::spawn(send(req))
        })
        .collect();
    let mut sold: HashMap<String, u64> = HashMap::new();
    let mut orders = 0;
    for (handle, (_, lines)) in requests.into_iter().zip(&carts) {
        let (status, body) = handle.await.expect("task");
        match status {
            201 => {
                orders += 1;
                for (sku, q) in lines {
                    *sold.entry(sku.to_string()).or_default() += u64::from(*q);
                }
            }
            409 => assert!(
                ["out_of_stock", "conflict"].contains(&body["error"]["code"].as_str().unwrap_or("")),
                "{body}"
            ),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(orders > 0, "some checkouts succeed");
    for sku in skus {
        let level = stock(&app, &token, sku).await;
        let on_hand = level["on_hand"].as_u64().expect("on_hand");
        let sold = sold.get(sku).copied().unwrap_or(0);
        assert!(sold <= 10, "{sku}: sold {sold} of 10");
        assert_eq!(on_hand, 10 - sold, "{sku}: every sold unit left the shelf, no other");
        assert_eq!(level["reserved"], 0, "{sku}: no reservation left behind");
    }
}
each_backend!(no_oversell, never_oversells);

async fn duplicates_make_one_order_and_one_charge(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.components.max_instances = 1_000).await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    let cart = cart_with(&app, &[("MUG", 1)]).await;
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let req = app
                .request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
                .header("Idempotency-Key", "same")
                .json(&json!({"email": "shopper@example.com", "payment": {"token": "tok_visa"}}));
            tokio::spawn(send(req))
        })
        .collect();
    let mut ids = HashSet::new();
    for h in handles {
        let (status, body) = h.await.expect("task");
        match status {
            201 => {
                ids.insert(s(&body["id"]));
            }
            409 => assert_eq!(body["error"]["code"], "conflict", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // Whatever raced, afterwards the key answers with its one order.
    let (status, settled) = checkout(&app, &cart, Some("same"), "tok_visa").await;
    assert_eq!(status, 201);
    ids.insert(s(&settled["id"]));
    assert_eq!(ids.len(), 1, "one order: {ids:?}");
    assert_eq!(stock(&app, &token, "MUG").await["on_hand"], 9, "sold once");
    assert_eq!(app.db.kv_count("payment").await.expect("count"), 2, "charged once (one intent + its index)");
}
each_backend!(idempotency_concurrency, duplicates_make_one_order_and_one_charge);

async fn order_lifecycle_and_merchant_isolation(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, token_a) = app.merchant("A").await;
    let (_, token_b) = app.merchant("B").await;
    app.product(&token_a, product_body("A", &["A-1"], 1000, "EUR")).await;
    app.product(&token_b, product_body("B", &["B-1"], 300, "EUR")).await;
    let both = cart_with(&app, &[("A-1", 1), ("B-1", 2)]).await;
    let (_, order) = checkout(&app, &both, Some("o-both"), "tok_visa").await;
    let id = s(&order["id"]);
    let only_a = cart_with(&app, &[("A-1", 2)]).await;
    let (_, order_a) = checkout(&app, &only_a, Some("o-a"), "tok_visa").await;
    let id_a = s(&order_a["id"]);

    // Each merchant sees only orders with their lines, and only those lines.
    let (status, list_b) = send(app.request(Method::GET, "/v1/merchant/orders").bearer_auth(&token_b)).await;
    assert_eq!(status, 200, "{list_b}");
    let items = list_b["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], id.as_str());
    assert!(items[0]["lines"].as_array().expect("lines").iter().all(|l| l["sku"] == "B-1"));
    assert_eq!(items[0]["total"]["amount"], 600);
    let (_, list_a) = send(app.request(Method::GET, "/v1/merchant/orders").bearer_auth(&token_a)).await;
    assert_eq!(list_a["items"].as_array().map(Vec::len), Some(2));
    assert!(
        list_a["items"].as_array().expect("items").iter().all(|o| o["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .all(|l| l["merchant_id"] == a.as_str()))
    );

    // No route shows merchant A anything of B's (SPEC §4, §6.4): not B's
    // lines, not the plugin digests (provenance), not the payment, and the
    // whole order only with its own access token.
    let path = format!("/v1/orders/{id}");
    for token in
        [None, Some(token_a.as_str()), Some(token_b.as_str()), Some(s(&order_a["access_token"]).as_str())]
    {
        let mut req = app.request(Method::GET, &path);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_error(&send(req).await, 404, "not_found");
    }
    let whole = send(app.request(Method::GET, &path).bearer_auth(s(&order["access_token"]))).await;
    assert_eq!((whole.0, whole.1["lines"].as_array().map(Vec::len)), (200, Some(2)), "{}", whole.1);
    let as_admin = app.get_order(&id).await;
    assert_eq!(as_admin.1["lines"], whole.1["lines"]);
    let (status, one_a) =
        send(app.request(Method::GET, &format!("/v1/merchant/orders/{id}")).bearer_auth(&token_a)).await;
    assert_eq!(status, 200, "{one_a}");
    assert_eq!(one_a["total"]["amount"], 1000, "{one_a}");
    let seen_by_a = [one_a.clone(), list_a.clone()];
    for view in &seen_by_a {
        let text = view.to_string();
        for hidden in ["B-1", "provenance", "payment", "sha256:", "access_token"] {
            assert!(!text.contains(hidden), "A sees {hidden:?}: {text}");
        }
    }
    assert_error(
        &send(app.request(Method::GET, &format!("/v1/merchant/orders/{id_a}")).bearer_auth(&token_b)).await,
        404,
        "not_found",
    );

    // B cannot fulfill an order without B's lines.
    let foreign =
        send(app.request(Method::POST, &format!("/v1/orders/{id_a}/fulfill")).bearer_auth(&token_b)).await;
    assert_error(&foreign, 404, "not_found");
    // Fulfilment per merchant; the order is fulfilled when every line is.
    let (status, after_a) =
        send(app.request(Method::POST, &format!("/v1/orders/{id}/fulfill")).bearer_auth(&token_a)).await;
    assert_eq!(status, 200, "{after_a}");
    assert_eq!(after_a["status"], "paid");
    assert!(!after_a.to_string().contains("B-1") && after_a.get("provenance").is_none(), "{after_a}");
    assert_error(
        &send(app.request(Method::POST, &format!("/v1/orders/{id}/fulfill")).bearer_auth(&token_a)).await,
        409,
        "conflict",
    );
    let (_, after_b) =
        send(app.request(Method::POST, &format!("/v1/orders/{id}/fulfill")).bearer_auth(&token_b)).await;
    assert_eq!(after_b["status"], "fulfilled");
    // Illegal transitions are 409.
    let cancel = |order: &str| {
        app.request(Method::POST, &format!("/v1/orders/{order}/cancel")).bearer_auth(ADMIN_TOKEN)
    };
    assert_error(&send(cancel(&id)).await, 409, "conflict");
    assert_error(
        &send(app.request(Method::POST, &format!("/v1/orders/{id_a}/cancel")).bearer_auth(&token_a)).await,
        401,
        "unauthorized",
    );
    // Cancelling a paid order refunds it and returns the stock.
    assert_eq!(stock(&app, &token_a, "A-1").await["on_hand"], 7);
    let (status, cancelled) = send(cancel(&id_a)).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["payment"]["status"], "refunded");
    assert_eq!(stock(&app, &token_a, "A-1").await["on_hand"], 9);
    assert_error(&send(cancel(&id_a)).await, 409, "conflict");
    assert_error(
        &send(app.request(Method::POST, &format!("/v1/orders/{id_a}/fulfill")).bearer_auth(&token_a)).await,
        409,
        "conflict",
    );
    assert_error(&app.get("/v1/orders/ord_00000000000000000000000000000000").await, 404, "not_found");
}
each_backend!(order_lifecycle, order_lifecycle_and_merchant_isolation);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_manage_only_their_stock() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token_a) = app.merchant("A").await;
    let (_, token_b) = app.merchant("B").await;
    app.product(&token_a, product_body("A", &["A-1"], 1000, "EUR")).await;
    let put = |token: &str, sku: &str, body: Value| {
        send(
            app.request(Method::PUT, &format!("/v1/merchant/inventory/{sku}")).bearer_auth(token).json(&body),
        )
    };
    let (status, level) = put(&token_a, "A-1", json!({"on_hand": 25})).await;
    assert_eq!(status, 200, "{level}");
    assert_eq!(
        level,
        json!({"sku": "A-1", "on_hand": 25, "reserved": 0, "available": 25, "low_stock_threshold": 0})
    );
    assert_error(&put(&token_b, "A-1", json!({"on_hand": 0})).await, 403, "forbidden");
    assert_error(
        &send(app.request(Method::GET, "/v1/merchant/inventory/A-1").bearer_auth(&token_b)).await,
        403,
        "forbidden",
    );
    assert_error(&put(&token_a, "NOPE", json!({"on_hand": 1})).await, 404, "not_found");
    for bad in [
        json!({"on_hand": -1}),
        json!({"on_hand": 1.5}),
        json!({"on_hand": "3"}),
        json!({"on_hand": 5_000_000_000u64}),
    ] {
        assert_error(&put(&token_a, "A-1", bad).await, 422, "invalid_quantity");
    }
    assert_error(&send(app.request(Method::GET, "/v1/merchant/inventory/A-1")).await, 401, "unauthorized");
    assert_eq!(stock(&app, &token_a, "A-1").await["on_hand"], 25, "nothing bad was written");
}

/// An Idempotency-Key of 200 characters (the document's maxLength) checks
/// out, and its derived provider keys (`capture:checkout:<key>`) stay within
/// the provider's 255; one character more is refused before anything is
/// reserved. Schemathesis found a 255-character key failing at the payment
/// step after the reservation.
async fn idempotency_keys_up_to_200_characters(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    let cart = cart_with(&app, &[("MUG", 2)]).await;
    let too_long = "k".repeat(201);
    assert_error(&checkout(&app, &cart, Some(&too_long), "tok_visa").await, 422, "invalid_request");
    let mug = stock(&app, &token, "MUG").await;
    assert_eq!((mug["on_hand"].as_u64(), mug["reserved"].as_u64()), (Some(10), Some(0)), "{mug}");
    let longest = "k".repeat(200);
    let (status, order) = checkout(&app, &cart, Some(&longest), "tok_visa").await;
    assert_eq!((status, order["status"].as_str()), (201, Some("paid")), "{order}");
    assert_eq!(order["payment"]["status"], "succeeded", "{order}");
    let mug = stock(&app, &token, "MUG").await;
    assert_eq!((mug["on_hand"].as_u64(), mug["reserved"].as_u64()), (Some(8), Some(0)), "{mug}");
}
each_backend!(idempotency_key_length, idempotency_keys_up_to_200_characters);

/// A merchant's order list pages with `o1.` cursors (the document's
/// pattern): every order once, and a cursor that is not
/// one this API returned is refused.
async fn merchant_orders_page_with_cursors(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    let mut placed = Vec::new();
    for i in 0..5 {
        let cart = cart_with(&app, &[("MUG", 1)]).await;
        let (status, order) = checkout(&app, &cart, Some(&format!("page-{i}")), "tok_visa").await;
        assert_eq!(status, 201, "{order}");
        placed.push(s(&order["id"]));
    }
    let pattern = regex::Regex::new(r"^o1\.[0-9]{13}-ord_[0-9a-f]{32}$").expect("regex");
    let mut listed = Vec::new();
    let mut path = "/v1/merchant/orders?limit=2".to_string();
    loop {
        let (status, page) = send(app.request(Method::GET, &path).bearer_auth(&token)).await;
        assert_eq!(status, 200, "{page}");
        listed.extend(page["items"].as_array().expect("items").iter().map(|o| s(&o["id"])));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert!(pattern.is_match(cursor), "{cursor}");
                path = format!("/v1/merchant/orders?limit=2&cursor={cursor}");
            }
            None => break,
        }
    }
    // Creation order (orders placed in the same millisecond sort by id).
    assert_eq!(listed.len(), placed.len(), "{listed:?}");
    listed.sort();
    placed.sort();
    assert_eq!(listed, placed);
    let (_, other) = app.merchant("Other").await;
    let (code, page) =
        send(app.request(Method::GET, "/v1/merchant/orders?limit=2").bearer_auth(&other)).await;
    assert_eq!((code, page["items"].as_array().map(Vec::len)), (200, Some(0)), "{page}");
    let bad = send(app.request(Method::GET, "/v1/merchant/orders?cursor=o1.nope").bearer_auth(&token)).await;
    assert_error(&bad, 422, "invalid_request");
}
each_backend!(merchant_order_pages, merchant_orders_page_with_cursors);
