//! Merchant pricing plugins (SPEC §2, §4, §6.4): upload checks, adjustments
//! on carts and orders, budgets, the hostile-plugin zoo, isolation.

use reqwest::Method;
use serde_json::{Value, json};

use crate::each_backend;
use crate::helpers::*;

pub fn artifact(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A hand-written component of `tests/plugins/wat/` (the memory bombs).
fn wat_plugin(name: &str) -> Vec<u8> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/plugins/wat/{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A zoo plugin (`zoo-<name>.wasm`) or, for `wat:<name>`, a WAT one.
fn zoo(name: &str) -> Vec<u8> {
    match name.strip_prefix("wat:") {
        Some(wat) => wat_plugin(wat),
        None => artifact(&format!("zoo-{name}.wasm")),
    }
}

/// How long past a plugin's deadline a cart read may take: a margin for a
/// loaded test machine, far under what an unbounded wait would take (the
/// sleeping plugin asks for 30 s).
const MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// `PUT /v1/merchant/pricing-plugin` with `bytes` as `token`.
pub async fn upload(app: &TestApp, token: &str, bytes: Vec<u8>) -> (u16, Value) {
    send(
        app.request(Method::PUT, "/v1/merchant/pricing-plugin")
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await
}

pub async fn plugin_status(app: &TestApp, token: &str) -> (u16, Value) {
    send(app.request(Method::GET, "/v1/merchant/pricing-plugin").bearer_auth(token)).await
}

/// The merchant's plugin status once its newest recorded error is of the
/// plugin in force (errors are recorded off the request's path, so just
/// after a cart read the record may still be on its way).
pub async fn status_with_error(app: &TestApp, token: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, view) = plugin_status(app, token).await;
        assert_eq!(status, 200, "{view}");
        if view["recent_errors"][0]["digest"] == view["digest"] {
            return view;
        }
        assert!(std::time::Instant::now() < deadline, "no error was recorded: {view}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn set_limits(app: &TestApp, merchant: &str, body: Value) -> (u16, Value) {
    send(
        app.request(Method::PUT, &format!("/v1/admin/merchants/{merchant}/plugin-limits"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body),
    )
    .await
}

/// Two merchants: `a` (whose plugin the test varies) sells ZA-1 at 10.00;
/// `b` sells ZOO-OTHER-1 at 20.00 and runs the bundles example plugin.
struct Shop {
    app: TestApp,
    a: (String, String),
    b: (String, String),
    b_digest: String,
}

async fn shop(backend: Backend) -> Shop {
    shop_with(backend, |_| {}).await
}

async fn shop_with(backend: Backend, tweak: impl FnOnce(&mut mercato::config::Config)) -> Shop {
    let app = spawn_app_with(backend, tweak).await;
    let a = app.merchant("Plugin A").await;
    let b = app.merchant("Plugin B").await;
    app.product(&a.1, product_body("A thing", &["ZA-1"], 1000, "EUR")).await;
    app.product(&b.1, product_body("B thing", &["ZOO-OTHER-1"], 2000, "EUR")).await;
    let (status, body) = upload(&app, &b.1, artifact("plugin-bundles.wasm")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    let b_digest = s(&body["digest"]);
    assert!(b_digest.starts_with("sha256:") && b_digest.len() == 71, "{b_digest}");
    Shop { app, a, b, b_digest }
}

/// A cart with 3 × ZA-1 (30.00, merchant a) and 3 × ZOO-OTHER-1 (60.00, b).
async fn mixed_cart(app: &TestApp) -> String {
    let cart = app.cart("EUR").await;
    for sku in ["ZA-1", "ZOO-OTHER-1"] {
        let (status, body) =
            app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": 3})).await;
        assert_eq!(status, 200, "{body}");
    }
    cart
}

pub fn line<'a>(cart: &'a Value, sku: &str) -> &'a Value {
    cart["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["sku"] == sku)
        .unwrap_or_else(|| panic!("{sku} in {cart}"))
}

/// Merchant b's bundles plugin on its line: buy 3 pay 2 → 20.00 off (the
/// rest, 40.00, is under the 100.00 threshold). Merchant a's line is as given.
#[track_caller]
fn assert_priced(cart: &Value, b_digest: &str, a_discount: i64) {
    let b = line(cart, "ZOO-OTHER-1");
    assert_eq!(b["adjustments"].as_array().unwrap().len(), 1, "{cart}");
    assert_eq!(b["adjustments"][0]["amount"], json!({"amount": -2000, "currency": "EUR"}), "{cart}");
    assert_eq!(b["adjustments"][0]["label"], "Buy 3, pay for 2");
    assert_eq!(b["adjustments"][0]["source"], format!("plugin:{b_digest}"));
    assert_eq!(b["line_total"]["amount"], 4000);
    let a = line(cart, "ZA-1");
    let a_adjusted: i64 =
        a["adjustments"].as_array().unwrap().iter().map(|x| x["amount"]["amount"].as_i64().unwrap()).sum();
    assert_eq!(a_adjusted, -a_discount, "{cart}");
    assert_eq!(a["line_total"]["amount"], 3000 - a_discount);
    assert_eq!(cart["subtotal"]["amount"], 9000);
    assert_eq!(cart["discount_total"]["amount"], 2000 + a_discount);
    assert_eq!(cart["total"]["amount"], 7000 - a_discount);
}

async fn a_plugin_discounts_carts_and_orders(backend: Backend) {
    let shop = shop(backend).await;
    let app = &shop.app;
    let cart = mixed_cart(app).await;
    let (status, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(status, 200, "{priced}");
    assert_priced(&priced, &shop.b_digest, 0);

    // Merchant a uploads the same example: its line gets its own discount.
    let (status, body) = upload(app, &shop.a.1, artifact("plugin-bundles.wasm")).await;
    assert_eq!(status, 200, "{body}");
    let (_, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_priced(&priced, &shop.b_digest, 1000);

    // The order records the adjustments and which plugins made them.
    let (status, order) = send(
        app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
            .header("idempotency-key", "plugin-order-1")
            .json(&json!({"email": "p@example.com", "payment": {"token": "tok_visa"}})),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["total"]["amount"], 6000, "{order}");
    assert_eq!(order["discount_total"]["amount"], 3000);
    let provenance = order["provenance"].as_array().unwrap();
    for m in [&shop.a.0, &shop.b.0] {
        assert!(
            provenance
                .iter()
                .any(|p| p["name"] == format!("pricing-plugin:{m}") && p["digest"] == shop.b_digest),
            "{order}"
        );
    }

    // Merchant isolation: each sees only their own plugin; deleting one's
    // leaves the other's in force.
    let (_, a_view) = plugin_status(app, &shop.a.1).await;
    assert_eq!(a_view["digest"], shop.b_digest);
    assert_eq!(a_view["limits"]["binary_bytes"], 256 * 1024);
    let (status, _) =
        send(app.request(Method::DELETE, "/v1/merchant/pricing-plugin").bearer_auth(&shop.a.1)).await;
    assert_eq!(status, 204);
    assert_error(&plugin_status(app, &shop.a.1).await, 404, "not_found");
    let again = send(app.request(Method::DELETE, "/v1/merchant/pricing-plugin").bearer_auth(&shop.a.1)).await;
    assert_error(&again, 404, "not_found");
    let (status, b_view) = plugin_status(app, &shop.b.1).await;
    assert_eq!(status, 200, "{b_view}");
    let cart2 = mixed_cart(app).await;
    let (_, priced) = app.get(&format!("/v1/carts/{cart2}")).await;
    assert_priced(&priced, &shop.b_digest, 0);
}
each_backend!(plugin_discounts_carts_and_orders, a_plugin_discounts_carts_and_orders);

/// Uploads the host must refuse, each with a message naming what is wrong;
/// nothing is stored and the merchant's current plugin stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_with_the_reason() {
    let shop = shop(Backend::Sqlite).await;
    let app = &shop.app;
    let good = artifact("plugin-bundles.wasm");
    // The bundles example plus a 300 KiB custom section: over the default 256 KiB.
    let mut oversized = good.clone();
    let payload = vec![0u8; 300 * 1024];
    let name = b"padding";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    oversized.push(0);
    let mut len = section.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            oversized.push(byte);
            break;
        }
        oversized.push(byte | 0x80);
    }
    oversized.extend_from_slice(&section);
    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let core_module = wat::parse_str(r#"(module (func (export "price")))"#).unwrap();
    let wants_http = wat::parse_str(
        r#"(component
             (import "wasi:http/outgoing-handler@0.2.0" (instance))
             (import "mercato:pricing/types@0.1.0" (instance)))"#,
    )
    .unwrap();
    // Imports only what is allowed, but exports nothing.
    let wrong_world =
        wat::parse_str(r#"(component (import "mercato:pricing/types@0.1.0" (instance)))"#).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("oversized", oversized, "over this merchant's limit of 262144 bytes"),
        ("random bytes", random, "not WebAssembly"),
        ("core module", core_module, "core WebAssembly module, not a component"),
        ("imports wasi:http", wants_http, "imports wasi:http/outgoing-handler@0.2.0"),
        (
            "no pricing export",
            wrong_world,
            "does not export mercato:pricing/pricing@0.2.0 (or mercato:pricing/pricing@0.1.0)",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), "not a valid component"),
    ];
    for (what, bytes, reason) in cases {
        let got = upload(app, &shop.a.1, bytes).await;
        assert_error(&got, 422, "invalid_plugin");
        let message = got.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message:?} should say {reason:?}");
        assert_error(&plugin_status(app, &shop.a.1).await, 404, "not_found");
    }
    // The wrong content type, no token, another merchant's token: nothing changes.
    let wrong_type = send(
        app.request(Method::PUT, "/v1/merchant/pricing-plugin")
            .bearer_auth(&shop.a.1)
            .header("content-type", "application/json")
            .body(good.clone()),
    )
    .await;
    assert_error(&wrong_type, 415, "unsupported_media_type");
    let anonymous = send(
        app.request(Method::PUT, "/v1/merchant/pricing-plugin")
            .header("content-type", "application/wasm")
            .body(good),
    )
    .await;
    assert_error(&anonymous, 401, "unauthorized");
    assert_error(&upload(app, &shop.a.1, Vec::new()).await, 422, "invalid_plugin");
    // b's plugin is untouched by all of it.
    let (status, b_view) = plugin_status(app, &shop.b.1).await;
    assert_eq!((status, &b_view["digest"]), (200, &json!(shop.b_digest)));
}

/// The zoo: each plugin uploads fine (it is a well-formed component) and
/// misbehaves when it runs. Its adjustments are dropped, the error is shown
/// to its merchant, the other merchant's discount and the totals are right,
/// and the host keeps answering while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_stopped_and_their_errors_shown() {
    let shop = shop(Backend::Sqlite).await;
    let app = &shop.app;
    let cases: &[(&str, &str, &str)] = &[
        ("loop", "instructions", "instructions"),
        ("alloc", "memory", "over its limit of 10485760 bytes"),
        ("recursion", "stack", "stack"),
        ("panic", "trap", ""),
        ("huge-output", "output_too_large", "over the output limit"),
        ("wrong-currency", "invalid_output", "the cart is in \"EUR\""),
        ("over-discount", "invalid_output", "below zero"),
        ("foreign-sku", "invalid_output", "not one of this merchant's lines"),
        // Waits in the host: the plugin's clock is virtual, so they hold no
        // host time; asking to wait past the deadline ends the run there.
        ("sleep", "deadline", "waited 30000 ms"),
        ("poll", "deadline", "past its deadline of 100 ms"),
        // No network: both attempts fail with access-denied, noted in the log.
        ("sockets", "plugin_error", "no network"),
        // Writes without end: the log stays capped, the budget stops it.
        ("stdout-flood", "instructions", "instructions"),
        // One budget over all memories and tables (each alone is under it).
        ("wat:memories", "memory", "memories and tables to 12648448 bytes, over its limit of 10485760"),
        ("wat:table", "memory", "memories and tables to 12194304 bytes, over its limit of 10485760"),
        ("wat:memory-count", "memory", "more than 32 memories"),
        // 48 MiB of random bytes in one call: refused before the host makes them.
        ("wat:random", "trap", "requested len 50331648 exceeds limit 65536"),
    ];
    for (feature, kind, says) in cases {
        // The instruction budget, not the clock, must stop these two: on a
        // loaded machine 11 M instructions (and the flood's host calls) may
        // take longer than the default 100 ms deadline, so they get 1 s.
        let deadline_ms: u64 = if matches!(*feature, "loop" | "stdout-flood") { 1_000 } else { 100 };
        let (status, limits) = set_limits(app, &shop.a.0, json!({ "deadline_ms": deadline_ms })).await;
        assert_eq!(status, 200, "{limits}");
        let (status, body) = upload(app, &shop.a.1, zoo(feature)).await;
        assert_eq!(status, 200, "{feature}: {body}");
        let cart = mixed_cart(app).await;
        let path = format!("/v1/carts/{cart}");
        // A request for everyone else, while the plugin runs.
        let started = std::time::Instant::now();
        let (priced, health) = tokio::join!(app.get(&path), app.get("/healthz"));
        let took = started.elapsed();
        eprintln!("zoo {feature}: the cart answered in {took:?}");
        let bound = std::time::Duration::from_millis(deadline_ms) + MARGIN;
        assert!(took < bound, "{feature}: the cart took {took:?}");
        assert_eq!(health.0, 200, "{feature}: /healthz {}", health.1);
        assert_eq!(priced.0, 200, "{feature}: {}", priced.1);
        assert_priced(&priced.1, &shop.b_digest, 0);
        let view = status_with_error(app, &shop.a.1).await;
        assert_eq!(view["status"], "failing", "{feature}: {view}");
        let error = &view["recent_errors"][0];
        assert_eq!(error["kind"], *kind, "{feature}: {view}");
        assert_eq!(error["digest"], body["digest"]);
        assert!(error["message"].as_str().unwrap().contains(says), "{feature}: {error}");
        let log = error["log"].as_str().unwrap();
        assert!(log.len() <= 4 * 1024 + 200, "{feature}: a log of {} bytes", log.len());
        match *feature {
            "panic" => {
                // stdout and stderr are captured into the run log, capped.
                assert!(log.contains("zoo: about to panic on 1 lines"), "{log}");
                assert!(log.ends_with("[log truncated]"), "{} bytes", log.len());
            }
            "stdout-flood" => assert!(log.ends_with("[log truncated]"), "{} bytes", log.len()),
            "sockets" => {
                // What the plugin saw, and the host's note of each attempt.
                assert!(log.contains("[mercato] denied: the plugin tried to look up a host name"), "{log}");
                assert!(log.contains("[mercato] denied: the plugin tried to use the network"), "{log}");
                assert!(log.contains("connect Err(") && log.contains("ermission denied"), "{log}");
            }
            _ => {}
        }
    }
    // b never saw an error.
    let (_, b_view) = plugin_status(app, &shop.b.1).await;
    assert_eq!(b_view["status"], "active", "{b_view}");
    assert_eq!(b_view["recent_errors"], json!([]));
}

/// A wait within the deadline is virtual: it takes no host time, the plugin's
/// clock says it slept, and the run is the same every time (a discount of
/// exactly the milliseconds it measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_within_the_deadline_are_virtual_and_deterministic() {
    let shop = shop(Backend::Sqlite).await;
    let app = &shop.app;
    let (status, body) = upload(app, &shop.a.1, zoo("nap")).await;
    assert_eq!(status, 200, "{body}");
    let cart = mixed_cart(app).await;
    let mut logs = Vec::new();
    for _ in 0..3 {
        let (status, priced) = app.get(&format!("/v1/carts/{cart}")).await;
        assert_eq!(status, 200, "{priced}");
        assert_priced(&priced, &shop.b_digest, 20);
        let (_, view) = plugin_status(app, &shop.a.1).await;
        let last = &view["last_run"];
        assert_eq!(last["outcome"], "ok", "{view}");
        logs.push(last["log"].as_str().unwrap().to_string());
    }
    // The clock moved by the 20 ms asked for (and a tick per reading), to
    // the microsecond, on every run: a real sleep would vary.
    let slept: u64 = logs[0]
        .strip_prefix("nap: slept ")
        .and_then(|l| l.split(' ').next())
        .and_then(|us| us.parse().ok())
        .unwrap_or_else(|| panic!("{logs:?}"));
    assert!((20_000..20_100).contains(&slept), "{logs:?}");
    assert!(logs.iter().all(|l| *l == logs[0]), "{logs:?}");
}

/// An upload is read against the merchant's own size limit while it
/// streams: a declared length over it is refused before the body is read,
/// and a body without end (chunked, never finished) is refused at the first
/// byte too many — the server does not wait for the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_while_they_stream_past_the_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let shop = shop(Backend::Sqlite).await;
    let app = &shop.app;
    let (status, _) = set_limits(app, &shop.a.0, json!({"binary_bytes": 4096})).await;
    assert_eq!(status, 200);

    // Content-Length says 50 MiB: refused without reading it.
    let head = |extra: &str| {
        format!(
            "PUT /v1/merchant/pricing-plugin HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/wasm\r\n{extra}\r\n",
            app.addr, shop.a.1
        )
    };
    for declared in [true, false] {
        let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let extra = if declared { "Content-Length: 52428800\r\n" } else { "Transfer-Encoding: chunked\r\n" };
        socket.write_all(head(extra).as_bytes()).await.unwrap();
        let (mut read, mut write) = socket.into_split();
        // Keep sending (chunks of 1 KiB, or raw bytes) until the server answers.
        let writer = tokio::spawn(async move {
            let chunk = vec![0u8; 1024];
            let framed = [b"400\r\n".as_slice(), &chunk, b"\r\n"].concat();
            loop {
                let piece = if declared { &chunk } else { &framed };
                if write.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), read.read(&mut answer))
            .await
            .expect("the server answers before the body ends")
            .unwrap();
        writer.abort();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 422"), "declared {declared}: {text}");
        assert!(text.contains("invalid_plugin") && text.contains("limit of 4096 bytes"), "{text}");
        if declared {
            assert!(text.contains("52428800 bytes"), "{text}");
        }
    }
    // Nothing was stored.
    assert_error(&plugin_status(app, &shop.a.1).await, 404, "not_found");
}

/// At capacity a cart prices without the plugins that could not run: with
/// one run slot held by a plugin spinning to its 1.5 s deadline, another
/// merchant's plugin waits for the slot no longer than its own 100 ms, the
/// cart answers without its discount, and its merchant sees `overloaded`.
/// Once the slot is free the discount is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_find_no_run_slot_are_skipped_as_overloaded() {
    let shop = shop_with(Backend::Sqlite, |c| c.components.plugin_runs = 1).await;
    let app = &shop.app;
    let (status, _) =
        set_limits(app, &shop.a.0, json!({"instructions": 10_000_000_000u64, "deadline_ms": 1500})).await;
    assert_eq!(status, 200);
    upload(app, &shop.a.1, artifact("zoo-loop.wasm")).await;
    let a_cart = app.cart("EUR").await;
    app.post(&format!("/v1/carts/{a_cart}/items"), json!({"sku": "ZA-1", "quantity": 1})).await;
    let b_cart = app.cart("EUR").await;
    let (_, priced) =
        app.post(&format!("/v1/carts/{b_cart}/items"), json!({"sku": "ZOO-OTHER-1", "quantity": 3})).await;
    assert_eq!(priced["discount_total"]["amount"], 2000, "{priced}");

    let spinning = {
        let (client, url) = (app.client.clone(), app.url(&format!("/v1/carts/{a_cart}")));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    // Until a's run holds the one slot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.runtime.plugins().runs_in_progress() == 0 {
        assert!(std::time::Instant::now() < deadline, "a's plugin never started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let started = std::time::Instant::now();
    let (status, priced) = app.get(&format!("/v1/carts/{b_cart}")).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{priced}");
    assert_eq!(priced["discount_total"]["amount"], 0, "b's plugin could not run: {priced}");
    assert_eq!(priced["total"]["amount"], 6000, "{priced}");
    assert!(took < std::time::Duration::from_millis(100) + MARGIN, "b's cart took {took:?}");
    assert!(app.runtime.plugins().runs_in_progress() == 1, "a's run still holds the slot");
    let view = status_with_error(app, &shop.b.1).await;
    assert_eq!(view["recent_errors"][0]["kind"], "overloaded", "{view}");
    assert!(view["recent_errors"][0]["message"].as_str().unwrap().contains("1 plugin run slots"), "{view}");

    assert_eq!(spinning.await.unwrap(), 200);
    let (_, priced) = app.get(&format!("/v1/carts/{b_cart}")).await;
    assert_eq!(priced["discount_total"]["amount"], 2000, "the slot is free again: {priced}");
}

/// An operator can raise a merchant's budgets: with a huge instruction
/// budget the looping plugin is stopped by its wall-clock deadline instead.
/// Limits are validated and checked against the ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_plugin_limits_per_merchant() {
    let shop = shop(Backend::Sqlite).await;
    let app = &shop.app;
    let (status, body) =
        set_limits(app, &shop.a.0, json!({"instructions": 10_000_000_000u64, "deadline_ms": 50})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"]["instructions"], 10_000_000_000u64);
    assert_eq!(body["limits"]["memory_bytes"], 10 * 1024 * 1024, "unset fields keep their value");
    upload(app, &shop.a.1, artifact("zoo-loop.wasm")).await;
    let cart = mixed_cart(app).await;
    let (_, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_priced(&priced, &shop.b_digest, 0);
    let view = status_with_error(app, &shop.a.1).await;
    assert_eq!(view["recent_errors"][0]["kind"], "deadline", "{view}");
    assert_eq!(view["limits"]["deadline_ms"], 50);

    // More memory than the default lets the allocating plugin run longer, but
    // it is still stopped at the new cap. (A deadline long enough that a
    // loaded machine reaches the cap first: the 50 ms above is for the loop.)
    set_limits(app, &shop.a.0, json!({"memory_bytes": 32 * 1024 * 1024, "deadline_ms": 1500})).await;
    upload(app, &shop.a.1, artifact("zoo-alloc.wasm")).await;
    app.get(&format!("/v1/carts/{cart}")).await;
    let view = status_with_error(app, &shop.a.1).await;
    assert!(view["recent_errors"][0]["message"].as_str().unwrap().contains("33554432"), "{view}");

    // A smaller binary limit refuses the example.
    set_limits(app, &shop.b.0, json!({"binary_bytes": 1024})).await;
    assert_error(&upload(app, &shop.b.1, artifact("plugin-bundles.wasm")).await, 422, "invalid_plugin");

    // Bad limits: zero, over the ceiling, unknown field, no admin token, unknown merchant.
    assert_error(&set_limits(app, &shop.a.0, json!({"deadline_ms": 0})).await, 422, "invalid_request");
    assert_error(
        &set_limits(app, &shop.a.0, json!({"memory_bytes": 1u64 << 40})).await,
        422,
        "invalid_request",
    );
    assert_error(&set_limits(app, &shop.a.0, json!({"fuel": 1})).await, 422, "invalid_request");
    assert_error(&set_limits(app, "m_nope", json!({"deadline_ms": 10})).await, 404, "not_found");
    let as_merchant = send(
        app.request(Method::PUT, &format!("/v1/admin/merchants/{}/plugin-limits", shop.a.0))
            .bearer_auth(&shop.a.1)
            .json(&json!({"deadline_ms": 10})),
    )
    .await;
    assert_eq!(as_merchant.0, 401, "{}", as_merchant.1);
}

/// A plugin is stored by digest in the database: a restarted host (with an
/// empty in-memory cache) still applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_survive_a_restart() {
    let shop = shop(Backend::Sqlite).await;
    let cart = mixed_cart(&shop.app).await;
    let (dir, pg, config) = shop.app.stop().await;
    let app = start(config, dir, pg).await;
    let (status, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(status, 200, "{priced}");
    assert_priced(&priced, &shop.b_digest, 0);
}

/// Build the JavaScript example with componentize-js from npm (as a merchant
/// would: `npm ci && node build.mjs`); returns the component.
fn build_js_example() -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/js-volume");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-volume.wasm");
    let run = |program: &str, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .current_dir(&dir)
            .status()
            .unwrap_or_else(|e| panic!("run {program}: {e} (Node.js and npm are needed)"));
        assert!(status.success(), "{program} {args:?} failed");
    };
    if !dir.join("node_modules/@bytecodealliance/componentize-js").exists() {
        run("npm", &["ci", "--no-audit", "--no-fund"]);
    }
    run("node", &["build.mjs", out.to_str().unwrap()]);
    std::fs::read(&out).unwrap()
}

/// The JavaScript example: a second language, megabytes of runtime. It is
/// refused under the default budgets (256 KiB) and works once the operator
/// raises that merchant's limits to what the README lists for JavaScript.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_plugin_runs_with_raised_limits() {
    let wasm = tokio::task::spawn_blocking(build_js_example).await.unwrap();
    let shop = shop(Backend::Sqlite).await;
    let app = &shop.app;
    let refused = upload(app, &shop.a.1, wasm.clone()).await;
    assert_error(&refused, 422, "invalid_plugin");
    let (status, body) =
        set_limits(app, &shop.a.0, json!({"binary_bytes": 16 << 20, "memory_bytes": 32 << 20})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = upload(app, &shop.a.1, wasm).await;
    assert_eq!(status, 200, "{body}");
    let digest = s(&body["digest"]);

    // 10 × ZA-1 (10.00 each) → 15 % off = 15.00; 3 × b's line keeps b's discount.
    let cart = mixed_cart(app).await;
    let (status, priced) = app.put(&format!("/v1/carts/{cart}/items/ZA-1"), json!({"quantity": 10})).await;
    assert_eq!(status, 200, "{priced}");
    let a = line(&priced, "ZA-1");
    assert_eq!(a["adjustments"].as_array().unwrap().len(), 1, "{priced}");
    assert_eq!(a["adjustments"][0]["label"], "15% off 10+");
    assert_eq!(a["adjustments"][0]["amount"], json!({"amount": -1500, "currency": "EUR"}));
    assert_eq!(a["adjustments"][0]["source"], format!("plugin:{digest}"));
    assert_eq!(priced["total"]["amount"], 10_000 - 1500 + 4000, "{priced}");
    let (_, view) = plugin_status(app, &shop.a.1).await;
    assert_eq!(view["status"], "active", "{view}");
    let last = &view["last_run"];
    assert_eq!(last["outcome"], "ok", "{view}");
    assert!(last["log"].as_str().unwrap().contains("volume: 1 discounts on 1 lines"), "{view}");
    eprintln!(
        "javascript plugin: {} bytes, one run used {} instructions, {} bytes of memory, {} µs",
        view["size"], last["instructions"], last["memory_bytes"], last["duration_us"]
    );
}

/// Build the Python example with componentize-py (from PyPI, pinned in
/// scripts/ci/setup.sh), as a merchant would: `./build.sh OUT`.
fn build_python_example() -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/py-multibuy");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-multibuy.wasm");
    let status = std::process::Command::new(dir.join("build.sh")).arg(&out).status().unwrap_or_else(|e| {
        panic!("run build.sh: {e} (componentize-py==0.25.1 is needed: scripts/ci/setup.sh)")
    });
    assert!(status.success(), "building the Python example failed (is componentize-py installed?)");
    // Its unit tests, natively with CPython, as the README tells a merchant.
    let bindings = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-multibuy-bindings");
    // componentize-py refuses to write bindings over existing ones.
    let _ = std::fs::remove_dir_all(&bindings);
    let run = |program: &str, args: &[&str], python_path: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).current_dir(&dir).env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some(p) = python_path {
            cmd.env("PYTHONPATH", p);
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(status.success(), "{program} {args:?} failed");
    };
    run(
        "componentize-py",
        &["-d", "../../../wit/pricing", "-w", "plugin", "bindings", bindings.to_str().unwrap()],
        None,
    );
    run("python3", &["-m", "unittest", "-v", "test_app"], Some(&bindings));
    std::fs::read(&out).unwrap()
}

/// The Python example, a default `componentize-py` build (it imports
/// wasi:sockets and wasi:filesystem, linked inert): refused under the
/// default budgets, accepted with the limits the README lists for Python;
/// its discount is on the cart and on the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugin_discounts_carts_and_orders() {
    let wasm = tokio::task::spawn_blocking(build_python_example).await.unwrap();
    let shop = shop(Backend::Sqlite).await;
    let app = &shop.app;
    app.product(&shop.a.1, product_body("More A", &["ZA-2", "ZA-3"], 500, "EUR")).await;
    assert_error(&upload(app, &shop.a.1, wasm.clone()).await, 422, "invalid_plugin");
    let limits = json!({"binary_bytes": 24 << 20, "memory_bytes": 32 << 20});
    let (status, body) = set_limits(app, &shop.a.0, limits).await;
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    let (status, body) = upload(app, &shop.a.1, wasm.clone()).await;
    assert_eq!(status, 200, "{body}");
    let upload_took = started.elapsed();
    let digest = s(&body["digest"]);

    // 3 different lines of a: 10 % off each (3 × 10.00, 1 × 5.00, 2 × 5.00).
    let cart = mixed_cart(app).await;
    for (sku, quantity) in [("ZA-2", 1), ("ZA-3", 2)] {
        let (status, body) =
            app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": quantity})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(status, 200, "{priced}");
    for (sku, off) in [("ZA-1", 300), ("ZA-2", 50), ("ZA-3", 100)] {
        let l = line(&priced, sku);
        assert_eq!(l["adjustments"].as_array().unwrap().len(), 1, "{sku}: {priced}");
        assert_eq!(l["adjustments"][0]["label"], "10% off 3+ items");
        assert_eq!(l["adjustments"][0]["amount"], json!({"amount": -off, "currency": "EUR"}));
        assert_eq!(l["adjustments"][0]["source"], format!("plugin:{digest}"));
    }
    // b's bundles plugin still gives its 20.00 on b's line.
    assert_eq!(priced["discount_total"]["amount"], 450 + 2000, "{priced}");
    assert_eq!(priced["total"]["amount"], 9000 + 1500 - 450 - 2000, "{priced}");
    let (_, view) = plugin_status(app, &shop.a.1).await;
    let last = view["last_run"].clone();
    assert_eq!(last["outcome"], "ok", "{view}");
    assert!(last["log"].as_str().unwrap().contains("multibuy: 3 discounts on 3 lines"), "{view}");

    let (status, order) = send(
        app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
            .header("idempotency-key", "python-order-1")
            .json(&json!({"email": "py@example.com", "payment": {"token": "tok_visa"}})),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["discount_total"]["amount"], 450 + 2000, "{order}");
    assert_eq!(order["total"]["amount"], 8050, "{order}");
    let provenance = order["provenance"].as_array().unwrap();
    assert!(
        provenance
            .iter()
            .any(|p| p["name"] == format!("pricing-plugin:{}", shop.a.0) && p["digest"] == digest),
        "{order}"
    );
    eprintln!(
        "python plugin: {} bytes, upload {upload_took:?}; one run: {} instructions, {} bytes of memory, {} µs",
        wasm.len(),
        last["instructions"],
        last["memory_bytes"],
        last["duration_us"]
    );
}

/// `mercato plugin upload|status|remove`: the command line as a client of
/// the API (SPEC §5), including a refused upload's reason and exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_uploads_shows_and_removes_a_plugin() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token) = app.merchant("CLI").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("bundles.wasm");
    std::fs::write(&good, artifact("plugin-bundles.wasm")).unwrap();
    let bad = dir.path().join("core.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0").unwrap();
    let url = app.url("");
    let cli = move |args: Vec<String>, token: String| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
                .args(&args)
                .env("MERCATO_URL", url)
                .env("MERCATO_TOKEN", token)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        })
    };
    let arg = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (ok, stdout, stderr) =
        cli(arg(&["plugin", "upload", good.to_str().unwrap()]), token.clone()).await.unwrap();
    assert!(ok, "{stderr}");
    let uploaded: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(uploaded["status"], "active");
    let (ok, stdout, _) = cli(arg(&["plugin", "status"]), token.clone()).await.unwrap();
    assert!(ok && stdout.contains(uploaded["digest"].as_str().unwrap()), "{stdout}");
    let (ok, _, stderr) =
        cli(arg(&["plugin", "upload", bad.to_str().unwrap()]), token.clone()).await.unwrap();
    assert!(
        !ok && stderr.contains("core WebAssembly module") && stderr.contains("invalid_plugin"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(arg(&["plugin", "status"]), "mt.nobody.secret".into()).await.unwrap();
    assert!(!ok && stderr.contains("401"), "{stderr}");
    let (ok, _, stderr) = cli(arg(&["plugin", "remove"]), token.clone()).await.unwrap();
    assert!(ok, "{stderr}");
    assert_error(&plugin_status(&app, &token).await, 404, "not_found");
}
