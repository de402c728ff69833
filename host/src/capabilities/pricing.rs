//! `mercato:commerce/pricing-engine`, the host side of cart pricing: each
//! merchant's pricing plugin runs on that merchant's lines, and the validated
//! discounts come back as adjustments (see `crate::plugins`).

use std::time::Instant;

use crate::bindings::host::mercato::commerce::pricing_engine::Host;
use crate::bindings::types::{Error, LineAdjustment, PricedLine, Pricing, ProvenanceEntry};
use crate::capabilities::transactions::SharedStaging;
use crate::plugins::Plugins;

/// The pricing-engine state of one store: the merchants' plugins only when
/// its component was granted the engine (the cart), the request's deadline
/// and staging (where the plugins that ran are recorded).
pub struct PricingState {
    pub plugins: Option<Plugins>,
    pub deadline: Instant,
    pub staged: SharedStaging,
}

/// Most plugins one request records (one per merchant in a cart).
const MAX_PLUGINS: usize = 64;

impl PricingState {
    /// Remember, for the request's provenance, which merchant's plugin (by
    /// digest) made these adjustments: the host made their `source`, so the
    /// record does not depend on what a guest passes along.
    fn record_plugins(&self, lines: &[PricedLine], adjustments: &[LineAdjustment]) {
        let mut staging = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        for a in adjustments {
            let Some(digest) = a.adjustment.source.strip_prefix("plugin:") else { continue };
            let Some(line) = lines.iter().find(|l| l.sku == a.sku) else { continue };
            let name = format!("pricing-plugin:{}", line.merchant_id);
            if staging.plugins.len() < MAX_PLUGINS
                && !staging.plugins.iter().any(|e| e.name == name && e.digest == digest)
            {
                staging.plugins.push(ProvenanceEntry { name, digest: digest.to_string() });
            }
        }
    }
}

impl Host for PricingState {
    async fn adjust(
        &mut self,
        currency: String,
        lines: Vec<PricedLine>,
        codes: Vec<String>,
    ) -> wasmtime::Result<Result<Pricing, Error>> {
        let Some(plugins) = self.plugins.clone() else {
            return Ok(Err(Error::Forbidden("the pricing engine is not granted to this component".into())));
        };
        let priced = crate::capabilities::bounded(
            self.deadline,
            plugins.adjust(&currency, &lines, &codes, self.deadline),
        );
        Ok(match priced.await {
            Some(Ok(pricing)) => {
                self.record_plugins(&lines, &pricing.adjustments);
                Ok(pricing)
            }
            Some(Err(e)) => Err(Error::Storage(e.to_string())),
            None => {
                crate::telemetry::host_call_timed_out("cart", "pricing-engine");
                Err(Error::Timeout("pricing did not finish before the deadline".into()))
            }
        })
    }
}
