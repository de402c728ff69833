//! Shopper catalog: `GET /v1/products`, `GET /v1/products/{id}`.

use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::extract::{Path, Query, State};

use crate::bindings::types::{Product, ProductPage};
use crate::http::{ApiError, ApiResult, AppState};

pub const DEFAULT_LIMIT: u32 = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(one))
}

#[utoipa::path(
    get,
    path = "/v1/products",
    tag = "shopper",
    operation_id = "list_products",
    summary = "Products, a page at a time",
    params(("limit" = Option<u32>, Query, description = "Items per page (default 20)", minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page", pattern = r"^c1\.p[0-9]{12}$"), ("merchant_id" = Option<String>, Query, description = "Only this merchant's products", pattern = r"^m_[0-9a-f]{16}$")),
    responses((status = 200, description = "A page of products", body = crate::http::openapi::ProductList), (status = 422, description = "A bad query parameter (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<ProductPage>> {
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
    if merchant.is_some_and(|m| !crate::auth::is_merchant_id(m)) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "merchant_id: not a merchant id (m_ + 16 hex digits)",
        ));
    }
    let page = state
        .runtime
        .instance::<crate::bindings::catalog::Service>()
        .await?
        .call("list-products", |c, s| {
            c.mercato_commerce_catalog().call_list_products(s, limit, cursor, merchant)
        })
        .await??;
    // Serialized as it is (`items`, `next_cursor`), with no `Value` in between.
    Ok(Json(page))
}

#[utoipa::path(
    get,
    path = "/v1/products/{id}",
    tag = "shopper",
    operation_id = "get_product",
    summary = "One product",
    params(("id" = String, Path, description = "The product id")),
    responses((status = 200, description = "The product", body = crate::bindings::types::Product), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn one(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Product>> {
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::catalog::Service>()
            .await?
            .call("get-product", |c, s| c.mercato_commerce_catalog().call_get_product(s, &id))
            .await??,
    ))
}
