//! Merchant: `PUT|GET|DELETE /v1/merchant/webhooks` (one endpoint, the
//! event types it takes, its signing secret shown once) and `GET
//! /v1/merchant/webhooks/deliveries` (attempts and status).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::events::webhooks::{EVENT_TYPES, new_secret};
use crate::http::extract::{self, Merchant};
use crate::http::{ApiError, ApiResult, AppState};
use crate::storage::events::{DeliveryRow, WebhookRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_webhook, get_webhook, delete_webhook)).routes(routes!(deliveries))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    /// `https://…` (plain `http://` only on a loopback host, where the
    /// operator allows loopback endpoints); no credentials, no private address.
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = "^https?://",
        example = "https://shop.example/hooks/mercato"
    )]
    url: String,
    /// The event types to receive: `order.paid`, `order.fulfilled`,
    /// `order.cancelled`, `stock.low`.
    #[schema(min_items = 1, max_items = 4, inline)]
    events: Vec<EventType>,
}

/// An event type a webhook can take.
#[derive(serde::Deserialize, utoipa::ToSchema, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventType {
    #[serde(rename = "order.paid")]
    OrderPaid,
    #[serde(rename = "order.fulfilled")]
    OrderFulfilled,
    #[serde(rename = "order.cancelled")]
    OrderCancelled,
    #[serde(rename = "stock.low")]
    StockLow,
}

impl EventType {
    fn name(self) -> &'static str {
        match self {
            EventType::OrderPaid => "order.paid",
            EventType::OrderFulfilled => "order.fulfilled",
            EventType::OrderCancelled => "order.cancelled",
            EventType::StockLow => "stock.low",
        }
    }
}

fn webhook_json(row: &WebhookRow) -> Value {
    json!({ "url": row.url, "events": row.events, "created_at": row.created_at })
}

#[utoipa::path(
    put,
    path = "/v1/merchant/webhooks",
    tag = "merchant",
    operation_id = "put_webhook",
    summary = "Register (or replace) the merchant's webhook; the signing secret is shown once",
    request_body = WebhookBody,
    security(("merchant_token" = [])),
    responses((status = 200, description = "The endpoint and its new signing secret (`secret`, shown once)", body = crate::http::openapi::WebhookWithSecret), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 422, description = "A URL the policy refuses (`invalid_webhook_url`: https only, no private address, the allowed hosts), or no or unknown event types (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn put_webhook(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    extract::Json(body): extract::Json<WebhookBody>,
) -> ApiResult<Json<Value>> {
    state.webhooks.check_url(&body.url).map_err(|e| ApiError::bad_request("invalid_webhook_url", e))?;
    let mut events: Vec<String> = body.events.iter().map(|e| e.name().to_string()).collect();
    events.sort();
    events.dedup();
    // 1 to 4 items, as the document says (a type given twice counts once).
    if events.is_empty() || body.events.len() > EVENT_TYPES.len() {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("events: 1 to {} of {}", EVENT_TYPES.len(), EVENT_TYPES.join(", ")),
        ));
    }
    let row = WebhookRow {
        merchant_id: merchant,
        url: body.url,
        events,
        secret: new_secret(),
        created_at: crate::now_ms(),
    };
    state.db.webhook_put(&row).await.map_err(ApiError::internal)?;
    let mut answer = webhook_json(&row);
    answer["secret"] = Value::String(row.secret);
    Ok(Json(answer))
}

#[utoipa::path(
    get,
    path = "/v1/merchant/webhooks",
    tag = "merchant",
    operation_id = "get_webhook",
    summary = "The merchant's webhook (without its secret)",
    security(("merchant_token" = [])),
    responses((status = 200, description = "The endpoint", body = crate::http::openapi::Webhook), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "None registered (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn get_webhook(State(state): State<AppState>, Merchant(merchant): Merchant) -> ApiResult<Json<Value>> {
    let row = state.db.webhook(&merchant).await.map_err(ApiError::internal)?;
    let row = row.ok_or_else(|| ApiError::not_found("no webhook is registered"))?;
    Ok(Json(webhook_json(&row)))
}

#[utoipa::path(
    delete,
    path = "/v1/merchant/webhooks",
    tag = "merchant",
    operation_id = "delete_webhook",
    summary = "Remove the merchant's webhook; its pending deliveries are marked failed",
    security(("merchant_token" = [])),
    responses((status = 204, description = "Removed"), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "None registered (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn delete_webhook(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
) -> ApiResult<StatusCode> {
    if !state.db.webhook_delete(&merchant, crate::now_ms()).await.map_err(ApiError::internal)? {
        return Err(ApiError::not_found("no webhook is registered"));
    }
    Ok(StatusCode::NO_CONTENT)
}

fn delivery_json(d: &DeliveryRow) -> Value {
    json!({
        "id": d.seq,
        "event_id": d.event_id,
        "type": d.kind,
        "subject": d.subject,
        "url": d.url,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "next_attempt_at": (d.status == crate::storage::events::DeliveryStatus::Pending).then_some(d.next_at),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": d.created_at,
        "delivered_at": d.delivered_at,
    })
}

#[utoipa::path(
    get,
    path = "/v1/merchant/webhooks/deliveries",
    tag = "merchant",
    operation_id = "list_webhook_deliveries",
    summary = "The merchant's webhook deliveries, newest first: attempts and status",
    params(crate::http::extract::PageQuery),
    security(("merchant_token" = [])),
    responses((status = 200, description = "A page of deliveries", body = crate::http::openapi::DeliveryPage), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 422, description = "A bad `limit` or `cursor` (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn deliveries(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    query: Result<
        axum::extract::Query<crate::http::extract::PageQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> ApiResult<Json<Value>> {
    let (limit, before) = crate::http::extract::PageQuery::read(query)?;
    let rows = state.db.deliveries(&merchant, before, limit + 1).await.map_err(ApiError::internal)?;
    let more = rows.len() > limit as usize;
    let page = &rows[..rows.len().min(limit as usize)];
    let next_cursor = if more { page.last().map(|d| d.seq.to_string()) } else { None };
    Ok(Json(
        json!({ "items": page.iter().map(delivery_json).collect::<Vec<_>>(), "next_cursor": next_cursor }),
    ))
}
