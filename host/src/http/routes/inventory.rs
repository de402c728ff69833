//! Merchant stock: `GET`/`PUT /v1/merchant/inventory/{sku}`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::bindings::types::StockLevel;
use crate::http::extract::{self, Merchant};
use crate::http::{ApiError, ApiResult, AppState, invoke};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/merchant/inventory/{sku}", get(read).put(set))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    on_hand: Value,
}

async fn read(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(sku): Path<String>,
) -> ApiResult<Json<StockLevel>> {
    Ok(Json(invoke!(state, inventory, mercato_commerce_inventory, call_stock_of(&merchant, &sku))?))
}

async fn set(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(sku): Path<String>,
    extract::Json(body): extract::Json<SetStock>,
) -> ApiResult<Json<StockLevel>> {
    let on_hand = body
        .on_hand
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n <= 1_000_000_000)
        .ok_or_else(|| {
        ApiError::bad_request("invalid_quantity", "on_hand: a whole number from 0 to 1000000000")
    })?;
    Ok(Json(invoke!(
        state,
        inventory,
        mercato_commerce_inventory,
        call_set_on_hand(&merchant, &sku, on_hand)
    )?))
}
