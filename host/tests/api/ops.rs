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
    let text = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(
        text.contains("mercato_http_requests_total{method=\"GET\",route=\"/v1/products\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/products/{id}\",status=\"404\""), "{text}");
    assert!(text.contains("mercato_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("mercato_component_call_duration_seconds_bucket{component=\"catalog\",function=\"call_list_products\""), "{text}");
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
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
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
