//! `mercato:commerce/pricing-engine`, the host side of cart pricing: each
//! merchant's pricing plugin runs on that merchant's lines, and the validated
//! discounts come back as adjustments (see `crate::plugins`).

use crate::bindings::host::mercato::commerce::pricing_engine::Host;
use crate::bindings::types::{Error, LineAdjustment, PricedLine};
use crate::runtime::Ctx;

impl Host for Ctx {
    async fn adjust(
        &mut self,
        currency: String,
        lines: Vec<PricedLine>,
    ) -> wasmtime::Result<Result<Vec<LineAdjustment>, Error>> {
        let plugins = self.rt.plugins.clone();
        Ok(plugins.adjust(&currency, &lines, self.deadline).await.map_err(|e| Error::Storage(e.to_string())))
    }
}
