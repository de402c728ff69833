//! Checkout and orders: `POST /v1/carts/{id}/checkout`, `GET /v1/orders/{id}`,
//! `GET /v1/merchant/orders`, `POST /v1/orders/{id}/fulfill` (merchant),
//! `POST /v1/orders/{id}/cancel` (admin).

use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bindings::types::CheckoutRequest;
use crate::events::render::{merchant_order_json, order_json};
use crate::http::extract::{self, Admin, Merchant};
use crate::http::{ApiError, ApiResult, AppState};

/// How long past its deadline a checkout's request keeps its lease (clock
/// skew between replicas, a commit in flight at the deadline).
const LEASE_MARGIN_MS: u64 = 1_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(checkout))
        .routes(routes!(one))
        .routes(routes!(fulfill))
        .routes(routes!(cancel))
        .routes(routes!(merchant_orders))
        .routes(routes!(merchant_order))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PaymentBody {
    /// The provider's payment token (`tok_visa` in test mode).
    #[schema(min_length = 1, max_length = 255, example = "tok_visa")]
    token: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    /// 3 to 254 characters with an `@`, no whitespace or control characters.
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*@[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    #[schema(example = "shopper@example.com")]
    email: String,
    payment: PaymentBody,
}

#[utoipa::path(
    post,
    path = "/v1/carts/{id}/checkout",
    tag = "shopper",
    operation_id = "checkout",
    summary = "Check the cart out: reserve, pay, order",
    params(("id" = String, Path, description = "The cart id"), ("Idempotency-Key" = String, Header, description = "Required: the same key and body again answer with the same order, without a second charge", min_length = 1, max_length = 200, pattern = r"^[!-~]([ -~]{0,198}[!-~])?$")),
    request_body = CheckoutBody,
    responses((status = 201, description = "The paid order and its access token", body = crate::http::openapi::PlacedOrder, links(
            ("GetOrder" = (operation_id = "get_order", parameters(("id" = "$response.body#/id")))),
            ("GetMerchantOrder" = (operation_id = "get_merchant_order", parameters(("id" = "$response.body#/id")))),
            ("FulfillOrder" = (operation_id = "fulfill_order", parameters(("id" = "$response.body#/id")))),
            ("CancelOrder" = (operation_id = "cancel_order", parameters(("id" = "$response.body#/id"))))
        )), (status = 400, description = "`missing_idempotency_key`, `malformed_json`", body = crate::http::openapi::ErrorBody), (status = 402, description = "`payment_declined`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such cart (`not_found`)", body = crate::http::openapi::ErrorBody), (status = 409, description = "`out_of_stock` (with `details`), or the same key in progress (`conflict`)", body = crate::http::openapi::ErrorBody), (status = 422, description = "`invalid_request`, `empty_cart`, `idempotency_key_reuse`", body = crate::http::openapi::ErrorBody), (status = 503, description = "The payment provider did not answer in time", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
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
        // Visible ASCII and spaces, as the document's pattern says (the
        // header parser would also let a tab through).
        .filter(|k| k.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_idempotency_key",
                "send an Idempotency-Key header: 1 to 200 visible ASCII characters",
            )
        })?;
    let request = CheckoutRequest {
        cart_id,
        email: body.email,
        payment_token: body.payment.token,
        idempotency_key: key.to_string(),
        reservation_ttl_ms: state.reservation_ttl_ms,
        // The request's deadline plus a margin: until then recovery leaves it alone.
        lease_ms: state.runtime.deadline_ms().saturating_add(LEASE_MARGIN_MS),
    };
    let order = state
        .runtime
        .instance::<crate::bindings::order::Service>()
        .await?
        .call("checkout", |c, s| c.mercato_commerce_orders().call_checkout(s, &request))
        .await??;
    let mut json = order_json(&order);
    // The shopper's key to this order (the same on a replay).
    json["access_token"] = Value::String(crate::auth::order_access_token(&state.order_access_key, &order.id));
    Ok((StatusCode::CREATED, Json(json)))
}

/// `GET /v1/orders/{id}`: with the order's access token (or the admin
/// token); anything else is answered as if the order did not exist.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "shopper",
    operation_id = "get_order",
    summary = "An order, with its access token (or the admin token)",
    params(("id" = String, Path, description = "The order id")),
    security(("order_access_token" = [])),
    responses((status = 200, description = "The order", body = crate::http::openapi::ShopperOrder), (status = 404, description = "No such order, or not this token's (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
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
    let order = state
        .runtime
        .instance::<crate::bindings::order::Service>()
        .await?
        .call("get-order", |c, s| c.mercato_commerce_orders().call_get_order(s, &id))
        .await??;
    Ok(Json(order_json(&order)))
}

#[utoipa::path(
    get,
    path = "/v1/merchant/orders/{id}",
    tag = "merchant",
    operation_id = "get_merchant_order",
    summary = "One of the merchant's orders, only its lines",
    params(("id" = String, Path, description = "The order id")),
    security(("merchant_token" = [])),
    responses((status = 200, description = "The order as the merchant sees it", body = crate::http::openapi::MerchantOrder), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn merchant_order(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let order = state
        .runtime
        .instance::<crate::bindings::order::Service>()
        .await?
        .call("get-merchant-order", |c, s| {
            c.mercato_commerce_orders().call_get_merchant_order(s, &merchant, &id)
        })
        .await??;
    Ok(Json(merchant_order_json(&order)))
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/fulfill",
    tag = "merchant",
    operation_id = "fulfill_order",
    summary = "Mark the merchant's lines fulfilled",
    params(("id" = String, Path, description = "The order id")),
    security(("merchant_token" = [])),
    responses((status = 200, description = "The order as the merchant sees it", body = crate::http::openapi::MerchantOrder), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = 409, description = "Not paid (`invalid_state`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn fulfill(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let order = state
        .runtime
        .instance::<crate::bindings::order::Service>()
        .await?
        .call("fulfill", |c, s| c.mercato_commerce_orders().call_fulfill(s, &merchant, &id))
        .await??;
    Ok(Json(merchant_order_json(&order)))
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/cancel",
    tag = "operator",
    operation_id = "cancel_order",
    summary = "Cancel a paid order and refund it",
    params(("id" = String, Path, description = "The order id")),
    security(("admin_token" = [])),
    responses((status = 200, description = "The order", body = crate::http::openapi::ShopperOrder), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = 409, description = "Not cancellable (`conflict`): not paid, partly fulfilled, the refund refused, or a cancel of it in progress", body = crate::http::openapi::ErrorBody), (status = 502, description = "The refund's outcome is unknown (`payment_provider_error`): the order stays `cancelled`, and the refund is asked again", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn cancel(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let lease_ms = state.runtime.deadline_ms().saturating_add(LEASE_MARGIN_MS);
    let order = state
        .runtime
        .instance::<crate::bindings::order::Service>()
        .await?
        // Until the request's deadline (and a margin) recovery leaves the cancel alone.
        .call("cancel", |c, s| c.mercato_commerce_orders().call_cancel(s, &id, lease_ms))
        .await??;
    Ok(Json(order_json(&order)))
}

#[utoipa::path(
    get,
    path = "/v1/merchant/orders",
    tag = "merchant",
    operation_id = "list_merchant_orders",
    summary = "The merchant's orders, in the order they were placed, only its lines",
    params(("limit" = Option<u32>, Query, description = "Items per page (default 20)", minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page", pattern = r"^o1\.[0-9]{13}-ord_[0-9a-f]{32}$")),
    security(("merchant_token" = [])),
    responses((status = 200, description = "A page of orders", body = crate::http::openapi::MerchantOrderPage), (status = 422, description = "A bad query parameter (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
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
    let page = state
        .runtime
        .instance::<crate::bindings::order::Service>()
        .await?
        .call("list-merchant-orders", |c, s| {
            c.mercato_commerce_orders().call_list_merchant_orders(s, &merchant, limit, cursor)
        })
        .await??;
    let items: Vec<Value> = page.items.iter().map(merchant_order_json).collect();
    Ok(Json(json!({ "items": items, "next_cursor": page.next_cursor })))
}
