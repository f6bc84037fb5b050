//! The e-mails' words: a plain-text and an HTML body per decision, from the templates in
//! `crates/email/templates/` (checked at compile time by askama). HTML templates escape every
//! value, so customer-supplied strings (ids, order details, the decline reason) are shown,
//! never interpreted.

use askama::Template;
use common::events::{DecisionStatus, EmailKind, OrderDecision};
use serde_json::Value;

/// One rendered e-mail, ready to be put into a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub kind: EmailKind,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Which e-mail a decision gets.
pub fn kind_of(decision: &OrderDecision) -> EmailKind {
    match decision.status {
        DecisionStatus::Confirmed => EmailKind::Confirmation,
        DecisionStatus::Declined => EmailKind::DeclinedNotice,
    }
}

/// Renders the e-mail for `decision`: a confirmation, or a payment-declined notice with the
/// reason.
pub fn render(decision: &OrderDecision) -> Result<Rendered, askama::Error> {
    let s = Summary::of(decision);
    let kind = kind_of(decision);
    let (subject, text, html) = match kind {
        EmailKind::Confirmation => (
            format!("Your flatpack order {} is confirmed", s.order_id),
            ConfirmationText { s: &s }.render()?,
            ConfirmationHtml { s: &s }.render()?,
        ),
        EmailKind::DeclinedNotice => {
            let reason = decision
                .reason
                .as_deref()
                .unwrap_or("the payment was declined");
            (
                format!("Payment declined for your flatpack order {}", s.order_id),
                DeclinedText { s: &s, reason }.render()?,
                DeclinedHtml { s: &s, reason }.render()?,
            )
        }
    };
    Ok(Rendered {
        kind,
        subject,
        text,
        html,
    })
}

/// What the templates show of an order.
struct Summary {
    order_id: String,
    placed_at: String,
    price: String,
    /// Every `order_details` field but `price`, as the client sent it.
    details: Vec<Field>,
}

struct Field {
    name: String,
    value: String,
}

impl Summary {
    fn of(decision: &OrderDecision) -> Self {
        let order = &decision.order;
        // Truncation is intended: the minute is shown.
        let placed_at = chrono::DateTime::from_timestamp(order.time as i64, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        let details = order
            .order_details
            .extra
            .iter()
            .map(|(name, value)| Field {
                name: name.clone(),
                value: match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            })
            .collect();
        Self {
            order_id: order.order_id.to_string(),
            placed_at,
            price: order.order_details.price.to_string(),
            details,
        }
    }
}

#[derive(Template)]
#[template(path = "confirmation.txt")]
struct ConfirmationText<'a> {
    s: &'a Summary,
}

#[derive(Template)]
#[template(path = "confirmation.html")]
struct ConfirmationHtml<'a> {
    s: &'a Summary,
}

#[derive(Template)]
#[template(path = "declined.txt")]
struct DeclinedText<'a> {
    s: &'a Summary,
    reason: &'a str,
}

#[derive(Template)]
#[template(path = "declined.html")]
struct DeclinedHtml<'a> {
    s: &'a Summary,
    reason: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(json: serde_json::Value) -> OrderDecision {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn confirmation_carries_the_order_id_and_summary_in_subject_and_both_bodies() {
        let d = decision(serde_json::json!({
            "user_id": 7, "order_id": "o-1001", "user_email": "anna@example.com",
            "order_details": {"price": 349.5, "item": "BILLY bookcase", "qty": 2},
            "time": 1_700_000_000.5, "status": "confirmed"
        }));
        let mail = render(&d).unwrap();
        assert_eq!(mail.kind, EmailKind::Confirmation);
        assert_eq!(mail.subject, "Your flatpack order o-1001 is confirmed");
        for body in [&mail.text, &mail.html] {
            assert!(body.contains("o-1001"), "{body}");
            assert!(body.contains("349.50"), "{body}");
            assert!(body.contains("BILLY bookcase"), "{body}");
            assert!(body.contains("qty"), "{body}");
            assert!(body.contains("2023-11-14 22:13 UTC"), "{body}");
        }
        assert!(mail.text.contains("Total:    349.50"), "{}", mail.text);
    }

    #[test]
    fn declined_notice_says_why() {
        let d = decision(serde_json::json!({
            "user_id": 7, "order_id": 12, "user_email": "anna@example.com",
            "order_details": {"price": 10}, "time": 1_700_000_000.0,
            "status": "declined", "reason": "card declined"
        }));
        let mail = render(&d).unwrap();
        assert_eq!(mail.kind, EmailKind::DeclinedNotice);
        assert_eq!(mail.subject, "Payment declined for your flatpack order 12");
        assert!(mail.text.contains("Reason: card declined"), "{}", mail.text);
        assert!(mail.html.contains("card declined"), "{}", mail.html);
        assert!(mail.html.contains("10.00"), "{}", mail.html);
    }

    #[test]
    fn html_escapes_customer_supplied_strings_and_text_keeps_them_verbatim() {
        let d = decision(serde_json::json!({
            "user_id": 7, "order_id": "<script>alert(1)</script>",
            "user_email": "anna@example.com",
            "order_details": {"price": 10, "<b>note</b>": "<script>alert(2)</script> & more"},
            "time": 1_700_000_000.0, "status": "declined", "reason": "<img src=x onerror=alert(3)>"
        }));
        let mail = render(&d).unwrap();
        assert!(!mail.html.contains("<script>"), "{}", mail.html);
        assert!(!mail.html.contains("<b>note"), "{}", mail.html);
        assert!(!mail.html.contains("<img"), "{}", mail.html);
        assert!(
            mail.html
                .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
                || mail.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{}",
            mail.html
        );
        assert!(
            mail.text.contains("<script>alert(2)</script> & more"),
            "{}",
            mail.text
        );
        assert!(
            mail.text.contains("<img src=x onerror=alert(3)>"),
            "{}",
            mail.text
        );
    }
}
