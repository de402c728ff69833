//! `mercato:commerce/provenance`: what served the current request, from the
//! host that ran it — the versions of the request's scope and the pricing
//! plugins the pricing engine ran for it (recorded in the request's staging,
//! which every instance serving the request shares).

use crate::bindings::host::mercato::commerce::provenance::Host;
use crate::bindings::types::ProvenanceEntry;
use crate::capabilities::transactions::SharedStaging;

/// The provenance state of one store: the versions of the request's scope
/// (component name → digest, in table order) only when its component was
/// granted provenance (the order), and the request's staging.
pub struct ProvenanceState {
    pub versions: Option<Vec<ProvenanceEntry>>,
    pub staged: SharedStaging,
}

impl Host for ProvenanceState {
    async fn served_by(&mut self) -> wasmtime::Result<Vec<ProvenanceEntry>> {
        let Some(versions) = &self.versions else {
            return Err(wasmtime::format_err!("provenance is not granted to this component"));
        };
        let mut out = versions.clone();
        let staging = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(staging.plugins.iter().cloned());
        Ok(out)
    }
}
