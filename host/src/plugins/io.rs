//! What a plugin run takes and gives, independent of the world the plugin
//! was built for: [`RunInput`] and [`RunOutput`] are what the host checks,
//! records and replays; each world's bindings convert from and to them.
//!
//! `mercato:pricing@0.1.0` plugins see lines without titles, no codes and no
//! configuration, and give discounts only; `@0.2.0` plugins see everything
//! and may also honour or refuse the cart's codes.

use serde::{Deserialize, Serialize};

use super::limits::PluginLimits;
use super::sandbox::RunError;
use crate::bindings::{plugin as v2, plugin_v1 as v1};

/// The plugin worlds the host links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum World {
    #[serde(rename = "mercato:pricing@0.1.0")]
    V1,
    #[serde(rename = "mercato:pricing@0.2.0")]
    V2,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::V1 => "mercato:pricing@0.1.0",
            World::V2 => "mercato:pricing@0.2.0",
        }
    }
}

/// An amount of minor units of `currency`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Amount {
    pub amount: i64,
    pub currency: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputLine {
    pub sku: String,
    pub product_id: String,
    pub title: String,
    pub quantity: u32,
    pub unit_price: Amount,
}

/// One merchant's share of a cart, as their plugin sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunInput {
    pub merchant_id: String,
    pub currency: String,
    pub lines: Vec<InputLine>,
    pub discount_codes: Vec<String>,
    /// The merchant's configuration (JSON text), as it was for this run.
    pub config: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputDiscount {
    pub sku: String,
    pub label: String,
    pub amount: Amount,
    pub code: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RejectedCode {
    pub code: String,
    pub reason: String,
}

/// What a run gave.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunOutput {
    pub discounts: Vec<OutputDiscount>,
    pub rejected_codes: Vec<RejectedCode>,
}

impl RunInput {
    pub fn to_v1(&self) -> v1::mercato::pricing::types::Cart {
        use v1::mercato::pricing::types::{Cart, Line, Money};
        Cart {
            merchant_id: self.merchant_id.clone(),
            currency: self.currency.clone(),
            lines: self
                .lines
                .iter()
                .map(|l| Line {
                    sku: l.sku.clone(),
                    product_id: l.product_id.clone(),
                    quantity: l.quantity,
                    unit_price: Money {
                        amount: l.unit_price.amount,
                        currency: l.unit_price.currency.clone(),
                    },
                })
                .collect(),
        }
    }

    pub fn to_v2(&self) -> v2::mercato::pricing::types::Cart {
        use v2::mercato::pricing::types::{Cart, Line, Money};
        Cart {
            merchant_id: self.merchant_id.clone(),
            currency: self.currency.clone(),
            lines: self
                .lines
                .iter()
                .map(|l| Line {
                    sku: l.sku.clone(),
                    product_id: l.product_id.clone(),
                    title: l.title.clone(),
                    quantity: l.quantity,
                    unit_price: Money {
                        amount: l.unit_price.amount,
                        currency: l.unit_price.currency.clone(),
                    },
                })
                .collect(),
            discount_codes: self.discount_codes.clone(),
            config: self.config.clone(),
        }
    }
}

impl RunOutput {
    pub fn from_v1(discounts: Vec<v1::mercato::pricing::types::Discount>) -> RunOutput {
        RunOutput {
            discounts: discounts
                .into_iter()
                .map(|d| OutputDiscount {
                    sku: d.sku,
                    label: d.label,
                    amount: Amount { amount: d.amount.amount, currency: d.amount.currency },
                    code: None,
                })
                .collect(),
            rejected_codes: Vec::new(),
        }
    }

    pub fn from_v2(pricing: v2::mercato::pricing::types::Pricing) -> RunOutput {
        RunOutput {
            discounts: pricing
                .discounts
                .into_iter()
                .map(|d| OutputDiscount {
                    sku: d.sku,
                    label: d.label,
                    amount: Amount { amount: d.amount.amount, currency: d.amount.currency },
                    code: d.code,
                })
                .collect(),
            rejected_codes: pricing
                .rejected_codes
                .into_iter()
                .map(|r| RejectedCode { code: r.code, reason: r.reason })
                .collect(),
        }
    }

    /// Roughly what the output takes in memory, for the output budget.
    fn size(&self) -> u64 {
        let discounts: usize = self
            .discounts
            .iter()
            .map(|d| {
                d.sku.len()
                    + d.label.len()
                    + d.amount.currency.len()
                    + d.code.as_ref().map_or(0, String::len)
                    + 32
            })
            .sum();
        let codes: usize = self.rejected_codes.iter().map(|r| r.code.len() + r.reason.len() + 16).sum();
        (discounts + codes) as u64
    }
}

/// Longest label a discount may carry, in characters.
pub const MAX_LABEL_CHARS: usize = 100;
/// Longest reason a plugin may give for refusing a code, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// The host's checks of a plugin's output (SPEC §6.4): within the output
/// budget, the cart's currency, only this merchant's lines, no negative
/// discount, no line discounted below zero, and only the cart's codes.
pub fn check_output(input: &RunInput, output: &RunOutput, limits: &PluginLimits) -> Result<(), RunError> {
    let size = output.size();
    if size > limits.output_bytes {
        return Err(RunError::new(
            "output_too_large",
            format!(
                "returned {} discounts and {} refused codes ({size} bytes), over the output limit of {} bytes",
                output.discounts.len(),
                output.rejected_codes.len(),
                limits.output_bytes
            ),
        ));
    }
    let invalid = |m: String| Err(RunError::new("invalid_output", m));
    let known_code = |code: &str| input.discount_codes.iter().any(|c| c == code);
    let mut taken: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for d in &output.discounts {
        let Some(line) = input.lines.iter().find(|l| l.sku == d.sku) else {
            return invalid(format!(
                "a discount names sku {:?}, which is not one of this merchant's lines",
                d.sku
            ));
        };
        if d.amount.currency != input.currency {
            return invalid(format!(
                "the discount on {:?} is in {:?}, the cart is in {:?}",
                d.sku, d.amount.currency, input.currency
            ));
        }
        if d.amount.amount < 0 {
            return invalid(format!("the discount on {:?} is negative ({})", d.sku, d.amount.amount));
        }
        let label_chars = d.label.chars().count();
        if label_chars == 0 || label_chars > MAX_LABEL_CHARS {
            return invalid(format!(
                "the discount on {:?} has a label of {label_chars} characters (1 to {MAX_LABEL_CHARS})",
                d.sku
            ));
        }
        if let Some(code) = &d.code
            && !known_code(code)
        {
            return invalid(format!(
                "the discount on {:?} honours code {code:?}, which the cart does not hold",
                d.sku
            ));
        }
        let gross = line.unit_price.amount.checked_mul(i64::from(line.quantity)).unwrap_or(i64::MAX);
        let sum = taken.entry(d.sku.as_str()).or_insert(0);
        *sum = sum.saturating_add(d.amount.amount);
        if *sum > gross {
            return invalid(format!(
                "discounts on {:?} add up to {}, more than the line's {gross}: a line cannot go below zero",
                d.sku, *sum
            ));
        }
    }
    for r in &output.rejected_codes {
        if !known_code(&r.code) {
            return invalid(format!("refuses code {:?}, which the cart does not hold", r.code));
        }
        if output.discounts.iter().any(|d| d.code.as_deref() == Some(r.code.as_str())) {
            return invalid(format!("both honours and refuses code {:?}", r.code));
        }
        let chars = r.reason.chars().count();
        if chars == 0 || chars > MAX_REASON_CHARS {
            return invalid(format!(
                "refuses code {:?} with a reason of {chars} characters (1 to {MAX_REASON_CHARS})",
                r.code
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(amount: i64) -> Amount {
        Amount { amount, currency: "EUR".into() }
    }

    fn input() -> RunInput {
        let line = |sku: &str, amount: i64, quantity: u32| InputLine {
            sku: sku.into(),
            product_id: "p1".into(),
            title: sku.to_uppercase(),
            quantity,
            unit_price: eur(amount),
        };
        RunInput {
            merchant_id: "m1".into(),
            currency: "EUR".into(),
            lines: vec![line("a", 1000, 3), line("b", 500, 1)],
            discount_codes: vec!["SPRING10".into()],
            config: None,
        }
    }

    fn discount(sku: &str, amount: i64, currency: &str) -> OutputDiscount {
        OutputDiscount {
            sku: sku.into(),
            label: "promo".into(),
            amount: Amount { amount, currency: currency.into() },
            code: None,
        }
    }

    fn out(discounts: Vec<OutputDiscount>) -> RunOutput {
        RunOutput { discounts, rejected_codes: Vec::new() }
    }

    #[test]
    fn valid_output_passes() {
        let mut coded = discount("b", 500, "EUR");
        coded.code = Some("SPRING10".into());
        let ok = out(vec![discount("a", 1000, "EUR"), discount("a", 2000, "EUR"), coded]);
        assert_eq!(check_output(&input(), &ok, &PluginLimits::default()), Ok(()));
        let refused = RunOutput {
            discounts: vec![],
            rejected_codes: vec![RejectedCode { code: "SPRING10".into(), reason: "spring is over".into() }],
        };
        assert_eq!(check_output(&input(), &refused, &PluginLimits::default()), Ok(()));
    }

    #[test]
    fn each_invalid_output_is_named() {
        let limits = PluginLimits::default();
        let unknown_code = OutputDiscount { code: Some("WINTER".into()), ..discount("a", 1, "EUR") };
        let reject = |code: &str, reason: &str| RunOutput {
            discounts: vec![],
            rejected_codes: vec![RejectedCode { code: code.into(), reason: reason.into() }],
        };
        let cases = [
            (out(vec![discount("zz", 1, "EUR")]), "not one of this merchant's lines"),
            (out(vec![discount("a", 1, "USD")]), "the cart is in"),
            (out(vec![discount("a", -5, "EUR")]), "negative"),
            (out(vec![discount("b", 501, "EUR")]), "below zero"),
            (out(vec![discount("a", 2000, "EUR"), discount("a", 1001, "EUR")]), "below zero"),
            (out(vec![OutputDiscount { label: String::new(), ..discount("a", 1, "EUR") }]), "label"),
            (out(vec![unknown_code]), "which the cart does not hold"),
            (reject("WINTER", "no"), "which the cart does not hold"),
            (reject("SPRING10", ""), "reason of 0 characters"),
            (reject("SPRING10", &"x".repeat(201)), "reason of 201 characters"),
            (
                RunOutput {
                    discounts: vec![OutputDiscount {
                        code: Some("SPRING10".into()),
                        ..discount("a", 1, "EUR")
                    }],
                    rejected_codes: vec![RejectedCode { code: "SPRING10".into(), reason: "no".into() }],
                },
                "both honours and refuses",
            ),
        ];
        for (output, expected) in cases {
            let err = check_output(&input(), &output, &limits).unwrap_err();
            assert_eq!(err.kind, "invalid_output");
            assert!(err.message.contains(expected), "{} should mention {expected}", err.message);
        }
        let many = out((0..1000).map(|_| discount("a", 0, "EUR")).collect());
        assert_eq!(check_output(&input(), &many, &limits).unwrap_err().kind, "output_too_large");
    }
}
