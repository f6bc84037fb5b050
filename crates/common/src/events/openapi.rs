//! The OpenAPI schemas of the field types, for the services' `/openapi.json`.
//!
//! [`Id`], [`Email`] and [`Money`] deserialize by hand, so their schemas are written by hand
//! too, saying exactly what their parsers accept: a client generated from the document, or a
//! contract test, then sends what the API takes.

use rust_decimal::prelude::ToPrimitive;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::{PartialSchema, ToSchema};

use super::domain::{Email, Id, MAX_EMAIL_LEN, MAX_ID_LEN, MAX_PRICE, Money};

/// No control character (Unicode `Cc`, what `char::is_control` refuses) anywhere, and one
/// character that is not white space (`Id::parse_str` refuses a blank id).
const ID_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$";

/// A decimal string `Money` accepts: digits, at most two decimals, white space around.
const MONEY_PATTERN: &str = r"^\s*[0-9]{1,9}(\.[0-9]{1,2})?\s*$";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "A user or order id, kept as the client sent it: an integer or a string.",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(i64::MIN))
                    .maximum(Some(i64::MAX)),
            )
            .item(
                string()
                    .min_length(Some(1))
                    .max_length(Some(MAX_ID_LEN))
                    .pattern(Some(ID_PATTERN)),
            )
            .examples([serde_json::json!(1001)])
            .into()
    }
}

impl ToSchema for Id {}

impl PartialSchema for Email {
    fn schema() -> RefOr<Schema> {
        string()
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
            .max_length(Some(MAX_EMAIL_LEN))
            .pattern(Some(r"^[^<> ]+$"))
            .description(Some("A bare e-mail address (no display name)."))
            .examples(["anna@example.com"])
            .into()
    }
}

impl ToSchema for Email {}

impl PartialSchema for Money {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "An exact, non-negative amount with at most two decimal places. Accepted as a \
                 number or a decimal string; always answered as a number.",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(0))
                    .maximum(MAX_PRICE.to_u64())
                    .multiple_of(Some(0.01)),
            )
            .item(string().pattern(Some(MONEY_PATTERN)))
            .examples([serde_json::json!(349.5)])
            .into()
    }
}

impl ToSchema for Money {}
