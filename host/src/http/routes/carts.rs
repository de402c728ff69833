//! Shopper carts: create, read, add, set quantity, remove.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::bindings::types::Cart;
use crate::http::extract;
use crate::http::{ApiError, ApiResult, AppState, invoke};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/carts", post(create))
        .route("/v1/carts/{id}", get(read))
        .route("/v1/carts/{id}/items", post(add))
        .route("/v1/carts/{id}/items/{sku}", put(set).delete(remove))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCart {
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddItem {
    sku: String,
    quantity: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQuantity {
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

async fn create(
    State(state): State<AppState>,
    extract::Json(body): extract::Json<NewCart>,
) -> ApiResult<(StatusCode, Json<Cart>)> {
    let cart = invoke!(state, cart, mercato_commerce_cart, call_create_cart(&body.currency))?;
    Ok((StatusCode::CREATED, Json(cart)))
}

async fn read(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Cart>> {
    Ok(Json(invoke!(state, cart, mercato_commerce_cart, call_get_cart(&id))?))
}

async fn add(
    State(state): State<AppState>,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<AddItem>,
) -> ApiResult<Json<Cart>> {
    let q = quantity(&body.quantity)?;
    Ok(Json(invoke!(state, cart, mercato_commerce_cart, call_add_item(&id, &body.sku, q))?))
}

async fn set(
    State(state): State<AppState>,
    Path((id, sku)): Path<(String, String)>,
    extract::Json(body): extract::Json<SetQuantity>,
) -> ApiResult<Json<Cart>> {
    let q = quantity(&body.quantity)?;
    Ok(Json(invoke!(state, cart, mercato_commerce_cart, call_set_quantity(&id, &sku, q))?))
}

async fn remove(
    State(state): State<AppState>,
    Path((id, sku)): Path<(String, String)>,
) -> ApiResult<Json<Cart>> {
    Ok(Json(invoke!(state, cart, mercato_commerce_cart, call_remove_item(&id, &sku))?))
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
