//! The host's lifecycle as a real process: not ready until compiled, SIGTERM
//! under load, the shutdown bound, JSON logs, OpenTelemetry traces; and the
//! deployment files (Dockerfile, Kubernetes, Istio) validated offline.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::serve::Serve;

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    send(client.request(Method::GET, url)).await
}

/// SPEC §4 `/readyz`: with an empty artifact cache the host listens at once,
/// is alive but not ready while it compiles, and ready after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_components_are_compiled() {
    let dir = tempfile::tempdir().expect("dir");
    let mut p = Serve::spawn(dir.path(), None, &[]);
    p.wait_for("mercato listening on http://");
    let client = reqwest::Client::new();
    let (status, body) = get(&client, p.url("/readyz")).await;
    assert_eq!((status, &body["status"]), (503, &json!("starting")), "{body}");
    assert_eq!(get(&client, p.url("/healthz")).await.0, 200);
    assert_error(&get(&client, p.url("/v1/products")).await, 503, "starting");
    p.wait_for("mercato ready");
    let (status, body) = get(&client, p.url("/readyz")).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    assert_eq!(get(&client, p.url("/v1/products")).await.0, 200);
    let compiled = std::fs::read_dir(dir.path().join("cache")).expect("cache").count();
    assert!(compiled >= 5, "the components were compiled into the empty cache ({compiled} files)");
}

/// SPEC §6.10: secrets never reach the log. A real process started with a
/// database password in its URL (PostgreSQL here trusts the connection, so
/// any password works), an admin token and a payment key, at debug level;
/// after requests with the tokens (a good one and a wrong one) and a
/// shutdown, nothing it printed contains any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let pg = PgDatabase::create().await;
    let password = format!("pw-{}", hex::encode(rand::random::<[u8; 8]>()));
    let url = pg.url.replacen("postgres://postgres@", &format!("postgres://postgres:{password}@"), 1);
    assert!(url.contains(&password), "{url}");
    let key = format!("sk_test_{}", hex::encode(rand::random::<[u8; 8]>()));
    let dir = tempfile::tempdir().expect("dir");
    let env = [("RUST_LOG", "debug"), ("MERCATO_PAYMENT__SECRET_KEY", key.as_str())];
    let mut p = Serve::start(dir.path(), Some(&url), &env);
    let client = reqwest::Client::new();
    let (status, m) =
        send(client.post(p.url("/v1/admin/merchants")).bearer_auth(ADMIN_TOKEN).json(&json!({"name": "M"})))
            .await;
    assert_eq!(status, 201, "{m}");
    let token = s(&m["token"]);
    let (status, _) = send(client.get(p.url("/v1/merchant/orders")).bearer_auth(&token)).await;
    assert_eq!(status, 200);
    let (status, _) = send(client.get(p.url("/v1/merchant/orders")).bearer_auth(format!("{token}x"))).await;
    assert_eq!(status, 401);
    p.sigterm();
    let (exit, _) = p.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
    let printed: Vec<String> =
        p.stdout.lock().unwrap().iter().chain(p.stderr.lock().unwrap().iter()).cloned().collect();
    assert!(printed.iter().any(|l| l.contains("starting")), "the configuration is logged: {printed:?}");
    assert!(printed.iter().any(|l| l.contains("[redacted]")), "{printed:?}");
    for secret in [password.as_str(), ADMIN_TOKEN, token.as_str(), key.as_str()] {
        let leaks: Vec<&String> = printed.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret:?} is in the log: {leaks:?}");
    }
}

/// `metrics_listen`: Prometheus scrapes a port of its own without a token,
/// while the API listener's /metrics needs the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_a_listener_of_their_own() {
    let dir = tempfile::tempdir().expect("dir");
    let p = Serve::start(dir.path(), None, &[("MERCATO_METRICS_LISTEN", "127.0.0.1:0")]);
    let client = reqwest::Client::new();
    let printed = p.stdout.lock().unwrap().clone();
    let url = printed
        .iter()
        .find_map(|l| l.strip_prefix("mercato metrics on "))
        .unwrap_or_else(|| panic!("no metrics address in {printed:?}"))
        .to_string();
    assert_eq!(send(client.get(p.url("/v1/products"))).await.0, 200);
    let scraped = client.get(&url).send().await.expect("scrape");
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.expect("text");
    assert!(text.contains("mercato_http_requests_total"), "{text}");
    assert_eq!(send(client.get(p.url("/metrics"))).await.0, 401);
    assert_eq!(send(client.get(p.url("/metrics")).bearer_auth(ADMIN_TOKEN)).await.0, 200);
    // The metrics port serves nothing else.
    let other = url.replace("/metrics", "/v1/products");
    assert_eq!(client.get(&other).send().await.expect("get").status(), 404);
}

/// SIGTERM under load: requests in flight complete, new connections are
/// refused, the process exits within its bound, no acknowledged order is
/// lost; logs are JSON lines when configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().expect("dir");
    let env = [("MERCATO_LOG_JSON", "true"), ("MERCATO_SHUTDOWN_TIMEOUT_MS", "8000")];
    let mut p = Serve::start(dir.path(), None, &env);
    let client = reqwest::Client::new();
    let (status, m) =
        send(client.post(p.url("/v1/admin/merchants")).bearer_auth(ADMIN_TOKEN).json(&json!({"name": "M"})))
            .await;
    assert_eq!(status, 201, "{m}");
    // One sku per shopper: no stock contention, so every answer is about shutdown.
    let skus: Vec<String> = (0..40).map(|i| format!("TERM-{i}")).collect();
    let sku_refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    let body = product_body("Mug", &sku_refs, 500, "EUR");
    let (status, _) =
        send(client.post(p.url("/v1/merchant/products")).bearer_auth(s(&m["token"])).json(&body)).await;
    assert_eq!(status, 201);
    let mut carts = Vec::new();
    for sku in &skus {
        let (_, c) = send(client.post(p.url("/v1/carts")).json(&json!({"currency": "EUR"}))).await;
        let id = s(&c["id"]);
        let (status, _) = send(
            client.post(p.url(&format!("/v1/carts/{id}/items"))).json(&json!({"sku": sku, "quantity": 1})),
        )
        .await;
        assert_eq!(status, 200);
        carts.push(id);
    }
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for (i, cart) in carts.iter().enumerate() {
        // A client per checkout: its own connection, as separate shoppers.
        let req = reqwest::Client::new()
            .post(p.url(&format!("/v1/carts/{cart}/checkout")))
            .header("Idempotency-Key", format!("term-{i}"))
            .json(&json!({"email": "s@example.com", "payment": {"token": "tok_visa"}}));
        let tx = done_tx.clone();
        tokio::spawn(async move {
            let outcome = match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (Some(status), r.json::<Value>().await.ok())
                }
                Err(_) => (None, None),
            };
            let _ = tx.send((outcome, Instant::now()));
        });
    }
    drop(done_tx);
    // The first answer: the others are in flight now.
    let first = done.recv().await.expect("a checkout");
    p.sigterm();
    let signalled = Instant::now();
    // New connections are refused soon after the signal.
    let addr = p.addr.expect("addr");
    let mut refused = false;
    while signalled.elapsed() < Duration::from_secs(3) {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections were still accepted 3 s after SIGTERM");
    let mut outcomes = vec![first];
    while let Some(o) = done.recv().await {
        outcomes.push(o);
    }
    let (exit, took) = p.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < Duration::from_secs(9), "exited after {took:?}, past the 8 s bound");
    let mut acknowledged = Vec::new();
    let mut after_signal = 0;
    for ((status, body), at) in outcomes {
        match status {
            Some(201) => {
                acknowledged.push(s(&body.expect("order")["id"]));
                if at > signalled {
                    after_signal += 1;
                }
            }
            // Never accepted (the listener closed first): the client knows it failed.
            None => {}
            Some(other) => panic!("a checkout got {other} during shutdown: {body:?}"),
        }
    }
    assert!(after_signal > 0, "no request was in flight at SIGTERM; the test proves nothing");
    let logs = p.stderr.lock().expect("lock").clone();
    assert!(!logs.is_empty());
    for line in &logs {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(logs.iter().any(|l| l.contains("shutting down")), "{logs:?}");

    // Every acknowledged order survived.
    let p = Serve::start(dir.path(), None, &[]);
    for id in &acknowledged {
        let (status, order) =
            send(client.get(p.url(&format!("/v1/orders/{id}"))).bearer_auth(ADMIN_TOKEN)).await;
        assert_eq!((status, &order["status"]), (200, &json!("paid")), "{id}: {order}");
    }
}

/// A request that would run for 30 s (the probe component spinning until
/// its deadline) cannot hold the process past its 1 s shutdown bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_bound_cuts_requests_that_do_not_finish() {
    let dir = tempfile::tempdir().expect("dir");
    let probe = Path::new(mercato::runtime::bundled::TEST_COMPONENTS_DIR).join("probe.wasm");
    let probe = probe.to_str().expect("path");
    let mut p = Serve::start(
        dir.path(),
        None,
        &[
            ("MERCATO_SHUTDOWN_TIMEOUT_MS", "1000"),
            ("MERCATO_COMPONENTS__DEADLINE_MS", "30000"),
            ("MERCATO_COMPONENTS__CATALOG", probe),
        ],
    );
    let spinning = tokio::spawn(reqwest::Client::new().get(p.url("/v1/products/loop")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!spinning.is_finished(), "the spinning request should still be running");
    p.sigterm();
    let (exit, took) = p.wait_exit(Duration::from_secs(40));
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(5), "the spinning request held the process for {took:?} (bound 1 s)");
    assert!(spinning.await.expect("task").is_err(), "the cut request gets no answer");
    let logs = p.stderr.lock().expect("lock").join("\n");
    assert!(logs.contains("still in flight after the shutdown bound"), "{logs}");
}

/// One OTLP export the collector received: (content type, body).
type Export = (String, Vec<u8>);

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, request spans are exported over
/// OTLP/HTTP (protobuf) to that collector — here a small one on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_when_an_otlp_endpoint_is_set() {
    let received: Arc<Mutex<Vec<Export>>> = Arc::default();
    let sink = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                sink.lock().expect("lock").push((ct, body.to_vec()));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, collector).await });

    let dir = tempfile::tempdir().expect("dir");
    let mut p = Serve::start(
        dir.path(),
        None,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let client = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(get(&client, p.url("/v1/products")).await.0, 200);
    }
    p.sigterm();
    let (exit, _) = p.wait_exit(Duration::from_secs(20));
    assert!(exit.success());
    let got = received.lock().expect("lock").clone();
    server.abort();
    assert!(!got.is_empty(), "the collector received nothing");
    assert!(
        got.iter().all(|(ct, _)| ct == "application/x-protobuf"),
        "{:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    let all: Vec<u8> = got.into_iter().flat_map(|(_, b)| b).collect();
    let needle = b"GET /v1/products";
    assert!(all.windows(needle.len()).any(|w| w == needle), "no span named after the route");
    let service = b"mercato";
    assert!(all.windows(service.len()).any(|w| w == service), "no service.name");
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

fn check(root: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo_root().join("deploy/check.py"))
        .args(["--mercato", env!("CARGO_BIN_EXE_mercato"), "--root"])
        .arg(root)
        .output()
        .expect("python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// deploy/: hadolint, kubernetes-validate, Istio fields and the configuration
/// keys against the binary's (deploy/check.py) — and the check can fail.
#[test]
fn deployment_files_validate_offline() {
    let (ok, out) = check(&repo_root());
    assert!(ok, "deploy/check.py:\n{out}");

    // A copy with a key the binary does not know, a missing probe, a retried
    // write route and a Dockerfile running as root: each is caught.
    let copy = tempfile::tempdir().expect("dir");
    let status = Command::new("cp")
        .args(["-r"])
        .args(["deploy", "README.md", "Jenkinsfile", ".github", "scripts"].map(|f| repo_root().join(f)))
        .arg(copy.path())
        .status()
        .expect("cp");
    assert!(status.success());
    let edit = |file: &str, from: &str, to: &str| {
        let path = copy.path().join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
    };
    edit("deploy/k8s/base/configmap.yaml", "  MERCATO_LISTEN:", "  MERCATO_LISTEN_ADDR:");
    edit("deploy/k8s/base/deployment.yaml", "path: /readyz", "path: /healthz");
    edit(
        "deploy/istio/virtualservice.yaml",
        "timeout: 10s\n      retries:\n        attempts: 0",
        "timeout: 10s\n      retries:\n        attempts: 3",
    );
    edit("deploy/Dockerfile", "USER 65532:65532\n", "");
    edit("Jenkinsfile", "scripts/ci/validate.sh", "cargo test");
    let (ok, out) = check(copy.path());
    assert!(!ok, "the broken copy passed:\n{out}");
    for expected in [
        "MERCATO_LISTEN_ADDR is not a configuration key",
        "MERCATO_LISTEN is neither",
        "readiness probe must be GET /readyz",
        "route writes: retries on a route that is not idempotent",
        "non-root USER",
        "Jenkinsfile does not use scripts/ci/validate.sh",
    ] {
        assert!(out.contains(expected), "{expected:?} not reported:\n{out}");
    }
}
