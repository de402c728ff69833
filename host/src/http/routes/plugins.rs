//! Merchant: `PUT|GET|DELETE /v1/merchant/pricing-plugin`. Operator:
//! `GET|PUT /v1/admin/merchants/{id}/plugin-limits`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::http::extract::{self, Admin, Merchant};
use crate::http::{ApiError, ApiResult, AppState};
use crate::plugins::{LimitsUpdate, PluginInfo, UploadError, limits::CEILING};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/merchant/pricing-plugin",
            put(upload)
                .get(show)
                .delete(remove)
                // The per-merchant size budget is checked after reading; this
                // is only the ceiling an operator can raise it to.
                .layer(DefaultBodyLimit::max(CEILING.binary_bytes as usize)),
        )
        .route("/v1/admin/merchants/{id}/plugin-limits", put(set_limits).get(get_limits))
}

fn invalid_plugin(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_plugin", message)
}

async fn upload(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    if extract::media_type(&headers) != "application/wasm" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the plugin as Content-Type: application/wasm",
        ));
    }
    let bytes = extract::upload_body(body, "a plugin", CEILING.binary_bytes as usize)?;
    if bytes.is_empty() {
        return Err(invalid_plugin("the body is empty; send the plugin's .wasm file"));
    }
    match state.runtime.plugins().upload(&merchant, bytes.to_vec()).await {
        Ok(info) => Ok(Json(json!({ "digest": info.digest, "status": info.status }))),
        Err(UploadError::Invalid(message)) => {
            tracing::info!(%merchant, %message, "plugin upload refused");
            Err(invalid_plugin(message))
        }
        Err(UploadError::Storage(e)) => Err(ApiError::internal(e)),
        Err(UploadError::Internal(e)) => Err(ApiError::internal(e)),
    }
}

async fn show(State(state): State<AppState>, Merchant(merchant): Merchant) -> ApiResult<Json<PluginInfo>> {
    state
        .runtime
        .plugins()
        .info(&merchant)
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("this merchant has no pricing plugin"))
}

async fn remove(State(state): State<AppState>, Merchant(merchant): Merchant) -> ApiResult<StatusCode> {
    if state.runtime.plugins().delete(&merchant).await.map_err(ApiError::internal)? {
        tracing::info!(%merchant, "pricing plugin removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("this merchant has no pricing plugin"))
    }
}

async fn known_merchant(state: &AppState, id: &str) -> ApiResult<()> {
    match state.runtime.db().merchant(id).await.map_err(ApiError::internal)? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("merchant {id:?} not found"))),
    }
}

async fn get_limits(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    known_merchant(&state, &id).await?;
    let limits = state.runtime.plugins().limits(&id).await.map_err(ApiError::internal)?;
    Ok(Json(json!({ "merchant_id": id, "limits": limits })))
}

async fn set_limits(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    extract::Json(update): extract::Json<LimitsUpdate>,
) -> ApiResult<Json<Value>> {
    known_merchant(&state, &id).await?;
    match state.runtime.plugins().set_limits(&id, &update).await.map_err(ApiError::internal)? {
        Ok(limits) => {
            tracing::info!(merchant = %id, ?limits, "plugin limits changed");
            Ok(Json(json!({ "merchant_id": id, "limits": limits })))
        }
        Err(message) => Err(ApiError::bad_request("invalid_request", message)),
    }
}
