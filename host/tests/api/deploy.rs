//! Deployments (SPEC §4 admin components, §6.3): the component registry,
//! contract checks, hot swaps under load, rollbacks, OCI push/pull against a
//! real registry, deploy-on-push, signatures, restarts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mercato::oci::{Oci, RegistryConfig};
use mercato::registry::signature;
use mercato::runtime::bundled::{self, TEST_COMPONENTS_DIR};
use mercato::runtime::{ComponentKind, Origin};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::registry_server::RegistryServer;
use crate::{both_backends, each_backend};

pub fn test_component(file: &str) -> Vec<u8> {
    std::fs::read(Path::new(TEST_COMPONENTS_DIR).join(file)).expect("test component")
}

/// The second catalog version: titles end in " [v2]".
pub fn catalog_v2() -> Vec<u8> {
    test_component("catalog-v2.wasm")
}

pub async fn deploy_bytes(app: &TestApp, name: &str, bytes: Vec<u8>, sig: Option<&str>) -> (u16, Value) {
    let mut req = app
        .request(Method::POST, &format!("/v1/admin/components/{name}/deploy"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(bytes);
    if let Some(sig) = sig {
        req = req.header("x-mercato-signature", sig);
    }
    send(req).await
}

pub async fn deploy_oci(app: &TestApp, name: &str, reference: &str) -> (u16, Value) {
    send(
        app.request(Method::POST, &format!("/v1/admin/components/{name}/deploy"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "oci": reference })),
    )
    .await
}

pub async fn rollback(app: &TestApp, name: &str) -> (u16, Value) {
    send(app.request(Method::POST, &format!("/v1/admin/components/{name}/rollback")).bearer_auth(ADMIN_TOKEN))
        .await
}

pub async fn components(app: &TestApp) -> Value {
    let (status, body) =
        send(app.request(Method::GET, "/v1/admin/components").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub fn component<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["components"].as_array().expect("components").iter().find(|c| c["name"] == name).expect("component")
}

/// The `x-mercato-versions` header as name → version.
pub fn versions_of(response: &reqwest::Response) -> HashMap<String, i64> {
    let header = response.headers().get("x-mercato-versions").expect("x-mercato-versions header");
    header
        .to_str()
        .expect("ascii")
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("name=version");
            (k.to_string(), v.parse().expect("version number"))
        })
        .collect()
}

/// A merchant with one product (sku MUG) and a cart holding it: (product id, cart id).
pub async fn shop(app: &TestApp) -> (String, String) {
    let (_, token) = app.merchant("M").await;
    let product = app.product(&token, product_body("Mug", &["MUG"], 1200, "EUR")).await;
    let cart = app.cart("EUR").await;
    let (status, body) =
        app.post(&format!("/v1/carts/{cart}/items"), json!({"sku": "MUG", "quantity": 1})).await;
    assert_eq!(status, 200, "{body}");
    (s(&product["id"]), cart)
}

/// The catalog version serving `path` and whether its answer is marked v2.
async fn served(app: &TestApp, path: &str) -> (i64, bool) {
    let response = app.request(Method::GET, path).send().await.expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    let versions = versions_of(&response);
    let body: Value = response.json().await.expect("json");
    let title = if body["lines"].is_array() { s(&body["lines"][0]["title"]) } else { s(&body["title"]) };
    (versions["catalog"], title.ends_with(" [v2]"))
}

async fn deploy_and_roll_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let (product, cart) = shop(&app).await;
    let before = components(&app).await;
    let catalog = component(&before, "catalog");
    assert_eq!(catalog["active"]["source"], "bundled");
    assert_eq!(catalog["active"]["version"], 1);
    assert_eq!(catalog["world"], "mercato:commerce/catalog-component@0.6.0");
    assert_eq!(served(&app, &format!("/v1/products/{product}")).await, (1, false));

    let (status, d) = deploy_bytes(&app, "catalog", catalog_v2(), None).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!((d["version"].as_i64(), d["changed"].as_bool()), (Some(2), Some(true)));
    assert_eq!(d["digest"], mercato::runtime::digest_of(&catalog_v2()));
    // The next request (product and cart, whose titles come from the catalog) is v2.
    assert_eq!(served(&app, &format!("/v1/products/{product}")).await, (2, true));
    assert_eq!(served(&app, &format!("/v1/carts/{cart}")).await, (2, true));
    // The same bytes again change nothing.
    let (status, again) = deploy_bytes(&app, "catalog", catalog_v2(), None).await;
    assert_eq!((status, &again["changed"]), (200, &json!(false)), "{again}");

    let after = components(&app).await;
    let catalog = component(&after, "catalog");
    assert_eq!(catalog["active"]["version"], 2);
    assert_eq!(catalog["active"]["source"], "upload");
    assert_eq!(catalog["running"]["version"], 2);
    assert_eq!(catalog["versions"].as_array().map(Vec::len), Some(2));
    assert_eq!(component(&after, "cart")["active"]["version"], 1, "other components untouched");

    let (status, r) = rollback(&app, "catalog").await;
    assert_eq!((status, r["version"].as_i64()), (200, Some(1)), "{r}");
    assert_eq!(served(&app, &format!("/v1/products/{product}")).await, (1, false));
    let history = components(&app).await;
    let history = &component(&history, "catalog")["history"];
    assert!(history[0]["rolled_back_at"].is_i64(), "{history}");
    // Nothing before the bundled version.
    assert_error(&rollback(&app, "catalog").await, 409, "nothing_to_roll_back");
    assert_error(&rollback(&app, "cart").await, 409, "nothing_to_roll_back");
    assert_error(&rollback(&app, "basket").await, 404, "not_found");
}
each_backend!(deploy_then_roll_back, deploy_and_roll_back);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_mismatches_and_bad_input_change_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let (product, _) = shop(&app).await;
    let wat = |text: &str| wat::parse_str(text).expect("wat");
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        // A whole other capability: its imports and exports are another world's.
        ("catalog as cart", bundled::bytes(ComponentKind::Catalog).to_vec(), "contract_mismatch", "cart"),
        // Missing the export.
        (
            "inventory as catalog",
            bundled::bytes(ComponentKind::Inventory).to_vec(),
            "contract_mismatch",
            "mercato:commerce/catalog@0.6.0",
        ),
        // Importing outbound HTTP, which only payment has.
        (
            "wasi:http importer as catalog",
            wat(r#"(component
                    (import "wasi:http/outgoing-handler@0.2.6" (instance))
                    (instance $c) (export "mercato:commerce/catalog@0.6.0" (instance $c))
                    (instance $m) (export "mercato:commerce/merchant-catalog@0.6.0" (instance $m))
                    (instance $s) (export "mercato:commerce/sku-lookup@0.6.0" (instance $s)))"#),
            "contract_mismatch",
            "wasi:http/outgoing-handler",
        ),
        // The right export name, but none of the functions: wasmtime's type check.
        (
            "empty catalog interface",
            wat(r#"(component
                    (instance $c) (export "mercato:commerce/catalog@0.6.0" (instance $c))
                    (instance $m) (export "mercato:commerce/merchant-catalog@0.6.0" (instance $m))
                    (instance $s) (export "mercato:commerce/sku-lookup@0.6.0" (instance $s)))"#),
            "contract_mismatch",
            "same types",
        ),
        ("core module", wat("(module)"), "invalid_component", "core WebAssembly module"),
        ("random bytes", rand::random::<[u8; 64]>().to_vec(), "invalid_component", "not WebAssembly"),
        ("empty body", Vec::new(), "invalid_component", "empty"),
    ];
    for (what, bytes, code, says) in cases {
        let kind = if what == "catalog as cart" { "cart" } else { "catalog" };
        let got = deploy_bytes(&app, kind, bytes, None).await;
        assert_error(&got, 422, code);
        let message = s(&got.1["error"]["message"]);
        assert!(message.contains(says), "{what}: {message}");
    }
    // Not Wasm at all, by content type; an unknown component; no token.
    let (status, _) = send(
        app.request(Method::POST, "/v1/admin/components/catalog/deploy")
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "text/plain")
            .body("hello"),
    )
    .await;
    assert_eq!(status, 415);
    assert_error(&deploy_bytes(&app, "basket", catalog_v2(), None).await, 404, "not_found");
    // (A small body: the server answers 401 without reading a large one,
    // and the client may see the connection close before the answer.)
    let (status, _) = send(
        app.request(Method::POST, "/v1/admin/components/catalog/deploy")
            .header("content-type", "application/wasm")
            .body(b"\0asm".to_vec()),
    )
    .await;
    assert_eq!(status, 401);
    assert_error(
        &send(
            app.request(Method::POST, "/v1/admin/components/catalog/deploy")
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"oci": "Not A Reference"})),
        )
        .await,
        422,
        "invalid_reference",
    );
    // Larger than any component may be (its own client: the connection
    // is closed after the 413).
    let oversized = send(
        reqwest::Client::new()
            .post(app.url("/v1/admin/components/catalog/deploy"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(vec![0u8; mercato::http::MAX_COMPONENT_BYTES + 1]),
    )
    .await;
    assert_error(&oversized, 413, "payload_too_large");
    assert!(s(&oversized.1["error"]["message"]).contains("a component can be at most"), "{}", oversized.1);
    // An unreachable registry: 502, nothing changes.
    assert_error(&deploy_oci(&app, "catalog", "127.0.0.1:1/mercato/catalog:v2").await, 502, "registry_error");

    let list = components(&app).await;
    for kind in ComponentKind::ALL {
        let c = component(&list, kind.name());
        assert_eq!(c["active"]["version"], 1, "{c}");
        assert_eq!(c["versions"].as_array().map(Vec::len), Some(1), "a refused deploy records nothing: {c}");
    }
    assert_eq!(served(&app, &format!("/v1/products/{product}")).await, (1, false));
}

/// SPEC §6.3: while clients hammer the catalog and cart, 20 deploys and
/// rollbacks alternate; every response is 2xx and comes from exactly one
/// whole version (the header names it, and the answer matches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_during_twenty_swaps() {
    let app = spawn_app(Backend::Sqlite).await;
    let (product, cart) = shop(&app).await;
    // Compile v2 once up front, so the swaps below measure swapping.
    let (status, body) = deploy_bytes(&app, "catalog", catalog_v2(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rollback(&app, "catalog").await.0, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        let path = if i % 2 == 0 { format!("/v1/products/{product}") } else { format!("/v1/carts/{cart}") };
        let url = app.url(&path);
        let client = app.client.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut seen: HashMap<i64, usize> = HashMap::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = match client.get(&url).send().await {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("transport: {e}"));
                        continue;
                    }
                };
                let status = response.status();
                let versions = versions_of(&response);
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    failures.push(format!("{status}: {body}"));
                    continue;
                }
                let title = if body["lines"].is_array() {
                    body["lines"][0]["title"].as_str().unwrap_or_default().to_string()
                } else {
                    body["title"].as_str().unwrap_or_default().to_string()
                };
                let version = versions["catalog"];
                if title.ends_with(" [v2]") != (version == 2) {
                    failures.push(format!("header says catalog={version} but the answer is {title:?}"));
                }
                *seen.entry(version).or_default() += 1;
            }
            (seen, failures)
        }));
    }
    for i in 0..20 {
        let (status, body) = if i % 2 == 0 {
            deploy_bytes(&app, "catalog", catalog_v2(), None).await
        } else {
            rollback(&app, "catalog").await
        };
        assert_eq!(status, 200, "swap {i}: {body}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total: HashMap<i64, usize> = HashMap::new();
    for c in clients {
        let (seen, failures) = c.await.expect("client");
        assert!(
            failures.is_empty(),
            "{} failed requests, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        for (v, n) in seen {
            *total.entry(v).or_default() += n;
        }
    }
    assert!(total.get(&1).copied().unwrap_or(0) > 0 && total.get(&2).copied().unwrap_or(0) > 0, "{total:?}");
}

/// Push and pull against a real registry with basic auth: bytes and digests
/// survive; skopeo sees the CNCF media types; credentials are required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_push_pull_with_basic_auth() {
    let registry = RegistryServer::start(Some(("ops", "s3cret"))).await;
    let creds = RegistryConfig {
        username: Some("ops".into()),
        password: Some(mercato::config::Secret("s3cret".into())),
        auth_registry: Some(registry.addr.clone()),
        ..RegistryConfig::default()
    };
    let oci = Oci::new(creds.clone());
    // The credentials go to that registry only: a registry elsewhere (a
    // listener that records what it is sent) sees none.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut heads = String::new();
        while let Ok(Ok((mut socket, _))) =
            tokio::time::timeout(std::time::Duration::from_secs(3), elsewhere.accept()).await
        {
            let mut buf = vec![0u8; 8192];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            heads.push_str(&String::from_utf8_lossy(&buf[..n]));
            // A registry that asks for credentials: a client holding some
            // for it would send them now.
            let _ = socket
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"elsewhere\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
        heads
    });
    assert!(oci.pull(&format!("{elsewhere_addr}/mercato/catalog:1")).await.is_err());
    let heads = seen.await.unwrap();
    assert!(heads.contains("GET /v2/"), "the other registry was asked: {heads}");
    assert!(!heads.to_ascii_lowercase().contains("authorization"), "credentials sent elsewhere: {heads}");
    let bytes = catalog_v2();
    let shape = mercato::runtime::shape::parse_component(&bytes).expect("shape");
    let reference = format!("{}/mercato/catalog:2.0.0", registry.addr);
    let pushed = oci
        .push(&reference, bytes.clone(), shape.imports.clone(), shape.exports.clone(), None)
        .await
        .expect("push");
    assert_eq!(pushed.digest, mercato::runtime::digest_of(&bytes));

    let by_tag = oci.pull(&reference).await.expect("pull by tag");
    assert_eq!((by_tag.bytes == bytes, &by_tag.digest), (true, &pushed.digest));
    assert_eq!(by_tag.manifest_digest, pushed.manifest_digest);
    let pinned = format!("{}/mercato/catalog@{}", registry.addr, pushed.manifest_digest);
    let by_digest = oci.pull(&pinned).await.expect("pull by digest");
    assert!(by_digest.bytes == bytes);
    assert_eq!(oci.resolve(&reference).await.expect("resolve"), pushed.manifest_digest);

    // Without credentials the registry refuses.
    let anonymous = Oci::new(RegistryConfig::default());
    assert!(anonymous.pull(&reference).await.is_err());
    assert!(
        anonymous
            .push(&format!("{}/mercato/x:1", registry.addr), bytes.clone(), vec![], vec![], None)
            .await
            .is_err()
    );

    // skopeo (another OCI client) reads the CNCF Wasm layout.
    let raw = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", "ops:s3cret"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo must be installed (Debian package skopeo)");
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    let manifest: Value = serde_json::from_slice(&raw.stdout).expect("manifest json");
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["layers"][0]["digest"], pushed.digest);
    let config = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--config", "--tls-verify=false", "--creds", "ops:s3cret"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo");
    if config.status.success() {
        let config: Value = serde_json::from_slice(&config.stdout).expect("config json");
        assert_eq!(config["architecture"], "wasm");
        assert!(
            config["component"]["exports"]
                .as_array()
                .expect("exports")
                .contains(&json!("mercato:commerce/catalog@0.6.0"))
        );
    }

    // A host with the credentials deploys by tag and records the digest;
    // one without gets 502 and changes nothing.
    let app = spawn_app_with(Backend::Sqlite, |c| c.registry = creds.clone()).await;
    let (product, _) = shop(&app).await;
    let (status, d) = deploy_oci(&app, "catalog", &reference).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["digest"], pushed.digest);
    assert_eq!(s(&d["source"]), format!("oci:{pinned}"));
    assert_eq!(served(&app, &format!("/v1/products/{product}")).await, (2, true));
    let stranger = spawn_app(Backend::Sqlite).await;
    assert_error(&deploy_oci(&stranger, "catalog", &reference).await, 502, "registry_error");
    assert_error(
        &deploy_oci(&app, "catalog", &format!("{}/mercato/catalog:nope", registry.addr)).await,
        502,
        "registry_error",
    );
    assert_eq!(component(&components(&stranger).await, "catalog")["active"]["version"], 1);

    // `registry.allowed`: a reference to another registry is refused (422,
    // before anything is fetched); the listed one still deploys.
    let fenced = spawn_app_with(Backend::Sqlite, |c| {
        c.registry = creds.clone();
        c.registry.allowed = vec!["registry.invalid".into()];
    })
    .await;
    let refused = deploy_oci(&fenced, "catalog", &reference).await;
    assert_error(&refused, 422, "invalid_reference");
    assert!(s(&refused.1["error"]["message"]).contains("registry.allowed"), "{}", refused.1);
    assert_eq!(component(&components(&fenced).await, "catalog")["active"]["version"], 1);
    let open = spawn_app_with(Backend::Sqlite, |c| {
        c.registry = creds.clone();
        c.registry.allowed = vec![registry.addr.to_string()];
    })
    .await;
    let (status, d) = deploy_oci(&open, "catalog", &reference).await;
    assert_eq!((status, &d["digest"]), (200, &json!(pushed.digest)), "{d}");
}

/// An OCI pull is bounded (`registry.max_artifact_bytes`): a manifest that
/// claims a 100 GiB layer is refused before anything is allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_claiming_a_huge_layer_is_refused_without_allocating() {
    // A real registry holding a real component, under a manifest that says
    // its layer is 100 GiB (the registry checks that blobs exist, not their
    // declared sizes). The old pull allocated what the manifest said.
    let registry = RegistryServer::start(None).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}/v2/huge", registry.addr);
    let addr = registry.addr.clone();
    let push_blob = |bytes: Vec<u8>| {
        let (client, base, addr) = (client.clone(), base.clone(), addr.clone());
        async move {
            let digest = mercato::runtime::digest_of(&bytes);
            let started = client.post(format!("{base}/blobs/uploads/")).send().await.expect("start upload");
            assert_eq!(started.status().as_u16(), 202);
            let location = started.headers()["location"].to_str().expect("location").to_string();
            let location =
                if location.starts_with("http") { location } else { format!("http://{addr}{location}") };
            let sep = if location.contains('?') { '&' } else { '?' };
            let done = client
                .put(format!("{location}{sep}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(bytes.clone())
                .send()
                .await
                .expect("upload");
            assert_eq!(done.status().as_u16(), 201, "{}", done.text().await.unwrap_or_default());
            (digest, bytes.len())
        }
    };
    let wasm = catalog_v2();
    let (layer, _) = push_blob(wasm).await;
    let config =
        serde_json::to_vec(&json!({"architecture": "wasm", "os": "wasip2", "layerDigests": [layer]}))
            .unwrap();
    let (config_digest, config_size) = push_blob(config).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/wasm", "digest": layer, "size": 100u64 << 30}]
    });
    let put = client
        .put(format!("{base}/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .expect("manifest");
    assert_eq!(put.status().as_u16(), 201, "{}", put.text().await.unwrap_or_default());

    let app = spawn_app(Backend::Sqlite).await;
    let refused = deploy_oci(&app, "catalog", &format!("{}/huge:v1", registry.addr)).await;
    assert_error(&refused, 422, "invalid_component");
    let message = refused.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("107374182400 bytes") && message.contains("max_artifact_bytes"), "{message}");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200, "the host lives on");
}

/// An artifact written by another tool (`skopeo copy` from an OCI image
/// layout) is deployable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_copied_by_skopeo_is_deployable() {
    let registry = RegistryServer::start(None).await;
    let layout = tempfile::tempdir().expect("tempdir");
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |bytes: &[u8]| -> (String, usize) {
        let digest = mercato::runtime::digest_of(bytes);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).expect("blob");
        (digest, bytes.len())
    };
    let wasm = catalog_v2();
    let (layer, layer_size) = put(&wasm);
    let config = json!({
        "created": "2026-11-25T00:00:00Z", "architecture": "wasm", "os": "wasip2",
        "layerDigests": [layer], "component": {"exports": ["mercato:commerce/catalog@0.6.0"], "imports": []}
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).expect("json"));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/wasm", "digest": layer, "size": layer_size}]
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
    let (manifest_digest, manifest_size) = put(&manifest_bytes);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "v2"}
        }]
    });
    std::fs::write(layout.path().join("index.json"), serde_json::to_vec(&index).expect("json"))
        .expect("index");
    std::fs::write(layout.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let reference = format!("{}/copied/catalog:v2", registry.addr);
    let copy = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v2", layout.path().display()))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo");
    assert!(copy.status.success(), "{}", String::from_utf8_lossy(&copy.stderr));

    let app = spawn_app(Backend::Sqlite).await;
    let (product, _) = shop(&app).await;
    let (status, d) = deploy_oci(&app, "catalog", &format!("oci://{reference}")).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["digest"], layer);
    assert_eq!(served(&app, &format!("/v1/products/{product}")).await, (2, true));
}

/// Wait until `path` is served by a catalog whose answers are (not) v2.
async fn wait_for_v2(app: &TestApp, path: &str, v2: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if served(app, path).await.1 == v2 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Deploy on push: a watched tag that moves to a new version goes live within
/// the poll interval; a bad push is refused and the live version stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_tag_deploys_on_push() {
    let registry = RegistryServer::start(None).await;
    let reference = format!("{}/watched/catalog:live", registry.addr);
    let poll = Duration::from_millis(200);
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.deploy.watch.insert("catalog".into(), reference.clone());
        c.deploy.poll_interval_ms = poll.as_millis() as u64;
    })
    .await;
    let (product, _) = shop(&app).await;
    let path = format!("/v1/products/{product}");
    assert_eq!(served(&app, &path).await, (1, false));
    let oci = Oci::new(RegistryConfig::default());
    let push = |bytes: Vec<u8>| {
        let oci = oci.clone();
        let reference = reference.clone();
        async move {
            let shape = mercato::runtime::shape::parse_component(&bytes).expect("component");
            oci.push(&reference, bytes, shape.imports, shape.exports, None).await.expect("push")
        }
    };
    push(catalog_v2()).await;
    // Poll interval + pull + compile (a debug build compiles slowly).
    assert!(
        wait_for_v2(&app, &path, true, Duration::from_secs(30)).await,
        "the pushed version never went live"
    );
    let live = component(&components(&app).await, "catalog")["active"].clone();
    assert!(
        s(&live["source"]).starts_with(&format!("oci:{}/watched/catalog@sha256:", registry.addr)),
        "{live}"
    );

    // A bad artifact (the inventory component) on the watched tag.
    push(bundled::bytes(ComponentKind::Inventory).to_vec()).await;
    tokio::time::sleep(poll * 6).await;
    assert_eq!(served(&app, &path).await, (live["version"].as_i64().expect("version"), true));
    assert_eq!(component(&components(&app).await, "catalog")["active"], live);

    // The watch goes on: a good push after the bad one goes live.
    push(bundled::bytes(ComponentKind::Catalog).to_vec()).await;
    assert!(
        wait_for_v2(&app, &path, false, Duration::from_secs(30)).await,
        "the watch stopped after a bad push"
    );
}

/// With public keys configured every deploy must be signed by one of them:
/// over the API (header), from OCI (signature artifact) and via the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_policy_and_cli() {
    let keys = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_mercato");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run mercato");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let trusted = keys.path().join("trusted.key");
    let other = keys.path().join("other.key");
    for k in [&trusted, &other] {
        let (ok, out) = run(&["keygen", k.to_str().expect("path")], &[]);
        assert!(ok, "{out}");
    }
    let public =
        std::fs::read_to_string(keys.path().join("trusted.key.pub")).expect("pub").trim().to_string();
    let registry = RegistryServer::start(None).await;
    let app = spawn_app_with(Backend::Sqlite, |c| c.deploy.public_keys = vec![public.clone()]).await;
    let (product, _) = shop(&app).await;
    let digest = mercato::runtime::digest_of(&catalog_v2());
    let sign_with = |path: &Path| {
        let key = signature::signing_key(&std::fs::read_to_string(path).expect("key")).expect("key");
        signature::sign(&key, &digest).signature
    };

    // Over the API.
    assert_error(&deploy_bytes(&app, "catalog", catalog_v2(), None).await, 422, "signature_invalid");
    assert_error(
        &deploy_bytes(&app, "catalog", catalog_v2(), Some(&sign_with(&other))).await,
        422,
        "signature_invalid",
    );
    assert_error(
        &deploy_bytes(&app, "catalog", catalog_v2(), Some("garbage")).await,
        422,
        "signature_invalid",
    );
    assert_eq!(component(&components(&app).await, "catalog")["active"]["version"], 1);
    let (status, d) = deploy_bytes(&app, "catalog", catalog_v2(), Some(&sign_with(&trusted))).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(rollback(&app, "catalog").await.0, 200);

    // From OCI, pushed with the CLI: unsigned, signed by another key, signed by the trusted key.
    let v2_file = Path::new(TEST_COMPONENTS_DIR).join("catalog-v2.wasm");
    let v2_file = v2_file.to_str().expect("path");
    let unsigned = format!("{}/signed/catalog:unsigned", registry.addr);
    let (ok, out) = run(&["push", v2_file, &unsigned], &[]);
    assert!(ok && out.contains(&digest), "{out}");
    assert_error(&deploy_oci(&app, "catalog", &unsigned).await, 422, "signature_invalid");
    let strangers = format!("{}/strangers/catalog:v2", registry.addr);
    let (ok, out) = run(&["push", "--sign", other.to_str().expect("path"), v2_file, &strangers], &[]);
    assert!(ok, "{out}");
    assert_error(&deploy_oci(&app, "catalog", &strangers).await, 422, "signature_invalid");
    assert!(!served(&app, &format!("/v1/products/{product}")).await.1);
    let signed = format!("{}/signed/catalog:v2", registry.addr);
    let (ok, out) = run(&["push", "--sign", trusted.to_str().expect("path"), v2_file, &signed], &[]);
    assert!(ok && out.contains(".sig"), "{out}");

    // The CLI deploys and rolls back through the admin API.
    let server = app.url("");
    let cli_env = [("MERCATO_URL", server.as_str()), ("MERCATO_TOKEN", ADMIN_TOKEN)];
    let (ok, out) = run(&["deploy", "catalog", &format!("oci://{signed}")], &cli_env);
    assert!(ok, "{out}");
    assert!(out.contains(&digest), "{out}");
    // Progress, stage by stage.
    for stage in ["pulling", "pulled", "(signature required)", "precompil", "swapped in as version"] {
        assert!(out.contains(stage), "no {stage:?} in the CLI's output:\n{out}");
    }
    assert!(served(&app, &format!("/v1/products/{product}")).await.1);
    let (ok, out) = run(&["rollback", "catalog"], &cli_env);
    assert!(ok, "{out}");
    assert!(!served(&app, &format!("/v1/products/{product}")).await.1);
    // A file, signed on the way.
    let (ok, out) = run(&["deploy", "catalog", v2_file, "--sign", trusted.to_str().expect("path")], &cli_env);
    assert!(ok, "{out}");
    assert!(served(&app, &format!("/v1/products/{product}")).await.1);
    let (ok, out) = run(&["deploy", "catalog", v2_file], &cli_env);
    assert!(!ok && out.contains("signature_invalid"), "unsigned file through the CLI: {out}");
    let (ok, out) = run(&["deploy", "order", &format!("oci://{signed}")], &cli_env);
    assert!(!ok && out.contains("contract_mismatch"), "{out}");
}

/// Restarts keep the active versions and reuse the precompiled artifacts.
async fn restart_keeps_deployed_versions(backend: Backend) {
    let app = spawn_app_with_private_cache(backend).await;
    let (product, _) = shop(&app).await;
    assert_eq!(deploy_bytes(&app, "catalog", catalog_v2(), None).await.0, 200);
    assert_eq!(
        deploy_bytes(&app, "catalog", bundled::bytes(ComponentKind::Catalog).to_vec(), None).await.0,
        200
    );
    assert_eq!(rollback(&app, "catalog").await.0, 200);
    let before: Vec<_> = app.runtime.versions().into_iter().map(|v| (v.kind, v.version, v.digest)).collect();

    let (dir, pg, config) = app.stop().await;
    let app = start(config, dir, pg).await;
    let versions = app.runtime.versions();
    assert!(versions.iter().all(|v| v.origin == Origin::Cached), "recompiled after restart: {versions:?}");
    assert_eq!(versions.into_iter().map(|v| (v.kind, v.version, v.digest)).collect::<Vec<_>>(), before);
    assert_eq!(served(&app, &format!("/v1/products/{product}")).await, (2, true));
    let list = components(&app).await;
    assert_eq!(component(&list, "catalog")["running"]["precompiled"], "cached");
}
both_backends!(restart_after_deploys, restart_keeps_deployed_versions);

/// A request pinned to the versions active when it started finishes on them,
/// peers included, even after a swap; an unpinned call gets the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_keep_their_versions() {
    use mercato::runtime::Runtime;
    let app = spawn_app(Backend::Sqlite).await;
    let (_, cart) = shop(&app).await;
    let line_title = |rt: Runtime, cart: String| async move {
        let mut cart_instance = rt.instance::<mercato::bindings::cart::Service>().await.expect("instance");
        let answer = cart_instance
            .bindings
            .mercato_commerce_cart_contents()
            .call_get_cart(&mut cart_instance.store, &cart)
            .await
            .expect("no trap")
            .expect("cart");
        answer.lines[0].title.clone()
    };
    let before = app.runtime.new_scope();
    assert_eq!(before.set.header(), "catalog=1,cart=1,inventory=1,payment=1,order=1");
    assert_eq!(deploy_bytes(&app, "catalog", catalog_v2(), None).await.0, 200);
    // The cart instance comes from `before`, and so does its catalog peer.
    let pinned = Runtime::scoped(before.clone(), line_title(app.runtime.clone(), cart.clone())).await;
    assert!(!pinned.ends_with(" [v2]"), "{pinned}");
    let live = line_title(app.runtime.clone(), cart.clone()).await;
    assert!(live.ends_with(" [v2]"), "{live}");
    assert_eq!(app.runtime.new_scope().set.header(), "catalog=2,cart=1,inventory=1,payment=1,order=1");
}

/// `Accept: application/x-ndjson`: a JSON line per stage, then the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_progress_streams_each_stage() {
    let app = spawn_app(Backend::Sqlite).await;
    let follow = |bytes: Vec<u8>| {
        app.request(Method::POST, "/v1/admin/components/catalog/deploy")
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .header("accept", "application/x-ndjson")
            .body(bytes)
    };
    let stages = |text: String| -> Vec<Value> {
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    };
    let response = follow(catalog_v2()).send().await.expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let events = stages(response.text().await.expect("body"));
    let names: Vec<&str> = events.iter().map(|e| e["stage"].as_str().expect("stage")).collect();
    assert_eq!(names, ["received", "checking", "compiling", "precompiled", "swapped", "done"], "{events:?}");
    assert_eq!(events[5]["result"]["version"], 2);
    // A refused deploy ends with the error the plain call would give.
    let events = stages(
        follow(bundled::bytes(ComponentKind::Inventory).to_vec())
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("body"),
    );
    let last = events.last().expect("an outcome");
    assert_eq!(
        (&last["stage"], &last["status"], &last["error"]["code"]),
        (&json!("failed"), &json!(422), &json!("contract_mismatch")),
        "{events:?}"
    );
    assert_eq!(component(&components(&app).await, "catalog")["active"]["version"], 2);
}

/// `registry.allowed` is checked at start-up too: a watched tag outside it
/// (which could only ever log warnings) and an entry that is not a registry
/// both stop the host with the key named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_watches_outside_the_allowed_registries() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = test_config(dir.path(), None);
    config.registry.allowed = vec!["ghcr.io".into()];
    config.deploy.watch.insert("catalog".into(), "registry.example.com/mercato/catalog:stable".into());
    let err = mercato::App::build(config.clone()).await.err().expect("refused").to_string();
    assert!(err.contains("deploy.watch.catalog") && err.contains("registry.allowed"), "{err}");
    config.deploy.watch.clear();
    config.registry.allowed = vec!["https://ghcr.io".into()];
    let err = mercato::App::build(config).await.err().expect("refused").to_string();
    assert!(err.contains("registry.allowed"), "{err}");
}

/// An operator-deployed version built for an earlier `mercato:commerce`
/// (here 0.1.0, whose catalog exported one `catalog` interface) does not
/// stop a newer binary from starting: the bundled version takes over, the
/// operator's version stays in the history, and rolling back to it is
/// refused as a contract mismatch naming the missing export.
async fn an_unfit_active_version_yields_to_the_bundled_one(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (product, _) = shop(&app).await;
    let old = wat::parse_str(
        r#"(component (instance $c) (export "mercato:commerce/catalog@0.1.0" (instance $c)))"#,
    )
    .expect("wat");
    let now = mercato::now_ms();
    let digest = mercato::runtime::digest_of(&old);
    let version = app.db.put_component_version("catalog", &digest, &old, "upload", now).await.expect("put");
    app.db.activate_component("catalog", version, now).await.expect("activate");

    let (dir, pg, config) = app.stop().await;
    let app = start(config, dir, pg).await;
    let running =
        app.runtime.versions().into_iter().find(|v| v.kind == ComponentKind::Catalog).expect("catalog");
    assert_eq!(running.digest, mercato::runtime::digest_of(bundled::bytes(ComponentKind::Catalog)));
    assert_ne!(running.version, version);
    assert_eq!(app.get(&format!("/v1/products/{product}")).await.0, 200);
    let list = components(&app).await;
    let catalog = component(&list, "catalog");
    let history = catalog["history"].as_array().expect("history");
    assert!(
        history.iter().any(|h| h["version"] == version),
        "the operator's version left the history: {catalog}"
    );
    let (status, body) = rollback(&app, "catalog").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "contract_mismatch", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("does not export"), "{body}");
}
both_backends!(unfit_active_version, an_unfit_active_version_yields_to_the_bundled_one);
