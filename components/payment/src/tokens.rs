//! Stripe's documented test tokens and what they do.

use mercato_kit::types::Error;

/// `Ok(Ok(()))`: the charge succeeds; `Ok(Err(reason))`: declined with the
/// reason Stripe gives; `Err`: not a test token.
pub fn test_mode(token: &str) -> Result<Result<(), String>, Error> {
    match token {
        "tok_visa" | "tok_visa_debit" | "tok_mastercard" | "tok_amex" => Ok(Ok(())),
        "tok_chargeDeclined" => Ok(Err("Your card was declined.".into())),
        "tok_chargeDeclinedInsufficientFunds" => Ok(Err("Your card has insufficient funds.".into())),
        "tok_chargeDeclinedExpiredCard" => Ok(Err("Your card has expired.".into())),
        "tok_chargeDeclinedIncorrectCvc" => Ok(Err("Your card's security code is incorrect.".into())),
        other => Err(Error::InvalidInput(format!(
            "payment.token: {:?} is not a test token (use tok_visa, tok_chargeDeclined, …)",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_behave_as_stripe_documents() {
        assert_eq!(test_mode("tok_visa").ok(), Some(Ok(())));
        assert_eq!(test_mode("tok_chargeDeclined").ok(), Some(Err("Your card was declined.".to_string())));
        assert_eq!(
            test_mode("tok_chargeDeclinedInsufficientFunds").ok(),
            Some(Err("Your card has insufficient funds.".to_string()))
        );
        assert!(test_mode("tok_nope").is_err());
        assert!(test_mode("").is_err());
    }
}
