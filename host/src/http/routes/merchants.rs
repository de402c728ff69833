//! Operator: `POST /v1/admin/merchants`. Merchant: `POST /v1/merchant/products`,
//! `PUT /v1/merchant/products/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bindings::types::{Money, Product, ProductInput, VariantInput};
use crate::http::extract::{self, Admin, Merchant};
use crate::http::{ApiError, ApiResult, AppState};

pub const MAX_MERCHANT_NAME: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_merchant))
        .routes(routes!(create_product))
        .routes(routes!(update_product))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewMerchant {
    /// Not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MoneyBody {
    /// Minor units (cents): 0 to 10^12.
    #[schema(minimum = 0, maximum = 1000000000000i64)]
    amount: i64,
    #[schema(value_type = crate::http::openapi::Currency)]
    currency: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VariantBody {
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", example = "MUG-SND")]
    sku: String,
    #[serde(default)]
    #[schema(max_length = 200)]
    title: String,
    price: MoneyBody,
    /// Initial on-hand stock (create only; existing skus keep theirs).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000000000)]
    stock: Option<u32>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    title: String,
    #[serde(default)]
    #[schema(max_length = 10000)]
    description: String,
    /// 1 to 100 variants in one currency (else 422 `currency_mismatch`) with
    /// distinct skus (a repeated sku is 422 `invalid_request`).
    #[schema(min_items = 1, max_items = 100)]
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

#[utoipa::path(
    post,
    path = "/v1/admin/merchants",
    tag = "operator",
    operation_id = "create_merchant",
    summary = "A new merchant and its token (shown once)",
    request_body = NewMerchant,
    security(("admin_token" = [])),
    responses((status = 201, description = "The merchant", body = crate::http::openapi::CreatedMerchant, links(
            ("GetPluginLimits" = (operation_id = "get_plugin_limits", parameters(("id" = "$response.body#/id")))),
            ("SetPluginLimits" = (operation_id = "set_plugin_limits", parameters(("id" = "$response.body#/id"))))
        )), (status = 422, description = "`invalid_request`", body = crate::http::openapi::ErrorBody), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn create_merchant(
    State(state): State<AppState>,
    _: Admin,
    extract::Json(body): extract::Json<NewMerchant>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = body.name.trim();
    let control = body.name.contains(char::is_control);
    if name.is_empty() || body.name.chars().count() > MAX_MERCHANT_NAME || control {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("name: 1 to {MAX_MERCHANT_NAME} characters, not blank, no control characters"),
        ));
    }
    let (token, row) = crate::auth::new_merchant(name);
    state.db.insert_merchant(&row, crate::now_ms()).await.map_err(ApiError::internal)?;
    tracing::info!(merchant = %row.id, "merchant created");
    Ok((StatusCode::CREATED, Json(json!({ "id": row.id, "name": row.name, "token": token }))))
}

#[utoipa::path(
    post,
    path = "/v1/merchant/products",
    tag = "merchant",
    operation_id = "create_product",
    summary = "A new product with its variants and their initial stock",
    request_body = ProductBody,
    security(("merchant_token" = [])),
    responses((status = 201, description = "The product", body = crate::bindings::types::Product, links(
            ("GetProduct" = (operation_id = "get_product", parameters(("id" = "$response.body#/id")))),
            ("UpdateProduct" = (operation_id = "update_product", parameters(("id" = "$response.body#/id")))),
            ("GetStock" = (operation_id = "get_stock", parameters(("sku" = "$response.body#/variants/0/sku")))),
            ("SetStock" = (operation_id = "set_stock", parameters(("sku" = "$response.body#/variants/0/sku"))))
        )), (status = 422, description = "`invalid_request`", body = crate::http::openapi::ErrorBody), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 409, description = "A sku taken by another product (`conflict`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn create_product(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    extract::Json(body): extract::Json<ProductBody>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    let input = ProductInput::from(body);
    let product = state
        .runtime
        .instance::<crate::bindings::catalog::Service>()
        .await?
        .call("create-product", |c, s| {
            c.mercato_commerce_merchant_catalog().call_create_product(s, &merchant, &input)
        })
        .await??;
    Ok((StatusCode::CREATED, Json(product)))
}

#[utoipa::path(
    put,
    path = "/v1/merchant/products/{id}",
    tag = "merchant",
    operation_id = "update_product",
    summary = "Change a product of the merchant",
    params(("id" = String, Path, description = "The product id")),
    request_body = ProductBody,
    security(("merchant_token" = [])),
    responses((status = 200, description = "The product", body = crate::bindings::types::Product), (status = 422, description = "`invalid_request`", body = crate::http::openapi::ErrorBody), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 403, description = "Another merchant's product (`forbidden`)", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn update_product(
    State(state): State<AppState>,
    Merchant(merchant): Merchant,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<ProductBody>,
) -> ApiResult<Json<Product>> {
    let input = ProductInput::from(body);
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::catalog::Service>()
            .await?
            .call("update-product", |c, s| {
                c.mercato_commerce_merchant_catalog().call_update_product(s, &merchant, &id, &input)
            })
            .await??,
    ))
}
