//! Host-provided WIT interfaces, one module each. Which component gets which
//! is decided by `runtime::linker_for`.

pub mod keyvalue;
pub mod logging;
pub mod peers;
pub mod pricing;
