//! Shopper catalog: `GET /v1/products`, `GET /v1/products/{id}`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::bindings::types::Product;
use crate::http::{ApiError, ApiResult, AppState, invoke};

pub const DEFAULT_LIMIT: u32 = 20;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/products", get(list)).route("/v1/products/{id}", get(one))
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if let Some(unknown) = q.keys().find(|k| !["limit", "cursor", "merchant_id"].contains(&k.as_str())) {
        return Err(ApiError::bad_request("invalid_request", format!("unknown query parameter {unknown:?}")));
    }
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l.parse::<u32>().map_err(|_| {
            ApiError::bad_request("invalid_request", "limit: must be a whole number from 1 to 100")
        })?,
    };
    let cursor = q.get("cursor").map(String::as_str);
    let merchant = q.get("merchant_id");
    let page =
        invoke!(state, catalog, mercato_commerce_catalog, call_list_products(limit, cursor, merchant))?;
    Ok(Json(json!({ "items": page.items, "next_cursor": page.next_cursor })))
}

async fn one(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Product>> {
    Ok(Json(invoke!(state, catalog, mercato_commerce_catalog, call_get_product(&id))?))
}
