//! The payment component: payment intents and refunds, Stripe-style.
//!
//! With `provider_url` (and `secret_key`) in its `wasi:config`, it calls a
//! Stripe-compatible API over `wasi:http` ([`provider`]): create-and-confirm a
//! payment intent with an `Idempotency-Key`, refund. The host lets it reach
//! that one host only. Without a provider it runs the built-in **test mode**:
//! Stripe's documented test tokens behave as Stripe documents them —
//! `tok_visa`, `tok_mastercard`, `tok_amex` succeed; `tok_chargeDeclined` is
//! declined ("Your card was declined."); `tok_chargeDeclinedInsufficientFunds`
//! is declined for insufficient funds; `tok_chargeDeclinedExpiredCard` for an
//! expired card. Any other token is invalid input.
//!
//! Storage (its own namespace):
//! - bucket `intents`: idempotency key → [`IntentRecord`]; the same key with
//!   the same request returns the first result (no second charge), with
//!   another request it is refused;
//! - bucket `payments`: payment id → idempotency key, for refunds.

mod provider;
mod tokens;

use mercato_kit::kv::{self, Change};
use mercato_kit::types::{Error, Money, Payment, PaymentRequest, PaymentStatus};
use serde::{Deserialize, Serialize};

mod bindings {
    mercato_kit::component_bindings!("../../wit", "mercato:commerce/payment-component", {
        "wasi:random/random@0.2.12": mercato_kit::bindings::wasi::random::random,
        "wasi:config/store@0.2.0-rc.1": generate,
        "wasi:http/types@0.2.12": generate,
        "wasi:http/outgoing-handler@0.2.12": generate,
        "wasi:io/poll@0.2.12": generate,
        "wasi:io/streams@0.2.12": generate,
        "wasi:io/error@0.2.12": generate,
        "wasi:clocks/monotonic-clock@0.2.12": generate,
    });
}

use bindings::exports::mercato::commerce::payment::Guest;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct IntentRecord {
    /// What was asked, so a reused key with another request is caught.
    fingerprint: String,
    payment: Payment,
    /// The decline reason, for a declined intent.
    declined: Option<String>,
}

fn fingerprint(r: &PaymentRequest) -> String {
    format!("{}\n{}\n{}", r.amount.amount, r.amount.currency, r.token)
}

fn outcome(record: &IntentRecord) -> Result<Payment, Error> {
    match &record.declined {
        Some(reason) => Err(Error::PaymentDeclined(reason.clone())),
        None => Ok(record.payment.clone()),
    }
}

struct PaymentComponent;

impl Guest for PaymentComponent {
    fn authorize(request: PaymentRequest) -> Result<Payment, Error> {
        mercato_kit::money::check_currency("amount.currency", &request.amount.currency)?;
        if request.amount.amount < 0 {
            return Err(Error::InvalidInput("amount: must not be negative".into()));
        }
        if request.idempotency_key.is_empty() || request.idempotency_key.len() > 255 {
            return Err(Error::InvalidInput("idempotency key: 1 to 255 characters".into()));
        }
        if let Some(provider) = provider::Provider::configured()? {
            return provider.authorize(&request);
        }
        let verdict = tokens::test_mode(&request.token)?;
        let intents = kv::open("intents")?;
        let fresh = IntentRecord {
            fingerprint: fingerprint(&request),
            payment: Payment {
                id: mercato_kit::random_id("pi_test_"),
                status: if verdict.is_ok() { PaymentStatus::Succeeded } else { PaymentStatus::Declined },
                amount: request.amount.clone(),
            },
            declined: verdict.err(),
        };
        let record =
            kv::update(&intents, &request.idempotency_key, |current: Option<IntentRecord>| match current {
                Some(existing) if existing.fingerprint == fresh.fingerprint => Ok(Change::Keep(existing)),
                Some(_) => Err(Error::IdempotencyKeyReuse(
                    "this idempotency key was used for another payment".into(),
                )),
                None => Ok(Change::Write(fresh.clone(), fresh.clone())),
            })?;
        if record.payment.id == fresh.payment.id {
            let payments = kv::open("payments")?;
            kv::put(&payments, &record.payment.id, &request.idempotency_key)?;
        }
        outcome(&record)
    }

    fn refund(payment_id: String, amount: Money, idempotency_key: String) -> Result<Payment, Error> {
        if let Some(provider) = provider::Provider::configured()? {
            return provider.refund(&payment_id, &amount, &idempotency_key);
        }
        let payments = kv::open("payments")?;
        let key: String = kv::get(&payments, &payment_id)?
            .ok_or_else(|| Error::NotFound(format!("payment {payment_id:?}")))?;
        let intents = kv::open("intents")?;
        kv::update(&intents, &key, |current: Option<IntentRecord>| {
            let mut record = current.ok_or_else(|| Error::NotFound(format!("payment {payment_id:?}")))?;
            match record.payment.status {
                PaymentStatus::Refunded => Ok(Change::Keep(record.payment)),
                PaymentStatus::Succeeded => {
                    if amount.currency != record.payment.amount.currency
                        || amount.amount != record.payment.amount.amount
                    {
                        return Err(Error::InvalidInput("refund: only full refunds are supported".into()));
                    }
                    record.payment.status = PaymentStatus::Refunded;
                    let payment = record.payment.clone();
                    Ok(Change::Write(record, payment))
                }
                _ => Err(Error::Conflict(format!("payment {payment_id:?} was not captured"))),
            }
        })
    }
}

// Exports are wasm symbols; a native build (unit tests) has none.
#[cfg(target_family = "wasm")]
bindings::export!(PaymentComponent with_types_in bindings);
