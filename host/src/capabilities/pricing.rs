//! `mercato:commerce/pricing-engine`, the host side of cart pricing. It runs
//! each merchant's pricing plugin on that merchant's lines and returns the
//! validated adjustments. Merchant plugins arrive with the plugin issue;
//! until a merchant uploads one, their lines have no adjustments.

use crate::bindings::host::mercato::commerce::pricing_engine::Host;
use crate::bindings::types::{Error, LineAdjustment, PricedLine};
use crate::runtime::Ctx;

impl Host for Ctx {
    async fn adjust(
        &mut self,
        _currency: String,
        _lines: Vec<PricedLine>,
    ) -> wasmtime::Result<Result<Vec<LineAdjustment>, Error>> {
        Ok(Ok(Vec::new()))
    }
}
