//! A Stripe-compatible provider over `wasi:http`: `POST /v1/payment_intents`
//! (amount, currency, the card token, `confirm=true`,
//! `capture_method=manual`), `POST /v1/payment_intents/{id}/capture`,
//! `POST /v1/payment_intents/{id}/cancel` and `POST /v1/refunds` (and
//! `GET /v1/refunds?payment_intent=` when a refund's answer was a 5xx),
//! form-encoded, `Authorization: Bearer <secret key>`, each POST with an
//! `Idempotency-Key` so a retried call never charges twice.
//!
//! Outcomes: `requires_capture` → authorized; `succeeded` → captured; a card
//! error (HTTP 402, or an intent in any other state) → `payment-declined`
//! with the provider's message; a time-out → `provider-timeout`; anything
//! else (refused connection, 5xx, unreadable answer) → `provider-unavailable`.
//! A void whose authorization's outcome is unknown asks again with the same
//! idempotency key (the provider answers with the intent it made, or makes
//! it now) and cancels that intent.

use mercato_kit::types::{Error, Money, Payment, PaymentRequest, PaymentStatus};
use serde_json::Value;

use crate::bindings::wasi::config::store as config;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// Largest provider answer read, in bytes.
const MAX_RESPONSE: usize = 1024 * 1024;

pub struct Provider {
    scheme: Scheme,
    authority: String,
    base_path: String,
    secret: String,
    timeout_ns: u64,
}

fn unavailable(m: impl Into<String>) -> Error {
    Error::ProviderUnavailable(m.into())
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn form(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect::<Vec<_>>().join("&")
}

/// Split `scheme://authority/base` into its parts.
pub fn split_url(url: &str) -> Option<(bool, String, String)> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    (!authority.is_empty()).then(|| (https, authority.to_string(), path.to_string()))
}

impl Provider {
    /// The configured provider, or `None` for test mode.
    pub fn configured() -> Result<Option<Provider>, Error> {
        let get = |key: &str| config::get(key).map_err(|e| unavailable(format!("config {key}: {e:?}")));
        let Some(url) = get("provider_url")? else { return Ok(None) };
        let (https, authority, base_path) = split_url(&url)
            .ok_or_else(|| unavailable(format!("provider_url {url:?} is not an http(s) URL")))?;
        let timeout_ms: u64 = get("timeout_ms")?.and_then(|t| t.parse().ok()).unwrap_or(10_000);
        Ok(Some(Provider {
            scheme: if https { Scheme::Https } else { Scheme::Http },
            authority,
            base_path,
            secret: get("secret_key")?.unwrap_or_default(),
            timeout_ns: timeout_ms.saturating_mul(1_000_000),
        }))
    }

    /// POST a form; the status and the JSON answer.
    fn post(&self, path: &str, body: &str, idempotency_key: &str) -> Result<(u16, Value), Error> {
        self.call(Method::Post, path, body, Some(idempotency_key))
    }

    /// GET `path` (with its query); the status and the JSON answer.
    fn get(&self, path: &str) -> Result<(u16, Value), Error> {
        self.call(Method::Get, path, "", None)
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Value), Error> {
        let mut fields = vec![("authorization".to_string(), format!("Bearer {}", self.secret).into_bytes())];
        if let Some(key) = idempotency_key {
            fields.push(("content-type".to_string(), b"application/x-www-form-urlencoded".to_vec()));
            fields.push(("idempotency-key".to_string(), key.as_bytes().to_vec()));
        }
        let headers = Fields::from_list(&fields).map_err(|e| unavailable(format!("headers: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let bad = |_| unavailable("could not build the request");
        request.set_method(&method).map_err(bad)?;
        request.set_scheme(Some(&self.scheme)).map_err(bad)?;
        request.set_authority(Some(&self.authority)).map_err(bad)?;
        request.set_path_with_query(Some(&format!("{}{path}", self.base_path))).map_err(bad)?;
        let outgoing = request.body().map_err(bad)?;
        {
            let stream = outgoing.write().map_err(bad)?;
            for chunk in body.as_bytes().chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(|e| unavailable(format!("write: {e:?}")))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(|e| unavailable(format!("finish: {e:?}")))?;
        let options = RequestOptions::new();
        let _ = options.set_connect_timeout(Some(self.timeout_ns));
        let _ = options.set_first_byte_timeout(Some(self.timeout_ns));
        let _ = options.set_between_bytes_timeout(Some(self.timeout_ns));
        let pending = outgoing_handler::handle(request, Some(options)).map_err(transport)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(code))) => return Err(transport(code)),
            _ => return Err(unavailable("no response")),
        };
        let status = response.status();
        let incoming = response.consume().map_err(|_| unavailable("no body"))?;
        let stream = incoming.stream().map_err(|_| unavailable("no body stream"))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > MAX_RESPONSE {
                        return Err(unavailable("provider answer too large"));
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(unavailable(format!("read: {}", e.to_debug_string())));
                }
            }
        }
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, json))
    }

    pub fn authorize(&self, request: &PaymentRequest) -> Result<Payment, Error> {
        let body = form(&[
            ("amount", request.amount.amount.to_string()),
            ("currency", request.amount.currency.to_ascii_lowercase()),
            ("confirm", "true".into()),
            ("capture_method", "manual".into()),
            ("payment_method_data[type]", "card".into()),
            ("payment_method_data[card][token]", request.token.clone()),
            ("description", request.description.clone()),
        ]);
        let (status, json) = self.post("/v1/payment_intents", &body, &request.idempotency_key)?;
        interpret(status, &json, &request.amount)
    }

    pub fn capture(&self, payment_id: &str, key: &str) -> Result<Payment, Error> {
        let path = format!("/v1/payment_intents/{}/capture", form_encode(payment_id));
        let (status, json) = self.post(&path, "", &format!("capture:{key}"))?;
        match (status, json["status"].as_str()) {
            (200..=299, Some("succeeded")) => Ok(Payment {
                id: payment_id.to_string(),
                status: PaymentStatus::Succeeded,
                amount: amount_of(&json),
            }),
            (200..=499, _) => Err(Error::Conflict(message(&json, "the provider refused the capture"))),
            _ => Err(unavailable(format!("capture: HTTP {status}"))),
        }
    }

    /// Cancel the authorization `request`'s idempotency key made (making it
    /// first if it never reached the provider), so it can never be captured.
    pub fn void(&self, request: &PaymentRequest) -> Result<Payment, Error> {
        let intent = match self.authorize(request) {
            Ok(p) => p,
            // Declined, refused as invalid, or already canceled: nothing is held.
            Err(Error::PaymentDeclined(_) | Error::InvalidInput(_)) => {
                return Ok(Payment {
                    id: String::new(),
                    status: PaymentStatus::Voided,
                    amount: request.amount.clone(),
                });
            }
            Err(e) => return Err(e),
        };
        if intent.status == PaymentStatus::Succeeded {
            return Err(Error::Conflict("the payment was captured: refund it instead".into()));
        }
        let path = format!("/v1/payment_intents/{}/cancel", form_encode(&intent.id));
        let (status, json) = self.post(&path, "", &format!("void:{}", request.idempotency_key))?;
        match (status, json["status"].as_str()) {
            (200..=299, Some("canceled")) => {
                Ok(Payment { id: intent.id, status: PaymentStatus::Voided, amount: request.amount.clone() })
            }
            (200..=499, _) => Err(Error::Conflict(message(&json, "the provider refused the cancel"))),
            _ => Err(unavailable(format!("cancel: HTTP {status}"))),
        }
    }

    pub fn refund(&self, payment_id: &str, amount: &Money, key: &str) -> Result<Payment, Error> {
        let body = form(&[("payment_intent", payment_id.to_string()), ("amount", amount.amount.to_string())]);
        let (status, json) = self.post("/v1/refunds", &body, key)?;
        match interpret_refund(status, &json, payment_id, amount) {
            // The endpoint failed: it may have refunded all the same, and
            // Stripe answers this key with the same error for a day. The
            // payment's refunds tell.
            Err(Error::ProviderUnavailable(m)) if status >= 500 => match self.refunded(payment_id, amount) {
                Ok(true) => Ok(Payment {
                    id: payment_id.to_string(),
                    status: PaymentStatus::Refunded,
                    amount: amount.clone(),
                }),
                Ok(false) => Err(Error::ProviderUnavailable(format!("{m}; no refund listed yet"))),
                Err(e) => Err(Error::ProviderUnavailable(format!("{m}; looking the refund up: {e:?}"))),
            },
            other => other,
        }
    }

    /// Whether the payment has a refund of `amount` that succeeded or is
    /// pending (`GET /v1/refunds?payment_intent=`): only a cancel refunds,
    /// and it refunds the whole amount once.
    fn refunded(&self, payment_id: &str, amount: &Money) -> Result<bool, Error> {
        let path = format!("/v1/refunds?payment_intent={}&limit=100", form_encode(payment_id));
        let (status, json) = self.get(&path)?;
        Ok(listed_refund(status, &json, payment_id, amount))
    }
}

/// Whether a refund list answer holds a succeeded or pending refund of
/// `amount` of `payment_id` (checked here too: a provider that ignored the
/// filter must not lend another payment's refund).
pub fn listed_refund(status: u16, json: &Value, payment_id: &str, amount: &Money) -> bool {
    (200..=299).contains(&status)
        && json["data"].as_array().is_some_and(|refunds| {
            refunds.iter().any(|r| {
                (r["status"] == "succeeded" || r["status"] == "pending")
                    && r["payment_intent"] == payment_id
                    && r["amount"].as_i64() == Some(amount.amount)
            })
        })
}

/// The amount of a payment-intent answer.
fn amount_of(json: &Value) -> Money {
    Money {
        amount: json["amount"].as_i64().unwrap_or_default(),
        currency: json["currency"].as_str().unwrap_or_default().to_ascii_uppercase(),
    }
}

/// What a refund answer means: refunded; `conflict` for a refusal (the
/// order can stay paid); `provider-unavailable` when the outcome is unknown.
pub fn interpret_refund(
    status: u16,
    json: &Value,
    payment_id: &str,
    amount: &Money,
) -> Result<Payment, Error> {
    let refunded =
        || Payment { id: payment_id.to_string(), status: PaymentStatus::Refunded, amount: amount.clone() };
    match status {
        200..=299 if json["status"] == "succeeded" || json["status"] == "pending" => Ok(refunded()),
        200..=299 if json["status"] == "failed" || json["status"] == "canceled" => {
            Err(Error::Conflict(format!("the refund {}", json["status"].as_str().unwrap_or_default())))
        }
        // Refunded before (the key's first answer forgotten since, say): done.
        400 if json["error"]["code"] == "charge_already_refunded" => Ok(refunded()),
        // Still working on this key, or rate limited: the outcome is unknown.
        409 | 429 => Err(unavailable(format!("refund: HTTP {status}: {}", message(json, "try again")))),
        400..=499 => Err(Error::Conflict(message(json, "the provider refused the refund"))),
        _ => Err(unavailable(format!("refund: HTTP {status}"))),
    }
}

fn message(json: &Value, fallback: &str) -> String {
    json["error"]["message"]
        .as_str()
        .or_else(|| json["last_payment_error"]["message"].as_str())
        .unwrap_or(fallback)
        .to_string()
}

/// What a payment-intent answer means.
pub fn interpret(status: u16, json: &Value, amount: &Money) -> Result<Payment, Error> {
    match status {
        200..=299 => match (json["id"].as_str(), json["status"].as_str()) {
            (Some(id), Some("requires_capture")) => {
                Ok(Payment { id: id.to_string(), status: PaymentStatus::Authorized, amount: amount.clone() })
            }
            (Some(id), Some("succeeded")) => {
                Ok(Payment { id: id.to_string(), status: PaymentStatus::Succeeded, amount: amount.clone() })
            }
            (Some(_), Some("canceled")) => Err(Error::PaymentDeclined("This payment was canceled.".into())),
            (Some(_), Some(_)) => {
                Err(Error::PaymentDeclined(message(json, "The payment was not completed.")))
            }
            _ => Err(unavailable("unreadable payment intent")),
        },
        402 => Err(Error::PaymentDeclined(message(json, "Your card was declined."))),
        400 | 404 => {
            Err(Error::InvalidInput(format!("payment: {}", message(json, "refused by the provider"))))
        }
        409 => Err(Error::Conflict(message(json, "the provider reports a conflicting request"))),
        _ => Err(unavailable(format!("HTTP {status}: {}", message(json, "provider error")))),
    }
}

/// A transport failure. Those that happen before the request can have left
/// (no connection, no name, a host the policy denies, a failed TLS
/// handshake) say `not sent:` — nothing can have been authorized; the others
/// leave the outcome unknown.
fn transport(code: ErrorCode) -> Error {
    match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::DnsTimeout => Error::ProviderTimeout(format!("{code:?}")),
        ErrorCode::ConnectionRefused
        | ErrorCode::DnsError(_)
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DestinationIpProhibited
        | ErrorCode::DestinationIpUnroutable
        | ErrorCode::HttpRequestDenied
        | ErrorCode::TlsProtocolError
        | ErrorCode::TlsCertificateError
        | ErrorCode::TlsAlertReceived(_) => unavailable(format!("not sent: {code:?}")),
        other => unavailable(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eur(amount: i64) -> Money {
        Money { amount, currency: "EUR".into() }
    }

    #[test]
    fn urls_and_forms() {
        assert_eq!(split_url("https://api.stripe.com"), Some((true, "api.stripe.com".into(), String::new())));
        assert_eq!(
            split_url("http://127.0.0.1:9/base/"),
            Some((false, "127.0.0.1:9".into(), "/base".into()))
        );
        assert_eq!(split_url("ftp://x"), None);
        assert_eq!(
            form_encode("payment_method_data[card][token]"),
            "payment_method_data%5Bcard%5D%5Btoken%5D"
        );
        assert_eq!(form_encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn answers_map_to_outcomes() {
        let ok = interpret(200, &json!({"id": "pi_1", "status": "requires_capture"}), &eur(5));
        assert_eq!(ok.as_ref().map(|p| p.id.as_str()).ok(), Some("pi_1"));
        assert_eq!(ok.map(|p| p.status).ok(), Some(PaymentStatus::Authorized));
        let captured = interpret(200, &json!({"id": "pi_1", "status": "succeeded"}), &eur(5));
        assert_eq!(captured.map(|p| p.status).ok(), Some(PaymentStatus::Succeeded));
        let canceled = interpret(200, &json!({"id": "pi_1", "status": "canceled"}), &eur(5));
        assert!(matches!(canceled, Err(Error::PaymentDeclined(_))));
        let declined = interpret(
            402,
            &json!({"error": {"type": "card_error", "message": "Your card was declined."}}),
            &eur(5),
        );
        assert!(matches!(declined, Err(Error::PaymentDeclined(m)) if m == "Your card was declined."));
        let pending = interpret(200, &json!({"id": "pi_2", "status": "requires_payment_method"}), &eur(5));
        assert!(matches!(pending, Err(Error::PaymentDeclined(_))));
        assert!(matches!(interpret(500, &json!({}), &eur(5)), Err(Error::ProviderUnavailable(_))));
        assert!(matches!(interpret(200, &json!("garbage"), &eur(5)), Err(Error::ProviderUnavailable(_))));
    }

    #[test]
    fn a_listed_refund_of_the_amount_counts() {
        let list = |refunds: Value| listed_refund(200, &json!({"data": refunds}), "pi_1", &eur(5));
        let refund = |pi: &str, status: &str, amount: i64| json!({"payment_intent": pi, "status": status, "amount": amount});
        assert!(list(json!([refund("pi_1", "succeeded", 5)])));
        assert!(list(json!([refund("pi_1", "failed", 5), refund("pi_1", "pending", 5)])));
        assert!(!list(json!([])));
        assert!(!list(json!([refund("pi_1", "failed", 5)])));
        assert!(!list(json!([refund("pi_1", "succeeded", 4)])), "another amount");
        assert!(!list(json!([refund("pi_2", "succeeded", 5)])), "another payment's, filter ignored");
        assert!(!listed_refund(500, &json!({"data": [refund("pi_1", "succeeded", 5)]}), "pi_1", &eur(5)));
    }

    #[test]
    fn refund_answers_tell_refused_from_unknown() {
        let refund = |status, body: Value| interpret_refund(status, &body, "pi_1", &eur(5));
        assert_eq!(
            refund(200, json!({"status": "succeeded"})).map(|p| p.status).ok(),
            Some(PaymentStatus::Refunded)
        );
        assert_eq!(
            refund(200, json!({"status": "pending"})).map(|p| p.status).ok(),
            Some(PaymentStatus::Refunded)
        );
        let again = refund(400, json!({"error": {"code": "charge_already_refunded", "message": "refunded"}}));
        assert_eq!(
            again.map(|p| p.status).ok(),
            Some(PaymentStatus::Refunded),
            "refunded before is refunded"
        );
        assert!(matches!(
            refund(400, json!({"error": {"code": "charge_disputed"}})),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(refund(404, json!({})), Err(Error::Conflict(_))));
        for unknown in [409, 429, 500, 503] {
            assert!(
                matches!(refund(unknown, json!({})), Err(Error::ProviderUnavailable(ref m)) if !m.starts_with("not sent")),
                "HTTP {unknown}: the outcome is unknown"
            );
        }
        assert!(matches!(refund(200, json!({"status": "failed"})), Err(Error::Conflict(_))));
        assert!(matches!(
            refund(200, json!({"status": "requires_action"})),
            Err(Error::ProviderUnavailable(_))
        ));
    }
}
