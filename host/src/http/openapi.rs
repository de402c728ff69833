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
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::bindings::types::{Money, OrderLine, Product, ProvenanceEntry};

/// The components' own currency list (one file, not a copy).
#[path = "../../../components/kit/src/iso4217.rs"]
mod iso4217;

/// A string schema that is one of `values`, with `example` as its example
/// (schemathesis starts from it: carts in EUR, like the seeded products).
fn string_enum<'a>(
    description: &str,
    values: impl IntoIterator<Item = &'a str>,
    example: &str,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .examples([serde_json::json!(example)])
        .into()
}

/// Schema of a currency field: the active ISO 4217 codes the components
/// accept, as an enum (`#[schema(value_type = Currency)]` on a field).
pub struct Currency;

impl utoipa::PartialSchema for Currency {
    fn schema() -> RefOr<Schema> {
        string_enum("An active ISO 4217 currency code", iso4217::ISO_4217.iter().copied(), "EUR")
    }
}

impl ToSchema for Currency {}

/// Schema of a service component's name (the deploy and rollback paths),
/// from [`ComponentKind::ALL`](crate::runtime::ComponentKind::ALL).
pub struct ComponentName;

impl utoipa::PartialSchema for ComponentName {
    fn schema() -> RefOr<Schema> {
        string_enum(
            "A service component",
            crate::runtime::ComponentKind::ALL.iter().map(|k| k.name()),
            "catalog",
        )
    }
}

impl ToSchema for ComponentName {}

/// Patterns the handlers' checks agree with, character for character:
/// `NOT_BLANK` holds a character that is not Unicode White_Space (what
/// Rust's `trim` removes), so a title of spaces does not match.
pub const NOT_BLANK: &str = r"[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// A merchant's name: not blank (as [`NOT_BLANK`]) and no control character
/// (a NUL cannot go into a PostgreSQL `TEXT` column).
pub const MERCHANT_NAME: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$";

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
    components(schemas(ErrorBody, Currency, ComponentName)),
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

/// A merchant's plugin configuration.
#[derive(Serialize, ToSchema)]
pub struct PluginConfig {
    /// The JSON value set.
    pub config: serde_json::Value,
    /// Its size as sent.
    pub bytes: usize,
}

/// A page of recorded plugin runs.
#[derive(Serialize, ToSchema)]
pub struct RunPage {
    pub items: Vec<crate::plugins::runs::Recorded>,
    /// Pass as `cursor` for the next (older) page; null on the last.
    pub next_cursor: Option<String>,
}

/// A merchant's webhook endpoint.
#[derive(Serialize, ToSchema)]
pub struct Webhook {
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// Unix milliseconds, when it was registered.
    pub created_at: i64,
}

/// A webhook just registered, with its signing secret (shown this once).
#[derive(Serialize, ToSchema)]
pub struct WebhookWithSecret {
    pub url: String,
    pub events: Vec<String>,
    pub created_at: i64,
    /// `whsec_…`: the HMAC-SHA256 key of `Mercato-Signature` (shown once).
    pub secret: String,
}

/// One event's delivery to the merchant's endpoint.
#[derive(Serialize, ToSchema)]
pub struct Delivery {
    pub id: i64,
    /// The event's stable id (also the `Mercato-Event-Id` header): de-duplicate on it.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The order (or sku) it is about.
    pub subject: String,
    /// Where it was (last) sent.
    pub url: String,
    /// `pending`, `delivered` or `failed` (given up past the retry horizon).
    pub status: String,
    pub attempts: i64,
    /// Unix ms of the next attempt (pending only).
    pub next_attempt_at: Option<i64>,
    /// The endpoint's HTTP status at the last attempt, if it answered.
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<Delivery>,
    /// Pass as `cursor` for the next (older) page; null on the last.
    pub next_cursor: Option<String>,
}

/// An event of the outbox, as the operator sees it (SPEC §6.9).
#[derive(Serialize, ToSchema)]
pub struct OutboxEvent {
    /// Its place in the outbox (pass the last one's as `after`).
    pub seq: i64,
    /// Stable: de-duplicate on it.
    pub id: String,
    /// `order.paid`, `order.fulfilled`, `order.cancelled`, `stock.low`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is about (an order id, a sku).
    pub subject: String,
    /// Unix milliseconds, at commit.
    pub created_at: i64,
    /// The merchants it concerns (each receives only their lines).
    pub merchants: Vec<String>,
    /// When the relay handed it on (unix ms); null while it waits.
    pub published_at: Option<i64>,
    /// The order (or stock level) as the API shows it to the operator.
    pub data: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct OutboxPage {
    pub items: Vec<OutboxEvent>,
    /// Pass as `after` for the next page (the last item's `seq`, or `after` itself).
    pub next_after: i64,
}

/// An order as a merchant sees it: only its own lines, no payment, no provenance.
#[derive(Serialize, ToSchema)]
pub struct MerchantOrder {
    pub id: String,
    pub status: OrderStatusName,
    pub email: String,
    pub currency: String,
    pub lines: Vec<OrderLine>,
    /// The cart's discount codes at checkout and which merchants' plugins
    /// honoured them (a merchant sees only the codes it honoured).
    pub discount_codes: Vec<crate::bindings::types::DiscountCode>,
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
#[serde(deny_unknown_fields)]
pub struct OciReference {
    #[schema(example = "ghcr.io/acme/catalog:1.4.0")]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        let (_, api) = crate::http::api_routes().split_for_parts();
        serde_json::to_value(api).expect("json")
    }

    /// `NOT_BLANK` matches a one-character string exactly when Rust's `trim`
    /// keeps that character, for every character; and the document's
    /// not-blank fields use it.
    #[test]
    fn not_blank_agrees_with_trim() {
        let re = regex::Regex::new(NOT_BLANK).expect("regex");
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(re.is_match(&c.to_string()), !c.is_whitespace(), "{:?} (U+{:04X})", c, c as u32);
        }
        let doc = doc();
        let pattern = &doc["components"]["schemas"]["ProductBody"]["properties"]["title"]["pattern"];
        assert_eq!(pattern, NOT_BLANK);
        let pattern = &doc["components"]["schemas"]["NewMerchant"]["properties"]["name"]["pattern"];
        assert_eq!(pattern, MERCHANT_NAME);
    }

    /// `MERCHANT_NAME` accepts exactly what `create_merchant` does: some
    /// character `trim` keeps, none that is a control character.
    #[test]
    fn merchant_name_pattern_agrees_with_the_handler() {
        let re = regex::Regex::new(MERCHANT_NAME).expect("regex");
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            for name in [c.to_string(), format!("a{c}"), format!("{c} b")] {
                let accepted = !name.trim().is_empty() && !name.contains(char::is_control);
                assert_eq!(re.is_match(&name), accepted, "{name:?}");
            }
        }
    }

    /// The checkout's email pattern accepts exactly what the order
    /// component's check does (an `@`, no whitespace or control character),
    /// for every character around an `@`.
    #[test]
    fn email_pattern_agrees_with_the_order_check() {
        let doc = doc();
        let pattern = doc["components"]["schemas"]["CheckoutBody"]["properties"]["email"]["pattern"]
            .as_str()
            .expect("email pattern")
            .to_string();
        let re = regex::Regex::new(&pattern).expect("regex");
        for c in (0..=0x10FFFF).filter_map(char::from_u32).filter(|c| *c != '@') {
            let email = format!("a{c}@b");
            let component_accepts = !email.contains(|c: char| c.is_whitespace() || c.is_control());
            assert_eq!(re.is_match(&email), component_accepts, "U+{:04X}", c as u32);
        }
        assert!(!re.is_match("no-at-sign"));
    }

    #[test]
    fn currencies_and_component_names_are_enums() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let currencies = schemas["Currency"]["enum"].as_array().expect("currency enum");
        assert!(currencies.len() > 100 && currencies.contains(&serde_json::json!("EUR")));
        let names = schemas["ComponentName"]["enum"].as_array().expect("component enum");
        assert_eq!(names.len(), crate::runtime::ComponentKind::ALL.len());
    }
}
