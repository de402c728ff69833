//! The HTTP API (SPEC §4). [`app`] builds the router from one small router
//! per area; tests drive it over a real socket via `spawn_app`.

pub mod error;
pub mod extract;
pub mod openapi;
pub mod ratelimit;
pub(crate) mod routes;

pub use routes::components::MAX_COMPONENT_BYTES;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::runtime::Runtime;
pub use error::{ApiError, ApiResult};

/// What every handler can reach: one `Arc`, so the clone each middleware
/// layer makes per request is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub runtime: Runtime,
    /// The database (the host's own tables; components reach theirs through
    /// the runtime's capabilities).
    pub db: crate::storage::Db,
    /// Merchants' pricing plugins.
    pub plugins: crate::plugins::Plugins,
    pub registry: crate::registry::Registry,
    /// SHA-256 (hex) of the admin token.
    pub admin_token_hash: Arc<str>,
    /// The key order access tokens are derived from (`auth::order_access_token`).
    pub order_access_key: Arc<str>,
    pub body_limit: usize,
    /// Rate limits per client address (`[rate_limit]`).
    pub rate_limits: Arc<ratelimit::RateLimits>,
    /// Places for API requests in flight (`max_requests_in_flight`).
    pub admission: Arc<tokio::sync::Semaphore>,
    /// How long a checkout may hold stock (`checkout.reservation_ttl_ms`).
    pub reservation_ttl_ms: u64,
    /// Which webhook endpoints merchants may register (`[events.webhooks]`).
    pub webhooks: Arc<crate::events::WebhooksConfig>,
    /// Every request's work, which runs on its own task (see [`detach`]);
    /// graceful shutdown waits for it.
    pub work: tokio_util::task::TaskTracker,
}

/// Every route with its documented operation (see [`openapi`]).
pub fn api_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::products::router())
        .merge(routes::carts::router())
        .merge(routes::merchants::router())
        .merge(routes::orders::router())
        .merge(routes::inventory::router())
        .merge(routes::plugins::router())
        .merge(routes::components::router())
        .merge(routes::events::router())
        .merge(routes::webhooks::router())
        .merge(routes::ops::router())
        .routes(utoipa_axum::routes!(openapi::document))
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let (router, doc) = api_routes().split_for_parts();
    router
        .layer(axum::Extension(openapi::Document(Arc::new(doc.to_json().unwrap_or_default()))))
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(json_rejections))
        .layer(middleware::from_fn_with_state(state.clone(), pin_versions))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .layer(middleware::from_fn_with_state(state.clone(), ratelimit::rate_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(state.clone(), detach))
        .with_state(state)
}

/// Work is not owned by the connection: each request runs on its own task,
/// which the handler's future only awaits. When a client goes away hyper
/// drops that future, but the task — a checkout half-way through its writes,
/// say — runs to its end (bounded by the request deadline), and graceful
/// shutdown waits for it through `state.work`.
async fn detach(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.work.spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request failed")
                .into_response()
        }
    }
}

/// Every rejection in the API's JSON error shape (SPEC §6.6): axum's own
/// answers to a path, query or body that does not parse (plain text) become
/// `{"error": {"code", "message"}}` with a code for their status; answers
/// that are JSON already pass through untouched.
async fn json_rejections(req: Request, next: Next) -> Response {
    use axum::http::StatusCode as S;
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        S::BAD_REQUEST => "bad_request",
        S::NOT_FOUND => "not_found",
        S::METHOD_NOT_ALLOWED => "method_not_allowed",
        S::PAYLOAD_TOO_LARGE => "payload_too_large",
        S::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        S::UNPROCESSABLE_ENTITY => "invalid_request",
        S::UNAUTHORIZED => "unauthorized",
        S::REQUEST_TIMEOUT => "timeout",
        S::TOO_MANY_REQUESTS => "rate_limited",
        S::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let headers = response.headers().clone();
    // A rejection's text is short; more than this is not read.
    let text = match axum::body::to_bytes(response.into_body(), 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut out = ApiError::new(status, code, text).into_response();
    if let Some(retry) = headers.get(axum::http::header::RETRY_AFTER) {
        out.headers_mut().insert(axum::http::header::RETRY_AFTER, retry.clone());
    }
    out
}

/// At most `max_requests_in_flight` API requests at once: one more is
/// answered 503 `overloaded` with `Retry-After` at once (not queued), so an
/// overloaded host sheds load instead of growing a backlog. Health, readiness
/// and metrics are always answered.
async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(req).await;
    }
    let Ok(_place) = state.admission.clone().try_acquire_owned() else {
        crate::telemetry::request_shed();
        let mut response = ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is at its limit of requests in flight; try again shortly",
        )
        .into_response();
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return response;
    };
    next.run(req).await
}

/// Count and time every request by its route template.
async fn observe(State(_): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // One span per request (exported when tracing is on).
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    crate::telemetry::http_request(&method, &route, response.status().as_u16(), started);
    response
}

/// The response header naming the component versions that served a request.
pub const VERSIONS_HEADER: &str = "x-mercato-versions";

/// The cart a request names (`/v1/carts/{id}…`): while a canary runs, the
/// requests of one cart all go to the same side.
fn cart_of(path: &str) -> Option<&str> {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some("carts"), Some(id)) if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// Give the request its scope at its start: the active versions (every
/// instance it creates comes from that set, even if a deploy swaps one
/// meanwhile; while a canary runs, the canary's set for its share),
/// named in the `x-mercato-versions` header, and its one deadline, which
/// every component call and host call it makes shares. The answer counts
/// for the canary's judgement; one that ends the canary has it recorded.
async fn pin_versions(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let scope = state.runtime.request_scope(cart_of(req.uri().path()));
    let kept = scope.clone();
    let mut response = Runtime::scoped(scope, next.run(req)).await;
    if let Ok(value) = axum::http::HeaderValue::from_str(kept.set.header()) {
        response.headers_mut().insert(VERSIONS_HEADER, value);
    }
    if let Some(verdict) = state.runtime.observe(&kept, response.status().as_u16()) {
        let registry = state.registry.clone();
        // Tracked: a graceful shutdown waits for it to be recorded.
        state.work.spawn(async move { registry.record_verdict(verdict).await });
    }
    response
}
