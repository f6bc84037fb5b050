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
//!
//! - [`domain`]: the field types ([`Id`], [`Email`], [`Money`]) and their limits.
//! - [`messages`]: the messages of each topic.
//! - [`decode`]: decoding bytes into a message, with errors that name the field.
//! - `openapi`: the OpenAPI schemas of the field types, for the services' `/openapi.json`.
//! - [`time`]: timestamps as the seed writes them (seconds since the Unix epoch) and days.

pub mod decode;
pub mod domain;
pub mod messages;
mod openapi;
pub mod time;

pub use decode::{DecodeError, decode_json};
pub use domain::{
    Email, Id, MAX_EMAIL_LEN, MAX_ID_LEN, MAX_PRICE, Money, deserialize_decimal,
    serialize_decimal_as_number,
};
pub use messages::{
    AnalyticsResult, DecisionStatus, EmailKind, EmailSent, Order, OrderDecision, OrderDetails,
};
pub use time::{now_epoch_seconds, utc_day};

/// Version of the fields flatpack adds to the seed's messages.
pub const SCHEMA_VERSION: u32 = 1;
