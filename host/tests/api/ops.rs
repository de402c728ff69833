//! Health, readiness, metrics, unknown routes.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    let names: Vec<_> =
        body["components"].as_array().expect("components").iter().map(|c| s(&c["name"])).collect();
    assert_eq!(names, ["catalog", "cart", "inventory", "payment", "order"]);
    assert!(s(&body["components"][0]["digest"]).starts_with("sha256:"));

    app.get("/v1/products").await;
    app.get("/v1/products/p000000000404").await;
    // On the API listener /metrics is for operators (SPEC §4).
    assert_error(&app.get("/metrics").await, 401, "unauthorized");
    let text = app.metrics().await;
    assert!(
        text.contains("mercato_http_requests_total{method=\"GET\",route=\"/v1/products\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/products/{id}\",status=\"404\""), "{text}");
    assert!(text.contains("mercato_http_request_duration_seconds_bucket"), "{text}");
    assert!(
        text.contains(
            "mercato_component_call_duration_seconds_bucket{component=\"catalog\",function=\"list-products\""
        ),
        "{text}"
    );
}

/// SPEC §6.10: client input never creates metric series. 500 requests with
/// made-up methods and 500 to made-up paths: none of it is a label value,
/// and they add a handful of series (`other`, `unmatched`), not a thousand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_methods_and_paths_create_no_metric_series() {
    let app = spawn_app(Backend::Sqlite).await;
    for i in 0..500 {
        let method = reqwest::Method::from_bytes(format!("JUNK{i}").as_bytes()).unwrap();
        let (status, _) = send(app.request(method, "/v1/products")).await;
        assert!(status == 405 || status == 404, "{status}");
        let (status, _) = app.get(&format!("/junk/{i}/{}", hex::encode(rand::random::<[u8; 4]>()))).await;
        assert_eq!(status, 404);
    }
    let text = app.metrics().await;
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("mercato_http_request")).collect();
    for junk in ["JUNK", "/junk/"] {
        let leaked: Vec<&&str> = series.iter().filter(|l| l.contains(junk)).collect();
        assert!(leaked.is_empty(), "{junk:?} became a label: {:?}", &leaked[..leaked.len().min(3)]);
    }
    let other = series.iter().filter(|l| l.contains("method=\"other\"")).count();
    let unmatched = series.iter().filter(|l| l.contains("route=\"unmatched\"")).count();
    // Counters and histograms (buckets, sum, count) of a few method/status pairs.
    assert!(other > 0 && other <= 40, "{other} series with method=\"other\"");
    assert!(unmatched > 0 && unmatched <= 40, "{unmatched} series with route=\"unmatched\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_error(&app.get("/v2/products").await, 404, "not_found");
    assert_error(&app.delete("/v1/products").await, 405, "method_not_allowed");
    // Paths, queries and bodies that do not parse: the JSON shape, a code.
    for (path, status, code) in [
        ("/v1/products/%FF%FE", 400, "bad_request"),
        ("/v1/carts/%C0%AF", 400, "bad_request"),
        ("/v1/products?limit=abc", 422, "invalid_request"),
        ("/v1/products?limit=1000", 422, "invalid_request"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        let got = response.status().as_u16();
        let kind = response.headers()["content-type"].to_str().unwrap().to_string();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert!(kind.starts_with("application/json"), "{path}: {kind} {body}");
        assert_error(&(got, body), status, code);
    }
    let not_json = send(
        app.request(reqwest::Method::POST, "/v1/carts").header("content-type", "application/json").body("{"),
    )
    .await;
    assert!(not_json.0 == 400 || not_json.0 == 422, "{not_json:?}");
    assert!(not_json.1["error"]["code"].is_string(), "{not_json:?}");
}

/// A slowloris of 300 connections that never finish their request head does
/// not lock shoppers out, and each is closed within the header time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_cut_off_and_lock_no_one_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Backend::Sqlite, |c| c.header_timeout_ms = 1_000).await;
    let mut loris = Vec::new();
    for _ in 0..300 {
        let mut socket = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
        socket.write_all(b"GET /v1/products HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
        loris.push(socket);
    }
    let opened = std::time::Instant::now();
    // Shoppers are served meanwhile.
    for _ in 0..20 {
        let (status, body) = app.get("/v1/products").await;
        assert_eq!(status, 200, "{body}");
    }
    // Every half-open connection is closed by the server (EOF, or a 408
    // before it), within the time-out and a margin.
    for mut socket in loris {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => {
                assert!(buf[..n].starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&buf[..n]))
            }
            Err(_) => panic!("a half-open connection was still open {:?} after it opened", opened.elapsed()),
        }
    }
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
}

/// Past `max_requests_in_flight` an API request is answered at once with
/// 503 `overloaded` and `Retry-After`, and health still answers; when the
/// requests in flight end, the API serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_limit_are_shed_with_retry_after() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.max_requests_in_flight = 2).await;
    // Two requests that stay in flight: bodies that arrive slowly. One at a
    // time, each kept once it has had no answer for a moment (so it holds a
    // place rather than being shed itself).
    let mut slow = Vec::new();
    while slow.len() < 2 {
        use tokio::io::AsyncWriteExt;
        let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        socket
            .write_all(b"POST /v1/carts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut buf = [0u8; 64];
        match socket.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => slow.push(socket),
            other => panic!("a slow request was answered: {other:?} {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    let shed = app.client.get(app.url("/v1/products")).send().await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: serde_json::Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert_eq!(app.get("/healthz").await.0, 200);
    drop(slow);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.get("/v1/products").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the API never served again");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Rate limits per client address: past the write burst a write gets 429
/// with `Retry-After`, and after waiting that long writes work again; after
/// too many failed authentications the address's authenticated requests get
/// 429 (even with a good token), while its anonymous reads are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_recover() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.rate_limit.writes_per_second = 2;
        c.rate_limit.write_burst = 5;
        c.rate_limit.auth_failures_per_minute = 3;
    })
    .await;
    let mut limited = None;
    for i in 0..20 {
        let response = app
            .client
            .post(app.url("/v1/carts"))
            .json(&serde_json::json!({"currency": "EUR"}))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some((i, response));
            break;
        }
        assert_eq!(response.status(), 201);
    }
    let (i, response) = limited.expect("the write burst of 5 is enforced");
    assert!((5..=10).contains(&i), "limited after {i} writes");
    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(app.get("/v1/products").await.0, 200, "reads are not limited");
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    assert_eq!(app.post("/v1/carts", serde_json::json!({"currency": "EUR"})).await.0, 201, "recovered");

    // Failed authentication: 3 are allowed per minute, the 4th blocks.
    for _ in 0..4 {
        let (status, _) =
            send(app.request(reqwest::Method::GET, "/v1/merchant/orders").bearer_auth("mt.m_x.guess")).await;
        assert_eq!(status, 401);
    }
    let blocked =
        app.client.get(app.url("/v1/admin/components")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(blocked.status(), 429, "a good token from a blocked address");
    assert!(blocked.headers().contains_key("retry-after"));
    assert_eq!(app.get("/v1/products").await.0, 200, "anonymous reads are served");
}

/// `GET /openapi.json` (SPEC §4): an OpenAPI 3.1 document with every route
/// of SPEC §4 this host serves, each operation with an id, its security and
/// a documented success answer, and the cart → checkout → order links.
#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
    let expected = [
        ("get", "/v1/products"),
        ("get", "/v1/products/{id}"),
        ("post", "/v1/carts"),
        ("get", "/v1/carts/{id}"),
        ("post", "/v1/carts/{id}/items"),
        ("put", "/v1/carts/{id}/items/{sku}"),
        ("delete", "/v1/carts/{id}/items/{sku}"),
        ("post", "/v1/carts/{id}/discount-codes"),
        ("delete", "/v1/carts/{id}/discount-codes/{code}"),
        ("post", "/v1/carts/{id}/checkout"),
        ("get", "/v1/orders/{id}"),
        ("post", "/v1/orders/{id}/fulfill"),
        ("post", "/v1/orders/{id}/cancel"),
        ("post", "/v1/merchant/products"),
        ("put", "/v1/merchant/products/{id}"),
        ("get", "/v1/merchant/inventory/{sku}"),
        ("put", "/v1/merchant/inventory/{sku}"),
        ("get", "/v1/merchant/orders"),
        ("get", "/v1/merchant/orders/{id}"),
        ("put", "/v1/merchant/pricing-plugin"),
        ("get", "/v1/merchant/pricing-plugin"),
        ("delete", "/v1/merchant/pricing-plugin"),
        ("put", "/v1/merchant/pricing-plugin/config"),
        ("get", "/v1/merchant/pricing-plugin/config"),
        ("delete", "/v1/merchant/pricing-plugin/config"),
        ("get", "/v1/merchant/pricing-plugin/runs"),
        ("get", "/v1/merchant/pricing-plugin/runs/{id}"),
        ("post", "/v1/merchant/pricing-plugin/runs/{id}/replay"),
        ("put", "/v1/merchant/pricing-plugin/shadow"),
        ("get", "/v1/merchant/pricing-plugin/shadow"),
        ("delete", "/v1/merchant/pricing-plugin/shadow"),
        ("post", "/v1/merchant/pricing-plugin/shadow/promote"),
        ("post", "/v1/admin/merchants"),
        ("get", "/v1/admin/merchants/{id}/plugin-limits"),
        ("put", "/v1/admin/merchants/{id}/plugin-limits"),
        ("put", "/v1/merchant/webhooks"),
        ("get", "/v1/merchant/webhooks"),
        ("delete", "/v1/merchant/webhooks"),
        ("get", "/v1/merchant/webhooks/deliveries"),
        ("get", "/v1/admin/events"),
        ("get", "/v1/admin/components"),
        ("post", "/v1/admin/components/{name}/deploy"),
        ("post", "/v1/admin/components/{name}/rollback"),
        ("post", "/v1/admin/components/{name}/promote"),
        ("get", "/metrics"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/openapi.json"),
    ];
    let mut ids = std::collections::HashSet::new();
    for (method, path) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
        assert!(ids.insert(id.to_string()), "operationId {id} twice");
        let answers = op["responses"].as_object().expect("responses");
        assert!(answers.keys().any(|k| k.starts_with('2')), "{method} {path}: no success answer");
        let authenticated = path.starts_with("/v1/merchant") || path.starts_with("/v1/admin");
        assert!(!authenticated || op["security"].is_array(), "{method} {path}: no security");
    }
    let documented: usize =
        doc["paths"].as_object().expect("paths").values().map(|p| p.as_object().map_or(0, |o| o.len())).sum();
    assert_eq!(documented, expected.len(), "an operation this test does not know");
    let links = &doc["paths"]["/v1/carts"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["Checkout"]["operationId"], "checkout", "{links}");
    let schemes = doc["components"]["securitySchemes"].as_object().expect("security schemes");
    assert!(["admin_token", "merchant_token", "order_access_token"].iter().all(|s| schemes.contains_key(*s)));
}
