//! Operations: `/healthz`, `/readyz`, `/metrics`, and the JSON 404/405.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::http::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_for_admin))
}

/// The process is alive.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to serve: migrations ran and every component is compiled (both
/// happen before the listener opens) and the database answers.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let components: Vec<Value> = state
        .runtime
        .versions()
        .into_iter()
        .map(|v| json!({ "name": v.kind.name(), "version": v.version, "digest": v.digest }))
        .collect();
    match state.runtime.db().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(
                json!({ "status": "ready", "database": state.runtime.db().backend(), "components": components }),
            ),
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
