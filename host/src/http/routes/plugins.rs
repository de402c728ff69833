//! Merchant: `PUT|GET|DELETE /v1/merchant/pricing-plugin`, its `config`,
//! its recorded `runs` and their `replay`. Operator:
//! `GET|PUT /v1/admin/merchants/{id}/plugin-limits`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::extract::{self, Admin, Merchant};
use crate::http::{ApiError, ApiResult, AppState};
use crate::plugins::runs::Recorded;
use crate::plugins::{
    LimitsUpdate, MAX_CONFIG_BYTES, PluginInfo, Replay, ReplayError, ShadowError, ShadowInfo, UploadError,
    limits::CEILING,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        // The body is read against the merchant's own size budget as it
        // streams (see `read_plugin`), not buffered up to a global limit.
        .routes(routes!(upload, show, remove))
        .routes(routes!(set_config, get_config, delete_config))
        .routes(routes!(list_runs))
        .routes(routes!(one_run))
        .routes(routes!(replay))
        .routes(routes!(put_shadow, get_shadow, delete_shadow))
        .routes(routes!(promote_shadow))
        .routes(routes!(set_limits, get_limits))
}

#[utoipa::path(
    put,
    path = "/v1/merchant/pricing-plugin/shadow",
    tag = "merchant",
    operation_id = "put_plugin_shadow",
    summary = "Run a candidate plugin in the shadow of the active one on live pricing (never applied)",
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The candidate, at most the merchant's `binary_bytes`"),
    security(("merchant_token" = [])),
    responses((status = 200, description = "The shadow and its (empty) report", body = crate::plugins::ShadowInfo), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 409, description = "No active plugin to shadow (`conflict`)", body = crate::http::openapi::ErrorBody), (status = 413, description = "Over the merchant's `binary_bytes` (`payload_too_large`)", body = crate::http::openapi::ErrorBody), (status = 415, description = "Not `application/wasm`", body = crate::http::openapi::ErrorBody), (status = 422, description = "`invalid_plugin`", body = crate::http::openapi::ErrorBody), (status = 503, description = "The compile queue is full (`overloaded`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn put_shadow(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ShadowInfo>> {
    if extract::media_type(&headers) != "application/wasm" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the candidate as Content-Type: application/wasm",
        ));
    }
    let plugins = &state.plugins;
    let place = match plugins.upload_place() {
        Ok(place) => place,
        Err(e) => {
            drain(body).await;
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string()));
        }
    };
    let limit =
        plugins.limits(&merchant).await.map_err(ApiError::internal)?.binary_bytes.min(CEILING.binary_bytes);
    let bytes = read_plugin(&headers, body, limit).await?;
    if bytes.is_empty() {
        return Err(invalid_plugin("the body is empty; send the candidate's .wasm file"));
    }
    match plugins.put_shadow(place, &merchant, bytes).await {
        Ok(info) => Ok(Json(info)),
        Err(e @ ShadowError::NoActive) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())),
        Err(ShadowError::Invalid(m)) => Err(invalid_plugin(m)),
        Err(ShadowError::Storage(e)) => Err(ApiError::internal(e)),
        Err(ShadowError::Internal(e)) => Err(ApiError::internal(e)),
    }
}

#[utoipa::path(
    get,
    path = "/v1/merchant/pricing-plugin/shadow",
    tag = "merchant",
    operation_id = "get_plugin_shadow",
    summary = "The shadow's report: runs, carts whose discounts differ (with examples), the discount delta, errors",
    security(("merchant_token" = [])),
    responses((status = 200, description = "The shadow and its report", body = crate::plugins::ShadowInfo), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No shadow (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn get_shadow(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
) -> ApiResult<Json<ShadowInfo>> {
    state
        .plugins
        .shadow_info(&merchant)
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("this merchant has no plugin in the shadow"))
}

#[utoipa::path(
    delete,
    path = "/v1/merchant/pricing-plugin/shadow",
    tag = "merchant",
    operation_id = "delete_plugin_shadow",
    summary = "End the shadow (its report goes with it)",
    security(("merchant_token" = [])),
    responses((status = 204, description = "Ended"), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No shadow (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn delete_shadow(State(state): State<AppState>, Merchant(merchant): Merchant) -> ApiResult<StatusCode> {
    if state.plugins.delete_shadow(&merchant).await.map_err(ApiError::internal)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("this merchant has no plugin in the shadow"))
    }
}

#[utoipa::path(
    post,
    path = "/v1/merchant/pricing-plugin/shadow/promote",
    tag = "merchant",
    operation_id = "promote_plugin_shadow",
    summary = "Make the shadow candidate the active plugin, atomically (each pricing sees one or the other)",
    security(("merchant_token" = [])),
    responses((status = 200, description = "The plugin now active", body = crate::http::openapi::UploadedPlugin), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No shadow (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn promote_shadow(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
) -> ApiResult<Json<Value>> {
    let digest = state
        .plugins
        .promote_shadow(&merchant)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("this merchant has no plugin in the shadow"))?;
    let status = state
        .plugins
        .info(&merchant)
        .await
        .map_err(ApiError::internal)?
        .map(|i| i.status)
        .unwrap_or("active");
    Ok(Json(json!({ "digest": digest, "status": status })))
}

#[utoipa::path(
    put,
    path = "/v1/merchant/pricing-plugin/config",
    tag = "merchant",
    operation_id = "set_plugin_config",
    summary = "Set the configuration (any JSON, at most 64 KiB) given to every run of the merchant's plugin",
    request_body(content = Value, content_type = "application/json", description = "Any JSON value; the plugin gets its text as sent"),
    security(("merchant_token" = [])),
    responses((status = 200, description = "The configuration", body = crate::http::openapi::PluginConfig), (status = 400, description = "`malformed_json`", body = crate::http::openapi::ErrorBody), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 413, description = "Over 64 KiB (`payload_too_large`)", body = crate::http::openapi::ErrorBody), (status = 415, description = "Not `application/json`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn set_config(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<Value>> {
    if extract::media_type(&headers) != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the configuration as Content-Type: application/json",
        ));
    }
    let body = extract::upload_body(body, "a plugin configuration", MAX_CONFIG_BYTES)?;
    if body.len() > MAX_CONFIG_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "a plugin configuration can be at most {MAX_CONFIG_BYTES} bytes (this one is {})",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", "the configuration is not UTF-8")
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the configuration is not valid JSON: {e}"),
        )
    })?;
    state.plugins.set_config(&merchant, Some(text)).await.map_err(ApiError::internal)?;
    tracing::info!(%merchant, bytes = text.len(), "plugin configuration set");
    Ok(Json(json!({ "config": value, "bytes": text.len() })))
}

#[utoipa::path(
    get,
    path = "/v1/merchant/pricing-plugin/config",
    tag = "merchant",
    operation_id = "get_plugin_config",
    summary = "The configuration given to the merchant's plugin",
    security(("merchant_token" = [])),
    responses((status = 200, description = "The configuration", body = crate::http::openapi::PluginConfig), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "None set (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn get_config(State(state): State<AppState>, Merchant(merchant): Merchant) -> ApiResult<Json<Value>> {
    let text = state
        .plugins
        .config(&merchant)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("this merchant has set no plugin configuration"))?;
    let value: Value = serde_json::from_str(&text).map_err(ApiError::internal)?;
    Ok(Json(json!({ "config": value, "bytes": text.len() })))
}

#[utoipa::path(
    delete,
    path = "/v1/merchant/pricing-plugin/config",
    tag = "merchant",
    operation_id = "delete_plugin_config",
    summary = "Remove the plugin's configuration (runs get none)",
    security(("merchant_token" = [])),
    responses((status = 204, description = "Removed"), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn delete_config(State(state): State<AppState>, Merchant(merchant): Merchant) -> ApiResult<StatusCode> {
    state.plugins.set_config(&merchant, None).await.map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/merchant/pricing-plugin/runs",
    tag = "merchant",
    operation_id = "list_plugin_runs",
    summary = "The merchant's recorded plugin runs, newest first",
    params(crate::http::extract::PageQuery),
    security(("merchant_token" = [])),
    responses((status = 200, description = "A page of runs", body = crate::http::openapi::RunPage), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 422, description = "A bad `limit` or `cursor` (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn list_runs(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    query: Result<
        axum::extract::Query<crate::http::extract::PageQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> ApiResult<Json<Value>> {
    let (limit, cursor) = crate::http::extract::PageQuery::read(query)?;
    let (items, next) =
        state.plugins.runs(&merchant, cursor, i64::from(limit)).await.map_err(ApiError::internal)?;
    Ok(Json(json!({ "items": items, "next_cursor": next.map(|n| n.to_string()) })))
}

#[utoipa::path(
    get,
    path = "/v1/merchant/pricing-plugin/runs/{id}",
    tag = "merchant",
    operation_id = "get_plugin_run",
    summary = "One recorded run (what `mercato plugin replay --offline` takes)",
    params(("id" = String, Path, description = "The run id")),
    security(("merchant_token" = [])),
    responses((status = 200, description = "The run", body = crate::plugins::runs::Recorded), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn one_run(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(id): Path<String>,
) -> ApiResult<Json<Recorded>> {
    state
        .plugins
        .run_record(&merchant, &id)
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no recorded run {id:?} of this merchant")))
}

#[utoipa::path(
    post,
    path = "/v1/merchant/pricing-plugin/runs/{id}/replay",
    tag = "merchant",
    operation_id = "replay_plugin_run",
    summary = "Run a recorded run again (its digest, or a candidate sent as the body) and compare",
    params(("id" = String, Path, description = "The run id")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "Optional: a candidate plugin to run instead of the recorded one"),
    security(("merchant_token" = [])),
    responses((status = 200, description = "The replay and its diff against the recorded output", body = crate::plugins::Replay), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = 410, description = "The recorded binary is no longer stored (`gone`)", body = crate::http::openapi::ErrorBody), (status = 422, description = "`invalid_plugin` (the candidate)", body = crate::http::openapi::ErrorBody), (status = 503, description = "The compile queue is full (`overloaded`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn replay(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Replay>> {
    let plugins = &state.plugins;
    let candidate = if extract::media_type(&headers) == "application/wasm" {
        let place = match plugins.upload_place() {
            Ok(place) => place,
            Err(e) => {
                drain(body).await;
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string()));
            }
        };
        let limit = plugins
            .limits(&merchant)
            .await
            .map_err(ApiError::internal)?
            .binary_bytes
            .min(CEILING.binary_bytes);
        let bytes = read_plugin(&headers, body, limit).await?;
        if bytes.is_empty() { None } else { Some((place, bytes)) }
    } else {
        drain(body).await;
        None
    };
    match plugins.replay(&merchant, &id, candidate).await {
        Ok(replay) => Ok(Json(replay)),
        Err(ReplayError::NotFound(m)) => {
            Err(ApiError::not_found(format!("no recorded run {m:?} of this merchant")))
        }
        Err(ReplayError::Invalid(m)) => Err(invalid_plugin(m)),
        Err(ReplayError::Gone(m)) => Err(ApiError::new(StatusCode::GONE, "gone", m)),
        Err(ReplayError::Busy(m)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", m)),
        Err(ReplayError::Storage(e)) => Err(ApiError::internal(e)),
        Err(ReplayError::Internal(e)) => Err(ApiError::internal(e)),
    }
}

fn invalid_plugin(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_plugin", message)
}

#[utoipa::path(
    put,
    path = "/v1/merchant/pricing-plugin",
    tag = "merchant",
    operation_id = "upload_plugin",
    summary = "Upload the merchant's pricing plugin (a WebAssembly component)",
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component, at most the merchant's `binary_bytes`"),
    security(("merchant_token" = [])),
    responses((status = 200, description = "The plugin", body = crate::http::openapi::UploadedPlugin), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 413, description = "Over the merchant's `binary_bytes` (`payload_too_large`)", body = crate::http::openapi::ErrorBody), (status = 415, description = "Not `application/wasm`", body = crate::http::openapi::ErrorBody), (status = 422, description = "`invalid_plugin`", body = crate::http::openapi::ErrorBody), (status = 503, description = "The compile queue is full (`overloaded`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn upload(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    if extract::media_type(&headers) != "application/wasm" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the plugin as Content-Type: application/wasm",
        ));
    }
    let plugins = &state.plugins;
    let busy = |message| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message);
    // A place in the compile queue before the body is read: uploads held in
    // memory at once are bounded.
    let place = match plugins.upload_place() {
        Ok(place) => place,
        Err(e) => {
            drain(body).await;
            return Err(busy(e.to_string()));
        }
    };
    let limit =
        plugins.limits(&merchant).await.map_err(ApiError::internal)?.binary_bytes.min(CEILING.binary_bytes);
    let bytes = read_plugin(&headers, body, limit).await?;
    if bytes.is_empty() {
        return Err(invalid_plugin("the body is empty; send the plugin's .wasm file"));
    }
    match plugins.upload(place, &merchant, bytes).await {
        Ok(info) => Ok(Json(json!({ "digest": info.digest, "status": info.status }))),
        Err(UploadError::Invalid(message)) => {
            tracing::info!(%merchant, %message, "plugin upload refused");
            Err(invalid_plugin(message))
        }
        Err(UploadError::Busy(message)) => Err(busy(message)),
        Err(UploadError::Storage(e)) => Err(ApiError::internal(e)),
        Err(UploadError::Internal(e)) => Err(ApiError::internal(e)),
    }
}

/// How long a refused upload's rest is read and dropped before the answer,
/// so an ordinary client (which sends the whole body before it reads) gets
/// the 422 rather than a reset connection; the bytes are not kept.
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// Read an upload of at most `limit` bytes (the merchant's `binary_bytes`):
/// a declared `Content-Length` over it is refused before reading, and a
/// body that streams past it is refused at the first byte too many. Memory
/// held is at most `limit`.
async fn read_plugin(headers: &HeaderMap, mut body: Body, limit: u64) -> ApiResult<Vec<u8>> {
    use http_body_util::BodyExt;
    let too_large = |size: Option<u64>| {
        let size = size.map(|s| format!("{s} bytes")).unwrap_or_else(|| "larger".to_string());
        invalid_plugin(format!(
            "the plugin is {size}, over this merchant's limit of {limit} bytes (binary_bytes); \
             the operator can raise it with PUT /v1/admin/merchants/{{id}}/plugin-limits"
        ))
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&s| s > limit) {
        drain(body).await;
        return Err(too_large(Some(size)));
    }
    // Capacity from the declared length (already checked against the limit), at most 1 MiB ahead.
    let mut bytes = Vec::with_capacity(usize::try_from(declared.unwrap_or(0).min(1 << 20)).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("could not read the body: {e}"))
        })?;
        if let Some(data) = frame.data_ref() {
            if (bytes.len() + data.len()) as u64 > limit {
                drain(body).await;
                return Err(too_large(None));
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok(bytes)
}

/// Read and drop what is left of `body`, for at most [`DRAIN_FOR`] and
/// [`CEILING`]`.binary_bytes`.
async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    let until = tokio::time::Instant::now() + DRAIN_FOR;
    let mut left = CEILING.binary_bytes;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, body.frame()).await {
        let n = frame.data_ref().map_or(0, |d| d.len() as u64);
        if n >= left {
            return;
        }
        left -= n;
    }
}

#[utoipa::path(
    get,
    path = "/v1/merchant/pricing-plugin",
    tag = "merchant",
    operation_id = "get_plugin",
    summary = "The merchant's plugin: digest, status, limits, recent errors, last run",
    security(("merchant_token" = [])),
    responses((status = 200, description = "The plugin", body = crate::plugins::PluginInfo), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No plugin (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn show(State(state): State<AppState>, Merchant(merchant): Merchant) -> ApiResult<Json<PluginInfo>> {
    state
        .plugins
        .info(&merchant)
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("this merchant has no pricing plugin"))
}

#[utoipa::path(
    delete,
    path = "/v1/merchant/pricing-plugin",
    tag = "merchant",
    operation_id = "delete_plugin",
    summary = "Remove the merchant's plugin",
    security(("merchant_token" = [])),
    responses((status = 204, description = "Removed"), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No plugin (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn remove(State(state): State<AppState>, Merchant(merchant): Merchant) -> ApiResult<StatusCode> {
    if state.plugins.delete(&merchant).await.map_err(ApiError::internal)? {
        tracing::info!(%merchant, "pricing plugin removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("this merchant has no pricing plugin"))
    }
}

async fn known_merchant(state: &AppState, id: &str) -> ApiResult<()> {
    if !crate::auth::is_merchant_id(id) {
        return Err(ApiError::not_found(format!("merchant {id:?} not found")));
    }
    match state.db.merchant(id).await.map_err(ApiError::internal)? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("merchant {id:?} not found"))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/admin/merchants/{id}/plugin-limits",
    tag = "operator",
    operation_id = "get_plugin_limits",
    summary = "A merchant's plugin budgets",
    params(("id" = String, Path, description = "The merchant id")),
    security(("admin_token" = [])),
    responses((status = 200, description = "Its budgets", body = crate::http::openapi::MerchantLimits), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn get_limits(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    known_merchant(&state, &id).await?;
    let limits = state.plugins.limits(&id).await.map_err(ApiError::internal)?;
    Ok(Json(json!({ "merchant_id": id, "limits": limits })))
}

#[utoipa::path(
    put,
    path = "/v1/admin/merchants/{id}/plugin-limits",
    tag = "operator",
    operation_id = "set_plugin_limits",
    summary = "Raise or lower a merchant's plugin budgets",
    params(("id" = String, Path, description = "The merchant id")),
    request_body = crate::plugins::LimitsUpdate,
    security(("admin_token" = [])),
    responses((status = 200, description = "Its budgets", body = crate::http::openapi::MerchantLimits), (status = 422, description = "Out of range (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn set_limits(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    extract::Json(update): extract::Json<LimitsUpdate>,
) -> ApiResult<Json<Value>> {
    known_merchant(&state, &id).await?;
    match state.plugins.set_limits(&id, &update).await.map_err(ApiError::internal)? {
        Ok(limits) => {
            tracing::info!(merchant = %id, ?limits, "plugin limits changed");
            Ok(Json(json!({ "merchant_id": id, "limits": limits })))
        }
        Err(message) => Err(ApiError::bad_request("invalid_request", message)),
    }
}
