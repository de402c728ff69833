//! The one error type of the API. Every error response is
//! `{"error": {"code", "message"}}` (plus `details` where the code has them)
//! with a stable `code`. 5xx bodies are opaque; the cause is logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::bindings::types::Error as DomainError;
use crate::runtime::Fault;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// An internal failure: logged in full, answered opaquely.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(cause = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> ApiError {
        use StatusCode as S;
        match e {
            DomainError::NotFound(m) => ApiError::new(S::NOT_FOUND, "not_found", format!("{m} not found")),
            DomainError::InvalidInput(m) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_request", m),
            DomainError::InvalidQuantity(m) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_quantity", m),
            DomainError::UnknownSku(m) => ApiError::new(S::UNPROCESSABLE_ENTITY, "unknown_sku", m),
            DomainError::Forbidden(m) => ApiError::new(S::FORBIDDEN, "forbidden", m),
            DomainError::Conflict(m) => ApiError::new(S::CONFLICT, "conflict", m),
            DomainError::CurrencyMismatch(m) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "currency_mismatch", m)
            }
            DomainError::OutOfStock(shortages) => {
                let details: Vec<_> = shortages
                    .iter()
                    .map(|s| json!({"sku": s.sku, "requested": s.requested, "available": s.available}))
                    .collect();
                ApiError {
                    details: Some(serde_json::Value::Array(details)),
                    ..ApiError::new(S::CONFLICT, "out_of_stock", "not enough stock for some lines")
                }
            }
            DomainError::PaymentDeclined(m) => ApiError::new(S::PAYMENT_REQUIRED, "payment_declined", m),
            DomainError::ProviderUnavailable(m) => {
                tracing::warn!(cause = %m, "payment provider unavailable");
                ApiError::new(S::BAD_GATEWAY, "payment_provider_error", "the payment provider failed")
            }
            DomainError::ProviderTimeout(m) => {
                tracing::warn!(cause = %m, "payment provider timed out");
                ApiError::new(
                    S::GATEWAY_TIMEOUT,
                    "payment_provider_timeout",
                    "the payment provider did not answer in time",
                )
            }
            DomainError::Timeout(m) => {
                tracing::warn!(cause = %m, "a host call ran out of time");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "component_timeout",
                    "the request took too long and was stopped; retry (a checkout retried with its Idempotency-Key gets its outcome)",
                )
            }
            DomainError::EmptyCart(m) => ApiError::new(S::UNPROCESSABLE_ENTITY, "empty_cart", m),
            DomainError::IdempotencyKeyReuse(m) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "idempotency_key_reuse", m)
            }
            DomainError::Storage(m) => {
                tracing::error!(cause = %m, "storage failed");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "storage is unavailable; try again",
                )
            }
        }
    }
}

impl From<Fault> for ApiError {
    fn from(f: Fault) -> ApiError {
        crate::telemetry::fault_seen(&f);
        use StatusCode as S;
        match f {
            Fault::Deadline { .. } => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "component_timeout",
                "the request took too long and was stopped",
            ),
            Fault::Memory { .. } => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "component_memory_exceeded",
                "the request needed more memory than allowed and was stopped",
            ),
            Fault::Overloaded { .. } => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "overloaded", "the server is busy; try again")
            }
            Fault::Trap { .. } => {
                ApiError::new(S::INTERNAL_SERVER_ERROR, "component_fault", "a component failed")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some(details), Some(obj)) = (self.details, error.as_object_mut()) {
            obj.insert("details".into(), details);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
