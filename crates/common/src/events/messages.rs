//! The messages on flatpack's topics, field for field as the seed writes and reads them.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::domain::{Email, Id, Money, deserialize_decimal, serialize_decimal_as_number};
use super::time::deserialize_epoch_seconds;

/// What was ordered. The seed only defines `price` (the order total); every other field the
/// client sent is kept as it came and passed along.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderDetails {
    pub price: Money,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

/// An order accepted by the orders API: a message on `order_details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub user_id: Id,
    pub order_id: Id,
    pub user_email: Email,
    pub order_details: OrderDetails,
    /// When the order was accepted, in seconds since the Unix epoch (the seed's `time.time()`).
    #[serde(deserialize_with = "deserialize_epoch_seconds")]
    pub time: f64,
    /// Version of our additions; `0` for a message written by the seed.
    #[serde(default)]
    pub schema: u32,
}

impl Order {
    /// What the customer asked for, as a short fixed-size digest: the same for every copy
    /// of one request (however often it is sent, whatever `time` the API gave each copy),
    /// different when any field the customer sent differs. Hex of [`Order::digest`].
    pub fn fingerprint(&self) -> String {
        self.digest().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 16 bytes of the SHA-256 of the request's fields as canonical JSON (object
    /// keys sorted): `time` and `schema`, which the API adds, are not part of it.
    pub fn digest(&self) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        let request = serde_json::json!({
            "user_id": self.user_id,
            "order_id": self.order_id,
            "user_email": self.user_email,
            "order_details": self.order_details,
        });
        let digest = Sha256::digest(request.to_string().as_bytes());
        let mut first = [0; 16];
        first.copy_from_slice(&digest[..16]);
        first
    }
}

/// The payment decision on an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionStatus {
    Confirmed,
    Declined,
}

impl DecisionStatus {
    /// The name on the wire (`confirmed`, `declined`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Declined => "declined",
        }
    }
}

/// A decided order: a message on `order_confirmed` (the seed's order fields plus `status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderDecision {
    #[serde(flatten)]
    pub order: Order,
    pub status: DecisionStatus,
    /// Why the order was declined; absent when it was confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the decision was made, in seconds since the Unix epoch; absent from the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<f64>,
}

/// Which e-mail an order got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    /// The order was confirmed.
    Confirmation,
    /// The payment was declined; the e-mail says why.
    DeclinedNotice,
}

impl EmailKind {
    /// The name on the wire (`confirmation`, `declined_notice`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmation => "confirmation",
            Self::DeclinedNotice => "declined_notice",
        }
    }
}

/// An order whose e-mail was handled: a message on `order_email_sent`, keyed by `order_id`.
///
/// The seed's order fields plus `status`, which (unlike on `order_confirmed`) is a JSON bool:
/// `true` when the e-mail went out. `kind` and `sent_at` are ours, absent from the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailSent {
    #[serde(flatten)]
    pub order: Order,
    /// Whether the e-mail went out (the SMTP server accepted it).
    pub status: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EmailKind>,
    /// When the SMTP server accepted the e-mail, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<f64>,
}

/// Running totals: a message on `analytics_result`, keyed by `day`.
///
/// `total_revenue` and `total_orders_count` are the seed's all-time figures (confirmed
/// orders only); everything else is ours. Each message carries the complete figures as of
/// `seq` decisions counted, so the latest message (highest `seq`) holds the current totals
/// and the latest message of a day holds that day's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsResult {
    /// All-time revenue of confirmed orders, as a JSON number (the seed's field).
    #[serde(
        serialize_with = "serialize_decimal_as_number",
        deserialize_with = "deserialize_decimal"
    )]
    pub total_revenue: Decimal,
    /// All-time count of confirmed orders (the seed's field).
    pub total_orders_count: u64,
    /// `total_revenue` exactly, as a decimal string: a JSON number read as a double is only
    /// exact up to 15 significant digits.
    #[serde(default, deserialize_with = "deserialize_decimal")]
    pub total_revenue_exact: Decimal,
    /// All-time count of declined orders.
    #[serde(default)]
    pub total_declined_count: u64,
    /// The UTC day (`YYYY-MM-DD`) of the orders' `time` these day figures are for.
    #[serde(default)]
    pub day: String,
    #[serde(
        default,
        serialize_with = "serialize_decimal_as_number",
        deserialize_with = "deserialize_decimal"
    )]
    pub day_revenue: Decimal,
    #[serde(default)]
    pub day_orders_count: u64,
    #[serde(default)]
    pub day_declined_count: u64,
    /// How many decisions (confirmed and declined) all figures include; grows with every one.
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub schema: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{SCHEMA_VERSION, utc_day};
    use serde_json::json;

    /// Exactly what the seed's `orders_backend.py` writes to `order_details`.
    const SEED_ORDER: &str = r#"{"user_id": 7, "order_id": 1001, "user_email": "anna@example.com", "order_details": {"price": 349, "item": "BILLY bookcase"}, "time": 1700000000.123456}"#;

    /// Exactly what the seed's `transactions_backend.py` writes to `order_confirmed`.
    const SEED_CONFIRMED: &str = r#"{"user_id": "u-7", "order_id": "o-1001", "user_email": "anna@example.com", "order_details": {"price": "349"}, "time": 1700000000.5, "status": "confirmed"}"#;

    #[test]
    fn seed_order_decodes_with_its_ids_and_price() {
        let order: Order = serde_json::from_str(SEED_ORDER).unwrap();
        assert_eq!(order.user_id, Id::Int(7));
        assert_eq!(order.order_id, Id::Int(1001));
        assert_eq!(order.user_email.as_str(), "anna@example.com");
        assert_eq!(order.order_details.price.amount(), Decimal::from(349));
        assert_eq!(order.order_details.extra["item"], json!("BILLY bookcase"));
        assert_eq!(order.time, 1_700_000_000.123456);
        assert_eq!(order.schema, 0, "seed messages carry no schema version");
    }

    #[test]
    fn fingerprint_ignores_time_and_key_order_and_sees_every_requested_field() {
        let order: Order = serde_json::from_str(SEED_ORDER).unwrap();
        let reordered: Order = serde_json::from_str(r#"{"time": 1800000000.0, "order_details": {"item": "BILLY bookcase", "price": 349}, "user_email": "anna@example.com", "order_id": 1001, "user_id": 7}"#).unwrap();
        assert_eq!(order.fingerprint(), reordered.fingerprint());
        assert_eq!(order.fingerprint().len(), 32);
        let mut other = order.clone();
        other.order_details.price = serde_json::from_value(json!(350)).unwrap();
        assert_ne!(order.fingerprint(), other.fingerprint());
        let mut other = order.clone();
        other
            .order_details
            .extra
            .insert("payment_token".into(), json!("tok_new"));
        assert_ne!(order.fingerprint(), other.fingerprint());
    }

    #[test]
    fn seed_confirmed_order_decodes_with_string_ids() {
        let decision: OrderDecision = serde_json::from_str(SEED_CONFIRMED).unwrap();
        assert_eq!(decision.order.order_id, Id::Str("o-1001".into()));
        assert_eq!(decision.status, DecisionStatus::Confirmed);
        assert_eq!(decision.reason, None);
    }

    #[test]
    fn our_order_json_carries_the_seed_fields_with_the_seed_types() {
        let order: Order = serde_json::from_str(SEED_ORDER).unwrap();
        let value = serde_json::to_value(&order).unwrap();
        assert!(value["user_id"].is_i64());
        assert!(value["order_id"].is_i64());
        assert!(value["user_email"].is_string());
        assert!(value["order_details"].is_object());
        assert_eq!(value["order_details"]["price"], json!(349));
        assert_eq!(value["order_details"]["item"], json!("BILLY bookcase"));
        assert!(value["time"].is_f64());
        // What the seed's analytics does with it: int(order_details['price']).
        assert_eq!(value["order_details"]["price"].as_i64(), Some(349));
    }

    #[test]
    fn our_decision_json_adds_status_string_and_reason_only_when_declined() {
        let order: Order = serde_json::from_str(SEED_ORDER).unwrap();
        let confirmed = OrderDecision {
            order: order.clone(),
            status: DecisionStatus::Confirmed,
            reason: None,
            decided_at: None,
        };
        let value = serde_json::to_value(&confirmed).unwrap();
        assert_eq!(value["status"], json!("confirmed"));
        assert!(value.get("reason").is_none());
        assert_eq!(value["order_id"], json!(1001));

        let declined = OrderDecision {
            status: DecisionStatus::Declined,
            reason: Some("card declined".into()),
            ..confirmed
        };
        let value = serde_json::to_value(&declined).unwrap();
        assert_eq!(value["status"], json!("declined"));
        assert_eq!(value["reason"], json!("card declined"));
    }

    #[test]
    fn kinds_and_statuses_are_named_as_on_the_wire() {
        for kind in [EmailKind::Confirmation, EmailKind::DeclinedNotice] {
            assert_eq!(json!(kind), json!(kind.as_str()));
        }
        for status in [DecisionStatus::Confirmed, DecisionStatus::Declined] {
            assert_eq!(json!(status), json!(status.as_str()));
        }
    }

    #[test]
    fn seed_email_sent_decodes_and_ours_keeps_the_seed_fields_with_status_as_a_bool() {
        // What the seed's `email_backend.py` writes to `order_email_sent`.
        let seed: EmailSent = serde_json::from_str(
            r#"{"user_id": 7, "order_id": 1001, "user_email": "anna@example.com", "order_details": {"price": 349}, "time": 1700000000.5, "status": true}"#,
        )
        .unwrap();
        assert!(seed.status);
        assert_eq!(seed.kind, None);
        assert_eq!(seed.order.schema, 0);

        let order: Order = serde_json::from_str(SEED_ORDER).unwrap();
        let ours = EmailSent {
            order: Order {
                schema: SCHEMA_VERSION,
                ..order
            },
            status: true,
            kind: Some(EmailKind::DeclinedNotice),
            sent_at: Some(1_700_000_001.25),
        };
        let value = serde_json::to_value(&ours).unwrap();
        assert!(value["user_id"].is_i64());
        assert!(value["order_id"].is_i64());
        assert!(value["user_email"].is_string());
        assert!(value["order_details"].is_object());
        assert_eq!(value["order_details"]["price"], json!(349));
        assert!(value["time"].is_f64());
        assert_eq!(value["status"], json!(true));
        assert_eq!(value["kind"], json!("declined_notice"));
        assert_eq!(value["sent_at"], json!(1_700_000_001.25));
        assert_eq!(value["schema"], json!(SCHEMA_VERSION));
        let back: EmailSent = serde_json::from_value(value).unwrap();
        assert_eq!(back, ours);
    }

    #[test]
    fn seed_analytics_result_decodes_and_ours_keeps_the_seed_fields_as_numbers() {
        let seed: AnalyticsResult =
            serde_json::from_str(r#"{"total_revenue": 1049, "total_orders_count": 3}"#).unwrap();
        assert_eq!(seed.total_revenue, Decimal::from(1049));
        assert_eq!(seed.total_orders_count, 3);
        assert_eq!(seed.schema, 0);

        let ours = AnalyticsResult {
            total_revenue: "1049.97".parse().unwrap(),
            total_revenue_exact: "1049.97".parse().unwrap(),
            total_orders_count: 3,
            total_declined_count: 1,
            day: "2026-11-24".into(),
            day_revenue: "49.99".parse().unwrap(),
            day_orders_count: 1,
            day_declined_count: 0,
            seq: 4,
            schema: SCHEMA_VERSION,
        };
        let value = serde_json::to_value(&ours).unwrap();
        assert_eq!(value["total_revenue"], json!(1049.97));
        assert_eq!(value["total_orders_count"], json!(3));
        assert_eq!(value["total_revenue_exact"], json!("1049.97"));
        assert_eq!(value["day_revenue"], json!(49.99));
        let back: AnalyticsResult = serde_json::from_value(value).unwrap();
        assert_eq!(back, ours);
    }

    #[test]
    fn times_outside_the_calendar_are_rejected_and_days_are_utc() {
        let with_time = |t: &str| SEED_ORDER.replace("1700000000.123456", t);
        assert!(serde_json::from_str::<Order>(&with_time("-1")).is_err());
        assert!(serde_json::from_str::<Order>(&with_time("1e300")).is_err());
        assert!(serde_json::from_str::<Order>(&with_time("\"noon\"")).is_err());
        assert_eq!(utc_day(1_700_000_000.9), "2023-11-14");
        assert_eq!(utc_day(0.0), "1970-01-01");
    }
}
