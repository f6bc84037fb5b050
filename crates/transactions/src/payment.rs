//! The payment check behind every decision.
//!
//! [`PaymentCheck`] is the seam where a real payment provider plugs in. The default,
//! [`RulesCheck`], is deterministic so that users and tests can predict every decision:
//!
//! 1. An order whose `order_details.price` exceeds the limit (`PAYMENT_MAX_AMOUNT`, default
//!    10000) is declined: `amount 12000.00 exceeds the limit of 10000.00`.
//! 2. An order whose `order_details.payment_token` is `tok_declined` is declined:
//!    `card declined`; `tok_insufficient_funds` is declined: `insufficient funds`.
//! 3. Every other order is confirmed.

use common::{Money, Order};
use serde::Deserialize;

/// The outcome of a payment check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    Declined(String),
}

/// Decides whether an order's payment goes through.
pub trait PaymentCheck: Send + 'static {
    fn check(&self, order: &Order) -> Verdict;
}

/// The deterministic default check (see the module documentation for its rules).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RulesCheck {
    /// `PAYMENT_MAX_AMOUNT`: orders above this total are declined.
    #[serde(rename = "payment_max_amount")]
    pub max_amount: Money,
}

impl Default for RulesCheck {
    fn default() -> Self {
        Self {
            max_amount: Money::new(10_000.into()).unwrap_or(Money::ZERO),
        }
    }
}

/// Its one setting is checked by its type ([`Money`] is never negative).
impl common::Settings for RulesCheck {}

/// `order_details.payment_token` values that the rules decline, and why.
pub const DECLINING_TOKENS: [(&str, &str); 2] = [
    ("tok_declined", "card declined"),
    ("tok_insufficient_funds", "insufficient funds"),
];

impl PaymentCheck for RulesCheck {
    fn check(&self, order: &Order) -> Verdict {
        let price = order.order_details.price;
        if price > self.max_amount {
            return Verdict::Declined(format!(
                "amount {price} exceeds the limit of {}",
                self.max_amount
            ));
        }
        let token = order
            .order_details
            .extra
            .get("payment_token")
            .and_then(|t| t.as_str());
        if let Some((_, reason)) = DECLINING_TOKENS.iter().find(|(t, _)| Some(*t) == token) {
            return Verdict::Declined((*reason).to_owned());
        }
        Verdict::Approved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(details: serde_json::Value) -> Order {
        serde_json::from_value(serde_json::json!({
            "user_id": 1, "order_id": 2, "user_email": "a@example.com",
            "order_details": details, "time": 1.0
        }))
        .unwrap()
    }

    #[test]
    fn an_ordinary_order_is_approved() {
        let verdict = RulesCheck::default().check(&order(serde_json::json!({"price": 349})));
        assert_eq!(verdict, Verdict::Approved);
    }

    #[test]
    fn the_limit_itself_is_approved_and_one_cent_more_declined() {
        let check = RulesCheck::default();
        assert_eq!(
            check.check(&order(serde_json::json!({"price": 10000}))),
            Verdict::Approved
        );
        assert_eq!(
            check.check(&order(serde_json::json!({"price": 10000.01}))),
            Verdict::Declined("amount 10000.01 exceeds the limit of 10000.00".into())
        );
    }

    #[test]
    fn declining_tokens_are_declined_with_their_reason() {
        let check = RulesCheck::default();
        let verdict = check.check(&order(
            serde_json::json!({"price": 5, "payment_token": "tok_declined"}),
        ));
        assert_eq!(verdict, Verdict::Declined("card declined".into()));
        let verdict = check.check(&order(
            serde_json::json!({"price": 5, "payment_token": "tok_insufficient_funds"}),
        ));
        assert_eq!(verdict, Verdict::Declined("insufficient funds".into()));
        let verdict = check.check(&order(
            serde_json::json!({"price": 5, "payment_token": "tok_visa"}),
        ));
        assert_eq!(verdict, Verdict::Approved);
    }
}
