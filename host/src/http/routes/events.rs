//! Operator: `GET /v1/admin/events` — the outbox, oldest first (what
//! `mercato events tail` follows).

use axum::Json;
use axum::extract::State;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::extract::Admin;
use crate::http::openapi::{OutboxEvent, OutboxPage};
use crate::http::{ApiError, ApiResult, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Events after this `seq` (default 0: from the first).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/events",
    tag = "operator",
    operation_id = "list_events",
    summary = "The outbox's events, oldest first",
    params(EventsQuery),
    security(("admin_token" = [])),
    responses((status = 200, description = "A page of events", body = OutboxPage), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 422, description = "A bad `after` or `limit` (`invalid_request`)", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn list_events(
    State(state): State<AppState>,
    _: Admin,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("invalid_request", "after: 0 or more"));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_request", "limit: 1 to 1000"));
    }
    let rows = state.db.events_after(after, limit).await.map_err(ApiError::internal)?;
    let next_after = rows.last().map_or(after, |e| e.seq);
    let items = rows
        .into_iter()
        .map(|e| {
            let data = serde_json::from_slice(&e.data).unwrap_or(Value::Null);
            OutboxEvent {
                seq: e.seq,
                id: e.id,
                kind: e.kind,
                subject: e.subject,
                created_at: e.created_at,
                merchants: e.merchants,
                published_at: e.published_at,
                data,
            }
        })
        .collect();
    Ok(Json(serde_json::to_value(OutboxPage { items, next_after }).map_err(ApiError::internal)?))
}
