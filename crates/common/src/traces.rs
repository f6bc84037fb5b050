//! One trace per order, across HTTP and Kafka: the W3C trace context (`traceparent`,
//! `tracestate`) rides on every record a service writes, and whoever handles the record
//! continues that trace in a span of its own.
//!
//! - [`http_span`]: the span of an HTTP request, continuing the caller's `traceparent` if
//!   it sent one (orders' `POST /order` starts an order's trace).
//! - [`handling_span`]: the span of handling one Kafka message, a child of the span that
//!   wrote it.
//! - [`headers`]: the trace context of a span as Kafka headers, for the records written
//!   while handling.
//!
//! Spans exist whether or not they are exported (see [`crate::telemetry`]), so the headers
//! are on every record either way and a trace stays whole when only some services export.

use std::collections::HashMap;

use axum::http::{HeaderMap, Request};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use tracing::{Span, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span of one HTTP request, named by method and route (`POST /order`), continuing the
/// trace of the caller's `traceparent` header when it sent a valid one.
pub fn http_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| request.uri().path(), |path| path.as_str());
    let span = info_span!(
        "http request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
    );
    continue_trace(&span, &HttpHeaders(request.headers()));
    span
}

/// The span of handling one message, a child of the span that wrote it (its `traceparent`
/// header), or the root of a new trace when it has none.
pub fn handling_span(message: &impl Message) -> Span {
    let key = message
        .key()
        .and_then(|key| std::str::from_utf8(key).ok())
        .unwrap_or_default();
    // What finds the message again; the service is the trace's resource already.
    let span = info_span!(
        "handle message",
        otel.name = format!("{} process", message.topic()),
        otel.kind = "consumer",
        messaging.destination.name = message.topic(),
        messaging.destination.partition.id = message.partition(),
        messaging.kafka.offset = message.offset(),
        messaging.kafka.message.key = key,
    );
    if let Some(headers) = message.headers() {
        continue_trace(&span, &KafkaHeaders(headers));
    }
    span
}

/// `span`'s trace context as Kafka headers (`traceparent`, and `tracestate` when there is
/// one), for a record written on its behalf.
pub fn headers(span: &Span) -> OwnedHeaders {
    add_headers(OwnedHeaders::new_with_capacity(2), span)
}

/// `headers` with `span`'s trace context added (see [`headers`]).
pub fn add_headers(mut headers: OwnedHeaders, span: &Span) -> OwnedHeaders {
    let mut fields = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut Fields(&mut fields));
    for (key, value) in &fields {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    headers
}

/// The trace id of `span` (32 hex digits), as Jaeger finds it: `/api/traces/<id>`.
pub fn trace_id(span: &Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

/// Makes `span` a child of the span the carrier names; a carrier without a valid
/// `traceparent` leaves `span` the root of a new trace.
fn continue_trace(span: &Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    // Fails only when no OpenTelemetry layer is installed (unit tests): nothing to continue.
    let _ = span.set_parent(parent);
}

struct HttpHeaders<'a>(&'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

struct KafkaHeaders<'a, H: Headers>(&'a H);

impl<H: Headers> Extractor for KafkaHeaders<'_, H> {
    /// The last header of that name (a record copied with its headers and then given new
    /// ones carries the newest last).
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|header| header.key == key)
            .filter_map(|header| header.value)
            .filter_map(|value| std::str::from_utf8(value).ok())
            .last()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|header| header.key).collect()
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Injector for Fields<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use rdkafka::message::OwnedMessage;
    use rdkafka::{Timestamp, message::ToBytes};
    use tracing_subscriber::layer::SubscriberExt;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn with_tracer<T>(f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    fn message(headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{}".to_bytes().to_vec()),
            Some(b"7".to_vec()),
            "order_details".into(),
            Timestamp::NotAvailable,
            0,
            42,
            headers,
        )
    }

    fn traceparent(headers: &OwnedHeaders) -> String {
        let value = KafkaHeaders(headers).get("traceparent").map(str::to_owned);
        value.expect("a traceparent header")
    }

    #[test]
    fn a_handled_message_continues_the_trace_of_its_writer() {
        with_tracer(|| {
            let incoming = OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(&format!("00-{TRACE}-00f067aa0ba902b7-01")),
            });
            let span = handling_span(&message(Some(incoming)));
            let written = traceparent(&headers(&span));
            assert!(written.starts_with(&format!("00-{TRACE}-")), "{written}");
            assert!(
                !written.contains("00f067aa0ba902b7"),
                "a span of its own: {written}"
            );
        });
    }

    #[test]
    fn a_message_without_trace_context_starts_a_trace() {
        with_tracer(|| {
            let span = handling_span(&message(None));
            let context = span.context();
            let trace = context.span().span_context().trace_id();
            assert_ne!(trace, opentelemetry::trace::TraceId::INVALID);
            let written = traceparent(&headers(&span));
            assert!(written.contains(&trace.to_string()), "{written}");
        });
    }

    #[test]
    fn an_http_request_continues_the_callers_trace() {
        with_tracer(|| {
            let request = Request::builder()
                .uri("/order")
                .method("POST")
                .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
                .body(())
                .expect("a request");
            let span = http_span(&request);
            assert_eq!(trace_id(&span), TRACE);
            let written = traceparent(&headers(&span));
            assert!(written.starts_with(&format!("00-{TRACE}-")), "{written}");
        });
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        with_tracer(|| {
            let incoming = OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some("not a trace"),
            });
            let written = traceparent(&headers(&handling_span(&message(Some(incoming)))));
            assert!(written.starts_with("00-"), "{written}");
        });
    }
}
