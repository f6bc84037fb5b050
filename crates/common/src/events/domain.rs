//! The field types of the event contract: they validate while they deserialize, so a value
//! that decodes is one the rest of the code can trust.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

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
            // JSON does not tell `1001.0` from `1001` (JSON Schema calls both integers, and
            // Python's json writes a float id that way): a whole number is the integer id.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                // Within ±2^53 a whole f64 is exactly the integer written; beyond, it may be
                // an integer literal too large for i64 that serde_json rounded to a float.
                const EXACT: f64 = 9_007_199_254_740_992.0;
                if v.fract() == 0.0 && (-EXACT..=EXACT).contains(&v) {
                    return Ok(Id::Int(v as i64));
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn ids_reject_fractions_empty_and_overlong_strings_and_take_whole_floats() {
        assert!(serde_json::from_str::<Id>("1.5").is_err());
        assert!(serde_json::from_str::<Id>("\"\"").is_err());
        assert!(serde_json::from_str::<Id>(&format!("\"{}\"", "x".repeat(129))).is_err());
        assert!(serde_json::from_str::<Id>("18446744073709551615").is_err());
        assert_eq!(serde_json::from_str::<Id>("-3").unwrap(), Id::Int(-3));
        assert_eq!(
            serde_json::from_str::<Id>("-3320.0").unwrap(),
            Id::Int(-3320)
        );
        assert!(serde_json::from_str::<Id>("1e19").is_err());
        assert!(
            serde_json::from_str::<Id>("-9223372036854775809").is_err(),
            "below i64::MIN is not rounded into range"
        );
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
