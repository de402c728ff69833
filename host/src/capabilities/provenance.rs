//! `mercato:commerce/provenance`: what served the current request, from the
//! host that ran it — the versions of the request's scope and the pricing
//! plugins the pricing engine ran for it (recorded in the request's staging,
//! which every instance serving the request shares).

use crate::bindings::host::mercato::commerce::provenance::Host;
use crate::bindings::types::ProvenanceEntry;
use crate::runtime::Ctx;

impl Host for Ctx {
    async fn served_by(&mut self) -> wasmtime::Result<Vec<ProvenanceEntry>> {
        let mut out: Vec<ProvenanceEntry> = self
            .scope
            .set
            .versions()
            .into_iter()
            .map(|v| ProvenanceEntry { name: v.kind.name().to_string(), digest: v.digest })
            .collect();
        let staging = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(staging.plugins.iter().cloned());
        Ok(out)
    }
}
