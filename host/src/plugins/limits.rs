//! Budgets of one plugin run (SPEC §2, §6.4), modelled on Shopify Functions:
//! defaults for every merchant, raised or lowered per merchant by the operator.

use serde::{Deserialize, Serialize};

/// The instruction budget covers this many cart lines; a cart with more lines
/// gets the budget once more per started block of lines.
pub const LINES_PER_BUDGET: usize = 200;

/// Wasm stack of a plugin run (the same for every merchant: it is a property
/// of the plugin engine).
pub const STACK_BYTES: usize = 512 * 1024;

/// Bytes of stdout/stderr kept from one run (the rest is dropped).
pub const LOG_BYTES: usize = 4 * 1024;

/// What an operator may raise a limit to.
pub const CEILING: PluginLimits = PluginLimits {
    binary_bytes: 64 * 1024 * 1024,
    memory_bytes: 512 * 1024 * 1024,
    instructions: 10_000_000_000,
    deadline_ms: 2_000,
    output_bytes: 1024 * 1024,
};

/// The budgets of one merchant's plugin.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Largest accepted upload.
    pub binary_bytes: u64,
    /// Linear memory of one run.
    pub memory_bytes: u64,
    /// Wasm instructions (fuel) of one run over up to [`LINES_PER_BUDGET`] lines.
    pub instructions: u64,
    /// Wall-clock time of one run (also bounded by the request's deadline).
    pub deadline_ms: u64,
    /// Size of the returned discounts (labels, skus and 32 bytes per entry).
    pub output_bytes: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            binary_bytes: 256 * 1024,
            memory_bytes: 10 * 1024 * 1024,
            instructions: 11_000_000,
            deadline_ms: 100,
            output_bytes: 20 * 1024,
        }
    }
}

/// A partial update of [`PluginLimits`]: fields left out keep their value.
/// The budgets to change; the others keep their values.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsUpdate {
    /// 1 to 64 MiB (`CEILING`).
    #[schema(minimum = 1, maximum = 67108864)]
    pub binary_bytes: Option<u64>,
    /// 1 to 512 MiB.
    #[schema(minimum = 1, maximum = 536870912)]
    pub memory_bytes: Option<u64>,
    /// 1 to 10^10.
    #[schema(minimum = 1, maximum = 10000000000u64)]
    pub instructions: Option<u64>,
    /// 1 to 2000 ms.
    #[schema(minimum = 1, maximum = 2000)]
    pub deadline_ms: Option<u64>,
    /// 1 to 1 MiB.
    #[schema(minimum = 1, maximum = 1048576)]
    pub output_bytes: Option<u64>,
}

impl PluginLimits {
    /// Fuel for a run over `lines` lines.
    pub fn fuel_for(&self, lines: usize) -> u64 {
        let blocks = lines.div_ceil(LINES_PER_BUDGET).max(1) as u64;
        self.instructions.saturating_mul(blocks)
    }

    /// Apply `update`, refusing values of zero or above [`CEILING`].
    pub fn apply(mut self, update: &LimitsUpdate) -> Result<PluginLimits, String> {
        let fields = [
            ("binary_bytes", update.binary_bytes, &mut self.binary_bytes, CEILING.binary_bytes),
            ("memory_bytes", update.memory_bytes, &mut self.memory_bytes, CEILING.memory_bytes),
            ("instructions", update.instructions, &mut self.instructions, CEILING.instructions),
            ("deadline_ms", update.deadline_ms, &mut self.deadline_ms, CEILING.deadline_ms),
            ("output_bytes", update.output_bytes, &mut self.output_bytes, CEILING.output_bytes),
        ];
        for (name, new, field, ceiling) in fields {
            if let Some(v) = new {
                if v == 0 || v > ceiling {
                    return Err(format!("{name}: must be between 1 and {ceiling} (got {v})"));
                }
                *field = v;
            }
        }
        Ok(self)
    }

    /// Check limits read from configuration (the same rules as an update).
    pub fn check(&self) -> Result<(), String> {
        PluginLimits::default().apply(&LimitsUpdate::from(*self)).map(drop)
    }
}

impl From<PluginLimits> for LimitsUpdate {
    fn from(l: PluginLimits) -> LimitsUpdate {
        LimitsUpdate {
            binary_bytes: Some(l.binary_bytes),
            memory_bytes: Some(l.memory_bytes),
            instructions: Some(l.instructions),
            deadline_ms: Some(l.deadline_ms),
            output_bytes: Some(l.output_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuel_scales_with_started_blocks_of_lines() {
        let l = PluginLimits::default();
        assert_eq!(l.fuel_for(0), 11_000_000);
        assert_eq!(l.fuel_for(200), 11_000_000);
        assert_eq!(l.fuel_for(201), 22_000_000);
        assert_eq!(l.fuel_for(1000), 55_000_000);
    }

    #[test]
    fn updates_keep_unset_fields_and_refuse_out_of_range_values() {
        let base = PluginLimits::default();
        let raised =
            base.apply(&LimitsUpdate { memory_bytes: Some(64 << 20), ..Default::default() }).unwrap();
        assert_eq!(raised.memory_bytes, 64 << 20);
        assert_eq!(raised.instructions, base.instructions);
        let err = base.apply(&LimitsUpdate { deadline_ms: Some(0), ..Default::default() }).unwrap_err();
        assert!(err.contains("deadline_ms"), "{err}");
        let err = base
            .apply(&LimitsUpdate { binary_bytes: Some(CEILING.binary_bytes + 1), ..Default::default() })
            .unwrap_err();
        assert!(err.contains("binary_bytes"), "{err}");
    }
}
