//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! It is built from the code, so it cannot drift from the routes: every
//! route is registered through `utoipa_axum::routes!` from its handler's
//! `#[utoipa::path]` (a handler without one does not compile into the
//! router), the request bodies are the handlers' own deserialized types, and
//! the records components return (`Cart`, `Product`, `StockLevel`, …) get
//! their schemas from the WIT-generated types. The shapes the handlers build
//! as JSON (orders, pages, merchants) are described here; the test suite runs
//! schemathesis against a real process to check every answer against them.

use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::bindings::types::{Money, OrderLine, Product, ProvenanceEntry};

/// Security scheme names, as `#[utoipa::path(security(...))]` uses them.
pub const ADMIN: &str = "admin_token";
pub const MERCHANT: &str = "merchant_token";
pub const ORDER_ACCESS: &str = "order_access_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mercato",
        description = "A marketplace commerce backend whose capabilities run as WebAssembly components (SPEC §4).",
        license(name = "Apache-2.0")
    ),
    modifiers(&Security),
    components(schemas(ErrorBody)),
    tags(
        (name = "shopper", description = "Products, carts, checkout and orders; no authentication"),
        (name = "merchant", description = "A merchant's products, stock, orders and pricing plugin (merchant token)"),
        (name = "operator", description = "Merchants, plugin limits, components, order cancels (admin token)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(what.to_string());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(ADMIN, bearer("The operator's admin token"));
        components
            .add_security_scheme(MERCHANT, bearer("A merchant's API token (from POST /v1/admin/merchants)"));
        components.add_security_scheme(
            ORDER_ACCESS,
            bearer("The order's access token (from its checkout's 201 answer)"),
        );
    }
}

/// Every error: a stable `code` and a message for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `not_found`, `invalid_request`, `out_of_stock`, …
    pub code: String,
    pub message: String,
    /// `out_of_stock`: the lines that cannot be served.
    #[schema(nullable = false)]
    pub details: Option<Vec<ShortageDetail>>,
}

#[derive(Serialize, ToSchema)]
pub struct ShortageDetail {
    pub sku: String,
    pub requested: u32,
    pub available: u32,
}

/// Order statuses (SPEC §3).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatusName {
    PendingPayment,
    Paid,
    Fulfilled,
    Cancelled,
}

/// Payment statuses.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatusName {
    Pending,
    Authorized,
    Succeeded,
    Declined,
    Voided,
    Refunded,
}

#[derive(Serialize, ToSchema)]
pub struct OrderPayment {
    pub id: String,
    pub status: PaymentStatusName,
}

/// An order as its shopper and the operator see it: what its merchants see,
/// plus the payment and the provenance.
#[derive(Serialize, ToSchema)]
pub struct ShopperOrder {
    #[serde(flatten)]
    pub order: MerchantOrder,
    pub payment: OrderPayment,
    /// The component (and plugin) versions that took part.
    pub provenance: Vec<ProvenanceEntry>,
}

/// The checkout's answer: the order and the shopper's key to it.
#[derive(Serialize, ToSchema)]
pub struct PlacedOrder {
    #[serde(flatten)]
    pub order: ShopperOrder,
    /// `Authorization: Bearer <access_token>` reads the order (the same on a replay).
    pub access_token: String,
}

/// An order as a merchant sees it: only its own lines, no payment, no provenance.
#[derive(Serialize, ToSchema)]
pub struct MerchantOrder {
    pub id: String,
    pub status: OrderStatusName,
    pub email: String,
    pub currency: String,
    pub lines: Vec<OrderLine>,
    pub subtotal: Money,
    pub discount_total: Money,
    pub total: Money,
    /// Unix milliseconds.
    pub created_at: u64,
}

#[derive(Serialize, ToSchema)]
pub struct MerchantOrderPage {
    pub items: Vec<MerchantOrder>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProductList {
    pub items: Vec<Product>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// A new merchant. The token is shown once.
#[derive(Serialize, ToSchema)]
pub struct CreatedMerchant {
    pub id: String,
    pub name: String,
    pub token: String,
}

/// A merchant's plugin budgets.
#[derive(Serialize, ToSchema)]
pub struct MerchantLimits {
    pub merchant_id: String,
    pub limits: crate::plugins::PluginLimits,
}

/// An uploaded plugin.
#[derive(Serialize, ToSchema)]
pub struct UploadedPlugin {
    /// `sha256:<hex>` of the binary.
    pub digest: String,
    pub status: String,
}

/// The components, their active versions and histories.
#[derive(Serialize, ToSchema)]
pub struct ComponentList {
    pub components: Vec<serde_json::Value>,
}

/// `{"oci": "registry/repo:tag"}` or `registry/repo@sha256:…`.
#[derive(Serialize, ToSchema)]
pub struct OciReference {
    pub oci: String,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// `sqlite` or `postgres`, when ready.
    pub database: Option<String>,
    pub components: Option<Vec<serde_json::Value>>,
    /// Why not, when unavailable.
    pub reason: Option<String>,
}

/// `GET /openapi.json`: this document (built once, when the router is).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "This document", content_type = "application/json"))
)]
pub async fn document(axum::Extension(doc): axum::Extension<Document>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc.0.as_ref().clone())
}

/// The serialized document, handed to [`document`].
#[derive(Clone)]
pub struct Document(pub std::sync::Arc<String>);
