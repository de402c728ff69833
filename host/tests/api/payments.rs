//! The payment component against a Stripe-compatible fake provider on
//! loopback (the real provider cannot be reached from here).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "sk_test_fake";

#[derive(Default)]
struct Ledger {
    /// Idempotency-Key → the answer given for it (replayed, as Stripe does,
    /// whatever happened to the intent since).
    answers: HashMap<String, (u16, Value)>,
    keys_seen: Vec<String>,
    /// Authorizations made (intents created).
    charges: usize,
    /// Intent id → its status now (`requires_capture`, `succeeded`, `canceled`).
    intents: HashMap<String, String>,
    /// Refunds made (a key answered before is replayed, not counted).
    refunds: usize,
    /// The Idempotency-Key of every refund request, answered or not.
    refund_keys: Vec<String>,
    delay: Option<Duration>,
    /// Extra time a capture takes.
    capture_delay: Option<Duration>,
    fail: bool,
    refunds_fail: bool,
    /// Refunds are refused (400): an answer, not an outage.
    refunds_refused: bool,
    /// Refunds are made but answered 500, and the 500 is replayed for the
    /// key (as Stripe keeps a failed request's answer for a day).
    refunds_then_500: bool,
    /// Refunds made: (payment intent, amount).
    refunds_made: Vec<(String, i64)>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Ledger>>);

impl Fake {
    fn with<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        f(&mut self.0.lock().expect("ledger"))
    }
}

/// `POST /v1/payment_intents`. Like a real provider, it finishes what it was
/// asked even when the client hangs up (the work runs on its own task).
async fn intents(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    tokio::spawn(create_intent(fake, headers, form)).await.expect("fake provider task")
}

async fn create_intent(
    fake: Fake,
    headers: HeaderMap,
    form: HashMap<String, String>,
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
            let id = format!("pi_fake_{}", l.charges);
            let manual = form.get("capture_method").map(String::as_str) == Some("manual");
            let status = if manual { "requires_capture" } else { "succeeded" };
            l.intents.insert(id.clone(), status.to_string());
            (200, json!({"id": id, "status": status, "amount": form.get("amount"), "currency": form.get("currency")}))
        };
        l.answers.insert(key, (status, body.clone()));
        (StatusCode::from_u16(status).expect("status"), Json(body))
    })
}

/// `POST /v1/payment_intents/{id}/capture` and `…/cancel`.
async fn settle(
    State(fake): State<Fake>,
    Path((id, action)): Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    let delay = fake.with(|l| if action == "capture" { l.capture_delay.or(l.delay) } else { l.delay });
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    fake.with(|l| {
        let Some(status) = l.intents.get(&id).cloned() else {
            return (StatusCode::NOT_FOUND, Json(json!({"error": {"message": "no such intent"}})));
        };
        let next = match (action.as_str(), status.as_str()) {
            ("capture", "requires_capture" | "succeeded") => "succeeded",
            ("cancel", "requires_capture" | "canceled") => "canceled",
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(
                        json!({"error": {"message": format!("cannot {action} an intent that is {status}")}}),
                    ),
                );
            }
        };
        l.intents.insert(id.clone(), next.to_string());
        (StatusCode::OK, Json(json!({"id": id, "status": next, "amount": 3998, "currency": "eur"})))
    })
}

async fn refunds(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let intent = form.get("payment_intent").cloned().unwrap_or_default();
    let amount: i64 = form.get("amount").and_then(|a| a.parse().ok()).unwrap_or_default();
    fake.with(|l| {
        l.refund_keys.push(key.clone());
        if let Some((status, body)) = l.answers.get(&key) {
            return (StatusCode::from_u16(*status).expect("status"), Json(body.clone()));
        }
        if l.refunds_fail {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": {"message": "try later"}})));
        }
        if l.refunds_refused {
            // An answer the endpoint gave: replayed for the key, as Stripe does.
            let body = json!({"error": {"code": "charge_disputed", "message": "charge_disputed"}});
            l.answers.insert(key, (400, body.clone()));
            return (StatusCode::BAD_REQUEST, Json(body));
        }
        l.refunds += 1;
        l.refunds_made.push((intent, amount));
        if l.refunds_then_500 {
            let body = json!({"error": {"type": "api_error", "message": "boom"}});
            l.answers.insert(key, (500, body.clone()));
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(body));
        }
        let body = json!({"id": format!("re_fake_{}", l.refunds), "status": "succeeded"});
        l.answers.insert(key, (200, body.clone()));
        (StatusCode::OK, Json(body))
    })
}

/// `GET /v1/refunds?payment_intent=`: the payment's refunds.
async fn list_refunds(
    State(fake): State<Fake>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {SECRET}")) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "bad key"}})));
    }
    let intent = query.get("payment_intent").cloned().unwrap_or_default();
    let data: Vec<Value> = fake.with(|l| {
        l.refunds_made
            .iter()
            .enumerate()
            .filter(|(_, (pi, _))| *pi == intent)
            .map(|(i, (pi, amount))| {
                json!({"id": format!("re_fake_{}", i + 1), "payment_intent": pi, "amount": amount, "status": "succeeded"})
            })
            .collect()
    });
    (StatusCode::OK, Json(json!({"object": "list", "data": data, "has_more": false})))
}

async fn start_fake() -> (Fake, SocketAddr) {
    let fake = Fake::default();
    let app = Router::new()
        .route("/v1/payment_intents", post(intents))
        .route("/v1/payment_intents/{id}/{action}", post(settle))
        .route("/v1/refunds", post(refunds).get(list_refunds))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, addr)
}

/// A shop whose payments go to the provider at `url`, with `tweak` on top, and
/// a cart of 2 × MUG (10 in stock): (app, merchant token, cart).
async fn provider_shop(
    url: String,
    tweak: impl FnOnce(&mut mercato::config::Config),
) -> (TestApp, String, String) {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.payment.provider_url = Some(url);
        c.payment.secret_key = Some(mercato::config::Secret(SECRET.into()));
        tweak(c);
    })
    .await;
    let (_, token) = app.merchant("Shop").await;
    app.product(&token, product_body("Mug", &["MUG"], 1999, "EUR")).await;
    let cart = app.cart("EUR").await;
    app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "MUG", "quantity": 2})).await;
    (app, token, cart)
}

async fn shop_with_provider(url: String, timeout_ms: u64) -> (TestApp, String, String) {
    provider_shop(url, |c| {
        c.payment.timeout_ms = timeout_ms;
        c.components.max_instances = 1_000;
        c.checkout.sweep_interval_ms = 100;
    })
    .await
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
    // A refund the provider refuses (400) is an answer: the order is paid
    // again and keeps its stock, so the cancel can be asked again.
    let cancel = || {
        app.request(Method::POST, &format!("/v1/orders/{}/cancel", s(&order["id"]))).bearer_auth(ADMIN_TOKEN)
    };
    fake.with(|l| l.refunds_refused = true);
    assert_error(&send(cancel()).await, 409, "conflict");
    let (_, still) = app.get_order(&s(&order["id"])).await;
    assert_eq!(still["status"], "paid", "{still}");
    assert_eq!(on_hand(&app, &token).await, (6, 0), "no stock returned without a refund");
    fake.with(|l| l.refunds_refused = false);
    // A refund whose outcome is unknown (503) may have happened: the order
    // stays cancelled, not refunded, no stock back — and the cancel is driven
    // again (by recovery, after 1 s, 2 s, …) with the same idempotency key
    // until the provider answers. Then it is refunded once and restocked once.
    fake.with(|l| l.refunds_fail = true);
    assert_error(&send(cancel()).await, 502, "payment_provider_error");
    let (_, pending) = app.get_order(&s(&order["id"])).await;
    assert_eq!(
        (&pending["status"], &pending["payment"]["status"]),
        (&json!("cancelled"), &json!("succeeded"))
    );
    assert_eq!(on_hand(&app, &token).await, (6, 0), "no stock returned before the refund");
    // The refused one, the request's, and at least one more by recovery.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fake.with(|l| l.refund_keys.len()) < 3 {
        assert!(std::time::Instant::now() < deadline, "the refund was not asked again");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    fake.with(|l| l.refunds_fail = false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, now) = app.get_order(&s(&order["id"])).await;
        if now["payment"]["status"] == "refunded" {
            assert_eq!(now["status"], "cancelled");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "recovery never finished the cancel: {now}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(fake.with(|l| l.refunds), 1);
    // One idempotency key per cancel: the refused one's (whose refusal the
    // provider would replay) and the second's, asked again and again.
    let keys = fake.with(|l| l.refund_keys.clone());
    let prefix = format!("cancel:{}:", s(&order["id"]));
    assert!(keys.iter().all(|k| k.starts_with(&prefix)), "{keys:?}");
    assert_ne!(keys[0], keys[1], "a new key for a new cancel: {keys:?}");
    assert!(keys[1..].iter().all(|k| *k == keys[1]), "the same key while in doubt: {keys:?}");
    assert_eq!(on_hand(&app, &token).await, (8, 0));
    assert_error(&send(cancel()).await, 409, "conflict");
    assert_eq!(on_hand(&app, &token).await, (8, 0), "restocked once");
}

/// A refund the provider made but answered 500 — an answer Stripe replays
/// for the key for a day, so asking again would not tell — is found among
/// the payment's refunds (`GET /v1/refunds?payment_intent=`): the cancel
/// ends refunded and restocked at once, with one refund made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_answered_500_is_found_among_the_payments_refunds() {
    let (fake, addr) = start_fake().await;
    let (app, token, cart) = shop_with_provider(format!("http://{addr}"), 5_000).await;
    let (status, order) = send(checkout_req(&app, &cart, "r500", "tok_visa")).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(on_hand(&app, &token).await, (8, 0));
    fake.with(|l| l.refunds_then_500 = true);
    let id = s(&order["id"]);
    let (status, cancelled) =
        send(app.request(Method::POST, &format!("/v1/orders/{id}/cancel")).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        (&cancelled["status"], &cancelled["payment"]["status"]),
        (&json!("cancelled"), &json!("refunded")),
        "{cancelled}"
    );
    assert_eq!(fake.with(|l| l.refunds), 1, "refunded once");
    assert_eq!(fake.with(|l| l.refund_keys.len()), 1, "not asked again");
    assert_eq!(on_hand(&app, &token).await, (10, 0), "restocked");
    // Another payment's refund does not count for this one.
    let cart = app.cart("EUR").await;
    app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "MUG", "quantity": 1})).await;
    let (status, other) = send(checkout_req(&app, &cart, "r500-b", "tok_visa")).await;
    assert_eq!(status, 201, "{other}");
    fake.with(|l| {
        l.refunds_then_500 = false;
        l.refunds_fail = true;
    });
    let other_id = s(&other["id"]);
    assert_error(
        &send(app.request(Method::POST, &format!("/v1/orders/{other_id}/cancel")).bearer_auth(ADMIN_TOKEN))
            .await,
        502,
        "payment_provider_error",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_decline_failure_and_timeout_release_the_stock() {
    let (fake, addr) = start_fake().await;
    let (app, token, cart) = shop_with_provider(format!("http://{addr}"), 500).await;

    let declined = send(checkout_req(&app, &cart, "d", "tok_chargeDeclined")).await;
    assert_error(&declined, 402, "payment_declined");
    assert_eq!(declined.1["error"]["message"], "Your card was declined.");
    assert_eq!(on_hand(&app, &token).await, (10, 0));

    // A 5xx leaves the outcome unknown (the provider may have authorized):
    // the stock comes back and the order goes at once, the void follows as
    // soon as the provider answers again (recovery).
    fake.with(|l| l.fail = true);
    assert_error(&send(checkout_req(&app, &cart, "f", "tok_visa")).await, 502, "payment_provider_error");
    assert_eq!(on_hand(&app, &token).await, (10, 0));
    fake.with(|l| l.fail = false);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.db.kv_count("order").await.expect("count") != 0 {
        assert!(std::time::Instant::now() < deadline, "the checkout was never voided and forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(on_hand(&app, &token).await, (10, 0));
    // Nothing was ever taken or left held: any authorization is canceled.
    assert!(
        fake.with(|l| l.intents.values().all(|s| s == "canceled")),
        "{:?}",
        fake.with(|l| l.intents.clone())
    );
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

/// A provider that answers after the request's deadline: the host cuts the
/// call at the deadline (the shopper hears 503/504 at once), the provider
/// still authorizes. Recovery asks again with the same key: within the TTL
/// it finishes the order (captured), past it it voids the authorization.
/// Either way nothing is left held, and the retry gets that outcome.
async fn late_answer_ends_paid_or_voided(ttl_ms: u64) {
    let (fake, addr) = start_fake().await;
    let (app, token, cart) = provider_shop(format!("http://{addr}"), |c| {
        c.payment.timeout_ms = 10_000;
        c.components.deadline_ms = 1_000;
        c.checkout.reservation_ttl_ms = ttl_ms;
        c.checkout.sweep_interval_ms = 100;
    })
    .await;

    fake.with(|l| l.delay = Some(Duration::from_secs(2)));
    let started = std::time::Instant::now();
    let (status, body) = send(checkout_req(&app, &cart, "late", "tok_visa")).await;
    assert!(status == 503 || status == 504, "{status} {body}");
    assert!(
        started.elapsed() < Duration::from_millis(1_900),
        "answered at the deadline, not the provider's pace"
    );
    // The provider does authorize, after the shopper heard the error.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    fake.with(|l| l.delay = None);
    assert_eq!(fake.with(|l| l.charges), 1, "one authorization at the provider");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let settled = fake.with(|l| l.intents.values().all(|s| s == "succeeded" || s == "canceled"));
        let (_, reserved) = on_hand(&app, &token).await;
        let open = app
            .db
            .kv_list(mercato::storage::kv::Scope { namespace: "order", bucket: "open" }, None)
            .await
            .expect("open")
            .0;
        if settled && reserved == 0 && open.is_empty() {
            break fake.with(|l| l.intents.values().any(|s| s == "succeeded"));
        }
        assert!(std::time::Instant::now() < deadline, "not settled: {:?}", fake.with(|l| l.intents.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let retry = send(checkout_req(&app, &cart, "late", "tok_visa")).await;
    if ttl_ms > 5_000 {
        assert!(finished, "within the TTL recovery finishes the checkout");
        assert_eq!(on_hand(&app, &token).await, (8, 0));
        assert_eq!(retry.0, 201, "{}", retry.1);
        assert_eq!(retry.1["payment"]["id"], "pi_fake_1");
        assert_eq!(retry.1["payment"]["status"], "succeeded");
    } else {
        assert!(!finished, "past the TTL recovery voids the authorization");
        assert_eq!(fake.with(|l| l.intents.get("pi_fake_1").cloned()).as_deref(), Some("canceled"));
        assert_eq!(on_hand(&app, &token).await, (10, 0));
        assert_error(&retry, 402, "payment_declined");
        assert_eq!(app.db.kv_count("order").await.expect("count"), 0, "no order kept");
    }
    assert_eq!(fake.with(|l| l.charges), 1, "the retry made no second authorization");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_provider_within_ttl_finishes_the_order() {
    late_answer_ends_paid_or_voided(60_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_provider_past_ttl_voids_the_authorization() {
    late_answer_ends_paid_or_voided(1_500).await;
}

/// An operator cancels an order while its checkout is still capturing (a slow
/// provider): when the capture returns, the checkout finishes without
/// writing its stale copy over the cancel — so the order stays cancelled and
/// refunded, and a second cancel cannot refund and restock twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_capture_is_kept() {
    let (fake, addr) = start_fake().await;
    let (app, token, cart) =
        provider_shop(format!("http://{addr}"), |c| c.components.deadline_ms = 10_000).await;
    fake.with(|l| l.capture_delay = Some(Duration::from_millis(1_500)));
    let checkout = tokio::spawn(send(checkout_req(&app, &cart, "slow-capture", "tok_visa")));
    // Wait until the order is paid (T2), i.e. the capture is under way.
    let scope = mercato::storage::kv::Scope { namespace: "order", bucket: "orders" };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let id = loop {
        let (keys, _) = app.db.kv_list(scope, None).await.expect("orders");
        if let Some(key) = keys.first() {
            let (_, order) = app.get_order(key).await;
            if order["status"] == "paid" {
                break key.clone();
            }
        }
        assert!(std::time::Instant::now() < deadline, "the order was never paid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cancel = || app.request(Method::POST, &format!("/v1/orders/{id}/cancel")).bearer_auth(ADMIN_TOKEN);
    let (status, cancelled) = send(cancel()).await;
    assert_eq!(status, 200, "{cancelled}");
    let (status, answer) = checkout.await.expect("checkout");
    assert_eq!(status, 201, "{answer}");
    let (_, order) = app.get_order(&id).await;
    assert_eq!(
        (order["status"].as_str(), order["payment"]["status"].as_str()),
        (Some("cancelled"), Some("refunded")),
        "{order}"
    );
    assert_error(&send(cancel()).await, 409, "conflict");
    assert_eq!(on_hand(&app, &token).await, (10, 0), "restocked once");
    assert_eq!(fake.with(|l| l.refunds), 1, "refunded once");
}
