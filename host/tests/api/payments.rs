//! The payment component against a Stripe-compatible fake provider on
//! loopback (the real provider cannot be reached from here).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "sk_test_fake";

#[derive(Default)]
struct Ledger {
    /// Idempotency-Key → the answer given for it.
    answers: HashMap<String, (u16, Value)>,
    keys_seen: Vec<String>,
    charges: usize,
    refunds: usize,
    delay: Option<Duration>,
    fail: bool,
    refunds_fail: bool,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Ledger>>);

impl Fake {
    fn with<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        f(&mut self.0.lock().expect("ledger"))
    }
}

async fn intents(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let delay = fake.with(|l| l.delay);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if fake.with(|l| l.fail) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"type": "api_error", "message": "boom"}})),
        );
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {SECRET}")) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "bad key"}})));
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "no Idempotency-Key"}})));
    };
    fake.with(|l| {
        l.keys_seen.push(key.clone());
        if let Some((status, body)) = l.answers.get(&key) {
            return (StatusCode::from_u16(*status).expect("status"), Json(body.clone()));
        }
        let token = form.get("payment_method_data[card][token]").cloned().unwrap_or_default();
        let (status, body) = if token == "tok_chargeDeclined" {
            (402, json!({"error": {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}}))
        } else {
            l.charges += 1;
            (200, json!({"id": format!("pi_fake_{}", l.charges), "status": "succeeded", "amount": form.get("amount")}))
        };
        l.answers.insert(key, (status, body.clone()));
        (StatusCode::from_u16(status).expect("status"), Json(body))
    })
}

async fn refunds(State(fake): State<Fake>) -> (StatusCode, Json<Value>) {
    fake.with(|l| {
        if l.refunds_fail {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": {"message": "try later"}})));
        }
        l.refunds += 1;
        (StatusCode::OK, Json(json!({"id": "re_fake", "status": "succeeded"})))
    })
}

async fn start_fake() -> (Fake, SocketAddr) {
    let fake = Fake::default();
    let app = Router::new()
        .route("/v1/payment_intents", post(intents))
        .route("/v1/refunds", post(refunds))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, addr)
}

async fn shop_with_provider(url: String, timeout_ms: u64) -> (TestApp, String, String) {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.payment.provider_url = Some(url);
        c.payment.secret_key = Some(mercato::config::Secret(SECRET.into()));
        c.payment.timeout_ms = timeout_ms;
        c.components.max_instances = 1_000;
    })
    .await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    let cart = app.cart("EUR").await;
    app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "MUG", "quantity": 2})).await;
    (app, token, cart)
}

fn checkout_req(app: &TestApp, cart: &str, key: &str, token: &str) -> reqwest::RequestBuilder {
    app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
        .header("Idempotency-Key", key)
        .json(&json!({"email": "s@example.com", "payment": {"token": token}}))
}

async fn on_hand(app: &TestApp, token: &str) -> (u64, u64) {
    let (_, l) = send(app.request(Method::GET, "/v1/merchant/inventory/MUG").bearer_auth(token)).await;
    (l["on_hand"].as_u64().expect("on_hand"), l["reserved"].as_u64().expect("reserved"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_charges_once_per_key_and_gets_the_idempotency_key() {
    let (fake, addr) = start_fake().await;
    let (app, token, cart) = shop_with_provider(format!("http://{addr}"), 5_000).await;
    let (status, order) = send(checkout_req(&app, &cart, "key-1", "tok_visa")).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["payment"]["id"], "pi_fake_1");
    assert_eq!(order["payment"]["status"], "succeeded");
    assert_eq!(fake.with(|l| l.keys_seen.clone()), vec!["checkout:key-1".to_string()]);
    let (_, again) = send(checkout_req(&app, &cart, "key-1", "tok_visa")).await;
    assert_eq!(again["id"], order["id"]);
    // Concurrent duplicates of a new key: one charge at the provider.
    let handles: Vec<_> =
        (0..8).map(|_| tokio::spawn(send(checkout_req(&app, &cart, "key-2", "tok_visa")))).collect();
    for h in handles {
        let (status, body) = h.await.expect("task");
        assert!(status == 201 || (status == 409 && body["error"]["code"] == "conflict"), "{status} {body}");
    }
    assert_eq!(fake.with(|l| l.charges), 2, "one charge per key");
    assert_eq!(on_hand(&app, &token).await, (6, 0));
    // A refund that fails leaves the order paid, so the cancel can be retried.
    let cancel = || {
        app.request(Method::POST, &format!("/v1/orders/{}/cancel", s(&order["id"]))).bearer_auth(ADMIN_TOKEN)
    };
    fake.with(|l| l.refunds_fail = true);
    assert_error(&send(cancel()).await, 502, "payment_provider_error");
    let (_, still) = app.get(&format!("/v1/orders/{}", s(&order["id"]))).await;
    assert_eq!(still["status"], "paid");
    assert_eq!(on_hand(&app, &token).await, (6, 0), "no stock returned without a refund");
    fake.with(|l| l.refunds_fail = false);
    // Cancelling refunds through the provider.
    let (status, cancelled) = send(cancel()).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(fake.with(|l| l.refunds), 1);
    assert_eq!(on_hand(&app, &token).await, (8, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_decline_failure_and_timeout_release_the_stock() {
    let (fake, addr) = start_fake().await;
    let (app, token, cart) = shop_with_provider(format!("http://{addr}"), 500).await;

    let declined = send(checkout_req(&app, &cart, "d", "tok_chargeDeclined")).await;
    assert_error(&declined, 402, "payment_declined");
    assert_eq!(declined.1["error"]["message"], "Your card was declined.");
    assert_eq!(on_hand(&app, &token).await, (10, 0));

    fake.with(|l| l.fail = true);
    assert_error(&send(checkout_req(&app, &cart, "f", "tok_visa")).await, 502, "payment_provider_error");
    assert_eq!(on_hand(&app, &token).await, (10, 0));

    fake.with(|l| {
        l.fail = false;
        l.delay = Some(Duration::from_secs(3));
    });
    assert_error(&send(checkout_req(&app, &cart, "t", "tok_visa")).await, 504, "payment_provider_timeout");
    assert_eq!(on_hand(&app, &token).await, (10, 0));
    assert_eq!(app.db.kv_count("order").await.expect("count"), 0, "no order, no key kept");
    assert_eq!(fake.with(|l| l.charges), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_is_a_502_and_nothing_is_kept() {
    // A port with nothing listening.
    let closed =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let (app, token, cart) = shop_with_provider(format!("http://{closed}"), 2_000).await;
    assert_error(&send(checkout_req(&app, &cart, "down", "tok_visa")).await, 502, "payment_provider_error");
    assert_eq!(on_hand(&app, &token).await, (10, 0));
    assert_eq!(app.db.kv_count("order").await.expect("count"), 0);
}
