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
        let priced =
            crate::capabilities::bounded(self.deadline, plugins.adjust(&currency, &lines, self.deadline));
        Ok(match priced.await {
            Some(result) => result.map_err(|e| Error::Storage(e.to_string())),
            None => {
                crate::telemetry::host_call_timed_out("cart", "pricing-engine");
                Err(Error::Timeout("pricing did not finish before the deadline".into()))
            }
        })
    }
}
