//! Merchant stock: `GET`/`PUT /v1/merchant/inventory/{sku}`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bindings::inventory::exports::mercato::commerce::merchant_stock::StockChange as SetStockChange;
use crate::bindings::types::StockLevel;
use crate::http::extract::{self, Merchant};
use crate::http::{ApiError, ApiResult, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read, set))
}

/// What to change (at least one): the units on the shelf, and the level of
/// `available` below which the merchant hears `stock.low` (0: never).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
struct SetStock {
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = u32, required = false, minimum = 0, maximum = 1000000000)]
    on_hand: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = u32, required = false, minimum = 0, maximum = 1000000000)]
    low_stock_threshold: Option<Value>,
}

/// A field that is there, `null` included (which is then refused, not taken
/// for "unchanged").
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A whole number from 0 to 10⁹, or 422 `invalid_quantity` naming `field`.
fn units(field: &str, value: Option<Value>) -> ApiResult<Option<u32>> {
    value
        .map(|v| {
            v.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n <= 1_000_000_000).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_quantity",
                    format!("{field}: a whole number from 0 to 1000000000"),
                )
            })
        })
        .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/merchant/inventory/{sku}",
    tag = "merchant",
    operation_id = "get_stock",
    summary = "A sku's stock",
    params(("sku" = String, Path, description = "The sku")),
    security(("merchant_token" = [])),
    responses((status = 200, description = "Its stock", body = crate::bindings::types::StockLevel), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 403, description = "Another merchant's sku (`forbidden`)", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(sku): Path<String>,
) -> ApiResult<Json<StockLevel>> {
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::inventory::Service>()
            .await?
            .call("stock-of", |c, s| c.mercato_commerce_merchant_stock().call_stock_of(s, &merchant, &sku))
            .await??,
    ))
}

#[utoipa::path(
    put,
    path = "/v1/merchant/inventory/{sku}",
    tag = "merchant",
    operation_id = "set_stock",
    summary = "Set a sku's on-hand units (never below what is reserved) or its low-stock threshold",
    params(("sku" = String, Path, description = "The sku")),
    request_body = SetStock,
    security(("merchant_token" = [])),
    responses((status = 200, description = "Its stock", body = crate::bindings::types::StockLevel), (status = 422, description = "`invalid_quantity`, or neither field given (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 403, description = "`forbidden`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = 409, description = "Below what is reserved (`conflict`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn set(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(sku): Path<String>,
    extract::Json(body): extract::Json<SetStock>,
) -> ApiResult<Json<StockLevel>> {
    let change = SetStockChange {
        on_hand: units("on_hand", body.on_hand)?,
        low_stock_threshold: units("low_stock_threshold", body.low_stock_threshold)?,
    };
    if change.on_hand.is_none() && change.low_stock_threshold.is_none() {
        return Err(ApiError::bad_request("invalid_request", "give on_hand, low_stock_threshold or both"));
    }
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::inventory::Service>()
            .await?
            .call("set-stock", |c, s| {
                c.mercato_commerce_merchant_stock().call_set_stock(s, &merchant, &sku, change)
            })
            .await??,
    ))
}
