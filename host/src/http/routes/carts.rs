//! Shopper carts: create, read, add, set quantity, remove; discount codes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bindings::types::Cart;
use crate::http::extract;
use crate::http::{ApiError, ApiResult, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(read))
        .routes(routes!(add))
        .routes(routes!(set, remove))
        .routes(routes!(add_code))
        .routes(routes!(remove_code))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewCode {
    /// Letters, digits, `-` and `_`; kept upper case.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^\s*[A-Za-z0-9_-]{1,64}\s*$",
        example = "SPRING10"
    )]
    code: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewCart {
    #[schema(value_type = crate::http::openapi::Currency)]
    currency: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddItem {
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", example = "MUG-SND")]
    sku: String,
    /// Added to the line's quantity; a line holds at most 1000 units.
    #[schema(value_type = u32, minimum = 1, maximum = 1000, example = 1)]
    quantity: Value,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetQuantity {
    /// The line's new quantity; 0 removes the line.
    #[schema(value_type = u32, minimum = 0, maximum = 1000)]
    quantity: Value,
}

/// A quantity from JSON: a whole number that fits a line. Anything else
/// (negative, fractional, a string, astronomically large) is `invalid_quantity`.
fn quantity(v: &Value) -> Result<u32, ApiError> {
    let invalid = |why: &str| ApiError::bad_request("invalid_quantity", format!("quantity: {why}"));
    match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(q), _) => u32::try_from(q).map_err(|_| invalid("too large")),
            (None, Some(_)) => Err(invalid("must not be negative")),
            (None, None) => Err(invalid("must be a whole number")),
        },
        _ => Err(invalid("must be a number")),
    }
}

#[utoipa::path(
    post,
    path = "/v1/carts",
    tag = "shopper",
    operation_id = "create_cart",
    summary = "A new, empty cart",
    request_body = NewCart,
    responses((status = 201, description = "The cart", body = crate::bindings::types::Cart, links(
            ("GetCart" = (operation_id = "get_cart", parameters(("id" = "$response.body#/id")))),
            ("AddItem" = (operation_id = "add_item", parameters(("id" = "$response.body#/id")))),
            ("Checkout" = (operation_id = "checkout", parameters(("id" = "$response.body#/id"))))
        )), (status = 422, description = "An unknown currency (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn create(
    State(state): State<AppState>,
    extract::Json(body): extract::Json<NewCart>,
) -> ApiResult<(StatusCode, Json<Cart>)> {
    let cart = state
        .runtime
        .instance::<crate::bindings::cart::Service>()
        .await?
        .call("create-cart", |c, s| c.mercato_commerce_cart().call_create_cart(s, &body.currency))
        .await??;
    Ok((StatusCode::CREATED, Json(cart)))
}

#[utoipa::path(
    get,
    path = "/v1/carts/{id}",
    tag = "shopper",
    operation_id = "get_cart",
    summary = "A cart, priced now (plugin adjustments included)",
    params(("id" = String, Path, description = "The cart id")),
    responses((status = 200, description = "The cart", body = crate::bindings::types::Cart), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn read(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Cart>> {
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::cart::Service>()
            .await?
            .call("get-cart", |c, s| c.mercato_commerce_cart_contents().call_get_cart(s, &id))
            .await??,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/carts/{id}/items",
    tag = "shopper",
    operation_id = "add_item",
    summary = "Add a sku (to its line, if there is one)",
    params(("id" = String, Path, description = "The cart id")),
    request_body = AddItem,
    responses((status = 200, description = "The cart", body = crate::bindings::types::Cart, links(
            ("Checkout" = (operation_id = "checkout", parameters(("id" = "$request.path.id")))),
            ("SetQuantity" = (operation_id = "set_quantity", parameters(("id" = "$request.path.id"), ("sku" = "$request.body#/sku")))),
            ("RemoveItem" = (operation_id = "remove_item", parameters(("id" = "$request.path.id"), ("sku" = "$request.body#/sku"))))
        )), (status = 422, description = "`invalid_quantity`, `unknown_sku`, `currency_mismatch`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such cart or sku (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn add(
    State(state): State<AppState>,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<AddItem>,
) -> ApiResult<Json<Cart>> {
    let q = quantity(&body.quantity)?;
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::cart::Service>()
            .await?
            .call("add-item", |c, s| c.mercato_commerce_cart().call_add_item(s, &id, &body.sku, q))
            .await??,
    ))
}

#[utoipa::path(
    put,
    path = "/v1/carts/{id}/items/{sku}",
    tag = "shopper",
    operation_id = "set_quantity",
    summary = "Set a line's quantity (0 removes it)",
    params(("id" = String, Path, description = "The cart id"), ("sku" = String, Path, description = "The sku")),
    request_body = SetQuantity,
    responses((status = 200, description = "The cart", body = crate::bindings::types::Cart), (status = 422, description = "`invalid_quantity`", body = crate::http::openapi::ErrorBody), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn set(
    State(state): State<AppState>,
    Path((id, sku)): Path<(String, String)>,
    extract::Json(body): extract::Json<SetQuantity>,
) -> ApiResult<Json<Cart>> {
    let q = quantity(&body.quantity)?;
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::cart::Service>()
            .await?
            .call("set-quantity", |c, s| c.mercato_commerce_cart().call_set_quantity(s, &id, &sku, q))
            .await??,
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/carts/{id}/items/{sku}",
    tag = "shopper",
    operation_id = "remove_item",
    summary = "Remove a line",
    params(("id" = String, Path, description = "The cart id"), ("sku" = String, Path, description = "The sku")),
    responses((status = 200, description = "The cart", body = crate::bindings::types::Cart), (status = 404, description = "`not_found`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn remove(
    State(state): State<AppState>,
    Path((id, sku)): Path<(String, String)>,
) -> ApiResult<Json<Cart>> {
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::cart::Service>()
            .await?
            .call("remove-item", |c, s| c.mercato_commerce_cart().call_remove_item(s, &id, &sku))
            .await??,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/carts/{id}/discount-codes",
    tag = "shopper",
    operation_id = "add_discount_code",
    summary = "Enter a discount code (the merchants' plugins decide what it is worth)",
    params(("id" = String, Path, description = "The cart id")),
    request_body = NewCode,
    responses((status = 200, description = "The cart, with each code applied or not and why (`discount_codes`)", body = crate::bindings::types::Cart, links(
            ("RemoveDiscountCode" = (operation_id = "remove_discount_code", parameters(("id" = "$request.path.id"), ("code" = "$request.body#/code"))))
        )), (status = 404, description = "No such cart (`not_found`)", body = crate::http::openapi::ErrorBody), (status = 409, description = "The cart holds 10 codes already (`conflict`)", body = crate::http::openapi::ErrorBody), (status = 422, description = "Not a code (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn add_code(
    State(state): State<AppState>,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<NewCode>,
) -> ApiResult<Json<Cart>> {
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::cart::Service>()
            .await?
            .call("add-code", |c, s| c.mercato_commerce_cart().call_add_code(s, &id, &body.code))
            .await??,
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/carts/{id}/discount-codes/{code}",
    tag = "shopper",
    operation_id = "remove_discount_code",
    summary = "Take a discount code off the cart",
    params(("id" = String, Path, description = "The cart id"), ("code" = String, Path, description = "The code (any case)")),
    responses((status = 200, description = "The cart", body = crate::bindings::types::Cart), (status = 404, description = "No such cart, or the cart holds no such code (`not_found`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn remove_code(
    State(state): State<AppState>,
    Path((id, code)): Path<(String, String)>,
) -> ApiResult<Json<Cart>> {
    Ok(Json(
        state
            .runtime
            .instance::<crate::bindings::cart::Service>()
            .await?
            .call("remove-code", |c, s| c.mercato_commerce_cart().call_remove_code(s, &id, &code))
            .await??,
    ))
}

#[cfg(test)]
mod tests {
    use super::quantity;
    use serde_json::json;

    #[test]
    fn quantities_must_be_whole_non_negative_and_fit() {
        assert_eq!(quantity(&json!(3)).ok(), Some(3));
        assert_eq!(quantity(&json!(0)).ok(), Some(0));
        for bad in [json!(-1), json!(1.5), json!("3"), json!(null), json!(1e30), json!(4_294_967_296u64)] {
            let e = quantity(&bad).err().map(|e| e.code);
            assert_eq!(e, Some("invalid_quantity"), "{bad}");
        }
    }
}
