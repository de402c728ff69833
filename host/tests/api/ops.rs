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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_error(&app.get("/v2/products").await, 404, "not_found");
    assert_error(&app.delete("/v1/products").await, 405, "method_not_allowed");
}
