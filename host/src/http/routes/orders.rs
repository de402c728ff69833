//! Checkout and orders: `POST /v1/carts/{id}/checkout`, `GET /v1/orders/{id}`,
//! `GET /v1/merchant/orders`, `POST /v1/orders/{id}/fulfill` (merchant),
//! `POST /v1/orders/{id}/cancel` (admin).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bindings::types::{CheckoutRequest, Order, OrderStatus, PaymentStatus, ProvenanceEntry};
use crate::http::extract::{self, Admin, Merchant};
use crate::http::{ApiError, ApiResult, AppState, invoke};

/// How long past its deadline a checkout's request keeps its lease (clock
/// skew between replicas, a commit in flight at the deadline).
const LEASE_MARGIN_MS: u64 = 1_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/carts/{id}/checkout", post(checkout))
        .route("/v1/orders/{id}", get(one))
        .route("/v1/orders/{id}/fulfill", post(fulfill))
        .route("/v1/orders/{id}/cancel", post(cancel))
        .route("/v1/merchant/orders", get(merchant_orders))
        .route("/v1/merchant/orders/{id}", get(merchant_order))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentBody {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    email: String,
    payment: PaymentBody,
}

fn order_status(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::PendingPayment => "pending_payment",
        OrderStatus::Paid => "paid",
        OrderStatus::Fulfilled => "fulfilled",
        OrderStatus::Cancelled => "cancelled",
    }
}

fn payment_status(s: PaymentStatus) -> &'static str {
    match s {
        PaymentStatus::Pending => "pending",
        PaymentStatus::Authorized => "authorized",
        PaymentStatus::Succeeded => "succeeded",
        PaymentStatus::Declined => "declined",
        PaymentStatus::Voided => "voided",
        PaymentStatus::Refunded => "refunded",
    }
}

/// An order as the API shows it to its shopper and the operator (SPEC §4):
/// what a merchant sees, plus the payment and the provenance.
pub fn order_json(o: &Order) -> Value {
    let mut json = merchant_order_json(o);
    json["payment"] = json!({ "id": o.payment.id, "status": payment_status(o.payment.status) });
    json["provenance"] = json!(o.provenance);
    json
}

async fn checkout(
    State(state): State<AppState>,
    Path(cart_id): Path<String>,
    headers: HeaderMap,
    extract::Json(body): extract::Json<CheckoutBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_idempotency_key",
                "send an Idempotency-Key header",
            )
        })?;
    let provenance = state
        .runtime
        .snapshot()
        .versions()
        .into_iter()
        .map(|v| ProvenanceEntry { name: v.kind.name().to_string(), digest: v.digest })
        .collect();
    let request = CheckoutRequest {
        cart_id,
        email: body.email,
        payment_token: body.payment.token,
        idempotency_key: key.to_string(),
        reservation_ttl_ms: state.checkout.reservation_ttl_ms,
        provenance,
        // The request's deadline plus a margin: until then recovery leaves it alone.
        lease_ms: state.runtime.deadline_ms().saturating_add(LEASE_MARGIN_MS),
    };
    let order = invoke!(state, order, mercato_commerce_orders, call_checkout(&request))?;
    let mut json = order_json(&order);
    // The shopper's key to this order (the same on a replay).
    json["access_token"] = Value::String(crate::auth::order_access_token(&state.order_access_key, &order.id));
    Ok((StatusCode::CREATED, Json(json)))
}

/// `GET /v1/orders/{id}`: with the order's access token (or the admin
/// token); anything else is answered as if the order did not exist.
async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer)
        .unwrap_or("");
    let allowed = crate::auth::verify_order_access(&state.order_access_key, &id, presented)
        || crate::auth::verify(presented, &state.admin_token_hash);
    if !allowed {
        return Err(ApiError::not_found(format!("order {id:?} not found")));
    }
    let order = invoke!(state, order, mercato_commerce_orders, call_get_order(&id))?;
    Ok(Json(order_json(&order)))
}

/// An order as a merchant sees it: only its lines (the component has
/// filtered them) and what fulfilment needs — no payment, no provenance
/// (which names every merchant's plugin).
pub fn merchant_order_json(o: &Order) -> Value {
    json!({
        "id": o.id,
        "status": order_status(o.status),
        "email": o.email,
        "currency": o.currency,
        "lines": o.lines,
        "subtotal": o.subtotal,
        "discount_total": o.discount_total,
        "total": o.total,
        "created_at": o.created_at,
    })
}

async fn merchant_order(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let order = invoke!(state, order, mercato_commerce_orders, call_get_merchant_order(&merchant, &id))?;
    Ok(Json(merchant_order_json(&order)))
}

async fn fulfill(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let order = invoke!(state, order, mercato_commerce_orders, call_fulfill(&merchant, &id))?;
    Ok(Json(merchant_order_json(&order)))
}

async fn cancel(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let order = invoke!(state, order, mercato_commerce_orders, call_cancel(&id))?;
    Ok(Json(order_json(&order)))
}

async fn merchant_orders(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if let Some(unknown) = q.keys().find(|k| !["limit", "cursor"].contains(&k.as_str())) {
        return Err(ApiError::bad_request("invalid_request", format!("unknown query parameter {unknown:?}")));
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => l.parse::<u32>().map_err(|_| {
            ApiError::bad_request("invalid_request", "limit: must be a whole number from 1 to 100")
        })?,
    };
    let cursor = q.get("cursor").map(String::as_str);
    let page =
        invoke!(state, order, mercato_commerce_orders, call_list_merchant_orders(&merchant, limit, cursor))?;
    let items: Vec<Value> = page.items.iter().map(merchant_order_json).collect();
    Ok(Json(json!({ "items": items, "next_cursor": page.next_cursor })))
}
