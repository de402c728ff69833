//! Interrupted checkouts (SPEC §3, §6.7): clients that close the socket at
//! spread-out moments, a trap after each step of the state machine, hot skus
//! under real concurrency. After recovery every checkout ended `paid` (stock
//! taken, payment captured) or fully compensated (stock released, payment
//! voided or never taken), checked against the database itself.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::each_backend;
use crate::helpers::*;
use mercato::storage::kv::Scope;

pub fn product_with_stock(sku: &str, cents: i64, stock: u32) -> Value {
    json!({
        "title": sku, "description": "test product",
        "variants": [{"sku": sku, "title": sku, "price": {"amount": cents, "currency": "EUR"}, "stock": stock}],
    })
}

/// Every value of one bucket of a component's namespace, as JSON.
pub async fn bucket_of(db: &mercato::storage::Db, namespace: &str, bucket: &str) -> Vec<(String, Value)> {
    let scope = Scope { namespace, bucket };
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (keys, more) = db.kv_list(scope, after.as_deref()).await.expect("list");
        let values = db.kv_get_many(scope, &keys).await.expect("values");
        for (k, v) in keys.iter().zip(values) {
            let v = v.map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null)).unwrap_or(Value::Null);
            out.push((k.clone(), v));
        }
        if !more {
            return out;
        }
        after = keys.last().cloned();
    }
}

async fn bucket(app: &TestApp, namespace: &str, bucket: &str) -> Vec<(String, Value)> {
    bucket_of(&app.db, namespace, bucket).await
}

async fn level(app: &TestApp, token: &str, sku: &str) -> (u64, u64) {
    let (status, l) =
        send(app.request(Method::GET, &format!("/v1/merchant/inventory/{sku}")).bearer_auth(token)).await;
    assert_eq!(status, 200, "{l}");
    (l["on_hand"].as_u64().expect("on_hand"), l["reserved"].as_u64().expect("reserved"))
}

/// On-hand and reserved of `sku`, read from the inventory's storage.
async fn stored_level(db: &mercato::storage::Db, sku: &str) -> (u64, u64) {
    let keys = [format!("h/{sku}"), format!("a/{sku}")];
    let values =
        db.kv_get_many(Scope { namespace: "inventory", bucket: "levels" }, &keys).await.expect("levels");
    let n = |v: &Option<Vec<u8>>| {
        v.as_ref().and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok()).unwrap_or(0)
    };
    let (on_hand, available) = (n(&values[0]), n(&values[1]));
    (on_hand, on_hand - available)
}

/// The low-stock threshold of `sku` (0: none), from the inventory's storage.
async fn stored_threshold(db: &mercato::storage::Db, sku: &str) -> u64 {
    let values = db
        .kv_get_many(Scope { namespace: "inventory", bucket: "levels" }, &[format!("t/{sku}")])
        .await
        .expect("threshold");
    values[0].as_ref().and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()).unwrap_or(0)
}

/// Wait (at most 60 s) until no checkout is open and nothing is reserved,
/// then check every invariant from the database itself: orders are all paid
/// and captured; per sku, on-hand dropped by exactly the units of paid
/// orders; every authorization ended captured for one of those orders,
/// voided or declined. Returns the paid orders.
pub async fn settled_in(db: &mercato::storage::Db, stock: &HashMap<String, u64>) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = bucket_of(db, "order", "open").await.len();
        let mut reserved = 0;
        for sku in stock.keys() {
            reserved += stored_level(db, sku).await.1;
        }
        if open == 0 && reserved == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled after 60 s: {open} open checkouts, {reserved} reserved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let orders: Vec<Value> = bucket_of(db, "order", "orders").await.into_iter().map(|(_, v)| v).collect();
    let mut sold: HashMap<String, u64> = HashMap::new();
    let mut paid_payments = HashSet::new();
    for o in &orders {
        assert_eq!(o["status"], "Paid", "only paid orders remain: {o}");
        assert_eq!(o["payment"]["status"], "Succeeded", "captured: {o}");
        paid_payments.insert(s(&o["payment"]["id"]));
        for line in o["lines"].as_array().expect("lines") {
            *sold.entry(s(&line["sku"])).or_default() += line["quantity"].as_u64().expect("quantity");
        }
    }
    for (sku, initial) in stock {
        let (on_hand, reserved) = stored_level(db, sku).await;
        let sold = sold.get(sku).copied().unwrap_or(0);
        assert_eq!(reserved, 0, "{sku}: nothing left reserved");
        assert_eq!(on_hand, initial - sold, "{sku}: on-hand dropped by exactly the units of paid orders");
    }
    let mut captured = HashSet::new();
    for (key, intent) in bucket_of(db, "payment", "intents").await {
        match intent["payment"]["status"].as_str() {
            Some("Succeeded") => {
                captured.insert(s(&intent["payment"]["id"]));
            }
            Some("Voided" | "Declined") => {}
            other => panic!("authorization {key} ended {other:?}: {intent}"),
        }
    }
    assert_eq!(captured, paid_payments, "every capture belongs to one paid order and back");
    // SPEC §6.9: each paid order has its one `order.paid` event in the
    // outbox, and no event tells of a checkout that did not end paid. A sku
    // with a low-stock threshold has `stock.low` events only for changes
    // that took it below, and at least one if it started at the threshold
    // or more and ended below.
    let events = crate::events::outbox(db).await;
    let mut paid_events: HashMap<String, usize> = HashMap::new();
    let mut low: HashMap<String, usize> = HashMap::new();
    for e in &events {
        if e.kind == "stock.low" {
            let threshold = stored_threshold(db, &e.subject).await;
            let data: Value = serde_json::from_slice(&e.data).expect("json");
            let available = data["available"].as_u64().expect("available");
            assert!(stock.contains_key(&e.subject), "a sku of the test: {e:?}");
            assert!(threshold > 0 && available < threshold, "below its threshold {threshold}: {data}");
            assert_eq!(data["low_stock_threshold"], threshold, "{data}");
            *low.entry(e.subject.clone()).or_default() += 1;
            continue;
        }
        assert_eq!(e.kind, "order.paid", "only payments happened: {e:?}");
        *paid_events.entry(e.subject.clone()).or_default() += 1;
    }
    for (sku, initial) in stock {
        let threshold = stored_threshold(db, sku).await;
        let (on_hand, _) = stored_level(db, sku).await;
        if threshold > 0 && *initial >= threshold && on_hand < threshold {
            assert!(
                low.get(sku).copied().unwrap_or(0) >= 1,
                "{sku}: {initial} → {on_hand} crossed {threshold}"
            );
        }
    }
    for o in &orders {
        let id = s(&o["id"]);
        assert_eq!(paid_events.get(&id), Some(&1), "order {id}: one order.paid event");
    }
    assert_eq!(paid_events.len(), orders.len(), "an event for each paid order and no other: {paid_events:?}");
    orders
}

/// [`settled_in`], also checking the API shows the same stock.
async fn settled(app: &TestApp, token: &str, stock: &HashMap<String, u64>) -> Vec<Value> {
    let orders = settled_in(&app.db, stock).await;
    for sku in stock.keys() {
        assert_eq!(level(app, token, sku).await, stored_level(&app.db, sku).await, "{sku}: the API agrees");
    }
    orders
}

/// Send a checkout on a raw socket and close it after `after`.
pub async fn checkout_and_hang_up(addr: std::net::SocketAddr, cart: &str, key: &str, after: Duration) {
    let body = json!({"email": "s@example.com", "payment": {"token": "tok_visa"}}).to_string();
    let request = format!(
        "POST /v1/carts/{cart}/checkout HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(after).await;
    drop(socket);
}

async fn cart_with(app: &TestApp, lines: &[(String, u32)]) -> String {
    let id = app.cart("EUR").await;
    for (sku, q) in lines {
        let (status, body) =
            app.post(&format!("/v1/carts/{id}/items"), json!({"sku": sku, "quantity": q})).await;
        assert_eq!(status, 200, "{body}");
    }
    id
}

/// 300 checkouts whose clients close the connection 0–100 ms after sending,
/// 16 at a time, over 6 skus that run out part-way.
async fn disconnects_leave_no_partial_checkout(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.checkout.reservation_ttl_ms = 2_000;
        c.checkout.sweep_interval_ms = 100;
        c.components.max_instances = 1_000;
    })
    .await;
    let (_, token) = app.merchant("Shop").await;
    let skus: Vec<String> = (0..6).map(|i| format!("DC-{i}")).collect();
    let mut stock = HashMap::new();
    for sku in &skus {
        app.product(&token, product_with_stock(sku, 700, 60)).await;
        stock.insert(sku.clone(), 60u64);
        // stock.low at 30: reservations cross it, and some are then released.
        let (status, body) = send(
            app.request(Method::PUT, &format!("/v1/merchant/inventory/{sku}"))
                .bearer_auth(&token)
                .json(&json!({"low_stock_threshold": 30})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut carts = Vec::new();
    for i in 0..300usize {
        let lines: Vec<(String, u32)> =
            (0..=(i % 3)).map(|j| (skus[(i + j) % 6].clone(), 1 + ((i + j) % 2) as u32)).collect();
        carts.push(cart_with(&app, &lines).await);
    }
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for (i, cart) in carts.iter().enumerate() {
        let permit = gate.clone().acquire_owned().await.expect("permit");
        let (addr, cart) = (app.addr, cart.clone());
        let after = Duration::from_millis(((i * 37) % 101) as u64);
        tasks.push(tokio::spawn(async move {
            checkout_and_hang_up(addr, &cart, &format!("dc-{i}"), after).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let orders = settled(&app, &token, &stock).await;
    assert!(!orders.is_empty(), "some checkouts completed after their clients left");
    // A shopper retrying a key gets that checkout's outcome: its order, once.
    let ids: HashSet<String> = orders.iter().map(|o| s(&o["id"])).collect();
    let mut replayed = 0;
    let mut answers: HashMap<u16, usize> = HashMap::new();
    for (i, cart) in carts.iter().enumerate().take(60) {
        let (status, body) = send(
            app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
                .header("Idempotency-Key", format!("dc-{i}"))
                .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}})),
        )
        .await;
        *answers.entry(status).or_default() += 1;
        if status == 201 && ids.contains(&s(&body["id"])) {
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "retries with the same key answer with the order: {answers:?}, {} orders",
        ids.len()
    );
    settled(&app, &token, &stock).await;
}
each_backend!(disconnects, disconnects_leave_no_partial_checkout);

/// Where a test makes the order component trap (the host call completes,
/// then the guest traps): after T1, after authorize, after T2, after
/// capture, after T3.
const TRAP_POINTS: [&str; 5] = [
    "order:transactions.commit#1",
    "order:payment.authorize#1",
    "order:transactions.commit#2",
    "order:payment.capture#1",
    "order:transactions.commit#3",
];

async fn a_trap_at_each_step_is_recovered(backend: Backend) {
    for point in TRAP_POINTS {
        for ttl_ms in [60_000, 300] {
            let app = spawn_app_with(backend, |c| {
                c.inject_trap = Some(point.to_string());
                c.checkout.reservation_ttl_ms = ttl_ms;
                c.checkout.sweep_interval_ms = 100;
                c.components.deadline_ms = 500;
            })
            .await;
            let (_, token) = app.merchant("Shop").await;
            app.product(&token, product_with_stock("MUG", 1999, 10)).await;
            let cart = cart_with(&app, &[("MUG".to_string(), 3)]).await;
            let checkout = || {
                app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
                    .header("Idempotency-Key", "trap")
                    .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}}))
            };
            let (status, body) = send(checkout()).await;
            if point != "order:transactions.commit#3" {
                assert_error(&(status, body.clone()), 500, "component_fault");
            }
            let stock = HashMap::from([("MUG".to_string(), 10u64)]);
            let orders = settled(&app, &token, &stock).await;
            // Past T2 the checkout is paid whatever the TTL; before it, recovery
            // finishes it within the TTL and compensates it after.
            let past_t2 = matches!(
                point,
                "order:transactions.commit#2" | "order:payment.capture#1" | "order:transactions.commit#3"
            );
            let expect_paid = past_t2 || ttl_ms > 1_000;
            assert_eq!(orders.len(), usize::from(expect_paid), "{point}, ttl {ttl_ms}: {orders:?}");
            let retry = send(checkout()).await;
            if expect_paid {
                assert_eq!(retry.0, 201, "{point}: the retry gets the order: {}", retry.1);
                assert_eq!(retry.1["id"], orders[0]["id"]);
            } else {
                // The voided authorization never turns into a paid order.
                assert_error(&retry, 402, "payment_declined");
                assert!(bucket(&app, "order", "orders").await.is_empty(), "{point}: no order");
            }
            settled(&app, &token, &stock).await;
        }
    }
}
each_backend!(trap_at_each_step, a_trap_at_each_step_is_recovered);

/// 32 concurrent clients on 4 hot skus: every checkout succeeds while there
/// is stock (no `conflict` from contention), and once it runs short only
/// `out_of_stock` is answered, never an oversell.
async fn hot_skus_never_conflict(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.components.deadline_ms = 60_000;
        c.components.max_instances = 1_000;
    })
    .await;
    let (_, token) = app.merchant("Hot").await;
    let skus: Vec<String> = (1..=4).map(|i| format!("HOT-{i}")).collect();
    for sku in &skus {
        app.product(&token, product_with_stock(sku, 999, 100_000)).await;
    }
    let round = |n: usize, tag: &'static str| {
        let app = &app;
        let skus = &skus;
        async move {
            let mut carts = Vec::new();
            for i in 0..n {
                let lines: Vec<(String, u32)> = (0..3).map(|j| (skus[(i + j) % 4].clone(), 1)).collect();
                carts.push(cart_with(app, &lines).await);
            }
            let queue = std::sync::Arc::new(tokio::sync::Mutex::new(carts.into_iter().enumerate()));
            let workers: Vec<_> = (0..32)
                .map(|_| {
                    let (queue, client, base) = (queue.clone(), app.client.clone(), app.url(""));
                    tokio::spawn(async move {
                        let mut answers = Vec::new();
                        loop {
                            let Some((i, cart)) = queue.lock().await.next() else { break };
                            answers.push(
                                send(
                                    client
                                        .post(format!("{base}/v1/carts/{cart}/checkout"))
                                        .header("Idempotency-Key", format!("{tag}-{i}"))
                                        .json(&json!({"email": "h@example.com", "payment": {"token": "tok_visa"}})),
                                )
                                .await,
                            );
                        }
                        answers
                    })
                })
                .collect();
            let mut all = Vec::new();
            for w in workers {
                all.extend(w.await.expect("worker"));
            }
            all
        }
    };
    for (status, body) in round(160, "plenty").await {
        assert_eq!(status, 201, "with stock to spare every checkout succeeds: {body}");
    }
    for sku in &skus {
        let (status, body) = send(
            app.request(Method::PUT, &format!("/v1/merchant/inventory/{sku}"))
                .bearer_auth(&token)
                .json(&json!({"on_hand": 25})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let before = bucket(&app, "order", "orders").await.len();
    let mut paid = 0;
    for (status, body) in round(96, "short").await {
        match status {
            201 => paid += 1,
            409 => assert_eq!(body["error"]["code"], "out_of_stock", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(paid > 0 && paid < 96, "some sold, some out of stock: {paid}");
    // Only the short round's orders count against the 25 units each.
    let orders = bucket(&app, "order", "orders").await;
    assert_eq!(orders.len(), before + paid);
    let mut sold = 0;
    for sku in &skus {
        let (on_hand, reserved) = level(&app, &token, sku).await;
        assert_eq!(reserved, 0, "{sku}: nothing left reserved");
        assert!(on_hand <= 25, "{sku}: never oversold");
        sold += 25 - on_hand;
    }
    assert_eq!(sold, 3 * paid as u64, "every sold unit belongs to a paid order");
}
each_backend!(hot_skus, hot_skus_never_conflict);

/// Finished checkouts are forgotten after `checkout.idempotency_retention_ms`
/// (nothing grows per request without bound); their orders stay, and the key
/// is then free: a retry makes a new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_checkouts_are_pruned_after_their_retention() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.checkout.idempotency_retention_ms = 300;
        c.checkout.sweep_interval_ms = 50;
    })
    .await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_with_stock("MUG", 1999, 10)).await;
    let cart = cart_with(&app, &[("MUG".to_string(), 1)]).await;
    let checkout = || {
        send(
            app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
                .header("Idempotency-Key", "kept-a-while")
                .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}})),
        )
    };
    let (status, first) = checkout().await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(checkout().await.1["id"], first["id"], "within the retention the key replays its order");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bucket(&app, "order", "checkouts").await.is_empty()
        || !bucket(&app, "order", "done").await.is_empty()
    {
        assert!(Instant::now() < deadline, "finished checkouts were never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get_order(&s(&first["id"])).await.0, 200, "the order stays");
    let (status, second) = checkout().await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["id"], first["id"], "after its retention the key is free again");
}

/// A checkout cut off between its capture and T3 is finished by recovery —
/// without overwriting what happened to the order meanwhile: an operator's
/// cancel (refund + restock) stays, so a second cancel cannot restock twice.
async fn recovery_never_overwrites_a_cancel(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.inject_trap = Some("order:payment.capture#1".to_string());
        c.checkout.sweep_interval_ms = 100;
        c.components.deadline_ms = 1_000;
    })
    .await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_with_stock("MUG", 1999, 10)).await;
    let cart = cart_with(&app, &[("MUG".to_string(), 3)]).await;
    let (status, body) = send(
        app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
            .header("Idempotency-Key", "cut-after-capture")
            .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}})),
    )
    .await;
    assert_error(&(status, body), 500, "component_fault");
    let orders = bucket(&app, "order", "orders").await;
    assert_eq!(orders.len(), 1);
    let id = s(&orders[0].1["id"]);
    // Before recovery takes it over (its lease runs 2 s), the operator cancels.
    let cancel = || app.request(Method::POST, &format!("/v1/orders/{id}/cancel")).bearer_auth(ADMIN_TOKEN);
    let (status, cancelled) = send(cancel()).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(level(&app, &token, "MUG").await, (10, 0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bucket(&app, "order", "open").await.is_empty() {
        assert!(Instant::now() < deadline, "recovery never finished the checkout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, order) = app.get_order(&id).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(order["payment"]["status"], "refunded", "{order}");
    assert_error(&send(cancel()).await, 409, "conflict");
    assert_eq!(level(&app, &token, "MUG").await, (10, 0), "restocked once");
}
each_backend!(recovery_keeps_a_cancel, recovery_never_overwrites_a_cancel);

/// Wait (at most 60 s) until no cancel is part-way, then check every
/// invariant of cancels from the database itself: each order is paid and
/// captured (its cancel never claimed, or undone) or cancelled and refunded,
/// never cancelled without its refund; per sku, on-hand is the initial stock
/// less the units of orders still paid (a cancelled order's units came back
/// exactly once); each payment is captured or refunded as its order says;
/// the outbox holds one `order.paid` per order and one `order.cancelled` per
/// cancelled order, nothing else. Returns the ids of the cancelled orders.
pub async fn cancels_settled(db: &mercato::storage::Db, stock: &HashMap<String, u64>) -> HashSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bucket_of(db, "order", "cancelling").await.is_empty() {
        assert!(Instant::now() < deadline, "cancels still part-way after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let orders: Vec<Value> = bucket_of(db, "order", "orders").await.into_iter().map(|(_, v)| v).collect();
    let (mut cancelled, mut paid) = (HashSet::new(), HashSet::new());
    let mut kept: HashMap<String, u64> = HashMap::new();
    let mut payment_of: HashMap<String, &'static str> = HashMap::new();
    for o in &orders {
        let id = s(&o["id"]);
        match (o["status"].as_str(), o["payment"]["status"].as_str()) {
            (Some("Cancelled"), Some("Refunded")) => {
                cancelled.insert(id);
                payment_of.insert(s(&o["payment"]["id"]), "Refunded");
            }
            (Some("Paid"), Some("Succeeded")) => {
                paid.insert(id);
                payment_of.insert(s(&o["payment"]["id"]), "Succeeded");
                for line in o["lines"].as_array().expect("lines") {
                    *kept.entry(s(&line["sku"])).or_default() += line["quantity"].as_u64().expect("quantity");
                }
            }
            _ => panic!("an order paid and captured, or cancelled and refunded: {o}"),
        }
    }
    for (sku, initial) in stock {
        let (on_hand, reserved) = stored_level(db, sku).await;
        assert_eq!(reserved, 0, "{sku}: nothing reserved");
        assert_eq!(
            on_hand,
            initial - kept.get(sku).copied().unwrap_or(0),
            "{sku}: each cancelled order's units came back once"
        );
    }
    for (key, intent) in bucket_of(db, "payment", "intents").await {
        let id = s(&intent["payment"]["id"]);
        assert_eq!(
            payment_of.get(&id).copied(),
            intent["payment"]["status"].as_str(),
            "payment {key} as its order says: {intent}"
        );
    }
    let mut told: HashMap<(String, String), usize> = HashMap::new();
    for e in crate::events::outbox(db).await {
        *told.entry((e.kind.clone(), e.subject.clone())).or_default() += 1;
    }
    let mut want: HashMap<(String, String), usize> = HashMap::new();
    for id in paid.iter().chain(&cancelled) {
        want.insert(("order.paid".into(), id.clone()), 1);
    }
    for id in &cancelled {
        want.insert(("order.cancelled".into(), id.clone()), 1);
    }
    assert_eq!(told, want, "one order.paid per order, one order.cancelled per cancelled order");
    cancelled
}

/// Paid orders of 3 units of MUG (10 + 3 × `orders` in stock).
async fn paid_orders(app: &TestApp, token: &str, orders: usize) -> (Vec<String>, HashMap<String, u64>) {
    let initial = 10 + 3 * orders as u64;
    app.product(token, product_with_stock("MUG", 1999, u32::try_from(initial).expect("stock"))).await;
    let mut ids = Vec::new();
    for i in 0..orders {
        let cart = cart_with(app, &[("MUG".to_string(), 3)]).await;
        let (status, order) = send(
            app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
                .header("Idempotency-Key", format!("paid-{i}"))
                .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}})),
        )
        .await;
        assert_eq!(status, 201, "{order}");
        ids.push(s(&order["id"]));
    }
    (ids, HashMap::from([("MUG".to_string(), initial)]))
}

/// Where a test makes a cancel trap (the call completes, then the order
/// component traps): after the claim, after the refund, after inventory
/// staged the restock, after the last transaction.
const CANCEL_TRAP_POINTS: [&str; 4] = [
    "order.cancel:transactions.commit#1",
    "order.cancel:payment.refund#1",
    "order.cancel:inventory.restock#1",
    "order.cancel:transactions.commit#2",
];

/// A cancel cut off after each of its steps is finished by recovery once its
/// lease has passed: refunded once, restocked once, told once.
async fn a_trap_at_each_cancel_step_is_recovered(backend: Backend) {
    for point in CANCEL_TRAP_POINTS {
        let app = spawn_app_with(backend, |c| {
            c.inject_trap = Some(point.to_string());
            c.checkout.sweep_interval_ms = 100;
            c.components.deadline_ms = 500;
        })
        .await;
        let (_, token) = app.merchant("Shop").await;
        let (ids, stock) = paid_orders(&app, &token, 1).await;
        let cancel =
            || app.request(Method::POST, &format!("/v1/orders/{}/cancel", ids[0])).bearer_auth(ADMIN_TOKEN);
        assert_error(&send(cancel()).await, 500, "component_fault");
        let cancelled = cancels_settled(&app.db, &stock).await;
        assert_eq!(cancelled, HashSet::from([ids[0].clone()]), "{point}: the cancel was finished");
        let (_, order) = app.get_order(&ids[0]).await;
        assert_eq!(
            (&order["status"], &order["payment"]["status"]),
            (&json!("cancelled"), &json!("refunded"))
        );
        assert_error(&send(cancel()).await, 409, "conflict");
        assert_eq!(level(&app, &token, "MUG").await, (13, 0), "{point}: restocked once");
        cancels_settled(&app.db, &stock).await;
    }
}
each_backend!(trap_at_each_cancel_step, a_trap_at_each_cancel_step_is_recovered);

/// Send an operator's cancel on a raw socket and close it after `after`.
async fn cancel_and_hang_up(addr: std::net::SocketAddr, order: &str, after: Duration) {
    let request = format!(
        "POST /v1/orders/{order}/cancel HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(after).await;
    drop(socket);
}

/// 24 cancels whose clients close the connection 0–46 ms after sending, 8 at
/// a time, some twice at once: a request's work runs on its own task
/// (`http::detach`), so every cancel still ends whole — refunded, restocked
/// once, told once — and a second one at once is refused, never doubled.
/// (Cancels cut off part-way are `a_trap_at_each_cancel_step_is_recovered`
/// and `processes::kill_9_under_cancels`.)
async fn disconnected_cancels_end_whole(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.checkout.sweep_interval_ms = 100;
        c.components.deadline_ms = 1_000;
        c.components.max_instances = 1_000;
    })
    .await;
    let (_, token) = app.merchant("Shop").await;
    let (ids, stock) = paid_orders(&app, &token, 24).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for twice in 0..=usize::from(i % 3 == 0) {
            let permit = gate.clone().acquire_owned().await.expect("permit");
            let (addr, id) = (app.addr, id.clone());
            let after = Duration::from_millis((((i + twice) * 2) % 47) as u64);
            tasks.push(tokio::spawn(async move {
                cancel_and_hang_up(addr, &id, after).await;
                drop(permit);
            }));
        }
    }
    for t in tasks {
        t.await.expect("client");
    }
    // Every request has ended by its deadline (1 s).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let cancelled = cancels_settled(&app.db, &stock).await;
    assert_eq!(cancelled.len(), ids.len(), "every cancel ended whole after its client left");
    assert_eq!(level(&app, &token, "MUG").await, (stock["MUG"], 0), "all the stock back, once");
    for id in &ids {
        let (status, body) =
            send(app.request(Method::POST, &format!("/v1/orders/{id}/cancel")).bearer_auth(ADMIN_TOKEN))
                .await;
        assert_eq!((status, &body["error"]["code"]), (409, &json!("conflict")), "{body}");
    }
    cancels_settled(&app.db, &stock).await;
}
each_backend!(disconnected_cancels, disconnected_cancels_end_whole);
