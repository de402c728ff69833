//! Operator: `POST /v1/admin/merchants`. Merchant: `POST /v1/merchant/products`,
//! `PUT /v1/merchant/products/{id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bindings::types::{Money, Product, ProductInput, VariantInput};
use crate::http::extract::{self, Admin, Merchant};
use crate::http::{ApiError, ApiResult, AppState, invoke};

pub const MAX_MERCHANT_NAME: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/merchants", post(create_merchant))
        .route("/v1/merchant/products", post(create_product))
        .route("/v1/merchant/products/{id}", put(update_product))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMerchant {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyBody {
    amount: i64,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantBody {
    sku: String,
    #[serde(default)]
    title: String,
    price: MoneyBody,
    /// Initial on-hand stock (create only; existing skus keep theirs).
    #[serde(default)]
    stock: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    title: String,
    #[serde(default)]
    description: String,
    variants: Vec<VariantBody>,
}

impl From<ProductBody> for ProductInput {
    fn from(b: ProductBody) -> ProductInput {
        ProductInput {
            title: b.title,
            description: b.description,
            variants: b
                .variants
                .into_iter()
                .map(|v| VariantInput {
                    sku: v.sku,
                    title: v.title,
                    price: Money { amount: v.price.amount, currency: v.price.currency },
                    stock: v.stock,
                })
                .collect(),
        }
    }
}

async fn create_merchant(
    State(state): State<AppState>,
    _: Admin,
    extract::Json(body): extract::Json<NewMerchant>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_MERCHANT_NAME {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("name: must be 1 to {MAX_MERCHANT_NAME} characters"),
        ));
    }
    let (token, row) = crate::auth::new_merchant(name);
    state.runtime.db().insert_merchant(&row, crate::now_ms()).await.map_err(ApiError::internal)?;
    tracing::info!(merchant = %row.id, "merchant created");
    Ok((StatusCode::CREATED, Json(json!({ "id": row.id, "name": row.name, "token": token }))))
}

async fn create_product(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    extract::Json(body): extract::Json<ProductBody>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    let input = ProductInput::from(body);
    let product = invoke!(state, catalog, mercato_commerce_catalog, call_create_product(&merchant, &input))?;
    Ok((StatusCode::CREATED, Json(product)))
}

async fn update_product(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<ProductBody>,
) -> ApiResult<Json<Product>> {
    let input = ProductInput::from(body);
    Ok(Json(invoke!(state, catalog, mercato_commerce_catalog, call_update_product(&merchant, &id, &input))?))
}
