//! Real `mercato serve` processes: several replicas on one PostgreSQL
//! database, and `kill -9` in the middle of checkouts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::serve::Serve;

async fn merchant_with_stock(p: &Serve, skus: &[&str], stock: u32) -> String {
    let (status, m) = send(
        p.request(Method::POST, "/v1/admin/merchants").bearer_auth(ADMIN_TOKEN).json(&json!({"name": "M"})),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    let token = s(&m["token"]);
    for sku in skus {
        let mut body = product_body(sku, &[sku], 700, "EUR");
        body["variants"][0]["stock"] = json!(stock);
        let (status, p) =
            send(p.request(Method::POST, "/v1/merchant/products").bearer_auth(&token).json(&body)).await;
        assert_eq!(status, 201, "{p}");
    }
    token
}

async fn cart(p: &Serve, lines: &[(&str, u32)]) -> String {
    let (status, c) = send(p.request(Method::POST, "/v1/carts").json(&json!({"currency": "EUR"}))).await;
    assert_eq!(status, 201, "{c}");
    let id = s(&c["id"]);
    for (sku, q) in lines {
        let (status, body) = send(
            p.request(Method::POST, &format!("/v1/carts/{id}/items"))
                .json(&json!({"sku": sku, "quantity": q})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    id
}

fn checkout(p: &Serve, cart: &str, key: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    let req = p
        .request(Method::POST, &format!("/v1/carts/{cart}/checkout"))
        .header("Idempotency-Key", key)
        .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}}));
    tokio::spawn(send(req))
}

async fn level(p: &Serve, token: &str, sku: &str) -> Value {
    let (status, l) =
        send(p.request(Method::GET, &format!("/v1/merchant/inventory/{sku}")).bearer_auth(token)).await;
    assert_eq!(status, 200, "{l}");
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_never_oversell() {
    let pg = PgDatabase::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let a = Serve::start(dir_a.path(), Some(&pg.url), &[]);
    let b = Serve::start(dir_b.path(), Some(&pg.url), &[]);
    let skus = ["TWIN-A", "TWIN-B"];
    let token = merchant_with_stock(&a, &skus, 10).await;
    let mut carts = Vec::new();
    for i in 0..40usize {
        let p = if i % 2 == 0 { &a } else { &b };
        let lines = vec![(skus[i % 2], 1), (skus[(i + 1) % 2], 1 + (i % 2) as u32)];
        carts.push((cart(p, &lines).await, lines));
    }
    let handles: Vec<_> = carts
        .iter()
        .enumerate()
        .map(|(i, (c, _))| checkout(if i % 2 == 0 { &a } else { &b }, c, &format!("twin-{i}")))
        .collect();
    let mut sold: HashMap<&str, u64> = HashMap::new();
    for (h, (_, lines)) in handles.into_iter().zip(&carts) {
        let (status, body) = h.await.expect("task");
        match status {
            201 => lines.iter().for_each(|(sku, q)| *sold.entry(sku).or_default() += u64::from(*q)),
            409 => {}
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(!sold.is_empty(), "some checkouts succeed");
    for sku in skus {
        let sold = sold.get(sku).copied().unwrap_or(0);
        let l = level(&b, &token, sku).await;
        assert!(sold <= 10, "{sku}: sold {sold} of 10 across two replicas");
        assert_eq!(l["on_hand"].as_u64(), Some(10 - sold), "{sku}: {l}");
        assert_eq!(l["reserved"], 0, "{sku}: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_order() {
    let dir = tempfile::tempdir().expect("dir");
    let p = Serve::start(dir.path(), None, &[]);
    let token = merchant_with_stock(&p, &["K-1"], 1_000).await;
    let mut carts = Vec::new();
    for _ in 0..30 {
        carts.push(cart(&p, &[("K-1", 2)]).await);
    }
    // A first wave completes; a second is in flight when the process dies.
    let first: Vec<_> =
        carts[..15].iter().enumerate().map(|(i, c)| checkout(&p, c, &format!("k{i}"))).collect();
    let mut acknowledged = Vec::new();
    for h in first {
        let (status, body) = h.await.expect("task");
        assert_eq!(status, 201, "{body}");
        acknowledged.push(s(&body["id"]));
    }
    let second: Vec<_> =
        carts[15..].iter().enumerate().map(|(i, c)| checkout(&p, c, &format!("k{}", i + 15))).collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    p.kill9();
    for h in second {
        if let Ok((201, body)) = h.await {
            acknowledged.push(s(&body["id"]));
        }
    }

    let p = Serve::start(dir.path(), None, &[]);
    for id in &acknowledged {
        let (status, order) =
            send(p.request(Method::GET, &format!("/v1/orders/{id}")).bearer_auth(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "acknowledged order {id} is gone after kill -9: {order}");
        assert_eq!(order["status"], "paid");
    }
    let l = level(&p, &token, "K-1").await;
    let sold_ack = 2 * acknowledged.len() as u64;
    let on_hand = l["on_hand"].as_u64().expect("on_hand");
    assert!(on_hand <= 1_000 - sold_ack, "stock of acknowledged orders stays sold: {l}");
    assert!(on_hand + l["reserved"].as_u64().unwrap_or(0) >= 1_000 - 2 * 30, "{l}");
}

/// SPEC §6.3 with several replicas: a deploy or rollback through one replica
/// is served by the other within 1 s. The periodic re-check is set to a
/// minute, so only the PostgreSQL notification can make it in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_one_replica_is_live_on_the_other_within_a_second() {
    let pg = PgDatabase::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let slow_sync = [("MERCATO_DEPLOY__SYNC_INTERVAL_MS", "60000")];
    let a = Serve::start(dir_a.path(), Some(&pg.url), &slow_sync);
    let b = Serve::start(dir_b.path(), Some(&pg.url), &slow_sync);
    let token = merchant_with_stock(&a, &["REP-1"], 5).await;
    let (_, page) = send(a.request(Method::GET, "/v1/products").bearer_auth(&token)).await;
    let product = s(&page["items"][0]["id"]);

    async fn catalog_version(p: &Serve, product: &str) -> (i64, bool) {
        let response = p.request(Method::GET, &format!("/v1/products/{product}")).send().await.expect("get");
        assert!(response.status().is_success());
        let version = crate::deploy::versions_of(&response)["catalog"];
        let body: Value = response.json().await.expect("json");
        (version, s(&body["title"]).ends_with(" [v2]"))
    }
    async fn within_a_second(p: &Serve, product: &str, want: (i64, bool)) -> Duration {
        let started = std::time::Instant::now();
        loop {
            if catalog_version(p, product).await == want {
                return started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(1), "not live on the other replica within 1 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(catalog_version(&b, &product).await, (1, false));

    let (status, d) = send(
        a.request(Method::POST, "/v1/admin/components/catalog/deploy")
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(crate::deploy::catalog_v2()),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    let took = within_a_second(&b, &product, (2, true)).await;
    eprintln!("deploy on A live on B after {took:?}");

    let (status, d) =
        send(b.request(Method::POST, "/v1/admin/components/catalog/rollback").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{d}");
    let took = within_a_second(&a, &product, (1, false)).await;
    eprintln!("rollback on B live on A after {took:?}");
}

/// SPEC §6.5 for deploys: a kill -9 at any moment of a deploy leaves either
/// the old or the new version active — whole, served, and what the registry
/// says — never a half-deployed component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deploys_leaves_no_half_deployed_component() {
    let dir = tempfile::tempdir().expect("dir");
    // A private artifact cache, so deploys also write precompiled files when killed.
    std::fs::create_dir_all(dir.path().join("cache")).expect("cache");
    let v2 = crate::deploy::catalog_v2();
    let v1 = mercato::runtime::bundled::bytes(mercato::runtime::ComponentKind::Catalog).to_vec();
    let mut seen_versions = std::collections::HashSet::new();
    for round in 0..7u64 {
        let p = Serve::start(dir.path(), None, &[]);
        let (_, list) = send(p.request(Method::GET, "/v1/admin/components").bearer_auth(ADMIN_TOKEN)).await;
        let catalog = list["components"]
            .as_array()
            .expect("components")
            .iter()
            .find(|c| c["name"] == "catalog")
            .expect("catalog")
            .clone();
        // What the registry says is what runs, and it answers.
        assert_eq!(catalog["active"]["version"], catalog["running"]["version"], "round {round}: {catalog}");
        assert_eq!(catalog["active"]["digest"], catalog["running"]["digest"], "round {round}: {catalog}");
        let response = p.request(Method::GET, "/v1/products").send().await.expect("get");
        assert_eq!(response.status(), 200);
        let active = catalog["active"]["version"].as_i64().expect("version");
        assert_eq!(crate::deploy::versions_of(&response)["catalog"], active);
        seen_versions.insert(active);
        // Deploy the other version and kill -9 somewhere along the way.
        let bytes = if catalog["active"]["digest"] == mercato::runtime::digest_of(&v2) {
            v1.clone()
        } else {
            v2.clone()
        };
        let deploy = p
            .request(Method::POST, "/v1/admin/components/catalog/deploy")
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(bytes);
        let pending = tokio::spawn(deploy.send());
        // Spread from "before the upload is read" to "well after it committed",
        // also on a loaded machine (a debug build compiles the catalog in ~0.5 s).
        const KILL_AFTER_MS: [u64; 7] = [0, 100, 250, 500, 1_000, 2_000, 4_000];
        tokio::time::sleep(Duration::from_millis(KILL_AFTER_MS[round as usize])).await;
        p.kill9();
        let _ = pending.await;
    }
    let p = Serve::start(dir.path(), None, &[]);
    let (status, _) = send(p.request(Method::GET, "/readyz")).await;
    assert_eq!(status, 200);
    // Kills came both before a deploy committed and after one did.
    assert_eq!(seen_versions.len(), 2, "{seen_versions:?}");
}

/// SPEC §6.5 and §6.7: `kill -9` at three moments under checkout load (0,
/// 40 and 120 ms after the first answer), a restart after each; finally every acknowledged order is there and paid,
/// and recovery has left no partial checkout (stock, orders and payments
/// agree, nothing reserved).
async fn kill_9_under_checkout_load(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let pg = fresh_database(backend).await;
    let url = pg.as_ref().map(|p| p.url.clone());
    let envs = [("MERCATO_CHECKOUT__SWEEP_INTERVAL_MS", "200")];
    let skus = ["KL-1", "KL-2", "KL-3"];
    let mut token: Option<String> = None;
    let mut acknowledged = Vec::new();
    for (round, kill_after_ms) in [0u64, 40, 120].into_iter().enumerate() {
        let p = Serve::start(dir.path(), url.as_deref(), &envs);
        let t = match &token {
            Some(t) => t.clone(),
            None => {
                let t = merchant_with_stock(&p, &skus, 300).await;
                // stock.low at 280: some kills land in reservations that cross it.
                for sku in skus {
                    let (status, body) = send(
                        p.request(Method::PUT, &format!("/v1/merchant/inventory/{sku}"))
                            .bearer_auth(&t)
                            .json(&json!({"low_stock_threshold": 280})),
                    )
                    .await;
                    assert_eq!(status, 200, "{body}");
                }
                t
            }
        };
        token = Some(t);
        let mut carts = Vec::new();
        for i in 0..30 {
            carts.push(cart(&p, &[(skus[i % 3], 1), (skus[(i + 1) % 3], 2)]).await);
        }
        let handles: Vec<_> =
            carts.iter().enumerate().map(|(i, c)| checkout(&p, c, &format!("kl{round}-{i}"))).collect();
        // Kill at a moment after the first answer, with the rest in flight.
        while !handles.iter().any(|h| h.is_finished()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        p.kill9();
        let mut answers: HashMap<u16, usize> = HashMap::new();
        for h in handles {
            if let Ok((status, body)) = h.await {
                *answers.entry(status).or_default() += 1;
                if status == 201 {
                    acknowledged.push(s(&body["id"]));
                }
            }
        }
        eprintln!("round {round}: killed {kill_after_ms} ms after the first answer; answers {answers:?}");
    }
    let p = Serve::start(dir.path(), url.as_deref(), &envs);
    let db = mercato::storage::Db::connect(url.as_deref(), dir.path()).await.expect("db");
    let stock: HashMap<String, u64> = skus.iter().map(|s| (s.to_string(), 300)).collect();
    let orders = crate::interruption::settled_in(&db, &stock).await;
    let ids: std::collections::HashSet<String> = orders.iter().map(|o| s(&o["id"])).collect();
    assert!(!acknowledged.is_empty(), "some checkouts were acknowledged before a kill");
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged order {id} is gone after kill -9");
        let (status, order) =
            send(p.request(Method::GET, &format!("/v1/orders/{id}")).bearer_auth(ADMIN_TOKEN)).await;
        assert_eq!((status, order["status"].as_str()), (200, Some("paid")), "{order}");
    }
}
crate::both_backends!(kill_9_under_load, kill_9_under_checkout_load);

/// SPEC §6.7 for cancels: `kill -9` at three moments while 16 cancels run (0,
/// 10 and 40 ms after the first answer), a restart after each; in the end
/// every order is paid or cancelled and refunded, its stock back once, its
/// `order.cancelled` once (`interruption::cancels_settled`), and every
/// acknowledged cancel stands.
async fn kill_9_under_cancels(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let pg = fresh_database(backend).await;
    let url = pg.as_ref().map(|p| p.url.clone());
    let envs = [("MERCATO_CHECKOUT__SWEEP_INTERVAL_MS", "100"), ("MERCATO_COMPONENTS__DEADLINE_MS", "1000")];
    let skus = ["KC-1", "KC-2"];
    let mut token: Option<String> = None;
    let (mut acknowledged, mut unanswered) = (Vec::new(), 0);
    for (round, kill_after_ms) in [0u64, 10, 40].into_iter().enumerate() {
        let p = Serve::start(dir.path(), url.as_deref(), &envs);
        let t = match &token {
            Some(t) => t.clone(),
            None => merchant_with_stock(&p, &skus, 200).await,
        };
        token = Some(t);
        let mut ids = Vec::new();
        for i in 0..16 {
            let c = cart(&p, &[(skus[i % 2], 1), (skus[(i + 1) % 2], 2)]).await;
            let (status, order) = checkout(&p, &c, &format!("kc{round}-{i}")).await.expect("checkout");
            assert_eq!(status, 201, "{order}");
            ids.push(s(&order["id"]));
        }
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                tokio::spawn(send(
                    p.request(Method::POST, &format!("/v1/orders/{id}/cancel")).bearer_auth(ADMIN_TOKEN),
                ))
            })
            .collect();
        while !handles.iter().any(|h| h.is_finished()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        p.kill9();
        let mut answers: HashMap<u16, usize> = HashMap::new();
        for (h, id) in handles.into_iter().zip(&ids) {
            match h.await {
                Ok((status, _)) if status != 0 => {
                    *answers.entry(status).or_default() += 1;
                    if status == 200 {
                        acknowledged.push(id.clone());
                    }
                }
                _ => unanswered += 1,
            }
        }
        eprintln!("round {round}: killed {kill_after_ms} ms after the first answer; answers {answers:?}");
    }
    let p = Serve::start(dir.path(), url.as_deref(), &envs);
    let db = mercato::storage::Db::connect(url.as_deref(), dir.path()).await.expect("db");
    let stock: HashMap<String, u64> = skus.iter().map(|s| (s.to_string(), 200)).collect();
    let cancelled = crate::interruption::cancels_settled(&db, &stock).await;
    assert!(unanswered > 0, "the kills cut no cancel off");
    assert!(!acknowledged.is_empty(), "some cancels were acknowledged before a kill");
    for id in &acknowledged {
        assert!(cancelled.contains(id), "acknowledged cancel of {id} is undone after kill -9");
        let (status, order) =
            send(p.request(Method::GET, &format!("/v1/orders/{id}")).bearer_auth(ADMIN_TOKEN)).await;
        assert_eq!((status, &order["payment"]["status"]), (200, &json!("refunded")), "{order}");
    }
    eprintln!(
        "{} cancelled, {} acknowledged, {unanswered} cut off by a kill",
        cancelled.len(),
        acknowledged.len()
    );
}
crate::both_backends!(kill_9_cancels, kill_9_under_cancels);

/// Two replicas on one PostgreSQL under the disconnect load, one of them
/// killed half-way: the other recovers its stuck checkouts; no oversell, no
/// checkout recovered twice into two outcomes, nothing left reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_recover_each_others_checkouts() {
    let pg = PgDatabase::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let envs = [("MERCATO_CHECKOUT__SWEEP_INTERVAL_MS", "100")];
    let a = Serve::start(dir_a.path(), Some(&pg.url), &envs);
    let b = Serve::start(dir_b.path(), Some(&pg.url), &envs);
    let skus = ["RR-1", "RR-2", "RR-3", "RR-4"];
    merchant_with_stock(&a, &skus, 50).await;
    let mut carts = Vec::new();
    for i in 0..160usize {
        let p = if i % 2 == 0 { &a } else { &b };
        carts.push(cart(p, &[(skus[i % 4], 1), (skus[(i + 1) % 4], 1 + (i % 2) as u32)]).await);
    }
    let (addr_a, addr_b) = (a.addr.expect("a"), b.addr.expect("b"));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    // Every fourth shopper (all on B) waits for the answer: a 201 must stay
    // an order, and the answers say what happened if nothing was paid.
    let mut waited = Vec::new();
    let mut a = Some(a);
    for (i, cart) in carts.iter().enumerate() {
        if i == 80 {
            // Half-way: replica A dies with checkouts in flight.
            if let Some(a) = a.take() {
                a.kill9();
            }
        }
        let addr = if i % 2 == 0 && a.is_some() { addr_a } else { addr_b };
        let permit = gate.clone().acquire_owned().await.expect("permit");
        if i % 4 == 3 {
            let answer = checkout(&b, cart, &format!("rr-{i}"));
            waited.push(tokio::spawn(async move {
                let answer = answer.await.expect("checkout");
                drop(permit);
                answer
            }));
            continue;
        }
        let cart = cart.clone();
        let after = Duration::from_millis(((i * 37) % 101) as u64);
        tasks.push(tokio::spawn(async move {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                crate::interruption::checkout_and_hang_up(addr, &cart, &format!("rr-{i}"), after).await;
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut answers: HashMap<u16, usize> = HashMap::new();
    let mut acknowledged = Vec::new();
    for w in waited {
        let (status, body) = w.await.expect("answer");
        *answers.entry(status).or_default() += 1;
        if status == 201 {
            acknowledged.push(s(&body["id"]));
        }
    }
    let db = mercato::storage::Db::connect(Some(&pg.url), dir_b.path()).await.expect("db");
    let stock: HashMap<String, u64> = skus.iter().map(|s| (s.to_string(), 50)).collect();
    let orders = crate::interruption::settled_in(&db, &stock).await;
    let ids: HashSet<String> = orders.iter().map(|o| s(&o["id"])).collect();
    let complaints = || {
        let stderr = b.stderr.lock().expect("lock");
        let odd: Vec<&String> = stderr.iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        format!(
            "answers to the waiting shoppers {answers:?}; B's warnings {:?}",
            &odd[odd.len().saturating_sub(20)..]
        )
    };
    assert!(!orders.is_empty(), "some checkouts were paid: {}", complaints());
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged order {id} is not paid: {}", complaints());
    }
    eprintln!("{} orders paid; answers to the waiting shoppers {answers:?}", orders.len());
    drop(b);
}

async fn catalog_of(p: &Serve) -> Value {
    let (status, list) = send(p.request(Method::GET, "/v1/admin/components").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{list}");
    list["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"] == "catalog")
        .expect("catalog")
        .clone()
}

/// Poll `p`'s catalog until `done` holds, at most `within`; when it held.
async fn until(p: &Serve, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let catalog = catalog_of(p).await;
        if done(&catalog) {
            return catalog;
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}: {catalog}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn deploy_canary(p: &Serve, bytes: Vec<u8>, share: u8) -> Value {
    let (status, d) = send(
        p.request(Method::POST, &format!("/v1/admin/components/catalog/deploy?canary={share}"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    d
}

/// The catalog version that served a read of `path` on `p`.
async fn catalog_version(p: &Serve, path: &str) -> (u16, i64) {
    let response = p.request(Method::GET, path).send().await.expect("get");
    (response.status().as_u16(), crate::deploy::versions_of(&response)["catalog"])
}

/// SPEC §6.3 with several replicas and a canary: a canary deployed through
/// one replica runs on the other within 1 s; a cart is on the same side on
/// both; the operator's rollback through one ends it on the other within
/// 1 s, and so does one replica's own judgement (the other replica never
/// judged: it had no traffic). The periodic re-check is a minute: only the
/// notification can make it in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_runs_and_ends_on_every_replica_within_a_second() {
    let pg = PgDatabase::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let envs =
        [("MERCATO_DEPLOY__SYNC_INTERVAL_MS", "60000"), ("MERCATO_DEPLOY__CANARY__MIN_REQUESTS", "40")];
    let a = Serve::start(dir_a.path(), Some(&pg.url), &envs);
    let b = Serve::start(dir_b.path(), Some(&pg.url), &envs);
    let token = merchant_with_stock(&a, &["CAN-1"], 100).await;
    let (_, page) = send(a.request(Method::GET, "/v1/products").bearer_auth(&token)).await;
    let product = s(&page["items"][0]["id"]);
    let mut carts = Vec::new();
    for _ in 0..20 {
        carts.push(cart(&a, &[("CAN-1", 1)]).await);
    }

    let v2 = deploy_canary(&a, crate::deploy::catalog_v2(), 50).await["version"].as_i64().expect("version");
    until(&b, Duration::from_secs(1), "the canary on B", |c| c["canary"]["running_here"] == true).await;
    let mut sides = Vec::new();
    for cart in &carts {
        let path = format!("/v1/carts/{cart}");
        let (on_a, on_b) = (catalog_version(&a, &path).await, catalog_version(&b, &path).await);
        assert_eq!(on_a, on_b, "cart {cart} on A and on B");
        sides.push(on_a.1);
    }
    assert!(sides.contains(&v2) && sides.contains(&1), "20 carts on one side of a 50 % canary: {sides:?}");

    let (status, d) =
        send(b.request(Method::POST, "/v1/admin/components/catalog/rollback").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{d}");
    until(&a, Duration::from_secs(1), "the rollback on A", |c| c["running"]["canary"].is_null()).await;
    for cart in &carts {
        assert_eq!(catalog_version(&a, &format!("/v1/carts/{cart}")).await, (200, 1));
    }

    // B judges a faulty canary under its own traffic; A follows.
    let faulty = crate::deploy::test_component("catalog-faulty.wasm");
    deploy_canary(&a, faulty, 50).await;
    until(&b, Duration::from_secs(1), "the faulty canary on B", |c| c["canary"]["running_here"] == true)
        .await;
    assert!(catalog_of(&a).await["running"]["canary"].is_object(), "A runs the canary it deployed");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (request, stop) = (b.request(Method::GET, &format!("/v1/products/{product}")), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = request.try_clone().expect("clone").send().await;
                }
            })
        })
        .collect();
    // A has no traffic: only B can judge, and A's runtime must follow.
    let seen = until(&a, Duration::from_secs(60), "the automatic rollback on A", |c| {
        c["running"]["canary"].is_null()
    })
    .await;
    let seen_at = mercato::now_ms();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.expect("load");
    }
    let record = &seen["canaries"][0];
    assert_eq!(record["outcome"], "rolled_back", "{seen}");
    assert!(s(&record["reason"]).contains("requests failed"), "{seen}");
    let after = seen_at - record["ended_at"].as_i64().expect("ended_at");
    assert!(after < 1_000, "A followed B's rollback after {after} ms");
    eprintln!("B's automatic rollback seen on A within {after} ms");
}

/// SPEC §6.5 for canaries: `kill -9` while a canary starts or is promoted
/// (each round does whichever the state allows, killed at spread moments)
/// leaves after a restart one consistent state: the active version
/// running, and either no canary or the live one running here, never of
/// the active version (a promote is one transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_canary_leaves_a_consistent_state() {
    let dir = tempfile::tempdir().expect("dir");
    let v2 = crate::deploy::catalog_v2();
    let mut states = std::collections::HashSet::new();
    for (round, kill_after_ms) in [0u64, 150, 400, 1_000, 3_000, 0, 20, 60].into_iter().enumerate() {
        let p = Serve::start(dir.path(), None, &[]);
        let catalog = until(&p, Duration::from_secs(3), "a settled canary state", |c| {
            c["canary"].is_null() || c["canary"]["running_here"] == true
        })
        .await;
        assert_eq!(catalog["active"]["version"], catalog["running"]["version"], "round {round}: {catalog}");
        let live: Vec<&Value> = catalog["canaries"]
            .as_array()
            .expect("canaries")
            .iter()
            .filter(|c| c["ended_at"].is_null())
            .collect();
        assert!(live.len() <= 1, "round {round}: {catalog}");
        assert_eq!(live.is_empty(), catalog["canary"].is_null(), "round {round}: {catalog}");
        if let Some(c) = live.first() {
            assert_ne!(
                c["version"], catalog["active"]["version"],
                "a live canary of the active version: {catalog}"
            );
        }
        for _ in 0..20 {
            let (status, version) = catalog_version(&p, "/v1/products").await;
            assert_eq!(status, 200, "round {round}");
            let allowed = [catalog["active"]["version"].clone(), catalog["canary"]["version"].clone()];
            assert!(allowed.contains(&json!(version)), "round {round}: catalog {version} served: {catalog}");
        }
        let active = catalog["active"]["version"].as_i64().expect("version");
        states.insert((active, catalog["canary"].is_null()));
        // Start a canary, or promote the one running; killed mid-way.
        let request = if catalog["canary"].is_null() {
            let bytes = if active == 1 {
                v2.clone()
            } else {
                mercato::runtime::bundled::bytes(mercato::runtime::ComponentKind::Catalog).to_vec()
            };
            p.request(Method::POST, "/v1/admin/components/catalog/deploy?canary=30")
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/wasm")
                .body(bytes)
        } else {
            p.request(Method::POST, "/v1/admin/components/catalog/promote").bearer_auth(ADMIN_TOKEN)
        };
        let pending = tokio::spawn(request.send());
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        p.kill9();
        let _ = pending.await;
    }
    let p = Serve::start(dir.path(), None, &[]);
    let catalog = until(&p, Duration::from_secs(3), "a settled canary state", |c| {
        c["canary"].is_null() || c["canary"]["running_here"] == true
    })
    .await;
    assert_eq!(catalog["active"]["version"], catalog["running"]["version"], "{catalog}");
    // Kills came both before and after canaries started.
    assert!(states.iter().any(|(_, none)| !none) && states.iter().any(|(_, none)| *none), "{states:?}");
}

/// SPEC §6.9: `kill -9` of the process that relays events, at four moments
/// under checkout load (5 to 150 ms after the first answer; batches of one
/// event, so the relay is busy when a kill lands, between publishes and
/// their marks), a restart after each.
/// Finally every event in the outbox is in the JetStream stream — compared
/// by id, none missing, none foreign — and each is stored once (a repeat
/// after a kill is dropped by its id).
async fn kill_9_of_the_relay_loses_no_event(backend: Backend) {
    use crate::events::{NATS, delete_stream, nats_names, stream_messages};
    let dir = tempfile::tempdir().expect("dir");
    let pg = fresh_database(backend).await;
    let url = pg.as_ref().map(|p| p.url.clone());
    let (stream, prefix) = nats_names("kill");
    let envs = [
        ("MERCATO_CHECKOUT__SWEEP_INTERVAL_MS", "200"),
        ("MERCATO_EVENTS__NATS_URL", NATS),
        ("MERCATO_EVENTS__NATS_STREAM", stream.as_str()),
        ("MERCATO_EVENTS__NATS_SUBJECT_PREFIX", prefix.as_str()),
        ("MERCATO_EVENTS__RELAY_INTERVAL_MS", "50"),
        ("MERCATO_EVENTS__LEASE_MS", "500"),
        ("MERCATO_EVENTS__BATCH", "1"),
        ("MERCATO_EVENTS__WEBHOOKS__ALLOW_LOOPBACK", "true"),
        ("MERCATO_EVENTS__WEBHOOKS__RETRY_BASE_MS", "100"),
    ];
    let receiver = crate::events::Receiver::start().await;
    let skus = ["KR-1", "KR-2", "KR-3"];
    let mut unpublished_at_kill = Vec::new();
    let mut token: Option<String> = None;
    for (round, kill_after_ms) in [5u64, 30, 80, 150].into_iter().enumerate() {
        let p = Serve::start(dir.path(), url.as_deref(), &envs);
        let t = match &token {
            Some(t) => t.clone(),
            None => {
                let t = merchant_with_stock(&p, &skus, 500).await;
                let (status, hook) = send(
                    p.request(Method::PUT, "/v1/merchant/webhooks")
                        .bearer_auth(&t)
                        .json(&json!({"url": receiver.url("ok", "m"), "events": ["order.paid"]})),
                )
                .await;
                assert_eq!(status, 200, "{hook}");
                t
            }
        };
        token = Some(t);
        let mut carts = Vec::new();
        for i in 0..60 {
            carts.push(cart(&p, &[(skus[i % 3], 1)]).await);
        }
        let handles: Vec<_> =
            carts.iter().enumerate().map(|(i, c)| checkout(&p, c, &format!("kr{round}-{i}"))).collect();
        while !handles.iter().any(|h| h.is_finished()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        p.kill9();
        for h in handles {
            let _ = h.await;
        }
        let db = mercato::storage::Db::connect(url.as_deref(), dir.path()).await.expect("db");
        unpublished_at_kill.push(db.events_unpublished_count().await.expect("count"));
        db.close().await;
    }
    // The kills must have caught the relay with work left, or this proves nothing.
    eprintln!("events waiting in the outbox at each kill: {unpublished_at_kill:?}");
    assert!(unpublished_at_kill.iter().any(|n| *n > 0), "{unpublished_at_kill:?}");
    let _p = Serve::start(dir.path(), url.as_deref(), &envs);
    let db = mercato::storage::Db::connect(url.as_deref(), dir.path()).await.expect("db");
    let stock: HashMap<String, u64> = skus.iter().map(|s| (s.to_string(), 500)).collect();
    // Recovery finishes the interrupted checkouts (one order.paid each, checked there).
    let orders = crate::interruption::settled_in(&db, &stock).await;
    assert!(!orders.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while db.events_unpublished_count().await.expect("count") > 0 {
        assert!(std::time::Instant::now() < deadline, "the outbox did not drain in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outbox: Vec<String> = crate::events::outbox(&db).await.into_iter().map(|e| e.id).collect();
    let messages = stream_messages(&stream).await;
    let stored: Vec<String> = messages.iter().map(|(id, _, _)| id.clone()).collect();
    let (want, got): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
        (outbox.iter().cloned().collect(), stored.iter().cloned().collect());
    let missing: Vec<_> = want.difference(&got).collect();
    let foreign: Vec<_> = got.difference(&want).collect();
    assert!(missing.is_empty(), "events lost across kill -9: {missing:?}");
    assert!(foreign.is_empty(), "messages of no event: {foreign:?}");
    assert_eq!(stored.len(), got.len(), "each event stored once (repeats dropped by id)");
    // And to the merchant's webhook: every event at least once.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let received: std::collections::BTreeSet<String> =
            receiver.seen("ok").into_iter().map(|r| r.event_id).collect();
        let missing: Vec<_> = want.difference(&received).collect();
        if missing.is_empty() {
            assert!(received.is_subset(&want), "webhook got events of nothing");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "webhook deliveries lost across kill -9: {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let repeats = receiver.seen("ok").len() - want.len();
    eprintln!("webhook: every event delivered, {repeats} delivered again after a kill");
    eprintln!("{} events, {} orders, all in the stream once", outbox.len(), orders.len());
    delete_stream(&stream).await;
}
crate::both_backends!(kill_9_relay, kill_9_of_the_relay_loses_no_event);

/// SPEC §6.9 with two replicas on one PostgreSQL, checkouts on both: one
/// relay at a time (the database lease) hands each event on once in the
/// normal case — the merchant's webhook receives every event exactly once
/// (JetStream would hide a repeat, a webhook does not), and the stream holds
/// them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once() {
    use crate::events::{NATS, Receiver, delete_stream, nats_names, stream_messages};
    let pg = PgDatabase::create().await;
    let (stream, prefix) = nats_names("twin");
    let envs = [
        ("MERCATO_EVENTS__NATS_URL", NATS),
        ("MERCATO_EVENTS__NATS_STREAM", stream.as_str()),
        ("MERCATO_EVENTS__NATS_SUBJECT_PREFIX", prefix.as_str()),
        ("MERCATO_EVENTS__RELAY_INTERVAL_MS", "50"),
        ("MERCATO_EVENTS__WEBHOOKS__ALLOW_LOOPBACK", "true"),
    ];
    let receiver = Receiver::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let a = Serve::start(dir_a.path(), Some(&pg.url), &envs);
    let b = Serve::start(dir_b.path(), Some(&pg.url), &envs);
    let token = merchant_with_stock(&a, &["TWE-1"], 100).await;
    let (status, hook) = send(
        b.request(Method::PUT, "/v1/merchant/webhooks")
            .bearer_auth(&token)
            .json(&json!({"url": receiver.url("ok", "m"), "events": ["order.paid", "order.fulfilled"]})),
    )
    .await;
    assert_eq!(status, 200, "{hook}");
    let mut carts = Vec::new();
    for i in 0..40usize {
        carts.push(cart(if i % 2 == 0 { &a } else { &b }, &[("TWE-1", 1)]).await);
    }
    let handles: Vec<_> = carts
        .iter()
        .enumerate()
        .map(|(i, c)| checkout(if i % 2 == 0 { &a } else { &b }, c, &format!("twe-{i}")))
        .collect();
    let mut paid = Vec::new();
    for h in handles {
        let (status, body) = h.await.expect("task");
        assert_eq!(status, 201, "{body}");
        paid.push(s(&body["id"]));
    }
    // Fulfilments on both replicas too.
    for (i, id) in paid.iter().enumerate().take(10) {
        let p = if i % 2 == 0 { &b } else { &a };
        let (status, body) =
            send(p.request(Method::POST, &format!("/v1/orders/{id}/fulfill")).bearer_auth(&token)).await;
        assert_eq!(status, 200, "{body}");
    }
    let db = mercato::storage::Db::connect(Some(&pg.url), dir_a.path()).await.expect("db");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.seen("ok").len() < 50 {
        assert!(std::time::Instant::now() < deadline, "{} of 50 delivered", receiver.seen("ok").len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a second delivery time to show up, were there one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outbox: Vec<String> = crate::events::outbox(&db).await.into_iter().map(|e| e.id).collect();
    assert_eq!(outbox.len(), 50, "40 paid + 10 fulfilled");
    let mut received: Vec<String> = receiver.seen("ok").into_iter().map(|r| r.event_id).collect();
    received.sort();
    let mut want = outbox.clone();
    want.sort();
    assert_eq!(received, want, "every event once to the webhook, from whichever replica relayed");
    let stored: Vec<String> = stream_messages(&stream).await.into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(stored.len(), 50);
    assert_eq!(stored.iter().collect::<std::collections::BTreeSet<_>>().len(), 50);
    drop((a, b));
    delete_stream(&stream).await;
}
