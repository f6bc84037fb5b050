//! Decoding a message, and where one that cannot be handled goes: the source topic's
//! dead-letter topic, with the message as it came and headers saying why and where from.
//! Both consumer loops dead-letter through [`DeadLetter`].

use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, FutureRecord};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::events::{DecodeError, decode_json};
use crate::traces::Traced;

/// Header names on a dead-lettered message, saying why and where from.
pub mod dlq_headers {
    pub const ERROR: &str = "dlq.error";
    pub const TOPIC: &str = "dlq.topic";
    pub const PARTITION: &str = "dlq.partition";
    pub const OFFSET: &str = "dlq.offset";
    pub const SERVICE: &str = "dlq.service";
    /// On a message replayed from a dead-letter topic (`flatpack dead-letters replay`): the
    /// dead letter it was, as `<dead-letter topic>/<partition>/<offset>`.
    pub const REPLAYED_FROM: &str = "dlq.replayed-from";
}

/// Decodes a JSON message into `T`, naming the offending field on failure
/// (`order_details.price: must not be negative`).
pub fn decode<T: DeserializeOwned>(payload: Option<&[u8]>) -> Result<T, DecodeError> {
    match payload {
        Some(bytes) => decode_json(bytes),
        None => Err(DecodeError {
            field: None,
            problem: "message has no payload".into(),
            syntax: true,
        }),
    }
}

/// A message that could not be decoded, on its way to the source's dead-letter topic: the
/// message as it came (key and payload), plus why it failed and where it came from in
/// [`dlq_headers`]. Every consumer loop dead-letters through this one type.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    topic: &'a str,
    key: Option<&'a str>,
    payload: &'a [u8],
    headers: OwnedHeaders,
}

impl<'a> DeadLetter<'a> {
    /// `trace`: the handling of `message`, whose trace goes on with the dead letter (and
    /// with its replay).
    pub fn new(
        message: &'a OwnedMessage,
        dlq: &'a str,
        problem: &str,
        service: &str,
        trace: &Traced,
    ) -> Self {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: dlq_headers::ERROR,
                value: Some(problem),
            })
            .insert(Header {
                key: dlq_headers::TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: dlq_headers::PARTITION,
                value: Some(&message.partition().to_string()),
            })
            .insert(Header {
                key: dlq_headers::OFFSET,
                value: Some(&message.offset().to_string()),
            })
            .insert(Header {
                key: dlq_headers::SERVICE,
                value: Some(service),
            });
        let headers = trace.add_headers(headers);
        Self {
            topic: dlq,
            key: message.key().and_then(|k| std::str::from_utf8(k).ok()),
            payload: message.payload().unwrap_or_default(),
            headers,
        }
    }

    /// The record for a [`BaseProducer`](rdkafka::producer::BaseProducer) (the exactly-once loop).
    pub fn base_record(&self) -> BaseRecord<'a, str, [u8]> {
        let record = BaseRecord::to(self.topic)
            .payload(self.payload)
            .headers(self.headers.clone());
        match self.key {
            Some(key) => record.key(key),
            None => record,
        }
    }

    /// The record for a [`FutureProducer`](rdkafka::producer::FutureProducer) (the
    /// at-least-once loop).
    pub fn future_record(&self) -> FutureRecord<'a, str, [u8]> {
        let record = FutureRecord::to(self.topic)
            .payload(self.payload)
            .headers(self.headers.clone());
        match self.key {
            Some(key) => record.key(key),
            None => record,
        }
    }
}

/// A message the transform refused, logged and on its way to the dead-letter topic.
pub(super) fn reject<'a>(
    message: &'a OwnedMessage,
    dlq: &'a str,
    service: &str,
    why: &str,
    trace: &Traced,
) -> DeadLetter<'a> {
    warn!(
        service,
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        cause = why,
        "message refused; sent to the dead-letter topic"
    );
    DeadLetter::new(message, dlq, why, service, trace)
}

/// Decodes `message` into `T`; a message that does not decode is logged and returned as a
/// [`DeadLetter`] for `dlq`, for the caller to write before it moves past the message.
pub fn decode_or_dead_letter<'a, T: DeserializeOwned>(
    message: &'a OwnedMessage,
    dlq: &'a str,
    service: &str,
    trace: &Traced,
) -> Result<T, DeadLetter<'a>> {
    decode_or_log(message, service)
        .map_err(|problem| DeadLetter::new(message, dlq, &problem, service, trace))
}

/// Decodes `message` into `T`; a message that does not decode is logged as on its way to the
/// dead-letter topic, and what is wrong with it returned.
pub fn decode_or_log<T: DeserializeOwned>(
    message: &OwnedMessage,
    service: &str,
) -> Result<T, String> {
    decode(message.payload()).map_err(|problem| {
        warn!(
            service,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            cause = %problem,
            "undecodable message sent to the dead-letter topic"
        );
        problem.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Order;

    #[test]
    fn decode_names_the_field_and_the_problem() {
        let err = decode::<Order>(Some(br#"{"user_id":1,"order_id":2,"user_email":"a@b.co","order_details":{"price":-5},"time":1.0}"#)).unwrap_err();
        assert_eq!(err.to_string(), "order_details.price: must not be negative");
        let err = decode::<Order>(Some(br#"{"user_id":1,"user_email":"a@b.co"}"#)).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("order_id"));
        assert_eq!(err.to_string(), "order_id: missing field");
        let err = decode::<Order>(Some(
            br#"{"user_id":1,"order_id":2,"user_email":"a@b.co","order_details":{},"time":1.0}"#,
        ))
        .unwrap_err();
        assert_eq!(err.to_string(), "order_details.price: missing field");
        let err = decode::<Order>(Some(b"not json")).unwrap_err();
        assert!(err.syntax && err.field.is_none(), "{err}");
        assert_eq!(
            decode::<Order>(None).unwrap_err().to_string(),
            "message has no payload"
        );
    }
}
