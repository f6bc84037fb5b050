//! The event contract: the JSON messages flatpack writes to and reads from its topics.
//!
//! Every field the seed system writes keeps its name and JSON type, so the seed's Python
//! consumers can read our topics and our consumers accept what the seed's producers wrote.
//! Our own additions are optional on read and carry a `schema` version (absent, and so `0`,
//! on messages written by the seed).
//!
//! The field types are domain types that validate while they deserialize ([`Id`], [`Email`],
//! [`Money`]): a message or request that decodes is one the rest of the code can trust, and
//! one that does not decode fails with an error naming the field and the problem.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// Version of the fields flatpack adds to the seed's messages.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest accepted string identifier, in characters.
pub const MAX_ID_LEN: usize = 128;

/// Longest accepted e-mail address, in bytes (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// Largest accepted order total. Bounds what a single order can add to the totals.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// A user or order identifier exactly as the client sent it: a JSON integer or a string.
///
/// The seed passes ids through untouched, so both shapes occur on the topics; we keep the
/// shape so that a reader sees what the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    Int(i64),
    Str(String),
}

impl Id {
    /// Parses a string id: non-empty, at most [`MAX_ID_LEN`] characters, no control characters.
    pub fn parse_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if s.chars().count() > MAX_ID_LEN {
            return Err(format!("must be at most {MAX_ID_LEN} characters"));
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self::Str(s.to_owned()))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(n) => serializer.serialize_i64(*n),
            Self::Str(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                i64::try_from(v)
                    .map(Id::Int)
                    .map_err(|_| E::custom("integer is too large; send large ids as strings"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                Err(E::invalid_type(de::Unexpected::Float(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Id::parse_str(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// A syntactically valid e-mail address (RFC 5322 addr-spec), at most [`MAX_EMAIL_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_EMAIL_LEN {
            return Err(format!("must be at most {MAX_EMAIL_LEN} bytes"));
        }
        // `email_address` accepts display-name forms ("Name <a@b>"); a bare address is wanted.
        if s.contains(['<', '>', ' ']) || !email_address::EmailAddress::is_valid(s) {
            return Err("is not a valid e-mail address".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address with the local part hidden, for logs: `j***@example.com`.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => {
                let first = local.chars().next().unwrap_or('*');
                format!("{first}***@{domain}")
            }
            None => "***".into(),
        }
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Email::parse(&s).map_err(de::Error::custom)
    }
}

/// An exact, non-negative amount of money with at most two decimal places.
///
/// Accepted from JSON as a number (`129.99`, as the seed's clients send it) or a decimal
/// string (`"129.99"`, as the seed's `int(...)` also reads). Written as a JSON number, the
/// type the seed's readers expect; amounts are bounded by [`MAX_PRICE`] so the number
/// round-trips exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    pub fn new(amount: Decimal) -> Result<Self, String> {
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err("must not be negative".into());
        }
        if amount.normalize().scale() > 2 {
            return Err("must have at most 2 decimal places".into());
        }
        if amount > MAX_PRICE {
            return Err(format!("must be at most {MAX_PRICE}"));
        }
        Ok(Self(amount.normalize()))
    }

    pub fn amount(self) -> Decimal {
        self.0
    }
}

impl FromStr for Money {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let amount = Decimal::from_str_exact(s.trim()).map_err(|_| "is not a decimal number")?;
        Money::new(amount)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_decimal_as_number(&self.0, serializer)
    }
}

/// Writes a decimal as a JSON integer when it is whole, else as a float whose shortest
/// representation is the decimal itself (true for up to 15 significant digits).
pub fn serialize_decimal_as_number<S: Serializer>(
    d: &Decimal,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use rust_decimal::prelude::ToPrimitive;
    let d = d.normalize();
    if d.scale() == 0
        && let Some(n) = d.to_i64()
    {
        return serializer.serialize_i64(n);
    }
    match d.to_f64() {
        Some(f) => serializer.serialize_f64(f),
        None => Err(serde::ser::Error::custom("amount out of range")),
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MoneyVisitor;
        impl Visitor<'_> for MoneyVisitor {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative amount as a number or a decimal string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                Money::new(Decimal::from(v)).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                Money::new(Decimal::from(v)).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                if !v.is_finite() {
                    return Err(E::custom("must be a finite number"));
                }
                // Rust prints the shortest decimal that reads back as `v`: exactly what the
                // client wrote for any amount within MAX_PRICE and two decimals.
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(MoneyVisitor)
    }
}

/// What was ordered. The seed only defines `price` (the order total); every other field the
/// client sent is kept as it came and passed along.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderDetails {
    pub price: Money,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An order accepted by the orders API: a message on `order_details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// different when any field the customer sent differs. Hex of the first 16 bytes of the
    /// SHA-256 of the request's fields as canonical JSON (object keys sorted).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let request = serde_json::json!({
            "user_id": self.user_id,
            "order_id": self.order_id,
            "user_email": self.user_email,
            "order_details": self.order_details,
        });
        let digest = Sha256::digest(request.to_string().as_bytes());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The payment decision on an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionStatus {
    Confirmed,
    Declined,
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

/// Reads a decimal from a JSON number or a decimal string.
pub fn deserialize_decimal<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Decimal, D::Error> {
    struct DecimalVisitor;
    impl Visitor<'_> for DecimalVisitor {
        type Value = Decimal;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal number or string")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
            Decimal::from_str_exact(&v.to_string()).map_err(E::custom)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
            Decimal::from_str_exact(v.trim()).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(DecimalVisitor)
}

/// Why a message or request body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The field at fault, as a path (`order_details.price`); `None` when the whole body is.
    pub field: Option<String>,
    pub problem: String,
    /// The bytes are not JSON at all (as opposed to JSON of the wrong shape).
    pub syntax: bool,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes JSON bytes into `T`; the error names the field at fault by its path.
pub fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(describe_decode_error)?;
    // Trailing bytes after the value are as bad as a broken value.
    de.end().map_err(|err| DecodeError {
        field: None,
        problem: err.to_string(),
        syntax: true,
    })?;
    Ok(value)
}

fn describe_decode_error(err: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let syntax = !inner.is_data();
    let mut problem = inner.to_string();
    // serde_json's " at line 1 column 9" helps nobody reading one field's error.
    if !syntax && let Some(i) = problem.rfind(" at line ") {
        problem.truncate(i);
    }
    let mut field = (path != ".").then_some(path);
    // "missing field `price`" belongs to the missing field, not to its parent.
    if let Some(name) = problem
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        field = Some(match field {
            Some(parent) => format!("{parent}.{name}"),
            None => name.to_owned(),
        });
        problem = "missing field".into();
    }
    DecodeError {
        field,
        problem,
        syntax,
    }
}

/// Latest accepted timestamp: the last second of year 9999.
const MAX_EPOCH_SECONDS: f64 = 253_402_300_799.0;

fn deserialize_epoch_seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let seconds = f64::deserialize(deserializer)?;
    if !(0.0..=MAX_EPOCH_SECONDS).contains(&seconds) {
        return Err(de::Error::custom(
            "must be seconds since the Unix epoch between 1970 and 9999",
        ));
    }
    Ok(seconds)
}

/// The UTC calendar day (`YYYY-MM-DD`) of a timestamp in seconds since the Unix epoch.
pub fn utc_day(epoch_seconds: f64) -> String {
    // Truncation is intended: the day of 12:00:00.9 is the day of 12:00:00.
    let seconds = epoch_seconds.clamp(0.0, MAX_EPOCH_SECONDS) as i64;
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.date_naive().to_string())
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, as the seed's `time.time()` gives them.
pub fn now_epoch_seconds() -> f64 {
    let now = chrono::Utc::now();
    now.timestamp() as f64 + f64::from(now.timestamp_subsec_micros()) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn money_round_trips_exactly_as_a_json_number() {
        for (input, expected) in [
            ("129.99", json!(129.99)),
            ("0.1", json!(0.1)),
            ("100", json!(100)),
            ("\"100.50\"", json!(100.5)),
            ("999999999.99", json!(999_999_999.99)),
        ] {
            let money: Money = serde_json::from_str(input).unwrap();
            assert_eq!(serde_json::to_value(money).unwrap(), expected, "{input}");
        }
        let sum: Decimal = ["0.1", "0.2"]
            .iter()
            .map(|s| s.parse::<Money>().unwrap().amount())
            .sum();
        assert_eq!(sum.to_string(), "0.3");
    }

    #[test]
    fn money_rejects_negative_fractional_cents_huge_and_non_numbers() {
        for (input, problem) in [
            ("-1", "must not be negative"),
            ("1.001", "at most 2 decimal places"),
            ("1000000000.01", "must be at most"),
            ("\"abc\"", "not a decimal number"),
            ("true", "invalid type"),
        ] {
            let err = serde_json::from_str::<Money>(input)
                .unwrap_err()
                .to_string();
            assert!(err.contains(problem), "{input}: {err}");
        }
    }

    #[test]
    fn ids_reject_floats_empty_and_overlong_strings() {
        assert!(serde_json::from_str::<Id>("1.5").is_err());
        assert!(serde_json::from_str::<Id>("\"\"").is_err());
        assert!(serde_json::from_str::<Id>(&format!("\"{}\"", "x".repeat(129))).is_err());
        assert!(serde_json::from_str::<Id>("18446744073709551615").is_err());
        assert_eq!(serde_json::from_str::<Id>("-3").unwrap(), Id::Int(-3));
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

    #[test]
    fn emails_are_checked_and_masked() {
        assert!(Email::parse("not-an-email").is_err());
        assert!(Email::parse("Anna <anna@example.com>").is_err());
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
        let email = Email::parse("anna@example.com").unwrap();
        assert_eq!(email.masked(), "a***@example.com");
    }
}
