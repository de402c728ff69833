//! Events (SPEC §6.9): every change that has an event writes it to the
//! outbox in its own transaction — exactly once, also under concurrent
//! checkouts, fulfilments and cancels — and the relay hands the outbox on to
//! NATS JetStream (the real server on 127.0.0.1:4222).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::each_backend;
use crate::helpers::*;
use mercato::storage::events::EventRow;

/// Every event in the outbox, oldest first.
pub async fn outbox(db: &mercato::storage::Db) -> Vec<EventRow> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = db.events_after(after, 1_000).await.expect("events");
        let Some(last) = page.last() else { return out };
        after = last.seq;
        out.extend(page);
    }
}

async fn checkout(app: &TestApp, cart: &str, key: &str, token: &str) -> (u16, Value) {
    send(
        app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
            .header("Idempotency-Key", key)
            .json(&json!({"email": "shopper@example.com", "payment": {"token": token}})),
    )
    .await
}

/// One unit of `sku` bought in a cart of its own under `key`: the order (201).
async fn buy_one(app: &TestApp, sku: &str, key: &str) -> Value {
    let cart = app.cart("EUR").await;
    app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": 1})).await;
    let (status, order) = checkout(app, &cart, key, "tok_visa").await;
    assert_eq!(status, 201, "{order}");
    order
}

fn merchants_of(order: &Value) -> BTreeSet<String> {
    order["lines"].as_array().expect("lines").iter().map(|l| s(&l["merchant_id"])).collect()
}

/// 48 carts (one merchant's lines, the other's, or both), each checked out
/// twice at once under one key, some declined, some sold out; then every
/// other paid order fulfilled by both its merchants at once, and some
/// cancelled twice at once. The outbox holds exactly one event per change
/// that happened, none for what did not, each with its merchants and the
/// order as the API shows it after the change.
async fn every_change_has_exactly_one_event(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.components.deadline_ms = 60_000;
        c.components.max_instances = 1_000;
    })
    .await;
    let (a, token_a) = app.merchant("A").await;
    let (b, token_b) = app.merchant("B").await;
    app.product(&token_a, crate::interruption::product_with_stock("EV-A", 500, 25)).await;
    app.product(&token_b, crate::interruption::product_with_stock("EV-B", 700, 25)).await;
    let mut carts = Vec::new();
    for i in 0..48usize {
        let cart = app.cart("EUR").await;
        let skus: &[&str] = match i % 3 {
            0 => &["EV-A"],
            1 => &["EV-B"],
            _ => &["EV-A", "EV-B"],
        };
        for sku in skus {
            let (status, body) =
                app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": 1})).await;
            assert_eq!(status, 200, "{body}");
        }
        carts.push(cart);
    }
    let mut tasks = Vec::new();
    for (i, cart) in carts.iter().enumerate() {
        let token = if i % 7 == 3 { "tok_chargeDeclined" } else { "tok_visa" };
        for _ in 0..2 {
            let req = app
                .request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
                .header("Idempotency-Key", format!("ev-{i}"))
                .json(&json!({"email": "shopper@example.com", "payment": {"token": token}}));
            tasks.push(tokio::spawn(send(req)));
        }
    }
    let mut answers: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        let (status, body) = t.await.expect("checkout");
        *answers.entry(status).or_default() += 1;
        assert!([201, 402, 409].contains(&status), "{status}: {body}");
    }
    // Whatever raced, each key now answers with its outcome.
    let mut paid: HashMap<String, Value> = HashMap::new();
    for (i, cart) in carts.iter().enumerate() {
        let token = if i % 7 == 3 { "tok_chargeDeclined" } else { "tok_visa" };
        let (status, order) = checkout(&app, cart, &format!("ev-{i}"), token).await;
        if status == 201 {
            paid.insert(s(&order["id"]), order);
        }
    }
    assert!(paid.len() > 10 && paid.len() < 48, "some paid, some declined or sold out: {answers:?}");

    // Fulfil every other paid order, both merchants at once; cancel some of
    // the rest, twice at once.
    let ids: Vec<String> = {
        let mut ids: Vec<String> = paid.keys().cloned().collect();
        ids.sort();
        ids
    };
    let (mut fulfilled, mut cancelled) = (HashSet::new(), HashSet::new());
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let merchants = merchants_of(&paid[id]);
        if n % 2 == 0 {
            fulfilled.insert(id.clone());
            for (m, token) in [(&a, &token_a), (&b, &token_b)] {
                if merchants.contains(m) {
                    let req =
                        app.request(Method::POST, &format!("/v1/orders/{id}/fulfill")).bearer_auth(token);
                    tasks.push((200, tokio::spawn(send(req))));
                }
            }
        } else if n % 4 == 1 {
            cancelled.insert(id.clone());
            for _ in 0..2 {
                let req =
                    app.request(Method::POST, &format!("/v1/orders/{id}/cancel")).bearer_auth(ADMIN_TOKEN);
                tasks.push((0, tokio::spawn(send(req))));
            }
        }
    }
    for (want, t) in tasks {
        let (status, body) = t.await.expect("change");
        if want == 200 {
            assert_eq!(status, 200, "a merchant fulfils its lines: {body}");
        } else {
            assert!([200, 409].contains(&status), "{status}: {body}");
        }
    }
    for id in &cancelled {
        let (_, order) = app.get_order(id).await;
        assert_eq!(order["status"], "cancelled", "{order}");
        assert_eq!(order["payment"]["status"], "refunded", "{order}");
    }

    let events = outbox(&app.db).await;
    let unique: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(unique.len(), events.len(), "event ids are unique");
    let mut by_kind: HashMap<&str, Vec<&EventRow>> = HashMap::new();
    for e in &events {
        by_kind.entry(e.kind.as_str()).or_default().push(e);
    }
    let subjects = |kind: &str| -> Vec<String> {
        let mut v: Vec<String> = by_kind.get(kind).into_iter().flatten().map(|e| e.subject.clone()).collect();
        v.sort();
        v
    };
    let sorted = |set: &HashSet<String>| {
        let mut v: Vec<String> = set.iter().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(subjects("order.paid"), ids, "one order.paid per paid order, none for the others");
    assert_eq!(subjects("order.fulfilled"), sorted(&fulfilled), "one order.fulfilled per fulfilled order");
    assert_eq!(subjects("order.cancelled"), sorted(&cancelled), "one order.cancelled per cancelled order");
    assert_eq!(by_kind.len(), [&fulfilled, &cancelled].iter().filter(|s| !s.is_empty()).count() + 1);
    let after = HashMap::from([
        ("order.paid", "paid"),
        ("order.fulfilled", "fulfilled"),
        ("order.cancelled", "cancelled"),
    ]);
    for e in &events {
        let order = &paid[&e.subject];
        let change = e.kind.trim_start_matches("order.");
        assert_eq!(e.id, format!("evt_{}_{change}", &e.subject[4..]), "a stable id");
        let merchants: Vec<String> = merchants_of(order).into_iter().collect();
        assert_eq!(e.merchants, merchants, "{}: the merchants of its lines", e.id);
        let data: Value = serde_json::from_slice(&e.data).expect("JSON data");
        assert_eq!(data["id"], order["id"]);
        assert_eq!(data["status"], after[e.kind.as_str()], "{}: the order after the change: {data}", e.id);
        assert_eq!(data["lines"].as_array().map(Vec::len), order["lines"].as_array().map(Vec::len));
        assert_eq!(data["total"], order["total"]);
        match e.kind.as_str() {
            "order.paid" => assert_eq!(data["payment"]["status"], "authorized", "{data}"),
            "order.cancelled" => assert_eq!(data["payment"]["status"], "refunded", "{data}"),
            _ => {}
        }
    }

    // The operator's view: pages of `GET /v1/admin/events` in outbox order.
    let mut listed = Vec::new();
    let mut after_seq = 0;
    loop {
        let (status, page) = send(
            app.request(Method::GET, &format!("/v1/admin/events?after={after_seq}&limit=7"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items").clone();
        if items.is_empty() {
            assert_eq!(page["next_after"], after_seq);
            break;
        }
        assert!(items.len() <= 7);
        after_seq = page["next_after"].as_i64().expect("next_after");
        listed.extend(items);
    }
    let listed_ids: Vec<String> = listed.iter().map(|e| s(&e["id"])).collect();
    assert_eq!(listed_ids, events.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
    assert!(listed.iter().all(|e| e["type"].is_string() && e["data"]["id"].is_string()), "{listed:?}");
    // Operators only.
    let denied = send(app.request(Method::GET, "/v1/admin/events").bearer_auth(&token_a)).await;
    assert_error(&denied, 401, "unauthorized");
    let bad = send(app.request(Method::GET, "/v1/admin/events?limit=0").bearer_auth(ADMIN_TOKEN)).await;
    assert_error(&bad, 422, "invalid_request");
}
each_backend!(exactly_one_event_per_change, every_change_has_exactly_one_event);

/// The NATS server the tests use (SPEC: NATS with JetStream on the machine).
pub const NATS: &str = "nats://127.0.0.1:4222";

/// Every message of `stream`: (Nats-Msg-Id, subject, payload).
pub async fn stream_messages(stream_name: &str) -> Vec<(String, String, Value)> {
    let client = async_nats::connect(NATS).await.expect("NATS at 127.0.0.1:4222 (with JetStream)");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(stream_name).await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        let id = m.headers.get("Nats-Msg-Id").map(|v| v.to_string()).unwrap_or_default();
        out.push((id, m.subject.to_string(), serde_json::from_slice(&m.payload).expect("JSON")));
    }
    out
}

pub async fn delete_stream(stream_name: &str) {
    if let Ok(client) = async_nats::connect(NATS).await {
        let _ = async_nats::jetstream::new(client).delete_stream(stream_name).await;
    }
}

/// A stream and subject prefix of this test's own.
pub fn nats_names(test: &str) -> (String, String) {
    let tag = format!("{test}{:08x}", rand::random::<u32>());
    (format!("MERCATO_TEST_{}", tag.to_ascii_uppercase()), format!("mercato.test.{tag}"))
}

/// Checkouts with the relay on NATS: each event reaches the stream once,
/// under its id, on `<prefix>.<type>`, with the outbox's envelope; the
/// outbox marks each published; a repeat of an id is dropped by JetStream.
async fn the_relay_hands_events_to_jetstream(backend: Backend) {
    let (stream, prefix) = nats_names("relay");
    let app = spawn_app_with(backend, |c| {
        c.events.nats_url = Some(mercato::config::Secret(NATS.into()));
        c.events.nats_stream = stream.clone();
        c.events.nats_subject_prefix = prefix.clone();
        c.events.relay_interval_ms = 100;
    })
    .await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, crate::interruption::product_with_stock("NATS-1", 900, 50)).await;
    let mut orders = Vec::new();
    for i in 0..6 {
        let cart = app.cart("EUR").await;
        app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "NATS-1", "quantity": 1})).await;
        let (status, order) = checkout(&app, &cart, &format!("n-{i}"), "tok_visa").await;
        assert_eq!(status, 201, "{order}");
        orders.push(s(&order["id"]));
    }
    let (status, _) =
        send(app.request(Method::POST, &format!("/v1/orders/{}/fulfill", orders[0])).bearer_auth(&token))
            .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = outbox(&app.db).await;
        if events.len() == 7 && events.iter().all(|e| e.published_at.is_some()) {
            break events;
        }
        assert!(Instant::now() < deadline, "not all published after 30 s: {events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let messages = stream_messages(&stream).await;
    let got: Vec<&str> = messages.iter().map(|(id, _, _)| id.as_str()).collect();
    let want: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got, want, "each event once, in outbox order");
    for ((id, subject, body), e) in messages.iter().zip(&events) {
        assert_eq!(subject, &format!("{prefix}.{}", e.kind));
        assert_eq!(body["id"], json!(id));
        assert_eq!(body["type"], json!(e.kind));
        assert_eq!(body["subject"], json!(e.subject));
        assert_eq!(body["data"]["id"], json!(e.subject));
    }
    // What a relay killed between publish and mark would do: the same id
    // again is acknowledged as a repeat and not stored twice.
    let client = async_nats::connect(NATS).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let again = js
        .send_publish(
            format!("{prefix}.order.paid"),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(mercato::events::relay::nats_body(&events[0]).into())
                .message_id(&events[0].id),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert!(again.duplicate, "JetStream drops a repeated event id");
    assert_eq!(stream_messages(&stream).await.len(), 7);
    let metrics = app.metrics().await;
    assert!(metrics.contains("mercato_events_published_total"), "{metrics}");
    app.stop().await;
    delete_stream(&stream).await;
}
each_backend!(relay_to_jetstream, the_relay_hands_events_to_jetstream);

/// What the loopback webhook receiver saw: one entry per request.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub signature: String,
    pub event_id: String,
    pub body: Vec<u8>,
    pub at: Instant,
}

/// A webhook receiver on loopback: `/ok/*` answers 200, `/flaky/*` 500
/// three times per event and then 200, `/hang/*` never answers.
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        use axum::extract::{Path, State as S};
        use axum::http::HeaderMap;
        type Seen = std::sync::Arc<std::sync::Mutex<Vec<Received>>>;
        async fn hook(
            S(seen): S<Seen>,
            Path((kind, _)): Path<(String, String)>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let header =
                |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let got = Received {
                path: kind.clone(),
                signature: header("mercato-signature"),
                event_id: header("mercato-event-id"),
                body: body.to_vec(),
                at: Instant::now(),
            };
            let tries = {
                let mut seen = seen.lock().expect("lock");
                seen.push(got.clone());
                seen.iter().filter(|r| r.path == kind && r.event_id == got.event_id).count()
            };
            match kind.as_str() {
                "flaky" if tries <= 3 => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "hang" => {
                    std::future::pending::<()>().await;
                    axum::http::StatusCode::OK
                }
                _ => axum::http::StatusCode::OK,
            }
        }
        let seen: Seen = Default::default();
        let app = axum::Router::new()
            .route("/{kind}/{merchant}", axum::routing::post(hook))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, seen }
    }

    pub fn url(&self, kind: &str, merchant: &str) -> String {
        format!("http://{}/{kind}/{merchant}", self.addr)
    }

    pub fn seen(&self, kind: &str) -> Vec<Received> {
        self.seen.lock().expect("lock").iter().filter(|r| r.path == kind).cloned().collect()
    }
}

async fn register(app: &TestApp, token: &str, url: &str, events: &[&str]) -> (u16, Value) {
    send(
        app.request(Method::PUT, "/v1/merchant/webhooks")
            .bearer_auth(token)
            .json(&json!({"url": url, "events": events})),
    )
    .await
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Merchants' webhooks end to end: registration rules; signed deliveries
/// that verify (and fail when tampered with) holding only the merchant's
/// lines; an endpoint failing three times gets the event on the fourth
/// attempt after growing delays; a hanging endpoint holds up no one else;
/// each order's events arrive in order; deliveries are listed to their
/// merchant only.
async fn webhooks_deliver_signed_events_to_each_merchant(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, |c| {
        c.events.relay_interval_ms = 50;
        c.events.webhooks.allow_loopback = true;
        c.events.webhooks.retry_base_ms = 200;
        c.events.webhooks.retry_max_ms = 5_000;
        // Longer than any wait below: the hanging endpoint is on its first attempt throughout.
        c.events.webhooks.timeout_ms = 120_000;
    })
    .await;
    let (a, token_a) = app.merchant("A").await;
    let (b, token_b) = app.merchant("B").await;
    let (c, token_c) = app.merchant("C").await;
    let (_, token_d) = app.merchant("D").await;
    // Registration: https only (loopback allowed here), known types, secret once.
    assert_error(
        &register(&app, &token_a, "http://shop.example/hook", &["order.paid"]).await,
        422,
        "invalid_webhook_url",
    );
    assert_error(
        &register(&app, &token_a, "https://10.1.2.3/hook", &["order.paid"]).await,
        422,
        "invalid_webhook_url",
    );
    assert_error(
        &register(&app, &token_a, "https://0x0a.0.0.1/hook", &["order.paid"]).await,
        422,
        "invalid_webhook_url",
    );
    assert_error(
        &register(&app, &token_a, &receiver.url("ok", "a"), &["order.shipped"]).await,
        422,
        "invalid_request",
    );
    assert_error(&register(&app, &token_a, &receiver.url("ok", "a"), &[]).await, 422, "invalid_request");
    let (status, hook_a) =
        register(&app, &token_a, &receiver.url("ok", "a"), &["order.paid", "order.fulfilled"]).await;
    assert_eq!(status, 200, "{hook_a}");
    let secret_a = s(&hook_a["secret"]);
    assert!(secret_a.starts_with("whsec_"), "{hook_a}");
    let (status, shown) = send(app.request(Method::GET, "/v1/merchant/webhooks").bearer_auth(&token_a)).await;
    assert_eq!(status, 200);
    assert!(shown.get("secret").is_none(), "the secret is shown once: {shown}");
    assert_eq!(shown["events"], json!(["order.fulfilled", "order.paid"]));
    let (_, hook_b) = register(&app, &token_b, &receiver.url("flaky", "b"), &["order.paid"]).await;
    let secret_b = s(&hook_b["secret"]);
    register(&app, &token_c, &receiver.url("hang", "c"), &["order.paid"]).await;
    assert_error(
        &send(app.request(Method::GET, "/v1/merchant/webhooks").bearer_auth(&token_d)).await,
        404,
        "not_found",
    );

    app.product(&token_a, crate::interruption::product_with_stock("WH-A", 1000, 50)).await;
    app.product(&token_b, crate::interruption::product_with_stock("WH-B", 2000, 50)).await;
    app.product(&token_c, crate::interruption::product_with_stock("WH-C", 3000, 50)).await;
    // The hanging merchant's order first: its endpoint is stuck from then on.
    let mut orders = Vec::new();
    for (i, lines) in [vec!["WH-C"], vec!["WH-A", "WH-B"], vec!["WH-A"], vec!["WH-A", "WH-C"], vec!["WH-B"]]
        .iter()
        .enumerate()
    {
        let cart = app.cart("EUR").await;
        for sku in lines {
            app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": 1})).await;
        }
        let (status, order) = checkout(&app, &cart, &format!("wh-{i}"), "tok_visa").await;
        assert_eq!(status, 201, "{order}");
        orders.push(order);
    }
    let a_orders: Vec<String> =
        orders.iter().filter(|o| merchants_of(o).contains(&a)).map(|o| s(&o["id"])).collect();
    // A fulfils its only-A order: order.fulfilled after its order.paid.
    let solo = s(&orders[2]["id"]);
    let (status, _) =
        send(app.request(Method::POST, &format!("/v1/orders/{solo}/fulfill")).bearer_auth(&token_a)).await;
    assert_eq!(status, 200);

    wait_for("A receives its 4 events", Duration::from_secs(30), || receiver.seen("ok").len() >= 4).await;
    // C's first delivery is still hanging: A was not held up by it.
    assert!(receiver.seen("hang").len() <= 1, "C is still on its first attempt");
    let (_, c_deliveries) =
        send(app.request(Method::GET, "/v1/merchant/webhooks/deliveries").bearer_auth(&token_c)).await;
    assert!(
        c_deliveries["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|d| d["status"] == "pending" && d["attempts"] == 0),
        "{c_deliveries}"
    );

    let outbox = outbox(&app.db).await;
    let got_a = receiver.seen("ok");
    assert_eq!(got_a.len(), 4, "each event once");
    let now = chrono::Utc::now().timestamp();
    for r in &got_a {
        assert!(
            mercato::events::webhooks::verify(&secret_a, &r.signature, &r.body, now, 300),
            "signature verifies"
        );
        let mut tampered = r.body.clone();
        tampered[10] ^= 1;
        assert!(
            !mercato::events::webhooks::verify(&secret_a, &r.signature, &tampered, now, 300),
            "a tampered body fails"
        );
        assert!(
            !mercato::events::webhooks::verify(&secret_b, &r.signature, &r.body, now, 300),
            "another secret fails"
        );
        let body: Value = serde_json::from_slice(&r.body).expect("JSON");
        assert_eq!(body["id"], json!(r.event_id));
        let e = outbox.iter().find(|e| e.id == r.event_id).expect("an outbox event");
        assert_eq!(body["type"], json!(e.kind));
        assert!(
            body["data"]["lines"].as_array().expect("lines").iter().all(|l| l["merchant_id"] == json!(a)),
            "only A's lines: {body}"
        );
        assert!(body["data"].get("payment").is_none() && body["data"].get("provenance").is_none(), "{body}");
    }
    let kinds: Vec<(String, String)> = got_a
        .iter()
        .map(|r| {
            let b: Value = serde_json::from_slice(&r.body).expect("JSON");
            (s(&b["data"]["id"]), s(&b["type"]))
        })
        .collect();
    let solo_events: Vec<&str> =
        kinds.iter().filter(|(id, _)| *id == solo).map(|(_, k)| k.as_str()).collect();
    assert_eq!(solo_events, ["order.paid", "order.fulfilled"], "in order per order");
    let mut paid_a: Vec<String> =
        kinds.iter().filter(|(_, k)| k == "order.paid").map(|(id, _)| id.clone()).collect();
    paid_a.sort();
    let mut want = a_orders.clone();
    want.sort();
    assert_eq!(paid_a, want, "A hears of exactly its orders");

    // B's endpoint fails 3 times per event, then takes it: growing delays.
    wait_for("B gets both events on a 4th attempt", Duration::from_secs(30), || {
        receiver.seen("flaky").len() >= 8
    })
    .await;
    let flaky = receiver.seen("flaky");
    let ids: HashSet<&str> = flaky.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    for id in ids {
        let tries: Vec<&Received> = flaky.iter().filter(|r| r.event_id == id).collect();
        assert_eq!(tries.len(), 4, "{id}: 3 failures, then delivered, then no more");
        let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
        // Waits of about 200, 400 and 800 ms (+ up to 25 % jitter): each at
        // least 3/4 of its doubling, so a constant delay fails.
        assert!(gaps[0] >= Duration::from_millis(150), "{id}: waited before retrying: {gaps:?}");
        assert!(gaps[1] >= Duration::from_millis(300), "{id}: delays grow: {gaps:?}");
        assert!(gaps[2] >= Duration::from_millis(600) && gaps[2] > gaps[0], "{id}: delays grow: {gaps:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, page) =
        send(app.request(Method::GET, "/v1/merchant/webhooks/deliveries?limit=10").bearer_auth(&token_b))
            .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{page}");
    for d in items {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["attempts"], 4, "{d}");
        assert_eq!(d["last_status"], 200, "{d}");
        assert!(d["delivered_at"].is_i64() && d["next_attempt_at"].is_null(), "{d}");
    }
    // Isolation: each merchant lists only its own deliveries; D has none.
    let (_, page_a) =
        send(app.request(Method::GET, "/v1/merchant/webhooks/deliveries").bearer_auth(&token_a)).await;
    let a_ids: HashSet<String> =
        page_a["items"].as_array().expect("items").iter().map(|d| s(&d["event_id"])).collect();
    assert_eq!(a_ids, got_a.iter().map(|r| r.event_id.clone()).collect::<HashSet<_>>());
    let (_, page_d) =
        send(app.request(Method::GET, "/v1/merchant/webhooks/deliveries").bearer_auth(&token_d)).await;
    assert_eq!(page_d["items"], json!([]));
    let _ = (b, c);
    // Removing a webhook gives up its pending deliveries.
    let (status, _) = send(app.request(Method::DELETE, "/v1/merchant/webhooks").bearer_auth(&token_c)).await;
    assert_eq!(status, 204);
    let (_, page_c) =
        send(app.request(Method::GET, "/v1/merchant/webhooks/deliveries").bearer_auth(&token_c)).await;
    assert!(page_c["items"].as_array().expect("items").iter().all(|d| d["status"] == "failed"), "{page_c}");
}
each_backend!(webhooks, webhooks_deliver_signed_events_to_each_merchant);

async fn set_stock(app: &TestApp, token: &str, sku: &str, body: Value) -> (u16, Value) {
    send(app.request(Method::PUT, &format!("/v1/merchant/inventory/{sku}")).bearer_auth(token).json(&body))
        .await
}

/// The `stock.low` events in the outbox, oldest first.
async fn stock_low_events(db: &mercato::storage::Db) -> Vec<EventRow> {
    outbox(db).await.into_iter().filter(|e| e.kind == "stock.low").collect()
}

/// `stock.low`: a merchant sets a threshold per sku, and each change that
/// takes `available` from the threshold or more to less writes exactly one
/// event, decided in the database under the transaction's locks. 30
/// concurrent checkouts of 3 units walk a sku from 100 down to 10 past a
/// threshold of 40 and make exactly one event (at 37, whatever their
/// interleaving); the same for another merchant's sku in two-line carts
/// (threshold 20, at 19) beside a sku without one; a threshold set while a
/// sku's checkouts run counts from its commit on (one event if it was set
/// above `available`); a merchant lowering `on_hand` past it makes one; a
/// change that stays below, one that rises and threshold 0 make none;
/// `on_hand` and the threshold in one request cross the new threshold. Each
/// merchant's webhook gets exactly its own events, signed and in order.
async fn stock_low_is_written_once_per_crossing(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, |c| {
        c.events.relay_interval_ms = 50;
        c.events.webhooks.allow_loopback = true;
        c.components.deadline_ms = 60_000;
        c.components.max_instances = 1_000;
    })
    .await;
    let (a, token_a) = app.merchant("A").await;
    let (b, token_b) = app.merchant("B").await;
    for (token, sku) in [(&token_a, "LOW-A"), (&token_b, "LOW-B"), (&token_a, "LOW-C"), (&token_b, "LOW-D")] {
        app.product(token, crate::interruption::product_with_stock(sku, 500, 100)).await;
    }
    let (status, hook_a) = register(&app, &token_a, &receiver.url("ok", "a"), &["stock.low"]).await;
    assert_eq!(status, 200, "{hook_a}");
    let secret_a = s(&hook_a["secret"]);
    let (status, hook_b) = register(&app, &token_b, &receiver.url("ok", "b"), &["stock.low"]).await;
    assert_eq!(status, 200, "{hook_b}");
    let secret_b = s(&hook_b["secret"]);

    // The rules of the threshold.
    assert_error(&set_stock(&app, &token_a, "LOW-A", json!({})).await, 422, "invalid_request");
    for bad in [json!(-1), json!(1.5), json!("5"), json!(null), json!(1_000_000_001)] {
        assert_error(
            &set_stock(&app, &token_a, "LOW-A", json!({"low_stock_threshold": bad})).await,
            422,
            "invalid_quantity",
        );
    }
    assert_error(
        &set_stock(&app, &token_b, "LOW-A", json!({"low_stock_threshold": 5})).await,
        403,
        "forbidden",
    );
    let (status, level) = set_stock(&app, &token_a, "LOW-A", json!({"low_stock_threshold": 40})).await;
    assert_eq!(status, 200, "{level}");
    let want =
        json!({"sku": "LOW-A", "on_hand": 100, "reserved": 0, "available": 100, "low_stock_threshold": 40});
    assert_eq!(level, want);
    let (status, level) =
        send(app.request(Method::GET, "/v1/merchant/inventory/LOW-A").bearer_auth(&token_a)).await;
    assert_eq!((status, &level), (200, &want));
    let (_, level) =
        send(app.request(Method::GET, "/v1/merchant/inventory/LOW-D").bearer_auth(&token_b)).await;
    assert_eq!(level["low_stock_threshold"], 0, "none unless set: {level}");
    let (status, _) = set_stock(&app, &token_b, "LOW-B", json!({"low_stock_threshold": 20})).await;
    assert_eq!(status, 200);

    // 30 checkouts each, all at once: LOW-A; LOW-B with LOW-D in one cart;
    // LOW-C, whose threshold is set while they run.
    let mut carts = Vec::new();
    for i in 0..90 {
        let cart = app.cart("EUR").await;
        let skus: &[&str] = match i % 3 {
            0 => &["LOW-A"],
            1 => &["LOW-B", "LOW-D"],
            _ => &["LOW-C"],
        };
        for sku in skus {
            let (status, body) =
                app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": 3})).await;
            assert_eq!(status, 200, "{body}");
        }
        carts.push(cart);
    }
    let tasks: Vec<_> = carts
        .iter()
        .enumerate()
        .map(|(i, cart)| {
            let req = app
                .request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
                .header("Idempotency-Key", format!("low-{i}"))
                .json(&json!({"email": "shopper@example.com", "payment": {"token": "tok_visa"}}));
            tokio::spawn(send(req))
        })
        .collect();
    let (status, c_level) = set_stock(&app, &token_a, "LOW-C", json!({"low_stock_threshold": 40})).await;
    assert_eq!(status, 200, "{c_level}");
    for t in tasks {
        let (status, body) = t.await.expect("checkout");
        assert_eq!(status, 201, "{body}");
    }
    let shown = |low: &[EventRow]| -> Vec<String> {
        low.iter().map(|e| format!("{} {}", e.subject, String::from_utf8_lossy(&e.data))).collect()
    };
    let low = stock_low_events(&app.db).await;
    let of = |sku: &str| low.iter().filter(|e| e.subject == sku).collect::<Vec<_>>();
    let data = |e: &EventRow| -> Value { serde_json::from_slice(&e.data).expect("json") };
    assert_eq!(of("LOW-A").len(), 1, "one crossing, one event: {:?}", shown(&low));
    assert_eq!(
        data(of("LOW-A")[0]),
        json!({"sku": "LOW-A", "merchant_id": a, "low_stock_threshold": 40, "available": 37}),
        "the change that crossed: 40 → 37"
    );
    assert_eq!(of("LOW-B").len(), 1, "{:?}", shown(&low));
    assert_eq!(
        data(of("LOW-B")[0]),
        json!({"sku": "LOW-B", "merchant_id": b, "low_stock_threshold": 20, "available": 19})
    );
    assert!(of("LOW-D").is_empty(), "no threshold, no event: {:?}", shown(&low));
    // LOW-C: set above what was left, the crossing is still ahead and counts.
    let c_events = of("LOW-C");
    if c_level["available"].as_u64().expect("available") >= 40 {
        assert_eq!(c_events.len(), 1, "set at {c_level}: {:?}", shown(&low));
        assert_eq!(data(c_events[0])["available"], 37);
    } else {
        assert!(c_events.len() <= 1, "{:?}", shown(&low));
    }
    eprintln!("LOW-C's threshold was set at {c_level}: {} event(s)", c_events.len());
    for e in &low {
        let owner = if ["LOW-A", "LOW-C"].contains(&e.subject.as_str()) { &a } else { &b };
        assert_eq!(&e.merchants, &vec![owner.clone()], "it concerns the sku's merchant only");
    }

    // The merchant's own changes: rising, staying above, crossing, staying below.
    let a_events =
        || async { stock_low_events(&app.db).await.into_iter().filter(|e| e.subject == "LOW-A").count() };
    for (on_hand, events) in [(60, 1), (45, 1), (30, 2), (20, 2)] {
        let (status, level) = set_stock(&app, &token_a, "LOW-A", json!({"on_hand": on_hand})).await;
        assert_eq!((status, level["available"].as_u64()), (200, Some(on_hand)), "{level}");
        assert_eq!(level["low_stock_threshold"], 40, "kept: {level}");
        assert_eq!(a_events().await, events, "after on_hand {on_hand}");
    }
    // Threshold 0: none; then on_hand and a new threshold in one request cross it.
    let (status, _) =
        set_stock(&app, &token_a, "LOW-A", json!({"on_hand": 50, "low_stock_threshold": 0})).await;
    assert_eq!(status, 200);
    let (status, _) = set_stock(&app, &token_a, "LOW-A", json!({"on_hand": 5})).await;
    assert_eq!(status, 200);
    assert_eq!(a_events().await, 2, "threshold 0: no event");
    let (status, _) = set_stock(&app, &token_a, "LOW-A", json!({"on_hand": 100})).await;
    assert_eq!(status, 200);
    let (status, level) =
        set_stock(&app, &token_a, "LOW-A", json!({"on_hand": 9, "low_stock_threshold": 10})).await;
    assert_eq!(status, 200, "{level}");
    assert_eq!((level["available"].as_u64(), level["low_stock_threshold"].as_u64()), (Some(9), Some(10)));
    let low = stock_low_events(&app.db).await;
    let levels: Vec<(i64, i64)> = low
        .iter()
        .filter(|e| e.subject == "LOW-A")
        .map(|e| {
            let d = data(e);
            (
                d["low_stock_threshold"].as_i64().expect("threshold"),
                d["available"].as_i64().expect("available"),
            )
        })
        .collect();
    assert_eq!(levels, vec![(40, 37), (40, 30), (10, 9)]);
    let ids: HashSet<&str> = low.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), low.len(), "distinct ids");

    // Each merchant's webhook: exactly its own events, signed, in order.
    let wanted = |m: &str| -> Vec<String> {
        low.iter().filter(|e| e.merchants == vec![m.to_string()]).map(|e| e.id.clone()).collect()
    };
    let total = low.len();
    wait_for("every stock.low delivered", Duration::from_secs(30), || receiver.seen("ok").len() >= total)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let mut delivered: HashMap<String, Vec<String>> = HashMap::new();
    for r in receiver.seen("ok") {
        let body: Value = serde_json::from_slice(&r.body).expect("json body");
        assert_eq!(body["type"], "stock.low", "{body}");
        let merchant = s(&body["data"]["merchant_id"]);
        let secret = if merchant == a { &secret_a } else { &secret_b };
        assert!(
            mercato::events::webhooks::verify(secret, &r.signature, &r.body, now, 300),
            "signed with its merchant's secret: {body}"
        );
        delivered.entry(merchant).or_default().push(s(&body["id"]));
    }
    let per_sku_order = |ids: &[String]| -> Vec<String> {
        // Deliveries keep each subject's order; across skus they may interleave.
        let mut v: Vec<String> = ids.to_vec();
        v.sort_by_key(|id| low.iter().position(|e| &e.id == id));
        v
    };
    for m in [&a, &b] {
        let got = delivered.get(m.as_str()).cloned().unwrap_or_default();
        assert_eq!(per_sku_order(&got), wanted(m), "{m}: each of its events once, no other");
        let a_skus: Vec<&String> =
            got.iter().filter(|id| low.iter().any(|e| &e.id == *id && e.subject == "LOW-A")).collect();
        let want_a: Vec<String> =
            low.iter().filter(|e| e.subject == "LOW-A" && m == &a).map(|e| e.id.clone()).collect();
        assert_eq!(a_skus.into_iter().cloned().collect::<Vec<_>>(), want_a, "LOW-A's in order");
    }
}
each_backend!(stock_low, stock_low_is_written_once_per_crossing);

/// PostgreSQL reads a sku's threshold in a checkout's commit without a lock,
/// after taking the sku's `available` row; a threshold-only change takes that
/// row too, so it is ordered with the checkouts: while one holds the row
/// (here a transaction holding it `FOR UPDATE`, as `mercato_tx` does), the
/// change waits, and it goes through once that ends. (Without the wait a
/// checkout committing after the change could miss the crossing it made.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_change_is_ordered_with_checkouts_in_flight() {
    let app = spawn_app_with(Backend::Postgres, |c| c.components.deadline_ms = 10_000).await;
    let (_, token) = app.merchant("A").await;
    app.product(&token, crate::interruption::product_with_stock("LOW-X", 500, 100)).await;
    let pool = app.db.postgres().expect("postgres").clone();
    let mut checkout = pool.begin().await.expect("begin");
    sqlx::query(
        "SELECT version FROM kv WHERE namespace = 'inventory' AND bucket = 'levels' AND key = $1 FOR UPDATE",
    )
    .bind("a/LOW-X")
    .fetch_one(&mut *checkout)
    .await
    .expect("the sku's available row");
    let change = tokio::spawn(send(
        app.request(Method::PUT, "/v1/merchant/inventory/LOW-X")
            .bearer_auth(&token)
            .json(&json!({"low_stock_threshold": 40})),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!change.is_finished(), "the threshold change did not wait for the checkout holding the row");
    checkout.rollback().await.expect("rollback");
    let (status, level) = change.await.expect("change");
    assert_eq!(status, 200, "{level}");
    assert_eq!(level["low_stock_threshold"], 40);
}

/// Retention (`events.retention_ms`): the relay deletes the events it is
/// done with — handed on, no delivery pending — once they are older than
/// the retention, with their deliveries; an event with a delivery pending
/// stays until the delivery ends (here: its webhook is removed), and one
/// still waiting for its sink (NATS down) stays.
async fn the_outbox_keeps_what_is_not_done_with(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, |c| {
        c.events.relay_interval_ms = 50;
        c.events.retention_ms = 1_000;
        c.events.webhooks.allow_loopback = true;
        // B's endpoint fails its first attempt: the retry is far off.
        c.events.webhooks.retry_base_ms = 600_000;
        c.events.webhooks.retry_max_ms = 600_000;
    })
    .await;
    let (_, token_a) = app.merchant("A").await;
    let (b_id, token_b) = app.merchant("B").await;
    let (_, token_c) = app.merchant("C").await;
    register(&app, &token_a, &receiver.url("ok", "a"), &["order.paid"]).await;
    register(&app, &token_b, &receiver.url("flaky", "b"), &["order.paid"]).await;
    let mut paid = HashMap::new();
    for (token, sku) in [(&token_a, "RT-A"), (&token_b, "RT-B"), (&token_c, "RT-C")] {
        app.product(token, crate::interruption::product_with_stock(sku, 1000, 5)).await;
        let started = Instant::now();
        let order = buy_one(&app, sku, &format!("rt-{sku}")).await;
        // Its event (subject: the order) was written: it is there, unless
        // it is already older than the retention.
        let written = outbox(&app.db).await.iter().any(|e| e.subject == s(&order["id"]));
        assert!(written || started.elapsed() >= Duration::from_secs(1), "{sku}: no event");
        paid.insert(sku, s(&order["id"]));
    }
    let b_order = paid["RT-B"].clone();
    wait_for("A's delivery and B's first attempt", Duration::from_secs(30), || {
        !receiver.seen("ok").is_empty() && !receiver.seen("flaky").is_empty()
    })
    .await;
    // A's (delivered) and C's (no webhook) go; B's, pending, stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<String> = outbox(&app.db).await.into_iter().map(|e| e.subject).collect();
        if left == std::slice::from_ref(&b_order) {
            break;
        }
        assert!(Instant::now() < deadline, "only B's pending event is kept: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Rounds go on pruning (every 50 ms, once a second here): B's stays
    // while it is pending.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let left: Vec<String> = outbox(&app.db).await.into_iter().map(|e| e.subject).collect();
    assert_eq!(left, std::slice::from_ref(&b_order));
    let deliveries = |token: String| {
        let app = &app;
        async move {
            let (status, page) =
                send(app.request(Method::GET, "/v1/merchant/webhooks/deliveries").bearer_auth(token)).await;
            assert_eq!(status, 200, "{page}");
            page["items"].as_array().expect("items").clone()
        }
    };
    assert_eq!(deliveries(token_a.clone()).await, Vec::<Value>::new(), "A's delivery went with its event");
    // Gone from the tables too, not only from what the API joins: one view
    // (B's) and one delivery (B's) are left.
    assert_eq!(rows(&app, "event_views").await, Some(1).filter(|_| backend != Backend::Memory));
    assert_eq!(rows(&app, "webhook_deliveries").await, Some(1).filter(|_| backend != Backend::Memory));
    // B has an endpoint: its pending delivery is not given up as orphaned.
    assert_eq!(app.db.deliveries_orphaned(&b_id, mercato::now_ms()).await.expect("orphaned"), 0);
    let b = deliveries(token_b.clone()).await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!((&b[0]["status"], &b[0]["attempts"]), (&json!("pending"), &json!(1)), "{b:?}");
    // Removing B's webhook ends its delivery: then its event goes too.
    let (status, _) = send(app.request(Method::DELETE, "/v1/merchant/webhooks").bearer_auth(&token_b)).await;
    assert_eq!(status, 204);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !outbox(&app.db).await.is_empty() {
        assert!(Instant::now() < deadline, "B's event is deleted once its delivery ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // NATS down: the events wait in the outbox, however old.
    let app = spawn_app_with(backend, |c| {
        c.events.relay_interval_ms = 50;
        c.events.retention_ms = 1;
        c.events.nats_url = Some(mercato::config::Secret("nats://127.0.0.1:1".into()));
    })
    .await;
    let (_, token) = app.merchant("D").await;
    app.product(&token, crate::interruption::product_with_stock("RT-D", 1000, 5)).await;
    buy_one(&app, "RT-D", "rt-d").await;
    // The relay's rounds fail and back off (100, 200, 400, 800 ms): each
    // prunes.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let left = outbox(&app.db).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].published_at.is_none(), "{left:?}");
    assert_eq!(app.db.events_prune(i64::MAX, 1_000).await.expect("prune"), 0, "not handed on: kept");
    assert_eq!(outbox(&app.db).await.len(), 1);
}

/// Rows of `table` in the app's database, counted there (`None` in memory).
async fn rows(app: &TestApp, table: &str) -> Option<i64> {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    if let Some(pool) = app.db.postgres() {
        return Some(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.expect("count"));
    }
    let file = app.dir.path().join("mercato.db");
    if !file.exists() {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&file).read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.expect("open the SQLite file");
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.expect("count");
    pool.close().await;
    Some(n)
}
each_backend!(retention, the_outbox_keeps_what_is_not_done_with);

/// On PostgreSQL a fan-out (`INSERT … SELECT … JOIN webhooks`) reads the
/// webhooks as its statement starts, so a removal committing meanwhile can
/// leave a pending delivery for a merchant with no endpoint. The worker
/// gives such deliveries up (else they stay pending, and retention keeps
/// their events, for ever). The race is made by hand: the endpoint row goes,
/// its pending delivery stays and is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_left_without_an_endpoint_are_given_up() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(Backend::Postgres, |c| {
        c.events.relay_interval_ms = 50;
        c.events.webhooks.allow_loopback = true;
        c.events.webhooks.retry_base_ms = 600_000;
        c.events.webhooks.retry_max_ms = 600_000;
    })
    .await;
    let (merchant, token) = app.merchant("E").await;
    register(&app, &token, &receiver.url("flaky", "e"), &["order.paid"]).await;
    app.product(&token, crate::interruption::product_with_stock("OR-E", 1000, 5)).await;
    buy_one(&app, "OR-E", "or-e").await;
    wait_for("the first attempt", Duration::from_secs(30), || !receiver.seen("flaky").is_empty()).await;
    let pool = app.db.postgres().expect("postgres").clone();
    sqlx::query("DELETE FROM webhooks WHERE merchant_id = $1")
        .bind(&merchant)
        .execute(&pool)
        .await
        .expect("delete the endpoint row");
    sqlx::query("UPDATE webhook_deliveries SET next_at = 0 WHERE merchant_id = $1")
        .bind(&merchant)
        .execute(&pool)
        .await
        .expect("make it due");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, page) =
            send(app.request(Method::GET, "/v1/merchant/webhooks/deliveries").bearer_auth(&token)).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{page}");
        if items[0]["status"] == "failed" {
            assert_eq!(items[0]["last_error"], "the webhook was removed", "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "still pending with no endpoint: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.seen("flaky").len(), 1, "not sent anywhere after its endpoint went");
}

/// A TCP proxy to the tests' NATS that can go dark: a network partition —
/// connections stay open, and what is sent either way is lost. When it is
/// lit again the connections that went dark are closed (their streams lost
/// bytes) and new ones are carried as before.
struct PartitionedNats {
    url: String,
    dark: tokio::sync::watch::Sender<bool>,
}

impl PartitionedNats {
    async fn start() -> PartitionedNats {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("nats://{}", listener.local_addr().expect("addr"));
        let (dark, _) = tokio::sync::watch::channel(false);
        let watch = dark.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut state = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:4222").await else { return };
                    let ((mut cr, mut cw), (mut sr, mut sw)) = (client.into_split(), server.into_split());
                    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
                    let mut was_dark = *state.borrow_and_update();
                    loop {
                        tokio::select! {
                            n = cr.read(&mut up) => match n {
                                Ok(n) if n > 0 => if !was_dark && sw.write_all(&up[..n]).await.is_err() { return },
                                _ => return,
                            },
                            n = sr.read(&mut down) => match n {
                                Ok(n) if n > 0 => if !was_dark && cw.write_all(&down[..n]).await.is_err() { return },
                                _ => return,
                            },
                            changed = state.changed() => {
                                let Ok(()) = changed else { return };
                                let dark = *state.borrow_and_update();
                                if was_dark && !dark {
                                    return;
                                }
                                was_dark = dark;
                            }
                        }
                    }
                });
            }
        });
        PartitionedNats { url, dark }
    }

    fn set_dark(&self, dark: bool) {
        self.dark.send_replace(dark);
    }
}

/// NATS cut off by a network partition and back (SPEC §6.9: nothing lost):
/// checkouts go on while it is away; the relay's publishes get no
/// acknowledgement, so their events stay in the outbox unmarked (past the
/// client's 10 s request time-out: the relay gave up on them and
/// reconnects); once NATS is back every event is in the stream exactly
/// once, in outbox order.
async fn a_nats_partition_loses_no_event(backend: Backend) {
    let (stream, prefix) = nats_names("partition");
    let nats = PartitionedNats::start().await;
    let app = spawn_app_with(backend, |c| {
        c.events.nats_url = Some(mercato::config::Secret(nats.url.clone()));
        c.events.nats_stream = stream.clone();
        c.events.nats_subject_prefix = prefix.clone();
        c.events.relay_interval_ms = 50;
    })
    .await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, crate::interruption::product_with_stock("OUT-1", 900, 100)).await;
    let all_published = |want: usize| {
        let app = &app;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let events = outbox(&app.db).await;
                if events.len() == want && events.iter().all(|e| e.published_at.is_some()) {
                    return events;
                }
                assert!(Instant::now() < deadline, "not all {want} published after 60 s: {events:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for i in 0..6 {
        buy_one(&app, "OUT-1", &format!("out-{i}")).await;
    }
    all_published(6).await;
    nats.set_dark(true);
    for i in 6..18 {
        buy_one(&app, "OUT-1", &format!("out-{i}")).await;
    }
    // Longer than the relay's wait for an acknowledgement (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let waiting = outbox(&app.db).await;
    assert_eq!(waiting.len(), 18);
    assert!(
        waiting[6..].iter().all(|e| e.published_at.is_none()),
        "marked though NATS never acknowledged: {waiting:?}"
    );
    nats.set_dark(false);
    let events = all_published(18).await;
    let messages = stream_messages(&stream).await;
    let got: Vec<&str> = messages.iter().map(|(id, _, _)| id.as_str()).collect();
    let want: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got, want, "each event once, in outbox order");
    app.stop().await;
    delete_stream(&stream).await;
}
each_backend!(nats_partition, a_nats_partition_loses_no_event);

/// `mercato events tail` against a server on PostgreSQL prints each event
/// once, as it is written — also one whose transaction drew a lower `seq`
/// and commits after a higher one was printed (PostgreSQL draws `seq` at
/// insert; the tail reads again from the first gap). `--once` prints what
/// is there and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_prints_every_event_once_also_one_that_commits_late() {
    use std::io::BufRead;
    let app = spawn_app_with(Backend::Postgres, |c| c.events.relay_interval_ms = 50).await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, crate::interruption::product_with_stock("TAIL-1", 900, 100)).await;
    let url = format!("http://{}", app.addr);
    let tail = |once: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"));
        cmd.args(["events", "tail", "--all", "--interval-ms", "50"])
            .env("MERCATO_URL", &url)
            .env("MERCATO_TOKEN", ADMIN_TOKEN)
            .stdout(std::process::Stdio::piped());
        if once {
            cmd.arg("--once");
        }
        cmd
    };
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(tail(false).spawn().expect("mercato events tail"));
    let printed: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let lines = child.0.stdout.take().expect("stdout");
    let kept = printed.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(lines).lines().map_while(Result::ok) {
            let event: Value = serde_json::from_str(&line).expect("a JSON line");
            kept.lock().expect("lock").push(s(&event["id"]));
        }
    });
    let buy = |i: usize| {
        let app = &app;
        async move {
            let order = buy_one(app, "TAIL-1", &format!("tail-{i}")).await;
            outbox(&app.db).await.into_iter().find(|e| e.subject == s(&order["id"])).expect("its event").id
        }
    };
    let printed_now = |id: &str| printed.lock().expect("lock").iter().any(|p| p == id);
    let first = buy(0).await;
    wait_for("the tail prints the first event", Duration::from_secs(30), || printed_now(&first)).await;
    // A transaction draws the next seq and holds it uncommitted…
    let pool = app.db.postgres().expect("postgres").clone();
    let mut late = pool.begin().await.expect("begin");
    let late_seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, kind, subject, created_at, data) \
         VALUES ('evt_tail_late', 'order.paid', 'ord_tail_late', $1, convert_to('{}', 'UTF8')) RETURNING seq",
    )
    .bind(chrono::Utc::now().timestamp_millis())
    .fetch_one(&mut *late)
    .await
    .expect("insert");
    // …while a checkout's event, with a higher seq, commits and is printed…
    let second = buy(1).await;
    wait_for("the tail prints the second event", Duration::from_secs(30), || printed_now(&second)).await;
    let second_seq = outbox(&app.db).await.iter().find(|e| e.id == second).expect("second").seq;
    assert!(late_seq < second_seq, "the held transaction drew the lower seq");
    // …then the held one commits: printed too.
    late.commit().await.expect("commit");
    wait_for("the tail prints the event that committed late", Duration::from_secs(30), || {
        printed_now("evt_tail_late")
    })
    .await;
    let third = buy(2).await;
    wait_for("the tail goes on", Duration::from_secs(30), || printed_now(&third)).await;
    let got = printed.lock().expect("lock").clone();
    assert_eq!(got, [first.clone(), second.clone(), "evt_tail_late".to_string(), third.clone()], "each once");
    drop(child);
    // --once: what is there, in seq order, then exit.
    let mut once = tail(true);
    let out = tokio::task::spawn_blocking(move || once.output().expect("tail --once")).await.expect("join");
    assert!(out.status.success(), "{out:?}");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| s(&serde_json::from_str::<Value>(l).expect("JSON")["id"]))
        .collect();
    assert_eq!(ids, [first, "evt_tail_late".to_string(), second, third]);
}

/// A webhook worker records the attempts that ended together in one write
/// (`deliveries_attempted`): each row gets its own outcome, and a delivery
/// that is no longer pending is left as it is.
async fn attempts_are_recorded_together_each_its_own(backend: Backend) {
    use mercato::storage::events::{Attempt, DeliveryStatus};
    let receiver = Receiver::start().await;
    let app = spawn_app_with(backend, |c| {
        c.events.relay_interval_ms = 50;
        c.events.webhooks.allow_loopback = true;
        c.events.webhooks.retry_base_ms = 600_000;
        c.events.webhooks.retry_max_ms = 600_000;
    })
    .await;
    let (_, token) = app.merchant("F").await;
    register(&app, &token, &receiver.url("flaky", "f"), &["order.paid"]).await;
    app.product(&token, crate::interruption::product_with_stock("AT-F", 1000, 5)).await;
    for i in 0..3 {
        buy_one(&app, "AT-F", &format!("at-{i}")).await;
    }
    let listed = || {
        let app = &app;
        let token = token.clone();
        async move {
            let (status, page) =
                send(app.request(Method::GET, "/v1/merchant/webhooks/deliveries").bearer_auth(token)).await;
            assert_eq!(status, 200, "{page}");
            let mut items = page["items"].as_array().expect("items").clone();
            items.sort_by_key(|d| d["id"].as_i64());
            items
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids: Vec<i64> = loop {
        let items = listed().await;
        if items.len() == 3 && items.iter().all(|d| d["attempts"] == 1) {
            break items.iter().map(|d| d["id"].as_i64().expect("id")).collect();
        }
        assert!(Instant::now() < deadline, "three first attempts: {items:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempt = |status, http_status: Option<i64>, error: Option<&str>, at| Attempt {
        status,
        url: receiver.url("flaky", "f"),
        http_status,
        error: error.map(str::to_string),
        at,
    };
    let now = mercato::now_ms();
    let next = now + 600_000;
    app.db
        .deliveries_attempted(&[
            (ids[0], attempt(DeliveryStatus::Delivered, Some(200), None, now)),
            (ids[1], attempt(DeliveryStatus::Failed, None, Some("given up here"), now)),
            (ids[2], attempt(DeliveryStatus::Pending, Some(503), Some("answered 503"), next)),
        ])
        .await
        .expect("record");
    // Delivered already: a late record of another outcome changes nothing.
    app.db
        .deliveries_attempted(&[(ids[0], attempt(DeliveryStatus::Failed, None, Some("late"), now))])
        .await
        .expect("record");
    let items = listed().await;
    let got: Vec<(Value, Value, Value, Value, Value)> = items
        .iter()
        .map(|d| {
            (d["status"].clone(), d["attempts"].clone(), d["last_status"].clone(), d["last_error"].clone(), {
                if d["status"] == "delivered" {
                    d["delivered_at"].clone()
                } else {
                    d["next_attempt_at"].clone()
                }
            })
        })
        .collect();
    assert_eq!(
        got,
        [
            (json!("delivered"), json!(2), json!(200), Value::Null, json!(now)),
            (json!("failed"), json!(2), Value::Null, json!("given up here"), Value::Null),
            (json!("pending"), json!(2), json!(503), json!("answered 503"), json!(next)),
        ]
    );
}
each_backend!(attempts_together, attempts_are_recorded_together_each_its_own);
