//! One router per area of the API.

pub mod carts;
pub mod components;
pub mod events;
pub mod inventory;
pub mod merchants;
pub mod ops;
pub mod orders;
pub mod plugins;
pub mod products;
pub mod webhooks;
