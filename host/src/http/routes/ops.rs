//! Operations: `/healthz`, `/readyz`, `/metrics`, and the JSON 404/405.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::{ApiError, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics_for_admin))
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "The process is alive",
    responses((status = 200, description = "Alive", body = crate::http::openapi::Health), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to serve: migrations ran and every component is compiled (both
/// happen before the listener opens) and the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Ready to serve: components compiled, database answering",
    responses((status = 200, description = "Ready", body = crate::http::openapi::Readiness), (status = 503, description = "Not ready", body = crate::http::openapi::Readiness), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let components: Vec<Value> = state
        .runtime
        .versions()
        .into_iter()
        .map(|v| json!({ "name": v.kind.name(), "version": v.version, "digest": v.digest }))
        .collect();
    match state.db.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": state.db.backend(), "components": components })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": "database unreachable" })),
            )
        }
    }
}

/// `/metrics` on the API listener: for operators (the admin token).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics (also on `metrics_listen` without a token)",
    security(("admin_token" = [])),
    responses((status = 200, description = "Prometheus text", content_type = "text/plain"), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn metrics_for_admin(_: crate::http::extract::Admin) -> impl IntoResponse {
    metrics().await
}

/// The Prometheus text of every metric (also served without a token on
/// `metrics_listen`, a port of its own that is not exposed to clients).
pub async fn metrics() -> impl IntoResponse {
    let body = crate::telemetry::metrics().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}
