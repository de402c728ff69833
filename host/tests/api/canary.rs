//! Canary deploys (SPEC §4 `?canary=N`, `promote`, §6.3): a share of new
//! requests on the new version, each wholly on one set and saying which in
//! `x-mercato-versions`; sticky per cart; rolled back by the host itself
//! when it fails more than the stable version, never when it does not;
//! promoted or rolled back under load without a failed request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::deploy::{
    catalog_v2, component, components, deploy_bytes, rollback, shop, test_component, versions_of,
};
use crate::helpers::*;

async fn deploy_canary(app: &TestApp, name: &str, bytes: Vec<u8>, query: &str) -> (u16, Value) {
    send(
        app.request(Method::POST, &format!("/v1/admin/components/{name}/deploy?{query}"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await
}

async fn promote(app: &TestApp, name: &str) -> (u16, Value) {
    send(app.request(Method::POST, &format!("/v1/admin/components/{name}/promote")).bearer_auth(ADMIN_TOKEN))
        .await
}

/// One answer: when it started (unix ms), its status, the catalog version
/// that served it, and whether that is what its body shows.
#[derive(Debug, Clone)]
struct Answer {
    started_ms: i64,
    status: u16,
    catalog: i64,
    consistent: bool,
}

/// GET `path` and check the body against the header: a title ending in
/// " [v2]" exactly when the catalog that served it is `v2`.
async fn ask(client: &reqwest::Client, url: &str, v2: i64) -> Answer {
    let started_ms = mercato::now_ms();
    let response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let catalog = versions_of(&response)["catalog"];
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let title = if body["lines"].is_array() { &body["lines"][0]["title"] } else { &body["title"] };
    let consistent = status != 200 || title.as_str().is_some_and(|t| t.ends_with(" [v2]") == (catalog == v2));
    Answer { started_ms, status, catalog, consistent }
}

/// `n` requests to `url` from `clients` concurrent clients.
async fn burst(app: &TestApp, url: &str, n: usize, clients: usize, v2: i64) -> Vec<Answer> {
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, left) = (app.client.clone(), url.to_string(), left.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1)).is_ok() {
                    answers.push(ask(&client, &url, v2).await);
                }
                answers
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Clients reading `urls` until `stop`: every answer.
fn load(
    app: &TestApp,
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
    v2: i64,
) -> Vec<tokio::task::JoinHandle<Vec<Answer>>> {
    urls.into_iter()
        .map(|url| {
            let (client, stop) = (app.client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(ask(&client, &url, v2).await);
                }
                answers
            })
        })
        .collect()
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<Vec<Answer>>>) -> Vec<Answer> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn assert_none_failed(answers: &[Answer], what: &str) {
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200 || !a.consistent).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} failed, e.g. {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(3)]
    );
}

/// The split holds within tolerance over 2,000 requests; every answer is
/// what its header says (peers included: a cart's lines come from the
/// catalog it names); a cart's requests all go to one side; a second
/// deploy is refused while the canary runs unless it replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_whole_requests_and_sticks_to_carts() {
    let app = spawn_app(Backend::Sqlite).await;
    let (product, _) = shop(&app).await;
    for query in ["canary=0", "canary=100", "canary=ten", "canary=30&replace=maybe", "canary=30&share=2"] {
        let (status, body) = deploy_canary(&app, "catalog", catalog_v2(), query).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_request")),
            "{query}: {body}"
        );
    }
    let bundled = mercato::runtime::bundled::bytes(mercato::runtime::ComponentKind::Catalog).to_vec();
    let (status, body) = deploy_canary(&app, "catalog", bundled, "canary=30").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "the active version: {body}"
    );
    let (status, deployed) = deploy_canary(&app, "catalog", catalog_v2(), "canary=30").await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["canary"], 30, "{deployed}");
    let v2 = deployed["version"].as_i64().unwrap();
    let listed = components(&app).await;
    let catalog = component(&listed, "catalog");
    assert_eq!(catalog["active"]["version"], 1, "the stable version stays active: {catalog}");
    assert_eq!(catalog["canary"]["version"], v2, "{catalog}");
    assert_eq!(catalog["canary"]["share"], 30, "{catalog}");

    // 2,000 requests: 30 % ± 4.4 standard deviations on the canary.
    let answers = burst(&app, &app.url(&format!("/v1/products/{product}")), 2_000, 8, v2).await;
    assert_none_failed(&answers, "product reads during a canary");
    let on_canary = answers.iter().filter(|a| a.catalog == v2).count();
    assert!((510..=690).contains(&on_canary), "{on_canary} of 2000 on a 30 % canary");

    // 40 carts read 5 times each: one side per cart, both sides seen.
    let mut sides: HashMap<String, Vec<i64>> = HashMap::new();
    for _ in 0..40 {
        let cart = app.cart("EUR").await;
        let (status, body) =
            app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "MUG", "quantity": 1})).await;
        assert_eq!(status, 200, "{body}");
        for _ in 0..5 {
            let answer = ask(&app.client, &app.url(&format!("/v1/carts/{cart}")), v2).await;
            assert!(answer.status == 200 && answer.consistent, "{answer:?}");
            sides.entry(cart.clone()).or_default().push(answer.catalog);
        }
    }
    for (cart, seen) in &sides {
        assert!(seen.iter().all(|v| *v == seen[0]), "cart {cart} saw catalog versions {seen:?}");
    }
    let carts_on_canary = sides.values().filter(|v| v[0] == v2).count();
    assert!(carts_on_canary > 0 && carts_on_canary < 40, "{carts_on_canary} of 40 carts on the canary");

    // No second deploy over a running canary, unless it says so.
    let (status, body) = deploy_bytes(&app, "catalog", test_component("catalog-faulty.wasm"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
    let (status, body) =
        deploy_canary(&app, "catalog", test_component("catalog-faulty.wasm"), "canary=5&replace=true").await;
    assert_eq!(status, 200, "{body}");
    let listed = components(&app).await;
    let catalog = component(&listed, "catalog");
    assert_eq!(catalog["canary"]["share"], 5, "{catalog}");
    assert_eq!(catalog["canaries"][1]["outcome"], "replaced", "{catalog}");
    assert_eq!(catalog["canaries"][1]["version"], v2, "{catalog}");
}

/// A canary that fails 30 % of its requests is rolled back by the host
/// under load: the reason is recorded, and no request that started after
/// the rollback was recorded failed or met the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_canary_is_rolled_back_by_itself() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.deploy.canary.min_requests = 60).await;
    let (product, cart) = shop(&app).await;
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (0..6)
        .map(|i| {
            app.url(&if i == 0 { format!("/v1/carts/{cart}") } else { format!("/v1/products/{product}") })
        })
        .collect();
    let (status, deployed) =
        deploy_canary(&app, "catalog", test_component("catalog-faulty.wasm"), "canary=50").await;
    assert_eq!(status, 200, "{deployed}");
    let faulty = deployed["version"].as_i64().unwrap();
    let clients = load(&app, urls, stop.clone(), -1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let ended = loop {
        let listed = components(&app).await;
        let catalog = component(&listed, "catalog").clone();
        if catalog["canary"].is_null() && catalog["canaries"][0]["ended_at"].is_i64() {
            break catalog;
        }
        assert!(std::time::Instant::now() < deadline, "never rolled back: {catalog}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = gather(clients).await;
    let record = &ended["canaries"][0];
    assert_eq!(record["outcome"], "rolled_back", "{ended}");
    assert!(s(&record["reason"]).contains("requests failed"), "{ended}");
    assert_eq!(ended["active"]["version"], 1, "{ended}");
    let at = record["ended_at"].as_i64().unwrap();
    let before: Vec<&Answer> = answers.iter().filter(|a| a.started_ms < at).collect();
    let after: Vec<Answer> = answers.iter().filter(|a| a.started_ms > at).cloned().collect();
    assert!(before.iter().any(|a| a.status >= 500 && a.catalog == faulty), "the canary failed some requests");
    assert!(before.iter().filter(|a| a.catalog == faulty).count() >= 60, "judged after min_requests");
    assert!(!after.is_empty());
    assert_none_failed(&after, "after the rollback");
    assert!(after.iter().all(|a| a.catalog == 1), "the canary served after its rollback");
}

/// A canary that is as good as the stable version is never rolled back
/// (10,000 requests, the default policy); what both sides served is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_not_rolled_back() {
    let app = spawn_app(Backend::Sqlite).await;
    let (product, _) = shop(&app).await;
    let (status, deployed) = deploy_canary(&app, "catalog", catalog_v2(), "canary=50").await;
    assert_eq!(status, 200, "{deployed}");
    let v2 = deployed["version"].as_i64().unwrap();
    let answers = burst(&app, &app.url(&format!("/v1/products/{product}")), 10_000, 8, v2).await;
    assert_none_failed(&answers, "a healthy canary");
    let listed = components(&app).await;
    let catalog = component(&listed, "catalog");
    assert_eq!(catalog["canary"]["version"], v2, "a false alarm: {catalog}");
    let counts = &catalog["canary"]["counts"];
    let (stable, canary) =
        (counts["stable"]["requests"].as_u64().unwrap(), counts["canary"]["requests"].as_u64().unwrap());
    assert_eq!(stable + canary, 10_000, "{catalog}");
    assert_eq!(counts["canary"]["failed"], 0, "{catalog}");
    let on_canary = answers.iter().filter(|a| a.catalog == v2).count() as u64;
    assert_eq!(canary, on_canary, "{catalog}");
}

/// Promote, then a canary rolled back by the operator, under load: no
/// request fails; new requests follow each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_under_load_fail_no_request() {
    let app = spawn_app(Backend::Sqlite).await;
    let (product, cart) = shop(&app).await;
    let (status, body) = promote(&app, "catalog").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("no_canary")), "{body}");
    let (status, deployed) = deploy_canary(&app, "catalog", catalog_v2(), "canary=50").await;
    assert_eq!(status, 200, "{deployed}");
    let v2 = deployed["version"].as_i64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let urls = (0..6)
        .map(|i| {
            app.url(&if i % 2 == 0 { format!("/v1/carts/{cart}") } else { format!("/v1/products/{product}") })
        })
        .collect();
    let clients = load(&app, urls, stop.clone(), v2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, promoted) = promote(&app, "catalog").await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["version"], v2, "{promoted}");
    let promoted_at = mercato::now_ms();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The bundled catalog (version 1) as a canary of v2, ended by the operator.
    let bundled = mercato::runtime::bundled::bytes(mercato::runtime::ComponentKind::Catalog).to_vec();
    let (status, again) = deploy_canary(&app, "catalog", bundled, "canary=50").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["version"], 1, "{again}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, rolled) = rollback(&app, "catalog").await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["version"], v2, "the stable version stays: {rolled}");
    let rolled_at = mercato::now_ms();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = gather(clients).await;
    assert_none_failed(&answers, "promote and rollback under load");
    let after_promote =
        answers.iter().filter(|a| a.started_ms > promoted_at && a.started_ms < promoted_at + 400);
    assert!(
        after_promote.clone().count() > 0 && after_promote.clone().all(|a| a.catalog == v2),
        "after the promote"
    );
    let after_rollback: Vec<&Answer> = answers.iter().filter(|a| a.started_ms > rolled_at).collect();
    assert!(
        !after_rollback.is_empty() && after_rollback.iter().all(|a| a.catalog == v2),
        "after the rollback"
    );
    let listed = components(&app).await;
    let catalog = component(&listed, "catalog");
    assert!(catalog["canary"].is_null(), "{catalog}");
    assert_eq!(catalog["canaries"][0]["outcome"], "rolled_back", "{catalog}");
    assert_eq!(catalog["canaries"][1]["outcome"], "promoted", "{catalog}");
    assert_eq!(catalog["active"]["version"], v2, "{catalog}");
}

/// `mercato deploy NAME FILE --canary N` streams its stages and says the
/// share; `mercato components` shows the canary; a second deploy is
/// refused with the reason unless `--replace`; `mercato promote NAME`
/// makes it active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_runs_a_canary_and_promotes_it() {
    let app = spawn_app(Backend::Sqlite).await;
    shop(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("catalog-v2.wasm");
    std::fs::write(&v2, catalog_v2()).unwrap();
    let faulty = dir.path().join("catalog-faulty.wasm");
    std::fs::write(&faulty, test_component("catalog-faulty.wasm")).unwrap();
    let server = app.url("");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
            .args(args)
            .envs([("MERCATO_URL", server.as_str()), ("MERCATO_TOKEN", ADMIN_TOKEN)])
            .output()
            .expect("run mercato");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&["deploy", "catalog", v2.to_str().unwrap(), "--canary", "0"]);
    assert!(!ok, "a 0 % canary: {out}");
    let (ok, out) = run(&["deploy", "catalog", v2.to_str().unwrap(), "--canary", "25"]);
    assert!(ok, "{out}");
    for stage in ["precompil", "now serves 25 % of new requests as a canary"] {
        assert!(out.contains(stage), "no {stage:?} in:\n{out}");
    }
    let (ok, out) = run(&["components"]);
    assert!(ok, "{out}");
    let listed: Value =
        serde_json::from_str(out.lines().next().unwrap()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(component(&listed, "catalog")["canary"]["share"], 25, "{out}");
    let (ok, out) = run(&["deploy", "catalog", faulty.to_str().unwrap()]);
    assert!(!ok && out.contains("canary running") && out.contains("replace"), "{out}");
    let (ok, out) = run(&["promote", "catalog"]);
    assert!(ok, "{out}");
    let catalog = component(&components(&app).await, "catalog").clone();
    assert_eq!(catalog["active"]["version"], 2, "{catalog}");
    assert!(catalog["canary"].is_null(), "{catalog}");
    let (ok, out) = run(&["promote", "catalog"]);
    assert!(!ok && out.contains("no_canary"), "{out}");
}

/// A canary is judged on the requests that use its component: a catalog
/// that fails 30 % of product reads, in traffic that is 95 % stock reads
/// (which never touch the catalog), is rolled back all the same — counted
/// over all requests its failure rate would be 1.5 %, under the 2 % floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_judged_on_the_requests_that_use_it() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.deploy.canary.min_requests = 40).await;
    let (_, token) = app.merchant("M").await;
    let product = app.product(&token, product_body("Mug", &["MUG"], 1200, "EUR")).await;
    let (status, deployed) =
        deploy_canary(&app, "catalog", test_component("catalog-faulty.wasm"), "canary=50").await;
    assert_eq!(status, 200, "{deployed}");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (client, stop, token) = (app.client.clone(), stop.clone(), token.clone());
            let stock = app.url("/v1/merchant/inventory/MUG");
            let read = app.url(&format!("/v1/products/{}", s(&product["id"])));
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request = if n.is_multiple_of(20) {
                        client.get(&read)
                    } else {
                        client.get(&stock).bearer_auth(&token)
                    };
                    let _ = request.send().await;
                }
                n
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let catalog = loop {
        let listed = components(&app).await;
        let catalog = component(&listed, "catalog").clone();
        if catalog["canary"].is_null() {
            break catalog;
        }
        assert!(std::time::Instant::now() < deadline, "never rolled back: {catalog}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for c in clients {
        sent += c.await.unwrap();
    }
    assert_eq!(catalog["canaries"][0]["outcome"], "rolled_back", "{catalog}");
    eprintln!(
        "rolled back after {sent} requests, 5 % of them product reads: {}",
        catalog["canaries"][0]["reason"]
    );
}
