//! One router per area of the API.

pub mod carts;
pub mod merchants;
pub mod ops;
pub mod products;
