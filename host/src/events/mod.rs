//! Events (SPEC §6.9): what the outside world hears of committed changes.
//!
//! A component hands its events to `mercato:commerce/transactions.emit`;
//! the host renders them here ([`render`], the API's shapes) and the commit
//! writes them to the outbox (`storage::events`) in the same database
//! transaction as the change. The [`relay`] hands them on: to NATS
//! JetStream when `events.nats_url` is set, and to merchants' [`webhooks`].
pub mod relay;
pub mod render;
pub mod tail;
pub mod webhooks;

pub use relay::EventsConfig;
pub use webhooks::WebhooksConfig;
