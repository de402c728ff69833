//! The payment component: payment intents with manual capture, voids and
//! refunds, Stripe-style.
//!
//! With `provider_url` (and `secret_key`) in its `wasi:config`, it calls a
//! Stripe-compatible API over `wasi:http` ([`provider`]): create-and-confirm a
//! payment intent with `capture_method=manual` and an `Idempotency-Key`,
//! capture, cancel, refund. The host lets it reach that one host only.
//! Without a provider it runs the built-in **test mode**: Stripe's documented
//! test tokens behave as Stripe documents them — `tok_visa`,
//! `tok_mastercard`, `tok_amex` succeed; `tok_chargeDeclined` is declined
//! ("Your card was declined."); `tok_chargeDeclinedInsufficientFunds` is
//! declined for insufficient funds; `tok_chargeDeclinedExpiredCard` for an
//! expired card. Any other token is invalid input.
//!
//! Test-mode storage (its own namespace, written through transactions):
//! - bucket `intents`: idempotency key → [`IntentRecord`]; the same key with
//!   the same request returns the first result (no second authorization),
//!   with another request it is refused. A void of a key that never
//!   authorized leaves a voided record, so a late authorize with that key can
//!   never succeed;
//! - bucket `payments`: payment id → idempotency key, for capture and refunds.
//!
//! Provider mode keeps one bucket, `voided`: idempotency key → when it was
//! voided. A provider replays its *first* answer for an idempotency key
//! (Stripe does, for 24 hours), so after a void a retried authorize would
//! hear "authorized" again; the tombstone, written before the cancel, makes
//! it `payment-declined` instead.

mod provider;
mod tokens;

use mercato_kit::tx::{self, Precondition, TxError};
use mercato_kit::types::{Error, Money, Payment, PaymentRequest, PaymentStatus};
use serde::{Deserialize, Serialize};

mod bindings {
    mercato_kit::component_bindings!("../../wit", "mercato:commerce/payment-component", {
        "wasi:random/random@0.2.12": mercato_kit::bindings::wasi::random::random,
        "wasi:clocks/wall-clock@0.2.12": mercato_kit::bindings::wasi::clocks::wall_clock,
        "mercato:commerce/transactions@0.6.0": mercato_kit::bindings::mercato::commerce::transactions,
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

const INTENTS: &str = "intents";
const PAYMENTS: &str = "payments";
const VOIDED: &str = "voided";

fn canceled() -> Error {
    Error::PaymentDeclined("This payment was canceled.".into())
}

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

/// What an intent answers to `authorize`.
fn outcome(record: &IntentRecord) -> Result<Payment, Error> {
    match (&record.declined, record.payment.status) {
        (Some(reason), _) => Err(Error::PaymentDeclined(reason.clone())),
        (None, PaymentStatus::Voided) => Err(canceled()),
        (None, _) => Ok(record.payment.clone()),
    }
}

fn validate(request: &PaymentRequest) -> Result<(), Error> {
    mercato_kit::money::check_currency("amount.currency", &request.amount.currency)?;
    if request.amount.amount < 0 {
        return Err(Error::InvalidInput("amount: must not be negative".into()));
    }
    if request.idempotency_key.is_empty() || request.idempotency_key.len() > 255 {
        return Err(Error::InvalidInput("idempotency key: 1 to 255 characters".into()));
    }
    Ok(())
}

thread_local! {
    /// The intents this instance wrote, by idempotency key, at the version
    /// it wrote. An instance lives for one request: the checkout's capture
    /// then changes the intent its authorize wrote without reading it first
    /// (the version precondition still catches any change in between).
    static WRITTEN: std::cell::RefCell<std::collections::HashMap<String, (IntentRecord, u64)>> =
        Default::default();
}

fn remember(key: &str, record: &IntentRecord, version: u64) {
    WRITTEN.with(|w| w.borrow_mut().insert(key.to_string(), (record.clone(), version)));
}

/// Record a new intent for `key`, or answer with the one recorded first.
fn record_or_existing(key: &str, fresh: IntentRecord) -> Result<IntentRecord, Error> {
    let writes = [
        tx::put(INTENTS, key, &fresh, Precondition::Absent)?,
        tx::put(PAYMENTS, &fresh.payment.id, &key, Precondition::Absent)?,
    ];
    match tx::commit(&writes, &[]) {
        Ok(versions) => {
            remember(key, &fresh, versions[0]);
            Ok(fresh)
        }
        Err(TxError::Failed(f)) if f.index == 0 => {
            let (existing, _): (IntentRecord, u64) = tx::read_one(INTENTS, key)?
                .ok_or_else(|| Error::Conflict("the payment changed concurrently; try again".into()))?;
            if existing.fingerprint != fresh.fingerprint {
                return Err(Error::IdempotencyKeyReuse(
                    "this idempotency key was used for another payment".into(),
                ));
            }
            Ok(existing)
        }
        Err(e) => Err(tx::error(e)),
    }
}

/// Change the intent of `payment_id` with `f` (compare-and-swap on its version).
fn change(
    payment_id: &str,
    f: impl Fn(&IntentRecord) -> Result<Option<IntentRecord>, Error>,
) -> Result<Payment, Error> {
    let (key, _): (String, u64) = tx::read_one(PAYMENTS, payment_id)?
        .ok_or_else(|| Error::NotFound(format!("payment {payment_id:?}")))?;
    change_intent(&key, payment_id, f)
}

/// [`change`] for the intent recorded under idempotency key `key`, which
/// must be `payment_id`'s.
fn change_intent(
    key: &str,
    payment_id: &str,
    f: impl Fn(&IntentRecord) -> Result<Option<IntentRecord>, Error>,
) -> Result<Payment, Error> {
    for _ in 0..mercato_kit::kv::MAX_CAS_RETRIES {
        // What this instance wrote is only a guess at what is stored now:
        // good for a write (its version precondition checks it), not for an
        // answer, which comes from a fresh read.
        let written =
            WRITTEN.with(|w| w.borrow_mut().remove(key)).filter(|(r, _)| r.payment.id == payment_id);
        let from_memory = written.is_some();
        let (record, version): (IntentRecord, u64) = match written {
            Some(w) => w,
            None => tx::read_one(INTENTS, key)?
                .filter(|(r, _): &(IntentRecord, u64)| r.payment.id == payment_id)
                .ok_or_else(|| Error::NotFound(format!("payment {payment_id:?}")))?,
        };
        let next = match f(&record) {
            Ok(Some(next)) => next,
            _ if from_memory => continue,
            Ok(None) => return Ok(record.payment),
            Err(e) => return Err(e),
        };
        match tx::commit(&[tx::put(INTENTS, key, &next, Precondition::Version(version))?], &[]) {
            Ok(versions) => {
                remember(key, &next, versions[0]);
                return Ok(next.payment);
            }
            // Changed since (by another request, or since this instance
            // wrote it): read it again.
            Err(TxError::Failed(_)) => continue,
            Err(e) => return Err(tx::error(e)),
        }
    }
    Err(Error::Conflict(format!("payment {payment_id:?} kept changing; try again")))
}

struct PaymentComponent;

impl Guest for PaymentComponent {
    fn authorize(request: PaymentRequest) -> Result<Payment, Error> {
        validate(&request)?;
        if let Some(provider) = provider::Provider::configured()? {
            if tx::read_one::<u64>(VOIDED, &request.idempotency_key)?.is_some() {
                // Voided before: make sure the void went through (it may have
                // been cut off after the tombstone), then answer canceled.
                return provider.void(&request).and_then(|_| Err(canceled()));
            }
            return provider.authorize(&request);
        }
        let verdict = tokens::test_mode(&request.token)?;
        let fresh = IntentRecord {
            fingerprint: fingerprint(&request),
            payment: Payment {
                id: mercato_kit::random_id("pi_test_"),
                status: if verdict.is_ok() { PaymentStatus::Authorized } else { PaymentStatus::Declined },
                amount: request.amount.clone(),
            },
            declined: verdict.err(),
        };
        // One transaction on the common path: a key used before fails its
        // `absent` precondition and answers with what it recorded first.
        outcome(&record_or_existing(&request.idempotency_key, fresh)?)
    }

    fn capture(payment_id: String, idempotency_key: String) -> Result<Payment, Error> {
        if let Some(provider) = provider::Provider::configured()? {
            return provider.capture(&payment_id, &idempotency_key);
        }
        change_intent(&idempotency_key, &payment_id, |r| match r.payment.status {
            PaymentStatus::Succeeded => Ok(None),
            PaymentStatus::Authorized => {
                let mut next = r.clone();
                next.payment.status = PaymentStatus::Succeeded;
                Ok(Some(next))
            }
            other => {
                Err(Error::Conflict(format!("payment {payment_id:?} cannot be captured: it is {other:?}")))
            }
        })
    }

    fn void(request: PaymentRequest) -> Result<Payment, Error> {
        validate(&request)?;
        if let Some(provider) = provider::Provider::configured()? {
            let tombstone =
                tx::put(VOIDED, &request.idempotency_key, &mercato_kit::now_ms(), Precondition::None)?;
            tx::commit(&[tombstone], &[]).map_err(tx::error)?;
            return provider.void(&request);
        }
        let key = &request.idempotency_key;
        let Some((record, _)) = tx::read_one::<IntentRecord>(INTENTS, key)? else {
            // Nothing was authorized under this key: make sure nothing ever is.
            let tombstone = IntentRecord {
                fingerprint: fingerprint(&request),
                payment: Payment {
                    id: mercato_kit::random_id("pi_test_"),
                    status: PaymentStatus::Voided,
                    amount: request.amount.clone(),
                },
                declined: None,
            };
            let recorded = record_or_existing(key, tombstone)?;
            return match recorded.payment.status {
                // An authorize got there first: void that one.
                PaymentStatus::Authorized => Self::void(request),
                _ => Ok(recorded.payment),
            };
        };
        change(&record.payment.id, |r| match r.payment.status {
            PaymentStatus::Voided | PaymentStatus::Declined => Ok(None),
            PaymentStatus::Authorized | PaymentStatus::Pending => {
                let mut next = r.clone();
                next.payment.status = PaymentStatus::Voided;
                Ok(Some(next))
            }
            other => Err(Error::Conflict(format!("payment is {other:?}: refund it instead"))),
        })
    }

    fn refund(payment_id: String, amount: Money, idempotency_key: String) -> Result<Payment, Error> {
        if let Some(provider) = provider::Provider::configured()? {
            return provider.refund(&payment_id, &amount, &idempotency_key);
        }
        change(&payment_id, |r| match r.payment.status {
            PaymentStatus::Refunded => Ok(None),
            PaymentStatus::Succeeded => {
                if amount.currency != r.payment.amount.currency || amount.amount != r.payment.amount.amount {
                    return Err(Error::InvalidInput("refund: only full refunds are supported".into()));
                }
                let mut next = r.clone();
                next.payment.status = PaymentStatus::Refunded;
                Ok(Some(next))
            }
            _ => Err(Error::Conflict(format!("payment {payment_id:?} was not captured"))),
        })
    }
}

// Exports are wasm symbols; a native build (unit tests) has none.
#[cfg(target_family = "wasm")]
bindings::export!(PaymentComponent with_types_in bindings);
