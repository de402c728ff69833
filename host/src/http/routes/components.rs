//! Operator: `GET /v1/admin/components`, `POST /v1/admin/components/{name}/deploy`
//! (the component as `application/wasm`, or `{"oci": "registry/repo:tag"}`),
//! `POST /v1/admin/components/{name}/rollback`, `POST …/{name}/promote`
//! (a deploy with `?canary=N` serves N % of new requests until then).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::http::extract::{self, Admin};
use crate::http::{ApiError, ApiResult, AppState};
use crate::registry::{Artifact, DeployError, DeployOptions, Deployed, Progress};
use crate::runtime::ComponentKind;

/// Largest component accepted over the API.
pub const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

/// The header that carries a base64 signature of an uploaded component.
pub const SIGNATURE_HEADER: &str = "x-mercato-signature";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(deploy).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)))
        .routes(routes!(rollback))
        .routes(routes!(promote))
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::InvalidComponent(m) => ApiError::bad_request("invalid_component", m),
            DeployError::ContractMismatch(m) => ApiError::bad_request("contract_mismatch", m),
            DeployError::InvalidReference(m) => ApiError::bad_request("invalid_reference", m),
            DeployError::SignatureInvalid(m) => ApiError::bad_request("signature_invalid", m),
            DeployError::Registry(m) => ApiError::new(StatusCode::BAD_GATEWAY, "registry_error", m),
            DeployError::NothingToRollBack(m) => {
                ApiError::new(StatusCode::CONFLICT, "nothing_to_roll_back", m)
            }
            DeployError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            DeployError::NoCanary(m) => ApiError::new(StatusCode::CONFLICT, "no_canary", m),
            DeployError::Storage(e) => ApiError::internal(e),
            DeployError::Internal(m) => ApiError::internal(m),
        }
    }
}

fn component(name: &str) -> ApiResult<ComponentKind> {
    ComponentKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no component {name:?}; the components are catalog, cart, inventory, payment, order"
        ))
    })
}

#[utoipa::path(
    get,
    path = "/v1/admin/components",
    tag = "operator",
    operation_id = "list_components",
    summary = "Each component: world, active version, history",
    security(("admin_token" = [])),
    responses((status = 200, description = "The components", body = crate::http::openapi::ComponentList), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn list(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Value>> {
    Ok(Json(state.registry.describe().await?))
}

fn answer(d: Deployed) -> (StatusCode, Json<Value>) {
    (StatusCode::OK, Json(json!(d)))
}

#[utoipa::path(
    post,
    path = "/v1/admin/components/{name}/deploy",
    tag = "operator",
    operation_id = "deploy_component",
    summary = "Deploy a component version: uploaded, or pulled from an OCI registry",
    params(("name" = crate::http::openapi::ComponentName, Path, description = "catalog, cart, inventory, payment or order"), ("canary" = Option<u8>, Query, description = "Deploy as a canary serving this percent of new requests", minimum = 1, maximum = 99), ("replace" = Option<bool>, Query, description = "End a running canary of this component first (else the deploy is refused with 409)")),
    request_body(content((Vec<u8> = "application/wasm"), (crate::http::openapi::OciReference = "application/json"))),
    security(("admin_token" = [])),
    responses((status = 200, description = "The active version (with `Accept: application/x-ndjson`, one JSON line per stage)", body = crate::registry::Deployed), (status = 422, description = "`invalid_component`, `contract_mismatch`, `signature_invalid`, `invalid_reference`", body = crate::http::openapi::ErrorBody), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such component", body = crate::http::openapi::ErrorBody), (status = 409, description = "`conflict`", body = crate::http::openapi::ErrorBody), (status = 415, description = "`unsupported_media_type`", body = crate::http::openapi::ErrorBody), (status = 502, description = "`registry_error`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn deploy(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let kind = component(&name)?;
    let options = deploy_options(&q)?;
    let body = extract::upload_body(body, "a component", MAX_COMPONENT_BYTES)?;
    let artifact = match extract::media_type(&headers) {
        "application/wasm" => {
            if body.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_component",
                    "the body is empty; send the .wasm file",
                ));
            }
            let signature =
                headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string());
            Artifact::Upload { bytes: body.to_vec(), signature }
        }
        "application/json" => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct OciBody {
                oci: String,
            }
            let parsed: OciBody = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(
                    "invalid_request",
                    format!("expected {{\"oci\": \"registry/repo:tag\"}}: {e}"),
                )
            })?;
            state
                .registry
                .oci()
                .reference(&parsed.oci)
                .map_err(|e| ApiError::bad_request("invalid_reference", e.to_string()))?;
            Artifact::Oci { reference: parsed.oci }
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the component as Content-Type: application/wasm, or {\"oci\": \"registry/repo:tag\"} as application/json",
            ));
        }
    };
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    if streaming {
        return Ok(follow(state, kind, artifact, options));
    }
    Ok(answer(state.registry.deploy_with_progress(kind, artifact, options, &|_| {}).await?).into_response())
}

/// `?canary=N` (1–99) and `?replace=true|false`.
fn deploy_options(q: &std::collections::HashMap<String, String>) -> ApiResult<DeployOptions> {
    if let Some(unknown) = q.keys().find(|k| !["canary", "replace"].contains(&k.as_str())) {
        return Err(ApiError::bad_request("invalid_request", format!("unknown query parameter {unknown:?}")));
    }
    let canary = match q.get("canary") {
        None => None,
        Some(n) => Some(n.parse::<u8>().ok().filter(|n| (1..=99).contains(n)).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                "canary: a percent of requests, a whole number from 1 to 99",
            )
        })?),
    };
    let replace = match q.get("replace").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("invalid_request", "replace: true or false")),
    };
    Ok(DeployOptions { canary, replace })
}

/// The deploy as it happens: with `Accept: application/x-ndjson` the answer
/// is 200 and a JSON line per stage (`received`/`pulling`/`pulled`,
/// `checking`, `compiling`, `precompiled`, `swapped`), ending with
/// `{"stage": "done", "result": …}` or `{"stage": "failed", "status": 422,
/// "error": {"code", "message"}}`. The deploy runs to its end even if the
/// client goes away.
fn follow(state: AppState, kind: ComponentKind, artifact: Artifact, options: DeployOptions) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let registry = state.registry.clone();
    tokio::spawn(async move {
        let stages = tx.clone();
        let progress = move |p: Progress| {
            let _ = stages.send(json!(p).to_string() + "\n");
        };
        let last = match registry.deploy_with_progress(kind, artifact, options, &progress).await {
            Ok(d) => json!({ "stage": "done", "result": d }),
            Err(e) => {
                let e = ApiError::from(e);
                json!({ "stage": "failed", "status": e.status.as_u16(), "error": { "code": e.code, "message": e.message } })
            }
        };
        let _ = tx.send(last.to_string() + "\n");
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(lines)).into_response()
}

#[utoipa::path(
    post,
    path = "/v1/admin/components/{name}/rollback",
    tag = "operator",
    operation_id = "rollback_component",
    summary = "Go back to the previous version",
    params(("name" = crate::http::openapi::ComponentName, Path, description = "catalog, cart, inventory, payment or order")),
    security(("admin_token" = [])),
    responses((status = 200, description = "The active version", body = crate::registry::Deployed), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such component", body = crate::http::openapi::ErrorBody), (status = 409, description = "`nothing_to_roll_back`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn rollback(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let kind = component(&name)?;
    Ok(answer(state.registry.rollback(kind).await?))
}

#[utoipa::path(
    post,
    path = "/v1/admin/components/{name}/promote",
    tag = "operator",
    operation_id = "promote_component",
    summary = "Make the running canary the active version",
    params(("name" = crate::http::openapi::ComponentName, Path, description = "catalog, cart, inventory, payment or order")),
    security(("admin_token" = [])),
    responses((status = 200, description = "The active version", body = crate::registry::Deployed), (status = 401, description = "`unauthorized`", body = crate::http::openapi::ErrorBody), (status = 404, description = "No such component", body = crate::http::openapi::ErrorBody), (status = 409, description = "`no_canary`", body = crate::http::openapi::ErrorBody), (status = "default", description = "An error: `{\"error\": {\"code\", \"message\"}}`", body = crate::http::openapi::ErrorBody))
)]
async fn promote(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let kind = component(&name)?;
    Ok(answer(state.registry.promote(kind).await?))
}
