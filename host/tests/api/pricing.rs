//! Pricing plugins a merchant can trust (SPEC §4): `mercato:pricing@0.1.0`
//! and `@0.2.0` side by side, discount codes on carts and orders, the
//! merchant's configuration, recorded runs and their exact replay.

use reqwest::Method;
use serde_json::{Value, json};

use crate::each_backend;
use crate::helpers::*;
use crate::plugins::{artifact, line, upload};

async fn as_merchant(app: &TestApp, token: &str, method: Method, path: &str) -> (u16, Value) {
    send(app.request(method, path).bearer_auth(token)).await
}

async fn set_config(app: &TestApp, token: &str, body: &str) -> (u16, Value) {
    send(
        app.request(Method::PUT, "/v1/merchant/pricing-plugin/config")
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

fn discount_of(cart: &Value, sku: &str) -> i64 {
    -line(cart, sku)["adjustments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["amount"]["amount"].as_i64().unwrap())
        .sum::<i64>()
}

fn code<'a>(cart: &'a Value, code: &str) -> &'a Value {
    cart["discount_codes"]
        .as_array()
        .unwrap_or_else(|| panic!("no discount_codes in {cart}"))
        .iter()
        .find(|c| c["code"] == code)
        .unwrap_or_else(|| panic!("{code} in {cart}"))
}

/// Merchant a runs a plugin built for 0.1.0 (5 % off every line), merchant
/// b the 0.2.0 bundles example with codes from its configuration. Codes are
/// applied, refused (with the plugin's reason), not applicable and removed;
/// configuration changes are seen by the next run; the order keeps the
/// codes, and each merchant sees only the codes it honoured.
async fn codes_configuration_and_both_worlds(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.merchant("Legacy A").await;
    let b = app.merchant("Codes B").await;
    app.product(&a.1, product_body("A thing", &["ZA-1"], 1000, "EUR")).await;
    app.product(&b.1, product_body("B thing", &["ZB-1"], 2000, "EUR")).await;
    assert_eq!(upload(&app, &a.1, artifact("plugin-legacy.wasm")).await.0, 200);
    let (status, uploaded) = upload(&app, &b.1, artifact("plugin-bundles.wasm")).await;
    assert_eq!(status, 200, "{uploaded}");
    let b_digest = s(&uploaded["digest"]);
    let (_, a_view) = as_merchant(&app, &a.1, Method::GET, "/v1/merchant/pricing-plugin").await;
    assert_eq!(a_view["world"], "mercato:pricing@0.1.0", "{a_view}");
    let (_, b_view) = as_merchant(&app, &b.1, Method::GET, "/v1/merchant/pricing-plugin").await;
    assert_eq!(b_view["world"], "mercato:pricing@0.2.0", "{b_view}");

    let (status, set) = set_config(&app, &b.1, r#"{"codes": {"SPRING10": 10}, "min_spend": 2000}"#).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["config"]["codes"]["SPRING10"], 10);
    let cart = app.cart("EUR").await;
    for (sku, quantity) in [("ZA-1", 2), ("ZB-1", 1)] {
        assert_eq!(
            app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": quantity})).await.0,
            200
        );
    }
    let (_, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(discount_of(&priced, "ZA-1"), 100, "the 0.1.0 plugin still prices: {priced}");
    assert_eq!(discount_of(&priced, "ZB-1"), 0, "{priced}");
    assert_eq!(priced["discount_codes"], json!([]), "{priced}");

    // A configured code, entered in lower case: applied by b only.
    let (status, priced) =
        app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": " spring10 "})).await;
    assert_eq!(status, 200, "{priced}");
    assert_eq!(discount_of(&priced, "ZB-1"), 200, "{priced}");
    assert_eq!(discount_of(&priced, "ZA-1"), 100, "{priced}");
    let spring = code(&priced, "SPRING10");
    assert_eq!(spring["applied"], true, "{priced}");
    assert_eq!(spring["honoured_by"], json!([{"merchant_id": b.0, "source": format!("plugin:{b_digest}")}]));
    assert_eq!(spring["reason"], Value::Null);
    assert_eq!(priced["total"]["amount"], 4000 - 300, "{priced}");
    // Entering it again changes nothing.
    let (_, again) = app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": "SPRING10"})).await;
    assert_eq!(again["discount_codes"].as_array().unwrap().len(), 1, "{again}");

    // A code no plugin knows: shown, not applied, never a 5xx.
    let (status, priced) =
        app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": "NOPE-1"})).await;
    assert_eq!(status, 200, "{priced}");
    let nope = code(&priced, "NOPE-1");
    assert_eq!(
        (nope["applied"].clone(), nope["reason"].clone()),
        (json!(false), json!("not applicable to this cart"))
    );
    assert_error(
        &app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": "two words"})).await,
        422,
        "invalid_request",
    );
    assert_error(
        &app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": ""})).await,
        422,
        "invalid_request",
    );
    assert_error(
        &app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": "X".repeat(65)})).await,
        422,
        "invalid_request",
    );
    for i in 0..8 {
        assert_eq!(
            app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": format!("FILL{i}")}))
                .await
                .0,
            200
        );
    }
    assert_error(
        &app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": "ELEVENTH"})).await,
        409,
        "conflict",
    );
    for i in 0..8 {
        assert_eq!(app.delete(&format!("/v1/carts/{cart}/discount-codes/FILL{i}")).await.0, 200);
    }

    // The configuration's next value is the next run's.
    assert_eq!(set_config(&app, &b.1, r#"{"codes": {"SPRING10": 20}, "min_spend": 2000}"#).await.0, 200);
    let (_, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(discount_of(&priced, "ZB-1"), 400, "{priced}");
    // Refused by the plugin, with its reason for the shopper.
    assert_eq!(set_config(&app, &b.1, r#"{"codes": {"SPRING10": 20}, "min_spend": 5000}"#).await.0, 200);
    let (_, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    let spring = code(&priced, "SPRING10");
    assert_eq!(spring["applied"], false, "{priced}");
    assert!(spring["reason"].as_str().unwrap().contains("50.00"), "{priced}");
    assert_eq!(discount_of(&priced, "ZB-1"), 0, "{priced}");
    assert_eq!(set_config(&app, &b.1, r#"{"codes": {"SPRING10": 10}, "min_spend": 0}"#).await.0, 200);

    // Removed (any case); removing it twice is 404.
    let (status, priced) = app.delete(&format!("/v1/carts/{cart}/discount-codes/nope-1")).await;
    assert_eq!(status, 200, "{priced}");
    assert_eq!(priced["discount_codes"].as_array().unwrap().len(), 1, "{priced}");
    assert_error(&app.delete(&format!("/v1/carts/{cart}/discount-codes/NOPE-1")).await, 404, "not_found");
    assert_error(&app.delete("/v1/carts/cart_0000/discount-codes/NOPE-1").await, 404, "not_found");

    // The order keeps the codes; each merchant sees only its own honour.
    let (status, order) = send(
        app.request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
            .header("idempotency-key", "codes-order-1")
            .json(&json!({"email": "c@example.com", "payment": {"token": "tok_visa"}})),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["discount_codes"][0]["code"], "SPRING10", "{order}");
    assert_eq!(order["discount_total"]["amount"], 300, "{order}");
    let id = s(&order["id"]);
    let (_, for_b) = as_merchant(&app, &b.1, Method::GET, &format!("/v1/merchant/orders/{id}")).await;
    assert_eq!(for_b["discount_codes"][0]["code"], "SPRING10", "{for_b}");
    let (_, for_a) = as_merchant(&app, &a.1, Method::GET, &format!("/v1/merchant/orders/{id}")).await;
    assert_eq!(for_a["discount_codes"], json!([]), "a honoured no code: {for_a}");

    // Configuration: read back, isolation, bad bodies.
    let (status, read) = as_merchant(&app, &b.1, Method::GET, "/v1/merchant/pricing-plugin/config").await;
    assert_eq!((status, read["config"]["codes"]["SPRING10"].clone()), (200, json!(10)), "{read}");
    assert_error(
        &as_merchant(&app, &a.1, Method::GET, "/v1/merchant/pricing-plugin/config").await,
        404,
        "not_found",
    );
    assert_error(&set_config(&app, &b.1, "{not json").await, 400, "malformed_json");
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(64 * 1024));
    assert_error(&set_config(&app, &b.1, &big).await, 413, "payload_too_large");
    let wrong_type =
        send(app.request(Method::PUT, "/v1/merchant/pricing-plugin/config").bearer_auth(&b.1).body("{}"))
            .await;
    assert_error(&wrong_type, 415, "unsupported_media_type");
    assert_error(
        &send(app.request(Method::GET, "/v1/merchant/pricing-plugin/config")).await,
        401,
        "unauthorized",
    );
    let (_, still) = as_merchant(&app, &b.1, Method::GET, "/v1/merchant/pricing-plugin/config").await;
    assert_eq!(still["config"]["codes"]["SPRING10"], 10, "a refused body changed nothing: {still}");
    assert_eq!(as_merchant(&app, &b.1, Method::DELETE, "/v1/merchant/pricing-plugin/config").await.0, 204);
    let (_, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(code(&priced, "SPRING10")["applied"], false, "no configuration, no code: {priced}");
}
each_backend!(codes_and_config, codes_configuration_and_both_worlds);

/// `merchant`'s plugin metrics once they count `runs` runs (and then a
/// little longer, to see that no more arrive).
async fn metrics_at(app: &TestApp, token: &str, runs: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, info) = as_merchant(app, token, Method::GET, "/v1/merchant/pricing-plugin").await;
        assert_eq!(status, 200, "{info}");
        let counted = info["metrics"]["runs"].as_i64().unwrap();
        assert!(counted <= runs, "{counted} runs counted, {runs} ran: {info}");
        if counted == runs {
            tokio::time::sleep(mercato::plugins::runs::COUNT_EVERY * 2).await;
            let (_, again) = as_merchant(app, token, Method::GET, "/v1/merchant/pricing-plugin").await;
            assert_eq!(again["metrics"], info["metrics"], "counts kept moving");
            return info;
        }
        assert!(std::time::Instant::now() < deadline, "{counted} runs counted, wanted {runs}: {info}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn bucket_total(metrics: &Value, histogram: &str) -> i64 {
    metrics[histogram].as_array().unwrap().iter().map(|b| b["runs"].as_i64().unwrap()).sum()
}

/// Every production run is counted, sampled out of the recording or not:
/// runs by outcome and histograms of instructions and host time, per
/// binary, each merchant its own; a new binary starts from nothing.
async fn every_run_is_counted(backend: Backend) {
    // No successful run is recorded: the counts cannot come from the records.
    let app = spawn_app_with(backend, |c| c.plugin_runs.sample_ok = 0.0).await;
    let a = app.merchant("Counted A").await;
    let b = app.merchant("Counted B").await;
    app.product(&a.1, product_body("A thing", &["ZA-1"], 1000, "EUR")).await;
    app.product(&b.1, product_body("B thing", &["ZB-1"], 2000, "EUR")).await;
    assert_eq!(upload(&app, &a.1, artifact("plugin-bundles.wasm")).await.0, 200);
    assert_eq!(upload(&app, &b.1, artifact("zoo-over-discount.wasm")).await.0, 200);
    let cart = app.cart("EUR").await;
    for sku in ["ZA-1", "ZB-1"] {
        assert_eq!(
            app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": sku, "quantity": 3})).await.0,
            200
        );
    }
    // What adding the items ran, once counted; then 12 reads.
    tokio::time::sleep(mercato::plugins::runs::COUNT_EVERY * 3).await;
    let mut start = Vec::new();
    for token in [&a.1, &b.1] {
        let (_, info) = as_merchant(&app, token, Method::GET, "/v1/merchant/pricing-plugin").await;
        start.push(info["metrics"]["runs"].as_i64().unwrap());
    }
    for _ in 0..12 {
        let (status, priced) = app.get(&format!("/v1/carts/{cart}")).await;
        assert_eq!(status, 200, "{priced}");
    }
    let ran = start[0] + 12;
    let a_info = metrics_at(&app, &a.1, ran).await;
    let a_metrics = &a_info["metrics"];
    assert_eq!(a_metrics["by_outcome"], json!({"ok": ran}), "{a_info}");
    assert_eq!(bucket_total(a_metrics, "instructions"), ran, "{a_info}");
    assert_eq!(bucket_total(a_metrics, "duration_us"), ran, "{a_info}");
    assert_eq!(a_metrics["instructions"].as_array().unwrap().last().unwrap()["le"], Value::Null);
    let (_, recorded) = as_merchant(&app, &a.1, Method::GET, "/v1/merchant/pricing-plugin/runs").await;
    assert_eq!(recorded["items"], json!([]), "ok runs are sampled out of the recording: {recorded}");

    let ran = start[1] + 12;
    let b_info = metrics_at(&app, &b.1, ran).await;
    let b_metrics = &b_info["metrics"];
    assert_eq!(b_metrics["by_outcome"], json!({"invalid_output": ran}), "only b's own runs: {b_info}");
    // The same instructions on every run: one bucket holds them all.
    let full: Vec<&Value> = b_metrics["instructions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["runs"].as_i64() != Some(0))
        .collect();
    assert_eq!(full.len(), 1, "{b_info}");
    assert_eq!(full[0]["runs"], ran, "{b_info}");

    // A new binary for b starts from nothing; the old one's counts are not its.
    assert_eq!(upload(&app, &b.1, artifact("plugin-bundles.wasm")).await.0, 200);
    let (status, priced) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(status, 200, "{priced}");
    let b_info = metrics_at(&app, &b.1, 1).await;
    assert_eq!(b_info["metrics"]["by_outcome"], json!({"ok": 1}), "{b_info}");
}
each_backend!(counts, every_run_is_counted);

/// `merchant`'s recorded runs once there are at least `n`.
async fn runs_at_least(app: &TestApp, token: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/merchant/pricing-plugin/runs?limit=7&cursor={c}"),
                None => "/v1/merchant/pricing-plugin/runs?limit=7".to_string(),
            };
            let (status, page) = as_merchant(app, token, Method::GET, &path).await;
            assert_eq!(status, 200, "{page}");
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 7, "{page}");
            all.extend(items.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        if all.len() >= n {
            return all;
        }
        assert!(std::time::Instant::now() < deadline, "only {} runs were recorded, wanted {n}", all.len());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn replay(app: &TestApp, token: &str, run: &str, candidate: Option<Vec<u8>>) -> (u16, Value) {
    let req = app
        .request(Method::POST, &format!("/v1/merchant/pricing-plugin/runs/{run}/replay"))
        .bearer_auth(token);
    send(match candidate {
        Some(bytes) => req.header("content-type", "application/wasm").body(bytes),
        None => req,
    })
    .await
}

/// Every production run is recorded; a replay of each of 20 runs of a plugin
/// that reads the clocks and random numbers reproduces its output exactly; a
/// candidate's replay shows its diff; runs are the merchant's only.
async fn runs_are_recorded_and_replay_exactly(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.merchant("Entropy A").await;
    let b = app.merchant("Other B").await;
    app.product(&a.1, product_body("A thing", &["ZA-1", "ZA-2"], 1000, "EUR")).await;
    let (status, uploaded) = upload(&app, &a.1, artifact("zoo-entropy.wasm")).await;
    assert_eq!(status, 200, "{uploaded}");
    let digest = s(&uploaded["digest"]);
    let cart = app.cart("EUR").await;
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "ZA-1", "quantity": 1})).await.0,
        200
    );
    // 20 runs on different inputs (each change and read prices the cart).
    let mut reads = 1;
    for i in 0..9u32 {
        assert_eq!(app.put(&format!("/v1/carts/{cart}/items/ZA-1"), json!({"quantity": i + 2})).await.0, 200);
        assert_eq!(app.get(&format!("/v1/carts/{cart}")).await.0, 200);
        reads += 2;
    }
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "ZA-2", "quantity": 1})).await.0,
        200
    );
    reads += 1;
    let runs = runs_at_least(&app, &a.1, 20).await;
    assert_eq!(runs.len(), reads, "one record per run");
    let mut ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), runs.len(), "ids are unique");
    let ats: Vec<i64> = runs.iter().map(|r| r["at"].as_i64().unwrap()).collect();
    assert!(ats.windows(2).all(|w| w[0] >= w[1]), "newest first: {ats:?}");
    for run in &runs {
        assert_eq!(run["digest"], digest.as_str());
        assert_eq!(run["outcome"], "ok", "{run}");
        assert_eq!(run["world"], "mercato:pricing@0.2.0");
        assert_eq!(run["merchant_id"], a.0.as_str());
        assert!(run["input"]["lines"].as_array().is_some_and(|l| !l.is_empty()), "{run}");
        assert!(run["limits"]["deadline_ms"].as_u64().is_some(), "{run}");
        assert!(run["usage"]["instructions"].as_u64().is_some_and(|n| n > 0), "{run}");
        let label = run["output"]["discounts"][0]["label"].as_str().unwrap();
        assert!(label.starts_with('w') && label.contains(" s") && label.contains(" r"), "{run}");
        assert!(run["log"].as_str().unwrap().contains("entropy: wall"), "{run}");
    }
    // The plugin's status sums its recorded runs up.
    let (_, status) = as_merchant(&app, &a.1, Method::GET, "/v1/merchant/pricing-plugin").await;
    assert_eq!(status["runs"]["recorded"], reads, "{status}");
    assert_eq!(status["runs"]["by_outcome"], json!({"ok": reads}), "{status}");
    assert!(
        status["runs"]["instructions_p99"].as_u64() >= status["runs"]["instructions_p50"].as_u64(),
        "{status}"
    );
    assert!(status["runs"]["instructions_p50"].as_u64() > Some(0), "{status}");
    // The virtual clock: a 3 ms sleep took 3 ms of its time (and a tick), whatever the host did.
    let label = runs[0]["output"]["discounts"][0]["label"].as_str().unwrap();
    let slept: u64 =
        label.split(' ').find_map(|w| w.strip_prefix('s')).and_then(|n| n.parse().ok()).expect(label);
    assert!((3_000_000..3_100_000).contains(&slept), "{label}");

    for run in runs.iter().take(20) {
        let id = s(&run["id"]);
        let (status, replayed) = replay(&app, &a.1, &id, None).await;
        assert_eq!(status, 200, "{replayed}");
        assert_eq!(replayed["identical"], true, "replay of {id} differs: {replayed}");
        assert_eq!(replayed["output"], run["output"], "{replayed}");
        assert_eq!(replayed["log"], run["log"]);
        assert_eq!(replayed["same_instructions"], true, "{replayed}");
        assert!(replayed["diff"]["added"].as_array().unwrap().is_empty(), "{replayed}");
    }

    // A candidate (the bundles example) instead of the recorded plugin.
    let big =
        runs.iter().find(|r| r["input"]["lines"][0]["quantity"].as_u64() >= Some(3)).expect("a run with 3+");
    let (status, diffed) =
        replay(&app, &a.1, big["id"].as_str().unwrap(), Some(artifact("plugin-bundles.wasm"))).await;
    assert_eq!(status, 200, "{diffed}");
    assert_eq!(diffed["identical"], false, "{diffed}");
    assert_ne!(diffed["digest"], digest.as_str());
    assert_eq!(diffed["recorded_digest"], digest.as_str());
    assert_eq!(diffed["diff"]["removed"], big["output"]["discounts"], "{diffed}");
    assert!(
        diffed["diff"]["added"].as_array().unwrap().iter().any(|d| d["label"] == "Buy 3, pay for 2"),
        "{diffed}"
    );
    let added: i64 = diffed["diff"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["amount"]["amount"].as_i64().unwrap())
        .sum();
    let removed: i64 = big["output"]["discounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["amount"]["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(diffed["diff"]["discount_delta"].as_i64(), Some(added - removed), "{diffed}");
    assert_error(
        &replay(&app, &a.1, big["id"].as_str().unwrap(), Some(b"not wasm".to_vec())).await,
        422,
        "invalid_plugin",
    );

    // Merchant isolation of runs.
    let (status, theirs) = as_merchant(&app, &b.1, Method::GET, "/v1/merchant/pricing-plugin/runs").await;
    assert_eq!((status, theirs["items"].clone()), (200, json!([])), "{theirs}");
    let id = s(&runs[0]["id"]);
    assert_error(
        &as_merchant(&app, &b.1, Method::GET, &format!("/v1/merchant/pricing-plugin/runs/{id}")).await,
        404,
        "not_found",
    );
    assert_error(&replay(&app, &b.1, &id, None).await, 404, "not_found");
    let (status, one) =
        as_merchant(&app, &a.1, Method::GET, &format!("/v1/merchant/pricing-plugin/runs/{id}")).await;
    assert_eq!((status, one["output"].clone()), (200, runs[0]["output"].clone()), "{one}");
    assert_error(
        &as_merchant(&app, &a.1, Method::GET, "/v1/merchant/pricing-plugin/runs?cursor=x").await,
        422,
        "invalid_request",
    );
    assert_error(
        &as_merchant(&app, &a.1, Method::GET, "/v1/merchant/pricing-plugin/runs?limit=0").await,
        422,
        "invalid_request",
    );

    // A failing run is recorded too, with its error and log; its replay fails alike.
    assert_eq!(upload(&app, &a.1, artifact("zoo-panic.wasm")).await.0, 200);
    assert_eq!(app.get(&format!("/v1/carts/{cart}")).await.0, 200);
    let runs = runs_at_least(&app, &a.1, reads + 1).await;
    let failed = &runs[0];
    assert_eq!(failed["outcome"], "trap", "{failed}");
    assert_eq!(failed["output"], Value::Null);
    assert!(failed["log"].as_str().unwrap().contains("about to panic"), "{failed}");
    let (status, replayed) = replay(&app, &a.1, failed["id"].as_str().unwrap(), None).await;
    assert_eq!((status, replayed["identical"].clone()), (200, json!(true)), "{replayed}");
    // The entropy plugin's runs still replay after it was replaced: its binary is kept for them.
    assert!(app.db.plugin_blob(&digest).await.unwrap().is_some(), "the binary of kept runs was deleted");
    let (status, older) = replay(&app, &a.1, &id, None).await;
    assert_eq!((status, older["identical"].clone()), (200, json!(true)), "{older}");

    // A run the host's clock stopped (10^10 instructions, 50 ms) is recorded
    // as not reproducible: where it ends depends on the machine.
    let limits = json!({"instructions": 10_000_000_000u64, "deadline_ms": 50});
    assert_eq!(crate::plugins::set_limits(&app, &a.0, limits).await.0, 200);
    assert_eq!(upload(&app, &a.1, artifact("zoo-loop.wasm")).await.0, 200);
    assert_eq!(app.get(&format!("/v1/carts/{cart}")).await.0, 200);
    let runs = runs_at_least(&app, &a.1, reads + 2).await;
    assert_eq!(
        (runs[0]["outcome"].clone(), runs[0]["reproducible"].clone()),
        (json!("deadline"), json!(false)),
        "{}",
        runs[0]
    );
    assert_eq!(runs[1]["reproducible"], true, "{}", runs[1]);
    let (status, cut) = replay(&app, &a.1, runs[0]["id"].as_str().unwrap(), None).await;
    assert_eq!(
        (status, cut["reproducible"].clone(), cut["outcome"].clone()),
        (200, json!(false), json!("deadline")),
        "{cut}"
    );
}
each_backend!(runs_and_replay, runs_are_recorded_and_replay_exactly);

/// The command line: configuration, runs, one run as JSON, replays on the
/// server (recorded and candidate) and offline from the downloaded run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_configures_lists_and_replays_runs() {
    let app = spawn_app(Backend::Memory).await;
    let (_, token) = app.merchant("CLI runs").await;
    app.product(&token, product_body("A thing", &["ZA-1"], 1000, "EUR")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let bundles = file("bundles.wasm", &artifact("plugin-bundles.wasm"));
    let entropy = file("entropy.wasm", &artifact("zoo-entropy.wasm"));
    let config = file("config.json", br#"{"codes": {"SPRING10": 10}, "min_spend": 0}"#);
    let url = app.url("");
    let cli = |args: Vec<String>, token: Option<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"));
            cmd.args(&args).env("MERCATO_URL", url).env_remove("MERCATO_TOKEN");
            if let Some(t) = token {
                cmd.env("MERCATO_TOKEN", t);
            }
            let out = cmd.output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
            )
        })
    };
    let arg = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let t = Some(token.clone());
    let (ok, out) = cli(arg(&["plugin", "config", &config]), t.clone()).await.unwrap();
    assert!(ok && out.contains("SPRING10"), "{out}");
    let (ok, out) = cli(arg(&["plugin", "config"]), t.clone()).await.unwrap();
    assert!(ok && out.contains("\"min_spend\": 0"), "{out}");
    let (ok, out) = cli(arg(&["plugin", "upload", &bundles]), t.clone()).await.unwrap();
    assert!(ok, "{out}");

    let cart = app.cart("EUR").await;
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "ZA-1", "quantity": 3})).await.0,
        200
    );
    let (_, priced) =
        app.post(&format!("/v1/carts/{cart}/discount-codes"), json!({"code": "spring10"})).await;
    assert_eq!(code(&priced, "SPRING10")["applied"], true, "{priced}");
    let runs = runs_at_least(&app, &token, 2).await;
    let newest = s(&runs[0]["id"]);
    assert_eq!(runs[0]["input"]["discount_codes"], json!(["SPRING10"]), "{}", runs[0]);
    assert!(runs[0]["input"]["config"].as_str().unwrap().contains("SPRING10"), "{}", runs[0]);

    let (ok, out) = cli(arg(&["plugin", "runs", "--limit", "1"]), t.clone()).await.unwrap();
    assert!(ok && out.contains(&newest) && out.contains("next: --cursor"), "{out}");
    let (ok, out) = cli(arg(&["plugin", "runs", &newest]), t.clone()).await.unwrap();
    assert!(ok, "{out}");
    let run_json = file("run.json", out.as_bytes());
    let (ok, out) = cli(arg(&["plugin", "replay", &newest]), t.clone()).await.unwrap();
    assert!(ok && out.contains("identical to the recorded run"), "{out}");
    let (ok, out) = cli(arg(&["plugin", "replay", &newest, "--wasm", &entropy]), t.clone()).await.unwrap();
    assert!(ok && out.contains("DIFFERENT") && out.contains("- ZA-1") && out.contains("SPRING10"), "{out}");
    // Offline: no server, no token.
    let (ok, out) = cli(arg(&["plugin", "replay", "--offline", &run_json, &bundles]), None).await.unwrap();
    assert!(ok && out.contains("identical to the recorded run"), "{out}");
    let (ok, out) =
        cli(arg(&["plugin", "replay", "--offline", &run_json, &entropy, "--json"]), None).await.unwrap();
    assert!(ok, "{out}");
    let offline: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(offline["identical"], false, "{offline}");
    assert!(offline["diff"]["added"][0]["label"].as_str().unwrap().starts_with('w'), "{offline}");
    let (ok, out) = cli(arg(&["plugin", "replay", "run_nope"]), t.clone()).await.unwrap();
    assert!(!ok && out.contains("not_found"), "{out}");
    // The shadow: install, report, promote.
    let (ok, out) = cli(arg(&["plugin", "shadow", &entropy]), t.clone()).await.unwrap();
    assert!(ok && out.contains("candidate sha256:"), "{out}");
    assert_eq!(app.get(&format!("/v1/carts/{cart}")).await.0, 200);
    shadow_after(&app, &token, 1).await;
    let (ok, out) = cli(arg(&["plugin", "shadow"]), t.clone()).await.unwrap();
    assert!(ok && out.contains("runs 1") && out.contains("differing 1") && out.contains("example:"), "{out}");
    let (ok, out) = cli(arg(&["plugin", "shadow", "--promote"]), t.clone()).await.unwrap();
    assert!(ok && out.contains("promoted"), "{out}");
    let (ok, out) = cli(arg(&["plugin", "shadow", "--remove"]), t.clone()).await.unwrap();
    assert!(!ok && out.contains("not_found"), "{out}");
    let (ok, out) = cli(arg(&["plugin", "config", "--remove"]), t.clone()).await.unwrap();
    assert!(ok && out.contains("removed"), "{out}");
}

async fn put_shadow(app: &TestApp, token: &str, bytes: Vec<u8>) -> (u16, Value) {
    send(
        app.request(Method::PUT, "/v1/merchant/pricing-plugin/shadow")
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await
}

/// The shadow report once it counts `n` pricings (run or dropped).
async fn shadow_after(app: &TestApp, token: &str, n: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, view) = as_merchant(app, token, Method::GET, "/v1/merchant/pricing-plugin/shadow").await;
        assert_eq!(status, 200, "{view}");
        let r = &view["report"];
        if r["runs"].as_u64().unwrap() + r["dropped"].as_u64().unwrap() >= n {
            return view;
        }
        assert!(std::time::Instant::now() < deadline, "the shadow counted too few pricings: {view}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A candidate in the shadow of the active plugin: the report counts runs,
/// differing carts (with examples) and the total discount delta, while the
/// shoppers' carts keep the active plugin's prices; hostile candidates
/// (loop, sleep, memory bomb) never change a shopper's answer; promote is
/// atomic under load; shadows are the merchant's only.
async fn shadows_report_and_promote_atomically(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.merchant("Shadow A").await;
    let b = app.merchant("Shadow B").await;
    app.product(&a.1, product_body("A thing", &["ZA-1"], 1000, "EUR")).await;
    assert_error(&put_shadow(&app, &a.1, artifact("plugin-legacy.wasm")).await, 409, "conflict");
    let (_, active) = upload(&app, &a.1, artifact("plugin-bundles.wasm")).await;
    let active = s(&active["digest"]);
    let (status, installed) = put_shadow(&app, &a.1, artifact("plugin-legacy.wasm")).await;
    assert_eq!(status, 200, "{installed}");
    let candidate = s(&installed["digest"]);
    assert_eq!(installed["active"], active.as_str());
    assert_eq!(installed["report"]["runs"], 0);
    assert_error(
        &as_merchant(&app, &b.1, Method::GET, "/v1/merchant/pricing-plugin/shadow").await,
        404,
        "not_found",
    );
    assert_error(
        &as_merchant(&app, &b.1, Method::POST, "/v1/merchant/pricing-plugin/shadow/promote").await,
        404,
        "not_found",
    );
    assert_error(&put_shadow(&app, &a.1, b"nope".to_vec()).await, 422, "invalid_plugin");

    // 3 × 10.00: the active bundles plugin takes 10.00 off; the 0.1.0
    // candidate would take 5 % (1.50). Every cart keeps the active price.
    let cart = app.cart("EUR").await;
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "ZA-1", "quantity": 3})).await.0,
        200
    );
    let mut pricings = 1;
    for _ in 0..19 {
        let (status, priced) = app.get(&format!("/v1/carts/{cart}")).await;
        assert_eq!(status, 200, "{priced}");
        assert_eq!(discount_of(&priced, "ZA-1"), 1000, "the shadow was applied: {priced}");
        assert!(
            line(&priced, "ZA-1")["adjustments"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["source"] == format!("plugin:{active}")),
            "{priced}"
        );
        pricings += 1;
    }
    let view = shadow_after(&app, &a.1, pricings).await;
    let r = &view["report"];
    assert_eq!(view["digest"], candidate.as_str());
    let runs = r["runs"].as_i64().unwrap();
    assert_eq!(runs + r["dropped"].as_i64().unwrap(), pricings as i64, "{view}");
    assert!(runs >= 1, "{view}");
    assert_eq!((r["differing"].as_i64(), r["identical"].as_i64()), (Some(runs), Some(0)), "{view}");
    assert_eq!(r["discount_delta"].as_i64(), Some(runs * (150 - 1000)), "{view}");
    let examples = r["examples"].as_array().unwrap();
    assert!(!examples.is_empty() && examples.len() <= 5, "{view}");
    assert_eq!(examples[0]["diff"]["added"][0]["amount"]["amount"], 150, "{view}");
    assert_eq!(examples[0]["active"]["discounts"][0]["label"], "Buy 3, pay for 2", "{view}");
    assert_eq!(r["errors"], json!({}), "{view}");

    // The same binary in the shadow: identical, no delta.
    assert_eq!(put_shadow(&app, &a.1, artifact("plugin-bundles.wasm")).await.0, 200);
    for _ in 0..5 {
        assert_eq!(app.get(&format!("/v1/carts/{cart}")).await.0, 200);
    }
    let view = shadow_after(&app, &a.1, 5).await;
    let r = &view["report"];
    assert_eq!(
        (r["identical"].clone(), r["differing"].clone(), r["discount_delta"].clone()),
        (r["runs"].clone(), json!(0), json!(0)),
        "{view}"
    );

    // Hostile candidates: shoppers' answers do not change, errors are counted.
    let (_, baseline) = app.get(&format!("/v1/carts/{cart}")).await;
    for (hostile, kind) in
        [("zoo-loop.wasm", "instructions"), ("zoo-sleep.wasm", "deadline"), ("zoo-alloc.wasm", "memory")]
    {
        assert_eq!(put_shadow(&app, &a.1, artifact(hostile)).await.0, 200, "{hostile}");
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let (status, priced) = app.get(&format!("/v1/carts/{cart}")).await;
            assert_eq!(status, 200, "{priced}");
            assert_eq!(priced["lines"], baseline["lines"], "{hostile} changed a shopper's cart");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{hostile}: {:?}",
                started.elapsed()
            );
        }
        let view = shadow_after(&app, &a.1, 3).await;
        let r = &view["report"];
        assert_eq!(r["errors"][kind], r["runs"], "{hostile}: {view}");
    }

    // Promote under load: every answer is wholly the old plugin's or the
    // new one's, none fails, and after the promote every answer is the new one's.
    assert_eq!(put_shadow(&app, &a.1, artifact("plugin-legacy.wasm")).await.0, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (app.url(&format!("/v1/carts/{cart}")), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, priced) = send(client.get(&url)).await;
                    assert_eq!(status, 200, "{priced}");
                    seen.push(discount_of(&priced, "ZA-1"));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, promoted) =
        as_merchant(&app, &a.1, Method::POST, "/v1/merchant/pricing-plugin/shadow/promote").await;
    assert_eq!((status, promoted["digest"].clone()), (200, json!(candidate)), "{promoted}");
    let (_, after) = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(discount_of(&after, "ZA-1"), 150, "the promoted plugin prices at once: {after}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for r in readers {
        let seen = r.await.unwrap();
        // Old, then new: never back.
        let first_new = seen.iter().position(|d| *d == 150).unwrap_or(seen.len());
        assert!(
            seen[..first_new].iter().all(|d| *d == 1000) && seen[first_new..].iter().all(|d| *d == 150),
            "{seen:?}"
        );
        all.extend(seen);
    }
    assert!(all.contains(&1000) && all.contains(&150), "the load spanned the promote: {all:?}");
    let (_, status) = as_merchant(&app, &a.1, Method::GET, "/v1/merchant/pricing-plugin").await;
    assert_eq!(status["digest"], candidate.as_str());
    assert_error(
        &as_merchant(&app, &a.1, Method::GET, "/v1/merchant/pricing-plugin/shadow").await,
        404,
        "not_found",
    );
    assert_error(
        &as_merchant(&app, &a.1, Method::POST, "/v1/merchant/pricing-plugin/shadow/promote").await,
        404,
        "not_found",
    );

    // Ended by DELETE.
    assert_eq!(put_shadow(&app, &a.1, artifact("plugin-bundles.wasm")).await.0, 200);
    assert_eq!(as_merchant(&app, &a.1, Method::DELETE, "/v1/merchant/pricing-plugin/shadow").await.0, 204);
    assert_error(
        &as_merchant(&app, &a.1, Method::DELETE, "/v1/merchant/pricing-plugin/shadow").await,
        404,
        "not_found",
    );
}
each_backend!(shadows, shadows_report_and_promote_atomically);
